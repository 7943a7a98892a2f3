"""One writer per data dir: a file lock held by every job that builds, publishes or rolls back generations.

``lookalike index``, ``lookalike rollback`` and the service's ``/admin/reindex`` take it; a second job gets
:class:`DataDirLocked` at once (never a wait), naming the holder's pid and job. The lock is the kernel's
``flock`` (via ``filelock``), so a killed holder releases it; the owner file beside it is only informative.
Whoever takes the lock first removes what a killed job left behind (generations without a manifest,
half-written pointer files); extraction shards stay, so a re-run resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from indexer.generations import MANIFEST, POINTER, PREFIX, generations_dir

log = logging.getLogger(__name__)

LOCK_FILE = "LOCK"
OWNER_FILE = "LOCK.owner"


class DataDirLocked(RuntimeError):
    """Another job holds the data dir's lock."""

    def __init__(self, data_dir: Path, owner: dict[str, object]) -> None:
        who = f"pid {owner.get('pid', '?')}"
        if owner.get("job"):
            who += f", {owner['job']}"
        if owner.get("since"):
            who += f", since {owner['since']}"
        super().__init__(f"another job holds the lock on {data_dir} ({who}); wait for it to finish")
        self.owner = owner


def read_owner(data_dir: Path) -> dict[str, object]:
    try:
        return json.loads((data_dir / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def remove_partial_generations(data_dir: Path) -> list[str]:
    """Delete generation folders without a manifest and stale temporary pointer files; returns what went.

    Only safe while holding the lock: a running build's folder has no manifest yet either.
    """
    removed = []
    root = generations_dir(data_dir)
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if path.is_dir() and path.name.startswith(PREFIX) and not (path / MANIFEST).is_file():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    for stale in [data_dir / (POINTER + ".tmp"), *data_dir.glob(f".{POINTER}.*.tmp")]:  # see models.atomic
        stale.unlink(missing_ok=True)
    if removed:
        log.warning("removed partial generations left by a killed job: %s", ", ".join(removed))
    return removed


class DataDirLock:
    """The data dir's writer lock; ``acquire`` never waits. May be released from another thread."""

    def __init__(self, data_dir: Path, job: str) -> None:
        self.data_dir = data_dir
        self.job = job
        data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(data_dir / LOCK_FILE, timeout=0, thread_local=False)

    def acquire(self) -> DataDirLock:
        try:
            self._lock.acquire()
        except Timeout:
            raise DataDirLocked(self.data_dir, read_owner(self.data_dir)) from None
        try:
            owner = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.job,
                     "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            tmp = self.data_dir / (OWNER_FILE + ".tmp")
            tmp.write_text(json.dumps(owner))
            os.replace(tmp, self.data_dir / OWNER_FILE)
            remove_partial_generations(self.data_dir)
        except BaseException:
            self._lock.release()
            raise
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            (self.data_dir / OWNER_FILE).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
