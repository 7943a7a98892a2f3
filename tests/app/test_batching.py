"""MicroBatcher: concurrent query embeddings share one forward of the real model, failures reach every caller."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from app.batching import BatcherClosed, MicroBatcher
from tests.conftest import draw_product


class CountingForward:
    """Wraps a forward function and records the batch size of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.sizes: list[int] = []

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        self.sizes.append(len(batch))
        return self.fn(batch)


def fake_forward(batch: torch.Tensor) -> np.ndarray:
    """A cheap deterministic 'model': per-image channel means."""
    return batch.mean(dim=(2, 3)).numpy().astype(np.float32)


@pytest.fixture(scope="module")
def tensors(embedder) -> list[torch.Tensor]:
    return [embedder.preprocess(draw_product(p, v)) for p in range(4) for v in range(3)]


def test_concurrent_calls_share_one_forward_and_match_unbatched(embedder, tensors):
    forward = CountingForward(embedder.embed_tensors)

    async def main():
        batcher = MicroBatcher(forward, window_ms=200, max_batch=64)
        try:
            return await asyncio.gather(*(batcher.embed(t) for t in some))
        finally:
            await batcher.aclose()

    some = tensors[::2]  # 6 images of 4 products
    vectors = asyncio.run(main())
    assert forward.sizes == [len(some)]  # all callers arrived within the window: one forward
    unbatched = np.stack([embedder.embed_tensors(t[None])[0] for t in some])
    np.testing.assert_allclose(np.stack(vectors), unbatched, atol=1e-4)
    assert all(v.shape == (embedder.dim,) for v in vectors)


def test_batches_never_exceed_max_batch_and_every_caller_gets_its_own_vector(tensors):
    forward = CountingForward(fake_forward)

    async def main():
        batcher = MicroBatcher(forward, window_ms=100, max_batch=5)
        try:
            return await asyncio.gather(*(batcher.embed(t) for t in tensors))
        finally:
            await batcher.aclose()

    vectors = asyncio.run(main())
    assert sum(forward.sizes) == len(tensors) and max(forward.sizes) <= 5
    assert len(forward.sizes) == 3  # 12 callers, batches of 5, 5, 2
    for tensor, vector in zip(tensors, vectors, strict=True):
        np.testing.assert_allclose(vector, fake_forward(tensor[None])[0], rtol=1e-5)


def test_a_failing_forward_reaches_every_waiting_caller_and_the_batcher_recovers(tensors):
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return fake_forward(batch)

    async def main():
        batcher = MicroBatcher(flaky, window_ms=100, max_batch=64)
        try:
            first = await asyncio.gather(*(batcher.embed(t) for t in tensors[:6]), return_exceptions=True)
            second = await batcher.embed(tensors[0])
            return first, second
        finally:
            await batcher.aclose()

    first, second = asyncio.run(main())
    assert len(first) == 6
    assert all(isinstance(r, RuntimeError) and "out of memory" in str(r) for r in first)
    np.testing.assert_allclose(second, fake_forward(tensors[0][None])[0], rtol=1e-5)


def test_a_lone_call_runs_alone_and_a_full_batch_does_not_wait_for_the_window(tensors):
    forward = CountingForward(fake_forward)

    async def main():
        lone = MicroBatcher(forward, window_ms=20, max_batch=64)
        await asyncio.wait_for(lone.embed(tensors[0]), timeout=30)
        await lone.aclose()
        # A window of ten minutes: only a full batch (max_batch=1) can make this call return before the timeout.
        full = MicroBatcher(forward, window_ms=600_000, max_batch=1)
        await asyncio.wait_for(full.embed(tensors[1]), timeout=30)
        await full.aclose()

    asyncio.run(main())
    assert forward.sizes == [1, 1]


def first_forward_blocks():
    """A forward that records batch sizes and holds its first call until ``release`` is set."""
    release = threading.Event()
    sizes: list[int] = []

    def slow(batch):
        sizes.append(len(batch))
        if len(sizes) == 1:
            release.wait(timeout=30)
        return fake_forward(batch)

    return slow, sizes, release


def test_callers_arriving_during_a_forward_form_the_next_batch(tensors):
    slow, sizes, release = first_forward_blocks()

    async def main():
        batcher = MicroBatcher(slow, window_ms=0, max_batch=64)
        first = asyncio.ensure_future(batcher.embed(tensors[0]))
        while not sizes:  # the first forward is running (and blocked) in its worker thread
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.embed(t)) for t in tensors[1:8]]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *rest)
        await batcher.aclose()

    asyncio.run(main())
    assert sizes == [1, 7]


def test_the_event_loop_keeps_running_during_a_forward(tensors):
    def blocking(batch):
        time.sleep(0.3)
        return fake_forward(batch)

    async def main():
        batcher = MicroBatcher(blocking, window_ms=0)
        ticks = 0
        call = asyncio.ensure_future(batcher.embed(tensors[0]))
        while not call.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await batcher.aclose()
        return ticks

    assert asyncio.run(main()) >= 5


def test_cancelled_callers_are_dropped_from_the_batch(tensors):
    slow, sizes, release = first_forward_blocks()

    async def main():
        batcher = MicroBatcher(slow, window_ms=0, max_batch=64)
        first = asyncio.ensure_future(batcher.embed(tensors[0]))
        while not sizes:
            await asyncio.sleep(0.005)
        gone = asyncio.ensure_future(batcher.embed(tensors[1]))
        kept = asyncio.ensure_future(batcher.embed(tensors[2]))
        await asyncio.sleep(0.02)
        gone.cancel()
        release.set()
        await asyncio.gather(first, kept)
        await batcher.aclose()
        return gone.cancelled()

    assert asyncio.run(main()) is True
    assert sizes == [1, 1]


def test_shutdown_serves_queued_calls_then_refuses_new_ones(tensors):
    forward = CountingForward(fake_forward)

    async def main():
        batcher = MicroBatcher(forward, window_ms=10_000, max_batch=64)
        pending = [asyncio.ensure_future(batcher.embed(t)) for t in tensors[:3]]
        await asyncio.sleep(0.01)
        await batcher.aclose()  # does not wait out the 10 s window: closing flushes what is queued
        results = await asyncio.gather(*pending)
        with pytest.raises(BatcherClosed):
            await batcher.embed(tensors[0])
        return results

    results = asyncio.run(main())
    assert len(results) == 3 and forward.sizes == [3]


def test_rejects_a_batch_instead_of_an_image():
    async def main():
        batcher = MicroBatcher(fake_forward)
        with pytest.raises(ValueError, match="one preprocessed image"):
            await batcher.embed(torch.zeros(2, 3, 8, 8))
        await batcher.aclose()

    asyncio.run(main())
