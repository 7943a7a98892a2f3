"""A generation as the service queries it: base catalog, vectors and index, plus the delta and tombstones.

Every read goes through here, so a deleted item never comes back and an added one is found at once,
whether the query uses the ANN index, an exact candidate set, a keyword or an item id.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from indexer.delta import DeltaSnapshot, DeltaStore
from indexer.store import CatalogStore, StoredItem
from indexer.vector_index import VectorIndex, exact_top_k


class LiveCatalog:
    """Base generation merged with its delta; the delta snapshot is refreshed when its version changes."""

    def __init__(self, generation_dir: Path, store: CatalogStore, vectors: np.ndarray, index: VectorIndex) -> None:
        self.store = store
        self.base_vectors = vectors
        self.index = index
        self.dim = int(vectors.shape[1])
        self.base_count = int(len(vectors))
        self.delta = DeltaStore(generation_dir, self.base_count, self.dim)
        self._lock = threading.Lock()
        self._snapshot = self.delta.snapshot()

    def close(self) -> None:
        self.delta.close()
        self.store.close()

    def snapshot(self) -> DeltaSnapshot:
        """The current delta, reloaded only when a writer has changed it."""
        with self._lock:
            if self.delta.version() != self._snapshot.version:
                self._snapshot = self.delta.snapshot()
            return self._snapshot

    @property
    def count(self) -> int:
        snap = self.snapshot()
        return self.base_count - len(snap.tombstones) + len(snap.ids)

    def _alive(self, ids: np.ndarray, snap: DeltaSnapshot) -> np.ndarray:
        """Drop tombstoned base ids and delta ids that no longer exist."""
        base = ids < self.base_count
        keep = np.where(base, ~np.isin(ids, snap.tombstones), np.isin(ids, snap.ids))
        return ids[keep]

    # --- rows ---------------------------------------------------------------------------------------------
    def base_id_of(self, item_id: str) -> int | None:
        """The live base row of an item id (None if absent or tombstoned)."""
        item = self.store.by_item_id(item_id)
        if item is None or np.isin(item.id, self.snapshot().tombstones):
            return None
        return item.id

    def by_item_id(self, item_id: str) -> StoredItem | None:
        snap = self.snapshot()
        if item_id in snap.by_item_id:
            return snap.items[snap.by_item_id[item_id]]
        item = self.store.by_item_id(item_id)
        return None if item is None or np.isin(item.id, snap.tombstones) else item

    def by_ids(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        snap = self.snapshot()
        alive = self._alive(np.asarray(ids, dtype=np.int64), snap)
        found = self.store.by_ids([int(i) for i in alive if i < self.base_count])
        found.update({int(i): snap.items[int(i)] for i in alive if i >= self.base_count})
        return found

    def ids_for_item_ids(self, item_ids: Sequence[str]) -> dict[str, int]:
        snap = self.snapshot()
        found = {k: v for k, v in self.store.ids_for_item_ids(item_ids).items() if not np.isin(v, snap.tombstones)}
        found.update({i: snap.by_item_id[i] for i in item_ids if i in snap.by_item_id})
        return found

    def keyword_ids(self, text: str) -> list[tuple[int, float]]:
        """Live ids matching the keywords, with BM25 relevance (higher is better)."""
        hits = self.store.keyword_ids(text, limit=-1) + self.delta.keyword_ids(text)
        alive = set(self._alive(np.array([i for i, _ in hits], dtype=np.int64), self.snapshot()).tolist())
        return [(i, s) for i, s in hits if i in alive]

    def ids_in_categories(self, categories: Sequence[str]) -> np.ndarray:
        snap = self.snapshot()
        base = np.array(self.store.ids_in_categories(categories), dtype=np.int64)
        delta = [i for i, it in snap.items.items() if it.category in set(categories)]
        return self._alive(np.concatenate([base, np.array(delta, dtype=np.int64)]), snap)

    # --- vectors ------------------------------------------------------------------------------------------
    def vectors_for(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of live ids (base from the memory map, delta from the snapshot)."""
        snap = self.snapshot()
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        base = ids < self.base_count
        if base.any():
            out[base] = self.base_vectors[ids[base]]
        if (~base).any():
            position = {int(i): n for n, i in enumerate(snap.ids)}
            out[~base] = snap.vectors[[position[int(i)] for i in ids[~base]]]
        return out

    def scores_for(self, ids: np.ndarray, vector: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """Exact inner products of ``vector`` with the stored vectors of ``ids``, gathered in bounded chunks."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        out = np.empty(len(ids), dtype=np.float32)
        for start in range(0, len(ids), chunk):
            out[start:start + chunk] = self.vectors_for(ids[start:start + chunk]) @ query
        return out

    def vector_of(self, item: StoredItem) -> np.ndarray:
        return self.vectors_for(np.array([item.id], dtype=np.int64))[0]

    def all_ids(self) -> np.ndarray:
        snap = self.snapshot()
        return np.concatenate([np.setdiff1d(np.arange(self.base_count, dtype=np.int64), snap.tombstones), snap.ids])

    def search(self, vector: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """ANN over the base (tombstones filtered out) merged with exact search over the delta; best first."""
        snap = self.snapshot()
        base_allowed = None if allowed_ids is None else allowed_ids[allowed_ids < self.base_count]
        scores, ids = np.zeros(0, np.float32), np.zeros(0, np.int64)
        if self.index.ntotal and (base_allowed is None or len(base_allowed)):
            fetch = k + len(snap.tombstones)
            s, i = self.index.search(vector, fetch, allowed_ids=base_allowed)
            keep = (i[0] >= 0) & ~np.isin(i[0], snap.tombstones)
            scores, ids = s[0][keep], i[0][keep]
        if len(snap.ids):
            delta_mask = np.ones(len(snap.ids), bool) if allowed_ids is None else np.isin(snap.ids, allowed_ids)
            ds, di = exact_top_k(snap.vectors[delta_mask], snap.ids[delta_mask], vector, k)
            scores, ids = np.concatenate([scores, ds]), np.concatenate([ids, di])
        order = np.lexsort((ids, -scores))[:k]
        return scores[order], ids[order]
