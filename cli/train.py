"""`lookalike train` and `lookalike eval`: metric-learning fine-tuning and held-out evaluation.

The training stack (pytorch-metric-learning, matplotlib) is the ``train`` extra: it is imported only when one of
these commands runs, so the service never loads it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from cli.common import fail

train_app = typer.Typer(add_completion=False)


def _errors() -> tuple[type[BaseException], ...]:
    from indexer.catalog import CatalogError
    from models.backbones import UnknownBackbone, WeightsUnavailable
    from models.checkpoint import CheckpointError
    from models.preprocess import ImageRejected
    from training.datasets import DatasetError
    from training.losses import UnknownLoss
    from training.splits import SplitError
    from training.train import TrainError

    return (SplitError, DatasetError, CatalogError, CheckpointError, TrainError, UnknownLoss, UnknownBackbone,
            WeightsUnavailable, ImageRejected, FileNotFoundError, ValidationError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
    return " ".join(str(exc).split())


def _require_training_extra() -> None:
    try:
        import pytorch_metric_learning  # noqa: F401
    except ImportError:
        raise fail("training needs the train extra: pip install '.[train]'") from None


# ----------------------------------------------------------------------------------------------- train

CatalogOpt = Annotated[Path | None, typer.Option("--catalog", help="CSV/JSONL catalog (product_id groups images)")]
FolderOpt = Annotated[Path | None, typer.Option("--folder", help="one sub-folder of images per product")]
SopOpt = Annotated[Path | None, typer.Option("--sop", help="Stanford Online Products root (Ebay_*.txt)")]
InshopOpt = Annotated[Path | None, typer.Option("--inshop", help="DeepFashion In-shop root (list_eval_partition.txt)")]
SeedOpt = Annotated[int, typer.Option(help="seed of the product split and of training")]
LimitOpt = Annotated[int | None, typer.Option("--limit-products", help="use a seeded subset of N products")]
ValOpt = Annotated[float, typer.Option("--val-fraction", help="share of products held out for validation")]
TestOpt = Annotated[float, typer.Option("--test-fraction", help="share of products held out for testing")]


@train_app.command("train")
def train_command(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="output folder: best.pt, last.pt, metrics.jsonl, split.json")],
    catalog: CatalogOpt = None,
    folder: FolderOpt = None,
    sop: SopOpt = None,
    inshop: InshopOpt = None,
    loss: Annotated[str, typer.Option(help="multi_similarity, triplet, proxy_anchor, normsoftmax, arcface")] = "multi_similarity",
    backbone: Annotated[str, typer.Option(help="backbone name (see models.backbones)")] = "efficientnet_lite0",
    epochs: Annotated[int, typer.Option(help="training epochs")] = 10,
    frozen_epochs: Annotated[int, typer.Option("--frozen-epochs", help="first epochs with the backbone frozen")] = 1,
    p: Annotated[int, typer.Option("--p", help="products per batch")] = 16,
    k: Annotated[int, typer.Option("--k", help="images per product in a batch")] = 4,
    lr: Annotated[float, typer.Option(help="backbone learning rate (head: 10x)")] = 1e-4,
    embedding_dim: Annotated[int, typer.Option("--embedding-dim", help="projection size (0: backbone width)")] = 512,
    image_size: Annotated[int | None, typer.Option("--image-size", help="input size in pixels (default: the "
                                                   "served model's)")] = None,
    limit: LimitOpt = None,
    val_fraction: ValOpt = 0.15,
    test_fraction: TestOpt = 0.25,
    steps_per_epoch: Annotated[int | None, typer.Option("--steps-per-epoch", help="batches per epoch")] = None,
    trainable_tail: Annotated[int | None, typer.Option("--trainable-tail", help="train only the trunk's last N "
                                                       "units (blocks, head conv, norm); default: all")] = None,
    composite: Annotated[float, typer.Option("--composite", help="chance a catalog image is replaced by its "
                                             "cut-out pasted on a photo and cropped (0: off)")] = 0.0,
    cutouts_dir: Annotated[Path | None, typer.Option("--cutouts-dir", help="RGBA cut-outs laid out like the "
                                                     "catalog's images (demo: data/cutouts)")] = None,
    ssl_steps: Annotated[int, typer.Option("--ssl-steps", help="NT-Xent steps on unlabelled views (catalog "
                                           "images and composites) before fine-tuning")] = 0,
    ssl_batch: Annotated[int, typer.Option("--ssl-batch", help="images per NT-Xent batch")] = 32,
    feature_cache: Annotated[int, typer.Option("--feature-cache", help="with --trainable-tail: cache the frozen "
                                               "part's maps for N augmented copies of each image and train the "
                                               "tail on them (fast on a CPU); 0: augment on the fly")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (1 is fastest on a busy machine)")] = None,
    workers: Annotated[int, typer.Option(help="data loading processes")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    cache_images: Annotated[bool, typer.Option("--cache-images", help="decode all images once into memory")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="continue from OUT/last.pt")] = False,
    seed: SeedOpt = 0,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Fine-tune the embedding model on products (split by product into train/val/test)."""
    _require_training_extra()
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        from training.datasets import ProductSplit
        from training.splits import SPLIT_FILE, load_source, split_for
        from training.train import TrainConfig, TrainError, train

        served = _served_model(ctx)
        config = TrainConfig(loss=loss, backbone=backbone, epochs=epochs, frozen_epochs=frozen_epochs, p=p, k=k,
                             lr=lr, embedding_dim=embedding_dim or None,
                             image_size=image_size or served.config.image_size, num_workers=workers,
                             device=device, cache_images=cache_images, seed=seed, steps_per_epoch=steps_per_epoch,
                             trainable_tail=trainable_tail, composite_prob=composite,
                             cutouts_dir=str(cutouts_dir) if cutouts_dir else None,
                             catalog_root=str(catalog.parent) if catalog is not None else str(folder or ""),
                             ssl_steps=ssl_steps, ssl_batch=ssl_batch, feature_cache_copies=feature_cache)
        from training.losses import check_loss_name

        check_loss_name(config.loss)
        description, pool, official_test = load_source(catalog, folder, sop, inshop)
        if resume and not (out / SPLIT_FILE).is_file():
            raise TrainError(f"cannot resume: {out / SPLIT_FILE} not found")
        split, samples, origin = split_for(out if resume else None, pool, official_test, val_fraction,
                                            test_fraction, seed, limit)
        train_samples, val_samples, test_samples = split.apply(samples)
        if not resume:
            out.mkdir(parents=True, exist_ok=True)
            split = ProductSplit(split.train, split.val, split.test, split.seed,
                                 {**split.info, "source": description, "limit_products": limit})
            split.save(out / SPLIT_FILE)
        typer.echo(f"{description}: train {len(split.train)} products / {len(train_samples)} images, "
                   f"val {len(split.val)} / {len(val_samples)}, test {len(split.test)} / {len(test_samples)} "
                   f"(split: {origin})", err=True)
        result = train(train_samples, val_samples, config, out, resume=resume, progress=progress)
        comparison = (_compare_with_served(result.best_path, served, test_samples, "test", len(split.test), workers,
                                           device) if test_samples else None)
    except _errors() as exc:
        raise fail(_one_line(exc)) from None
    best = result.best_metrics
    summary = f"best epoch {result.best_epoch}: {result.best_path}"
    if best:
        summary += f"  val Recall@1 {100 * best['recall@1']:.1f}  MAP@R {100 * best['map@r']:.1f}"
    if result.start_metrics:
        start = {k.removeprefix('val_'): v for k, v in result.start_metrics.items()}
        summary += f"  (start: Recall@1 {100 * start['recall@1']:.1f}  MAP@R {100 * start['map@r']:.1f})"
    typer.echo(summary)
    if comparison is not None:
        typer.echo(_comparison_line(comparison))
    typer.echo(f"next: lookalike eval --checkpoint {result.best_path} {_source_args(catalog, folder, sop, inshop)}")


