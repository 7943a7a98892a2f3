"""Retrieval quality on the demo furniture catalog: held-out renders as queries, the catalog as gallery.

For each product, a render not in the catalog (queries.csv) is the query; the gallery is every catalog image
(icon + indexed renders of all products). Results are grouped by product as the service does, and
Recall@K is the share of queries whose product is among the first K products. Compares the pretrained
EfficientNet-Lite0 with the same network at random init (and optionally a trained checkpoint).

    .venv/bin/python bench/demo_quality.py [--demo-dir data/demo] [--checkpoint best.pt] [--limit N]
    .venv/bin/python bench/demo_quality.py --compact [--embeddings demo-embeddings.npz]   # compact vectors table

The gallery vectors of a model are taken from the served generation (data/) when it was built from the same
catalog by the same model (what `curl /search` answers from); otherwise they are computed here.
"""

from __future__ import annotations

import argparse
import csv
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from app.settings import Settings
from indexer import CatalogStore, current_generation, read_catalog, read_manifest
from indexer.generations import CATALOG_DB, VECTORS
from indexer.generations import generations_dir
from indexer.extract import extract_embeddings
from indexer.index_choice import CODE_BYTES
from models import Embedder, ModelConfig, build_model


def product_recall(query_vecs: np.ndarray, query_products: list[str], gallery_vecs: np.ndarray,
                   gallery_products: list[str], ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K over products: rank gallery images, keep each product's best image, find the query's product."""
    sims = query_vecs @ gallery_vecs.T
    gallery = np.array(gallery_products)
    hits = {k: 0 for k in ks}
    for row, truth in zip(sims, query_products, strict=True):
        order = gallery[np.argsort(-row, kind="stable")]
        _, first = np.unique(order, return_index=True)
        ranked = order[np.sort(first)]
        position = int(np.nonzero(ranked == truth)[0][0]) if truth in ranked else len(ranked)
        for k in ks:
            hits[k] += position < k
    return {k: hits[k] / len(query_products) for k in ks}


def served_vectors(data_dir: Path, model_id: str, rows: list) -> np.ndarray | None:
    """The served generation's vectors for ``rows`` if that generation was built by ``model_id`` (else None)."""
    name = current_generation(data_dir)
    if name is None:
        return None
    gen_dir = generations_dir(data_dir) / name
    if read_manifest(gen_dir).model_id != model_id:
        return None
    store = CatalogStore(gen_dir / CATALOG_DB)
    try:
        ids = store.ids_for_item_ids([r.item_id for r in rows])
    finally:
        store.close()
    if len(ids) != len(rows):
        return None
    return np.load(gen_dir / VECTORS, mmap_mode="r")[[ids[r.item_id] for r in rows]]


COMPACT_DIMS = (None, 512, 256, 128, 64)


def coded(vectors: np.ndarray, code: str) -> np.ndarray:
    """The gallery vectors as the store would hold them (fp16 or 8-bit scalar codes, decoded for scoring)."""
    if code == "float32":
        return vectors
    if code == "fp16":
        return vectors.astype(np.float16).astype(np.float32)
    quantizer = faiss.ScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_8bit)
    quantizer.train(vectors)
    return quantizer.decode(quantizer.compute_codes(vectors))


def compact_table(gallery: np.ndarray, gallery_products: list[str], query: np.ndarray,
                  query_products: list[str]) -> None:
    """R@1/R@5 of the ImageNet model through each compact transform (PCA fitted on the gallery, as the index
    build does) and vector code, with the bytes each gallery vector takes."""
    from indexer.compact import CompactTransform

    print(f"\n{'compact vectors':<22} {'code':<8} {'bytes/vector':>12} {'R@1':>6} {'R@5':>6}")
    for dim in COMPACT_DIMS:
        for whiten in (False, True) if dim else (False,):
            transform = CompactTransform.fit(gallery, dim, whiten=whiten)
            g, q = transform.apply(gallery), transform.apply(query)
            for code in CODE_BYTES:
                recall = product_recall(q, query_products, coded(g, code), gallery_products, (1, 5))
                size = g.shape[1] * CODE_BYTES[code]
                label = f"{transform.describe()} ({g.shape[1]}-d)"
                print(f"{label:<22} {code:<8} {size:>12} {recall[1]:>6.3f} {recall[5]:>6.3f}", flush=True)


