"""Micro-batching of query embeddings: concurrent requests share one model forward.

A lone query waits at most ``window_ms`` for company; under load, the requests that arrive while a forward
runs are gathered (up to ``max_batch``) and go through the network together, which costs far less than one
forward each. The forward runs in a worker thread, so the event loop keeps serving while the model computes.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], np.ndarray]


class BatcherClosed(RuntimeError):
    """The batcher was shut down; no new embeddings are accepted."""


@dataclass
class BatchStats:
    """What the batcher has done so far (for metrics and tests)."""

    forwards: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)


@dataclass
class _Pending:
    tensor: torch.Tensor
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Collect concurrent ``embed`` calls for up to ``window_ms`` or ``max_batch`` items, run one forward for all.

    ``forward`` takes a stacked batch of preprocessed images (N, 3, S, S) and returns (N, D) float32 vectors,
    e.g. ``Embedder.embed_tensors``; it is injected so that tests and benchmarks can count or replace it.
    At most ``max_inflight`` forwards run at a time; requests that arrive meanwhile queue up for the next batch.
    """

    def __init__(self, forward: Forward, *, window_ms: float = 2.0, max_batch: int = 16, max_inflight: int = 1,
                 keep_sizes: int = 1000) -> None:
        if window_ms < 0 or max_batch < 1 or max_inflight < 1:
            raise ValueError("window_ms must be >= 0, max_batch and max_inflight >= 1")
        self.forward = forward
        self.window_s = window_ms / 1000
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._keep_sizes = keep_sizes
        self._slots = asyncio.Semaphore(max_inflight)
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._collector: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._closed = False

    async def embed(self, tensor: torch.Tensor) -> np.ndarray:
        """One preprocessed image (3, S, S) -> its (D,) vector, computed in a batch with concurrent callers."""
        if self._closed:
            raise BatcherClosed("the embedding batcher is shut down")
        if tensor.dim() != 3:
            raise ValueError(f"expected one preprocessed image (3, S, S), got shape {tuple(tensor.shape)}")
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect(), name="micro-batcher")
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(tensor, future))
        self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        """Stop accepting calls, finish the ones already queued, and wait for running forwards."""
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        if self._collector is not None:
            await self._collector
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            # Wait for company until the window (from now: the first caller's arrival) closes or the batch is full.
            deadline = loop.time() + self.window_s
            while len(self._pending) < self.max_batch and not self._closed:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            # While every forward slot is busy, newcomers keep joining the next batch (up to max_batch).
            await self._slots.acquire()
            batch = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            live = [p for p in batch if not p.future.done()]  # callers that gave up (cancelled) cost nothing
            if not live:
                self._slots.release()
                continue
            task = asyncio.create_task(self._run(live))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            try:
                vectors = await asyncio.to_thread(self._forward_batch, [p.tensor for p in batch])
            except BaseException as exc:  # every waiting caller gets the failure, the batcher keeps going
                log.debug("batched forward of %d failed: %s", len(batch), exc)
                error = exc if isinstance(exc, Exception) else RuntimeError(f"embedding forward aborted: {exc!r}")
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                if not isinstance(exc, Exception):
                    raise
                return
            for p, vector in zip(batch, vectors, strict=True):
                if not p.future.done():
                    p.future.set_result(vector.copy())
        finally:
            self._slots.release()

    def _forward_batch(self, tensors: list[torch.Tensor]) -> np.ndarray:
        out = np.asarray(self.forward(torch.stack(tensors)))
        if out.ndim != 2 or len(out) != len(tensors):
            raise RuntimeError(f"forward returned shape {out.shape} for a batch of {len(tensors)}")
        self.stats.forwards += 1
        self.stats.items += len(tensors)
        self.stats.sizes.append(len(tensors))
        if len(self.stats.sizes) > self._keep_sizes:
            del self.stats.sizes[: len(self.stats.sizes) - self._keep_sizes]
        return out

