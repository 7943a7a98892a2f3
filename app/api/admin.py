"""Admin routes (X-API-Key): reload, re-index, and item upserts/deletes between full rebuilds."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.api.search import embed_uploads
from app.deps import GenerationDep, SettingsDep, StateDep, require_admin_key
from app.errors import ApiError
from app.query_input import check_image
from app.schemas import ErrorResponse, ItemChange, ItemUpdate, ReindexJob, ReindexRequest, ReloadResult
from app.serving import ServiceState
from app.settings import Settings
from indexer import CatalogError, CatalogRow, GenerationError, build_generation
from models.atomic import write_bytes_atomic

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 503)}


class ReindexRunner:
    """At most one background full rebuild at a time; its state is what GET /admin/reindex shows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.job = ReindexJob(state="idle")

    def start(self, state: ServiceState, settings: Settings, catalog: Path) -> ReindexJob:
        with self._lock:
            if self.job.state == "running":
                raise ApiError(409, "reindex_running", f"a re-index of {self.job.catalog} is already running")
            self.job = ReindexJob(state="running", catalog=str(catalog))
        threading.Thread(target=self._run, args=(state, settings, catalog), daemon=True).start()
        return self.job

    def _run(self, state: ServiceState, settings: Settings, catalog: Path) -> None:
        try:
            assert state.embedder is not None
            manifest = build_generation(catalog, settings.data_dir, state.embedder,
                                        settings.build_options(progress=False))
            state.reload(manifest.generation)
            job = ReindexJob(state="done", catalog=str(catalog), generation=manifest.generation)
        except (CatalogError, GenerationError, OSError, RuntimeError, ValueError) as exc:
            log.error("re-index of %s failed: %s", catalog, exc)
            job = ReindexJob(state="failed", catalog=str(catalog), message=str(exc))
        with self._lock:
            self.job = job


def get_reindex(request: Request) -> ReindexRunner:
    return request.app.state.reindex


ReindexDep = Annotated[ReindexRunner, Depends(get_reindex)]


@router.post("/reload", response_model=ReloadResult, responses=ERRORS,
             summary="Serve the generation the pointer names now (refused if made by another model)")
def reload(state: StateDep) -> ReloadResult:
    try:
        gen = state.reload()
    except GenerationError as exc:
        raise ApiError(409, "reload_refused", f"{exc}; the previous generation keeps serving") from None
    return ReloadResult(generation=gen.name, model_id=gen.manifest.model_id, items=gen.catalog.count)


@router.post("/reindex", response_model=ReindexJob, status_code=202, responses=ERRORS,
             summary="Start a full rebuild from a catalog file on the server")
def reindex(body: ReindexRequest, state: StateDep, settings: SettingsDep, runner: ReindexDep) -> ReindexJob:
    if state.embedder is None:
        raise ApiError(503, "not_ready", "no model loaded yet")
    catalog = Path(body.catalog)
    if not catalog.is_file():
        raise ApiError(404, "catalog_not_found", f"no catalog file at {catalog}")
    return runner.start(state, settings, catalog)


@router.get("/reindex", response_model=ReindexJob, responses=ERRORS)
def reindex_status(runner: ReindexDep) -> ReindexJob:
    return runner.job


def _store_upload(settings: Settings, data: bytes, image_format: str) -> Path:
    """Keep an uploaded image under data_dir/uploads/<sha256>.<ext>, written atomically."""
    folder = settings.data_dir / settings.upload_dir_name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()}.{image_format.lower()}"
    if not path.exists():
        write_bytes_atomic(path, data)
    return path


@router.put("/items/{item_id}", response_model=ItemChange, responses=ERRORS,
            summary="Add or replace one item (image + metadata); searchable at once")
async def upsert_item(
    request: Request,
    item_id: str,
    settings: SettingsDep,
    state: StateDep,
    gen: GenerationDep,
    image: Annotated[UploadFile, File(description="the item's image")],
    metadata: Annotated[str, Form(description='JSON: {"product_id", "title", "category", "description", "attributes"}')],
) -> ItemChange:
    if not item_id.strip() or len(item_id) > 256:
        raise ApiError(422, "invalid_item_id", "item ids are 1 to 256 characters")
    try:
        meta = ItemUpdate.model_validate_json(metadata)
    except ValidationError as exc:
        raise ApiError(422, "invalid_metadata", str(exc).splitlines()[0] + ": " + "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    data = check_image(await image.read(settings.max_upload_bytes + 1), settings.max_upload_bytes)
    vector = (await embed_uploads(request, state, settings, [data], {}))[0]
    image_format = Image.open(io.BytesIO(data)).format or "bin"
    path = _store_upload(settings, data, image_format)
    catalog = gen.catalog
    existed = catalog.by_item_id(item_id) is not None
    row = CatalogRow(item_id=item_id, product_id=meta.product_id, image=path, title=meta.title,
                     category=meta.category, description=meta.description, attributes=meta.attributes)
    await run_in_threadpool(catalog.delta.upsert, row, hashlib.sha256(data).hexdigest(), vector,
                            catalog.base_id_of(item_id))
    return ItemChange(item_id=item_id, status="updated" if existed else "created", generation=gen.name)


@router.delete("/items/{item_id}", response_model=ItemChange, responses=ERRORS,
               summary="Delete one item; it is gone from results at once")
def delete_item(item_id: str, gen: GenerationDep) -> ItemChange:
    catalog = gen.catalog
    if catalog.by_item_id(item_id) is None or not catalog.delta.delete(item_id, catalog.base_id_of(item_id)):
        raise ApiError(404, "unknown_item", f"no item {item_id!r} in generation {gen.name}")
    return ItemChange(item_id=item_id, status="deleted", generation=gen.name)
