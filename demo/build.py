"""Build the demo product catalog: one product per Sweet Home 3D furniture item.

Every product gets its catalog icon plus several renders of its 3D model from
different viewpoints, lights and backgrounds (the indexed images), and a few
held-out renders from other viewpoints that are *not* in the catalog; those
become search queries for a retrieval-quality benchmark (``queries.csv`` maps
each to the product it shows).

Layout under ``out_dir``::

    images/<slug>/icon.png, images/<slug>/render-<k>.jpg
    queries/<slug>/query-<k>.jpg
    catalog.csv, queries.csv, demo_manifest.json

The build is cached: a manifest with identical parameters means the catalog is
complete and is returned as is; image files left by an interrupted build are
reused, and the CSVs and manifest are only (atomically) written at the end.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import multiprocessing
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from demo.render import load_obj, render
from demo.sweethome import FurnitureItem, read_furniture_catalog
from models.atomic import atomic_path, write_json_atomic

__all__ = ["CATALOG_HEADER", "QUERIES_HEADER", "build_demo_catalog"]

logger = logging.getLogger(__name__)

CATALOG_HEADER = ("item_id", "product_id", "title", "category", "image", "tags", "creator", "license")
QUERIES_HEADER = ("query_image", "product_id")
MANIFEST = "demo_manifest.json"
_FORMAT_VERSION = 1
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class _Task:
    item: FurnitureItem
    out_dir: Path
    renders: int
    queries: int
    size: int
    seed: int


@dataclass
class _Result:
    slug: str
    icon: str | None = None
    renders: list[str] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    error: str | None = None
    rendered: int = 0  # images actually rendered now (not reused)
    render_seconds: float = 0.0


@dataclass(frozen=True)
class _View:
    yaw: float
    pitch: float
    light: tuple[float, float, float]
    stream: tuple[int, ...]  # seeds the background / framing of this render


def _views(item: FurnitureItem, seed: int, renders: int, queries: int) -> tuple[list[_View], list[_View]]:
    """Deterministic viewpoints from seed + slug.

    Indexed renders are spread around the object (only over its front half for
    flat, wall-mounted things whose back is blank); query renders sit between
    them with their own pitch, light and background, so none repeats an
    indexed view.
    """
    key = zlib.crc32(item.slug.encode("utf-8"))
    rng = np.random.default_rng([seed, key, 0])
    dims = [d for d in (item.width, item.height) if d]
    flat = bool(item.depth and dims and item.depth < 0.2 * max(dims))
    span = 150.0 if flat else 360.0
    base = -span / 2 if flat else float(rng.uniform(0, 360))
    step = span / max(renders, 1)
    jitter = min(12.0, step / 4)

    def light(r: np.random.Generator) -> tuple[float, float, float]:
        return (float(r.uniform(-1, 1)), float(r.uniform(0.2, 1)), float(r.uniform(0.3, 1)))

    indexed = [
        _View(base + (k + 0.25) * step + float(rng.uniform(-jitter, jitter)), float(rng.uniform(10, 35)),
              light(rng), (seed, key, 1, k))
        for k in range(renders)
    ]
    qrng = np.random.default_rng([seed, key, 2])
    held_out = [
        _View(base + (j % max(renders, 1) + 0.75) * step + float(qrng.uniform(-jitter, jitter)) / 2,
              float(qrng.uniform(5, 40)), light(qrng), (seed, key, 3, j))
        for j in range(queries)
    ]
    return indexed, held_out


def _save_atomic(image: Image.Image, path: Path) -> None:
    with atomic_path(path) as tmp:
        if path.suffix == ".jpg":
            image.save(tmp, format="JPEG", quality=_JPEG_QUALITY)
        else:
            image.save(tmp, format="PNG")


_ZIPS: dict[tuple[Path, int, int], zipfile.ZipFile] = {}


def _zip(path: Path) -> zipfile.ZipFile:
    """Per-process cache of open libraries (a zip's directory is slow to re-read)."""
    stat = path.stat()
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _ZIPS:
        _ZIPS[key] = zipfile.ZipFile(path)
    return _ZIPS[key]


def _icon_rgb(data: bytes) -> Image.Image:
    """The catalog icon (usually RGBA) flattened onto white."""
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def _build_item(task: _Task) -> _Result:
    """Write one item's icon, renders and query renders (reusing existing files)."""
    item, out = task.item, task.out_dir
    result = _Result(item.slug)
    icon_rel = f"images/{item.slug}/icon.png"
    render_rel = [f"images/{item.slug}/render-{k}.jpg" for k in range(task.renders)]
    query_rel = [f"queries/{item.slug}/query-{k}.jpg" for k in range(task.queries)]
    zf = _zip(item.source)
    errors = []

    try:
        if not (out / icon_rel).exists():
            _save_atomic(_icon_rgb(zf.read(item.icon)), out / icon_rel)
        result.icon = icon_rel
    except Exception as exc:  # noqa: BLE001 - a bad icon must not stop the build
        errors.append(f"icon: {exc!r}")

    todo = [rel for rel in render_rel + query_rel if not (out / rel).exists()]
    if todo:
        try:
            mesh = load_obj(zf, item.model)
            if item.model_rotation is not None:
                mesh = mesh.transformed(item.model_rotation)
            indexed, held_out = _views(item, task.seed, task.renders, task.queries)
            for rel, view in zip(render_rel + query_rel, indexed + held_out):
                if (out / rel).exists():
                    continue
                start = time.perf_counter()
                image = render(mesh, yaw_deg=view.yaw, pitch_deg=view.pitch, light_dir=view.light,
                               size=task.size, rng=np.random.default_rng(list(view.stream)))
                result.render_seconds += time.perf_counter() - start
                result.rendered += 1
                _save_atomic(image, out / rel)
        except Exception as exc:  # noqa: BLE001 - broken models are expected in the wild
            errors.append(f"model {item.model}: {exc!r}")
    result.renders = [rel for rel in render_rel if (out / rel).exists()]
    result.queries = [rel for rel in query_rel if (out / rel).exists()]
    result.error = "; ".join(errors) or None
    return result


def _select(items: list[FurnitureItem], limit: int | None) -> list[FurnitureItem]:
    """The first ``limit`` items would all come from one library; spread evenly instead."""
    if limit is None or limit >= len(items):
        return items
    picks = np.linspace(0, len(items) - 1, num=max(limit, 0)).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def _write_csv_atomic(path: Path, header: tuple[str, ...], rows: list[tuple]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _run(tasks: list[_Task], workers: int, progress: bool):
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="demo catalog", unit="item")
    try:
        if workers > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("spawn")  # safe even if torch is loaded
            with ctx.Pool(min(workers, len(tasks))) as pool:
                for result in pool.imap_unordered(_build_item, tasks, chunksize=1):
                    yield result
                    if bar is not None:
                        bar.update(1)
        else:
            for task in tasks:
                yield _build_item(task)
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def build_demo_catalog(
    out_dir: Path,
    *,
    renders_per_item: int = 4,
    query_renders: int = 1,
    size: int = 256,
    limit: int | None = None,
    workers: int = 1,
    seed: int = 0,
    progress: bool = True,
    sources: list[Path] | None = None,
) -> Path:
    """Build (or reuse) the demo catalog in ``out_dir`` and return ``out_dir/catalog.csv``.

    ``limit`` keeps that many items spread evenly over all libraries;
    ``sources`` overrides the ``.sh3f`` files (default: Debian's, see
    :func:`read_furniture_catalog`, which raises ``DemoDataMissing`` if absent).
    Items whose model cannot be loaded or rendered keep their icon and are
    counted as ``render_failures`` in ``demo_manifest.json``.
    """
    out_dir = Path(out_dir)
    items = _select(read_furniture_catalog(sources), limit)
    params = {
        "format_version": _FORMAT_VERSION,
        "renders_per_item": renders_per_item,
        "query_renders": query_renders,
        "size": size,
        "limit": limit,
        "seed": seed,
        "sources": sorted({str(i.source) for i in items}),
    }
    catalog_path, manifest_path = out_dir / "catalog.csv", out_dir / MANIFEST
    if manifest_path.exists() and catalog_path.exists():
        try:
            if json.loads(manifest_path.read_text("utf-8")).get("parameters") == params:
                return catalog_path
        except (OSError, ValueError):
            pass  # unreadable manifest: rebuild
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    tasks = [_Task(i, out_dir, renders_per_item, query_renders, size, seed) for i in items]
    results = {r.slug: r for r in _run(tasks, workers, progress)}

    catalog_rows, query_rows, failures, skipped = [], [], [], []
    rendered, render_seconds = 0, 0.0
    for item in items:
        r = results[item.slug]
        rendered += r.rendered
        render_seconds += r.render_seconds
        if r.error:
            logger.warning("demo item %s: %s", item.slug, r.error)
        if r.icon is None and not r.renders:
            skipped.append(item.slug)
            continue
        if len(r.renders) < renders_per_item or len(r.queries) < query_renders:
            failures.append(item.slug)
        tags = ";".join(item.tags)
        images = ([("icon", r.icon)] if r.icon else []) + [(Path(p).stem, p) for p in r.renders]
        for kind, rel in images:
            catalog_rows.append((f"{item.slug}--{kind}", item.slug, item.name, item.category, rel,
                                 tags, item.creator, item.license))
        query_rows.extend((q, item.slug) for q in r.queries)

    _write_csv_atomic(out_dir / "queries.csv", QUERIES_HEADER, query_rows)
    _write_csv_atomic(catalog_path, CATALOG_HEADER, catalog_rows)
    manifest = {
        "parameters": params,
        "items": len(items) - len(skipped),
        "images": len(catalog_rows),
        "queries": len(query_rows),
        "categories": len({i.category for i in items}),
        "render_failures": len(failures),
        "failed_items": failures,
        "skipped_items": skipped,
        "rendered_now": rendered,
        "seconds_per_render": round(render_seconds / rendered, 4) if rendered else None,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    write_json_atomic(manifest_path, manifest, sort_keys=False)
    return catalog_path
