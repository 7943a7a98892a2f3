"""Real (tiny) training runs on drawn products: 64 px, a handful of steps, CPU."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli.train import train_app
from models import Embedder, load_checkpoint
from models.checkpoint import read_checkpoint
from training.datasets import DatasetError, ImageDataset, Sample
from training.losses import UnknownLoss
from models.preprocess import build_transform
from training.train import TrainConfig, TrainError, evaluate, make_train_loader, train
from tests.conftest import draw_product, write_catalog


def make_products(root: Path, products: int, images: int, start: int = 0) -> list[Sample]:
    samples = []
    for p in range(start, start + products):
        for v in range(images):
            path = root / f"p{p}" / f"{v}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            draw_product(p, v, size=72).save(path)
            samples.append(Sample(path, f"p{p}", "shapes"))
    return samples


def tiny_config(**overrides) -> TrainConfig:
    settings = dict(image_size=64, embedding_dim=32, epochs=3, frozen_epochs=1, p=3, k=4, steps_per_epoch=4,
                    lr=1e-3, num_workers=0, device="cpu", eval_batch_size=16, seed=0)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("products")
    return make_products(root, 6, 4), make_products(root, 2, 4, start=6)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    train_samples, val_samples = data
    out = tmp_path_factory.mktemp("run")
    return train(train_samples, val_samples, tiny_config(), out, progress=False)


def test_sampler_gives_p_products_with_k_images_each(data):
    train_samples, _ = data
    dataset = ImageDataset(train_samples, build_transform(32, (0.5,) * 3, (0.5,) * 3))
    loader = make_train_loader(dataset, p=3, k=4, steps=5, seed=1)
    batches = list(loader)
    assert len(batches) == 5
    for images, labels in batches:
        assert images.shape == (12, 3, 32, 32)
        assert sorted(Counter(labels.tolist()).values()) == [4, 4, 4]
    again = [labels.tolist() for _, labels in make_train_loader(dataset, p=3, k=4, steps=5, seed=1)]
    assert again == [labels.tolist() for _, labels in batches]  # seeded: same batches


def test_training_lowers_the_loss_and_writes_its_outputs(trained):
    out = trained.out_dir
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3]
    assert history[0]["loss"] is None and "val_recall@1" in history[0]  # the untrained start
    losses = [row["loss"] for row in history[1:]]
    assert losses[-1] < losses[0]
    assert all(k in history[1] for k in ("val_map@r", "lr", "seconds"))
    assert history[1]["frozen"] is True and history[2]["frozen"] is False
    assert (out / "training.png").stat().st_size > 1000
    assert trained.best_path == out / "best.pt" and 1 <= trained.best_epoch <= 3
    model = load_checkpoint(out / "best.pt")  # a plain checkpoint: the Embedder / indexer use it as is
    assert model.config.image_size == 64 and model.dim == 32
    vectors = Embedder(model, "cpu").embed_images([draw_product(0, 0)])
    assert vectors.shape == (1, 32)
    best_map = max(row["val_map@r"] for row in history[1:])
    assert trained.best_metrics["map@r"] == pytest.approx(best_map)


def test_evaluate_a_checkpoint_on_held_out_samples(trained, data):
    _, val_samples = data
    metrics = evaluate(trained.best_path, val_samples, batch_size=8, device="cpu")
    assert metrics["map@r"] == pytest.approx(trained.best_metrics["map@r"], abs=1e-4)
    assert metrics["queries"] == 8 and set(metrics) >= {"recall@1", "recall@5", "recall@10", "recall@100"}


def test_resume_continues_from_the_saved_epoch(trained, data, tmp_path):
    train_samples, val_samples = data
    out = tmp_path / "run"
    out.mkdir()
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (out / name).write_bytes((trained.out_dir / name).read_bytes())
    state = read_checkpoint(out / "last.pt")["extra"]["train_state"]
    assert state["epoch"] == 3 and state["scheduler"]["last_epoch"] == 12
    result = train(train_samples, val_samples, tiny_config(epochs=4), out, resume=True, progress=False)
    assert result.epochs_run == 1
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert history[:4] == trained.history
    state = read_checkpoint(out / "last.pt")["extra"]["train_state"]
    assert state["epoch"] == 4 and state["scheduler"]["last_epoch"] == 16
    head_state = state["optimizer"]["state"]
    assert max(int(s["step"]) for s in head_state.values()) == 16  # AdamW moments carried over, not restarted


def test_resume_refuses_another_backbone_or_missing_state(trained, data, tmp_path):
    train_samples, val_samples = data
    with pytest.raises(TrainError, match="resnet18"):
        train(train_samples, val_samples, tiny_config(backbone="resnet18", pretrained=False), trained.out_dir,
              resume=True, progress=False)
    with pytest.raises(TrainError, match="settings differ: loss"):
        train(train_samples, val_samples, tiny_config(loss="triplet"), trained.out_dir, resume=True, progress=False)
    with pytest.raises(TrainError, match="not found"):
        train(train_samples, val_samples, tiny_config(), tmp_path / "empty", resume=True, progress=False)


def test_bad_inputs_fail_before_training(data, tmp_path):
    train_samples, val_samples = data
    lonely = train_samples + [Sample(train_samples[0].path, "lonely")]
    with pytest.raises(DatasetError, match="'lonely' \\(1\\)"):
        train(lonely, val_samples, tiny_config(), tmp_path, progress=False)
    with pytest.raises(TrainError, match="K=5 .* smallest training product"):
        train(train_samples, val_samples, tiny_config(k=5), tmp_path, progress=False)
    with pytest.raises(TrainError, match="P=7 products per batch"):
        train(train_samples, val_samples, tiny_config(p=7), tmp_path, progress=False)
    with pytest.raises(UnknownLoss, match="known: .*arcface"):
        train(train_samples, val_samples, tiny_config(loss="nope"), tmp_path, progress=False)
    with pytest.raises(TrainError, match="both training and validation"):
        train(train_samples, train_samples[:8], tiny_config(), tmp_path, progress=False)
    assert not (tmp_path / "last.pt").exists()


@pytest.mark.parametrize("loss", ["proxy_anchor", "triplet"])
def test_other_losses_train(loss, data, tmp_path):
    train_samples, _ = data
    result = train(train_samples, None, tiny_config(loss=loss, epochs=1, frozen_epochs=0, steps_per_epoch=2),
                   tmp_path, progress=False)
    assert result.best_epoch == 1 and (tmp_path / "best.pt").exists()
    if loss == "proxy_anchor":
        proxies = read_checkpoint(tmp_path / "last.pt")["extra"]["train_state"]["loss_state"]["proxies"]
        assert proxies.shape == (6, 32) and torch.isfinite(proxies).all()


def test_cli_train_then_eval_on_held_out_products(tmp_path):
    runner = CliRunner()
    catalog = write_catalog(tmp_path / "cat", products=10, images=4)
    out = tmp_path / "out"
    args = ["train", "--catalog", str(catalog), "--out", str(out), "--epochs", "1", "--frozen-epochs", "0",
            "--p", "3", "--k", "4", "--image-size", "64", "--embedding-dim", "32", "--workers", "0",
            "--device", "cpu", "--no-progress"]
    result = runner.invoke(train_app, args)
    assert result.exit_code == 0, result.output
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"]) and len(split["test"]) >= 2
    result = runner.invoke(train_app, ["eval", "--checkpoint", str(out / "best.pt"), "--catalog", str(catalog),
                                       "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "MAP@R" in result.output and "trained" in result.output and "start (efficientnet_lite0" in result.output
    assert f"{len(split['test'])} products" in result.output

    bad = runner.invoke(train_app, ["train", "--catalog", str(catalog), "--out", str(tmp_path / "o2"),
                                    "--loss", "nope", "--no-progress"])
    assert bad.exit_code == 2 and "unknown loss 'nope'" in bad.output
    bad = runner.invoke(train_app, ["train", "--catalog", str(catalog), "--folder", str(tmp_path),
                                    "--out", str(tmp_path / "o3")])
    assert bad.exit_code == 2 and "exactly one of" in bad.output
