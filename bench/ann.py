"""ANN benchmark: for each size, every index the chooser can pick (exact Flat, IVF-Flat, OPQ+IVF-PQ+refine):
build time (train + add + nprobe tuning), memory, single-query and batched QPS, recall@10 against exact search.

Vectors: real embeddings (``--vectors PATH`` or the served generation's vectors.npy under data/) expanded to
the wanted size with a Gaussian mixture around them (each synthetic vector is a real one plus noise,
renormalised); with no real vectors, a seeded mixture of random unit centres of dimension ``--dim``.

    .venv/bin/python bench/ann.py --sizes 100000,1000000
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.exact import exact_top_k  # noqa: E402
from indexer.generations import current_generation, generations_dir  # noqa: E402
from indexer.index_choice import (  # noqa: E402
    DEFAULT_FLAT_THRESHOLD, IndexChoice, build_tuned, choose_index, estimate_memory, recall_at_k,
)


def real_vectors(path: str | None, data_dir: Path) -> np.ndarray | None:
    if path:
        return np.load(path, mmap_mode="r")
    name = current_generation(data_dir)
    candidate = generations_dir(data_dir) / name / "vectors.npy" if name else None
    return np.load(candidate, mmap_mode="r") if candidate and candidate.is_file() else None


def mixture(n: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """``n`` unit vectors: a random centre (a real embedding) plus Gaussian noise, renormalised."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)].astype(np.float32)
        block += noise * rng.standard_normal(block.shape, dtype=np.float32) / np.sqrt(centres.shape[1])
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def qps(index, queries: np.ndarray, single: int) -> tuple[float, float]:
    start = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None, :], 10)
    one = single / (time.perf_counter() - start)
    start = time.perf_counter()
    index.search(queries, 10)
    return one, len(queries) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=256, help="dimension when no real vectors are found")
    parser.add_argument("--vectors", help="real embeddings (.npy) to build the mixture around")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--noise", type=float, default=0.6, help="mixture noise (norm of the added noise)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="flat,ivf,pq", help="which tiers to build")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    real = real_vectors(args.vectors, Path(args.data_dir))
    rng = np.random.default_rng(1338)
    if real is not None:
        centres = np.asarray(real[rng.choice(len(real), min(len(real), 50_000), replace=False)], dtype=np.float32)
        source = f"{len(real)} real embeddings ({args.vectors or args.data_dir}) + Gaussian mixture around them"
    else:
        centres = rng.standard_normal((max(1000, 2000), args.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        source = "synthetic: Gaussian mixture around 2000 random unit centres (no real embeddings under data/)"
    dim = centres.shape[1]
    print(f"# ANN benchmark on {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs,"
          f" faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads); shared, loaded machine")
    print(f"# vectors: {source}; dim {dim}; queries: {args.queries} fresh vectors of the same mixture")
    kinds = args.kinds.split(",")
    for n in (int(s) for s in args.sizes.split(",")):
        base = mixture(n, centres, args.noise, seed=n)
        queries = mixture(args.queries, centres, args.noise, seed=n + 1)
        start = time.perf_counter()
        truth = exact_top_k(base, queries, 10)[1]
        exact_s = time.perf_counter() - start
        picked = choose_index(n, dim)
        plans: list[tuple[str, IndexChoice]] = []
        if "flat" in kinds:
            plans.append(("flat", choose_index(n, dim, flat_threshold=n)))
        if "ivf" in kinds:
            plans.append(("ivf", choose_index(n, dim, flat_threshold=0)))
        if "pq" in kinds:  # a budget of half the full vectors' forces the PQ tier
            budget = estimate_memory("flat", n, dim) // 2
            plans.append(("pq", choose_index(n, dim, flat_threshold=0, memory_budget_bytes=budget)))
        print(f"\n## {n:,} vectors (exact ground truth for {args.queries} queries: {exact_s:.1f}s)")
        print(f"| index | nprobe | build+tune s | memory MiB (est / file) | QPS 1 query | QPS batch {args.queries} "
              f"| recall@10 | chosen by default |")
        print("|---|---|---|---|---|---|---|---|")
        for _, plan in plans:
            start = time.perf_counter()
            index, report = build_tuned(base, plan)
            build = time.perf_counter() - start
            size = len(faiss.serialize_index(index.index)) / 2**20
            one, batched = qps(index, queries, 200)
            _, ids = index.search(queries, 10)
            recall = recall_at_k(ids, truth)
            chosen = "yes" if plan.spec.factory == picked.spec.factory else ""
            print(f"| {plan.spec.factory} | {index.spec.nprobe} | {build:.1f} | {plan.memory_bytes / 2**20:.0f} / "
                  f"{size:.0f} | {one:.0f} | {batched:.0f} | {recall:.3f} | {chosen} |", flush=True)
            del index
        print(f"chooser (flat_threshold={DEFAULT_FLAT_THRESHOLD:,}, no memory budget) picks {picked.spec.factory} "
              f"({picked.reason})")


if __name__ == "__main__":
    main()
