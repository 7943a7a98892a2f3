"""Runs an EmbeddingNet for inference: device choice, batching, bf16/channels_last on GPU."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image

from models.checkpoint import model_fingerprint
from models.embedding import EmbeddingNet
from models.preprocess import build_transform, load_image


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA when present, the CPU otherwise."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


class Embedder:
    """Turns images into float32 unit vectors with one model, one preprocessing and one id."""

    def __init__(self, model: EmbeddingNet, device: str = "auto") -> None:
        self.device = pick_device(device)
        self.model = model.eval().to(self.device)
        if self.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.dim = model.dim
        self.image_size = model.config.image_size
        self.transform = build_transform(self.image_size, model.mean, model.std)
        self.model_id = model_fingerprint(model)

    def load(self, source: bytes | str, max_pixels: int | None = None, max_aspect_ratio: float | None = None) -> Image.Image:
        """Decode one image at bounded cost, shrunk in Pillow to the model's input scale (see
        :func:`models.preprocess.load_image`)."""
        limits = {k: v for k, v in {"max_pixels": max_pixels, "max_aspect_ratio": max_aspect_ratio}.items()
                  if v is not None}
        return load_image(source, draft_size=self.image_size, short_side=self.image_size, **limits)  # type: ignore[arg-type]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    @torch.inference_mode()
    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """A preprocessed batch (N,3,S,S) -> (N,D) float32."""
        batch = batch.to(self.device, non_blocking=True)
        autocast = nullcontext()
        if self.device.type == "cuda":
            batch = batch.to(memory_format=torch.channels_last)
            autocast = torch.autocast("cuda", dtype=torch.bfloat16)
        with autocast:
            out = self.model(batch)
        return out.float().cpu().numpy().astype(np.float32, copy=False)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """PIL images -> (N,D) float32 unit vectors."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self.embed_tensors(torch.stack([self.preprocess(im) for im in images[i:i + batch_size]]))
                 for i in range(0, len(images), batch_size)]
        return np.concatenate(parts)
