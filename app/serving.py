"""What the service holds: the embedder and the served generation, hot-swapped when the pointer moves."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import numpy as np
import torch

from indexer import CatalogStore, GenerationError, Manifest, current_generation, read_manifest
from indexer.backends import open_vector_store
from indexer.generations import CATALOG_DB
from indexer.generations import generations_dir
from indexer.live import LiveCatalog, vector_sync
from indexer.vector_store import VectorStore
from models import Embedder, ModelConfig, build_model

log = logging.getLogger(__name__)


@dataclass
class LoadedGeneration:
    """One generation opened for reading: its rows (base + delta), its vector store and its manifest."""

    name: str
    path: Path
    manifest: Manifest
    catalog: LiveCatalog
    vectors: VectorStore

    @classmethod
    def open(cls, data_dir: Path, name: str, use_gpu: bool = False) -> LoadedGeneration:
        path = generations_dir(data_dir) / name
        manifest = read_manifest(path)
        store = CatalogStore(path / CATALOG_DB)
        try:
            vectors = open_vector_store(path, manifest, use_gpu=use_gpu)
        except (OSError, RuntimeError, ValueError) as exc:
            store.close()
            raise GenerationError(f"generation {name}: cannot open its vectors ({exc})") from None
        if not (store.count == vectors.ntotal == manifest.count):
            store.close()
            raise GenerationError(f"generation {name} is inconsistent: {store.count} rows, {vectors.ntotal} vectors, "
                                  f"manifest says {manifest.count}")
        catalog = LiveCatalog(path, store, manifest.count, manifest.dim)
        generation = cls(name, path, manifest, catalog, vectors)
        catalog.follow(vector_sync(vectors, generation.encode))
        return generation

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Embeddings (queries, delta rows) into the vector store's space."""
        return np.asarray(vectors, dtype=np.float32)


def embedder_for(manifest: Manifest, device: str) -> Embedder:
    """Rebuild the model that made a generation (its checkpoint, or its config for pretrained networks)."""
    if manifest.checkpoint:
        model = build_model(checkpoint=manifest.checkpoint)
    else:
        model = build_model(ModelConfig.model_validate(manifest.embedding_config))
    return Embedder(model, device=device)


class ServiceState:
    """The embedder plus the current generation; readers take a reference, reloads replace it atomically."""

    def __init__(self, data_dir: Path, device: str = "auto") -> None:
        self.data_dir = data_dir
        self.device = device
        self.embedder: Embedder | None = None
        self.batcher: Any = None  # app.batching.MicroBatcher once the embedder is loaded, when batching is on
        self._generation: LoadedGeneration | None = None
        self._lock = threading.Lock()

    @property
    def generation(self) -> LoadedGeneration | None:
        return self._generation

    def reload(self, name: str | None = None) -> LoadedGeneration:
        """Serve ``name`` (default: the pointer's generation); refuse one made by another model."""
        with self._lock:
            name = name or current_generation(self.data_dir)
            if name is None:
                raise GenerationError(f"no generation published under {self.data_dir}; run `lookalike index` first")
            if self._generation is not None and self._generation.name == name:
                return self._generation
            loaded = LoadedGeneration.open(self.data_dir, name, use_gpu=self.device != "cpu")
            if self.embedder is None:
                self.embedder = embedder_for(loaded.manifest, self.device)
            if loaded.manifest.model_id != self.embedder.model_id or loaded.manifest.dim != self.embedder.dim:
                loaded.catalog.close()
                raise GenerationError(
                    f"generation {name} was made by model {loaded.manifest.model_id} ({loaded.manifest.dim}d) but the "
                    f"service runs {self.embedder.model_id} ({self.embedder.dim}d); restart the service to change models")
            previous, self._generation = self._generation, loaded
            log.info("serving generation %s (%d items)%s", name, loaded.manifest.count,
                     f", replacing {previous.name}" if previous else "")
            return loaded

    def warm_up(self) -> None:
        """One forward at start-up so the first real query does not pay for lazy initialisation."""
        if self.embedder is not None:
            size = self.embedder.image_size
            self.embedder.embed_tensors(torch.zeros(1, 3, size, size))

    def maybe_reload(self) -> None:
        """Follow the pointer if it moved; a bad new generation is logged and the old one keeps serving."""
        name = current_generation(self.data_dir)
        if name and (self._generation is None or name != self._generation.name):
            try:
                self.reload(name)
            except (GenerationError, OSError, RuntimeError) as exc:
                log.error("not switching to %s: %s", name, exc)
