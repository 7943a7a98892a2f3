"""What every command group shares: the process's one ``Settings``, one-line failures, the embedder."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import typer

from app.settings import Settings
from indexer.locking import DataDirLock, DataDirLocked
from models import CheckpointError, Embedder, ModelConfig, RuntimeUnavailable, build_model

LOCKED_EXIT = 3  # another job holds the data dir's lock: retry later (2 is a failure of this job)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line reason on stderr and return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


@contextmanager
def holding_data_dir(settings: Settings, job: str) -> Iterator[None]:
    """Run a job that writes generations under the data dir's lock; exit 3 at once if another job holds it."""
    try:
        lock = DataDirLock(settings.data_dir, job).acquire()
    except DataDirLocked as exc:
        raise fail(str(exc), LOCKED_EXIT) from None
    try:
        yield
    finally:
        lock.release()


def settings_of(ctx: typer.Context) -> Settings:
    """The settings that the root callback built once for this invocation."""
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def make_embedder(settings: Settings, checkpoint: str | None, calibration: Sequence[Path] = ()) -> Embedder:
    """The served model (pretrained default, or a trained checkpoint) on the configured device and runtime;
    int8 calibrates on ``calibration``."""
    try:
        model = build_model(ModelConfig(), checkpoint=checkpoint)
        return Embedder(model, device=settings.device, options=settings.runtime_options(calibration))
    except (CheckpointError, RuntimeUnavailable) as exc:
        raise fail(str(exc)) from None
