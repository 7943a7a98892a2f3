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
from indexer.delta import DeltaChange
from indexer.file_roots import FileRefused, confined_file
from indexer.locking import DataDirLock, DataDirLocked

log = logging.getLogger(__name__)
router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin_key)])
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 422, 503)}


class ReindexRunner:
    """At most one background full rebuild at a time, holding the data dir's lock (so no CLI job runs beside
    it); its state is what GET /admin/reindex shows, and any failure ends it as ``failed`` with the reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.job = ReindexJob(state="idle")

    def start(self, state: ServiceState, settings: Settings, catalog: Path) -> ReindexJob:
        with self._lock:
            if self.job.state == "running":
                raise ApiError(409, "reindex_running", f"a re-index of {self.job.catalog} is already running")
            lock = DataDirLock(settings.data_dir, f"reindex of {catalog} (service)")
            try:
                lock.acquire()
            except DataDirLocked as exc:
                raise ApiError(409, "data_dir_locked", str(exc)) from None
            self.job = ReindexJob(state="running", catalog=str(catalog))
        threading.Thread(target=self._run, args=(state, settings, catalog, lock), daemon=True).start()
        return self.job

    def _run(self, state: ServiceState, settings: Settings, catalog: Path, lock: DataDirLock) -> None:
        try:
            assert state.embedder is not None
            manifest = build_generation(catalog, settings.data_dir, state.embedder,
                                        settings.build_options(progress=False, file_roots=tuple(settings.roots())))
            state.reload(manifest.generation)
            job = ReindexJob(state="done", catalog=str(catalog), generation=manifest.generation)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the job ends and says why
            reason = str(exc) if isinstance(exc, CatalogError | GenerationError) else f"{type(exc).__name__}: {exc}"
            log.exception("re-index of %s failed: %s", catalog, reason)
            job = ReindexJob(state="failed", catalog=str(catalog), message=reason)
        finally:
            lock.release()
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
    except Exception as exc:  # noqa: BLE001 - any bad generation is refused; the served one stays
        raise ApiError(409, "reload_refused", f"{exc}; the previous generation keeps serving") from None
    return ReloadResult(generation=gen.name, model_id=gen.manifest.model_id, items=gen.catalog.count)


@router.post("/reindex", response_model=ReindexJob, status_code=202, responses=ERRORS,
             summary="Start a full rebuild from a catalog file on the server")
def reindex(body: ReindexRequest, state: StateDep, settings: SettingsDep, runner: ReindexDep) -> ReindexJob:
    if state.embedder is None:
        raise ApiError(503, "not_ready", "no model loaded yet")
    try:
        catalog = confined_file(body.catalog, settings.roots(), settings.max_catalog_bytes)
    except FileRefused as exc:
        status = {"not_found": 404, "outside_roots": 403, "file_too_large": 413}.get(exc.code, 400)
        raise ApiError(status, "catalog_not_found" if exc.code == "not_found" else f"catalog_{exc.code}",
                       exc.message) from None
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
    catalog = gen.catalog
    base = catalog.store.by_item_id(item_id)

    def write() -> DeltaChange:
        path = _store_upload(settings, data, Image.open(io.BytesIO(data)).format or "bin")
        row = CatalogRow(item_id=item_id, product_id=meta.product_id, image=path, title=meta.title,
                         category=meta.category, description=meta.description, attributes=meta.attributes)
        return catalog.delta.upsert(row, hashlib.sha256(data).hexdigest(), vector, base.id if base else None)

    change = await run_in_threadpool(write)
    return ItemChange(item_id=item_id, status="updated" if change.replaced else "created", generation=gen.name,
                      version=change.version)


@router.delete("/items/{item_id}", response_model=ItemChange, responses=ERRORS,
               summary="Delete one item; it is gone from results at once")
def delete_item(item_id: str, gen: GenerationDep) -> ItemChange:
    catalog = gen.catalog
    base = catalog.store.by_item_id(item_id)
    change = catalog.delta.delete(item_id, base.id if base else None)
    if change is None:
        raise ApiError(404, "unknown_item", f"no item {item_id!r} in generation {gen.name}")
    return ItemChange(item_id=item_id, status="deleted", generation=gen.name, version=change.version)
