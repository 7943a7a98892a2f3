"""Resumable sharded extraction, dedupe through shards, and the decoder choice (GPU path's CPU twin)."""

import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from indexer import CatalogError, build_generation, current_generation, list_generations, read_manifest
from indexer.generations import VECTORS, WORK, generations_dir
from indexer.extract import choose_decoder, decode_jpegs, extract_embeddings, extract_to_shards, hash_images
from indexer.shards import ShardError, ShardSet
from indexer.vector_index import gpu_available
from models import load_image
from tests.conftest import draw_product, write_catalog


class KilledAfter:
    """The embedder's forward, raising after ``batches`` batches (a job killed mid-way); counts calls."""

    def __init__(self, embedder, batches: int | None = None) -> None:
        self.embedder, self.batches, self.calls = embedder, batches, 0

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        if self.batches is not None and self.calls >= self.batches:
            raise KeyboardInterrupt("killed")
        self.calls += 1
        return self.embedder.embed_tensors(batch)


def _stamps(paths):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def test_killed_build_resumes_without_rewriting_finished_shards(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=5, images=3)  # 15 distinct images
    with catalog.open("a") as handle:
        handle.write("dup,p0,copy,chairs,images/p0-v0.jpg,acme\n")  # a duplicate: 16 rows, 15 distinct
    clean = build_generation(catalog, tmp_path / "clean", embedder, workers=0, progress=False, shard_size=4,
                             batch_size=2)
    data = tmp_path / "data"
    killed = KilledAfter(embedder, batches=5)  # shards 0 and 1 (2 batches each) finish, shard 2 does not
    with pytest.raises(KeyboardInterrupt):
        build_generation(catalog, data, embedder, workers=0, progress=False, shard_size=4, batch_size=2,
                         embed=killed)
    assert current_generation(data) is None and list_generations(data) == []
    work = list((data / WORK).glob("extract-*"))
    assert len(work) == 1
    finished = sorted(work[0].glob("shard-*.npz"))
    assert [p.name for p in finished] == ["shard-00000.npz", "shard-00001.npz"]
    before = _stamps(finished)

    rerun = KilledAfter(embedder)
    manifest = build_generation(catalog, data, embedder, workers=0, progress=False, shard_size=4, batch_size=2,
                                embed=rerun, keep_work=True)
    assert rerun.calls == 4  # shard 2 (4 images) and shard 3 (3 images), two batches each
    assert _stamps(finished) == before  # the finished shards were neither rewritten nor replaced
    assert sorted(p.name for p in work[0].glob("shard-*.npz")) == [f"shard-0000{i}.npz" for i in range(4)]
    assert manifest.count == 16 and manifest.unique_images == 15
    resumed = np.load(generations_dir(data) / manifest.generation / VECTORS)
    reference = np.load(generations_dir(tmp_path / "clean") / clean.generation / VECTORS)
    assert np.allclose(resumed, reference, atol=1e-6)
    assert np.array_equal(resumed[15], resumed[0])  # the duplicate maps to the same vector

    # Without keep_work the shards go once the generation is published.
    build_generation(catalog, data, embedder, workers=0, progress=False, shard_size=4, batch_size=2)
    assert not work[0].exists()


def test_shard_store_never_rewrites_and_refuses_another_job(tmp_path):
    hashes = [f"{i:064x}" for i in range(5)]
    store = ShardSet.open(tmp_path, "model-a", 3, hashes, shard_size=2)
    assert store.plan.shard_count == 3 and store.missing() == [0, 1, 2]
    first = np.ones((2, 3), np.float32)
    path = store.write(0, first, hashes[:2])
    stamp = path.stat().st_mtime_ns, path.stat().st_ino
    store.write(0, np.zeros((2, 3), np.float32), hashes[:2])
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp and np.array_equal(store.read(0)[0], first)
    with pytest.raises(ShardError):
        store.write(2, np.zeros((2, 3), np.float32), hashes[:2])  # the last shard holds one vector
    # Re-opening with another shard size keeps the plan on disk; another model is another directory.
    assert ShardSet.open(tmp_path, "model-a", 3, hashes, shard_size=99).plan.shard_size == 2
    assert ShardSet.open(tmp_path, "model-b", 3, hashes).path != store.path
    with pytest.raises(ShardError, match="not extracted"):
        store.assemble(tmp_path / "v.npy", np.arange(5))
    store.write(1, 2 * first, hashes[2:4])
    store.write(2, 3 * np.ones((1, 3), np.float32), hashes[4:])
    rows = np.array([4, 0, 2, 2])
    out = store.assemble(tmp_path / "v.npy", rows, hashes)
    assert out[:, 0].tolist() == [3, 1, 2, 2]
    with pytest.raises(ShardError, match="does not hold"):
        store.assemble(tmp_path / "w.npy", rows, list(reversed(hashes)))


