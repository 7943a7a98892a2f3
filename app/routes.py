"""HTTP routes: search by image, more-like-this by item, item lookup, health."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.errors import ApiError
from app.planner import Query as PlanQuery
from app.planner import Ranked, plan_and_search
from app.schemas import ErrorResponse, Health, Hit, Item, Ready, SearchResponse
from app.serving import LoadedGeneration, ServiceState
from app.settings import Settings
from indexer import StoredItem

ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 422, 503)}
router = APIRouter()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


def get_generation(state: Annotated[ServiceState, Depends(get_state)]) -> LoadedGeneration:
    gen = state.generation
    if gen is None or state.embedder is None:
        raise ApiError(503, "not_ready", "no index generation is loaded yet")
    return gen


SettingsDep = Annotated[Settings, Depends(get_settings)]
StateDep = Annotated[ServiceState, Depends(get_state)]
GenerationDep = Annotated[LoadedGeneration, Depends(get_generation)]


def _split_list(values: list[str] | None) -> list[str] | None:
    """Accept repeated fields and comma-separated values alike."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _hit(item: StoredItem, score: float) -> Hit:
    return Hit(product_id=item.product_id, item_id=item.item_id, title=item.title, category=item.category,
               score=round(score, 6), image_url=f"/items/{item.item_id}/image", attributes=item.attributes)


def _response(ranked: Ranked, query: PlanQuery, gen: LoadedGeneration, timings: dict[str, float]) -> SearchResponse:
    return SearchResponse(results=[_hit(i, s) for i, s in ranked.hits], grouped=query.group, plan=ranked.plan,
                          candidates=ranked.candidates, unknown_candidate_ids=ranked.unknown_candidate_ids,
                          generation=gen.name, model_id=gen.manifest.model_id,
                          timings_ms={k: round(v * 1000, 3) for k, v in timings.items()})


def _validate(settings: Settings, k: int, candidate_ids: list[str] | None) -> None:
    if k > settings.max_k:
        raise ApiError(422, "k_too_large", f"k is {k}; the limit is {settings.max_k}")
    if candidate_ids is not None:
        if not candidate_ids:
            raise ApiError(422, "empty_candidates", "candidate_ids was given but holds no ids")
        if len(candidate_ids) > settings.max_candidates:
            raise ApiError(422, "too_many_candidates",
                           f"{len(candidate_ids)} candidate ids; the limit is {settings.max_candidates}")


def _run(settings: Settings, gen: LoadedGeneration, vector: np.ndarray, query: PlanQuery,
         timings: dict[str, float]) -> SearchResponse:
    start = time.perf_counter()
    ranked = plan_and_search(gen, vector, query, exact_threshold=settings.exact_threshold,
                             overfetch=settings.overfetch, keyword_limit=settings.keyword_hit_limit)
    timings["search"] = time.perf_counter() - start
    return _response(ranked, query, gen, timings)


async def _read_upload(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "upload_too_large", f"upload is over the {limit}-byte limit")
    if not data:
        raise ApiError(400, "empty_upload", "the uploaded file is empty")
    return data


@router.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"],
             summary="Find the catalog products that look most like an uploaded photo")
async def search(
    settings: SettingsDep,
    state: StateDep,
    gen: GenerationDep,
    image: Annotated[UploadFile, File(description="query photo (JPEG, PNG, WebP, ...)")],
    k: Annotated[int, Form(ge=1, description="number of results")] = 10,
    q: Annotated[str | None, Form(max_length=500, description="keyword filter over title/category")] = None,
    candidate_ids: Annotated[list[str] | None, Form(description="restrict to these item ids (repeat or comma-separate)")] = None,
    category: Annotated[list[str] | None, Form(description="restrict to these categories")] = None,
    group: Annotated[bool, Form(description="one result per product")] = True,
) -> SearchResponse:
    candidates = _split_list(candidate_ids)
    _validate(settings, k, candidates)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    data = await _read_upload(image, settings.max_upload_bytes)
    embedder = state.embedder
    assert embedder is not None  # guaranteed by get_generation
    picture = await run_in_threadpool(embedder.load, data, settings.max_pixels)
    timings["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    vector = (await run_in_threadpool(embedder.embed_images, [picture]))[0]
    timings["embed"] = time.perf_counter() - start
    query = PlanQuery(k=k, q=q or None, candidate_ids=candidates, categories=_split_list(category), group=group)
    return await run_in_threadpool(_run, settings, gen, vector, query, timings)


def _item_or_404(gen: LoadedGeneration, item_id: str) -> StoredItem:
    item = gen.store.by_item_id(item_id)
    if item is None:
        raise ApiError(404, "unknown_item", f"no item {item_id!r} in generation {gen.name}")
    return item


@router.get("/items/{item_id}/similar", response_model=SearchResponse, responses=ERRORS, tags=["search"],
            summary="More like this: products that look like a catalog item")
def similar(
    settings: SettingsDep,
    gen: GenerationDep,
    item_id: str,
    k: Annotated[int, Query(ge=1)] = 10,
    q: Annotated[str | None, Query(max_length=500)] = None,
    candidate_ids: Annotated[list[str] | None, Query()] = None,
    category: Annotated[list[str] | None, Query()] = None,
    group: bool = True,
    same_product: Annotated[bool, Query(description="include other images of the item's own product")] = False,
) -> SearchResponse:
    candidates = _split_list(candidate_ids)
    _validate(settings, k, candidates)
    item = _item_or_404(gen, item_id)
    vector = np.asarray(gen.vectors[item.id], dtype=np.float32)
    query = PlanQuery(k=k, q=q or None, candidate_ids=candidates, categories=_split_list(category), group=group,
                      exclude_ids=frozenset({item.id}),
                      exclude_products=frozenset() if same_product else frozenset({item.product_id}))
    return _run(settings, gen, vector, query, {})


@router.get("/items/{item_id}", response_model=Item, responses=ERRORS, tags=["catalog"])
def get_item(gen: GenerationDep, item_id: str) -> Item:
    item = _item_or_404(gen, item_id)
    return Item(item_id=item.item_id, product_id=item.product_id, title=item.title, category=item.category,
                image_url=f"/items/{item.item_id}/image", attributes=item.attributes)


@router.get("/items/{item_id}/image", responses=ERRORS, tags=["catalog"], response_class=FileResponse)
def get_item_image(gen: GenerationDep, item_id: str) -> FileResponse:
    item = _item_or_404(gen, item_id)
    path = Path(item.image)
    if not path.is_file():
        raise ApiError(404, "image_missing", f"the image file of {item_id!r} is no longer on disk")
    return FileResponse(path)


@router.get("/healthz", response_model=Health, tags=["ops"])
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["ops"])
def readyz(state: StateDep, response: Response) -> Ready:
    gen = state.generation
    if gen is None:
        response.status_code = 503
        return Ready(status="not_ready", generation=None, model_id=None, items=0)
    return Ready(status="ready", generation=gen.name, model_id=gen.manifest.model_id, items=gen.manifest.count)


@router.get("/metrics", tags=["ops"], response_class=Response)
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)
