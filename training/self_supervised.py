"""Self-supervised adaptation before supervised fine-tuning: NT-Xent on two augmented views of unlabelled images.

SimCLR's recipe on the images the model will meet: each image (a catalog image, or a shopper-like composite of
one) is augmented twice, and the two views are each other's only positive in the batch (pytorch-metric-learning's
``NTXentLoss``). No product labels are used, so any unlabelled pile of catalog images and photos can adapt the
embedding to the domain before the labelled products fine-tune it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pytorch_metric_learning.losses import NTXentLoss
from tqdm.auto import tqdm

from models.embedding import EmbeddingNet
from training.datasets import ImageDataset

__all__ = ["TwoViews", "adapt_self_supervised"]


class TwoViews(torch.utils.data.Dataset):
    """``(view_a, view_b)`` of one image: the wrapped dataset's (random) augmentation applied twice."""

    def __init__(self, dataset: ImageDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index][0], self.dataset[index][0]


@dataclass
class AdaptResult:
    steps: int
    loss: float
    first_loss: float
    seconds: float


def adapt_self_supervised(model: EmbeddingNet, pairs: torch.utils.data.Dataset, steps: int, batch_size: int,
                          lr: float, temperature: float, seed: int, set_trainable: Callable[[EmbeddingNet], None],
                          progress: bool = False, time_budget_s: float | None = None,
                          forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> AdaptResult:
    """``steps`` AdamW steps of NT-Xent on ``batch_size`` pairs of views (``TwoViews`` of an image dataset, or
    cached copies) drawn from ``pairs``; ``forward`` (default: the model) embeds a batch of views. The parameters
    that ``set_trainable`` leaves trainable move, at a cosine lr."""
    set_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1))))
    loss_fn = NTXentLoss(temperature=temperature)
    generator = torch.Generator().manual_seed(seed)
    forward = forward or model
    sampler = torch.utils.data.RandomSampler(pairs, replacement=True, num_samples=steps * batch_size,
                                             generator=generator)
    loader = torch.utils.data.DataLoader(pairs, batch_size=batch_size, sampler=sampler, drop_last=True)
    device = next(model.parameters()).device
    started = time.perf_counter()
    losses: list[float] = []
    torch.manual_seed(seed)
    for view_a, view_b in tqdm(loader, desc="nt-xent", disable=not progress, leave=False):
        views = torch.cat([view_a, view_b]).to(device)
        identity = torch.arange(view_a.shape[0], device=device)
        loss = loss_fn(forward(views).float(), torch.cat([identity, identity]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"NT-Xent loss became {value}; lower the learning rate")
        losses.append(value)
        if time_budget_s is not None and time.perf_counter() - started > time_budget_s:
            break
    tail = losses[-max(1, len(losses) // 5):] if losses else [float("nan")]
    return AdaptResult(len(losses), sum(tail) / len(tail), losses[0] if losses else float("nan"),
                       round(time.perf_counter() - started, 2))


def summary(result: AdaptResult) -> dict[str, Any]:
    """The stage's row for metrics.jsonl."""
    return {"ssl_steps": result.steps, "ssl_first_loss": round(result.first_loss, 4),
            "ssl_loss": round(result.loss, 4), "ssl_seconds": result.seconds}
