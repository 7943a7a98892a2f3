"""Checkpoints that carry their own config, so a file alone rebuilds the network it came from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from models.embedding import EmbeddingNet, ModelConfig
from models.atomic import atomic_path


class CheckpointError(ValueError):
    """Raised for a file that is not a Lookalike checkpoint or does not fit its config."""


def save_checkpoint(path: str | Path, model: EmbeddingNet, extra: dict[str, Any] | None = None) -> Path:
    """Write ``{config, state_dict, extra}`` atomically (tmp file then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": "lookalike-checkpoint/1", "config": model.config.model_dump(),
                    "state_dict": model.state_dict(), "extra": extra or {}}, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, validated for format."""
    try:
        blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != "lookalike-checkpoint/1":
        raise CheckpointError(f"{path} is not a Lookalike checkpoint (no format tag)")
    return blob


def load_checkpoint(path: str | Path, expect_backbone: str | None = None) -> EmbeddingNet:
    """Rebuild the network from the checkpoint's config and load its weights strictly."""
    blob = read_checkpoint(path)
    config = ModelConfig.model_validate({**blob["config"], "pretrained": False, "weights_path": None})
    if expect_backbone is not None and config.backbone != expect_backbone:
        raise CheckpointError(f"{path} holds a {config.backbone} network, not {expect_backbone}")
    model = EmbeddingNet(config)
    try:
        model.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not match its own config: {exc}") from exc
    return model


def model_fingerprint(model: EmbeddingNet) -> str:
    """A short id of the architecture and exact weights: indexes made by different models never mix."""
    digest = hashlib.sha256(model.config.model_dump_json(exclude={"weights_path", "pretrained", "seed"}).encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return f"{model.config.backbone}-{model.dim}d-{digest.hexdigest()[:12]}"


def build_model(config: ModelConfig | None = None, checkpoint: str | Path | None = None) -> EmbeddingNet:
    """A network from a checkpoint (config and weights) or from a config alone."""
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    return EmbeddingNet(config or ModelConfig())
