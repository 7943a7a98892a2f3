"""`lookalike serve`: the HTTP API under uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import settings_of

serve_app = typer.Typer(add_completion=False)


@serve_app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="default: LOOKALIKE_HOST or 127.0.0.1")] = None,
    port: Annotated[int | None, typer.Option(help="default: LOOKALIKE_PORT or 8000")] = None,
) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from app.main import create_app

    settings = settings_of(ctx)
    settings = settings.model_copy(update={k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    typer.echo(f"Lookalike serving {settings.data_dir} at http://{settings.host}:{settings.port}/ (API docs: /docs)")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
