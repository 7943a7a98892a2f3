"""ANN benchmark and the scale benches' vector generator.

For each size, every index kind the chooser can pick (exact Flat, IVF-PQ fast-scan + refine, IVF-Flat): build
time (train + add + nprobe tuning), memory, single-query and batched QPS, recall@10 against exact search.

Vectors come from a generator with the neighbour structure of real embeddings (``NeighbourProfile``): fitted on
real ones (``--vectors PATH`` or the served generation under data/, with its product ids), it draws new
products from the spread of the real product centres (principal axes and scales) and a few images per product
from the real spread of images around their product; queries are fresh images of catalog products. Without
real embeddings, a power-law spectrum of dimension ``--dim``. ``--check`` compares real and generated vectors
(top-1/top-10 gap, IVF recall at fixed nprobe), beside the old generator (a real vector plus isotropic noise).

    .venv/bin/python bench/ann.py --sizes 100000,1000000
    .venv/bin/python bench/ann.py --check
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.exact import exact_top_k  # noqa: E402
from indexer.generations import current_generation, generations_dir  # noqa: E402
from indexer.index_choice import build_tuned, choose_index, recall_at_k  # noqa: E402


def mixture(n: int, centres: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """``n`` unit vectors: a random centre (a real embedding) plus Gaussian noise, renormalised (the old
    generator: easier for IVF than real catalogs, kept for comparison)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        block = centres[rng.integers(0, len(centres), stop - start)].astype(np.float32)
        block += noise * rng.standard_normal(block.shape, dtype=np.float32) / np.sqrt(centres.shape[1])
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


