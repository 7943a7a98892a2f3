"""The full re-index job: catalog file -> new generation (catalog DB, vectors, FAISS index, manifest) -> publish."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from indexer.catalog import CatalogError, CatalogRow, read_catalog
from indexer.extract import DedupMap, EmbedFn, ImageReadError, content_hash, extract_to_shards, hash_images
from indexer.generations import (
    CATALOG_DB,
    COMPACT,
    MANIFEST,
    VECTOR_STORE,
    VECTORS,
    WORK,
    Manifest,
    new_generation_dir,
    prune_generations,
    publish,
)
from indexer.compact import DEFAULT_COMPACT_DIM, DEFAULT_COMPACT_WHITEN, CompactTransform
from indexer.faiss_store import build_store
from indexer.file_roots import FileRefused, confined_file
from indexer.index_choice import (
    DEFAULT_CODE, TARGET_LATENCY_MS, TARGET_RECALL, IndexReport, IndexTargets, choose_index,
)
from indexer.milvus_generations import build_milvus_store, drop_pruned, point_served_alias
from indexer.milvus_store import MilvusTarget
from indexer.runtime_check import spread_ids
from indexer.shards import DEFAULT_SHARD_SIZE, ShardSet
from indexer.catalog_store import create_store
from indexer.vector_index import gpu_available
from indexer.vector_store import VectorStore
from models import Embedder
from models.agreement import agreement, embed_paths
from models.atomic import write_json_atomic

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")
AGREEMENT_SAMPLE = 32


@dataclass(frozen=True)
class BuildOptions:
    """How one re-index job runs; the CLI and the admin API fill it from the process's ``Settings``."""

    checkpoint: str | None = None
    flat_threshold: int | None = None  # None: exact Flat while a scan meets latency_ms
    batch_size: int = 64
    workers: int = 2
    keep: int = 3
    progress: bool = True
    memory_budget_bytes: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    engine: str = "local"
    decoder: str = "auto"
    target_recall: float = TARGET_RECALL
    latency_ms: float = TARGET_LATENCY_MS
    compact_dim: int | None = DEFAULT_COMPACT_DIM  # PCA dimension of the stored vectors (None: the embeddings)
    compact_whiten: bool = DEFAULT_COMPACT_WHITEN
    vector_code: str = DEFAULT_CODE  # flat codes of the store (float32 | fp16 | sq8); a memory budget may shrink them
    build_threads: int | None = 1  # FAISS threads for k-means, adds and tuning (None: FAISS's default, every core)
    work_root: Path | None = None
    keep_work: bool = False
    # When the catalog came from a caller (/admin/reindex): every image it lists must be a regular file of at most
    # max_image_bytes inside these folders (see indexer.file_roots). None: the operator's own catalog, unchecked.
    file_roots: tuple[Path, ...] | None = None
    max_image_bytes: int = 50 * 1024 * 1024
    # Where the vectors go: None, FAISS files in the generation; a Milvus, one new collection per generation
    # (written straight from the extraction shards; see indexer.milvus_generations).
    milvus: MilvusTarget | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r} (choose from {', '.join(ENGINES)})")


def reference_agreement(embedder: Embedder, paths: Sequence[Path], vectors: np.ndarray,
                        sample: int = AGREEMENT_SAMPLE) -> dict[str, float] | None:
    """Cosine of the generation's vectors against PyTorch fp32 on a spread sample of its rows (None when the
    generation was made by PyTorch fp32 on the CPU itself)."""
    reference = embedder.reference()
    if reference is embedder or not paths:
        return None
    rows = spread_ids(len(paths), sample)
    found = agreement(np.asarray(vectors[rows]), embed_paths(reference, [paths[i] for i in rows]))
    log.info("%s %s vs torch fp32 on %d catalog images: mean cosine %.5f, min %.5f", embedder.runtime_name,
             embedder.precision, found.count, found.mean, found.min)
    return {"mean": found.mean, "min": found.min, "count": found.count}


class StoreRows:
    """``vectors[rows]`` read back from a vector store (a Milvus generation writes no vectors.npy)."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        return self.store.vectors(np.asarray(rows, dtype=np.int64))


class StageTimer:
    """Wall-clock seconds per named stage, for the manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


