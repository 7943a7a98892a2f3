"""Search routes: by photo (three input forms), in batches, and more-like-this by catalog item."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from app.api.items import item_or_404
from app.deps import GenerationDep, MetricsDep, SettingsDep, StateDep, require_search_key
from app.errors import ApiError
from app.openapi import component_ref
from app.planner import PlanError, plan_and_search
from app.planner import Query as PlanQuery
from app.query_input import candidate_list, decode_base64_image, read_body, read_search_request, split_list, validated
from app.localise import Region, is_catalog_photo, oriented_size, regions
from app.routing import ROUTING_POOL, route
from app.schemas import (BatchSearchRequest, BatchSearchResponse, DetectedObject, ErrorResponse, Hit,
                         PhotoSearchOptions, SearchOptions, SearchResponse, SimilarOptions)
from app.serving import LoadedGeneration, ServiceState
from app.settings import Settings
from indexer import StoredItem
from indexer.catalog_store import fts_query
from models import load_image

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
router = APIRouter(tags=["search"], dependencies=[Depends(require_search_key)])

_FIELDS = {name: field for name, field in PhotoSearchOptions.model_json_schema()["properties"].items()}
# The document shows the multipart form only: openapi-python-client 0.29 generates a client that cannot be imported
# (``Unset`` undefined) for any body with several content types. The JSON form (``SearchJSON``, defined in the
# components) and raw image bodies are accepted as the route's description says.
SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}, **_FIELDS}}},
        },
    },
}


def hit(item: StoredItem, score: float) -> Hit:
    return Hit(product_id=item.product_id, item_id=item.item_id, title=item.title, category=item.category,
               score=round(score, 6), image_url=f"/items/{item.item_id}/image", attributes=item.attributes)


def plan_query(options: SearchOptions, settings: Settings, **extra: object) -> PlanQuery:
    if options.k > settings.max_k:
        raise ApiError(422, "k_too_large", f"k is {options.k}; the limit is {settings.max_k}")
    categories = split_list(options.category)
    if categories is not None and len(categories) > settings.max_categories:
        raise ApiError(422, "too_many_categories",
                       f"{len(categories)} categories; the limit is {settings.max_categories}")
    candidates = candidate_list(options.candidate_ids)
    if candidates is not None:
        if not candidates:
            raise ApiError(422, "empty_candidates", "candidate_ids was given but holds no ids")
        if len(candidates) > settings.max_candidates:
            raise ApiError(422, "too_many_candidates",
                           f"{len(candidates)} candidate ids; the limit is {settings.max_candidates}")
    if options.q is not None and options.q.strip() and not fts_query(options.q):
        raise ApiError(422, "empty_keywords", f"q={options.q!r} holds no searchable words")
    if options.keyword_weight > 0 and not options.q:
        raise ApiError(422, "keyword_weight_without_q", "keyword_weight blends BM25 with visual scores: give q too")
    return PlanQuery(k=options.k, offset=options.offset, q=options.q or None, candidate_ids=candidates,
                     categories=categories, group=options.group,
                     keyword_weight=options.keyword_weight, **extra)  # type: ignore[arg-type]


def ranked_response(settings: Settings, gen: LoadedGeneration, vector: np.ndarray, query: PlanQuery,
                    timings: dict[str, float]) -> SearchResponse:
    """Plan and run one search; ``vector`` is already in the vector store's space (``gen.encode``)."""
    start = time.perf_counter()
    try:
        ranked = plan_and_search(gen.catalog, gen.vectors, vector, query, exact_threshold=settings.exact_threshold,
                                 overfetch=settings.overfetch)
    except PlanError as exc:
        raise ApiError(422, "unplannable", str(exc)) from None
    start_fetch = time.perf_counter()
    results = [hit(i, s) for i, s in ranked.hits]
    timings["search"] = start_fetch - start
    timings["fetch"] = time.perf_counter() - start_fetch
    return SearchResponse(results=results, grouped=query.group, offset=query.offset, has_more=ranked.has_more,
                          plan=ranked.plan, candidates=ranked.candidates,
                          unknown_candidate_ids=ranked.unknown_candidate_ids, generation=gen.name,
                          model_id=gen.manifest.model_id, timings_ms={k: round(v * 1000, 3) for k, v in timings.items()})


