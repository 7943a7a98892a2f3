"""Training/evaluation samples: readers for common layouts, product-disjoint splits and a torch Dataset.

A :class:`Sample` is one image of one product (``label``). Every reader returns a list of samples; the
label is the product id, ``category`` is whatever coarser grouping the source has (may be empty).

Splits are made by product, never by image: the same product never appears in two splits, so validation
and test numbers measure retrieval of products the model has not seen.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.preprocess import load_image
from models.atomic import write_json_atomic

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
SPLIT_FORMAT = "lookalike-split/1"


class DatasetError(ValueError):
    """A dataset that cannot be used as given (missing files, malformed lists, too few images per product)."""


@dataclass(frozen=True)
class Sample:
    """One image of one product."""

    path: Path
    label: str
    category: str = ""


# --------------------------------------------------------------------------------------------- readers


def read_folder(root: str | Path) -> list[Sample]:
    """``root/<product>/<image files>``: one folder per product, the folder name is the label.

    Files directly under ``root`` and non-image files are ignored; nested folders inside a product folder
    are searched too (all images under ``root/<product>/`` belong to that product).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory")
    samples: list[Sample] = []
    for product_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(product_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, product_dir.name))
    if not samples:
        raise DatasetError(f"{root}: no images found in product sub-folders (expected root/<product>/<images>)")
    return samples


def _data_lines(path: Path) -> Iterable[tuple[int, list[str]]]:
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                yield number, text.split()


def read_sop(root: str | Path, split: str = "train") -> list[Sample]:
    """Stanford Online Products: ``Ebay_train.txt`` / ``Ebay_test.txt`` with header
    ``image_id class_id super_class_id path`` (paths relative to ``root``).

    ``split`` is ``train``, ``test`` or ``all``. The label is the class (product) id, the category the
    super-class folder name (e.g. ``bicycle_final``). The official train and test classes are disjoint.
    """
    root = Path(root)
    files = {"train": ["Ebay_train.txt"], "test": ["Ebay_test.txt"], "all": ["Ebay_train.txt", "Ebay_test.txt"]}
    if split not in files:
        raise DatasetError(f"unknown SOP split {split!r}; use train, test or all")
    samples: list[Sample] = []
    for name in files[split]:
        listing = root / name
        if not listing.is_file():
            raise DatasetError(f"{listing}: not found (is {root} the Stanford_Online_Products folder?)")
        for number, parts in _data_lines(listing):
            if number == 1:
                if parts[:4] != ["image_id", "class_id", "super_class_id", "path"]:
                    raise DatasetError(f"{listing}:1: expected header 'image_id class_id super_class_id path'")
                continue
            if len(parts) != 4:
                raise DatasetError(f"{listing}:{number}: expected 4 fields, got {len(parts)}")
            _, class_id, super_class_id, rel = parts
            category = rel.split("/", 1)[0] if "/" in rel else super_class_id
            samples.append(Sample(root / rel, class_id, category))
    if not samples:
        raise DatasetError(f"{root}: no samples in {', '.join(files[split])}")
    return samples