def build_generation(catalog: Path, data_dir: Path, embedder: Embedder, options: BuildOptions | None = None, *,
                     embed: EmbedFn | None = None, **overrides: Any) -> Manifest:
    """Index ``catalog`` into a new generation beside the served one, then swap the pointer to it.

    The stages are ``ingest -> extract -> assemble -> index -> publish`` (with ``options.milvus``: ``ingest ->
    extract -> milvus -> publish``, the shards' rows written straight into a new collection). Distinct images
    are embedded into resumable shards under ``options.work_root`` (default ``data_dir/work``), keyed by model and image content: a
    killed job re-run with the same catalog resumes from the last finished shard. Everything is validated before
    the swap; on any failure the partial generation is removed (the shards stay, for the re-run) and the served
    generation is untouched. ``overrides`` replace single fields of ``options``; ``embed`` replaces the embedder's
    forward (tests inject a failing one to simulate a killed job). The caller holds the data dir's lock
    (``indexer.locking``).
    """
    opts = replace(options or BuildOptions(), **overrides)
    timer = StageTimer()
    with timer("ingest"):
        rows = read_catalog(catalog)
        if opts.file_roots is not None:
            rows = confine_images(catalog, rows, opts.file_roots, opts.max_image_bytes)
    gen_dir = new_generation_dir(data_dir)
    try:
        with timer("hash"):
            dedup = dedupe(catalog, rows)
        with timer("extract"):
            shards = extract(catalog, rows, dedup, embedder, opts, opts.work_root or data_dir / WORK, embed)
        if opts.milvus is not None:
            with timer("milvus"):
                create_store(gen_dir / CATALOG_DB, rows, dedup.hashes)
                milvus_store, report = build_milvus_store(
                    shards, dedup, rows, opts.milvus, gen_dir.name, embedder.model_id, embedder.dim,
                    use_ray=opts.engine == "ray", store_dir=gen_dir / VECTOR_STORE)
            with timer("agreement"):
                try:
                    runtime_agreement = reference_agreement(embedder, [r.image for r in rows], StoreRows(milvus_store))
                finally:
                    milvus_store.close()
            # Milvus keeps the embeddings themselves (written straight from the shards): no compact transform.
            transform, vector_dim, vector_code = CompactTransform.identity(), embedder.dim, "float32"
        else:
            with timer("assemble"):
                vectors = assemble(gen_dir, rows, dedup, shards)
            with timer("agreement"):
                runtime_agreement = reference_agreement(embedder, [r.image for r in rows], vectors)
            with timer("index"):
                report, transform, vector_dim, vector_code = build_index(gen_dir, vectors, embedder.dim, opts)
                del vectors
        manifest = Manifest(
            generation=gen_dir.name, created_at=datetime.now(UTC).isoformat(), model_id=embedder.model_id,
            embedding_config=embedder.model.config.model_dump(), checkpoint=opts.checkpoint, dim=embedder.dim,
            count=len(rows), unique_images=len(dedup.unique_rows), index_factory=report.factory,
            nprobe=report.nprobe, catalog=str(Path(catalog).resolve()), catalog_sha256=content_hash(Path(catalog)),
            seconds=timer.seconds, recall_at_10=report.recall_at_10, index_memory_bytes=report.memory_bytes,
            index_build_seconds=report.build_seconds, index_kind=report.kind,
            index_device="cuda" if gpu_available() else "cpu",
            runtime=embedder.runtime_name, precision=embedder.precision, runtime_agreement=runtime_agreement,
            calibration_images=[str(p) for p in embedder.options.calibration_images] if embedder.precision == "int8"
            else [],
            vector_backend="faiss" if opts.milvus is None else "milvus",
            milvus_collection=None if opts.milvus is None else milvus_store.collection,
            compact=transform.describe(), vector_dim=vector_dim, vector_code=vector_code,
        )
        write_json_atomic(gen_dir / MANIFEST, manifest.model_dump())
        publish(data_dir, gen_dir.name)
    except BaseException:
        shutil.rmtree(gen_dir, ignore_errors=True)  # a failed publish leaves the pointer on the old generation
        raise
    point_served_alias(data_dir, gen_dir.name, opts.milvus)  # Milvus's alias follows the pointer
    if not opts.keep_work:
        shards.remove()
    pruned = prune_generations(data_dir, opts.keep)
    drop_pruned(opts.milvus, pruned)
    log.info("published %s (%d items); pruned %s", gen_dir.name, len(rows), pruned or "nothing")
    return manifest


