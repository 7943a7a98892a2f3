"""Fault injection for the generation writers (issue 11, row 11 and the fault suite).

``lookalike index`` is killed with SIGKILL at each stage (ingest, extraction, assemble, index build, publish, just
after publish) and re-run; a write fails mid-publish (an injected ENOSPC on the pointer, and RLIMIT_FSIZE);
jobs race for one data dir (CLI against CLI, rollback and the service's reindex, reindex against reindex).
Every case ends with the served generation answering correctly (each item's own vector finds it), no partial
generation left, and nothing lost. Corrupt manifests, vectors and SQLite files in a new generation are in
tests/app/test_background.py (the service side). Catalogs are tiny; the killed jobs run side by side.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.main import create_app
from app.serving import LoadedGeneration
from app.settings import Settings
from cli.main import cli
from indexer import current_generation, list_generations
from indexer.generations import MANIFEST, VECTORS, generations_dir
from models import ModelConfig, build_model, save_checkpoint
from tests.conftest import write_catalog

RUNNER = Path(__file__).with_name("fault_runner.py")
ROOT = Path(__file__).resolve().parents[2]
STAGES = ["ingest", "extract", "assemble", "index", "publish", "published"]
ADMIN = {"X-API-Key": "faults"}
runner = CliRunner()


def small_model(folder: Path) -> Path:
    """A checkpoint of the default network at a 64-pixel input: the jobs under test embed quickly."""
    path = folder / "small.pt"
    if not path.exists():
        save_checkpoint(path, build_model(ModelConfig(image_size=64)))
    return path


def env_for(data_dir: Path) -> dict[str, str]:
    return {"LOOKALIKE_DATA_DIR": str(data_dir), "LOOKALIKE_DEVICE": "cpu", "LOOKALIKE_WORKERS": "0",
            "LOOKALIKE_CHECKPOINT": str(small_model(data_dir.parent))}


def lookalike(data_dir: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(cli, list(args), env=env_for(data_dir))


def run_faulty(jobs: list[tuple[str, str, Path, Path]]) -> subprocess.Popen[str]:
    """Start tests/cli/fault_runner.py with (mode, stage, data_dir, catalog) jobs: one import, a fork per job."""
    spec = [{"mode": mode, "stage": stage, "data_dir": str(data_dir),
             "args": ["index", str(catalog), "--no-progress", "--shard-size", "2"]}
            for mode, stage, data_dir, catalog in jobs]
    env = {**os.environ, **env_for(jobs[0][2]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(RUNNER), json.dumps(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def returncodes(proc: subprocess.Popen[str]) -> dict[int, int]:
    output = proc.communicate(timeout=300)[0]
    codes = {}
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            codes[record["job"]] = record["returncode"]
    assert proc.returncode == 0, output[-3000:]
    return codes


def job_log(data_dir: Path) -> str:
    return Path(f"{data_dir}.log").read_text(errors="replace")[-3000:]


def assert_serves(data_dir: Path, items: int) -> str:
    """The served generation opens, holds ``items`` items, and each item's own vector finds that item first."""
    name = current_generation(data_dir)
    assert name is not None
    gen = LoadedGeneration.open(data_dir, name)
    try:
        assert gen.catalog.count == items
        vectors = np.load(generations_dir(data_dir) / name / VECTORS)
        _, ids = gen.vectors.search(vectors, 1)
        assert ids[:, 0].tolist() == list(range(items))
    finally:
        gen.catalog.close()
    for path in generations_dir(data_dir).iterdir():
        assert (path / MANIFEST).is_file(), f"partial generation {path.name} left behind"
    return name


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A data dir serving a 3-item catalog, and a 4-item catalog for the jobs under test (inside the data dir,
    so the service may read it)."""
    data_dir = tmp_path_factory.mktemp("faults") / "data"
    first = write_catalog(data_dir / "catalogs" / "a", products=3, images=1)
    second = write_catalog(data_dir / "catalogs" / "b", products=4, images=1)
    result = lookalike(data_dir, "index", str(first), "--no-progress")
    assert result.exit_code == 0, result.output
    return data_dir, second, current_generation(data_dir)  # type: ignore[return-value]


def copy_of(seeded: tuple[Path, Path, str], target: Path) -> tuple[Path, Path]:
    data_dir, catalog, _ = seeded
    shutil.copytree(data_dir, target)
    shutil.copy(small_model(data_dir.parent), target.parent / "small.pt")
    return target, target / catalog.relative_to(data_dir)


@pytest.fixture(scope="module")
def faulty_runs(seeded, tmp_path_factory) -> list[tuple[str, str, Path, Path, int]]:
    """Every faulty job, side by side in one runner: (mode, stage, data dir, catalog, return code)."""
    root = tmp_path_factory.mktemp("faulty")
    jobs = [("kill", stage, *copy_of(seeded, root / stage)) for stage in STAGES]
    jobs.append(("fsize", str(16 * 1024), *copy_of(seeded, root / "fsize")))
    codes = returncodes(run_faulty(jobs))
    return [(*job, codes[n]) for n, job in enumerate(jobs)]


def test_kill_9_at_each_stage_then_resume(seeded, faulty_runs, caplog):
    caplog.set_level(logging.INFO, logger="indexer.extract")
    served = seeded[2]
    for mode, stage, data_dir, catalog, code in faulty_runs:
        if mode != "kill":
            continue
        assert code == -signal.SIGKILL, f"{stage}: {job_log(data_dir)}"
        now = current_generation(data_dir)
        if stage == "published":
            assert now != served  # the pointer had moved: the new generation is complete and served
        else:
            assert now == served, f"{stage}: the served generation changed"
        caplog.clear()
        result = lookalike(data_dir, "index", str(catalog), "--no-progress", "--shard-size", "2")
        assert result.exit_code == 0, f"{stage}: {result.output}"
        if stage in ("assemble", "index", "publish"):  # every shard survived the kill: nothing re-embedded
            assert not any("extracting" in r.message for r in caplog.records), stage
        if stage == "extract":
            assert any("extracting 1 of 2 shards" in r.message for r in caplog.records)
        assert assert_serves(data_dir, 4) != served
        assert not (data_dir / "LOCK.owner").exists()


def test_a_write_failure_mid_publish_leaves_the_served_generation(seeded, tmp_path, monkeypatch):
    data_dir, catalog = copy_of(seeded, tmp_path / "data")
    real_replace = os.replace

    def full_disk(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
        if Path(dst).name == "CURRENT":
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    result = lookalike(data_dir, "index", str(catalog), "--no-progress")
    monkeypatch.undo()
    assert result.exit_code == 2 and "No space left on device" in result.output
    assert "the served index is unchanged" in result.output
    assert assert_serves(data_dir, 3) == seeded[2]
    assert list_generations(data_dir) == [seeded[2]]  # the unpublished generation was removed
    assert lookalike(data_dir, "index", str(catalog), "--no-progress").exit_code == 0
    assert_serves(data_dir, 4)


def test_a_file_size_limit_fails_the_job_cleanly(seeded, faulty_runs):
    _, _, data_dir, catalog, code = next(run for run in faulty_runs if run[0] == "fsize")
    assert code == 2, job_log(data_dir)
    assert "nothing was published" in job_log(data_dir)
    assert assert_serves(data_dir, 3) == seeded[2]
    assert lookalike(data_dir, "index", str(catalog), "--no-progress").exit_code == 0
    assert_serves(data_dir, 4)


def wait_for_pid_file(path: Path, proc: subprocess.Popen[str], timeout: float = 300) -> int:
    """The pid the holding job wrote to ``path`` once it reached its stage."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        assert time.monotonic() < deadline, "the job never reached the stage"
        time.sleep(0.05)
    return int(path.read_text())


