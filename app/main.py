"""The application factory: settings in, a FastAPI app out; loading happens in the lifespan, not at import."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.errors import install_error_handlers
from app.routes import router
from app.serving import ServiceState
from app.settings import Settings
from indexer import GenerationError

log = logging.getLogger(__name__)


async def _watch(state: ServiceState, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await asyncio.to_thread(state.maybe_reload)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service; it loads the current generation at start-up and follows the pointer afterwards."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        state = ServiceState(settings.data_dir, settings.device)
        app.state.service = state
        try:
            await asyncio.to_thread(state.reload)
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
    app.state.registry = CollectorRegistry()
    install_error_handlers(app)
    app.include_router(router)
    return app
