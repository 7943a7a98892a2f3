"""What the benches (and the live-server test) share: waiting for a server to be ready, and timing a call."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float, describe: Callable[[], str] = str) -> None:
    """Poll ``url``/readyz until it answers 200. Raises RuntimeError when ``process`` exits or ``timeout_s``
    passes first; ``describe()`` adds context to the message (the tail of the server's log, say)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before it was ready. {describe()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server was not ready after {timeout_s:.0f} s. {describe()}")
        time.sleep(0.2)


def timed(fn: Callable[..., object], *args: object, rounds: int) -> tuple[list[float], float]:
    """Call ``fn(*args)`` ``rounds`` times: (wall seconds of each call, process CPU seconds per call)."""
    times = []
    cpu = time.process_time()
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return times, (time.process_time() - cpu) / max(rounds, 1)
