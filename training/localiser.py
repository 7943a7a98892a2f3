"""Train the class-agnostic object localiser on synthetic composites: exact boxes come from cut-out masks.

Scenes come from ``training.composite``: one or two product cut-outs pasted at 12-85% of the frame onto random
crops of the training photographs, sometimes over an edge, sometimes none at all, degraded like a phone photo. Only the feature pyramid and the FCOS head learn; the EfficientNet-Lite0 trunk keeps its
ImageNet weights. Training stops after ``iterations`` steps or ``time_budget_s`` seconds, whichever is first.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.models.detection.image_list import ImageList

from models.localiser import Detector, LocaliserConfig, LocaliserNet
from training.composite import Placed, SceneConfig, compose_scene, degrade, random_frame

__all__ = ["LocaliserTrainConfig", "box_iou", "evaluate_localiser", "make_scene", "optimise", "run_summary",
           "torch_threads", "train_localiser", "training_scene"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocaliserTrainConfig:
    """The recipe; saved next to the weights so a run can be repeated."""

    scenes: int = 1500  # distinct composites; the frozen trunk sees each once (its features are cached)
    iterations: int = 1500
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    time_budget_s: float | None = None
    empty_prob: float = 0.08  # scenes with no product teach the head to stay quiet
    threads: int | None = None  # torch threads while training (None: as set); 1 is ~10x faster on a loaded CPU


def make_scene(rng: np.random.Generator, backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image],
               size: int, empty_prob: float = 0.0) -> tuple[Image.Image, list[Placed]]:
    """One square training scene at detection resolution with 0-2 products (a pasted product counts as an object
    when at least 40% of it is inside the frame)."""
    image, placed = training_scene(rng, backgrounds, cutouts, size, empty_prob)
    return image, [p for p in placed if p.visible >= 0.4 and p.box[2] >= 4 and p.box[3] >= 4]


def training_scene(rng: np.random.Generator, backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image],
                   size: int, empty_prob: float = 0.0) -> tuple[Image.Image, list[Placed]]:
    """A square scene of ``size`` px with 0-2 products at 12-85% of the frame, and every object pasted (also the
    ones mostly outside the frame; the mask head learns from all of their pixels)."""
    config = SceneConfig(long_side=size, scale=(0.12, 0.85), cut_prob=0.25, second_prob=0.4,
                         second_scale=(0.4, 1.0), aspect=1.0)
    main = cutouts[int(rng.integers(len(cutouts)))]
    image, placed = compose_scene(rng, backgrounds, main, cutouts, config)
    if rng.random() < empty_prob:  # the same kind of photo without products
        image = degrade(rng, random_frame(rng, backgrounds[int(rng.integers(len(backgrounds)))], size, size))
        placed = []
    return image, placed


def _scenes(rng: np.random.Generator, backgrounds, cutouts, size: int, count: int, empty_prob: float):
    images, targets = [], []
    for _ in range(count):
        image, placed = make_scene(rng, backgrounds, cutouts, size, empty_prob)
        arr = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (p.box for p in placed)],
                             dtype=torch.float32).reshape(-1, 4)
        images.append(arr)
        targets.append({"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)})
    return images, targets


@torch.inference_mode()
def _trunk_features(model: LocaliserNet, images: list[torch.Tensor], batch: int = 32) -> list[torch.Tensor]:
    """The frozen trunk's tapped feature maps for every scene (fp16, one tensor per tap)."""
    parts: list[list[torch.Tensor]] = []
    for i in range(0, len(images), batch):
        x = (torch.stack(images[i:i + batch]) - 0.5) / 0.5
        parts.append([f.half() for f in model.backbone.taps(x).values()])
    return [torch.cat(level) for level in zip(*parts)]


def _loss(model: LocaliserNet, taps: list[torch.Tensor], targets: list[dict], size: int) -> torch.Tensor:
    """FCOS's loss from cached trunk features: pyramid, head, anchors and target matching as in FCOS.forward."""
    feats = list(model.backbone.fpn(OrderedDict((str(i), t.float()) for i, t in enumerate(taps))).values())
    head_outputs = model.head(feats)
    images = ImageList(torch.zeros(1, 1, 1, 1).expand(len(targets), 3, size, size), [(size, size)] * len(targets))
    anchors = model.anchor_generator(images, feats)
    per_level = [f.size(2) * f.size(3) for f in feats]
    return sum(model.compute_loss(targets, head_outputs, anchors, per_level).values())