def _source_args(catalog: Path | None, folder: Path | None, sop: Path | None, inshop: Path | None) -> str:
    for flag, value in (("--catalog", catalog), ("--folder", folder), ("--sop", sop), ("--inshop", inshop)):
        if value is not None:
            return f"{flag} {value}"
    return ""


# ------------------------------------------------------------------------------------ versus the served model


def _served_model(ctx: typer.Context) -> Any:
    """The network that serves now (settings' checkpoint, else the pretrained default), at its own resolution."""
    from cli.common import settings_of
    from models import ModelConfig, build_model

    return build_model(ModelConfig(), checkpoint=settings_of(ctx).checkpoint)


def _compare_with_served(checkpoint: Path, served: Any, samples: list, split_name: str, products: int, workers: int,
                         device: str, trained: Any = None, batch_size: int = 64) -> dict[str, Any]:
    """Score the checkpoint and the served model on the same held-out samples and record it beside the checkpoint."""
    from models.checkpoint import load_checkpoint, model_fingerprint
    from models.comparison import record_comparison
    from training.train import evaluate

    trained = trained if trained is not None else load_checkpoint(checkpoint)
    trained_metrics = evaluate(trained, samples, batch_size, device, workers)
    served_metrics = evaluate(served, samples, batch_size, device, workers)
    return record_comparison(checkpoint, model_fingerprint(trained), trained_metrics, served_metrics,
                             model_fingerprint(served), products, split_name) | {
        "served_size": served.config.image_size, "trained_size": trained.config.image_size}


