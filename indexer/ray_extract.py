"""`--engine ray`: the same resumable shards as ``indexer.extract.extract_to_shards``, embedded by a Ray Data
actor pool, so extraction spreads over the GPUs/CPUs of a Ray cluster (``RAY_ADDRESS``) or one machine.

One dataset row is one missing shard (its image paths and content hashes); ``map_batches`` runs a callable
class that holds the embedder (built once per actor) and writes each shard atomically into the shared work
directory itself, so the driver only counts finished shards. Shards already on disk are never sent out, so a
killed job resumes exactly as the local engine does. The work directory must be on storage every Ray worker
sees (a local disk for a one-machine cluster, a shared file system beyond).

Ray is an optional dependency: ``pip install '.[ray]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from indexer.extract import ImageReadError, extract_embeddings
from indexer.shards import DEFAULT_SHARD_SIZE, ShardLayout, ShardSet
from models import Embedder

log = logging.getLogger(__name__)


class RayUnavailable(RuntimeError):
    """``--engine ray`` without Ray installed."""


class ShardEmbedder:
    """Ray Data callable class: embeds whole shards and writes them; one instance (and model) per actor."""

    def __init__(self, embedder: Embedder, work_path: str, plan: dict[str, Any], batch_size: int) -> None:
        self.embedder = embedder
        self.store = ShardSet(Path(work_path), ShardLayout(**plan))
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shards, counts, errors = [], [], []
        for shard, paths, hashes in zip(batch["shard"], batch["paths"], batch["hashes"], strict=True):
            shard = int(shard)
            error = ""
            if not self.store.shard_path(shard).exists():
                try:
                    vectors = extract_embeddings([Path(p) for p in paths], self.embedder, batch_size=self.batch_size,
                                                 workers=0, progress=False)
                    self.store.write(shard, vectors, [str(h) for h in hashes])
                except ImageReadError as exc:
                    error = f"{exc.index}\t{exc.reason}"
            shards.append(shard)
            counts.append(len(paths))
            errors.append(error)
        return {"shard": np.array(shards, dtype=np.int64), "count": np.array(counts, dtype=np.int64),
                "error": np.array(errors, dtype=object)}


def extract_to_shards_ray(paths: Sequence[Path], unique_hashes: Sequence[str], embedder: Embedder, work_root: Path, *,
                          shard_size: int = DEFAULT_SHARD_SIZE, batch_size: int = 64, actors: int = 1,
                          num_cpus: float = 1.0, num_gpus: float = 0.0) -> ShardSet:
    """Embed distinct images into shards with Ray Data (``ray.init()`` is called when no Ray is running).

    An undecodable image raises ImageReadError with its position in ``paths`` after the other shards finish.
    """
    try:
        import ray
        import ray.data
    except ImportError:
        raise RayUnavailable("the ray engine needs Ray: pip install 'lookalike[ray]'") from None
    store = ShardSet.open(work_root, embedder.vectors_id, embedder.dim, unique_hashes, shard_size)
    missing = store.missing()
    if not missing:
        return store
    if not ray.is_initialized():
        ray.init()
    plan = store.plan
    rows = []
    for shard in missing:
        start, stop = plan.bounds(shard)
        rows.append({"shard": shard, "paths": [str(p) for p in paths[start:stop]],
                     "hashes": list(unique_hashes[start:stop])})
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        ShardEmbedder, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"embedder": embedder, "work_path": str(store.path), "plan": asdict(plan),
                               "batch_size": batch_size},
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus, num_gpus=num_gpus)
    first_error: tuple[int, str] | None = None
    done = 0
    for row in dataset.iter_rows():
        done += 1
        if row["error"]:
            position, reason = str(row["error"]).split("\t", 1)
            candidate = (plan.bounds(int(row["shard"]))[0] + int(position), reason)
            first_error = min(first_error, candidate) if first_error else candidate
    log.info("ray: %d shards embedded into %s", done, store.path)
    if first_error is not None:
        raise ImageReadError(*first_error)
    return store
