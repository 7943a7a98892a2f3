"""The package layout's promises: the service never loads the training stack; shared helpers behave."""

import subprocess
import sys
from pathlib import Path

import pytest

from models.atomic import atomic_path, write_json_atomic
from models.registry import Registry

ROOT = Path(__file__).resolve().parent.parent


def test_the_service_does_not_import_the_training_stack():
    code = ("import sys, app.main, cli.main; "
            "print(sorted(m for m in ('pytorch_metric_learning', 'matplotlib', 'training', 'demo') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "manifest.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text().strip() == '{\n  "v": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_registry_fails_loudly_on_unknown_and_duplicate_names():
    class Unknown(ValueError):
        pass

    things: Registry[int] = Registry("thing", Unknown)
    things.register("a")(1)
    assert things.get("a") == 1 and things.names() == ["a"]
    with pytest.raises(Unknown, match="unknown thing 'b'; known: a"):
        things.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        things.register("a")(2)