def train_localiser(backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image],
                    model_config: LocaliserConfig = LocaliserConfig(),
                    config: LocaliserTrainConfig = LocaliserTrainConfig(),
                    progress: Callable[[int, float], None] | None = None) -> tuple[LocaliserNet, dict]:
    """Train a localiser; returns it (in eval mode) and a summary (steps, seconds, last losses, the recipe).

    The trunk is frozen, so each scene's trunk features are computed once and the pyramid and head train on
    them for as many passes as ``iterations`` asks (about 20x cheaper per step than running the trunk).
    """
    with torch_threads(config.threads):
        return _train(backgrounds, cutouts, model_config, config, progress)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: as set), then restore the count."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train(backgrounds: Sequence[Image.Image], cutouts: Sequence[Image.Image], model_config: LocaliserConfig,
           config: LocaliserTrainConfig, progress: Callable[[int, float], None] | None) -> tuple[LocaliserNet, dict]:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    size = model_config.image_size
    model = LocaliserNet(model_config).train()
    started = time.perf_counter()
    images, targets = _scenes(rng, backgrounds, cutouts, size, config.scenes, config.empty_prob)
    taps = _trunk_features(model, images)
    del images
    prepared = time.perf_counter() - started
    params = [p for p in model.parameters() if p.requires_grad]
    step, losses = optimise(params, lambda pick: _loss(model, [t[pick] for t in taps],
                                                       [targets[i] for i in pick.tolist()], size),
                            config, rng, started + prepared, progress, clip=5.0)
    model.eval()
    return model, run_summary(step, losses, started, prepared, {**asdict(config), "model": model_config.model_dump()})


def run_summary(steps: int, losses: list[float], started: float, prepared: float, recipe: dict) -> dict:
    """What a head-training run saves beside its weights: steps, seconds (all, and making scenes and features),
    the mean of the last 20 losses and the recipe."""
    return {"steps": steps, "seconds": round(time.perf_counter() - started, 1),
            "scene_and_feature_seconds": round(prepared, 1),
            "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None, "recipe": recipe}


def optimise(params: list[torch.nn.Parameter], loss_of: Callable[[torch.Tensor], torch.Tensor],
             config: LocaliserTrainConfig, rng: np.random.Generator, steps_from: float,
             progress: Callable[[int, float], None] | None = None, clip: float | None = None
             ) -> tuple[int, list[float]]:
    """AdamW with linear warm-up then cosine decay over ``config.iterations`` steps of ``loss_of(batch indices)``
    (``config.batch_size`` of ``config.scenes``, drawn by ``rng``); stops early once ``config.time_budget_s``
    seconds have passed since ``steps_from`` (a ``time.perf_counter()`` value). Returns the steps run and the
    losses."""
    optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)

    def schedule(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        return 0.5 * (1 + math.cos(math.pi * (step - config.warmup) / max(1, config.iterations - config.warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    losses: list[float] = []
    step = 0
    for step in range(1, config.iterations + 1):
        pick = torch.from_numpy(rng.choice(config.scenes, size=min(config.batch_size, config.scenes), replace=False))
        loss = loss_of(pick)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        optimiser.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
        if config.time_budget_s is not None and time.perf_counter() - steps_from > config.time_budget_s:
            log.info("time budget reached after %d steps", step)
            break
    return step, losses


def box_intersection(a: Sequence[float], b: Sequence[float]) -> float:
    """The area two (x, y, w, h) boxes share."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x, y, w, h) boxes."""
    inter = box_intersection(a, b)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def evaluate_localiser(detector: Detector, scenes: Sequence[tuple[Image.Image, Sequence[float]]]) -> dict[str, float]:
    """How well the top detection finds each scene's main product: mean IoU, share with IoU >= 0.5, share found."""
    ious = []
    for image, truth in scenes:
        found = detector.detect(image)
        ious.append(box_iou(found[0].box, truth) if found else 0.0)
    arr = np.asarray(ious)
    return {"mean_iou": float(arr.mean()), "iou>=0.5": float((arr >= 0.5).mean()),
            "found": float(np.mean([i > 0 for i in ious]))}