def read_inshop(root: str | Path, split: str = "train") -> list[Sample]:
    """DeepFashion In-shop: ``list_eval_partition.txt`` (first line: count, second: header
    ``image_name item_id evaluation_status``, then one image per line).

    ``split`` is ``train``, ``query``, ``gallery``, ``test`` (query + gallery) or ``all``. The file is looked
    for in ``root`` and ``root/Eval``; image names (``img/...``) are resolved against ``root`` or ``root/Img``.
    The category is the ``GENDER/Type`` part of the path (e.g. ``WOMEN/Dresses``).
    """
    root = Path(root)
    wanted = {"train": {"train"}, "query": {"query"}, "gallery": {"gallery"},
              "test": {"query", "gallery"}, "all": {"train", "query", "gallery"}}
    if split not in wanted:
        raise DatasetError(f"unknown In-shop split {split!r}; use train, query, gallery, test or all")
    listing = next((p for p in (root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt")
                    if p.is_file()), None)
    if listing is None:
        raise DatasetError(f"{root}: list_eval_partition.txt not found (looked in {root} and {root / 'Eval'})")
    rows: list[tuple[str, str, str]] = []
    for number, parts in _data_lines(listing):
        if number == 1:
            continue  # image count
        if number == 2:
            if parts[:3] != ["image_name", "item_id", "evaluation_status"]:
                raise DatasetError(f"{listing}:2: expected header 'image_name item_id evaluation_status'")
            continue
        if len(parts) != 3:
            raise DatasetError(f"{listing}:{number}: expected 3 fields, got {len(parts)}")
        if parts[2] not in ("train", "query", "gallery"):
            raise DatasetError(f"{listing}:{number}: unknown evaluation_status {parts[2]!r}")
        rows.append((parts[0], parts[1], parts[2]))
    bases = [root, root / "Img", root.parent / "Img"]
    base = next((b for b in bases if rows and (b / rows[0][0]).exists()), root)
    samples = []
    for name, item_id, status in rows:
        if status in wanted[split]:
            pieces = name.split("/")
            category = "/".join(pieces[1:3]) if len(pieces) >= 4 else ""
            samples.append(Sample(base / name, item_id, category))
    if not samples:
        raise DatasetError(f"{listing}: no samples with evaluation_status in {sorted(wanted[split])}")
    return samples


# ------------------------------------------------------------------------------------------ validation


def products_of(samples: Iterable[Sample]) -> list[str]:
    """Sorted distinct labels."""
    return sorted({s.label for s in samples})


def image_counts(samples: Iterable[Sample]) -> Counter[str]:
    return Counter(s.label for s in samples)


def validate_samples(samples: Sequence[Sample], min_images: int = 2, check_files: bool = False,
                     what: str = "dataset") -> None:
    """Raise :class:`DatasetError` unless every product has at least ``min_images`` images.

    Metric learning needs positives: a product with one image gives neither a training pair nor a query
    with a correct answer. ``check_files`` also verifies that every image file exists.
    """
    if not samples:
        raise DatasetError(f"{what} is empty")
    counts = image_counts(samples)
    short = sorted(label for label, n in counts.items() if n < min_images)
    if short:
        shown = ", ".join(f"{label!r} ({counts[label]})" for label in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise DatasetError(f"{what}: {len(short)} product(s) have fewer than {min_images} images: {shown}{more}")
    if check_files:
        missing = [s.path for s in samples if not s.path.is_file()]
        if missing:
            shown = ", ".join(str(p) for p in missing[:3])
            raise DatasetError(f"{what}: {len(missing)} image file(s) not found, e.g. {shown}")


def drop_small_products(samples: Sequence[Sample], min_images: int = 2) -> list[Sample]:
    """The samples of products with at least ``min_images`` images (for sources that have singletons)."""
    counts = image_counts(samples)
    return [s for s in samples if counts[s.label] >= min_images]


def limit_products(samples: Sequence[Sample], max_products: int | None, seed: int = 0) -> list[Sample]:
    """A seeded random subset of ``max_products`` whole products (all of their images)."""
    if max_products is None:
        return list(samples)
    if max_products < 1:
        raise DatasetError("limit on products must be at least 1")
    products = products_of(samples)
    if max_products >= len(products):
        return list(samples)
    keep = set(random.Random(seed).sample(products, max_products))
    return [s for s in samples if s.label in keep]


# ----------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class ProductSplit:
    """Product lists of a product-disjoint split; ``apply`` turns samples into the three sample lists."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    seed: int = 0
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        parts = {"train": set(self.train), "val": set(self.val), "test": set(self.test)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = parts[a] & parts[b]
            if shared:
                raise DatasetError(f"split leaks products between {a} and {b}: {sorted(shared)[:5]}")

    def products(self, name: str) -> tuple[str, ...]:
        if name == "all":
            return self.train + self.val + self.test
        if name not in ("train", "val", "test"):
            raise DatasetError(f"unknown split {name!r}; use train, val, test or all")
        return getattr(self, name)

    def select(self, samples: Iterable[Sample], name: str) -> list[Sample]:
        keep = set(self.products(name))
        return [s for s in samples if s.label in keep]

    def apply(self, samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample], list[Sample]]:
        return self.select(samples, "train"), self.select(samples, "val"), self.select(samples, "test")

    def to_dict(self) -> dict[str, Any]:
        return {"format": SPLIT_FORMAT, "seed": self.seed, **self.info,
                "train": list(self.train), "val": list(self.val), "test": list(self.test)}

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict(), indent=1, sort_keys=False)

    @classmethod
    def load(cls, path: str | Path) -> ProductSplit:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(f"{path}: split file not found") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{path}: unreadable split file: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise DatasetError(f"{path}: not a Lookalike split file (format {SPLIT_FORMAT!r} expected)")
        info = {k: v for k, v in data.items() if k not in ("format", "seed", "train", "val", "test")}
        return cls(tuple(data["train"]), tuple(data["val"]), tuple(data["test"]), int(data.get("seed", 0)), info)


def split_by_product(samples: Sequence[Sample], val_fraction: float = 0.15, test_fraction: float = 0.25,
                     seed: int = 0) -> ProductSplit:
    """Deterministic product-disjoint split: sorted product ids shuffled with ``seed``, then cut.

    The same samples, fractions and seed always give the same split, whatever the order of ``samples``.
    Non-zero fractions get at least one product each (when there are enough products).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"bad split fractions val={val_fraction} test={test_fraction} (each in [0,1), sum < 1)")
    products = products_of(samples)
    wanted = int(val_fraction > 0) + int(test_fraction > 0) + 1
    if len(products) < wanted:
        raise DatasetError(f"{len(products)} product(s) cannot be split into train/val/test; need at least {wanted}")
    random.Random(seed).shuffle(products)
    n = len(products)
    n_test = max(int(round(n * test_fraction)), 1 if test_fraction > 0 else 0)
    n_val = max(int(round(n * val_fraction)), 1 if val_fraction > 0 else 0)
    n_test = min(n_test, n - n_val - 1)
    test, val, train = products[:n_test], products[n_test:n_test + n_val], products[n_test + n_val:]
    return ProductSplit(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), seed,
                        {"val_fraction": val_fraction, "test_fraction": test_fraction})


