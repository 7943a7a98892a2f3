"""The `lookalike` command: demo, ingest, index, generations, rollback, serve (and train/eval)."""

from __future__ import annotations

import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from app.settings import Settings
from indexer import CatalogError, GenerationError, build_generation, current_generation, list_generations, publish, read_catalog
from indexer.extract import content_hash
from indexer.generations import generations_dir, read_manifest
from models import CheckpointError, Embedder, ModelConfig, build_model

cli = typer.Typer(help="Lookalike: visual search for product catalogs.", no_args_is_help=True, add_completion=False)


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


def run_index(settings: Settings, catalog: Path, checkpoint: str | None, progress: bool = True) -> None:
    embedder = make_embedder(settings, checkpoint)
    try:
        manifest = build_generation(catalog, settings.data_dir, embedder, checkpoint=checkpoint,
                                    flat_threshold=settings.flat_threshold, batch_size=settings.batch_size,
                                    workers=settings.workers, keep=settings.keep_generations, progress=progress)
    except CatalogError as exc:
        raise fail(f"{exc} (nothing was published; the served index is unchanged)") from None
    typer.echo(f"published {manifest.generation}: {manifest.count} images ({manifest.unique_images} distinct), "
               f"{manifest.index_factory} index, model {manifest.model_id}, {manifest.seconds}")


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
) -> None:
    """Build a new generation from the catalog and publish it atomically."""
    settings = Settings()
    run_index(settings, catalog, checkpoint or settings.checkpoint, progress)


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
