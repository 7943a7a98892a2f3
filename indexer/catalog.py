"""Reading a product catalog file (CSV or JSONL) into validated rows, with line numbers on every error.

One row is one image: ``item_id`` (unique), ``product_id`` (groups the images of one product), ``title``,
``category`` and ``image`` (a path relative to the catalog file, an absolute path or a ``file://`` URL).
Other columns are kept as attributes (filterable, shown in results).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

REQUIRED = ("item_id", "product_id", "image")
KNOWN = ("item_id", "product_id", "title", "category", "image", "description")
MAX_ID_LENGTH = 256


class CatalogError(ValueError):
    """A malformed catalog; ``line`` is the 1-based line of the file that is wrong (0: the file itself)."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}" if line else f"{path}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class CatalogRow:
    """One catalog image and the product it shows."""

    item_id: str
    product_id: str
    image: Path
    title: str = ""
    category: str = ""
    description: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    line: int = 0


def _resolve_image(value: str, base: Path) -> Path:
    if value.startswith("file://"):
        return Path(unquote(urlparse(value).path))
    if "://" in value:
        raise ValueError(f"image {value!r}: only local paths and file:// URLs are supported")
    path = Path(value)
    return path if path.is_absolute() else base / path


def _row(record: object, line: int, path: Path) -> CatalogRow:
    if not isinstance(record, dict):
        raise CatalogError(path, line, "a record must be an object with item_id, product_id and image")
    values = {str(k).strip(): ("" if v is None else str(v).strip()) for k, v in record.items() if k is not None}
    for name in REQUIRED:
        if not values.get(name):
            raise CatalogError(path, line, f"missing value for required column {name!r}")
    for name in ("item_id", "product_id"):
        if len(values[name]) > MAX_ID_LENGTH:
            raise CatalogError(path, line, f"{name} is longer than {MAX_ID_LENGTH} characters")
    try:
        image = _resolve_image(values["image"], path.parent)
    except ValueError as exc:
        raise CatalogError(path, line, str(exc)) from None
    attributes = {k: v for k, v in values.items() if k not in KNOWN and v}
    return CatalogRow(values["item_id"], values["product_id"], image, values.get("title", ""),
                      values.get("category", ""), values.get("description", ""), attributes, line)


def _records(path: Path) -> Iterator[tuple[int, object]]:
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix in (".jsonl", ".ndjson"):
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield number, json.loads(text)
                except json.JSONDecodeError as exc:
                    raise CatalogError(path, number, f"invalid JSON: {exc.msg}") from None
        elif suffix in (".csv", ".tsv"):
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            if reader.fieldnames is None:
                raise CatalogError(path, 0, "empty catalog file")
            missing = [c for c in REQUIRED if c not in [f.strip() for f in reader.fieldnames]]
            if missing:
                raise CatalogError(path, 1, f"header lacks required columns: {', '.join(missing)}")
            for record in reader:
                if None in record:  # more cells than header names
                    raise CatalogError(path, reader.line_num, "more values than header columns")
                yield reader.line_num, record
        else:
            raise CatalogError(path, 0, "unsupported catalog format (use .csv, .tsv or .jsonl)")


def read_catalog(path: str | Path) -> list[CatalogRow]:
    """Parse and validate the whole catalog before anything is stored; duplicate item ids are errors."""
    path = Path(path)
    if not path.is_file():
        raise CatalogError(path, 0, "catalog file not found")
    rows: list[CatalogRow] = []
    seen: dict[str, int] = {}
    try:
        for line, record in _records(path):
            row = _row(record, line, path)
            if row.item_id in seen:
                raise CatalogError(path, line, f"duplicate item_id {row.item_id!r} (first on line {seen[row.item_id]})")
            seen[row.item_id] = line
            rows.append(row)
    except UnicodeDecodeError as exc:
        raise CatalogError(path, 0, f"not UTF-8 text: {exc}") from None
    except csv.Error as exc:
        raise CatalogError(path, 0, f"malformed CSV: {exc}") from None
    if not rows:
        raise CatalogError(path, 0, "catalog has no rows")
    return rows
