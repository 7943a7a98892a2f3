"""Batch embedding extraction: content-hash dedupe, parallel decode in DataLoader workers, batched forward.

Decoding runs in DataLoader worker processes while the main process runs the network, so on a CPU the
throughput approaches the model's forward speed (PIL draft mode makes big JPEGs cheap to decode). Workers hand
over uint8 pixels (resized and cropped, not normalised): a quarter of the float tensor's bytes through the
worker pipes, and no per-image float arithmetic; the runtime normalises (inside the exported graph). On a CUDA
device the workers only read bytes and the JPEGs are decoded on the GPU (``torchvision.io.decode_jpeg``,
nvJPEG) in batches; the model runs in bf16 with channels_last (see ``models.Embedder``). That path is chosen
by :func:`choose_decoder` and only taken when a CUDA device is present; anything it cannot decode (PNG,
CMYK JPEG, ...) goes through the PIL path in the worker, so both paths give the same tensors.

Results either come back in memory (:func:`extract_embeddings`) or go to resumable shards on disk
(:func:`extract_to_shards`, see ``indexer.shards``).
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from indexer.shards import DEFAULT_SHARD_SIZE, ShardSet
from models import Embedder, ImageRejected, load_image
from models.preprocess import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

EmbedFn = Callable[[torch.Tensor], np.ndarray]
"""A uint8 pixel batch (N,3,S,S) -> (N,D) float32; ``Embedder.embed_tensors`` unless a caller injects one."""

DECODERS = ("auto", "pil", "tensor")


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


@dataclass(frozen=True)
class DedupMap:
    """Rows of a catalog mapped onto its distinct images (first occurrence order)."""

    hashes: list[str]             # content hash of every row
    unique_rows: list[int]        # the first row of each distinct image
    row_to_unique: np.ndarray     # for every row, the position of its image among the distinct ones

    @property
    def unique_hashes(self) -> list[str]:
        return [self.hashes[i] for i in self.unique_rows]

    @classmethod
    def from_hashes(cls, hashes: Sequence[str]) -> DedupMap:
        first: dict[str, int] = {}
        for i, h in enumerate(hashes):
            first.setdefault(h, i)
        position = {h: j for j, h in enumerate(first)}
        return cls(list(hashes), list(first.values()),
                   np.fromiter((position[h] for h in hashes), dtype=np.int64, count=len(hashes)))


# --- decoding ------------------------------------------------------------------------------------------------

def gpu_jpeg_available(device: torch.device) -> bool:
    """Whether JPEGs can be decoded on ``device`` by torchvision (nvJPEG): a CUDA device and a CUDA build."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return False
    return True


def choose_decoder(device: torch.device, requested: str = "auto") -> str:
    """``pil`` (decode and preprocess in CPU workers) or ``tensor`` (workers read bytes, JPEGs decode in batches
    on ``device``). ``auto`` takes ``tensor`` only on a CUDA device with GPU JPEG decoding; ``tensor`` may be
    asked for on the CPU too (it then decodes with torchvision's libjpeg), mostly to check it against PIL."""
    if requested not in DECODERS:
        raise ValueError(f"unknown decoder {requested!r} (choose from {', '.join(DECODERS)})")
    if requested == "auto":
        return "tensor" if gpu_jpeg_available(device) else "pil"
    return requested


@dataclass
class _Item:
    index: int
    pixels: torch.Tensor | None    # uint8 (3,S,S), resized and cropped, when decoded in the worker
    jpeg: torch.Tensor | None      # raw JPEG bytes (uint8) left for batched decoding on the device
    error: str

    def pin_memory(self) -> _Item:
        """Called by the DataLoader (pin_memory=True, CUDA) so host-to-device copies can be asynchronous."""
        self.pixels = self.pixels.pin_memory() if self.pixels is not None else None
        self.jpeg = self.jpeg.pin_memory() if self.jpeg is not None else None
        return self