def save_embeddings(path: Path, embedder: Embedder, rows: list, queries: list, gallery: np.ndarray,
                    query: np.ndarray) -> None:
    """The demo's embeddings with what identifies them, for reuse (``--compact --embeddings``, ``bench/ann.py
    --vectors``): gallery/queries vectors, their item/product ids and image paths, the model and runtime."""
    np.savez(path, gallery=np.asarray(gallery, np.float32), queries=np.asarray(query, np.float32),
             gallery_item_ids=np.array([r.item_id for r in rows]),
             gallery_products=np.array([r.product_id for r in rows]),
             gallery_images=np.array([str(r.image) for r in rows]),
             query_products=np.array([q[1] for q in queries]), query_images=np.array([str(q[0]) for q in queries]),
             model_id=np.array(embedder.model_id), runtime=np.array(f"{embedder.runtime_name} {embedder.precision}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("data/demo"))
    parser.add_argument("--checkpoint", type=str, default=None, help="also evaluate a trained checkpoint")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--limit", type=int, default=None, help="first N products only")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=Path("data"),
                        help="reuse the served generation's vectors when it indexes this catalog with the same model")
    parser.add_argument("--compact", action="store_true",
                        help="the ImageNet model only, through every compact transform and code (README table)")
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="with --compact: an .npz cache of the gallery and query embeddings (read, or written)")
    args = parser.parse_args()

    rows = read_catalog(args.demo_dir / "catalog.csv")
    with (args.demo_dir / "queries.csv").open() as handle:
        queries = [(args.demo_dir / r["query_image"], r["product_id"]) for r in csv.DictReader(handle)]
    if args.limit:
        keep = list(dict.fromkeys(r.product_id for r in rows))[: args.limit]
        rows = [r for r in rows if r.product_id in set(keep)]
        queries = [q for q in queries if q[1] in set(keep)]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}; "
          f"gallery {len(rows)} images of {len({r.product_id for r in rows})} products, {len(queries)} queries")

    if args.compact:
        if args.embeddings and args.embeddings.is_file():
            with np.load(args.embeddings) as saved:
                gallery, query = saved["gallery"], saved["queries"]
        else:
            settings = Settings()
            embedder = Embedder(build_model(ModelConfig(image_size=args.image_size)), device=settings.device,
                                options=settings.runtime_options())
            start = time.perf_counter()
            gallery = served_vectors(args.data_dir, embedder.model_id, rows)
            if gallery is None:
                gallery = extract_embeddings([r.image for r in rows], embedder, workers=args.workers, progress=False)
            query = extract_embeddings([q[0] for q in queries], embedder, workers=args.workers, progress=False)
            print(f"embedded with {embedder.runtime_name} {embedder.precision} in {time.perf_counter() - start:.0f}s")
            if args.embeddings:
                save_embeddings(args.embeddings, embedder, rows, queries, gallery, query)
        compact_table(np.asarray(gallery, np.float32), [r.product_id for r in rows], np.asarray(query, np.float32),
                      [q[1] for q in queries])
        return

    models = {
        "efficientnet_lite0 (ImageNet)": lambda: build_model(ModelConfig(image_size=args.image_size)),
        "efficientnet_lite0 (random init)": lambda: build_model(ModelConfig(image_size=args.image_size, pretrained=False)),
    }
    if args.checkpoint:
        models[f"checkpoint {args.checkpoint}"] = lambda: build_model(checkpoint=args.checkpoint)
    ks = (1, 5, 10)
    print(f"{'model':<54} {'R@1':>6} {'R@5':>6} {'R@10':>6} {'img/s':>7}")
    for name, make in models.items():
        embedder = Embedder(make(), device="auto")
        start = time.perf_counter()
        gallery = served_vectors(args.data_dir, embedder.model_id, rows)
        embedded = len(queries)
        if gallery is None:
            gallery = extract_embeddings([r.image for r in rows], embedder, workers=args.workers, progress=False)
            embedded += len(rows)
        else:
            name += " [served index]"
        query = extract_embeddings([q[0] for q in queries], embedder, workers=args.workers, progress=False)
        rate = embedded / (time.perf_counter() - start)
        recall = product_recall(query, [q[1] for q in queries], gallery, [r.product_id for r in rows], ks)
        print(f"{name:<54} {recall[1]:>6.3f} {recall[5]:>6.3f} {recall[10]:>6.3f} {rate:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
