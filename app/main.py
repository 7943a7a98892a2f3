"""The application factory: settings in, a FastAPI app out; loading happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

import faiss
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import admin, items, ops, search
from app.batching import MicroBatcher
from app.errors import install_error_handlers
from app.guard import RequestGuard, RoutePolicy
from app.localise import load_query_localiser
from app.metrics import ServiceMetrics
from app.openapi import install_openapi, operation_id
from app.reload_watcher import ReloadWatcher
from app.serving import ServiceState
from app.settings import Settings

log = logging.getLogger(__name__)


def _limit_threads(settings: Settings) -> None:
    """Few threads per forward and per FAISS search: requests run side by side and must not oversubscribe the CPU."""
    torch.set_num_threads(settings.torch_threads)
    faiss.omp_set_num_threads(settings.torch_threads)


def forward_slots(state: ServiceState, settings: Settings) -> int:
    """Forwards allowed at once: as many as the cores hold, given each forward's threads (an OpenVINO or ONNX
    Runtime forward takes every core by default, so requests take turns; a 1-thread torch forward, one per core)."""
    if settings.max_concurrent_forwards is not None:
        return settings.max_concurrent_forwards
    cores = os.cpu_count() or 1
    runtime = state.embedder.runtime if state.embedder is not None else None
    if runtime is None or runtime.device.type != "cpu":
        return cores
    threads = getattr(runtime, "threads", None) or (settings.torch_threads if runtime.name == "torch" else cores)
    return max(1, cores // threads)


def _start_batcher(state: ServiceState, settings: Settings) -> MicroBatcher | None:
    """Micro-batch concurrent query embeddings where it pays (a GPU); on the CPU one forward per request is faster."""
    embedder = state.embedder
    wanted = settings.micro_batching == "on" or (settings.micro_batching == "auto" and embedder is not None
                                                 and embedder.device.type == "cuda")
    if embedder is None or not wanted:
        return None
    return MicroBatcher(embedder.embed_tensors, window_ms=settings.batch_window_ms, max_batch=settings.max_batch_size)


class DeadlineMiddleware:
    """Answer 503 {"error": {"code": "timeout"}} when a request runs past its deadline (pure ASGI, no buffering).

    Work already handed to a thread cannot be interrupted; the caller gets its answer on time regardless.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), timeout=self.timeout_s)
        except TimeoutError:
            if started:  # the status line is out already; nothing sensible left to send
                raise
            response = JSONResponse({"error": {"code": "timeout", "message": f"request took over {self.timeout_s} s"}},
                                    status_code=503)
            await response(scope, receive, send)


def route_policies(settings: Settings) -> list[RoutePolicy]:
    """Keys and body limits per route, checked by the guard before any body is read; every route not listed
    (and every unlisted method) gets no key and ``max_small_body_bytes``.

    A search body holds one image (base64 in JSON grows it by 4/3) and its options (lists up to the query
    string's limit); an upsert holds one image and its metadata.
    """
    return [
        RoutePolicy("POST", "/search", "search", settings.max_upload_bytes * 4 // 3 + settings.max_query_bytes),
        RoutePolicy("POST", "/search/batch", "search", settings.max_batch_body_bytes),
        RoutePolicy("*", "/items/{rest:path}", "search"),
        RoutePolicy("PUT", "/admin/items/{item_id}", "admin", settings.max_upload_bytes + settings.max_small_body_bytes),
        RoutePolicy("*", "/admin/{rest:path}", "admin"),
    ]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; it loads the current generation at start-up and follows the pointer afterwards."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _limit_threads(settings)
        state = ServiceState(settings.data_dir, settings.device, metrics=app.state.metrics,
                             retire_after_s=settings.retire_after_s, options=settings.runtime_options(),
                             min_cosine=settings.runtime_min_cosine, milvus=settings.milvus_target())
        app.state.service = state
        try:
            await asyncio.to_thread(state.reload)
            await asyncio.to_thread(state.warm_up)
        except Exception as exc:  # noqa: BLE001 - serve /healthz and 503s, and wait for a good generation
            log.warning("starting without an index: %s", exc)
        app.state.forward_slots = asyncio.Semaphore(forward_slots(state, settings))
        state.localiser = await asyncio.to_thread(load_query_localiser, settings)
        state.batcher = _start_batcher(state, settings)
        watcher = ReloadWatcher(state, settings.reload_interval_s, app.state.metrics)
        app.state.watcher = watcher
        watcher.start()
        try:
            yield
        finally:
            await watcher.stop()
            if state.batcher is not None:
                await state.batcher.aclose()
            state.close()

    app = FastAPI(title="Lookalike", version="0.1.0", lifespan=lifespan, generate_unique_id_function=operation_id,
                  description="Visual search for product catalogs: upload a photo, get the most similar products.")
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.reindex = admin.ReindexRunner()
    install_error_handlers(app)
    install_openapi(app)
    # Outermost last: CORS (answers preflights, decorates every answer), then the guard (keys and body limits
    # before any body is read), then the deadline.
    app.add_middleware(DeadlineMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(RequestGuard, policies=route_policies(settings), admin_key=settings.admin_api_key,
                       search_key=settings.search_api_key, default_body_limit=settings.max_small_body_bytes,
                       max_query_bytes=settings.max_query_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])
    for module in (search, items, admin, ops):
        app.include_router(module.router)
    return app
