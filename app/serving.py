"""What the service holds: the embedder and the served generation, hot-swapped when the pointer moves."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch

from app.routing import CategoryProbes
from app.metrics import ServiceMetrics
from indexer import CatalogStore, GenerationError, Manifest, current_generation, read_manifest
from indexer.backends import open_vector_store
from indexer.compact import CompactTransform
from indexer.generations import CATALOG_DB, COMPACT, check_generation_name, generations_dir
from indexer.live import LiveCatalog, vector_sync
from indexer.milvus_store import MilvusTarget
from indexer.vector_store import VectorStore
from indexer.runtime_check import check_compatible, stored_embeddings
from models import Embedder, ModelConfig, build_model
from models.agreement import DEFAULT_MIN_COSINE
from models.runtime import RuntimeOptions

log = logging.getLogger(__name__)


@dataclass
class LoadedGeneration:
    """One generation opened for reading: its rows (base + delta), its vector store and its manifest."""

    name: str
    path: Path
    manifest: Manifest
    catalog: LiveCatalog
    vectors: VectorStore
    transform: CompactTransform

    @classmethod
    def open(cls, data_dir: Path, name: str, use_gpu: bool = False,
             milvus: MilvusTarget | None = None) -> LoadedGeneration:
        """Open and check a generation; any unreadable or inconsistent file is a GenerationError, and whatever
        was opened before the failure is closed again. ``milvus``: where Milvus-backed generations live."""
        path = generations_dir(data_dir) / check_generation_name(name)
        manifest = read_manifest(path)
        store: CatalogStore | None = None
        catalog: LiveCatalog | None = None
        vectors: VectorStore | None = None
        try:
            store = CatalogStore(path / CATALOG_DB)
            catalog = LiveCatalog(path, store, manifest.count, manifest.dim)
            rows = catalog
            vectors = open_vector_store(path, manifest, use_gpu=use_gpu, milvus=milvus,
                                        row_info=lambda ids: row_labels(rows, ids))
            transform = CompactTransform.load(path / COMPACT)
            if transform.describe() != manifest.compact or vectors.dim != transform.output_dim(manifest.dim):
                raise GenerationError(f"generation {name}: its compact transform ({transform.describe()}, "
                                      f"{transform.output_dim(manifest.dim)}-d) does not match the manifest "
                                      f"({manifest.compact}) and the {vectors.dim}-d vector store")
            generation = cls(name, path, manifest, catalog, vectors, transform)
            catalog.follow(vector_sync(vectors, generation.encode))  # the delta's changes, into the store
            # (checked after the delta is in: a Milvus collection already holds it from an earlier run)
            if not (store.count == manifest.count and vectors.ntotal == catalog.count):
                raise GenerationError(f"generation {name} is inconsistent: {store.count} base rows "
                                      f"({catalog.count} live), {vectors.ntotal} vectors, manifest says "
                                      f"{manifest.count}")
            return generation
        except Exception as exc:
            if catalog is not None:
                catalog.close()
            elif store is not None:
                store.close()
            if vectors is not None:
                vectors.close()
            if isinstance(exc, GenerationError):
                raise
            raise GenerationError(f"generation {name} cannot be opened: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close its rows (SQLite, delta) and its vector store (a Milvus connection)."""
        self.catalog.close()
        self.vectors.close()

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings (queries, delta rows) into the vector store's space: the generation's compact transform."""
        return self.transform.apply(vectors)


def row_labels(catalog: LiveCatalog, ids: np.ndarray) -> tuple[list[str], list[str]]:
    """(categories, product ids) of rows added since the build, for a vector store that files them beside the
    vectors (Milvus). Read from the delta itself: this runs inside the catalog's delta follower, under its lock."""
    items = catalog.delta.snapshot().items
    found = [items.get(int(i)) for i in ids]
    return [it.category if it else "" for it in found], [it.product_id if it else "" for it in found]


def embedder_for(manifest: Manifest, device: str, options: RuntimeOptions | None = None) -> Embedder:
    """Rebuild the model that made a generation (its checkpoint, or its config for pretrained networks), run by
    the configured runtime (int8 calibrates on the images the generation's build calibrated on)."""
    if manifest.checkpoint:
        model = build_model(checkpoint=manifest.checkpoint)
    else:
        model = build_model(ModelConfig.model_validate(manifest.embedding_config))
    options = options or RuntimeOptions()
    if options.precision == "int8" and not options.calibration_images:
        options = options.model_copy(update={"calibration_images": tuple(Path(p) for p in manifest.calibration_images)})
    return Embedder(model, device=device, options=options)


