"""Extraction straight into Milvus: the embedded shards' rows written into a generation's collection, resumably.

Extraction embeds distinct images into resumable shards (``indexer.extract`` or ``indexer.ray_extract``). Each
shard then becomes the catalog rows that show its images (a distinct image may back several rows), written
with batched upserts (idempotent, so a replayed shard does no harm); a marker file per shard and collection
records what Milvus already holds, so a killed job resumes from the first shard it had not finished.

- ``write_shards``: one process writes every unfinished shard (the local engine, and milvus-lite, which one
  process at a time may open);
- ``write_shards_ray``: Ray Data reads the unfinished shards into rows and a ``MilvusDatasink`` writes them from
  the Ray workers (a Milvus server or cluster); with milvus-lite the rows stream back to this process instead.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.milvus_store import MilvusStore, MilvusTarget
from indexer.shards import ShardLayout, ShardSet

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 2_000


@dataclass(frozen=True)
class RowTable:
    """What a catalog row needs in Milvus besides its vector: its distinct image, category and product id."""

    row_to_unique: np.ndarray  # int64, one per row (the row's id is its position)
    categories: Sequence[str]
    product_ids: Sequence[str]

    def rows_of(self, start: int, stop: int) -> np.ndarray:
        """The rows whose distinct image lies in [start, stop), ascending."""
        return np.flatnonzero((self.row_to_unique >= start) & (self.row_to_unique < stop)).astype(np.int64)

    def shard_rows(self, store: ShardSet, shard: int) -> dict[str, Any]:
        """One shard as Milvus rows: columns id, vector, category, product_id (and the shard, for progress)."""
        start, stop = store.plan.bounds(shard)
        vectors, _ = store.read(shard)
        rows = self.rows_of(start, stop)
        return {"id": rows, "vector": vectors[self.row_to_unique[rows] - start],
                "category": [self.categories[i] for i in rows], "product_id": [self.product_ids[i] for i in rows],
                "shard": np.full(len(rows), shard, dtype=np.int64)}


def marker(store_path: Path, collection: str, shard: int) -> Path:
    return Path(store_path) / f"milvus-{collection}-{shard:05d}.done"


def unwritten(store: ShardSet, collection: str) -> list[int]:
    return [s for s in range(store.plan.shard_count) if not marker(store.path, collection, s).exists()]


class Progress:
    """Marks a shard written once all its rows are in (a shard's rows may arrive in more than one block)."""

    def __init__(self, store_path: Path, collection: str, plan: ShardLayout, table: RowTable) -> None:
        self.store_path, self.collection, self.plan, self.table = Path(store_path), collection, plan, table
        self.seen: dict[int, int] = {}

    def add(self, shards: np.ndarray) -> None:
        values, counts = np.unique(np.asarray(shards, dtype=np.int64), return_counts=True)
        for shard, count in zip(values.tolist(), counts.tolist(), strict=True):
            self.seen[shard] = self.seen.get(shard, 0) + count
            if self.seen[shard] == len(self.table.rows_of(*self.plan.bounds(shard))):
                marker(self.store_path, self.collection, shard).touch()


def _upsert(target: MilvusStore, columns: dict[str, Any], batch_rows: int) -> None:
    for start in range(0, len(columns["id"]), batch_rows):
        stop = start + batch_rows
        vectors = columns["vector"][start:stop]
        vectors = np.stack(vectors) if getattr(vectors, "dtype", None) == object else vectors  # Arrow list column
        target.upsert(np.asarray(vectors, dtype=np.float32), np.asarray(columns["id"][start:stop]),
                      list(columns["category"][start:stop]), list(columns["product_id"][start:stop]))


def write_shards(store: ShardSet, table: RowTable, target: MilvusStore, *,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """Write every shard not yet in ``target``'s collection, in this process; returns how many were written."""
    todo = unwritten(store, target.collection)
    for shard in todo:
        _upsert(target, table.shard_rows(store, shard), batch_rows)
        marker(store.path, target.collection, shard).touch()
    if todo:
        log.info("milvus: %d shards written into %s", len(todo), target.collection)
    return len(todo)


def shard_to_rows(batch: dict[str, np.ndarray], work_path: str, plan: dict[str, Any],
                  table: RowTable) -> dict[str, Any]:
    """Ray Data task: a batch of shard numbers -> the Milvus rows of those shards."""
    store = ShardSet(Path(work_path), ShardLayout(**plan))
    parts = [table.shard_rows(store, int(s)) for s in batch["shard"]]
    return {key: np.concatenate([np.asarray(p[key]) for p in parts]) for key in parts[0]}


def make_datasink(target: MilvusTarget, collection: str, work_path: str, batch_rows: int, progress: Progress) -> Any:
    """A Ray Data ``Datasink`` that upserts blocks of rows into ``collection`` and marks their shards written."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class MilvusDatasink(Datasink):
        def __init__(self) -> None:
            self.target, self.collection, self.work_path, self.batch_rows = target, collection, work_path, batch_rows

        @property
        def supports_distributed_writes(self) -> bool:
            return not self.target.embedded

        def write(self, blocks: Iterable[Any], ctx: Any) -> int:
            store = MilvusStore.open(self.target.connect(), self.collection, model_id=None,
                                     embedded=self.target.embedded)
            written = 0
            try:
                for block in blocks:
                    columns = BlockAccessor.for_block(block).to_numpy()
                    _upsert(store, columns, self.batch_rows)
                    written += len(columns["id"])
                    self.progress.add(columns["shard"])
            finally:
                store.close()
            return written

    sink = MilvusDatasink()
    sink.progress = progress
    return sink


def write_shards_ray(store: ShardSet, table: RowTable, target: MilvusTarget, collection: str,
                     client_store: MilvusStore, *, batch_rows: int = DEFAULT_BATCH_ROWS) -> int:
    """Ray Data reads the unwritten shards into rows; a Milvus server gets them from the workers' datasink,
    milvus-lite (one process only) through ``client_store`` here. Returns how many shards were written."""
    import ray
    import ray.data

    todo = unwritten(store, collection)
    if not todo:
        return 0
    if not ray.is_initialized():
        ray.init()
    # A shard's rows cross blocks only whole: one shard per block, so a block's marker means the shard is in.
    dataset = ray.data.from_items([{"shard": s} for s in todo], override_num_blocks=len(todo)).map_batches(
        shard_to_rows, batch_size=1, batch_format="numpy",
        fn_kwargs={"work_path": str(store.path), "plan": asdict(store.plan), "table": table})
    progress = Progress(store.path, collection, store.plan, table)
    if target.embedded:
        for columns in _shard_batches(dataset):
            _upsert(client_store, columns, batch_rows)
            progress.add(columns["shard"])
    else:
        dataset.write_datasink(make_datasink(target, collection, str(store.path), batch_rows, progress))
    log.info("milvus (ray): %d shards written into %s", len(todo), collection)
    return len(todo)


def _shard_batches(dataset: Any) -> Iterator[dict[str, Any]]:
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
