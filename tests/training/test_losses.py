import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners

from training.losses import DEFAULT_LOSS, UnknownLoss, available_losses, build_loss


def test_registry_names_and_types():
    assert {"multi_similarity", "triplet", "proxy_anchor", "normsoftmax", "arcface"} <= set(available_losses())
    assert DEFAULT_LOSS == "multi_similarity"
    ms = build_loss("multi_similarity", 10, 32)
    assert isinstance(ms.loss, losses.MultiSimilarityLoss) and isinstance(ms.miner, miners.MultiSimilarityMiner)
    triplet = build_loss("triplet", 10, 32)
    assert isinstance(triplet.loss, losses.TripletMarginLoss) and isinstance(triplet.miner, miners.TripletMarginMiner)
    assert isinstance(build_loss("triplet_batch_hard", 10, 32).miner, miners.BatchHardMiner)
    assert isinstance(build_loss("normsoftmax", 10, 32).loss, losses.NormalizedSoftmaxLoss)
    assert isinstance(build_loss("arcface", 10, 32).loss, losses.ArcFaceLoss)


def test_proxy_losses_own_parameters_sized_by_classes_and_embedding():
    bundle = build_loss("proxy_anchor", 7, 24)
    assert isinstance(bundle.loss, losses.ProxyAnchorLoss)
    (proxies,) = bundle.parameters()
    assert proxies.shape == (7, 24) and bundle.lr_factor > 1
    assert build_loss("multi_similarity", 7, 24).parameters() == []


@pytest.mark.parametrize("name", available_losses())
def test_every_loss_gives_a_finite_differentiable_value(name):
    torch.manual_seed(0)
    embeddings = F.normalize(torch.randn(16, 8), dim=1).requires_grad_()
    labels = torch.arange(4).repeat_interleave(4)
    bundle = build_loss(name, 4, 8)
    value = bundle(embeddings, labels)
    assert torch.isfinite(value)
    value.backward()
    assert embeddings.grad is not None


def test_unknown_loss_lists_known_names():
    with pytest.raises(UnknownLoss, match=r"unknown loss 'contrastive'; known: .*multi_similarity.*proxy_anchor"):
        build_loss("contrastive", 10, 32)
