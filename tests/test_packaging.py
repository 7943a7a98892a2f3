"""The container files run the same commands as the README; check them by linting and reading."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from app.settings import Settings
from cli.main import cli

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("hadolint") is None and not (ROOT / ".venv/bin/hadolint").exists(),
                    reason="hadolint comes with the test extra")
def test_dockerfile_lints_clean():
    exe = shutil.which("hadolint") or str(ROOT / ".venv/bin/hadolint")
    result = subprocess.run([exe, "--failure-threshold", "info", str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_services_share_data_and_run_real_commands():
    services = _compose()["services"]
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == {"indexer", "api"}
    for name in ("indexer", "api", "milvus-indexer", "milvus-api"):
        service = services[name]
        assert "lookalike-data:/data" in service["volumes"]
        command = service["command"]
        assert command[0] == "lookalike"
        help_result = CliRunner().invoke(cli, [command[1], "--help"])
        assert help_result.exit_code == 0, help_result.output
    assert services["api"]["depends_on"]["indexer"]["condition"] == "service_completed_successfully"


def test_compose_milvus_profile_runs_milvus_standalone_and_points_an_api_at_it():
    services = _compose()["services"]
    profile = {name for name, s in services.items() if "milvus" in s.get("profiles", [])}
    assert profile == {"etcd", "minio", "milvus", "milvus-indexer", "milvus-api"}
    # the images and versions of Milvus's own standalone docker-compose (v2.6), pinned, never :latest
    assert services["etcd"]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    assert services["minio"]["image"].startswith("minio/minio:RELEASE.")
    assert re.fullmatch(r"milvusdb/milvus:v2\.6\.\d+", services["milvus"]["image"])
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    env = services["milvus"]["environment"]
    assert env["ETCD_ENDPOINTS"] == "etcd:2379" and env["MINIO_ADDRESS"] == "minio:9000"
    for dependency in ("etcd", "minio"):
        assert services["milvus"]["depends_on"][dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]
    # published on loopback only
    assert all(port.startswith("127.0.0.1:") for s in services.values() for port in s.get("ports", []))
    for name in ("milvus-indexer", "milvus-api"):
        env = services[name]["environment"]
        settings = Settings(**{k.removeprefix("LOOKALIKE_").lower(): v for k, v in env.items()
                               if k.startswith("LOOKALIKE_")})
        assert settings.vector_backend == "milvus"
        assert settings.milvus_uri == "http://milvus:19530"
        assert services[name]["depends_on"]["milvus"]["condition"] == "service_healthy"
        assert env["LOOKALIKE_DATA_DIR"] != "/data"  # its generations never mix with the embedded ones
    assert services["milvus-api"]["depends_on"]["milvus-indexer"]["condition"] == "service_completed_successfully"


def test_milvus_smoke_script_starts_the_profile_indexes_and_searches():
    script = (ROOT / "scripts/milvus-smoke.sh").read_text()
    assert "--profile milvus" in script and "/search" in script and "down" in script
    result = subprocess.run(["bash", "-n", str(ROOT / "scripts/milvus-smoke.sh")], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci/run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_code_has_no_pyflakes_errors():
    ruff = shutil.which("ruff") or str(ROOT / ".venv/bin/ruff")
    result = subprocess.run([ruff, "check", "--select", "E9,F", "app", "cli", "demo", "models", "training", "indexer", "bench", "tests"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
