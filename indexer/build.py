"""The full re-index job: catalog file -> new generation (catalog DB, vectors, FAISS index, manifest) -> publish."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from indexer.catalog import CatalogError, read_catalog
from indexer.extract import ImageReadError, content_hash, extract_deduplicated
from indexer.generations import MANIFEST, Manifest, new_generation_dir, prune_generations, publish, write_json_atomic
from indexer.store import create_store
from indexer.vector_index import VectorIndex, choose_index_spec
from models import Embedder

log = logging.getLogger(__name__)

VECTORS = "vectors.npy"
INDEX = "index.faiss"
CATALOG_DB = "catalog.db"


def build_generation(catalog: Path, data_dir: Path, embedder: Embedder, *, checkpoint: str | None = None,
                     flat_threshold: int = 200_000, batch_size: int = 64, workers: int = 2, keep: int = 3,
                     progress: bool = True) -> Manifest:
    """Index ``catalog`` into a new generation beside the served one, then swap the pointer to it.

    Everything is validated before the swap; on any failure the partial generation is removed and the
    served generation is untouched.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    rows = read_catalog(catalog)
    timings["ingest"] = time.perf_counter() - start
    gen_dir = new_generation_dir(data_dir)
    try:
        start = time.perf_counter()
        try:
            vectors, hashes, unique = extract_deduplicated([r.image for r in rows], embedder, batch_size=batch_size,
                                                           workers=workers, progress=progress)
        except ImageReadError as exc:
            raise CatalogError(catalog, rows[exc.index].line, exc.reason) from None
        timings["extract"] = time.perf_counter() - start

        start = time.perf_counter()
        create_store(gen_dir / CATALOG_DB, rows, hashes)
        np.save(gen_dir / VECTORS, vectors)
        spec = choose_index_spec(len(rows), flat_threshold)
        VectorIndex.build(vectors, spec).save(gen_dir / INDEX)
        timings["index"] = time.perf_counter() - start

        manifest = Manifest(
            generation=gen_dir.name, created_at=datetime.now(UTC).isoformat(), model_id=embedder.model_id,
            model_config_json=embedder.model.config.model_dump(), checkpoint=checkpoint, dim=embedder.dim,
            count=len(rows), unique_images=unique, index_factory=spec.factory, nprobe=spec.nprobe,
            catalog=str(Path(catalog).resolve()), catalog_sha256=content_hash(Path(catalog)),
            seconds={k: round(v, 3) for k, v in timings.items()},
        )
        write_json_atomic(gen_dir / MANIFEST, manifest.model_dump())
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    publish(data_dir, gen_dir.name)
    pruned = prune_generations(data_dir, keep)
    log.info("published %s (%d items); pruned %s", gen_dir.name, len(rows), pruned or "nothing")
    return manifest
