"""The process's one OpenVINO ``Core``.

OpenVINO's CPU plugin, when a Core first loads it, replaces the calling thread's signal stack (``sigaltstack``)
with one of its own (room for AMX state). When that plugin is destroyed it unmaps the stack, and it restores the
previous one only on the same thread and only when no other stack was set since. A Core dropped on another thread
(Python's garbage collector runs wherever it is triggered) or out of order leaves the first thread's signal stack
pointing at unmapped memory: the next signal delivered there to a Python handler (SIGCHLD when a DataLoader worker
or a subprocess exits, SIGTERM to the service) kills the process with SIGSEGV and no traceback.
``tests/models/test_openvino_core.py`` shows it. One Core, made on first use and kept for the life of the process,
never unmaps a stack that is in use. Core's methods are thread-safe; settings go with each ``compile_model``.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def openvino_core() -> Any:
    """The shared ``openvino.Core`` (made on first use; never destroyed before the process ends)."""
    import openvino as ov

    return ov.Core()
