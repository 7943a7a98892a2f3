"""`--engine ray` writes the same shards as the local engine (skipped where Ray is not installed)."""

import numpy as np
import pytest

from indexer import build_generation
from indexer.generations import VECTORS
from indexer.generations import generations_dir
from tests.conftest import write_catalog

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_engine_matches_local_engine_and_resumes(tmp_path, embedder, local_ray):
    catalog = write_catalog(tmp_path / "cat", products=3, images=2)
    local = build_generation(catalog, tmp_path / "local", embedder, workers=0, progress=False, shard_size=4)
    work = tmp_path / "work"
    remote = build_generation(catalog, tmp_path / "ray", embedder, progress=False, shard_size=4, engine="ray",
                              work_root=work, keep_work=True)
    a = np.load(generations_dir(tmp_path / "local") / local.generation / VECTORS)
    b = np.load(generations_dir(tmp_path / "ray") / remote.generation / VECTORS)
    assert np.allclose(a, b, atol=1e-5)
    shards = sorted(work.glob("extract-*/shard-*.npz"))
    assert [p.name for p in shards] == ["shard-00000.npz", "shard-00001.npz"]
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in shards]
    build_generation(catalog, tmp_path / "ray", embedder, progress=False, shard_size=4, engine="ray",
                     work_root=work, keep_work=True)
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in shards] == stamps