def _comparison_line(entry: dict[str, Any]) -> str:
    verdict = "beats" if entry["beats_served"] else "does NOT beat"
    return (f"held-out {entry['split']} products ({entry['products']}): trained Recall@1 "
            f"{100 * entry['trained']['recall@1']:.1f} at {entry['trained_size']}px vs served "
            f"{100 * entry['served']['recall@1']:.1f} at {entry['served_size']}px: the checkpoint {verdict} the "
            f"served model")


# ------------------------------------------------------------------------------------------------ eval


def format_table(rows: list[tuple[str, dict[str, Any]]], ks: tuple[int, ...] = (1, 5, 10, 100)) -> str:
    """Model rows x metric columns, in percent."""
    headers = ["model"] + [f"R@{k}" for k in ks] + ["MAP@R"]
    width = max([len(headers[0])] + [len(name) for name, _ in rows])
    lines = [f"{headers[0]:<{width}}  " + "  ".join(f"{h:>6}" for h in headers[1:])]
    for name, m in rows:
        cells = [m.get(f"recall@{k}") for k in ks] + [m.get("map@r")]
        lines.append(f"{name:<{width}}  " + "  ".join("     -" if c is None else f"{100 * c:6.1f}" for c in cells))
    return "\n".join(lines)


def _start_config(checkpoint: Path | None, trained: Any, backbone: str | None, image_size: int | None) -> Any:
    """The model a checkpoint started from: its backbone with pretrained weights and no (random) projection."""
    from models.checkpoint import read_checkpoint
    from models.embedding import ModelConfig

    if checkpoint is None or trained is None:
        return ModelConfig(backbone=backbone or "efficientnet_lite0", image_size=image_size or 224)
    extra = read_checkpoint(checkpoint).get("extra", {})
    train_cfg = (extra.get("trained") or extra.get("train_state") or {}).get("config", {})
    return ModelConfig(backbone=backbone or trained.config.backbone, pretrained=train_cfg.get("pretrained", True),
                       weights_path=train_cfg.get("weights_path"), image_size=image_size or trained.config.image_size,
                       gem_p=train_cfg.get("gem_p", 3.0), seed=train_cfg.get("seed", 0))


