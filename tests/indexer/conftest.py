"""Fixtures shared by the indexer tests."""

import faiss
import pytest


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS training on one thread: on a shared machine OpenMP's spinning threads slow k-means down tenfold."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)
