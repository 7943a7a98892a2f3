"""One OpenVINO Core per process: dropping Cores on other threads must not break signal delivery.

OpenVINO's CPU plugin swaps in a signal stack of its own on the thread that loads it and unmaps it when the plugin
goes (see ``models/openvino_core.py``). A process that made and dropped Cores on different threads died with
SIGSEGV on the next signal to a Python handler: in the test suite, the SIGCHLD of a finished subprocess.
"""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")

ROOT = Path(__file__).resolve().parents[2]

# Loads the CPU plugin on the main thread, then drops the Core from another thread (as the garbage collector may),
# then delivers a signal to a Python handler on the main thread.
SCRIPT = """
import faulthandler, gc, os, signal, sys, threading
import numpy as np
import openvino as ov
from openvino import opset13 as ops
from models.openvino_core import openvino_core

faulthandler.enable()  # as pytest does: the main thread gets an alternate signal stack of Python's
received = []
signal.signal(signal.SIGUSR1, lambda signum, frame: received.append(signum))
x = ops.parameter([1, 4], np.float32)
model = ov.Model([ops.relu(x)], [x])
holder = {"core": openvino_core()}
holder["compiled"] = holder["core"].compile_model(model, "CPU")
worker = threading.Thread(target=lambda: (holder.clear(), openvino_core(), gc.collect()))
worker.start()
worker.join()
gc.collect()
os.kill(os.getpid(), signal.SIGUSR1)
print("survived", received)
"""


def test_a_signal_after_cores_are_dropped_on_another_thread_is_delivered():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "survived [10]"


def test_every_openvino_core_comes_from_the_shared_one():
    sources = {str(p.relative_to(ROOT)): p.read_text() for d in ("app", "cli", "demo", "indexer", "models", "training",
                                                                  "bench") for p in (ROOT / d).rglob("*.py")}
    makers = [name for name, text in sources.items() if "ov.Core()" in text or "openvino.Core()" in text]
    assert makers == ["models/openvino_core.py"]
