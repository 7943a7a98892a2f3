"""The delta store under concurrent writers and readers (issue 11, row 7), without HTTP in between.

Seeded threads upsert, delete and read snapshots of one DeltaLog at once (as the service's request threads
do). Every write must succeed, versions must be unique, and replaying the writes in version order on a dict
model must give exactly the final snapshot: rows, vectors and tombstones. Before the fix the store shared
one connection between threads: ``UNIQUE constraint failed: delta_items.id`` and ``cannot rollback - no
transaction is active``, and one thread's commit could publish another's half-done upsert.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import numpy as np
import pytest

from indexer.catalog import CatalogRow
from indexer.delta import DeltaLog

BASE = 10  # base rows 0..9 are items b0..b9
DIM = 8
ITEMS = [f"b{i}" for i in range(BASE)] + [f"n{i}" for i in range(6)]


def base_id(item: str) -> int | None:
    return int(item[1:]) if item.startswith("b") else None


def vector(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_concurrent_writes_equal_their_replay_in_version_order(tmp_path: Path, seed: int) -> None:
    store = DeltaLog(tmp_path, BASE, DIM)
    log: list[tuple[int, str, str, int]] = []  # (version, op, item, payload seed)
    errors: list[BaseException] = []
    seen_versions: list[int] = []

    def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        for step in range(150):
            item, op, payload = rng.choice(ITEMS), rng.random(), rng.randrange(1 << 30)
            try:
                if op < 0.45:
                    row = CatalogRow(item, f"prod{payload}", Path(f"/img/{payload}.jpg"), title=f"t{payload}")
                    change = store.upsert(row, f"h{payload}", vector(payload), base_id(item))
                    log.append((change.version, "upsert", item, payload))
                elif op < 0.8:
                    change = store.delete(item, base_id(item))
                    if change is not None:
                        log.append((change.version, "delete", item, 0))
                else:
                    snap = store.snapshot()
                    seen_versions.append(snap.version)
                    assert len(snap.ids) == len(snap.items) == len(snap.by_item_id) == len(snap.vectors)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    versions = [v for v, *_ in log]
    assert len(set(versions)) == len(versions)

    live: dict[str, int] = {f"b{i}": -1 for i in range(BASE)}  # item -> payload seed (-1: the base row)
    for _, op, item, payload in sorted(log):
        if op == "upsert":
            live[item] = payload
        else:
            assert item in live, f"delete of {item} acknowledged while it was not live"
            del live[item]

    snap = store.snapshot()
    assert snap.version == max(versions, default=0)
    delta_items = {it.item_id: it for it in snap.items.values()}
    assert delta_items.keys() == {i for i, p in live.items() if p >= 0}
    for item_id, it in delta_items.items():
        assert it.product_id == f"prod{live[item_id]}"
        np.testing.assert_array_equal(snap.vectors[list(snap.ids).index(it.id)], vector(live[item_id]))
    untouched_base = {int(i[1:]) for i, p in live.items() if p == -1}
    assert set(snap.tombstones.tolist()) == set(range(BASE)) - untouched_base
    assert len(set(snap.ids.tolist())) == len(snap.ids) and all(i >= BASE for i in snap.ids)
    store.close()


def test_ids_are_never_reused(tmp_path: Path) -> None:
    store = DeltaLog(tmp_path, BASE, DIM)
    first = store.upsert(CatalogRow("n0", "p", Path("/a.jpg")), "h", vector(0), None).id
    store.delete("n0", None)
    second = store.upsert(CatalogRow("n1", "p", Path("/b.jpg")), "h", vector(1), None).id
    assert second != first  # an id seen in an older snapshot never names another item
    store.close()
    reopened = DeltaLog(tmp_path, BASE, DIM)
    assert reopened.upsert(CatalogRow("n2", "p", Path("/c.jpg")), "h", vector(2), None).id > second
    reopened.close()
