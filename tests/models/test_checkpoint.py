import numpy as np
import pytest
import torch

from models import CheckpointError, Embedder, ModelConfig, build_model, load_checkpoint, save_checkpoint
from tests.conftest import draw_product


def test_checkpoint_round_trip_rebuilds_the_same_network(tmp_path):
    model = build_model(ModelConfig(image_size=96, embedding_dim=48))
    with torch.no_grad():
        model.head.weight.mul_(1.5)  # something the config alone would not reproduce
    path = save_checkpoint(tmp_path / "m.pt", model, {"epoch": 3})
    loaded = load_checkpoint(path)
    image = [draw_product(2, 1)]
    a, b = Embedder(model, "cpu"), Embedder(loaded, "cpu")
    assert np.allclose(a.embed_images(image), b.embed_images(image), atol=1e-6)
    assert a.model_id == b.model_id
    assert loaded.config.image_size == 96


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model(ModelConfig(image_size=64)))
    with pytest.raises(CheckpointError, match="efficientnet_lite0"):
        load_checkpoint(path, expect_backbone="resnet50")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