def split_train_val(train_pool: Sequence[Sample], test: Sequence[Sample], val_fraction: float = 0.15,
                    seed: int = 0) -> ProductSplit:
    """For sources with an official test set (SOP, In-shop): carve validation products out of the train pool."""
    inner = split_by_product(train_pool, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
    test_products = tuple(products_of(test))
    return ProductSplit(inner.train, inner.val, test_products, seed,
                        {"val_fraction": val_fraction, "test": "official"})


def split_by_category(samples: Sequence[Sample], test_categories: Iterable[str]) -> tuple[list[Sample], list[Sample]]:
    """(samples outside ``test_categories``, samples inside): for tests on categories never trained on."""
    held = set(test_categories)
    products_per_category: dict[str, set[str]] = defaultdict(set)
    for s in samples:
        products_per_category[s.label].add(s.category)
    mixed = sorted(label for label, cats in products_per_category.items() if len(cats) > 1 and cats & held)
    if mixed:
        raise DatasetError(f"products with images in several categories cannot be split by category: {mixed[:5]}")
    return [s for s in samples if s.category not in held], [s for s in samples if s.category in held]


# ---------------------------------------------------------------------------------------- torch dataset


class ImageDataset(torch.utils.data.Dataset):
    """Samples -> ``(image tensor, label index)``; label indexes follow ``classes`` (sorted labels by default).

    Images are decoded with :func:`models.preprocess.load_image` (the same decoding as indexing and serving,
    ``draft_size`` as there). ``composite`` (see :mod:`training.composite_augment`) may replace an image with a
    composite crop of its cut-out. ``cache=True`` decodes every image once up front and keeps it in memory
    (downscaled to ``cache_size`` on its shorter side when given), which pays off for small datasets trained
    for several epochs.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable[[Image.Image], torch.Tensor] | None = None,
                 classes: Sequence[str] | None = None, draft_size: int | None = None, cache: bool = False,
                 cache_size: int | None = None,
                 composite: Callable[[Path, np.random.Generator], Image.Image | None] | None = None) -> None:
        self.samples = list(samples)
        self.composite = composite
        self.transform = transform
        self.classes = list(classes) if classes is not None else products_of(self.samples)
        self.class_to_index = {label: i for i, label in enumerate(self.classes)}
        unknown = {s.label for s in self.samples} - self.class_to_index.keys()
        if unknown:
            raise DatasetError(f"samples have labels outside the class list: {sorted(unknown)[:5]}")
        self.targets = [self.class_to_index[s.label] for s in self.samples]
        self.draft_size = draft_size
        self._cache: list[Image.Image] | None = None
        if cache:
            self._cache = [_shrink(self._decode(s.path), cache_size) for s in self.samples]

    def _decode(self, path: Path) -> Image.Image:
        return load_image(path, draft_size=self.draft_size)

    def __len__(self) -> int:
        return len(self.samples)

    def image(self, index: int) -> Image.Image:
        if self._cache is not None:
            return self._cache[index]
        return self._decode(self.samples[index].path)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = None
        if self.composite is not None:  # seeded from torch's generator, like the other random transforms
            image = self.composite(self.samples[index].path, np.random.default_rng(int(torch.randint(2**62, ()))))
        if image is None:
            image = self.image(index)
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _shrink(image: Image.Image, size: int | None) -> Image.Image:
    if size is None or min(image.size) <= size:
        return image
    scale = size / min(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC, reducing_gap=2.0)
