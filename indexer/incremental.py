"""`lookalike index --incremental`: apply a catalog's changes to the served generation's delta.

New items are added, items whose image or metadata changed are replaced, and items the catalog no longer
lists are deleted; only added and changed images are embedded. The next full rebuild folds it all in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.generations import CATALOG_DB, VECTORS
from indexer.catalog import CatalogError, read_catalog
from indexer.delta import DeltaLog
from indexer.extract import ImageReadError, extract_deduplicated, hash_images
from indexer.generations import GenerationError, current_generation, generations_dir, read_manifest
from indexer.catalog_store import CatalogStore, row_digest
from indexer.runtime_check import check_compatible
from models import Embedder
from models.agreement import DEFAULT_MIN_COSINE


@dataclass(frozen=True)
class IncrementalResult:
    generation: str
    added: int
    updated: int
    deleted: int
    unchanged: int


def apply_incremental(catalog: Path, data_dir: Path, embedder: Embedder, *, batch_size: int = 64, workers: int = 2,
                      progress: bool = True, min_cosine: float = DEFAULT_MIN_COSINE) -> IncrementalResult:
    """Diff ``catalog`` against the served generation (base + delta) and write the differences to its delta."""
    rows = read_catalog(catalog)
    name = current_generation(data_dir)
    if name is None:
        raise GenerationError("no generation is served yet: run a full `lookalike index` first")
    gen_dir = generations_dir(data_dir) / name
    manifest = read_manifest(gen_dir)
    store = CatalogStore(gen_dir / CATALOG_DB)
    base_vectors = np.load(gen_dir / VECTORS, mmap_mode="r")
    try:
        check_compatible(name, manifest, embedder, store, lambda ids: base_vectors[ids], min_cosine)
    except GenerationError as exc:
        store.close()
        raise GenerationError(f"{exc}; run a full rebuild") from None
    base_count = int(base_vectors.shape[0])
    delta = DeltaLog(gen_dir, base_count, manifest.dim)
    try:
        base = store.fingerprints()
        tombstones = delta.tombstoned()
        live = {item: digest for item, (vid, digest) in base.items() if vid not in tombstones}
        live.update(delta.fingerprints())

        try:
            hashes = hash_images([r.image for r in rows])
        except ImageReadError as exc:
            raise CatalogError(catalog, rows[exc.index].line, exc.reason) from None
        changed = [(r, h) for r, h in zip(rows, hashes, strict=True)
                   if live.get(r.item_id) != row_digest(r.product_id, r.title, r.category, r.description, h,
                                                        json.dumps(r.attributes, sort_keys=True))]
        try:
            vectors, _, _ = extract_deduplicated([r.image for r, _ in changed], embedder, [h for _, h in changed],
                                                 batch_size=batch_size, workers=workers, progress=progress)
        except ImageReadError as exc:
            raise CatalogError(catalog, changed[exc.index][0].line, exc.reason) from None

        def live_base_id(item_id: str) -> int | None:
            entry = base.get(item_id)
            return entry[0] if entry is not None and entry[0] not in tombstones else None

        added = updated = 0
        for (row, image_hash), vector in zip(changed, vectors, strict=True):
            if row.item_id in live:
                updated += 1
            else:
                added += 1
            delta.upsert(row, image_hash, vector, live_base_id(row.item_id))
        listed = {r.item_id for r in rows}
        gone = [item for item in live if item not in listed]
        for item in gone:
            delta.delete(item, live_base_id(item))
        return IncrementalResult(name, added, updated, len(gone), len(rows) - len(changed))
    finally:
        delta.close()
        store.close()
