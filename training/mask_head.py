"""Train the localiser's foreground mask head on synthetic composites: exact masks come from the cut-outs' alpha.

The query path mattes the found object onto the catalog's white before embedding it (``models.matting``); this
head says which pixels are the object. It is torchvision's LR-ASPP head on the frozen EfficientNet-Lite0 trunk's
stride-4 and stride-16 features, the same trunk pass the FCOS localiser makes, so the detector is untouched and
the mask costs only the head. Class-agnostic: every pasted product is foreground. The loss is BCE plus soft dice
on the logits upsampled to the scene's pixels. Scenes, features and targets are made once (the trunk is frozen);
steps stop at ``iterations`` or ``time_budget_s``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.localiser import LocaliserNet
from training.localiser import LocaliserTrainConfig, optimise, run_summary, torch_threads, training_scene

__all__ = ["MaskTrainConfig", "mask_iou", "scene_mask", "train_mask_head"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskTrainConfig(LocaliserTrainConfig):
    """The recipe (the localiser's training recipe, another learning rate and warm-up, plus the dice term's
    weight); saved with the weights."""

    lr: float = 1e-2
    warmup: int = 30
    dice_weight: float = 1.0


def scene_mask(image: Image.Image, placed: Sequence) -> np.ndarray:
    """The scene's foreground: every pasted object's coverage (H x W, [0, 1])."""
    out = np.zeros((image.height, image.width), np.float32)
    for p in placed:
        np.maximum(out, p.mask(image.size), out=out)
    return out


def mask_iou(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of the predicted foreground (>= ``threshold``) with the true one (>= 0.5); 1 when both are empty."""
    a, b = predicted >= threshold, truth >= 0.5
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 1.0


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + 1) / (prob.sum(1) + target.sum(1) + 1)).mean()


def train_mask_head(model: LocaliserNet, backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image],
                    config: MaskTrainConfig = MaskTrainConfig(),
                    progress: Callable[[int, float], None] | None = None) -> dict:
    """Train ``model.mask_head`` in place (everything else stays frozen); returns a summary with the recipe."""
    if model.mask_head is None:
        raise ValueError("the localiser has no mask head (LocaliserConfig.mask_channels = 0)")
    with torch_threads(config.threads):
        return _train(model, backgrounds, cutouts, config, progress)


def _train(model: LocaliserNet, backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image],
           config: MaskTrainConfig, progress: Callable[[int, float], None] | None) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    size = model.config.image_size
    started = time.perf_counter()
    pixels, s2s, s4s, s16s, targets = [], [], [], [], []
    model.eval()
    batch: list[torch.Tensor] = []

    def flush() -> None:
        with torch.inference_mode():
            taps, (s2, s4) = model.backbone.taps_and_fine((torch.stack(batch) - 0.5) / 0.5)
        s2s.append(s2.half())
        s4s.append(s4.half())
        s16s.append(taps[str(len(taps) - 1)].half())
        batch.clear()

    for _ in range(config.scenes):
        image, placed = training_scene(rng, backgrounds, cutouts, size, config.empty_prob)
        targets.append(torch.from_numpy(np.round(scene_mask(image, placed) * 255).astype(np.uint8)))
        pixels.append(torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1))
        batch.append(pixels[-1].float().div_(255))
        if len(batch) == 32:
            flush()
    if batch:
        flush()
    pixel_all, target_all = torch.stack(pixels), torch.stack(targets)
    s2_all, s4_all, s16_all = torch.cat(s2s), torch.cat(s4s), torch.cat(s16s)
    prepared = time.perf_counter() - started

    head = model.mask_head
    head.train()

    def loss_of(pick: torch.Tensor) -> torch.Tensor:
        image = (pixel_all[pick].float() / 255 - 0.5) / 0.5  # as FCOS's transform normalises it
        logits = head(image, s2_all[pick].float(), s4_all[pick].float(), s16_all[pick].float())
        target = target_all[pick].float().div_(255)[:, None]
        return F.binary_cross_entropy_with_logits(logits, target) + config.dice_weight * _dice_loss(logits, target)

    step, losses = optimise(list(head.parameters()), loss_of, config, rng, started + prepared, progress)
    model.eval()
    return run_summary(step, losses, started, prepared,
                       {**asdict(config), "mask_channels": model.config.mask_channels})
