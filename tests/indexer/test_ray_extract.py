"""`--engine ray` writes the same shards as the local engine (skipped where Ray is not installed)."""

import numpy as np
import pytest

from indexer import build_generation
from indexer.generations import VECTORS
from indexer.generations import generations_dir
from tests.conftest import write_catalog

ray = pytest.importorskip("ray")


pytestmark = pytest.mark.own_process


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


def test_ray_engine_writes_straight_into_milvus_resumably(tmp_path, embedder, local_ray):
    pytest.importorskip("pymilvus")
    import pyarrow as pa

    from indexer.milvus_ingest import make_datasink, marker, unwritten
    from indexer.milvus_store import MilvusStore, MilvusTarget

    catalog = write_catalog(tmp_path / "cat", products=3, images=2)
    target = MilvusTarget(str(tmp_path / "milvus.db"))
    work = tmp_path / "work"
    built = build_generation(catalog, tmp_path / "ray", embedder, progress=False, shard_size=4, engine="ray",
                             work_root=work, keep_work=True, milvus=target)
    store = MilvusStore.open(target.connect(), built.milvus_collection, model_id=built.model_id, embedded=True)
    assert store.ntotal == built.count == 6
    (shard_dir,) = work.glob("extract-*")
    expected = np.concatenate([v for _, v in ShardStore_of(shard_dir).iter_shards()])  # 6 distinct images, in order
    assert np.allclose(store.vectors(np.arange(6)), expected, atol=1e-6)
    assert all(marker(shard_dir, built.milvus_collection, s).exists() for s in (0, 1))
    assert unwritten(ShardStore_of(shard_dir), built.milvus_collection) == []  # a re-run writes nothing again

    # The datasink the Ray workers use against a Milvus server: blocks of rows in, shards marked once complete.
    fresh = MilvusStore.create(target.connect(), "sink_check", store.dim, model_id=built.model_id, embedded=True)
    from indexer.milvus_ingest import Progress, RowTable

    table = RowTable(np.arange(6) // 1, ["c"] * 6, [f"p{i}" for i in range(6)])
    shards = ShardStore_of(shard_dir)
    rows = table.shard_rows(shards, 0)
    block = pa.table({"id": rows["id"], "vector": list(rows["vector"]), "category": rows["category"],
                      "product_id": rows["product_id"], "shard": rows["shard"]})
    sink = make_datasink(target, "sink_check", str(shard_dir), 2, Progress(shard_dir, "sink_check", shards.plan, table))
    assert sink.write([block], None) == 4
    fresh.refresh()
    assert fresh.ntotal == 4 and marker(shard_dir, "sink_check", 0).exists()
    assert not marker(shard_dir, "sink_check", 1).exists()


def ShardStore_of(path):
    import json

    from indexer.shards import SHARD_MANIFEST, ShardLayout, ShardSet

    return ShardSet(path, ShardLayout(**json.loads((path / SHARD_MANIFEST).read_text())))