def test_extract_to_shards_reports_the_bad_image(tmp_path, embedder):
    catalog = write_catalog(tmp_path / "cat", products=2, images=2)
    paths = sorted((tmp_path / "cat/images").glob("*.jpg"))
    paths[2].write_bytes(b"not a jpeg")
    with pytest.raises(Exception) as err:
        extract_to_shards(paths, hash_images(paths), embedder, tmp_path / "work", shard_size=2, batch_size=2,
                          workers=0, progress=False)
    assert getattr(err.value, "index", None) == 2
    with pytest.raises(CatalogError, match="not_an_image"):
        build_generation(catalog, tmp_path / "data", embedder, workers=0, progress=False)


def test_decoder_choice_takes_the_cpu_path_here():
    assert choose_decoder(torch.device("cpu")) == "pil"
    assert choose_decoder(torch.device("cpu"), "tensor") == "tensor"
    with pytest.raises(ValueError, match="unknown decoder"):
        choose_decoder(torch.device("cpu"), "nvjpeg")


@pytest.mark.parametrize("library", ["torchcodec", "torchvision"])
def test_tensor_jpeg_path_matches_the_pil_path(tmp_path, embedder, library, monkeypatch):
    if library == "torchvision":  # TorchCodec missing: torchvision.io's (deprecated) decoder takes over
        monkeypatch.setitem(sys.modules, "torchcodec", None)
    else:
        pytest.importorskip("torchcodec.decoders")
    paths = []
    for p in range(3):
        draw_product(p, 0).save(tmp_path / f"small-{p}.jpg", quality=92)  # 160 px: decoded at full size
        paths.append(tmp_path / f"small-{p}.jpg")
    draw_product(5, 1, size=640).save(tmp_path / "large.jpg", quality=92)  # PIL may draft-decode this one
    draw_product(6, 1).convert("L").save(tmp_path / "grey.jpg", quality=92)
    Image.new("RGBA", (90, 70), (10, 200, 30, 128)).save(tmp_path / "alpha.png")  # not a JPEG: PIL fallback
    rotated = Image.new("RGB", (120, 60), (200, 40, 40))
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF: rotate 90 degrees on display; nvJPEG would not, so it takes the PIL path
    rotated.save(tmp_path / "rotated.jpg", quality=92, exif=exif)
    paths += [tmp_path / "large.jpg", tmp_path / "grey.jpg", tmp_path / "rotated.jpg", tmp_path / "alpha.png"]

    jpegs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths[:5]]
    tensors = decode_jpegs(jpegs, embedder.transform, torch.device("cpu"))
    for path, tensor in zip(paths[:5], tensors, strict=True):
        reference = embedder.transform(load_image(path, draft_size=embedder.image_size))
        assert tensor.shape == reference.shape
        assert (tensor - reference).abs().mean() < 0.01  # identical but for PIL's draft (DCT) scaling of big JPEGs

    via_pil = extract_embeddings(paths, embedder, workers=0, progress=False, decoder="pil")
    via_tensor = extract_embeddings(paths, embedder, workers=0, progress=False, decoder="tensor")
    cosine = (via_pil * via_tensor).sum(axis=1)
    assert cosine.min() > 0.99
    assert np.array_equal(via_pil[-2:], via_tensor[-2:])  # the rotated JPEG and the PNG took the same PIL path


def test_dataloader_workers_give_the_same_vectors(tmp_path, embedder):
    write_catalog(tmp_path / "cat", products=2, images=3)
    paths = sorted((tmp_path / "cat/images").glob("*.jpg"))
    shutil.copy(paths[0], tmp_path / "cat/images/copy.jpg")
    serial = extract_embeddings(paths, embedder, workers=0, progress=False, batch_size=4)
    parallel = extract_embeddings(paths, embedder, workers=2, progress=False, batch_size=4)
    assert np.allclose(serial, parallel, atol=1e-6)


def test_manifest_records_measured_index_quality(built_data_dir):
    manifest = read_manifest(generations_dir(built_data_dir) / current_generation(built_data_dir))
    assert manifest.recall_at_10 == 1.0 and manifest.index_kind == "flat"
    assert manifest.index_memory_bytes == manifest.count * manifest.dim * 1  # 8-bit codes, the default
    assert manifest.index_device == ("cuda" if gpu_available() else "cpu")
    assert manifest.index_build_seconds is not None