class ServiceState:
    """The embedder plus the current generation; readers take a reference, reloads replace it atomically.

    A replaced generation stays open for ``retire_after_s`` (requests that took it before the swap finish
    with it), then its files are closed. A generation that cannot be served is logged, counted and remembered,
    so the watcher does not retry it until the pointer moves again; the last good one keeps serving.
    """

    def __init__(self, data_dir: Path, device: str = "auto", metrics: ServiceMetrics | None = None,
                 retire_after_s: float = 120.0, options: RuntimeOptions | None = None,
                 min_cosine: float = DEFAULT_MIN_COSINE, milvus: MilvusTarget | None = None) -> None:
        self.data_dir = data_dir
        self.device = device
        self.options = options
        self.min_cosine = min_cosine
        self.milvus = milvus  # where generations built with the Milvus backend keep their vectors
        self.metrics = metrics
        self.retire_after_s = retire_after_s
        self.embedder: Embedder | None = None
        self.batcher: Any = None  # app.batching.MicroBatcher once the embedder is loaded, when batching is on
        self.last_error: str | None = None
        self.localiser: Any = None  # models.localiser.Localiser when query localisation is on (app.localise)
        self.category_probes = CategoryProbes()  # fitted per generation on first use (CATEGORY_ROUTING)
        self._generation: LoadedGeneration | None = None
        self._refused: str | None = None
        self._retired: list[tuple[float, LoadedGeneration]] = []
        self._lock = threading.Lock()

    @property
    def generation(self) -> LoadedGeneration | None:
        return self._generation

    def reload(self, name: str | None = None) -> LoadedGeneration:
        """Serve ``name`` (default: the pointer's generation); refuse one made by another model, or by another
        runtime/precision that does not agree with ours (see ``indexer.runtime_check``)."""
        with self._lock:
            name = name or current_generation(self.data_dir)
            if name is None:
                raise GenerationError(f"no generation published under {self.data_dir}; run `lookalike index` first")
            if self._generation is not None and self._generation.name == name:
                return self._generation
            loaded = LoadedGeneration.open(self.data_dir, name, use_gpu=self.device != "cpu", milvus=self.milvus)
            try:
                if self.embedder is None:
                    self.embedder = embedder_for(loaded.manifest, self.device, self.options)
                check_compatible(name, loaded.manifest, self.embedder, loaded.catalog.store,
                                 stored_embeddings(loaded.path, loaded.vectors.vectors), self.min_cosine)
            except BaseException:
                loaded.close()
                raise
            previous, self._generation = self._generation, loaded
            if previous is not None:
                self._retired.append((time.monotonic() + self.retire_after_s, previous))
            self._refused = None
            log.info("serving generation %s (%d items)%s", name, loaded.manifest.count,
                     f", replacing {previous.name}" if previous else "")
            return loaded

    def warm_up(self) -> None:
        """One forward at start-up so the first real query does not pay for lazy initialisation."""
        if self.embedder is not None:
            size = self.embedder.image_size
            self.embedder.embed_tensors(torch.zeros(1, 3, size, size, dtype=torch.uint8))  # pixels, as queries

    def maybe_reload(self) -> None:
        """Follow the pointer if it moved. Whatever goes wrong with the new generation is logged, counted in
        ``lookalike_reload_failures_total`` and remembered; the old generation keeps serving."""
        try:
            name = current_generation(self.data_dir)
        except GenerationError as exc:
            self._refuse(str(exc), str(exc))
            return
        if not name or name == self._refused or (self._generation is not None and name == self._generation.name):
            return
        try:
            self.reload(name)
        except Exception as exc:  # noqa: BLE001 - the watcher must survive any bad generation
            self._refuse(name, f"{type(exc).__name__}: {exc}")

    def _refuse(self, name: str, reason: str) -> None:
        if name == self._refused:
            return
        self._refused, self.last_error = name, reason
        if self.metrics is not None:
            self.metrics.reload_failures.inc()
        log.error("not switching to %s: %s; %s keeps serving", name, reason,
                  self._generation.name if self._generation else "nothing")

    def close_retired(self, now: float | None = None) -> list[str]:
        """Close the replaced generations whose grace period is over; returns their names."""
        now = time.monotonic() if now is None else now
        with self._lock:
            due = [g for t, g in self._retired if t <= now]
            self._retired = [(t, g) for t, g in self._retired if t > now]
        for gen in due:
            gen.close()
            log.info("closed retired generation %s", gen.name)
        return [g.name for g in due]

    def close(self) -> None:
        """Close every generation (at shutdown)."""
        self.close_retired(now=float("inf"))
        with self._lock:
            current, self._generation = self._generation, None
        if current is not None:
            current.close()
