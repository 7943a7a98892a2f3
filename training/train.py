"""Metric-learning fine-tuning of the embedding network, with checkpoints, resume and honest evaluation.

``train`` takes product-disjoint train/validation samples (see :mod:`training.datasets`), builds an
:class:`~models.embedding.EmbeddingNet` (pretrained backbone, GeM, a Linear projection head), and trains it
with a pytorch-metric-learning loss (:mod:`training.losses`) on P x K batches (P products, K images each).
The backbone is frozen for the first ``frozen_epochs`` epochs so the new head settles before the
pretrained weights move.

Every epoch writes into ``out_dir``:

* ``last.pt``: a models.checkpoint file whose ``extra["train_state"]`` holds optimizer, scheduler, loss and
  epoch state for ``resume=True``;
* ``best.pt``: the epoch with the best validation MAP@R, a plain checkpoint (``load_checkpoint`` / the
  Embedder / the indexer use it unchanged);
* ``metrics.jsonl``: one JSON line per epoch (epoch 0 = the untrained start), and ``training.png``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pytorch_metric_learning.samplers import MPerClassSampler
from torch import nn
from torchvision.transforms import v2 as T
from tqdm.auto import tqdm

from models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from training.datasets import DatasetError, ImageDataset, Sample, image_counts, products_of, validate_samples
from models.embedder import pick_device
from models.embedding import EmbeddingNet, ModelConfig
from training.losses import DEFAULT_LOSS, LossBundle, build_loss, check_loss_name
from training.metrics import DEFAULT_KS, format_metrics, retrieval_metrics
from models.preprocess import build_transform
from models.atomic import write_text_atomic
from training.composite import TRAIN_WALLPAPERS, load_backgrounds, wallpaper_paths
from training.composite_augment import CompositeAugment, cutout_paths
from training.self_supervised import TwoViews, adapt_self_supervised
from training.tail_cache import FeatureCache, PairsOfCopies, build_feature_cache, split_trunk
from training.self_supervised import summary as ssl_summary

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training.png"
BEST_FILE = "best.pt"
LAST_FILE = "last.pt"


class TrainError(ValueError):
    """Training cannot start (or resume) with the given data, settings or checkpoint."""


class TrainConfig(BaseModel):
    """Everything that decides a training run (saved into its checkpoints)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    loss: str = DEFAULT_LOSS
    backbone: str = "efficientnet_lite0"
    pretrained: bool = True
    weights_path: str | None = None
    embedding_dim: int | None = Field(default=512, ge=8, description="Linear projection size; None: no head")
    gem_p: float = Field(default=3.0, gt=0)
    image_size: int = Field(default=224, ge=32, le=1024)
    epochs: int = Field(default=10, ge=1)
    frozen_epochs: int = Field(default=1, ge=0, description="first epochs train only the head (and loss params)")
    p: int = Field(default=16, ge=2, description="products per batch")
    k: int = Field(default=4, ge=2, description="images per product in a batch")
    steps_per_epoch: int | None = Field(default=None, ge=1, description="default: training images // (p*k)")
    lr: float = Field(default=1e-4, gt=0, description="backbone learning rate")
    head_lr_factor: float = Field(default=10.0, gt=0, description="head (and GeM) lr = lr * this")
    weight_decay: float = Field(default=1e-4, ge=0)
    min_lr_factor: float = Field(default=0.01, ge=0, le=1, description="cosine schedule floor, relative")
    grad_clip: float | None = Field(default=10.0, gt=0)
    freeze_bn: bool = Field(default=True, description="keep backbone BatchNorm statistics fixed")
    augment: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)
    color_jitter: float = Field(default=0.2, ge=0)
    device: str = "auto"
    num_workers: int = Field(default=2, ge=0)
    cache_images: bool = False
    eval_batch_size: int = Field(default=64, ge=1)
    eval_start: bool = Field(default=True, description="evaluate the untrained start as epoch 0")
    seed: int = 0
    trainable_tail: int | None = Field(default=None, ge=1, description="train only the trunk's last N units "
                                       "(blocks, then the head conv and norm); None: the whole trunk")
    composite_prob: float = Field(default=0.0, ge=0, le=1, description="chance an image with a cut-out is "
                                  "replaced by a composite crop of it on a photo (training.composite_augment)")
    catalog_root: str | None = Field(default=None, description="the folder the catalog's image paths live under")
    cutouts_dir: str | None = Field(default=None, description="cut-outs: <cutouts_dir>/<image path under "
                                    "catalog_root>.png")
    backgrounds: list[str] | None = Field(default=None, description="background photos; None: the training half "
                                          "of the installed wallpapers (never the benchmark's)")
    ssl_steps: int = Field(default=0, ge=0, description="NT-Xent steps on unlabelled views before fine-tuning")
    ssl_batch: int = Field(default=32, ge=2, description="images per NT-Xent batch (two views each)")
    ssl_temperature: float = Field(default=0.1, gt=0)
    feature_cache_copies: int = Field(default=0, ge=0, description="with trainable_tail: augment each image this "
                                      "many times up front, run the frozen part once per copy and train the tail "
                                      "on the cached maps (training.tail_cache); 0: augment on the fly")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.frozen_epochs > self.epochs:
            raise ValueError(f"frozen_epochs ({self.frozen_epochs}) exceeds epochs ({self.epochs})")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        if self.composite_prob > 0 and not (self.cutouts_dir and self.catalog_root):
            raise ValueError("composite augmentation needs cutouts_dir and catalog_root")
        if self.feature_cache_copies and self.trainable_tail is None:
            raise ValueError("feature_cache_copies needs trainable_tail (the frozen part is what is cached)")
        if self.feature_cache_copies == 1 and self.ssl_steps:
            raise ValueError("NT-Xent on cached features needs feature_cache_copies >= 2 (two views per image)")
        return self

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def to_model_config(self) -> ModelConfig:
        return ModelConfig(backbone=self.backbone, pretrained=self.pretrained, weights_path=self.weights_path,
                           embedding_dim=self.embedding_dim, gem_p=self.gem_p, image_size=self.image_size,
                           seed=self.seed)


