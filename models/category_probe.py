"""Category routing: a linear probe from embeddings to the catalog's categories, used as a soft filter.

The probe is a softmax regression trained on the catalog's own vectors and their ``category`` column (no other
labels). At query time it predicts the query's category (shown to the caller) and nudges the ranking towards
items of likely categories: ``score + weight * p(item's category | query)``. A soft filter, not a hard one: a
confident wrong prediction costs at most ``weight`` of cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["CategoryProbe", "fit_category_probe"]

_FORMAT = "lookalike-category-probe/1"


@dataclass(frozen=True)
class CategoryProbe:
    """``categories`` (C names), ``weight`` (C x D) and ``bias`` (C) of a softmax regression on unit vectors."""

    categories: tuple[str, ...]
    weight: np.ndarray
    bias: np.ndarray

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """(N, C) category probabilities of (N, D) embeddings."""
        logits = np.asarray(vectors, dtype=np.float32) @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def routing_columns(self, item_categories: Sequence[str]) -> np.ndarray:
        """(M, C) one-hot of each item's category (zeros for a category the probe does not know)."""
        index = {name: i for i, name in enumerate(self.categories)}
        onehot = np.zeros((len(item_categories), len(self.categories)), dtype=np.float32)
        for row, name in enumerate(item_categories):
            if name in index:
                onehot[row, index[name]] = 1.0
        return onehot

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        np.savez(path, format=_FORMAT, categories=np.array(self.categories), weight=self.weight, bias=self.bias)
        return path

    @classmethod
    def load(cls, path: str | Path) -> CategoryProbe:
        with np.load(Path(path), allow_pickle=False) as data:
            if str(data["format"]) != _FORMAT:
                raise ValueError(f"{path} is not a category probe")
            return cls(tuple(str(c) for c in data["categories"]), data["weight"].astype(np.float32),
                       data["bias"].astype(np.float32))


def fit_category_probe(vectors: np.ndarray, categories: Sequence[str], weight_decay: float = 1e-4,
                       steps: int = 300, seed: int = 0) -> CategoryProbe:
    """Softmax regression (full-batch L-BFGS, L2 ``weight_decay``) of ``categories`` on ``vectors``; items with an
    empty category are left out. Needs at least two categories."""
    keep = [i for i, c in enumerate(categories) if c]
    names = tuple(sorted({categories[i] for i in keep}))
    if len(names) < 2:
        raise ValueError(f"category routing needs at least two categories, got {len(names)}")
    index = {name: i for i, name in enumerate(names)}
    x = torch.as_tensor(np.asarray(vectors, dtype=np.float32)[keep])
    y = torch.tensor([index[categories[i]] for i in keep])
    torch.manual_seed(seed)
    linear = torch.nn.Linear(x.shape[1], len(names))
    scale = 10.0  # unit vectors: start the logits at a useful scale
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x * scale), y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return CategoryProbe(names, (linear.weight.detach().numpy() * scale).astype(np.float32),
                         linear.bias.detach().numpy().astype(np.float32))
