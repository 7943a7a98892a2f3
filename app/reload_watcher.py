"""The background task that follows the generation pointer and closes retired generations."""

from __future__ import annotations

import asyncio
import logging

from app.metrics import ServiceMetrics
from app.serving import ServiceState

log = logging.getLogger(__name__)


class ReloadWatcher:
    """Polls the pointer every ``interval_s``; no error stops it (each is logged and counted), so it only ends
    when the service stops or the task is cancelled, and ``status`` says so (readyz reports it)."""

    def __init__(self, state: ServiceState, interval_s: float, metrics: ServiceMetrics | None = None) -> None:
        self.state = state
        self.interval_s = interval_s
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="reload-watcher")

    @property
    def status(self) -> str:
        """``disabled`` (interval 0), ``running``, or ``stopped`` (the task ended: hot swap no longer works)."""
        if self._task is None:
            return "disabled"
        return "stopped" if self._task.done() else "running"

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await asyncio.to_thread(self.state.maybe_reload)
                await asyncio.to_thread(self.state.close_retired)
            except Exception:  # noqa: BLE001 - keep watching whatever happened
                log.exception("reload watcher: unexpected error; it keeps watching")
                if self.metrics is not None:
                    self.metrics.watcher_errors.inc()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
