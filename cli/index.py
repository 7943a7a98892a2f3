"""`lookalike ingest`, `index`, `generations` and `rollback`: the catalog's way into served generations."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from app.settings import Settings
from cli.common import fail, holding_data_dir, make_embedder, settings_of
from indexer import CatalogError, GenerationError, build_generation, current_generation, list_generations, publish, read_catalog
from indexer.generations import check_generation_name, generations_dir, read_manifest
from indexer.milvus_generations import point_served_alias
from indexer.incremental import apply_incremental
from indexer.index_choice import IndexBudgetError
from indexer.ray_extract import RayUnavailable
from indexer.shards import DEFAULT_SHARD_SIZE
from models import Embedder
from models.checkpoint import CheckpointError, load_checkpoint, model_fingerprint
from models.comparison import served_comparison_warning

index_app = typer.Typer(add_completion=False)
INT8_CALIBRATION_IMAGES = 64


def calibration_images(settings: Settings, catalog: Path) -> list[Path]:
    """int8 only: the catalog's first distinct images (the int8 model is calibrated on them)."""
    if settings.precision != "int8":
        return []
    try:
        return list(dict.fromkeys(r.image for r in read_catalog(catalog)))[:INT8_CALIBRATION_IMAGES]
    except CatalogError as exc:
        raise fail(str(exc)) from None


def run_index(settings: Settings, catalog: Path, checkpoint: str | None, progress: bool = True, *,
              engine: str = "local", memory_budget_gb: float | None = None, flat_threshold: int | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, decoder: str = "auto") -> None:
    """Build and publish a new generation under the data dir's lock; a failure leaves the served one untouched
    and exits 2 (3 when another job holds the lock)."""
    embedder = make_embedder(settings, checkpoint, calibration_images(settings, catalog))
    with holding_data_dir(settings, f"lookalike index {catalog}"):
        _build_and_publish(settings, catalog, embedder, checkpoint, progress, engine=engine,
                           memory_budget_gb=memory_budget_gb, flat_threshold=flat_threshold, shard_size=shard_size,
                           decoder=decoder)


def _build_and_publish(settings: Settings, catalog: Path, embedder: Embedder, checkpoint: str | None, progress: bool,
                       *, engine: str, memory_budget_gb: float | None, flat_threshold: int | None, shard_size: int,
                       decoder: str) -> None:
    try:
        options = settings.build_options(
            checkpoint=checkpoint, flat_threshold=flat_threshold or settings.flat_threshold, progress=progress,
            engine=engine, memory_budget_bytes=int(memory_budget_gb * 2**30) if memory_budget_gb else None,
            shard_size=shard_size, decoder=decoder)
        manifest = build_generation(catalog, settings.data_dir, embedder, options)
    except (CatalogError, GenerationError, IndexBudgetError, RayUnavailable, RuntimeError, ValueError, OSError,
            sqlite3.Error) as exc:
        raise fail(f"{exc} (nothing was published; the served index is unchanged)") from None
    typer.echo(f"published {manifest.generation}: {manifest.count} images ({manifest.unique_images} distinct), "
               f"{manifest.index_factory} index (nprobe {manifest.nprobe}, recall@10 {manifest.recall_at_10}), "
               f"model {manifest.model_id} on {manifest.runtime} {manifest.precision}, {manifest.seconds}")


def run_incremental(settings: Settings, catalog: Path, checkpoint: str | None, progress: bool) -> None:
    """Apply the catalog's adds, changes and deletes to the served generation's delta."""
    served = current_generation(settings.data_dir)
    calibration = ([Path(p) for p in read_manifest(generations_dir(settings.data_dir) / served).calibration_images]
                   if served and settings.precision == "int8" else [])
    embedder = make_embedder(settings, checkpoint, calibration)
    try:
        with holding_data_dir(settings, f"lookalike index --incremental {catalog}"):
            result = apply_incremental(catalog, settings.data_dir, embedder, batch_size=settings.batch_size,
                                       workers=settings.workers, progress=progress,
                                       min_cosine=settings.runtime_min_cosine)
    except (CatalogError, GenerationError) as exc:
        raise fail(f"{exc} (nothing was changed)") from None
    typer.echo(f"{result.generation}: {result.added} added, {result.updated} updated, {result.deleted} deleted, "
               f"{result.unchanged} unchanged")


def warn_unless_beats_served(checkpoint: str) -> None:
    """A warning on stderr unless ``lookalike train``/``eval`` recorded that the checkpoint beats the served model
    on held-out products (``comparison.json`` beside it); indexing goes on either way."""
    try:
        model_id = model_fingerprint(load_checkpoint(checkpoint))
    except CheckpointError:
        return  # make_embedder reports it
    warning = served_comparison_warning(checkpoint, model_id)
    if warning:
        typer.echo(f"warning: {warning}", err=True)


