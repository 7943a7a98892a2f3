"""ANN benchmark and the scale benches' vector generator.

For each size, every index kind the chooser can pick (exact Flat, IVF-PQ fast-scan + refine, IVF-Flat): build
time (train + add + nprobe tuning), memory, single-query and batched QPS, recall@10 against exact search.

Vectors come from a generator with the neighbour structure of real embeddings (``NeighbourProfile``): fitted on
real ones (``--vectors PATH`` or the served generation under data/, with its product ids), it is a smoothed
bootstrap of whole products: every real product parents the same number of new ones, each a centre drawn from a
Gaussian kernel with the parent's local covariance (Silverman's bandwidth at the real size; beyond it, the
bandwidth at which the nearest-centre distance shrinks as the real centres' intrinsic dimension says it would)
carrying the parent's own images around their centre, turned within their own span; queries are fresh images of
catalog products. Without real embeddings, a power-law spectrum of dimension ``--dim``. ``--check`` compares real
and generated vectors (top-1/top-10 gap, IVF recall at fixed nprobe) at the real sample's size and larger, beside
the old generators and a generator fitted on half the products and grown to the whole sample's size.

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
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.exact import exact_top_k  # noqa: E402
from indexer.generations import current_generation, generations_dir  # noqa: E402
from indexer.index_choice import build_tuned, choose_index, recall_at_k  # noqa: E402
from indexer.vector_index import faiss_search  # noqa: E402


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
    """How a catalog's embeddings are spread, measured on real ones, and a generator of more like them.

    Fitted on real embeddings with product ids (``fit``), it is a smoothed bootstrap of whole products: every real
    product is the parent of the same number of new ones (each once at the real size, ten times at 10x). A new
    product's centre is its parent's centre moved by a Gaussian kernel with the local covariance of the parent's
    ``KERNEL_NEIGHBOURS`` nearest real centres (new products stay on the catalog's own manifold, between real
    neighbours, not off it in every direction), then rescaled to the parent centre's norm (how alike a product's
    unit-norm images are). The kernel's scale: at the real size, Silverman's rule for the number of real products
    and the centres' intrinsic dimension (estimated from how the nearest-centre distance grows when half the
    products are left out); at larger sizes, the scale at which the generated nearest-centre distance shrinks as
    that dimension says a real catalog's would (fitted at 2x, 4x and 8x; a real-size kernel would leave each
    parent's children in a clump). A new product's images are the parent's own images around their centre, turned
    by a random rotation within their span (same scatter matrix: the same spread and directions of spread, which
    follow the parent's neighbourhood, but new images); the image count is the parent's. Without real embeddings
    (``synthetic``), centres are Gaussian with a power-law spectrum and images Gaussian around them."""

    mean: np.ndarray           # (d,)
    centre_axes: np.ndarray    # (r, d)
    centre_scales: np.ndarray  # (r,)
    image_axes: np.ndarray     # (r2, d)
    image_scales: np.ndarray   # (r2,)
    images_per_product: float
    source: str
    centres: np.ndarray | None = None          # (P, d) real product centres (None: Gaussian centres)
    bandwidth: float = 0.0                     # kernel scale at the real size, in units of the local spread
    donors: tuple[np.ndarray, ...] = ()        # per image count m: (products, m, d) real residuals
    donor_of: np.ndarray | None = None         # (P, 2) each real product's (group in donors, row in that group)
    neighbours: np.ndarray | None = None       # (P, k) each real centre's nearest other real centres
    local_means: np.ndarray | None = None      # (P, d) the mean of those neighbours
    intrinsic_dim: float = 0.0                 # of the real centres (nearest-distance scaling)
    scaled_bandwidths: tuple[float, ...] = ()  # kernel scale at SCALE_FACTORS times the real product count

    KERNEL_NEIGHBOURS = 15
    SCALE_FACTORS = (2, 4, 8)
    SCALE_FIT_PRODUCTS = 1024  # real products (at most) the scaled bandwidths are fitted on

    @classmethod
    def fit(cls, vectors: np.ndarray, products: np.ndarray | None = None, source: str = "real",
            seed: int = 0) -> NeighbourProfile:
        """Fit on real embeddings; without product ids, each image's 5 nearest neighbours stand in for its product."""
        x = np.asarray(vectors, dtype=np.float32)
        if products is None:
            _, near = exact_top_k(x, x, 5)
            products = near.min(axis=1)  # images sharing their smallest near id form a pseudo-product
        names, index = np.unique(np.asarray(products), return_inverse=True)
        counts = np.bincount(index, minlength=len(names))
        centres = np.zeros((len(names), x.shape[1]), dtype=np.float64)
        np.add.at(centres, index, x)
        centres /= counts[:, None]
        mean = centres.mean(axis=0)
        c_axes, c_scales = _principal(centres - mean)
        residual = x - centres[index]
        i_axes, i_scales = _principal(residual)
        order = np.argsort(index, kind="stable")
        groups = np.split(residual[order], np.cumsum(counts)[:-1])
        sizes = np.unique(counts)
        donors = tuple(np.stack([g for g in groups if len(g) == m]).astype(np.float32) for m in sizes)
        group = np.searchsorted(sizes, counts)
        row = np.zeros(len(counts), dtype=np.int64)
        for g in range(len(sizes)):
            row[group == g] = np.arange(int((group == g).sum()))
        centres = centres.astype(np.float32)
        if len(centres) < 2:
            raise ValueError("fitting the generator needs real embeddings of at least two products")
        dim = intrinsic_dimension(centres, np.random.default_rng(seed))
        neighbours = _nearest_rows(centres, min(cls.KERNEL_NEIGHBOURS, len(centres) - 1))[1]
        profile = cls(mean.astype(np.float32), c_axes, c_scales, i_axes, i_scales, len(x) / len(names), source,
                      centres, silverman_bandwidth(len(centres), dim), donors, np.stack([group, row], axis=1),
                      neighbours, _neighbour_means(centres, neighbours), dim)
        scaled, floor = [], profile.bandwidth
        for times in cls.SCALE_FACTORS:  # never narrower than at a smaller size
            floor = max(floor, profile.fit_scaled_bandwidth(times, np.random.default_rng(seed)))
            scaled.append(floor)
        return replace(profile, scaled_bandwidths=tuple(scaled))

    @classmethod
    def synthetic(cls, dim: int, seed: int = 1338) -> NeighbourProfile:
        """No real embeddings: a power-law spectrum (as CNN embeddings have) with images close to their product."""
        rng = np.random.default_rng(seed)
        axes = np.linalg.qr(rng.standard_normal((dim, dim)))[0].T.astype(np.float32)
        scales = (np.arange(1, dim + 1, dtype=np.float32) ** -0.6) * 0.9
        mean = rng.standard_normal(dim).astype(np.float32)
        mean *= 0.6 / np.linalg.norm(mean)
        return cls(mean, axes, scales, axes, scales * 0.35, 4.0, f"synthetic power-law spectrum, dim {dim}")

    def fit_scaled_bandwidth(self, times: int, rng: np.random.Generator, steps: int = 10) -> float:
        """The kernel scale at which ``times`` new products per real one have the nearest-centre distances a real
        catalog ``times`` as large would have: the real median shrunk by times^(-1 / intrinsic dimension)
        (bisection: at scale 0 a product's children coincide). At the real size the fit is empty (a copy of the
        real centres has their distances), so there Silverman's rule sets the scale; beyond it, a kernel that
        narrow leaves each real product's children in a clump (IVF on 10x the demo: recall 0.98 at nprobe 4).
        Fitted on at most SCALE_FIT_PRODUCTS random real products and their children."""
        assert self.centres is not None
        some = rng.choice(len(self.centres), min(len(self.centres), self.SCALE_FIT_PRODUCTS), replace=False)
        target = float(np.median(_nearest_distance(self.centres[some]))) * times ** (-1 / self.intrinsic_dim)
        parent = np.repeat(some, times)
        low, high = 0.0, 8 * self.bandwidth
        for _ in range(steps):
            mid = (low + high) / 2
            drawn = self._drawn(parent, np.random.default_rng(0), mid)
            low, high = (mid, high) if np.median(_nearest_distance(drawn)) < target else (low, mid)
        return (low + high) / 2

    def bandwidth_for(self, products: float) -> float:
        """The kernel scale for a catalog of ``products`` new products: Silverman's at (or below) the real
        product count, the fitted scaled bandwidths at SCALE_FACTORS times it (linear in log size between them,
        the largest beyond)."""
        if self.centres is None or not self.scaled_bandwidths or products <= len(self.centres):
            return self.bandwidth
        return float(np.interp(np.log2(products / len(self.centres)), np.log2((1, *self.SCALE_FACTORS)),
                               (self.bandwidth, *self.scaled_bandwidths)))

    def _centres(self, count: int, rng: np.random.Generator, bandwidth: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """``count`` new product centres (float32) and the real product each was drawn around (None: Gaussian):
        every real product parents the same number of them (give or take one)."""
        if self.centres is None or self.neighbours is None or self.local_means is None:
            noise = (rng.standard_normal((count, len(self.centre_scales)), dtype=np.float32) * self.centre_scales
                     ) @ self.centre_axes
            return self.mean + noise, None
        total = len(self.centres)
        parent = np.concatenate([rng.permutation(total) for _ in range(-(-count // total))])[:count]
        return self._drawn(parent, rng, self.bandwidth if bandwidth is None else bandwidth), parent

    def _drawn(self, parent: np.ndarray, rng: np.random.Generator, bandwidth: float) -> np.ndarray:
        """A new product centre around each ``parent`` (real product row), ``bandwidth`` the kernel's scale."""
        assert self.centres is not None and self.neighbours is not None and self.local_means is not None
        count = len(parent)
        own = self.centres[parent]
        # Gaussian kernel with each parent's local covariance: random combinations of its neighbours' offsets
        # from their own mean (a rank-k Gaussian with exactly that covariance), one neighbour at a time (no
        # (count, k, d) temporary at 10M).
        k = self.neighbours.shape[1]
        local_mean = self.local_means[parent]
        weights = rng.standard_normal((count, k), dtype=np.float32) * np.float32(bandwidth / np.sqrt(max(k - 1, 1)))
        out = own.copy()
        for j in range(k):
            out += weights[:, j:j + 1] * (self.centres[self.neighbours[parent, j]] - local_mean)
        out *= np.linalg.norm(own, axis=1, keepdims=True) / np.maximum(np.linalg.norm(out, axis=1, keepdims=True),
                                                                      1e-12)
        return out

    def _images(self, centres: np.ndarray, parent: np.ndarray | None, rng: np.random.Generator
                ) -> list[np.ndarray]:
        """Each centre's images (unit vectors): its parent's real residuals turned within their own span, or
        Gaussian ones for the synthetic profile."""
        if parent is None or self.donor_of is None:
            count = rng.poisson(self.images_per_product - 1, len(centres)) + 1
            images = np.repeat(centres, count, axis=0)
            images += (rng.standard_normal((len(images), len(self.image_scales)), dtype=np.float32)
                       * self.image_scales) @ self.image_axes
            return np.split(_unit(images), np.cumsum(count)[:-1])
        group, row = self.donor_of[parent].T
        out: list[np.ndarray] = [np.empty(0)] * len(centres)
        for which, donors in enumerate(self.donors):
            mine = np.flatnonzero(group == which)
            if not len(mine):
                continue
            residual = _rotate_within_span(donors[row[mine]], rng)
            images = _unit((centres[mine][:, None, :] + residual).reshape(-1, centres.shape[1]))
            for j, block in zip(mine, images.reshape(len(mine), donors.shape[1], -1)):
                out[j] = block
        return out

    def generate(self, n: int, seed: int, queries: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` catalog images of new products (the last one cut short to make ``n``), and ``queries`` fresh
        images of random catalog products (a shopper's photo of a product the shop sells); unit vectors."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, len(self.mean)), dtype=np.float32)
        query_out = np.empty((queries, len(self.mean)), dtype=np.float32)
        # Each query belongs to the product that holds catalog row query_rows[i] (rows are shuffled below).
        query_rows = np.sort(rng.integers(0, n, queries))
        filled, asked = 0, 0
        bandwidth = self.bandwidth_for(n / self.images_per_product)
        while filled < n:  # products in blocks: bounded memory at any n
            centres, parent = self._centres(min(50_000, int((n - filled) / self.images_per_product) + 64), rng,
                                            bandwidth)
            images = self._images(centres, parent, rng)
            sizes = np.array([len(i) for i in images])
            ends = filled + np.cumsum(sizes)
            last = min(len(images), int(np.searchsorted(ends, n)) + 1)
            rows = np.concatenate(images[:last])[:n - filled]
            out[filled:filled + len(rows)] = rows
            mine = query_rows[(query_rows >= filled) & (query_rows < filled + len(rows))]
            if len(mine):
                owner = np.searchsorted(ends[:last], mine, side="right")
                fresh = self._images(centres[owner], None if parent is None else parent[owner], rng)
                query_out[asked:asked + len(mine)] = np.stack([f[0] for f in fresh])
                asked += len(mine)
            filled += len(rows)
        rng.shuffle(out)  # ids do not follow products (in place: no second copy of a 10M catalog)
        return out, query_out


def intrinsic_dimension(points: np.ndarray, rng: np.random.Generator, repeats: int = 64) -> float:
    """The dimension d of the manifold the points lie on, from how nearest-neighbour distances scale with the
    sample size (r ~ n^(-1/d)): the median nearest distance in random halves against the whole set."""
    if len(points) < 8:
        return float(points.shape[1])
    whole = np.log(np.median(_nearest_distance(points)))
    halves = [np.log(np.median(_nearest_distance(points[rng.choice(len(points), len(points) // 2, replace=False)])))
              for _ in range(repeats)]
    growth = float(np.mean(halves) - whole)
    return float(np.log(2) / growth) if growth > 0 else float(points.shape[1])


def silverman_bandwidth(n: int, dim: float) -> float:
    """Silverman's rule of thumb for a Gaussian kernel density over ``n`` points in ``dim`` dimensions, in units
    of the data's own spread: (4 / (d + 2))^(1 / (d + 4)) n^(-1 / (d + 4))."""
    return float((4 / (dim + 2)) ** (1 / (dim + 4)) * n ** (-1 / (dim + 4)))


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)).astype(np.float32)


def _rotate_within_span(residual: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(k, m, d) residuals of k products (rows of each sum to zero) mixed by a random orthogonal m x m matrix that
    keeps the all-ones direction: the same scatter matrix (spread and its directions), rows still summing to
    zero, but new images."""
    k, m, _ = residual.shape
    if m < 2:
        return residual
    basis = np.linalg.qr(np.eye(m) - 1.0 / m)[0][:, :m - 1]  # orthonormal basis of the sum-zero subspace
    turn, r = np.linalg.qr(rng.standard_normal((k, m - 1, m - 1)))
    turn = turn * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]  # Haar-distributed
    mix = (basis @ turn @ basis.T).astype(np.float32)
    return mix @ residual


def _nearest_rows(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` nearest other rows (Euclidean), nearest first: (distances, row numbers)."""
    x = np.asarray(x, dtype=np.float32)
    squared = (x * x).sum(axis=1)
    rows = np.empty((len(x), k), dtype=np.int64)
    distances = np.empty((len(x), k), dtype=np.float32)
    for start in range(0, len(x), 4096):
        d = squared[start:start + 4096, None] + squared[None, :] - 2 * x[start:start + 4096] @ x.T
        d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf
        part = np.argpartition(d, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(part, np.argsort(np.take_along_axis(d, part, 1), axis=1), 1)
        rows[start:start + len(d)] = near
        distances[start:start + len(d)] = np.sqrt(np.maximum(np.take_along_axis(d, near, 1), 0))
    return distances, rows


def _neighbour_means(x: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Each row's mean of its ``neighbours`` rows (one neighbour rank at a time: no (P, k, d) temporary)."""
    out = np.zeros_like(x)
    for j in range(neighbours.shape[1]):
        out += x[neighbours[:, j]]
    return out / neighbours.shape[1]


def _nearest_distance(x: np.ndarray) -> np.ndarray:
    """Each row's Euclidean distance to its nearest other row."""
    return _nearest_rows(x, 1)[0][:, 0]


def _median_nearest_distance(x: np.ndarray, sample: int = 2000, seed: int = 0) -> float:
    """The median over (at most ``sample``) random rows of their distance to the nearest other row."""
    x = np.asarray(x, dtype=np.float32)
    some = np.random.default_rng(seed).choice(len(x), min(sample, len(x)), replace=False)
    squared = (x * x).sum(axis=1)
    nearest = []
    for rows in np.array_split(some, -(-len(some) // 256)):  # 256 rows at a time: bounded memory at 100x
        d = squared[rows, None] + squared[None, :] - 2 * x[rows] @ x.T
        d[np.arange(len(rows)), rows] = np.inf
        nearest.append(d.min(axis=1))
    return float(np.median(np.sqrt(np.maximum(np.concatenate(nearest), 0))))


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
                    seed: int = 1338, only_generated: bool = False) -> dict[str, dict[str, float | int]]:
    """What makes ANN easy or hard, on real and generated vectors: the top-1/top-10 similarity gap of held-out
    queries (quantiles) and IVF recall@10 at a fixed nprobe (nlist about 4 sqrt(n), k-means on every vector)."""
    out = {}
    for name, x in (("real", real), ("generated", generated)):
        if only_generated and name == "real":
            continue
        rng = np.random.default_rng(seed)
        held = rng.choice(len(x), min(queries, len(x) // 5), replace=False)
        keep = np.setdiff1d(np.arange(len(x)), held)
        base, q = np.ascontiguousarray(x[keep]), np.ascontiguousarray(x[held])
        scores, truth = exact_top_k(base, q, 10)
        gap = scores[:, 0] - scores[:, 9]
        nlist = max(4, int(2 ** round(np.log2(4 * np.sqrt(len(base))))))
        index = faiss.index_factory(base.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small samples: no warning, every vector trains
        index.train(base)
        index.add(base)
        _, found = faiss_search(index, q, 10, faiss.SearchParametersIVF(nprobe=nprobe))  # FAISS's own search
        out[name] = {"gap_p10": float(np.quantile(gap, 0.1)), "gap_p50": float(np.median(gap)),
                     "gap_p90": float(np.quantile(gap, 0.9)), "top1_p50": float(np.median(scores[:, 0])),
                     "nlist": nlist, f"ivf_nprobe{nprobe}_recall": recall_at_k(found, truth)}
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
    """The generator against the real embeddings it was fitted on, at the real catalog's size (beside the old
    mixture generator and Gaussian centres without the fitted kernel), then generated at larger sizes: the
    top-1/top-10 gap quantiles and IVF recall@10 at a fixed nprobe (nlist about 4 sqrt(n)); in the embeddings'
    own space (real size only) and in the compact space the service searches (the default compact transform)."""
    from indexer.compact import DEFAULT_COMPACT_DIM, DEFAULT_COMPACT_WHITEN, CompactTransform

    real, products = real_vectors_with_products(args.vectors, Path(args.data_dir))
    if real is None:
        print("no real embeddings under --data-dir (or --vectors): nothing to check the generator against")
        return
    transform = CompactTransform.fit(real, DEFAULT_COMPACT_DIM, whiten=DEFAULT_COMPACT_WHITEN)
    scales = [int(s) for s in args.check_scales.split(",") if s]
    for space, vectors in (("embeddings", real), (transform.describe(), transform.apply(real))):
        profile = NeighbourProfile.fit(vectors, products)
        n, spacing = len(vectors), float(np.median(_nearest_distance(profile.centres)))
        rows = {f"real ({n:,})": {**neighbour_check(vectors, vectors, nprobe=args.check_nprobe)["real"],
                                  "kernel": "", "centre_nn_p50": spacing, "expected": spacing}}
        for times in scales if space != "embeddings" else [1]:  # 1280-d at 10x and more: too slow to be worth it
            generated, _ = profile.generate(n * times, seed=times)
            bandwidth = profile.bandwidth_for(n * times / profile.images_per_product)
            centres, _ = profile._centres(len(profile.centres) * times, np.random.default_rng(times), bandwidth)
            rows[f"generated ({n * times:,})"] = {
                **neighbour_check(vectors, generated, nprobe=args.check_nprobe, only_generated=True)["generated"],
                "kernel": bandwidth, "centre_nn_p50": _median_nearest_distance(centres),
                "expected": spacing * times ** (-1 / profile.intrinsic_dim)}
            del generated, centres
        blank = {"kernel": "", "centre_nn_p50": "", "expected": ""}
        if products is not None:  # out of sample: fitted on a random half of the products, grown to the whole
            names = np.unique(products)
            half = np.isin(products, np.random.default_rng(0).choice(names, len(names) // 2, replace=False))
            grown = NeighbourProfile.fit(vectors[half], products[half])
            rows[f"fitted on half the products, grown 2x ({n:,})"] = {
                **neighbour_check(vectors, grown.generate(n, seed=2)[0], nprobe=args.check_nprobe,
                                  only_generated=True)["generated"], **blank,
                "kernel": grown.bandwidth_for(n / grown.images_per_product)}
        gaussian = replace(profile, centres=None, donors=())
        rows[f"Gaussian centres, no kernel ({n:,})"] = {**neighbour_check(
            vectors, gaussian.generate(n, seed=1)[0], nprobe=args.check_nprobe, only_generated=True)["generated"],
            **blank}
        rows[f"old mixture ({n:,})"] = {**neighbour_check(vectors, mixture(n, vectors, args.noise, seed=1),
                                                          nprobe=args.check_nprobe, only_generated=True)["generated"],
                                        **blank}
        keys = list(rows[f"real ({n:,})"])
        print(f"\n# generator check, {space}: {n} real {vectors.shape[1]}-d vectors of {len(profile.centres)} products "
              f"({profile.images_per_product:.1f} images per product) vs generated; centres' intrinsic dimension "
              f"{profile.intrinsic_dim:.1f}; kernel: the bandwidth used (Silverman's at the real size, scaled "
              f"beyond); centre_nn_p50: median nearest-centre distance, expected: the real one x "
              f"times^(-1/dimension)")
        print("| vectors | " + " | ".join(keys) + " |")
        print("|---|" + "---|" * len(keys))
        for name, row in rows.items():
            print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k])
                                                 for k in keys) + " |", flush=True)


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
    parser.add_argument("--check-scales", default="1,10,100",
                        help="--check: generated sizes as multiples of the real sample's size")
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
