"""Cut-outs of the demo catalog: the same views as its images and held-out queries, rendered with an alpha mask.

The demo catalog (``demo.build``) renders each product onto a light studio background. Composites (shopper
photos, localiser training, composite augmentation) need the object alone, so this module renders the very
same views again (same viewpoint, light and framing, from the catalog's manifest parameters) as RGBA PNGs:

    <out_dir>/queries/<slug>/query-<k>.png   the held-out views (queries.csv), for the shopper-photo benchmark
    <out_dir>/images/<slug>/render-<k>.png   the catalog's indexed views, for training

Files already present are reused, so an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demo.build import MANIFEST, _select, _views, _zip
from demo.render import load_obj, render
from demo.sweethome import FurnitureItem, read_furniture_catalog

__all__ = ["render_cutouts"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    item: FurnitureItem
    out_dir: Path
    kind: str  # "queries" or "images"
    count: int
    renders: int
    queries: int
    size: int
    seed: int


def _render_item(job: _Job) -> list[str]:
    """Render the item's views of ``job.kind`` with alpha; return the relative paths that exist afterwards."""
    item = job.item
    prefix = "query" if job.kind == "queries" else "render"
    rels = [f"{job.kind}/{item.slug}/{prefix}-{k}.png" for k in range(job.count)]
    todo = [rel for rel in rels if not (job.out_dir / rel).exists()]
    if todo:
        try:
            mesh = load_obj(_zip(item.source), item.model)
            if item.model_rotation is not None:
                mesh = mesh.transformed(item.model_rotation)
            indexed, held_out = _views(item, job.seed, job.renders, job.queries)
            views = held_out if job.kind == "queries" else indexed
            for rel, view in zip(rels, views):
                path = job.out_dir / rel
                if path.exists():
                    continue
                image = render(mesh, yaw_deg=view.yaw, pitch_deg=view.pitch, light_dir=view.light, size=job.size,
                               rng=np.random.default_rng(list(view.stream)), alpha=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_name(path.name + ".tmp")
                image.save(tmp, format="PNG")
                os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001 - broken models are expected in the wild
            logger.warning("cut-out of %s: %r", item.slug, exc)
    return [rel for rel in rels if (job.out_dir / rel).exists()]


def render_cutouts(demo_dir: Path, out_dir: Path, *, kind: str = "queries", per_item: int | None = None,
                   products: set[str] | None = None, workers: int = 1) -> dict[str, list[Path]]:
    """Render (or reuse) RGBA cut-outs of the demo catalog in ``demo_dir``; returns product id -> PNG paths.

    ``kind`` is ``queries`` (the held-out views) or ``images`` (the indexed views; ``per_item`` keeps the first
    N of them). ``products`` limits the work to those product ids (slugs).
    """
    if kind not in ("queries", "images"):
        raise ValueError(f"kind must be 'queries' or 'images', not {kind!r}")
    params = json.loads((Path(demo_dir) / MANIFEST).read_text("utf-8"))["parameters"]
    items = _select(read_furniture_catalog([Path(s) for s in params["sources"]]), params["limit"])
    if products is not None:
        items = [i for i in items if i.slug in products]
    total = params["query_renders"] if kind == "queries" else params["renders_per_item"]
    count = min(total, per_item) if per_item is not None else total
    jobs = [_Job(i, Path(out_dir), kind, count, params["renders_per_item"], params["query_renders"], params["size"],
                 params["seed"]) for i in items]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_render_item, jobs, chunksize=4)
    else:
        results = [_render_item(job) for job in jobs]
    return {job.item.slug: [Path(out_dir) / rel for rel in rels] for job, rels in zip(jobs, results) if rels}