@train_app.command("eval")
def eval_command(
    ctx: typer.Context,
    checkpoint: Annotated[Path | None, typer.Option(help="trained checkpoint; its folder's split.json is used")] = None,
    catalog: CatalogOpt = None,
    folder: FolderOpt = None,
    sop: SopOpt = None,
    inshop: InshopOpt = None,
    split_name: Annotated[str, typer.Option("--split", help="test, val, train or all")] = "test",
    baseline: Annotated[bool, typer.Option(help="also evaluate the pretrained starting model")] = True,
    backbone: Annotated[str | None, typer.Option(help="starting backbone (default: the checkpoint's)")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="default: the checkpoint's, else 224")] = None,
    limit: LimitOpt = None,
    val_fraction: ValOpt = 0.15,
    test_fraction: TestOpt = 0.25,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    workers: Annotated[int, typer.Option(help="data loading processes")] = 2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda ...")] = "auto",
    seed: SeedOpt = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the metrics as JSON")] = False,
) -> None:
    """Recall@1/5/10/100 and MAP@R on held-out products: trained checkpoint vs the served model (each at its own
    resolution) and the pretrained start; on the test split the comparison is recorded beside the checkpoint."""
    _require_training_extra()
    try:
        from models.checkpoint import load_checkpoint
        from models.embedding import EmbeddingNet
        from training.splits import SplitError, load_source, split_for
        from training.train import evaluate

        if checkpoint is None and not baseline:
            raise SplitError("nothing to evaluate: give --checkpoint or keep --baseline")
        trained = load_checkpoint(checkpoint) if checkpoint is not None else None
        start_config = _start_config(checkpoint, trained, backbone, image_size)
        description, pool, official_test = load_source(catalog, folder, sop, inshop)
        split, samples, origin = split_for(checkpoint.parent if checkpoint else None, pool, official_test,
                                            val_fraction, test_fraction, seed, limit)
        if split_name in ("train", "all") and checkpoint is not None:
            typer.echo(f"warning: the {split_name} split contains training products; numbers are not held-out",
                       err=True)
        elif split_name == "val" and checkpoint is not None:
            typer.echo("warning: the val split chose the best epoch; use --split test for an unbiased number",
                       err=True)
        chosen = split.select(samples, split_name)
        if not chosen:
            raise SplitError(f"the {split_name} split is empty")
        typer.echo(f"{description}: {split_name} split, {len(split.products(split_name))} products, "
                   f"{len(chosen)} images (split: {origin})", err=True)
        rows: list[tuple[str, dict[str, Any]]] = []
        comparison = None
        if trained is not None:
            served = _served_model(ctx)
            if split_name == "test":
                comparison = _compare_with_served(checkpoint, served, chosen, split_name,
                                                  len(split.products(split_name)), workers, device, trained,
                                                  batch_size)
                rows.append((f"trained ({checkpoint})", comparison["trained"]))
                rows.append((f"served ({served.config.image_size}px)", comparison["served"]))
            else:
                rows.append((f"trained ({checkpoint})", evaluate(trained, chosen, batch_size, device, workers)))
                rows.append((f"served ({served.config.image_size}px)",
                             evaluate(served, chosen, batch_size, device, workers)))
        if baseline:
            start: EmbeddingNet = EmbeddingNet(start_config)
            name = f"start ({start_config.backbone}{'' if start_config.pretrained else ' random-init'}, " \
                   f"{start_config.image_size}px)"
            rows.append((name, evaluate(start, chosen, batch_size, device, workers)))
    except _errors() as exc:
        raise fail(_one_line(exc)) from None
    if as_json:
        typer.echo(json.dumps({name: metrics for name, metrics in rows}, indent=1))
    else:
        typer.echo(format_table(rows))
        if comparison is not None:
            typer.echo(_comparison_line(comparison))
    sys.stdout.flush()