def test_concurrent_jobs_on_one_data_dir(seeded, tmp_path, monkeypatch):
    """Row 11: `lookalike index` beside /admin/reindex crashed on the shared work directory (nothing locked)."""
    data_dir, catalog = copy_of(seeded, tmp_path / "data")
    holder = run_faulty([("hold", "index", data_dir, catalog)])
    marker = data_dir / "HOLDING"
    holder_pid = wait_for_pid_file(marker, holder)
    settings = Settings(data_dir=data_dir, reload_interval_s=0, device="cpu", admin_api_key=ADMIN["X-API-Key"],
                        workers=0, checkpoint=str(small_model(tmp_path)))
    with TestClient(create_app(settings)) as client:
        for args in (["index", str(catalog), "--no-progress"], ["rollback"], ["index", str(catalog), "--incremental"]):
            result = lookalike(data_dir, *args)
            assert result.exit_code == 3, result.output
            assert f"another job holds the lock on {data_dir} (pid {holder_pid}, lookalike index" in result.output
        r = client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "data_dir_locked"
        assert f"pid {holder_pid}" in r.json()["error"]["message"]

        marker.unlink()  # let the CLI job finish
        assert returncodes(holder) == {0: 0}, job_log(data_dir)
        cli_generation = assert_serves(data_dir, 4)

        import indexer.build

        release = tmp_path / "release"
        real_build_index = indexer.build.build_index

        def slow_build_index(*args, **kwargs):  # type: ignore[no-untyped-def]
            deadline = time.monotonic() + 60
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
            return real_build_index(*args, **kwargs)

        monkeypatch.setattr(indexer.build, "build_index", slow_build_index)
        assert client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN).status_code == 202
        second = client.post("/admin/reindex", json={"catalog": str(catalog)}, headers=ADMIN)
        assert second.status_code == 409 and second.json()["error"]["code"] == "reindex_running"
        result = lookalike(data_dir, "index", str(catalog), "--no-progress")
        assert result.exit_code == 3 and f"pid {os.getpid()}, reindex of" in result.output
        release.touch()
        deadline = time.monotonic() + 120
        while (job := client.get("/admin/reindex", headers=ADMIN).json())["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job["state"] == "done", job
        assert client.get("/readyz").json()["generation"] == job["generation"] != cli_generation
    assert_serves(data_dir, 4)
    assert lookalike(data_dir, "rollback", "--to", cli_generation).exit_code == 0
    for bad in ("../../etc", "gen-1", "gen-000099"):
        result = lookalike(data_dir, "rollback", "--to", bad)
        assert result.exit_code == 2, result.output
    assert assert_serves(data_dir, 4) == cli_generation
