"""Every VectorStore backend the contract tests run against (tests/indexer/test_vector_store.py and the
planner's brute-force tests in tests/app/test_planner.py).

To add a backend, write a factory ``make(vectors, spec, tmp) -> VectorStore`` holding ``vectors`` under ids
0..N-1 (``spec`` is the FAISS index to build; other engines may ignore it) and append it to ``BACKENDS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.faiss_store import FaissGpuStore, build_store
from indexer.index_choice import IndexChoice
from indexer.vector_index import IndexSpec
from indexer.vector_store import VectorStore


def _plan(spec: IndexSpec) -> IndexChoice:
    kind = "flat" if spec.factory == "Flat" else "ivf_pq_refine" if "Refine" in spec.factory else "ivf_flat"
    return IndexChoice(spec, kind, 0, "test")


def faiss_cpu(vectors: np.ndarray, spec: IndexSpec, tmp: Path) -> VectorStore:
    """FaissCpuStore with ``spec``'s index tuned to recall@10 >= 0.95 by measurement."""
    return build_store(vectors, _plan(spec), queries=200)[0]


def faiss_gpu(vectors: np.ndarray, spec: IndexSpec, tmp: Path) -> VectorStore:
    """FaissGpuStore; where FAISS sees no GPU it runs its selector-less over-fetch path on the CPU index."""
    store = build_store(vectors, _plan(spec), queries=200)[0]
    return FaissGpuStore.from_parts(store.flat, store.index if store.separate_index else None)


BACKENDS = [pytest.param(faiss_cpu, id="faiss-cpu"), pytest.param(faiss_gpu, id="faiss-gpu")]


def milvus_lite(vectors: np.ndarray, spec: IndexSpec, tmp: Path) -> VectorStore:
    """MilvusStore on embedded milvus-lite: a FLAT collection. Milvus picks its own index, so only the Flat case
    runs (an IVF spec would repeat it)."""
    if spec.factory != "Flat":
        pytest.skip("Milvus builds its own index: the Flat case covers it")
    pytest.importorskip("pymilvus")
    from indexer.milvus_store import MilvusStore, connect

    store = MilvusStore.create(connect(str(tmp / "milvus.db")), "contract", vectors.shape[1], model_id="test",
                               embedded=True)
    store.upsert(vectors, np.arange(len(vectors)))
    store.flush()
    return store


BACKENDS.append(pytest.param(milvus_lite, id="milvus-lite"))