# Settings that must match for a resumed run to continue the same optimisation.
_RESUME_KEYS = ("loss", "backbone", "embedding_dim", "gem_p", "image_size", "p", "k", "lr", "head_lr_factor",
                "weight_decay")


@dataclass
class TrainResult:
    out_dir: Path
    best_path: Path
    last_path: Path
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    start_metrics: dict[str, Any] | None = None
    epochs_run: int = 0


# ------------------------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_transform(config: TrainConfig, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """Augmentations: RandomResizedCrop, horizontal flip, ColorJitter; then the same normalisation as eval."""
    if not config.augment:
        return build_transform(config.image_size, tuple(mean), tuple(std))
    steps: list[nn.Module] = [
        T.PILToTensor(),
        T.RandomResizedCrop(config.image_size, scale=config.crop_scale, antialias=True),
        T.RandomHorizontalFlip(),
    ]
    if config.color_jitter > 0:
        j = config.color_jitter
        steps.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(list(mean), list(std))]
    return T.Compose(steps)


def make_train_loader(dataset: ImageDataset, p: int, k: int, steps: int, seed: int, num_workers: int = 0,
                      pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``p`` products x ``k`` images (MPerClassSampler, m=k, batch_size=p*k), ``steps`` per pass.

    Reseeds numpy (which the sampler draws from) so a given ``seed`` always yields the same batches.
    """
    np.random.seed(seed % 2**32)
    sampler = MPerClassSampler(dataset.targets, m=k, batch_size=p * k, length_before_new_iter=steps * p * k)
    return torch.utils.data.DataLoader(
        dataset, batch_size=p * k, sampler=sampler, drop_last=True, num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed),
    )


def check_training_data(train_samples: Sequence[Sample], val_samples: Sequence[Sample] | None,
                        config: TrainConfig) -> None:
    """The errors worth reporting before any model is built."""
    check_loss_name(config.loss)
    validate_samples(train_samples, min_images=2, check_files=True, what="training set")
    counts = image_counts(train_samples)
    smallest_label, smallest = min(counts.items(), key=lambda item: (item[1], item[0]))
    if config.k > smallest:
        raise TrainError(f"K={config.k} images per product is more than the smallest training product has "
                         f"({smallest_label!r}: {smallest} images); lower k or drop small products")
    if config.p > len(counts):
        raise TrainError(f"P={config.p} products per batch but the training set has only {len(counts)} products")
    if val_samples:
        validate_samples(val_samples, min_images=2, check_files=True, what="validation set")
        leaked = set(counts) & {s.label for s in val_samples}
        if leaked:
            raise TrainError(f"{len(leaked)} product(s) are in both training and validation sets, "
                             f"e.g. {sorted(leaked)[:3]}; split by product")


def trunk_units(trunk: nn.Module) -> list[nn.Module]:
    """The trunk's layers in order, its block lists opened one level: stem, norm, block 1..N, head conv, norm.

    Wrappers with a single child are looked through (``_FeaturesOf(net)``)."""
    children = list(trunk.children())
    if len(children) == 1:
        return trunk_units(children[0])
    units: list[nn.Module] = []
    for child in children:
        units.extend(child.children() if isinstance(child, nn.ModuleList | nn.Sequential) else [child])
    return units


def _set_trainable(model: EmbeddingNet, frozen_trunk: bool, freeze_bn: bool, tail: int | None = None) -> None:
    model.train()
    for param in model.trunk.parameters():
        param.requires_grad_(not frozen_trunk and tail is None)
    if frozen_trunk:
        model.trunk.eval()
        return
    if tail is not None:  # the early units stay as pretrained (and in eval mode); the last ``tail`` ones train
        model.trunk.eval()
        for unit in trunk_units(model.trunk)[-tail:]:
            unit.train()
            for param in unit.parameters():
                param.requires_grad_(True)
    if freeze_bn:
        for module in model.trunk.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _cosine(total_steps: int, floor: float):
    def factor(step: int) -> float:
        progress = min(step, total_steps) / max(total_steps, 1)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _make_optimizer(model: EmbeddingNet, bundle: LossBundle, config: TrainConfig) -> torch.optim.AdamW:
    groups = [
        {"name": "trunk", "params": list(model.trunk.parameters()), "lr": config.lr},
        {"name": "head", "params": list(model.head.parameters()) + list(model.pool.parameters()),
         "lr": config.lr * config.head_lr_factor},
    ]
    if bundle.parameters():
        groups.append({"name": "loss", "params": bundle.parameters(), "lr": config.lr * bundle.lr_factor,
                       "weight_decay": 0.0})
    return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


@torch.inference_mode()
def embed_samples(model: EmbeddingNet, samples: Sequence[Sample], batch_size: int = 64,
                  device: torch.device | str | None = None, num_workers: int = 0, progress: bool = False) -> np.ndarray:
    """(N, D) float32 embeddings with the evaluation preprocessing (same as the Embedder / indexer)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    size = model.config.image_size
    dataset = ImageDataset(samples, build_transform(size, model.mean, model.std), draft_size=size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=device.type == "cuda")
    cuda = device.type == "cuda"
    parts = []
    for images, _ in tqdm(loader, desc="embed", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True)
        if cuda:
            images = images.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext():
            parts.append(model(images).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), dtype=np.float32)


