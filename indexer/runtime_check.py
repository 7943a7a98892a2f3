"""Whether an embedder may add to or query a generation: same model, and same runtime and precision or agreement.

A generation records the runtime and precision that made its vectors. Another runtime (or precision) may
serve it only once shown to agree: it re-embeds a sample of the generation's own images and compares them with
the stored vectors (mean cosine at least ``min_cosine``). Anything else is refused, as a different model is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from indexer.generations import VECTORS, GenerationError, Manifest
from indexer.catalog_store import CatalogStore
from models import Embedder
from models.agreement import DEFAULT_MIN_COSINE, Agreement, agreement, embed_paths

log = logging.getLogger(__name__)

SAMPLE_SIZE = 16


StoredVectors = Callable[[np.ndarray], np.ndarray]
"""The generation's stored vectors for base ids (``VectorStore.vectors``, or rows of vectors.npy)."""


def stored_embeddings(generation_dir: Path, live: StoredVectors) -> StoredVectors:
    """The generation's embeddings as extracted: its vectors.npy (the store may hold compact codes of them), for
    the rows ``live`` (``VectorStore.vectors``) still holds; without vectors.npy (Milvus keeps the embeddings
    themselves), ``live``'s vectors. Rows deleted or replaced since the build raise KeyError, as in the store."""
    path = generation_dir / VECTORS
    if not path.is_file():
        return live
    vectors = np.load(path, mmap_mode="r")

    def read(ids: np.ndarray) -> np.ndarray:
        live(ids)  # KeyError for rows the delta removed: their images may have changed on disk since
        return np.asarray(vectors[ids])

    return read


def spread_ids(count: int, sample: int) -> np.ndarray:
    """Up to ``sample`` distinct ids spread evenly over ``0..count-1`` (first and last included)."""
    if not count:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, num=min(sample, count), dtype=np.int64))


def sample_agreement(embedder: Embedder, store: CatalogStore, vectors: StoredVectors,
                     sample: int = SAMPLE_SIZE) -> Agreement:
    """Re-embed up to ``sample`` of the generation's images (spread over its ids) and compare with ``vectors``."""
    ids, stored = _stored(vectors, spread_ids(store.count, sample))
    items = store.by_ids(ids.tolist())
    try:
        ours = embed_paths(embedder, [Path(items[int(i)].image) for i in ids])
    except (OSError, ValueError) as exc:  # images moved or unreadable: agreement cannot be shown
        raise GenerationError(f"cannot re-embed the generation's sample images to compare runtimes: {exc}") from None
    return agreement(ours, stored)


def _stored(vectors: StoredVectors, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ids whose stored vectors can still be read, with those vectors: rows deleted or replaced through the
    delta since the build are gone from a vector store that has applied it (a KeyError), and are skipped."""
    kept, rows = [], []
    for i in ids:
        try:
            rows.append(np.asarray(vectors(np.array([i], dtype=np.int64)), dtype=np.float32)[0])
        except KeyError:
            continue
        kept.append(int(i))
    dim = rows[0].shape[0] if rows else 0
    return np.array(kept, dtype=np.int64), np.array(rows, dtype=np.float32).reshape(len(rows), dim)


def check_compatible(name: str, manifest: Manifest, embedder: Embedder, store: CatalogStore, vectors: StoredVectors,
                     min_cosine: float = DEFAULT_MIN_COSINE) -> Agreement | None:
    """Raise GenerationError unless ``embedder`` makes vectors comparable with generation ``name``'s.

    Returns the measured agreement when the runtime or precision differ (None when they are the same).
    """
    if manifest.model_id != embedder.model_id or manifest.dim != embedder.dim:
        raise GenerationError(
            f"generation {name} was made by model {manifest.model_id} ({manifest.dim}d) but this process runs "
            f"{embedder.model_id} ({embedder.dim}d); restart the service to change models")
    if (manifest.runtime, manifest.precision) == (embedder.runtime_name, embedder.precision):
        return None
    found = sample_agreement(embedder, store, vectors)
    theirs, ours = f"{manifest.runtime} {manifest.precision}", f"{embedder.runtime_name} {embedder.precision}"
    if not found.holds(min_cosine):
        raise GenerationError(
            f"generation {name} was embedded with {theirs} but this process runs {ours}, and they do not agree "
            f"(mean cosine {found.mean:.4f} over {found.count} of its images, below {min_cosine}); rebuild the index "
            f"or set LOOKALIKE_RUNTIME/LOOKALIKE_PRECISION to {manifest.runtime}/{manifest.precision}")
    log.info("generation %s: %s agrees with %s (mean cosine %.4f, min %.4f over %d images)",
             name, ours, theirs, found.mean, found.min, found.count)
    return found
