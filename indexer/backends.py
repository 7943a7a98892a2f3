"""Which ``VectorStore`` serves a generation: the one place that maps a generation on disk to a backend.

A new backend (Milvus, ...) adds its opener here; the service and the planner only see the protocol.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from indexer.generations import INDEX, VECTOR_STORE, VECTORS
from indexer.faiss_store import FaissCpuStore, FaissGpuStore, build_flat
from indexer.generations import Manifest
from indexer.milvus_store import MilvusStore, MilvusTarget, RowInfo, require_target
from indexer.vector_index import IndexSpec, VectorIndex, gpu_available
from indexer.vector_store import VectorStore


def open_vector_store(generation_dir: Path, manifest: Manifest, *, use_gpu: bool = False,
                      milvus: MilvusTarget | None = None, row_info: RowInfo | None = None) -> VectorStore:
    """The generation's vectors as a store: its Milvus collection when the manifest says so (on the Milvus at
    ``milvus``; refused when another model made it), else FAISS on a GPU when asked for and present, else FAISS
    on the CPU. ``row_info`` gives Milvus the category and product id of rows added later (the delta).

    Generations written before the vector store existed (``index.faiss`` + float32 ``vectors.npy``) are opened
    by building the flat store from their vectors.
    """
    if manifest.vector_backend == "milvus":
        milvus = require_target(milvus, manifest.generation)
        return MilvusStore.open(milvus.connect(), manifest.milvus_collection or milvus.collection(manifest.generation),
                                model_id=manifest.model_id, embedded=milvus.embedded, row_info=row_info)
    store_class = FaissGpuStore if use_gpu and gpu_available() else FaissCpuStore
    if (generation_dir / VECTOR_STORE).is_dir():
        return store_class.load(generation_dir / VECTOR_STORE)
    spec = IndexSpec(manifest.index_factory, manifest.nprobe)
    index = VectorIndex.load(generation_dir / INDEX, spec)
    if spec.factory == "Flat":
        return store_class.from_parts(index.index, None)
    vectors = np.load(generation_dir / VECTORS, mmap_mode="r")
    return store_class.from_parts(build_flat(vectors, "float32"), index)