def decode_batch_images(batch: BatchSearchRequest, limit: int) -> list[bytes]:
    """Every query's image bytes; an error names the query it is in."""
    images = []
    for n, q in enumerate(batch.queries):
        try:
            images.append(decode_base64_image(q.image_base64, limit))
        except ApiError as exc:
            raise ApiError(exc.status, exc.code, f"queries[{n}]: {exc.message}") from None
    return images


async def embed_uploads(request: Request, state: ServiceState, settings: Settings, images: list[bytes],
                        timings: dict[str, float]) -> np.ndarray:
    """Decode (bounded) and embed query images; concurrent requests share model forwards when batching is on,
    and otherwise take turns for the CPU's cores (at most ``max_concurrent_forwards`` forwards at once)."""
    embedder = state.embedder
    assert embedder is not None  # get_generation guarantees it
    start = time.perf_counter()
    tensors = [await run_in_threadpool(
        lambda d=data: embedder.pixels(embedder.load(d, settings.max_pixels, settings.max_aspect_ratio)))
        for data in images]
    timings["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    if state.batcher is not None and len(tensors) == 1:
        vectors = (await state.batcher.embed(tensors[0]))[None, :]
    else:
        async with request.app.state.forward_slots:
            vectors = await run_in_threadpool(embedder.embed_tensors, torch.stack(tensors))
    timings["embed"] = time.perf_counter() - start
    return vectors


async def locate(request: Request, state: ServiceState, settings: Settings, data: bytes,
                 options: PhotoSearchOptions, timings: dict[str, float]) -> tuple[Region, list[Region]]:
    """Decode the photo and find its objects: the region to search (detected, the caller's box, or the whole
    photo) and the other objects."""
    embedder = state.embedder
    assert embedder is not None  # get_generation guarantees it
    localiser = state.localiser if options.localise else None
    start = time.perf_counter()
    draft = embedder.image_size * (settings.localise_draft_factor if localiser or options.box else 1)
    image = await run_in_threadpool(lambda: load_image(data, max_pixels=settings.max_pixels, draft_size=draft,
                                                       short_side=draft, max_aspect_ratio=settings.max_aspect_ratio))
    original = oriented_size(data)
    timings["decode"] = timings.get("decode", 0.0) + time.perf_counter() - start
    detections, mask = [], None
    if localiser is not None:
        start = time.perf_counter()
        async with request.app.state.forward_slots:
            if settings.matte_objects and localiser.has_mask:
                found = await run_in_threadpool(localiser.locate, image)
                detections, mask = found.detections, found.mask
            else:
                detections = await run_in_threadpool(localiser.detect, image)
        detections = [d for d in detections if d.score >= settings.localiser_min_score]
        timings["localise"] = timings.get("localise", 0.0) + time.perf_counter() - start
    whole_first = bool(detections) and options.box is None and is_catalog_photo(image, settings)
    if mask is None:
        return regions(image, original, detections, options.box, settings.crop_margin, whole_first)
    start = time.perf_counter()  # matting is part of localising's cost
    found_regions = await run_in_threadpool(regions, image, original, detections, options.box, settings.crop_margin,
                                            whole_first, mask)
    timings["localise"] += time.perf_counter() - start
    return found_regions


async def routed_response(settings: Settings, state: ServiceState, gen: LoadedGeneration, vector: np.ndarray,
                          query: PlanQuery, timings: dict[str, float]) -> SearchResponse:
    """``ranked_response``, or with CATEGORY_ROUTING: the query's predicted category, and the results re-ranked
    by score + weight x p(their category) within a pool of ``ROUTING_POOL`` x the wanted results."""
    probe = (await run_in_threadpool(state.category_probes.for_generation, gen)
             if settings.category_routing else None)
    if probe is None:
        return await run_in_threadpool(ranked_response, settings, gen, vector, query, timings)
    wanted = query.offset + query.k
    pool = replace(query, k=wanted * ROUTING_POOL, offset=0)
    response = await run_in_threadpool(ranked_response, settings, gen, vector, pool, timings)
    response.category, routed = route(probe, vector, response.results, settings.category_route_weight)
    response.has_more = response.has_more or len(routed) > wanted
    response.results, response.offset = routed[query.offset:wanted], query.offset
    return response


async def embed_regions(request: Request, state: ServiceState, searched: list[Region],
                        timings: dict[str, float]) -> np.ndarray:
    """Embed the crops of ``searched`` in one forward (or through the micro-batcher for one crop)."""
    embedder = state.embedder
    assert embedder is not None
    start = time.perf_counter()
    tensors = await run_in_threadpool(lambda: torch.stack([embedder.pixels(r.crop) for r in searched]))
    if state.batcher is not None and len(searched) == 1:
        vectors = (await state.batcher.embed(tensors[0]))[None, :]
    else:
        async with request.app.state.forward_slots:
            vectors = await run_in_threadpool(embedder.embed_tensors, tensors)
    timings["embed"] = time.perf_counter() - start
    return vectors


@router.post("/search", response_model=SearchResponse, responses=ERRORS, openapi_extra=SEARCH_BODY,
             summary="Find the catalog products that look most like a photo")
async def search(request: Request, settings: SettingsDep, state: StateDep, gen: GenerationDep,
                 metrics: MetricsDep) -> SearchResponse:
    """The photo comes as a multipart upload (field `image`, options as form fields or query parameters), as a
    raw image body (`Content-Type: image/*` or `application/octet-stream`, options as query parameters), or as
    `application/json` with `image_base64` and the options (schema `SearchJSON`)."""
    data, options = await read_search_request(request, settings.max_upload_bytes, settings.max_query_bytes)
    query = plan_query(options, settings)
    timings: dict[str, float] = {}
    first, others = await locate(request, state, settings, data, options, timings)
    vectors = gen.encode(await embed_regions(request, state, [first, *others] if options.objects == "all" else [first],
                                            timings))
    response = await routed_response(settings, state, gen, vectors[0], query, timings)
    response.box = first.box
    response.objects = [DetectedObject(box=r.box) for r in others]
    if options.objects == "all":
        for obj, vector in zip(response.objects, vectors[1:], strict=True):
            obj.results = (await run_in_threadpool(ranked_response, settings, gen, vector, query, {})).results
    metrics.observe(timings)
    metrics.searches.labels("search", response.plan).inc()
    return response


@router.post("/search/batch", response_model=BatchSearchResponse, responses=ERRORS, openapi_extra={
             "requestBody": {"required": True,
                             "content": {"application/json": {"schema": component_ref(BatchSearchRequest)}}}},
             summary="Several photo searches in one request (one model forward for all)")
async def search_batch(request: Request, settings: SettingsDep, state: StateDep, gen: GenerationDep,
                       metrics: MetricsDep) -> BatchSearchResponse:
    body = await read_body(request, settings.max_batch_body_bytes)
    batch: BatchSearchRequest = await run_in_threadpool(validated, BatchSearchRequest, body)  # type: ignore[arg-type]
    del body
    if len(batch.queries) > settings.max_batch_queries:
        raise ApiError(422, "too_many_queries", f"{len(batch.queries)} queries; the limit is {settings.max_batch_queries}")
    queries = [plan_query(q, settings) for q in batch.queries]
    images = await run_in_threadpool(decode_batch_images, batch, settings.max_upload_bytes)
    if any(q.objects == "all" for q in batch.queries):
        raise ApiError(422, "objects_all_in_batch", "objects=all is for single searches (POST /search)")
    timings: dict[str, float] = {}
    located = [await locate(request, state, settings, data, q, timings) for data, q in zip(images, batch.queries)]
    vectors = gen.encode(await embed_regions(request, state, [first for first, _ in located], timings))
    responses = [await run_in_threadpool(ranked_response, settings, gen, v, q, dict(timings))
                 for v, q in zip(vectors, queries, strict=True)]
    for response, (first, others) in zip(responses, located, strict=True):
        response.box = first.box
        response.objects = [DetectedObject(box=r.box) for r in others]
    metrics.observe(timings)
    for r in responses:
        metrics.searches.labels("batch", r.plan).inc()
    return BatchSearchResponse(responses=responses)


@router.get("/items/{item_id}/similar", response_model=SearchResponse, responses=ERRORS,
            summary="More like this: products that look like a catalog item")
def similar(
    settings: SettingsDep,
    gen: GenerationDep,
    metrics: MetricsDep,
    item_id: str,
    options: Annotated[SimilarOptions, Query()],
) -> SearchResponse:
    item = item_or_404(gen, item_id)
    query = plan_query(options, settings, exclude_ids=frozenset({item.id}),
                       exclude_products=frozenset() if options.same_product else frozenset({item.product_id}))
    timings: dict[str, float] = {}
    response = ranked_response(settings, gen, gen.vectors.vectors([item.id])[0], query, timings)
    metrics.observe(timings)
    metrics.searches.labels("similar", response.plan).inc()
    return response