class _ImageDataset(Dataset):
    """Decodes and preprocesses one image per item (``pil``), or hands plain JPEG bytes on (``tensor``).

    Errors come back as values so the caller can name the catalog row.
    """

    def __init__(self, paths: Sequence[Path], embedder: Embedder, decoder: str = "pil",
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.paths = list(paths)
        self.transform = embedder.pixel_transform
        self.size = embedder.image_size
        self.decoder = decoder
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> _Item:
        try:
            data = Path(self.paths[i]).read_bytes()
        except OSError as exc:
            return _Item(i, None, None, f"cannot read: {exc}")
        if self.decoder == "tensor" and _plain_jpeg(data, self.max_pixels):
            return _Item(i, None, torch.frombuffer(bytearray(data), dtype=torch.uint8), "")
        try:
            image = load_image(data, draft_size=self.size, short_side=self.size, max_pixels=self.max_pixels)
            return _Item(i, self.transform(image), None, "")
        except ImageRejected as exc:
            return _Item(i, None, None, f"{exc.code}: {exc.message}")
        except OSError as exc:
            return _Item(i, None, None, f"cannot read: {exc}")


def _plain_jpeg(data: bytes, max_pixels: int) -> bool:
    """A baseline RGB/greyscale JPEG within the pixel limit (header only): safe for nvJPEG, same result as PIL."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            return (image.format == "JPEG" and image.mode in ("RGB", "L") and width * height <= max_pixels
                    and max(width, height) <= DEFAULT_MAX_ASPECT_RATIO * min(width, height))
    except Exception:  # noqa: BLE001 - anything odd goes through the PIL path, which reports it properly
        return False


def _collate(items: list[_Item]) -> list[_Item]:
    return items


def decode_jpegs(jpegs: Sequence[torch.Tensor], transform: Callable[[torch.Tensor], torch.Tensor],
                 device: torch.device) -> list[torch.Tensor]:
    """Decode raw JPEGs in one call on ``device`` (nvJPEG on CUDA) and apply ``transform`` there -> (3,S,S) each.

    EXIF orientation is applied and greyscale becomes RGB, as in ``models.preprocess.load_image``.
    """
    from torchvision.io import ImageReadMode, decode_jpeg

    if not jpegs:
        return []
    images = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True)
    return [transform(image) for image in images]


def _assemble_batch(items: list[_Item], transform: Callable[[torch.Tensor], torch.Tensor],
                    device: torch.device) -> torch.Tensor:
    jpeg_items = [it for it in items if it.jpeg is not None]
    if jpeg_items:
        decoded = decode_jpegs([it.jpeg for it in jpeg_items], transform, device)  # type: ignore[misc]
        for it, pixels in zip(jpeg_items, decoded, strict=True):
            it.pixels = pixels
    return torch.stack([it.pixels.to(device, non_blocking=True) for it in items])  # type: ignore[union-attr]


# --- the extraction loop ------------------------------------------------------------------------------------

def _embedded_batches(paths: Sequence[Path], batches: Sequence[Sequence[int]], embedder: Embedder, *,
                      workers: int, embed: EmbedFn | None, decoder: str,
                      progress: bool) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, vectors) for each batch of positions into ``paths``, in the given order."""
    embed = embed or embedder.embed_tensors
    mode = choose_decoder(embedder.device, decoder)
    decode_device = embedder.device if mode == "tensor" else torch.device("cpu")
    loader = DataLoader(_ImageDataset(paths, embedder, mode), batch_sampler=[list(b) for b in batches],
                        num_workers=workers, collate_fn=_collate, pin_memory=embedder.device.type == "cuda",
                        prefetch_factor=4 if workers else None)
    total = sum(len(b) for b in batches)
    with tqdm(total=total, desc="embedding", unit="img", disable=not progress) as bar:
        for items in loader:
            for it in items:
                if it.error:
                    raise ImageReadError(it.index, f"image {paths[it.index]}: {it.error}")
            batch = _assemble_batch(items, embedder.pixel_transform, decode_device)
            yield np.array([it.index for it in items], dtype=np.int64), embed(batch)
            bar.update(len(items))


def _chunks(start: int, stop: int, size: int) -> list[list[int]]:
    return [list(range(s, min(s + size, stop))) for s in range(start, stop, size)]


def extract_embeddings(paths: Sequence[Path], embedder: Embedder, *, batch_size: int = 64, workers: int = 2,
                       progress: bool = True, embed: EmbedFn | None = None, decoder: str = "auto") -> np.ndarray:
    """Embed images in order -> (N, D) float32; the first undecodable image raises ImageReadError."""
    out = np.zeros((len(paths), embedder.dim), dtype=np.float32)
    if not paths:
        return out
    for idx, vectors in _embedded_batches(paths, _chunks(0, len(paths), batch_size), embedder, workers=workers,
                                          embed=embed, decoder=decoder, progress=progress):
        out[idx] = vectors
    return out


def extract_deduplicated(paths: Sequence[Path], embedder: Embedder, hashes: Sequence[str] | None = None,
                         **kwargs: object) -> tuple[np.ndarray, list[str], int]:
    """Embed each distinct file content once and give every row its vector -> (vectors, hashes, unique count).

    ``hashes`` are the files' content hashes when the caller has them already (else they are computed here).
    """
    plan = DedupMap.from_hashes(hash_images(paths) if hashes is None else hashes)
    try:
        unique_vectors = extract_embeddings([paths[i] for i in plan.unique_rows], embedder, **kwargs)  # type: ignore[arg-type]
    except ImageReadError as exc:
        raise ImageReadError(plan.unique_rows[exc.index], exc.reason) from None
    if len(plan.unique_rows) < len(paths):
        log.info("dedupe: %d rows share %d distinct images", len(paths), len(plan.unique_rows))
    return unique_vectors[plan.row_to_unique], plan.hashes, len(plan.unique_rows)


def extract_to_shards(paths: Sequence[Path], unique_hashes: Sequence[str], embedder: Embedder, work_root: Path, *,
                      shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64, workers: int = 2,
                      progress: bool = True, embed: EmbedFn | None = None, decoder: str = "auto") -> ShardSet:
    """Embed distinct images (``paths[i]`` has content ``unique_hashes[i]``) into resumable shards.

    Shards already on disk are skipped, so a killed job picks up where it stopped; every batch stays within
    one shard, and a shard is written (atomically) as soon as its last batch is embedded.
    An undecodable image raises ImageReadError with its position in ``paths``.
    """
    store = ShardSet.open(work_root, embedder.vectors_id, embedder.dim, unique_hashes, shard_size)
    missing = store.missing()
    if not missing:
        return store
    plan = store.plan
    batches = [b for s in missing for b in _chunks(*plan.bounds(s), batch_size)]
    log.info("extracting %d of %d shards (%d images) into %s", len(missing), plan.shard_count,
             sum(len(b) for b in batches), store.path)
    pending: dict[int, np.ndarray] = {}
    filled: dict[int, int] = {}
    for idx, vectors in _embedded_batches(paths, batches, embedder, workers=workers, embed=embed,
                                          decoder=decoder, progress=progress):
        shard = int(idx[0]) // plan.shard_size
        start, stop = plan.bounds(shard)
        buffer = pending.setdefault(shard, np.zeros((stop - start, plan.dim), dtype=np.float32))
        buffer[idx - start] = vectors
        filled[shard] = filled.get(shard, 0) + len(idx)
        if filled[shard] == stop - start:
            store.write(shard, pending.pop(shard), unique_hashes[start:stop])
    return store