def evaluate(model_or_checkpoint: EmbeddingNet | str | Path, samples: Sequence[Sample], batch_size: int = 64,
             device: str = "auto", num_workers: int = 0, ks: Sequence[int] = DEFAULT_KS,
             progress: bool = False) -> dict[str, Any]:
    """Recall@K / MAP@R of a model (or checkpoint file) on ``samples``: each image queries all the others.

    Use held-out products only (e.g. the ``test`` part of a :class:`~training.datasets.ProductSplit`).
    """
    if not samples:
        raise DatasetError("evaluation set is empty")
    model = (load_checkpoint(model_or_checkpoint) if isinstance(model_or_checkpoint, str | Path)
             else model_or_checkpoint)
    embeddings = embed_samples(model, samples, batch_size, pick_device(device), num_workers, progress)
    return retrieval_metrics(embeddings, np.array([s.label for s in samples]), ks)


def read_metrics(out_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_metrics(out_dir: Path, history: list[dict[str, Any]]) -> None:
    write_text_atomic(out_dir / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in history))


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Training loss and validation Recall@1 / MAP@R per epoch, as a PNG (matplotlib Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
    trained = [row for row in history if row.get("loss") is not None]
    ax_loss.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], marker="o")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("loss")
    ax_loss.grid(alpha=0.3)
    evaluated = [row for row in history if row.get("val_recall@1") is not None]
    if evaluated:
        epochs = [r["epoch"] for r in evaluated]
        ax_val.plot(epochs, [r["val_recall@1"] for r in evaluated], marker="o", label="Recall@1")
        ax_val.plot(epochs, [r["val_map@r"] for r in evaluated], marker="s", label="MAP@R")
        ax_val.legend()
    ax_val.set_xlabel("epoch (0 = start)")
    ax_val.set_title("validation (held-out products)")
    ax_val.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- train


