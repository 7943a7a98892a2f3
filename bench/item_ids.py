"""Item-id resolution: a whole candidate list of the shop's item ids -> vector ids, as the planner does it.

For a few id shapes, times ``ItemIdIndex.lookup`` of ``--queries`` random ids of a ``--catalog``-id catalog
against a Python dict, side by side in one run (CPU time of this thread, median of ``--rounds``); ``--previous
REV`` adds the ``indexer/item_ids.py`` of a git revision as a third column (checked to give the same answers).

    .venv/bin/python bench/item_ids.py [--catalog 1000000] [--queries 100000] [--previous bd49a8b]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ann import machine_header  # noqa: E402
from indexer.item_ids import ItemIdIndex  # noqa: E402

SHAPES: dict[str, Callable[[int], str]] = {
    "2-7 bytes (i0 .. i999999)": lambda i: f"i{i}",
    "12-byte SKU (one width)": lambda i: f"sku-{i:08d}",
    "36-byte UUID-like (one width)": lambda i: f"{i:08x}-0000-4000-8000-{i * 2654435761 % 16**12:012x}",
}


def previous_module(rev: str):  # type: ignore[no-untyped-def]
    """``indexer/item_ids.py`` as it was at git revision ``rev``, imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:indexer/item_ids.py"], cwd=root, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="item-ids-")) / "previous_item_ids.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_item_ids", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr]  (dataclasses look their module up there)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def cpu_ms(run: Callable[[], object]) -> float:
    """This thread's CPU milliseconds for one ``run()``."""
    start = time.thread_time()
    run()
    return (time.thread_time() - start) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalog", type=int, default=1_000_000, help="item ids in the catalog")
    parser.add_argument("--queries", type=int, default=100_000, help="ids in one candidate list")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--previous", help="a git revision whose ItemIdIndex runs beside (e.g. bd49a8b)")
    args = parser.parse_args()
    previous = previous_module(args.previous) if args.previous else None
    print(machine_header("item-id resolution"))
    print(f"{args.queries:,} random ids of {args.catalog:,}; CPU ms, median of {args.rounds} (interleaved)\n")
    extra = f" {args.previous} |" if previous else ""
    print(f"| ids | dict |{extra} ItemIdIndex |" + (" ratio |" if previous else ""))
    print("|---|---|" + ("---|---|" if previous else "") + "---|")
    for name, make in SHAPES.items():
        ids = [make(i) for i in range(args.catalog)]
        rows = {item: i for i, item in enumerate(ids)}
        index = ItemIdIndex(ids)
        old = previous.ItemIdIndex(ids) if previous else None
        picked = np.random.default_rng(1).choice(args.catalog, min(args.queries, args.catalog), replace=False)
        wanted = [make(int(i)) for i in picked] + ["not-in-the-catalog"] * 10
        expected = np.fromiter(map(rows.get, wanted, [-1] * len(wanted)), dtype=np.int64, count=len(wanted))
        if not np.array_equal(index.lookup(wanted), expected) or (
                old is not None and not np.array_equal(old.lookup(wanted), expected)):
            raise SystemExit(f"{name}: a lookup disagrees with the dict")
        times: dict[str, list[float]] = {"dict": [], "old": [], "new": []}
        for _ in range(args.rounds):
            times["dict"].append(cpu_ms(lambda: np.fromiter(map(rows.get, wanted, [-1] * len(wanted)),
                                                            dtype=np.int64, count=len(wanted))))
            if old is not None:
                times["old"].append(cpu_ms(lambda: old.lookup(wanted)))
            times["new"].append(cpu_ms(lambda: index.lookup(wanted)))
        med = {k: float(np.median(v)) for k, v in times.items() if v}
        cells = [f"{med['dict']:.1f}"] + ([f"{med['old']:.1f}"] if old is not None else []) + [f"{med['new']:.1f}"]
        if old is not None:
            cells.append(f"{med['new'] / med['old']:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
