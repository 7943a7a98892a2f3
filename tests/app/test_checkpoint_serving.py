"""A checkpoint from training is indexed and served with no other change."""

import torch
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import build_generation
from models import Embedder, ModelConfig, build_model, load_checkpoint, save_checkpoint
from tests.app.test_search_api import jpeg
from tests.conftest import draw_product, write_catalog


def test_generation_built_from_a_checkpoint_is_served_with_that_model(tmp_path):
    model = build_model(ModelConfig(image_size=96, embedding_dim=64))
    with torch.no_grad():
        model.head.weight.add_(0.01)  # weights the config alone cannot rebuild
    checkpoint = save_checkpoint(tmp_path / "best.pt", model)
    embedder = Embedder(load_checkpoint(checkpoint), device="cpu")
    manifest = build_generation(write_catalog(tmp_path / "cat", products=4, images=2), tmp_path / "data", embedder,
                                checkpoint=str(checkpoint), workers=0, progress=False)
    assert manifest.dim == 64 and manifest.checkpoint == str(checkpoint)
    with TestClient(create_app(Settings(data_dir=tmp_path / "data", reload_interval_s=0, device="cpu"))) as client:
        body = client.post("/search?k=2", content=jpeg(draw_product(3, 6)), headers={"Content-Type": "image/jpeg"}).json()
        assert body["model_id"] == embedder.model_id
        assert body["results"][0]["product_id"] == "p3"
