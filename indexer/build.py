"""The full re-index job: catalog file -> new generation (catalog DB, vectors, FAISS index, manifest) -> publish."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from indexer.catalog import CatalogError, read_catalog
from indexer.extract import DedupPlan, EmbedFn, ImageReadError, content_hash, extract_to_shards, hash_images
from indexer.faiss_store import build_store
from indexer.generations import MANIFEST, Manifest, new_generation_dir, prune_generations, publish, write_json_atomic
from indexer.index_choice import TARGET_RECALL, choose_index
from indexer.shards import DEFAULT_SHARD_SIZE
from indexer.store import create_store
from indexer.vector_index import gpu_available
from models import Embedder

log = logging.getLogger(__name__)

VECTORS = "vectors.npy"
INDEX = "index.faiss"  # generations before the vector store; now inside VECTOR_STORE
VECTOR_STORE = "store"  # the FAISS vector store's directory (flat codes, ANN index, store.json)
CATALOG_DB = "catalog.db"
WORK = "work"
ENGINES = ("local", "ray")


def build_generation(catalog: Path, data_dir: Path, embedder: Embedder, *, checkpoint: str | None = None,
                     flat_threshold: int = 200_000, batch_size: int = 64, workers: int = 2, keep: int = 3,
                     progress: bool = True, memory_budget_bytes: int | None = None,
                     shard_size: int = DEFAULT_SHARD_SIZE, engine: str = "local", decoder: str = "auto",
                     target_recall: float = TARGET_RECALL, work_root: Path | None = None, keep_work: bool = False,
                     embed: EmbedFn | None = None) -> Manifest:
    """Index ``catalog`` into a new generation beside the served one, then swap the pointer to it.

    Distinct images are embedded into resumable shards under ``work_root`` (default ``data_dir/work``), keyed
    by model and image content: a killed job re-run with the same catalog resumes from the last finished shard.
    vectors.npy is assembled from the shards, the index is chosen for the count and ``memory_budget_bytes``
    and tuned to ``target_recall`` (see ``indexer.index_choice``). Everything is validated before the swap; on
    any failure the partial generation is removed (the shards stay, for the re-run) and the served generation
    is untouched. The shards are removed once the generation is published unless ``keep_work``.
    ``embed`` replaces the embedder's forward (tests inject a failing one to simulate a killed job).
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    rows = read_catalog(catalog)
    paths = [r.image for r in rows]
    timings["ingest"] = time.perf_counter() - start
    gen_dir = new_generation_dir(data_dir)
    try:
        start = time.perf_counter()
        try:
            plan = DedupPlan.from_hashes(hash_images(paths))
        except ImageReadError as exc:
            raise CatalogError(catalog, rows[exc.index].line, exc.reason) from None
        timings["hash"] = time.perf_counter() - start
        start = time.perf_counter()
        unique_paths = [paths[i] for i in plan.unique_rows]
        try:
            if engine == "ray":
                from indexer.ray_extract import extract_to_shards_ray

                store = extract_to_shards_ray(unique_paths, plan.unique_hashes, embedder,
                                              work_root or data_dir / WORK, shard_size=shard_size,
                                              batch_size=batch_size)
            else:
                store = extract_to_shards(unique_paths, plan.unique_hashes, embedder, work_root or data_dir / WORK,
                                          shard_size=shard_size, batch_size=batch_size, workers=workers,
                                          progress=progress, embed=embed, decoder=decoder)
        except ImageReadError as exc:
            raise CatalogError(catalog, rows[plan.unique_rows[exc.index]].line, exc.reason) from None
        if len(plan.unique_rows) < len(rows):
            log.info("dedupe: %d rows share %d distinct images", len(rows), len(plan.unique_rows))
        timings["extract"] = time.perf_counter() - start

        start = time.perf_counter()
        create_store(gen_dir / CATALOG_DB, rows, plan.hashes)
        vectors = store.assemble(gen_dir / VECTORS, plan.row_to_unique, plan.unique_hashes)
        timings["assemble"] = time.perf_counter() - start

        start = time.perf_counter()
        index_plan = choose_index(len(rows), embedder.dim, flat_threshold=flat_threshold,
                                  memory_budget_bytes=memory_budget_bytes)
        log.info("index choice: %s (%s)", index_plan.spec.factory, index_plan.reason)
        vector_store, report = build_store(vectors, index_plan, target=target_recall)
        vector_store.save(gen_dir / VECTOR_STORE)
        del vectors
        timings["index"] = time.perf_counter() - start

        manifest = Manifest(
            generation=gen_dir.name, created_at=datetime.now(UTC).isoformat(), model_id=embedder.model_id,
            model_config_json=embedder.model.config.model_dump(), checkpoint=checkpoint, dim=embedder.dim,
            count=len(rows), unique_images=len(plan.unique_rows), index_factory=vector_store.spec.factory,
            nprobe=vector_store.spec.nprobe, catalog=str(Path(catalog).resolve()), catalog_sha256=content_hash(Path(catalog)),
            seconds={k: round(v, 3) for k, v in timings.items()}, recall_at_10=report.recall_at_10,
            index_memory_bytes=report.memory_bytes, index_build_seconds=report.build_seconds,
            index_kind=report.kind, index_device="cuda" if gpu_available() else "cpu",
        )
        write_json_atomic(gen_dir / MANIFEST, manifest.model_dump())
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)
        raise
    publish(data_dir, gen_dir.name)
    if not keep_work:
        store.remove()
    pruned = prune_generations(data_dir, keep)
    log.info("published %s (%d items); pruned %s", gen_dir.name, len(rows), pruned or "nothing")
    return manifest

