"""FAISS behind the ``VectorStore`` seam: ``FaissCpuStore`` (id selectors) and ``FaissGpuStore`` (GPU index).

A FAISS store holds, for one generation:
- ``flat``: the base vectors as contiguous, id-addressable codes in RAM (``IndexFlatIP`` for float32,
  ``IndexScalarQuantizer`` for fp16 / 8-bit codes): the exact-scoring path and ``vectors()`` read it;
- ``index``: the ANN index over the same base vectors (``VectorIndex``; it is ``flat`` itself when the
  chooser picked exact search);
- changes since the build: a dead mask over base ids (removed or replaced rows) and the added rows as a small
  float32 block scored exactly. Both are swapped copy-on-write, so searches never see half an update.

Ids are dense: base row i is id i; added rows take ids of the caller's choosing (the delta's, above the base).

``FaissGpuStore`` moves the ANN index to a GPU when FAISS sees one. FAISS GPU indexes ignore id selectors, so
it reports ``supports_filter = False`` and its filtered ANN searches over-fetch without a selector and filter
(falling back to the CPU copy with the selector past the GPU's largest k); exact searches stay on the CPU's
compact codes. Without a GPU it runs the same over-fetch path on the CPU copy (which the tests exercise).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import faiss
import numpy as np

from indexer.exact import exact_top_k, exact_top_k_by_id, top_k_of
from indexer.index_choice import TARGET_RECALL, IndexChoice, IndexReport, build_tuned
from indexer.vector_index import IndexSpec, VectorIndex, faiss_search, id_selector, ivf_layer
from indexer.vector_store import BaseVectorStore, IdFilter, SearchParams, empty_result, merge_top_k

log = logging.getLogger(__name__)

FLAT_FILE = "flat.faiss"
INDEX_FILE = "index.faiss"
META_FILE = "store.json"
CHANGES_FILE = "changes.npz"
CODES = ("float32", "fp16", "sq8")
# Exact search over 8-bit/fp16 codes scores the allowed rows' codes by id up to 1/8 of the base (measured: 100k
# of 1M 128-d 8-bit rows by id cost about a full SIMD scan of all 1M); beyond, FAISS scans with a bitmap.
GATHER_FRACTION = 8
GATHER_CHUNK = 4096  # rows of codes decoded and scored at a time (their float32 copy: 2 MiB at 128-d)
# Exact scoring of one allowed id costs about as much as scanning this many vectors in an IVF-PQ fast-scan
# list (measured: by-id float32 scoring ~0.9 ns per dimension, fast-scan ~4-bit lookups per code).
EXACT_PER_SCANNED = 0.25


def make_flat(dim: int, code: str) -> faiss.Index:
    """An empty id-addressable flat store of ``code`` codes (fp16 and sq8 are scalar quantizers)."""
    if code == "float32":
        return faiss.IndexFlatIP(dim)
    if code == "fp16":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    if code == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"unknown vector code {code!r} (one of {', '.join(CODES)})")


def build_flat(vectors: np.ndarray, code: str, chunk: int = 262_144, train_sample: int = 262_144,
               seed: int = 0) -> faiss.Index:
    """Encode ``vectors`` (may be a memory map) into a flat store, chunk by chunk."""
    flat = make_flat(vectors.shape[1], code)
    if not flat.is_trained:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(len(vectors), min(len(vectors), train_sample), replace=False))
        flat.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    for start in range(0, len(vectors), chunk):
        flat.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))
    return flat


def refine_flat(index: faiss.Index) -> faiss.Index | None:
    """The flat codes inside an ``IndexRefine`` (its re-ranking index), or None for other indexes."""
    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.refine_index) if isinstance(index, faiss.IndexRefine) else None


def flat_code(flat: faiss.Index) -> str:
    flat = faiss.downcast_index(flat)
    if isinstance(flat, faiss.IndexScalarQuantizer):
        return "fp16" if flat.sq.qtype == faiss.ScalarQuantizer.QT_fp16 else "sq8"
    return "float32"


@dataclass(frozen=True)
class CodeScorer:
    """Inner products of queries with 8-bit or fp16 scalar codes, read by id in place from FAISS's code array
    (no decoded copy): an 8-bit code c decodes to vmin + (c + 0.5) / 255 * vdiff per dimension, so q.x is an
    affine function of the raw bytes, one uint8 matrix product (same scores as FAISS's decoder)."""

    codes: np.ndarray                 # (n, d) uint8 or float16, a view of the index's own codes
    weights: np.ndarray | None        # sq8: vdiff / 255 per dimension
    offset: np.ndarray | None         # sq8: vmin + 0.5 * vdiff / 255 per dimension

    @classmethod
    def of(cls, flat: faiss.Index) -> CodeScorer | None:
        flat = faiss.downcast_index(flat)
        if not isinstance(flat, faiss.IndexScalarQuantizer):
            return None
        n, d, size = int(flat.ntotal), int(flat.d), int(flat.code_size)
        raw = faiss.rev_swig_ptr(flat.codes.data(), n * size).reshape(n, size)
        qtype = flat.sq.qtype
        if qtype == faiss.ScalarQuantizer.QT_fp16:
            return cls(raw.view(np.float16), None, None)
        if qtype != faiss.ScalarQuantizer.QT_8bit or size != d:
            return None
        trained = faiss.vector_to_array(flat.sq.trained).astype(np.float32)
        vmin, vdiff = trained[:d], trained[d:2 * d]
        return cls(raw, vdiff / 255.0, vmin + 0.5 * vdiff / 255.0)

    def scores(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(len(queries), len(ids)) inner products with the decoded rows ``ids``.

        Rows are gathered (``take``: 2.5x faster than fancy indexing on 2-D codes), widened to float32 and scored
        GATHER_CHUNK at a time, so the float32 copy stays in cache: 100k of 1M 128-d 8-bit rows cost 13 ms
        against 38 ms for one whole gather (one thread, same run, load 4)."""
        out = np.empty((len(queries), len(ids)), dtype=np.float32)
        weighted = queries if self.weights is None else queries * self.weights
        for start in range(0, len(ids), GATHER_CHUNK):
            rows = self.codes.take(ids[start:start + GATHER_CHUNK], axis=0).astype(np.float32)
            out[:, start:start + len(rows)] = weighted @ rows.T
        if self.offset is not None:
            out += (queries @ self.offset)[:, None]
        return out


@dataclass(frozen=True)
class Changes:
    """What happened since the build: dead base ids (mask) and added rows. Replaced, never mutated."""

    dead: np.ndarray          # bool, one per base id
    dead_count: int
    ids: np.ndarray           # int64, sorted ids of added rows
    vectors: np.ndarray       # float32 (len(ids), dim)

    @classmethod
    def none(cls, base_count: int, dim: int) -> Changes:
        return cls(np.zeros(base_count, dtype=bool), 0, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))


class FaissCpuStore(BaseVectorStore):
    """Compact flat codes + an ANN index on the CPU; filters go to FAISS as id selectors."""

    supports_filter = True

    def __init__(self, flat: faiss.Index, index: VectorIndex | None = None, *, index_file_bytes: int = 0) -> None:
        self.flat = flat
        self.dim = int(flat.d)
        self.base_count = int(flat.ntotal)
        self.index = index if index is not None else VectorIndex(flat, IndexSpec("Flat"))
        if self.index.ntotal != self.base_count or self.index.dim != self.dim:
            raise ValueError(f"index holds {self.index.ntotal} vectors of dimension {self.index.dim}, the flat store "
                             f"{self.base_count} of dimension {self.dim}")
        self.code = flat_code(flat)
        self._separate = index is not None
        self._flat_in_index = index is not None and refine_flat(index.index) is not None
        ivf = ivf_layer(self.index.index) if self.spec.is_ivf else None
        self._ivf_nlist = int(ivf.nlist) if ivf is not None else 0
        self._index_bytes = index_file_bytes
        # float32 flat vectors are scored in place by id (no gather, no copy): a view of FAISS's own array
        self._xb = faiss.rev_swig_ptr(faiss.downcast_index(flat).get_xb(), self.base_count * self.dim).reshape(
            self.base_count, self.dim) if self.code == "float32" and self.base_count else None
        self._codes = CodeScorer.of(flat) if self._xb is None and self.base_count else None
        self._changes = Changes.none(self.base_count, self.dim)
        self._write_lock = threading.Lock()

    @property
    def spec(self) -> IndexSpec:
        return self.index.spec

    @property
    def separate_index(self) -> bool:
        """Whether the ANN index is a structure of its own (not exact search over the flat codes)."""
        return self._separate

    # --- sizes --------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        changes = self._changes
        return self.base_count - changes.dead_count + len(changes.ids)

    @property
    def memory_bytes(self) -> int:
        changes = self._changes
        flat = int(self.flat.sa_code_size()) * self.base_count
        index = self._index_bytes if self.separate_index else 0
        if self._flat_in_index:  # the index file holds the flat codes too (its refine step)
            index = max(0, index - flat)
        return flat + index + changes.dead.nbytes + changes.vectors.nbytes

    def prefers_exact(self, allowed: int) -> bool:
        """Whether exact scoring of ``allowed`` ids costs less than the ANN search under that filter."""
        if not self.separate_index:
            return True
        return allowed <= self._scanned(allowed / max(self.base_count, 1), None)[1] * EXACT_PER_SCANNED

    def _scanned(self, selectivity: float, nprobe: int | None) -> tuple[int, float]:
        """(nprobe, vectors scanned) of an IVF search under a filter of ``selectivity``: the nprobe measured at
        build time to keep the recall target under such a filter (``IndexSpec.nprobe_for``), since a filter's
        nearest allowed vectors lie further out; an explicit ``nprobe`` grows with 1/sqrt(selectivity)."""
        if not self._ivf_nlist:
            return nprobe or self.spec.nprobe, float(self.base_count)
        if nprobe:
            nprobe = min(self._ivf_nlist, math.ceil(nprobe / math.sqrt(max(selectivity, 1e-9))))
        else:
            nprobe = self.spec.nprobe_for(selectivity, self._ivf_nlist)
        return nprobe, nprobe * self.base_count / self._ivf_nlist

    # --- search -------------------------------------------------------------------------------------------
    def _base_filter(self, allowed: IdFilter | None, changes: Changes) -> IdFilter | None:
        """The allowed live base ids (None: every base id, nothing removed)."""
        if allowed is None:
            return None if changes.dead_count == 0 else IdFilter.from_mask(~changes.dead)
        if allowed.has_mask:
            mask = allowed.mask(self.base_count)
            if np.count_nonzero(mask) == self.base_count:  # every base id allowed (a category filter of all)
                return self._base_filter(None, changes)
            return IdFilter.from_mask(mask & ~changes.dead if changes.dead_count else mask)
        ids = allowed.ids[: np.searchsorted(allowed.ids, self.base_count)]
        if len(ids) == self.base_count:  # sorted and unique: every base id
            return self._base_filter(None, changes)
        if changes.dead_count:
            ids = ids[~changes.dead[ids]]
        return IdFilter(ids=ids)

    def _search(self, queries: np.ndarray, k: int, allowed: IdFilter | None,
                params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        changes = self._changes
        parts = []
        base = self._base_filter(allowed, changes)
        if self.base_count and (base is None or len(base)):
            if params.exact:
                parts.append(self._exact(queries, k, base))
            else:
                parts.append(self._ann(queries, k, base, params))
        if len(changes.ids):
            keep = slice(None) if allowed is None else allowed.contains(changes.ids)
            if len(changes.ids[keep]):
                parts.append(exact_top_k(changes.vectors[keep], queries, k, changes.ids[keep]))
        if not parts:
            return empty_result(len(queries), k)
        return merge_top_k(parts, k)

    def _ann(self, queries: np.ndarray, k: int, base: IdFilter | None,
             params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        """ANN search; a filter raises nprobe to what was measured for its selectivity, and where that would scan more vectors
        than the filter allows, exact scoring of the allowed ones is cheaper and exact."""
        nprobe = params.nprobe or self.spec.nprobe
        if base is not None and self.base_count:
            nprobe, scanned = self._scanned(len(base) / self.base_count, params.nprobe)
            if len(base) <= scanned * EXACT_PER_SCANNED and params.complete:
                return self._exact(queries, k, base)
        return self.index.search(queries, k, allowed_ids=base, nprobe=nprobe, complete=params.complete)

    def _exact(self, queries: np.ndarray, k: int, base: IdFilter | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the compact codes: gather a small allowed set, scan with a bitmap otherwise."""
        if self._xb is not None:  # float32: score the allowed rows in place
            return exact_top_k_by_id(self._xb, queries, k, None if base is None else base.ids)
        if base is not None and len(base) * GATHER_FRACTION <= self.base_count and self._codes is not None:
            ids = base.ids
            return top_k_of(self._codes.scores(queries, ids), ids, k)
        keep: list[object] = []
        selector = None if base is None else id_selector(base, self.base_count, keep)
        return faiss_search(self.flat, queries, min(k, self.base_count), faiss.SearchParameters(sel=selector))

    # --- changes ------------------------------------------------------------------------------------------
    def _add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        with self._write_lock:
            old = self._changes
            dead = old.dead
            replaced = ids[ids < self.base_count]
            if len(replaced):
                dead = dead.copy()
                dead[replaced] = True
            keep = ~np.isin(old.ids, ids)
            all_ids = np.concatenate([old.ids[keep], ids])
            all_vectors = np.concatenate([old.vectors[keep], vectors])
            order = np.argsort(all_ids, kind="stable")
            self._changes = Changes(dead, int(dead.sum()), all_ids[order], all_vectors[order])

    def _remove(self, ids: np.ndarray) -> int:
        with self._write_lock:
            old = self._changes
            base = ids[ids < self.base_count]
            newly_dead = base[~old.dead[base]]
            dead = old.dead
            if len(newly_dead):
                dead = dead.copy()
                dead[newly_dead] = True
            gone = np.isin(old.ids, ids)
            removed = len(newly_dead) + int(gone.sum())
            if removed:
                self._changes = Changes(dead, old.dead_count + len(newly_dead), old.ids[~gone], old.vectors[~gone])
            return removed

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        changes = self._changes
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        base = ids < self.base_count
        if base.any():
            base_ids = ids[base]
            if changes.dead[base_ids].any():
                raise KeyError(f"id {int(base_ids[changes.dead[base_ids]][0])} was removed")
            out[base] = self.flat.reconstruct_batch(base_ids)
        if (~base).any():
            position = np.searchsorted(changes.ids, ids[~base])
            found = (position < len(changes.ids)) & (changes.ids[np.minimum(position, len(changes.ids) - 1)]
                                                     == ids[~base]) if len(changes.ids) else np.zeros(len(position), bool)
            if not found.all():
                raise KeyError(f"id {int(ids[~base][~found][0])} is not in the store")
            out[~base] = changes.vectors[position]
        return out

    # --- files --------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the store to directory ``path`` (replaced as a whole: readers see the old or the new one)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if not self._flat_in_index:
            faiss.write_index(self.flat, str(tmp / FLAT_FILE))
        if self.separate_index:
            self.index.save(tmp / INDEX_FILE)
        changes = self._changes
        if changes.dead_count or len(changes.ids):
            np.savez(tmp / CHANGES_FILE, dead=np.flatnonzero(changes.dead), ids=changes.ids, vectors=changes.vectors)
        meta = {"factory": self.spec.factory, "nprobe": self.spec.nprobe, "filtered_nprobe": self.spec.filtered,
                "code": self.code, "dim": self.dim,
                "count": self.base_count}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Self:
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text())
        index = None
        index_bytes = 0
        if (path / INDEX_FILE).is_file():
            filtered = tuple((float(s), int(p)) for s, p in meta.get("filtered_nprobe", ()))
            index = VectorIndex.load(path / INDEX_FILE, IndexSpec(meta["factory"], int(meta["nprobe"]), filtered))
            index_bytes = (path / INDEX_FILE).stat().st_size
        flat = refine_flat(index.index) if index is not None else None
        if flat is None:
            flat = faiss.read_index(str(path / FLAT_FILE))
        store = cls.from_parts(flat, index, index_file_bytes=index_bytes)
        if (path / CHANGES_FILE).is_file():
            with np.load(path / CHANGES_FILE) as saved:
                store.remove(saved["dead"])
                if len(saved["ids"]):
                    store.add(saved["vectors"], saved["ids"])
        return store

    @classmethod
    def from_parts(cls, flat: faiss.Index, index: VectorIndex | None, *, index_file_bytes: int = 0) -> Self:
        """A store over an existing flat store and ANN index (None: exact search over ``flat``)."""
        return cls(flat, index, index_file_bytes=index_file_bytes)


def build_store(vectors: np.ndarray, plan: IndexChoice, *, target: float = TARGET_RECALL,
                queries: int = 500) -> tuple[FaissCpuStore, IndexReport]:
    """Build ``plan``'s index over ``vectors`` tuned to ``target`` recall@10, and the flat codes beside it
    (inside it, as its refine step, for IVF-PQ + refine)."""
    index, report = build_tuned(vectors, plan, target=target, queries=queries)
    if plan.kind == "flat":
        return FaissCpuStore.from_parts(index.index, None), report
    flat = refine_flat(index.index)
    if flat is None:
        flat = build_flat(vectors, plan.code)
    return FaissCpuStore.from_parts(flat, index, index_file_bytes=plan.memory_bytes), report


class FaissGpuStore(FaissCpuStore):
    """The ANN index on a GPU (when FAISS sees one); filters by over-fetching, exact scoring on the CPU codes."""

    supports_filter = False

    def __init__(self, flat: faiss.Index, index: VectorIndex | None = None, *, index_file_bytes: int = 0) -> None:
        super().__init__(flat, index, index_file_bytes=index_file_bytes)
        cpu = self.index
        moved = cpu.to_gpu_if_available()
        if moved is cpu:
            log.info("no GPU for FAISS: the GPU store runs its over-fetch path on the CPU index")
            # Same contract as on a GPU: no selector on the ANN index, the CPU copy applies it past the cap.
            moved = VectorIndex(cpu.index, cpu.spec, supports_selector=False, cpu_index=cpu.index)
        self.index = moved
        self.on_gpu = moved.on_gpu
