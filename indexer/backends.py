"""Which ``VectorStore`` serves a generation: the one place that maps a generation on disk to a backend.

A new backend (Milvus, ...) adds its opener here; the service and the planner only see the protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.generations import INDEX, VECTOR_STORE, VECTORS
from indexer.faiss_store import FaissCpuStore, FaissGpuStore, build_flat
from indexer.generations import Manifest
from indexer.vector_index import IndexSpec, VectorIndex, gpu_available
from indexer.vector_store import VectorStore


def open_vector_store(generation_dir: Path, manifest: Manifest, *, use_gpu: bool = False) -> VectorStore:
    """The generation's vectors as a store: FAISS on a GPU when asked for and present, else FAISS on the CPU.

    Generations written before the vector store existed (``index.faiss`` + float32 ``vectors.npy``) are opened
    by building the flat store from their vectors.
    """
    store_class = FaissGpuStore if use_gpu and gpu_available() else FaissCpuStore
    if (generation_dir / VECTOR_STORE).is_dir():
        return store_class.load(generation_dir / VECTOR_STORE)
    spec = IndexSpec(manifest.index_factory, manifest.nprobe)
    index = VectorIndex.load(generation_dir / INDEX, spec)
    if spec.factory == "Flat":
        return store_class.from_parts(index.index, None)
    vectors = np.load(generation_dir / VECTORS, mmap_mode="r")
    return store_class.from_parts(build_flat(vectors, "float32"), index)
