"""Training only the trunk's last units on a CPU: the frozen part's outputs are computed once and cached.

When only the last blocks of EfficientNet-Lite0 train (``trainable_tail``), every step would still run the frozen
stem and early blocks, about three quarters of the forward pass. Instead each training image is augmented
``copies`` times (crops, flips, colour, composites), the frozen part runs once per copy (kept in fp16), and the
steps run the trainable tail alone on those cached maps. The augmentations are then fixed per copy, which is the
price; two copies of one image are also the two views that NT-Xent needs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from models.efficientnet_lite import EfficientNetLite0
from models.embedding import EmbeddingNet
from training.datasets import ImageDataset

__all__ = ["FeatureCache", "PairsOfCopies", "build_feature_cache", "split_trunk"]

Forward = Callable[[torch.Tensor], torch.Tensor]


def split_trunk(model: EmbeddingNet, tail: int) -> tuple[Forward, Forward]:
    """``(frozen part, trainable tail -> embeddings)`` for a trunk whose last ``tail`` units train (the head conv
    and its norm are two units, the rest are blocks). EfficientNet-Lite0 only."""
    net = getattr(model.trunk, "net", None)
    if not isinstance(net, EfficientNetLite0):
        raise ValueError("the feature cache supports the efficientnet_lite0 backbone only")
    tail_blocks = tail - 2
    if not 0 <= tail_blocks <= len(net._blocks):
        raise ValueError(f"the feature cache needs 2 <= trainable_tail <= {len(net._blocks) + 2}, got {tail}")
    start = len(net._blocks) - tail_blocks

    def prefix(images: torch.Tensor) -> torch.Tensor:
        return net.forward_until(images, start)

    def rest(features: torch.Tensor) -> torch.Tensor:  # EmbeddingNet.forward from the cached map on
        pooled = model.pool(net.forward_from(features, start))
        return F.normalize(model.head(pooled.to(features.dtype)).float(), dim=-1)

    return prefix, rest


class FeatureCache(torch.utils.data.Dataset):
    """Cached frozen-part maps of ``copies`` augmented copies of every image: item ``c * images + i`` is copy ``c``
    of image ``i``; ``targets`` are their labels (for the P x K sampler)."""

    def __init__(self, features: torch.Tensor, targets: list[int], copies: int) -> None:
        self.features = features
        self.targets = targets
        self.copies = copies
        self.images = len(targets) // copies

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.features[index].float(), self.targets[index]


class PairsOfCopies(torch.utils.data.Dataset):
    """Two different cached copies of one image: the positive pair of NT-Xent."""

    def __init__(self, cache: FeatureCache) -> None:
        if cache.copies < 2:
            raise ValueError("NT-Xent on cached features needs at least 2 copies per image")
        self.cache = cache

    def __len__(self) -> int:
        return self.cache.images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = torch.randperm(self.cache.copies)[:2].tolist()
        n = self.cache.images
        return self.cache[a * n + index][0], self.cache[b * n + index][0]


@torch.inference_mode()
def build_feature_cache(prefix: Forward, dataset: ImageDataset, copies: int, seed: int, batch_size: int = 32,
                        progress: bool = False) -> FeatureCache:
    """Run the frozen part over ``copies`` random augmentations of every image of ``dataset`` (seeded)."""
    parts: list[torch.Tensor] = []
    targets: list[int] = []
    for copy in range(copies):
        torch.manual_seed(seed * 7919 + copy)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for images, labels in tqdm(loader, desc=f"feature cache {copy + 1}/{copies}", disable=not progress,
                                   leave=False):
            parts.append(prefix(images).half())
            targets.extend(labels.tolist())
    return FeatureCache(torch.cat(parts), targets, copies)
