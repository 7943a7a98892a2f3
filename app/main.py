"""The application factory: settings in, a FastAPI app out; loading happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import faiss
import torch
from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from app.api import admin, items, ops, search
from app.errors import install_error_handlers
from app.metrics import ServiceMetrics
from app.serving import ServiceState
from app.settings import Settings
from indexer import GenerationError

log = logging.getLogger(__name__)


async def _watch(state: ServiceState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(state.maybe_reload)


def _limit_threads(settings: Settings) -> None:
    """One pool of compute threads for torch and FAISS, sized to the machine, so they do not oversubscribe it."""
    threads = settings.torch_threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; it loads the current generation at start-up and follows the pointer afterwards."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _limit_threads(settings)
        state = ServiceState(settings.data_dir, settings.device)
        app.state.service = state
        try:
            await asyncio.to_thread(state.reload)
            await asyncio.to_thread(state.warm_up)
        except GenerationError as exc:
            log.warning("starting without an index: %s", exc)
        watcher = asyncio.create_task(_watch(state, settings.reload_interval_s)) if settings.reload_interval_s else None
        try:
            yield
        finally:
            if watcher:
                watcher.cancel()

    app = FastAPI(title="Lookalike", version="0.1.0", lifespan=lifespan,
                  description="Visual search for product catalogs: upload a photo, get the most similar products.")
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.reindex = admin.ReindexRunner()
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["*"])

    @app.middleware("http")
    async def deadline(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            return await asyncio.wait_for(call_next(request), timeout=settings.request_timeout_s)
        except TimeoutError:
            return JSONResponse({"error": {"code": "timeout", "message":
                                           f"request took over {settings.request_timeout_s} s"}}, status_code=503)

    for module in (search, items, admin, ops):
        app.include_router(module.router)
    return app
