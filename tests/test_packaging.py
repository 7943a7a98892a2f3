"""The container files run the same commands as the README; check them by linting and reading."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
                    reason="hadolint comes with the test extra")
def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_share_data_and_run_real_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"indexer", "api"}
    for service in services.values():
        assert "lookalike-data:/data" in service["volumes"]
        command = service["command"]
        assert command[0] == "lookalike"
        help_result = CliRunner().invoke(cli, [command[1], "--help"])
        assert help_result.exit_code == 0, help_result.output
    assert services["api"]["depends_on"]["indexer"]["condition"] == "service_completed_successfully"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_code_has_no_pyflakes_errors():
    ruff = shutil.which("ruff") or str(ROOT / ".venv/bin/ruff")
    result = subprocess.run([ruff, "check", "--select", "E9,F", "app", "cli", "demo", "models", "training", "indexer", "bench", "tests"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