def confine_images(catalog: Path, rows: list[CatalogRow], roots: Sequence[Path], max_bytes: int) -> list[CatalogRow]:
    """The rows with their images resolved; an image outside ``roots``, not a regular file or too large is a
    CatalogError naming its line."""
    confined = []
    for row in rows:
        try:
            confined.append(replace(row, image=confined_file(row.image, roots, max_bytes)))
        except FileRefused as exc:
            raise CatalogError(catalog, row.line, exc.message) from None
    return confined


def dedupe(catalog: Path, rows: Sequence[CatalogRow]) -> DedupMap:
    """Hash every image once; byte-identical images are embedded once. An unreadable image fails its line."""
    try:
        return DedupMap.from_hashes(hash_images([r.image for r in rows]))
    except ImageReadError as exc:
        raise CatalogError(catalog, rows[exc.index].line, exc.reason) from None


def extract(catalog: Path, rows: Sequence[CatalogRow], dedup: DedupMap, embedder: Embedder, opts: BuildOptions,
            work_root: Path, embed: EmbedFn | None = None) -> ShardSet:
    """Embed the distinct images into resumable shards (locally or on Ray)."""
    unique_paths = [rows[i].image for i in dedup.unique_rows]
    try:
        if opts.engine == "ray":
            from indexer.ray_extract import extract_to_shards_ray

            shards = extract_to_shards_ray(unique_paths, dedup.unique_hashes, embedder, work_root,
                                           shard_size=opts.shard_size, batch_size=opts.batch_size)
        else:
            shards = extract_to_shards(unique_paths, dedup.unique_hashes, embedder, work_root,
                                       shard_size=opts.shard_size, batch_size=opts.batch_size, workers=opts.workers,
                                       progress=opts.progress, embed=embed, decoder=opts.decoder)
    except ImageReadError as exc:
        raise CatalogError(catalog, rows[dedup.unique_rows[exc.index]].line, exc.reason) from None
    if len(dedup.unique_rows) < len(rows):
        log.info("dedupe: %d rows share %d distinct images", len(rows), len(dedup.unique_rows))
    return shards


def assemble(gen_dir: Path, rows: Sequence[CatalogRow], dedup: DedupMap, shards: ShardSet) -> np.ndarray:
    """The generation's catalog DB and its row-ordered vectors (memory-mapped)."""
    create_store(gen_dir / CATALOG_DB, rows, dedup.hashes)
    return shards.assemble(gen_dir / VECTORS, dedup.row_to_unique, dedup.unique_hashes)


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """FAISS's OpenMP threads set to ``threads`` (None: unchanged) for the block, then restored. On a shared
    machine OpenMP's spinning workers made a 2-thread k-means many times slower than 1 thread (README)."""
    if threads is None:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def build_index(gen_dir: Path, vectors: np.ndarray, dim: int,
                opts: BuildOptions) -> tuple[IndexReport, CompactTransform, int, str]:
    """Fit the compact transform and apply it; choose an index for the count, latency target and memory budget;
    build the vector store tuned to the target recall; save both. Returns the report, the transform, the
    store's dimension and its vector code."""
    transform = CompactTransform.fit(vectors, opts.compact_dim, whiten=opts.compact_whiten)
    compact = transform.apply(vectors)
    transform.save(gen_dir / COMPACT)
    targets = IndexTargets(opts.target_recall, opts.latency_ms, opts.memory_budget_bytes, opts.flat_threshold,
                           opts.vector_code)
    choice = choose_index(len(compact), compact.shape[1], targets=targets)
    log.info("compact vectors: %s (%d -> %d dimensions); index choice: %s (%s)", transform.describe(), dim,
             compact.shape[1], choice.spec.factory, choice.reason)
    with faiss_threads(opts.build_threads):
        vector_store, report = build_store(compact, choice, target=opts.target_recall)
    vector_store.save(gen_dir / VECTOR_STORE)
    return report, transform, int(compact.shape[1]), choice.code