@dataclass
class _Progress:
    """Where a run stands: the best epoch so far and the metrics history (restored on resume)."""

    start_epoch: int = 0
    best_epoch: int = 0
    best_score: tuple[float, float] = (-1.0, -1.0)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_metrics: dict[str, Any] | None = None


@dataclass
class _Run:
    """One training run's moving parts; ``train`` drives it through its named stages."""

    config: TrainConfig
    out_dir: Path
    model: EmbeddingNet
    bundle: LossBundle
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    dataset: ImageDataset
    val_samples: list[Sample]
    classes: list[str]
    steps: int
    progress: bool
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # batch -> embeddings (default: the model)
    cache: FeatureCache | None = None  # cached frozen-part maps, trained on instead of ``dataset``

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def validate(self) -> dict[str, Any]:
        if not self.val_samples:
            return {}
        metrics = evaluate(self.model, self.val_samples, self.config.eval_batch_size, str(self.device),
                           self.config.num_workers)
        return {f"val_{name}": value for name, value in metrics.items()}

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass of P x K batches; returns the epoch's metrics row (loss, lr, validation, seconds)."""
        config = self.config
        started = time.perf_counter()
        frozen = epoch <= config.frozen_epochs
        _set_trainable(self.model, frozen, config.freeze_bn, config.trainable_tail)
        epoch_seed = config.seed * 100_003 + epoch
        torch.manual_seed(epoch_seed)
        data = self.cache if self.cache is not None else self.dataset
        loader = make_train_loader(data, config.p, config.k, self.steps, epoch_seed,
                                   0 if self.cache is not None else config.num_workers, self.cuda)
        total, count = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}{' (frozen)' if frozen else ''}",
                   disable=not self.progress, leave=False)
        for images, labels in bar:
            value = self.step(images, labels)
            if not math.isfinite(value):
                raise TrainError(f"training loss became {value} at epoch {epoch}; lower the learning rate")
            total, count = total + value, count + 1
            bar.set_postfix(loss=f"{total / count:.4f}")
        train_seconds = time.perf_counter() - started
        return {"epoch": epoch, "loss": total / max(count, 1), "lr": self.optimizer.param_groups[0]["lr"],
                "head_lr": self.optimizer.param_groups[1]["lr"], "frozen": frozen, **self.validate(),
                "train_seconds": round(train_seconds, 2), "seconds": round(time.perf_counter() - started, 2)}

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimiser step on a batch; returns its loss."""
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.cuda:
            images = images.to(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16) if self.cuda else nullcontext():
            embeddings = (self.forward or self.model)(images)
        loss = self.bundle(embeddings.float(), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def checkpoint(self, state: _Progress, row: dict[str, Any]) -> None:
        """``best.pt`` when the epoch beats the best (by validation MAP@R, then Recall@1), ``last.pt`` always."""
        config_json = self.config.model_dump(mode="json")
        epoch = row["epoch"]
        score = (row.get("val_map@r", 0.0), row.get("val_recall@1", 0.0)) if self.val_samples else (float(epoch), 0.0)
        if score > state.best_score:
            state.best_score, state.best_epoch, state.best_metrics = score, epoch, _unprefix(row)
            save_checkpoint(self.out_dir / BEST_FILE, self.model, {"trained": {
                "epoch": epoch, "metrics": state.best_metrics, "config": config_json, "classes": len(self.classes)}})
        save_checkpoint(self.out_dir / LAST_FILE, self.model, {"train_state": {
            "epoch": epoch, "config": config_json, "classes": self.classes,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "loss_state": self.bundle.state_dict(), "best_epoch": state.best_epoch,
            "best_score": list(state.best_score), "best_metrics": state.best_metrics,
        }})

    def restore(self, saved: dict[str, Any]) -> _Progress:
        """Optimiser, schedule, loss parameters and the best-so-far from ``last.pt``'s training state."""
        self.bundle.load_state_dict(saved["loss_state"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        start_epoch = int(saved["epoch"])
        history = [row for row in read_metrics(self.out_dir) if row["epoch"] <= start_epoch]
        return _Progress(start_epoch, int(saved["best_epoch"]), tuple(saved["best_score"]),
                         dict(saved["best_metrics"]), history,
                         next((row for row in history if row["epoch"] == 0), None))

    def evaluate_start(self) -> _Progress:
        """A fresh run's epoch 0: the starting model's validation metrics, when asked for."""
        state = _Progress()
        if self.config.eval_start and self.val_samples:
            started = time.perf_counter()
            state.start_metrics = {"epoch": 0, "loss": None, "lr": None, "frozen": None, **self.validate(),
                                   "seconds": round(time.perf_counter() - started, 2)}
            state.history.append(state.start_metrics)
            if self.progress:
                tqdm.write(f"epoch 0 (start): {format_metrics(_unprefix(state.start_metrics))}")
        _write_metrics(self.out_dir, state.history)
        return state


def composite_augment(config: TrainConfig, samples: Sequence[Sample]) -> CompositeAugment | None:
    """The run's composite augmentation (None when ``composite_prob`` is 0); fails when no image has a cut-out."""
    if config.composite_prob <= 0:
        return None
    assert config.cutouts_dir is not None and config.catalog_root is not None
    cutouts = cutout_paths([s.path for s in samples], Path(config.catalog_root), Path(config.cutouts_dir))
    if not cutouts:
        raise TrainError(f"composite augmentation: no cut-outs under {config.cutouts_dir} for the training images "
                         f"(render them: demo.cutouts.render_cutouts(kind='images'))")
    paths = ([Path(p) for p in config.backgrounds] if config.backgrounds is not None
             else wallpaper_paths(TRAIN_WALLPAPERS))
    return CompositeAugment(cutouts, load_backgrounds(paths, max_side=768), prob=config.composite_prob)


def _adapt(run: _Run, state: _Progress) -> None:
    """The NT-Xent stage (``ssl_steps``) of a fresh run, on the training images and their composites, without
    labels; its loss and the validation after it are recorded as epoch 0's ``ssl_*`` and ``ssl_val_*``."""
    config = run.config
    pairs = PairsOfCopies(run.cache) if run.cache is not None else TwoViews(run.dataset)
    result = adapt_self_supervised(
        run.model, pairs, config.ssl_steps, config.ssl_batch, config.lr * config.head_lr_factor,
        config.ssl_temperature, config.seed,
        lambda model: _set_trainable(model, False, config.freeze_bn, config.trainable_tail), run.progress,
        forward=run.forward)
    row = ssl_summary(result) | {f"ssl_{key}": value for key, value in run.validate().items()}
    if state.history and state.history[0].get("epoch") == 0:
        state.history[0].update(row)
    else:
        state.history.insert(0, {"epoch": 0, "loss": None, **row})
    _write_metrics(run.out_dir, state.history)
    if run.progress:
        tqdm.write(f"nt-xent: {result.steps} steps, loss {result.first_loss:.3f} -> {result.loss:.3f} "
                   f"({result.seconds:.0f}s)" + (f", then val Recall@1 {100 * row['ssl_val_recall@1']:.1f}"
                                                if "ssl_val_recall@1" in row else ""))


def _prepare(train_samples: Sequence[Sample], val_samples: list[Sample], config: TrainConfig, out_dir: Path,
             resume: bool, progress: bool) -> tuple[_Run, dict[str, Any] | None]:
    """The model (fresh or from ``last.pt``), loss, optimiser, schedule and data of a run."""
    classes = products_of(train_samples)
    saved: dict[str, Any] | None = None
    if resume:
        model, saved = _resume_state(out_dir / LAST_FILE, config, classes)
    else:
        seed_everything(config.seed)
        model = EmbeddingNet(config.to_model_config())
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        bundle = build_loss(config.loss, len(classes), model.dim)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    bundle.to(device)
    optimizer = _make_optimizer(model, bundle, config)
    steps = config.steps_per_epoch or max(1, len(train_samples) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(config.epochs * steps, config.min_lr_factor))
    dataset = ImageDataset(train_samples, train_transform(config, model.mean, model.std), classes=classes,
                           draft_size=config.image_size * 2, cache=config.cache_images,
                           cache_size=int(config.image_size * 1.15) if config.cache_images else None,
                           composite=composite_augment(config, train_samples))
    run = _Run(config, out_dir, model, bundle, optimizer, scheduler, device, dataset, val_samples, classes, steps,
               progress)
    if config.feature_cache_copies:
        assert config.trainable_tail is not None
        prefix, run.forward = split_trunk(model, config.trainable_tail)
        _set_trainable(model, False, config.freeze_bn, config.trainable_tail)
        run.cache = build_feature_cache(prefix, dataset, config.feature_cache_copies, config.seed,
                                        progress=progress)
    return run, saved


def train(train_samples: Sequence[Sample], val_samples: Sequence[Sample] | None, config: TrainConfig | dict | None,
          out_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train, validate each epoch, checkpoint; see the module docstring for what lands in ``out_dir``.

    Stages: check the data, prepare the run (fresh or resumed), evaluate the start, then per epoch train,
    validate, checkpoint and plot.
    """
    config = TrainConfig.model_validate(config or {}) if not isinstance(config, TrainConfig) else config
    out_dir = Path(out_dir)
    val_samples = list(val_samples or [])
    check_training_data(train_samples, val_samples, config)
    run, saved = _prepare(train_samples, val_samples, config, out_dir, resume, progress)
    state = run.restore(saved) if saved is not None else run.evaluate_start()
    if saved is None and config.ssl_steps:
        _adapt(run, state)
    title = f"{config.backbone} / {config.loss}"
    for epoch in range(state.start_epoch + 1, config.epochs + 1):
        row = run.run_epoch(epoch)
        state.history.append(row)
        run.checkpoint(state, row)
        _write_metrics(out_dir, state.history)
        plot_history(state.history, out_dir / PLOT_FILE, title)
        if progress:
            tqdm.write(f"epoch {epoch}: loss {row['loss']:.4f}  {format_metrics(_unprefix(row)) if val_samples else ''}"
                       f"  ({row['seconds']:.0f}s)")
    if not state.history or not (out_dir / PLOT_FILE).exists():
        plot_history(state.history, out_dir / PLOT_FILE, title)
    return TrainResult(out_dir, out_dir / BEST_FILE, out_dir / LAST_FILE, state.best_epoch, state.best_metrics,
                       state.history, state.start_metrics, epochs_run=config.epochs - state.start_epoch)


def _unprefix(row: dict[str, Any]) -> dict[str, Any]:
    return {key.removeprefix("val_"): value for key, value in row.items() if key.startswith("val_")}


def _resume_state(last_path: Path, config: TrainConfig, classes: list[str]) -> tuple[EmbeddingNet, dict[str, Any]]:
    if not last_path.is_file():
        raise TrainError(f"cannot resume: {last_path} not found")
    try:
        model = load_checkpoint(last_path, expect_backbone=config.backbone)
        blob = read_checkpoint(last_path)
    except CheckpointError as exc:
        raise TrainError(f"cannot resume from {last_path}: {exc}") from exc
    state = blob.get("extra", {}).get("train_state")
    if not isinstance(state, dict):
        raise TrainError(f"cannot resume from {last_path}: it holds no training state")
    saved = state["config"]
    changed = [f"{key} ({saved.get(key)!r} -> {getattr(config, key)!r})" for key in _RESUME_KEYS
               if saved.get(key) != getattr(config, key)]
    if changed:
        raise TrainError(f"cannot resume from {last_path}: settings differ: {', '.join(changed)}")
    if list(state["classes"]) != classes:
        raise TrainError(f"cannot resume from {last_path}: the training products differ from the saved run")
    return model, state
