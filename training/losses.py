"""Metric-learning losses by name: thin wrappers over pytorch-metric-learning losses and miners.

Each entry builds a :class:`LossBundle` (loss module, optional miner). Proxy/classifier losses
(``proxy_anchor``, ``normsoftmax``, ``arcface``) own learnable parameters (proxies / class weights) sized by
the number of training classes and the embedding size; those parameters must be given to the optimizer,
usually at a higher learning rate (``lr_factor``, e.g. 100x for Proxy-Anchor as in Kim et al. 2020).

Embeddings reaching these losses are already L2-normalised; pml's cosine/LP distances normalise again,
which is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from pytorch_metric_learning import losses, miners
from torch import nn
from models.registry import Registry


class UnknownLoss(ValueError):
    """Raised for a loss name that is not registered."""


@dataclass
class LossBundle:
    """A loss, its miner (or None), and how to train its own parameters."""

    name: str
    loss: nn.Module
    miner: nn.Module | None = None
    lr_factor: float = 1.0  # learning rate of the loss's parameters relative to the base lr

    def __call__(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        embeddings = embeddings.float()
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        return self.loss(embeddings, labels, pairs) if pairs is not None else self.loss(embeddings, labels)

    def parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the loss (empty for pair/triplet losses)."""
        return [p for p in self.loss.parameters() if p.requires_grad]

    def to(self, device: torch.device | str) -> LossBundle:
        self.loss.to(device)
        if self.miner is not None:
            self.miner.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.loss.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.loss.load_state_dict(state, strict=True)


LossBuilder = Callable[[int, int], LossBundle]
LOSSES: Registry[LossBuilder] = Registry("loss", UnknownLoss)
register_loss = LOSSES.register
check_loss_name = LOSSES.check
DEFAULT_LOSS = "multi_similarity"


def available_losses() -> list[str]:
    """Names accepted by :func:`build_loss`."""
    return LOSSES.names()


def build_loss(name: str, num_classes: int, embedding_size: int) -> LossBundle:
    """The named loss for ``num_classes`` training classes and ``embedding_size``-d embeddings."""
    builder = LOSSES.get(name)
    if num_classes < 2:
        raise ValueError(f"loss {name!r} needs at least 2 training classes, got {num_classes}")
    return builder(num_classes, embedding_size)


@register_loss("multi_similarity")
def _multi_similarity(num_classes: int, embedding_size: int) -> LossBundle:
    # Wang et al. 2019 defaults (alpha=2, beta=50, lambda=0.5; mining epsilon 0.1)
    return LossBundle("multi_similarity", losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5),
                      miners.MultiSimilarityMiner(epsilon=0.1))


@register_loss("triplet")
def _triplet(num_classes: int, embedding_size: int) -> LossBundle:
    return LossBundle("triplet", losses.TripletMarginLoss(margin=0.1),
                      miners.TripletMarginMiner(margin=0.1, type_of_triplets="semihard"))


@register_loss("triplet_batch_hard")
def _triplet_batch_hard(num_classes: int, embedding_size: int) -> LossBundle:
    return LossBundle("triplet_batch_hard", losses.TripletMarginLoss(margin=0.1), miners.BatchHardMiner())


@register_loss("proxy_anchor")
def _proxy_anchor(num_classes: int, embedding_size: int) -> LossBundle:
    return LossBundle("proxy_anchor", losses.ProxyAnchorLoss(num_classes, embedding_size, margin=0.1, alpha=32),
                      lr_factor=100.0)


@register_loss("normsoftmax")
def _normsoftmax(num_classes: int, embedding_size: int) -> LossBundle:
    return LossBundle("normsoftmax", losses.NormalizedSoftmaxLoss(num_classes, embedding_size, temperature=0.05),
                      lr_factor=100.0)


@register_loss("arcface")
def _arcface(num_classes: int, embedding_size: int) -> LossBundle:
    return LossBundle("arcface", losses.ArcFaceLoss(num_classes, embedding_size, margin=28.6, scale=64),
                      lr_factor=100.0)
