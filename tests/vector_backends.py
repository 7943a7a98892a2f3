"""Every VectorStore backend the contract tests run against (tests/indexer/test_vector_store.py and the
planner's brute-force tests in tests/app/test_planner.py).

To add a backend, write a factory ``make(vectors, spec, tmp) -> VectorStore`` holding ``vectors`` under ids
0..N-1 (``spec`` is the FAISS index to build; other engines may ignore it) and append it to ``BACKENDS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.faiss_store import FaissCpuStore, FaissGpuStore, build_flat
from indexer.index_choice import IndexPlan, build_tuned
from indexer.vector_index import IndexSpec
from indexer.vector_store import VectorStore


def _faiss_parts(vectors: np.ndarray, spec: IndexSpec):
    """The flat store and (for an ANN spec) the index tuned to recall@10 >= 0.95 by measurement."""
    flat = build_flat(vectors, "float32")
    if spec.factory == "Flat":
        return flat, None
    index, _ = build_tuned(vectors, IndexPlan(spec, "ivf_flat", 0, "test"), queries=200)
    return flat, index


def faiss_cpu(vectors: np.ndarray, spec: IndexSpec, tmp: Path) -> VectorStore:
    return FaissCpuStore.from_parts(*_faiss_parts(vectors, spec))


def faiss_gpu(vectors: np.ndarray, spec: IndexSpec, tmp: Path) -> VectorStore:
    """FaissGpuStore; where FAISS sees no GPU it runs its selector-less over-fetch path on the CPU index."""
    return FaissGpuStore.from_parts(*_faiss_parts(vectors, spec))


BACKENDS = [pytest.param(faiss_cpu, id="faiss-cpu"), pytest.param(faiss_gpu, id="faiss-gpu")]
