"""Runs the real `lookalike` command with a fault injected at one stage of `lookalike index` (for tests/cli/test_faults.py).

    python tests/cli/fault_runner.py '<JSON list of jobs>'

Each job is {"mode", "stage", "data_dir", "args"}. The heavy imports happen once; every job then runs in a
forked child (all side by side), with LOOKALIKE_DATA_DIR set to its data dir, its output in
``<data_dir>.log``. One JSON line per job is printed when all have ended: {"job": i, "returncode": ...}
(negative: killed by that signal).

MODE ``kill``: the child sends itself SIGKILL when the stage starts (``extract``: right after its first shard
is written; ``published``: right after the pointer moved, before old generations are pruned), as ``kill -9``
would at that moment. MODE ``hold``: the child writes its pid to ``<data_dir>/HOLDING`` when the stage starts
and waits (at most 120 s) until that file is removed, so a test can act while the job holds the data dir's lock.
MODE ``fsize``: RLIMIT_FSIZE is set to STAGE bytes (SIGXFSZ ignored), so writes past it fail with EFBIG.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import indexer.build
import indexer.shards
from cli.main import main as lookalike

WHERE = {  # stage -> (object, attribute, fault after the call)
    "ingest": (indexer.build, "read_catalog", False),
    "extract": (indexer.shards.ShardSet, "write", True),
    "assemble": (indexer.build, "assemble", False),
    "index": (indexer.build, "build_index", False),
    "publish": (indexer.build, "publish", False),
    "published": (indexer.build, "prune_generations", False),
}


def _inject(mode: str, stage: str, data_dir: Path) -> None:
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(stage), int(stage)))
        return
    target, name, after = WHERE[stage]
    original = getattr(target, name)

    @functools.wraps(original)
    def wrapped(*args: object, **kwargs: object) -> object:
        result = original(*args, **kwargs) if after else None
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        marker = data_dir / "HOLDING"
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return result if after else original(*args, **kwargs)

    setattr(target, name, wrapped)


def _child(job: dict[str, object]) -> None:
    data_dir = Path(str(job["data_dir"]))
    log = os.open(f"{data_dir}.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["LOOKALIKE_DATA_DIR"] = str(data_dir)
    _inject(str(job["mode"]), str(job["stage"]), data_dir)
    sys.argv = ["lookalike", *job["args"]]  # type: ignore[misc]
    try:
        lookalike()
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    os._exit(0)


def main() -> None:
    jobs = json.loads(sys.argv[1])
    children = {}
    for n, job in enumerate(jobs):
        pid = os.fork()
        if pid == 0:
            _child(job)
        children[pid] = n
    for _ in jobs:
        pid, status = os.wait()
        print(json.dumps({"job": children[pid], "returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    main()
