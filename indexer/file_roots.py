"""Files opened on a caller's behalf: inside the configured roots, a regular file, of bounded size.

A path given over HTTP (a catalog for ``/admin/reindex``, the images it lists, an item's image to serve) is
resolved (symlinks followed) before it is checked, so ``..`` and links cannot lead out of the roots, and
devices, FIFOs and folders are refused, as are files too large to read whole.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path


class FileRefused(ValueError):
    """A path the service will not open; ``code`` is machine-readable (outside_roots, not_found, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def confined_file(path: Path | str, roots: Sequence[Path], max_bytes: int) -> Path:
    """The resolved path of a regular file of at most ``max_bytes`` inside one of ``roots``."""
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError) as exc:
        raise FileRefused("not_found", f"{path}: {exc}") from None
    real_roots = [Path(os.path.realpath(r)) for r in roots]
    if not any(resolved == r or resolved.is_relative_to(r) for r in real_roots):
        raise FileRefused("outside_roots", f"{path} is outside the folders this service may read "
                          f"({', '.join(map(str, real_roots))}; see LOOKALIKE_FILE_ROOTS)")
    try:
        info = resolved.stat()
    except (OSError, ValueError):
        raise FileRefused("not_found", f"no file at {path}") from None
    if not stat.S_ISREG(info.st_mode):
        raise FileRefused("not_a_file", f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise FileRefused("file_too_large", f"{path} is {info.st_size} bytes, over the {max_bytes}-byte limit")
    return resolved