@index_app.command()
def ingest(catalog: Annotated[Path, typer.Argument(help="CSV, TSV or JSONL catalog file")]) -> None:
    """Validate a catalog file and summarise it, without indexing."""
    try:
        rows = read_catalog(catalog)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    missing = [r for r in rows if not r.image.is_file()]
    if missing:
        raise fail(f"{catalog}:{missing[0].line}: image not found: {missing[0].image} ({len(missing)} missing in all)")
    categories = Counter(r.category for r in rows)
    typer.echo(f"{len(rows)} images, {len({r.product_id for r in rows})} products, {len(categories)} categories: OK")


@index_app.command()
def index(
    ctx: typer.Context,
    catalog: Annotated[Path, typer.Argument(help="CSV, TSV or JSONL catalog file")],
    checkpoint: Annotated[str | None, typer.Option(help="trained checkpoint (default: pretrained EfficientNet-Lite0)")] = None,
    progress: bool = True,
    engine: Annotated[str, typer.Option(help="extraction engine: local (DataLoader) or ray (Ray Data)")] = "local",
    memory_budget_gb: Annotated[float | None, typer.Option(help="RAM for the vector store; a tight one keeps fp16 or 8-bit codes")] = None,
    flat_threshold: Annotated[int | None, typer.Option(help="exact index up to this many vectors (default: settings; unset: while a scan meets the latency target)")] = None,
    shard_size: Annotated[int, typer.Option(help="images per resumable extraction shard")] = DEFAULT_SHARD_SIZE,
    decoder: Annotated[str, typer.Option(help="auto (GPU JPEG decode on CUDA), pil or tensor")] = "auto",
    vector_backend: Annotated[str | None, typer.Option(help="faiss (files in the generation) or milvus (a collection "
                                                       "at LOOKALIKE_MILVUS_URI); default: settings")] = None,
    incremental: Annotated[bool, typer.Option("--incremental/--full", help="--full (default): build a new generation "
                                              "and swap to it; --incremental: apply the catalog's adds, changes and "
                                              "deletes to the served generation's delta, at once")] = False,
) -> None:
    """Build a new generation from the catalog and publish it atomically; a killed run resumes its extraction."""
    settings = settings_of(ctx)
    if vector_backend is not None:
        if vector_backend not in ("faiss", "milvus"):
            raise fail(f"unknown vector backend {vector_backend!r} (faiss or milvus)")
        settings = settings.model_copy(update={"vector_backend": vector_backend})
    if checkpoint is not None:
        warn_unless_beats_served(checkpoint)
    if incremental:
        run_incremental(settings, catalog, checkpoint or settings.checkpoint, progress)
        return
    run_index(settings, catalog, checkpoint or settings.checkpoint, progress, engine=engine,
              memory_budget_gb=memory_budget_gb, flat_threshold=flat_threshold, shard_size=shard_size, decoder=decoder)


@index_app.command()
def generations(ctx: typer.Context) -> None:
    """List the generations on disk; the served one is marked with '*'."""
    settings = settings_of(ctx)
    served = current_generation(settings.data_dir)
    for name in list_generations(settings.data_dir):
        m = read_manifest(generations_dir(settings.data_dir) / name)
        typer.echo(f"{'*' if name == served else ' '} {name}  {m.count:>9} images  {m.index_factory:<16} {m.model_id}  {m.created_at}")


@index_app.command()
def rollback(
    ctx: typer.Context,
    to: Annotated[str | None, typer.Option(help="generation name (default: the one before the served one)")] = None,
) -> None:
    """Serve an earlier generation again (the service follows the pointer); under the data dir's lock."""
    settings = settings_of(ctx)
    with holding_data_dir(settings, f"lookalike rollback {to or ''}".strip()):
        try:
            names = list_generations(settings.data_dir)
            served = current_generation(settings.data_dir)
            if to is None:
                older = [n for n in names if served is None or n < served]
                if not older:
                    raise fail("no earlier generation to roll back to")
                to = older[-1]
            elif to not in names:
                raise fail(f"{check_generation_name(to)} is not a complete generation under {settings.data_dir} "
                           f"(have: {', '.join(names) or 'none'})")
            publish(settings.data_dir, to)
            point_served_alias(settings.data_dir, to, settings.milvus_target())  # Milvus's alias follows the pointer
        except (GenerationError, RuntimeError, ValueError) as exc:
            raise fail(str(exc)) from None
    typer.echo(f"now serving {to} (was {served})")
