"""Generations whose vectors live in Milvus: build one collection per generation, move the served alias, prune.

The generation directory keeps what it keeps for FAISS (catalog.db, manifest.json) and, in place of the FAISS
store, ``store/milvus.json`` naming the collection. ``publish`` (pointer file) and ``point_served_alias`` (the
Milvus alias) are called together on publish and on rollback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from indexer.catalog import CatalogRow
from indexer.extract import DedupMap
from indexer.generations import GenerationError, generations_dir, read_manifest
from indexer.index_choice import IndexReport
from indexer.milvus_ingest import RowTable, write_shards, write_shards_ray
from indexer.milvus_store import MilvusStore, MilvusTarget, drop_collections, point_alias, require_target
from indexer.shards import ShardSet

log = logging.getLogger(__name__)

BACKEND = "milvus"


def build_milvus_store(shards: ShardSet, plan: DedupMap, rows: Sequence[CatalogRow], target: MilvusTarget,
                       generation: str, model_id: str, dim: int, *, use_ray: bool,
                       store_dir: Path) -> tuple[MilvusStore, IndexReport]:
    """Write a generation's rows from its extraction shards into a new collection (resuming a killed build's),
    check every row is there, and record the collection in ``store_dir``."""
    start = time.perf_counter()
    collection = target.collection(generation)
    store = MilvusStore.create(target.connect(), collection, dim, model_id=model_id, embedded=target.embedded)
    table = RowTable(plan.row_to_unique, [r.category for r in rows], [r.product_id for r in rows])
    if use_ray:
        write_shards_ray(shards, table, target, collection, store)
    else:
        write_shards(shards, table, store)
    store.flush()
    store.refresh()
    if store.ntotal != len(rows):
        raise GenerationError(f"Milvus collection {collection} holds {store.ntotal} rows, the catalog {len(rows)}")
    store.save(store_dir)
    seconds = round(time.perf_counter() - start, 3)
    report = IndexReport(store.spec.factory, BACKEND, 1, None, store.memory_bytes, seconds, 0.0, 0, 0)
    log.info("milvus: %d rows in %s (%s, %.1fs)", len(rows), collection, store.spec.factory, seconds)
    return store, report


def point_served_alias(data_dir: Path, generation: str, target: MilvusTarget | None) -> None:
    """After ``publish``: move ``<prefix>_served`` to the generation's collection when its vectors are in Milvus."""
    manifest = read_manifest(generations_dir(data_dir) / generation)
    if manifest.vector_backend != BACKEND:
        return
    target = require_target(target, generation)
    with target.client() as client:
        point_alias(client, target.alias, manifest.milvus_collection or target.collection(generation))
    log.info("milvus alias %s -> %s", target.alias, manifest.milvus_collection)


def drop_pruned(target: MilvusTarget | None, pruned: Sequence[str]) -> list[str]:
    """Drop the collections of pruned generations (their directories are gone already)."""
    if target is None or not pruned:
        return []
    with target.client() as client:
        return drop_collections(client, [target.collection(name) for name in pruned])
