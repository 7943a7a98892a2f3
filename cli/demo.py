"""`lookalike demo`: build (or reuse) the demo furniture catalog and index it."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import fail, settings_of
from cli.index import run_index
from indexer import current_generation
from indexer.extract import content_hash
from indexer.generations import generations_dir, read_manifest

demo_app = typer.Typer(add_completion=False)


@demo_app.command()
def demo(
    ctx: typer.Context,
    limit: Annotated[int | None, typer.Option(help="only the first N furniture items")] = None,
    renders: Annotated[int, typer.Option(help="indexed renders per item (besides its icon)")] = 4,
    workers: Annotated[int, typer.Option(help="render processes")] = 2,
) -> None:
    """Build the demo furniture catalog (Debian's sweethome3d-furniture) and index it; reuses what is built."""
    from demo import DemoDataMissing, build_demo_catalog

    settings = settings_of(ctx)
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