@dataclass(frozen=True)
class NeighbourProfile:
    """How a catalog's embeddings are spread, measured on real ones: the spread of product centres (principal
    axes and scales), the spread of a product's images around its centre, and images per product."""

    mean: np.ndarray           # (d,)
    centre_axes: np.ndarray    # (r, d)
    centre_scales: np.ndarray  # (r,)
    image_axes: np.ndarray     # (r2, d)
    image_scales: np.ndarray   # (r2,)
    images_per_product: float
    source: str
    product_spread: np.ndarray | None = None  # each real product's image spread over the mean (None: all alike)

    @classmethod
    def fit(cls, vectors: np.ndarray, products: np.ndarray | None = None, source: str = "real") -> NeighbourProfile:
        """Fit on real embeddings; without product ids, each image's 5 nearest neighbours stand in for its product."""
        x = np.asarray(vectors, dtype=np.float32)
        if products is None:
            _, near = exact_top_k(x, x, 5)
            products = near.min(axis=1)  # images sharing their smallest near id form a pseudo-product
        names, index = np.unique(np.asarray(products), return_inverse=True)
        centres = np.zeros((len(names), x.shape[1]), dtype=np.float64)
        np.add.at(centres, index, x)
        centres /= np.bincount(index, minlength=len(names))[:, None]
        mean = centres.mean(axis=0)
        c_axes, c_scales = _principal(centres - mean)
        residual = x - centres[index]
        i_axes, i_scales = _principal(residual)
        # Products differ in how alike their images are (near-duplicate shots vs different views): keep the
        # real distribution of each product's spread, not one Gaussian for all.
        per_product = np.sqrt(np.bincount(index, (residual ** 2).sum(axis=1)) / np.bincount(index))
        spread = (per_product / np.sqrt((residual ** 2).sum(axis=1).mean())).astype(np.float32)
        return cls(mean.astype(np.float32), c_axes, c_scales, i_axes, i_scales, len(x) / len(names), source,
                   spread[np.bincount(index) > 1])

    @classmethod
    def synthetic(cls, dim: int, seed: int = 1338) -> NeighbourProfile:
        """No real embeddings: a power-law spectrum (as CNN embeddings have) with images close to their product."""
        rng = np.random.default_rng(seed)
        axes = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T.astype(np.float32)
        scales = (np.arange(1, dim + 1, dtype=np.float32) ** -0.6) * 0.9
        mean = rng.standard_normal(dim).astype(np.float32)
        mean *= 0.6 / np.linalg.norm(mean)
        return cls(mean, axes, scales, axes, scales * 0.35, 4.0, f"synthetic power-law spectrum, dim {dim}")

    def generate(self, n: int, seed: int, queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` catalog images of about n/images_per_product new products, and ``queries`` fresh images of
        random catalog products (a shopper's photo of a product the shop sells); unit vectors."""
        rng = np.random.default_rng(seed)
        products = max(1, round(n / self.images_per_product))
        product_of = np.sort(rng.integers(0, products, n))
        out = np.empty((n, len(self.mean)), dtype=np.float32)
        query_products = rng.integers(0, products, queries)
        spread = (np.ones(products, np.float32) if self.product_spread is None or not len(self.product_spread)
                  else rng.choice(self.product_spread, products).astype(np.float32))
        query_out = np.empty((queries, len(self.mean)), dtype=np.float32)
        block = 50_000
        for first in range(0, products, block):  # product centres in blocks: bounded memory at any n
            last = min(products, first + block)
            centres = self.mean + (rng.standard_normal((last - first, len(self.centre_scales)), dtype=np.float32)
                                   * self.centre_scales) @ self.centre_axes
            lo, hi = np.searchsorted(product_of, [first, last])
            out[lo:hi] = self._image(centres[product_of[lo:hi] - first], rng, spread[product_of[lo:hi]])
            mine = (query_products >= first) & (query_products < last)
            query_out[mine] = self._image(centres[query_products[mine] - first], rng, spread[query_products[mine]])
        shuffle = rng.permutation(n)  # ids do not follow products
        return out[shuffle], query_out

    def _image(self, centres: np.ndarray, rng: np.random.Generator, spread: np.ndarray) -> np.ndarray:
        x = centres + spread[:, None] * ((rng.standard_normal((len(centres), len(self.image_scales)),
                                                              dtype=np.float32) * self.image_scales) @ self.image_axes)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _principal(x: np.ndarray, keep: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The top principal axes of ``x`` (rows) and the standard deviation along each."""
    x = np.asarray(x, dtype=np.float64)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = min(keep, len(s))
    return vt[:keep].astype(np.float32), (s[:keep] / np.sqrt(max(len(x) - 1, 1))).astype(np.float32)


def profile_for(vectors_path: str | None, data_dir: Path, dim: int) -> NeighbourProfile:
    """Fit on real embeddings (``--vectors`` or the served generation, with its product ids) if there are any,
    seen through the service's default compact transform to ``dim`` dimensions (PCA-whitening) when that is
    fewer; a synthetic power-law profile otherwise."""
    from indexer.compact import DEFAULT_COMPACT_WHITEN, CompactTransform

    real, products = real_vectors_with_products(vectors_path, data_dir)
    if real is None:
        return NeighbourProfile.synthetic(dim)
    transform = CompactTransform.fit(real, dim, whiten=DEFAULT_COMPACT_WHITEN)
    return NeighbourProfile.fit(transform.apply(real), products,
                                source=f"fitted on {len(real)} real embeddings through {transform.describe()}")


def real_vectors_with_products(path: str | None, data_dir: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Real embeddings with their product ids, or (None, None): ``path`` (an .npy of vectors, or an .npz from
    ``bench/demo_quality.py --compact --embeddings``: its gallery and gallery_products), else the served
    generation's vectors.npy and catalog."""
    if path and str(path).endswith(".npz"):
        with np.load(path) as saved:
            return np.asarray(saved["gallery"], dtype=np.float32), saved["gallery_products"]
    if path:
        return np.asarray(np.load(path), dtype=np.float32), None
    name = current_generation(data_dir)
    if not name or not (generations_dir(data_dir) / name / "vectors.npy").is_file():
        return None, None
    gen = generations_dir(data_dir) / name
    vectors = np.asarray(np.load(gen / "vectors.npy"), dtype=np.float32)
    conn = sqlite3.connect(f"file:{gen / 'catalog.db'}?mode=ro", uri=True)
    try:
        products = np.array([r[0] for r in conn.execute("SELECT product_id FROM items ORDER BY id")])
    finally:
        conn.close()
    return vectors, products


def generate(n: int, queries: int, dim: int, vectors_path: str | None = None, seed: int = 0,
             data_dir: Path = Path("data")) -> tuple[np.ndarray, np.ndarray]:
    """(catalog vectors, query vectors) from the realistic generator, in ``dim`` dimensions (see profile_for)."""
    return profile_for(vectors_path, data_dir, dim).generate(n, seed, queries)


def neighbour_check(real: np.ndarray, generated: np.ndarray, queries: int = 500, nprobe: int = 4,
                    seed: int = 1338) -> dict[str, dict[str, float]]:
    """What makes ANN easy or hard, on real and generated vectors of the same size: the top-1/top-10 similarity
    gap of held-out queries (quantiles) and IVF recall@10 at a fixed nprobe."""
    out = {}
    for name, x in (("real", real), ("generated", generated)):
        rng = np.random.default_rng(seed)
        held = rng.choice(len(x), min(queries, len(x) // 5), replace=False)
        keep = np.setdiff1d(np.arange(len(x)), held)
        base, q = np.ascontiguousarray(x[keep]), np.ascontiguousarray(x[held])
        scores, truth = exact_top_k(base, q, 10)
        gap = scores[:, 0] - scores[:, 9]
        nlist = max(4, int(2 ** round(np.log2(4 * np.sqrt(len(base))))))
        index = faiss.index_factory(base.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.train(base)
        index.add(base)
        _, found = index.search(q, 10, params=faiss.SearchParametersIVF(nprobe=nprobe))
        out[name] = {"gap_p10": float(np.quantile(gap, 0.1)), "gap_p50": float(np.median(gap)),
                     "gap_p90": float(np.quantile(gap, 0.9)), "top1_p50": float(np.median(scores[:, 0])),
                     f"ivf{nlist}_nprobe{nprobe}_recall": recall_at_k(found, truth)}
    return out


def machine_header(bench: str) -> str:
    """The first line of a FAISS bench's output: which machine, CPUs and FAISS the numbers come from."""
    return (f"# {bench} on {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"faiss {faiss.__version__}); one search thread; shared, loaded machine")


def qps(index, queries: np.ndarray, single: int) -> tuple[float, float]:
    start = time.perf_counter()
    for q in queries[:single]:
        index.search(q[None, :], 10)
    one = single / (time.perf_counter() - start)
    start = time.perf_counter()
    index.search(queries, 10)
    return one, len(queries) / (time.perf_counter() - start)


def check_generator(args: argparse.Namespace) -> None:
    """The generator against the real embeddings it was fitted on, at the real catalog's size (and the old
    mixture generator beside it): top-1/top-10 gap quantiles and IVF recall@10 at a fixed nprobe; in the
    embeddings' own space and in the compact space the service searches (the default compact transform)."""
    from indexer.compact import DEFAULT_COMPACT_DIM, DEFAULT_COMPACT_WHITEN, CompactTransform

    real, products = real_vectors_with_products(args.vectors, Path(args.data_dir))
    if real is None:
        print("no real embeddings under --data-dir (or --vectors): nothing to check the generator against")
        return
    transform = CompactTransform.fit(real, DEFAULT_COMPACT_DIM, whiten=DEFAULT_COMPACT_WHITEN)
    for space, vectors in (("embeddings", real), (transform.describe(), transform.apply(real))):
        profile = NeighbourProfile.fit(vectors, products)
        generated, _ = profile.generate(len(vectors), seed=1)
        old = mixture(len(vectors), vectors, args.noise, seed=1)
        rows = {**neighbour_check(vectors, generated, nprobe=args.check_nprobe),
                "old mixture": neighbour_check(vectors, old, nprobe=args.check_nprobe)["generated"]}
        keys = list(rows["real"])
        print(f"\n# generator check, {space}: {len(vectors)} real {vectors.shape[1]}-d vectors vs as many generated "
              f"({profile.images_per_product:.1f} images per product)")
        print("| vectors | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for name, row in rows.items():
            print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in keys) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="comma-separated vector counts")
    parser.add_argument("--dim", type=int, default=128, help="dimension of the generated vectors (the compact space)")
    parser.add_argument("--vectors", help="real embeddings to fit the generator on: .npy, or the .npz of "
                        "bench/demo_quality.py --compact --embeddings (with product ids)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--noise", type=float, default=0.6, help="noise of the old mixture generator (--check)")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--kinds", default="flat,ivf_pq_refine,ivf_flat", help="which index kinds to build")
    parser.add_argument("--check", action="store_true", help="compare generated with real neighbour structure")
    parser.add_argument("--check-nprobe", type=int, default=4, help="--check: the fixed nprobe of the IVF recall")
    parser.add_argument("--build-threads", type=int, default=1,
                        help="FAISS threads for building (1 on a shared machine: spinning OpenMP threads stall)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.check:
        check_generator(args)
        return
    profile = profile_for(args.vectors, Path(args.data_dir), args.dim)
    print(machine_header("ANN benchmark"))
    print(f"# vectors: {profile.source}; queries: {args.queries} fresh images of catalog products")
    for n in (int(s) for s in args.sizes.split(",")):
        base, queries = profile.generate(n, seed=n, queries=args.queries)
        dim = base.shape[1]
        start = time.perf_counter()
        truth = exact_top_k(base, queries, 10)[1]
        exact_s = time.perf_counter() - start
        picked = choose_index(n, dim)
        print(f"\n## {n:,} vectors of dim {dim} (exact ground truth for {args.queries} queries: {exact_s:.1f}s)")
        print(f"| index | nprobe | build+tune s | memory MiB (est / file) | QPS 1 query | QPS batch {args.queries} "
              f"| recall@10 | chosen by default |")
        print("|---|---|---|---|---|---|---|---|")
        for kind in args.kinds.split(","):
            plan = choose_index(n, dim, force=kind)
            faiss.omp_set_num_threads(args.build_threads)
            start = time.perf_counter()
            index, report = build_tuned(base, plan)
            build = time.perf_counter() - start
            faiss.omp_set_num_threads(1)
            size = len(faiss.serialize_index(index.index)) / 2**20
            one, batched = qps(index, queries, 200)
            _, ids = index.search(queries, 10)
            recall = recall_at_k(ids, truth)
            chosen = "yes" if plan.spec.factory == picked.spec.factory else ""
            print(f"| {plan.spec.factory} | {index.spec.nprobe} | {build:.1f} | {plan.memory_bytes / 2**20:.0f} / "
                  f"{size:.0f} | {one:.0f} | {batched:.0f} | {recall:.3f} | {chosen} |", flush=True)
            del index
        print(f"chooser (targets: recall@10 >= 0.95, {picked.spec.factory}: {picked.reason})")


if __name__ == "__main__":
    main()
