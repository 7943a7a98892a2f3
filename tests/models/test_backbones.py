import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models._meta import _IMAGENET_CATEGORIES

from models import ModelConfig, UnknownBackbone, WeightsUnavailable, build_model, create_backbone, load_image
from models.efficientnet_lite import efficientnet_lite0, offline_weights_path
from models.preprocess import build_transform
from tests.conftest import IMAGES_PER_PRODUCT, PRODUCTS, draw_product

SWEETHOME = Path("/usr/share/sweethome3d/furniture/BlendSwap-CC-0.sh3f")
SEATS = {"folding chair", "rocking chair", "barber chair", "throne", "studio couch", "park bench"}


def test_offline_weights_load_strictly_every_key():
    state = torch.load(offline_weights_path(), map_location="cpu", weights_only=True)
    model = efficientnet_lite0(pretrained=True)
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert own[key].shape == value.shape
        assert torch.equal(own[key], value), key


@pytest.mark.skipif(not SWEETHOME.is_file(), reason="needs Debian's sweethome3d-furniture (make test installs it)")
def test_pretrained_network_recognises_a_real_armchair_icon():
    with zipfile.ZipFile(SWEETHOME) as zf:
        image = load_image(zf.read("blendswap-cc-0/armchair.png"))
    model = efficientnet_lite0(pretrained=True).eval()
    batch = build_transform(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(image)[None]
    with torch.no_grad():
        top5 = model(batch).softmax(1)[0].topk(5).indices.tolist()
    names = [_IMAGENET_CATEGORIES[i] for i in top5]
    assert names[0] in SEATS, names
    assert len(SEATS.intersection(names)) >= 3, names


def _recall_at_1(config: ModelConfig) -> float:
    from models import Embedder

    embedder = Embedder(build_model(config), device="cpu")
    images = [draw_product(p, v) for p in range(PRODUCTS) for v in range(IMAGES_PER_PRODUCT)]
    labels = np.repeat(np.arange(PRODUCTS), IMAGES_PER_PRODUCT)
    vectors = embedder.embed_images(images)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return float((labels[sims.argmax(1)] == labels).mean())


def test_pretrained_features_retrieve_better_than_random_init():
    pretrained = _recall_at_1(ModelConfig(image_size=128))
    random_init = _recall_at_1(ModelConfig(image_size=128, pretrained=False))
    assert pretrained >= 0.9
    assert pretrained > random_init


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(UnknownBackbone, match="efficientnet_lite0"):
        create_backbone("vgg_nonexistent")


def test_torchvision_weights_come_from_the_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / Path(weights.url).name
    cached.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), cached)
    backbone = create_backbone("resnet18", pretrained=True)
    assert backbone.channels == 512
    assert torch.equal(backbone.trunk[0].weight, reference.conv1.weight)


def test_torchvision_weights_from_a_local_file(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_model(ModelConfig(backbone="resnet18", weights_path=str(tmp_path / "r18.pth"), embedding_dim=64))
    assert model.dim == 64
    assert torch.equal(model.trunk[0].weight, reference.conv1.weight)


def test_missing_torchvision_weights_fail_clearly_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import torch.hub

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsUnavailable, match="weights_path"):
        create_backbone("resnet18", pretrained=True)


def test_embeddings_are_unit_length_and_deterministic():
    from models import Embedder

    embedder = Embedder(build_model(ModelConfig(image_size=96, embedding_dim=32, seed=3)), device="cpu")
    again = Embedder(build_model(ModelConfig(image_size=96, embedding_dim=32, seed=3)), device="cpu")
    image = draw_product(1, 0)
    a, b = embedder.embed_images([image]), again.embed_images([image])
    assert a.shape == (1, 32)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(a, b)
    assert embedder.model_id == again.model_id
