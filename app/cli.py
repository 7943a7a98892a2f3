"""The `lookalike` command: demo, ingest, index, generations, rollback, serve (and train/eval)."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from app.cli_train import train_app
from app.settings import Settings
from indexer import CatalogError, GenerationError, build_generation, current_generation, list_generations, publish, read_catalog
from indexer.extract import content_hash
from indexer.incremental import apply_incremental
from indexer.index_choice import IndexBudgetError
from indexer.ray_extract import RayUnavailable
from indexer.shards import DEFAULT_SHARD_SIZE
from indexer.generations import generations_dir, read_manifest
from models import CheckpointError, Embedder, ModelConfig, build_model

cli = typer.Typer(help="Lookalike: visual search for product catalogs.", no_args_is_help=True, add_completion=False)
cli.add_typer(train_app)  # `lookalike train` and `lookalike eval`


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line reason on stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def make_embedder(settings: Settings, checkpoint: str | None) -> Embedder:
    try:
        model = build_model(ModelConfig(), checkpoint=checkpoint)
    except CheckpointError as exc:
        raise fail(str(exc)) from None
    return Embedder(model, device=settings.device)


def run_index(settings: Settings, catalog: Path, checkpoint: str | None, progress: bool = True, *,
              engine: str = "local", memory_budget_gb: float | None = None, flat_threshold: int | None = None,
              shard_size: int = DEFAULT_SHARD_SIZE, decoder: str = "auto") -> None:
    embedder = make_embedder(settings, checkpoint)
    try:
        manifest = build_generation(catalog, settings.data_dir, embedder, checkpoint=checkpoint,
                                    flat_threshold=flat_threshold or settings.flat_threshold,
                                    batch_size=settings.batch_size, workers=settings.workers,
                                    keep=settings.keep_generations, progress=progress, engine=engine,
                                    memory_budget_bytes=int(memory_budget_gb * 2**30) if memory_budget_gb else None,
                                    shard_size=shard_size, decoder=decoder)
    except CatalogError as exc:
        raise fail(f"{exc} (nothing was published; the served index is unchanged)") from None
    except (IndexBudgetError, RayUnavailable, ValueError) as exc:
        raise fail(f"{exc} (nothing was published; the served index is unchanged)") from None
    typer.echo(f"published {manifest.generation}: {manifest.count} images ({manifest.unique_images} distinct), "
               f"{manifest.index_factory} index (nprobe {manifest.nprobe}, recall@10 {manifest.recall_at_10}), "
               f"model {manifest.model_id}, {manifest.seconds}")


def run_incremental(settings: Settings, catalog: Path, checkpoint: str | None, progress: bool) -> None:
    embedder = make_embedder(settings, checkpoint)
    try:
        result = apply_incremental(catalog, settings.data_dir, embedder, batch_size=settings.batch_size,
                                   workers=settings.workers, progress=progress)
    except (CatalogError, GenerationError) as exc:
        raise fail(f"{exc} (nothing was changed)") from None
    typer.echo(f"{result.generation}: {result.added} added, {result.updated} updated, {result.deleted} deleted, "
               f"{result.unchanged} unchanged")


@cli.command()
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


@cli.command()
def index(
    catalog: Annotated[Path, typer.Argument(help="CSV, TSV or JSONL catalog file")],
    checkpoint: Annotated[str | None, typer.Option(help="trained checkpoint (default: pretrained EfficientNet-Lite0)")] = None,
    progress: bool = True,
    engine: Annotated[str, typer.Option(help="extraction engine: local (DataLoader) or ray (Ray Data)")] = "local",
    memory_budget_gb: Annotated[float | None, typer.Option(help="RAM for the index; a tight one picks OPQ+IVF-PQ")] = None,
    flat_threshold: Annotated[int | None, typer.Option(help="exact index up to this many vectors (default: settings)")] = None,
    shard_size: Annotated[int, typer.Option(help="images per resumable extraction shard")] = DEFAULT_SHARD_SIZE,
    decoder: Annotated[str, typer.Option(help="auto (GPU JPEG decode on CUDA), pil or tensor")] = "auto",
    incremental: Annotated[bool, typer.Option("--incremental/--full", help="--full (default): build a new generation "
                                              "and swap to it; --incremental: apply the catalog's adds, changes and "
                                              "deletes to the served generation's delta, at once")] = False,
) -> None:
    """Build a new generation from the catalog and publish it atomically; a killed run resumes its extraction."""
    settings = Settings()
    if incremental:
        run_incremental(settings, catalog, checkpoint or settings.checkpoint, progress)
        return
    run_index(settings, catalog, checkpoint or settings.checkpoint, progress, engine=engine,
              memory_budget_gb=memory_budget_gb, flat_threshold=flat_threshold, shard_size=shard_size, decoder=decoder)


@cli.command()
def generations() -> None:
    """List the generations on disk; the served one is marked with '*'."""
    settings = Settings()
    served = current_generation(settings.data_dir)
    for name in list_generations(settings.data_dir):
        m = read_manifest(generations_dir(settings.data_dir) / name)
        typer.echo(f"{'*' if name == served else ' '} {name}  {m.count:>9} images  {m.index_factory:<16} {m.model_id}  {m.created_at}")


@cli.command()
def rollback(to: Annotated[str | None, typer.Option(help="generation name (default: the one before the served one)")] = None) -> None:
    """Serve an earlier generation again (the service follows the pointer)."""
    settings = Settings()
    names = list_generations(settings.data_dir)
    served = current_generation(settings.data_dir)
    if to is None:
        older = [n for n in names if served is None or n < served]
        if not older:
            raise fail("no earlier generation to roll back to")
        to = older[-1]
    try:
        publish(settings.data_dir, to)
    except GenerationError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"now serving {to} (was {served})")


@cli.command()
def demo(
    limit: Annotated[int | None, typer.Option(help="only the first N furniture items")] = None,
    renders: Annotated[int, typer.Option(help="indexed renders per item (besides its icon)")] = 4,
    workers: Annotated[int, typer.Option(help="render processes")] = 2,
) -> None:
    """Build the demo furniture catalog (Debian's sweethome3d-furniture) and index it; reuses what is built."""
    from indexer.demo import DemoDataMissing, build_demo_catalog

    settings = Settings()
    try:
        catalog = build_demo_catalog(settings.demo_dir, renders_per_item=renders, limit=limit, workers=workers)
    except DemoDataMissing as exc:
        raise fail(str(exc)) from None
    served = current_generation(settings.data_dir)
    if served:
        manifest = read_manifest(generations_dir(settings.data_dir) / served)
        if manifest.catalog_sha256 == content_hash(catalog) and manifest.checkpoint == settings.checkpoint:
            typer.echo(f"demo index is up to date ({served}, {manifest.count} images)")
            return
    run_index(settings, catalog, settings.checkpoint)


@cli.command()
def serve(
    host: Annotated[str | None, typer.Option(help="default: LOOKALIKE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: LOOKALIKE_PORT or 8000")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.main import create_app

    settings = Settings()
    settings = settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    typer.echo(f"Lookalike serving {settings.data_dir} at http://{settings.host}:{settings.port}/ (API docs: /docs)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cli()


if __name__ == "__main__":
    main()
