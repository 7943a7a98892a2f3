"""Background-invariant training: composite crops of cut-outs, NT-Xent adaptation, a trainable tail, and the
record of a checkpoint against the served model (tiny drawn products, 64 px, CPU)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cli.index import warn_unless_beats_served
from cli.train import train_app
from models.checkpoint import load_checkpoint, model_fingerprint, save_checkpoint
from models.comparison import record_comparison, served_comparison_warning
from models.embedding import EmbeddingNet
from training.composite_augment import CompositeAugment, cutout_paths
from training.composite import load_backgrounds
from training.datasets import Sample
from training.tail_cache import split_trunk
from training.train import TrainConfig, train, trunk_units
from tests.conftest import busy_background, draw_product, product_cutout


def make_catalog_with_cutouts(root: Path, products: int, images: int, start: int = 0) -> list[Sample]:
    """Drawn products under root/catalog, the first view of each also as a cut-out under root/cutouts."""
    samples = []
    for p in range(start, start + products):
        for v in range(images):
            rel = Path("images") / f"p{p}" / f"{v}.jpg"
            (root / "catalog" / rel).parent.mkdir(parents=True, exist_ok=True)
            draw_product(p, v, size=96).save(root / "catalog" / rel)
            if v == 0:
                (root / "cutouts" / rel).parent.mkdir(parents=True, exist_ok=True)
                product_cutout(p, v, size=96).save((root / "cutouts" / rel).with_suffix(".png"))
            samples.append(Sample(root / "catalog" / rel, f"p{p}", "shapes"))
    return samples


def write_backgrounds(root: Path, count: int = 3) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(count):
        busy_background(seed).save(root / f"bg{seed}.jpg")
        paths.append(str(root / f"bg{seed}.jpg"))
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("composite")
    return (root, make_catalog_with_cutouts(root, 6, 4), make_catalog_with_cutouts(root, 2, 4, start=6),
            write_backgrounds(root / "bg"))


def test_composite_crop_puts_the_cutout_on_a_photo(world):
    root, samples, _, backgrounds = world
    cutouts = cutout_paths([s.path for s in samples], root / "catalog", root / "cutouts")
    assert len(cutouts) == 6 and all(p.suffix == ".png" for p in cutouts.values())
    augment = CompositeAugment(cutouts, load_backgrounds([Path(p) for p in backgrounds]), prob=1.0)
    first = samples[0].path
    crop = augment(first, np.random.default_rng(0))
    assert crop is not None and crop.width == crop.height
    pixels = np.asarray(crop.convert("RGB"), dtype=np.int16)
    # the catalog photo's light studio backdrop is gone: the corners are the busy photo now
    corners = np.stack([pixels[1, 1], pixels[1, -2], pixels[-2, 1], pixels[-2, -2]])
    assert (corners.min(axis=1) < 200).any()
    # the product's red fills a good part of the crop (framed like a catalog photo)
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    assert red.mean() > 0.1
    assert augment(samples[1].path, np.random.default_rng(0)) is None  # no cut-out for view 1
    assert CompositeAugment(cutouts, augment.backgrounds, prob=0.0)(first, np.random.default_rng(0)) is None


def test_the_tail_from_a_cached_map_is_the_whole_forward():
    model = EmbeddingNet(TrainConfig(image_size=64, embedding_dim=None).to_model_config()).eval()
    prefix, tail = split_trunk(model, 6)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail(prefix(images)), model(images), atol=1e-5)
    with pytest.raises(ValueError, match="trainable_tail"):
        split_trunk(model, 40)


def test_training_with_composites_and_ntxent_moves_only_the_tail(world, tmp_path):
    root, train_samples, val_samples, backgrounds = world
    config = TrainConfig(image_size=64, embedding_dim=None, epochs=1, frozen_epochs=0, p=3, k=4, steps_per_epoch=2,
                         lr=1e-3, num_workers=0, device="cpu", eval_batch_size=16, trainable_tail=3,
                         composite_prob=1.0, catalog_root=str(root / "catalog"), cutouts_dir=str(root / "cutouts"),
                         backgrounds=backgrounds, ssl_steps=2, ssl_batch=4, feature_cache_copies=2)
    result = train(train_samples, val_samples, config, tmp_path, progress=False)
    start = result.history[0]
    assert start["epoch"] == 0 and start["ssl_steps"] == 2 and np.isfinite(start["ssl_loss"])
    assert 0 <= start["ssl_val_recall@1"] <= 1
    trained = load_checkpoint(result.last_path)
    fresh = EmbeddingNet(config.to_model_config())
    before, after = trunk_units(fresh.trunk), trunk_units(trained.trunk)
    unchanged = [all(torch.equal(a, b) for a, b in zip(u.state_dict().values(), w.state_dict().values()))
                 for u, w in zip(before, after)]
    assert all(unchanged[:-3]) and not all(unchanged[-3:])


def test_composites_without_cutouts_fail_before_training(world, tmp_path):
    root, train_samples, val_samples, backgrounds = world
    config = TrainConfig(image_size=64, embedding_dim=None, epochs=1, frozen_epochs=0, p=3, k=4, steps_per_epoch=1,
                         num_workers=0, device="cpu", composite_prob=0.5, catalog_root=str(root / "catalog"),
                         cutouts_dir=str(tmp_path / "none"), backgrounds=backgrounds)
    with pytest.raises(ValueError, match="no cut-outs"):
        train(train_samples, val_samples, config, tmp_path / "out", progress=False)


def test_comparison_with_the_served_model_is_recorded_and_read_back(tmp_path):
    model = EmbeddingNet(TrainConfig(image_size=64, embedding_dim=16).to_model_config())
    checkpoint = save_checkpoint(tmp_path / "best.pt", model)
    model_id = model_fingerprint(model)
    assert "no comparison" in served_comparison_warning(checkpoint, model_id)
    worse, better = {"recall@1": 0.5}, {"recall@1": 0.6}
    entry = record_comparison(checkpoint, model_id, worse, better, "served-id", 7, "test")
    assert entry["beats_served"] is False
    assert "does not beat the served model" in served_comparison_warning(checkpoint, model_id)
    assert "no comparison" in served_comparison_warning(checkpoint, "another-model")  # a retrained file
    record_comparison(checkpoint, model_id, better, worse, "served-id", 7, "test")
    assert served_comparison_warning(checkpoint, model_id) is None
    assert json.loads((tmp_path / "comparison.json").read_text())["best.pt"]["beats_served"] is True


def test_cli_train_reports_against_the_served_model_and_index_warns(world, tmp_path, capsys):
    root, *_ = world
    catalog = tmp_path / "catalog.csv"
    rows = ["item_id,product_id,title,category,image"]
    for path in sorted((root / "catalog" / "images").rglob("*.jpg")):
        rows.append(f"{path.parent.name}-{path.stem},{path.parent.name},t,shapes,{path}")
    catalog.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(train_app, [
        "train", "--catalog", str(catalog), "--out", str(out), "--epochs", "1", "--frozen-epochs", "0", "--p", "2",
        "--k", "4", "--image-size", "64", "--embedding-dim", "0", "--steps-per-epoch", "1", "--workers", "0",
        "--device", "cpu", "--no-progress", "--val-fraction", "0.2", "--test-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    assert "at 64px vs served" in result.output and "at 224px" in result.output
    entry = json.loads((out / "comparison.json").read_text())["best.pt"]
    assert entry["products"] >= 2 and entry["split"] == "test"
    assert entry["model_id"] == model_fingerprint(load_checkpoint(out / "best.pt"))
    warn_unless_beats_served(str(out / "best.pt"))
    warned = "does not beat the served model" in capsys.readouterr().err
    assert warned == (not entry["beats_served"])
