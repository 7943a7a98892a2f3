"""Batch embedding extraction: content-hash dedupe, parallel decode in DataLoader workers, batched forward."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models import Embedder, ImageRejected, load_image

log = logging.getLogger(__name__)


class ImageReadError(RuntimeError):
    """An image of the catalog could not be read or decoded; ``index`` is its position in the input list."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def content_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: byte-identical images share one vector."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_images(paths: Sequence[Path], threads: int = 8) -> list[str]:
    """Hash every file (I/O bound, so threads); a missing file raises ImageReadError with its position."""

    def one(i: int) -> str:
        try:
            return content_hash(paths[i])
        except OSError as exc:
            raise ImageReadError(i, f"cannot read image {paths[i]}: {exc.strerror or exc}") from None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(one, range(len(paths))))


class _ImageDataset(Dataset):
    """Decodes and preprocesses one image per item; errors come back as values so the caller can name the row."""

    def __init__(self, paths: Sequence[Path], embedder: Embedder) -> None:
        self.paths = list(paths)
        self.transform = embedder.transform
        self.draft = embedder.image_size
        self.size = embedder.image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, str]:
        try:
            return i, self.transform(load_image(self.paths[i], draft_size=self.draft)), ""
        except ImageRejected as exc:
            return i, torch.zeros(3, self.size, self.size), f"{exc.code}: {exc.message}"
        except OSError as exc:
            return i, torch.zeros(3, self.size, self.size), f"cannot read: {exc}"


def extract_embeddings(paths: Sequence[Path], embedder: Embedder, *, batch_size: int = 64, workers: int = 2,
                       progress: bool = True) -> np.ndarray:
    """Embed images in order -> (N, D) float32; the first undecodable image raises ImageReadError."""
    out = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    if not paths:
        return out
    loader = DataLoader(_ImageDataset(paths, embedder), batch_size=batch_size, num_workers=workers,
                        pin_memory=embedder.device.type == "cuda", persistent_workers=False,
                        prefetch_factor=4 if workers else None)
    with tqdm(total=len(paths), desc="embedding", unit="img", disable=not progress) as bar:
        for idx, batch, errors in loader:
            for i, err in zip(idx.tolist(), errors, strict=True):
                if err:
                    raise ImageReadError(i, f"image {paths[i]}: {err}")
            out[idx.numpy()] = embedder.embed_tensors(batch)
            bar.update(len(idx))
    return out


def extract_deduplicated(paths: Sequence[Path], embedder: Embedder, **kwargs: object) -> tuple[np.ndarray, list[str], int]:
    """Embed each distinct file content once and give every row its vector -> (vectors, hashes, unique count)."""
    hashes = hash_images(paths)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    unique_rows = list(first.values())
    try:
        unique_vectors = extract_embeddings([paths[i] for i in unique_rows], embedder, **kwargs)  # type: ignore[arg-type]
    except ImageReadError as exc:
        raise ImageReadError(unique_rows[exc.index], exc.reason) from None
    position = {h: j for j, h in enumerate(first)}
    vectors = unique_vectors[[position[h] for h in hashes]]
    if len(unique_rows) < len(paths):
        log.info("dedupe: %d rows share %d distinct images", len(paths), len(unique_rows))
    return vectors, hashes, len(unique_rows)
