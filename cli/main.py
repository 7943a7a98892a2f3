"""The ``lookalike`` entry point: the command groups on one Typer app, one ``Settings`` per invocation."""

from __future__ import annotations

import logging
import sys

import typer

from app.settings import Settings
from cli.demo import demo_app
from cli.detector import detector_app
from cli.index import index_app
from cli.serve import serve_app
from cli.train import train_app

cli = typer.Typer(help="Lookalike: visual search for product catalogs.", no_args_is_help=True, add_completion=False)


@cli.callback()
def root(ctx: typer.Context) -> None:
    """Lookalike: visual search for product catalogs."""
    ctx.obj = Settings()


for group in (index_app, demo_app, serve_app, train_app, detector_app):
    cli.add_typer(group)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cli()


if __name__ == "__main__":
    main()
