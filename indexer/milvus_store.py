"""Milvus behind the ``VectorStore`` seam: one generation = one Milvus collection.

A collection holds the generation's rows: ``id`` (int64 primary key, the dense vector id), ``vector`` (float
vector, inner product), ``category`` (the partition key, so a category filter prunes partitions) and
``product_id``. Its properties record the model and dimension that made it; opening it for another model is
refused. The served generation is also a Milvus alias (``<prefix>_served``), moved by ``alter_alias`` when a
generation is published or rolled back, so any Milvus client can follow what Lookalike serves; the service
itself searches the collection its loaded generation names, so its catalog rows and vectors always match.

The URI picks the engine and nothing else changes:
- a file path (``data/milvus.db``): embedded milvus-lite, in this process (one process at a time holds the file;
  a functional stand-in that loops in Python over the keys, not an engine to measure speed with);
- ``http://host:19530``: a Milvus standalone or cluster (sharded, replicated; HNSW index).

Filters become Milvus expressions: ``id in [...]`` for an id set. Changes between rebuilds are upserts and
deletes in the collection itself (no tombstones merged at query time). Collections are created with strong
consistency, so a search sees every write acknowledged before it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from indexer.exact import exact_top_k
from indexer.generations import GenerationError
from indexer.vector_index import IndexSpec
from indexer.vector_store import BaseVectorStore, IdFilter, SearchParams, empty_result, merge_top_k

log = logging.getLogger(__name__)

MAX_TOPK = 16_384        # the most results a Milvus server returns for one query
WRITE_BATCH = 2_000      # rows per insert / upsert request
READ_BATCH = 4_096       # ids per query request
GATHER_LIMIT = 20_000    # exact search on a server: allowed sets up to this size are gathered and scored here
SERVER_EF = 128          # HNSW ef on a server (raised to k when k is larger)
MAX_VARCHAR = 512
META_FILE = "milvus.json"
MODEL_PROPERTY = "lookalike.model_id"
DIM_PROPERTY = "lookalike.dim"

RowInfo = Callable[[np.ndarray], tuple[list[str], list[str]]]  # ids -> (categories, product ids)


def is_embedded(uri: str) -> bool:
    """A file path (milvus-lite) rather than a server address."""
    return "://" not in uri


def connect(uri: str, token: str | None = None) -> Any:
    """A ``pymilvus.MilvusClient``: embedded milvus-lite for a file path (created with its folder), else a server."""
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise RuntimeError("the milvus backend needs pymilvus: pip install 'lookalike[milvus]'") from None
    if is_embedded(uri):
        if not uri.endswith(".db"):
            raise ValueError(f"an embedded Milvus URI is a file path ending in .db, not {uri!r}")
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        return MilvusClient(uri=uri)
    return MilvusClient(uri=uri, token=token or "")


@dataclass(frozen=True)
class MilvusTarget:
    """Which Milvus to use (from the settings): the URI, its token and the collections' name prefix."""

    uri: str
    token: str | None = None
    prefix: str = "lookalike"

    @property
    def embedded(self) -> bool:
        return is_embedded(self.uri)

    def connect(self) -> Any:
        """A new client; whoever takes it closes it (a store closes the client it was opened with)."""
        return connect(self.uri, self.token)

    @contextmanager
    def client(self) -> Iterator[Any]:
        """A client for a few calls, closed afterwards."""
        client = self.connect()
        try:
            yield client
        finally:
            client.close()

    @property
    def alias(self) -> str:
        return served_alias(self.prefix)

    def collection(self, generation: str) -> str:
        return collection_name(self.prefix, generation)


def require_target(target: MilvusTarget | None, generation: str) -> MilvusTarget:
    """``target``, or GenerationError when a generation that keeps its vectors in Milvus meets no Milvus setting."""
    if target is None:
        raise GenerationError(f"generation {generation} keeps its vectors in Milvus; set "
                              "LOOKALIKE_VECTOR_BACKEND=milvus and LOOKALIKE_MILVUS_URI")
    return target


def collection_name(prefix: str, generation: str) -> str:
    """``gen-000007`` -> ``<prefix>_gen_000007`` (Milvus names take letters, digits and underscores)."""
    return f"{prefix}_{generation.replace('-', '_')}"


def served_alias(prefix: str) -> str:
    return f"{prefix}_served"


def point_alias(client: Any, alias: str, collection: str) -> None:
    """Make ``alias`` name ``collection``: created the first time, then moved atomically with ``alter_alias``."""
    if alias in client.list_aliases().get("aliases", []):
        client.alter_alias(collection_name=collection, alias=alias)
    else:
        client.create_alias(collection_name=collection, alias=alias)


def drop_collections(client: Any, names: Iterable[str]) -> list[str]:
    """Drop the named collections that exist (pruned generations); returns those dropped."""
    dropped = [n for n in names if client.has_collection(n)]
    for name in dropped:
        client.drop_collection(name)
    return dropped


def _text(value: object) -> str:
    """A VARCHAR value within the schema's length (bytes; longer values are cut, they only label rows)."""
    data = str(value).encode()
    return data[:MAX_VARCHAR].decode(errors="ignore") if len(data) > MAX_VARCHAR else str(value)


def _chunks(array: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), size):
        yield array[start:start + size]


def id_expression(ids: np.ndarray) -> str:
    return f"id in [{','.join(map(str, ids.tolist()))}]"


class MilvusStore(BaseVectorStore):
    """One generation's vectors in one Milvus collection (see the module docstring)."""

    supports_filter = True

    def __init__(self, client: Any, collection: str, dim: int, *, embedded: bool,
                 row_info: RowInfo | None = None) -> None:
        self.client = client
        self.collection = collection
        self.dim = int(dim)
        self.embedded = embedded
        self.row_info = row_info  # categories / product ids of rows added through ``add`` (the delta)
        self._lock = threading.Lock()
        self._count = self._count_rows()

    # --- collections ----------------------------------------------------------------------------------------
    @classmethod
    def create(cls, client: Any, collection: str, dim: int, *, model_id: str, embedded: bool,
               row_info: RowInfo | None = None) -> Self:
        """A new, empty collection (an existing one of the same name is reused: a resumed build fills it on).

        milvus-lite gets a FLAT index (exact; it scans anyway), a server an HNSW graph.
        """
        from pymilvus import DataType

        if client.has_collection(collection):
            store = cls.open(client, collection, model_id=model_id, embedded=embedded, row_info=row_info)
            if store.dim != dim:
                raise GenerationError(f"Milvus collection {collection} holds {store.dim}-d vectors, not {dim}-d")
            return store
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("category", DataType.VARCHAR, max_length=MAX_VARCHAR, is_partition_key=True)
        schema.add_field("product_id", DataType.VARCHAR, max_length=MAX_VARCHAR)
        index = client.prepare_index_params()
        if embedded:
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
        client.create_collection(collection, schema=schema, index_params=index, consistency_level="Strong",
                                 properties={MODEL_PROPERTY: model_id, DIM_PROPERTY: str(dim)})
        return cls(client, collection, dim, embedded=embedded, row_info=row_info)

    @classmethod
    def open(cls, client: Any, collection: str, *, model_id: str | None, embedded: bool,
             row_info: RowInfo | None = None) -> Self:
        """An existing collection, loaded for search; refused when another model (or dimension) made it."""
        if not client.has_collection(collection):
            raise GenerationError(f"Milvus has no collection {collection}")
        described = client.describe_collection(collection)
        properties = described.get("properties", {})
        made_by = properties.get(MODEL_PROPERTY)
        if model_id is not None and made_by != model_id:
            raise GenerationError(f"Milvus collection {collection} was made by model {made_by}, not {model_id}")
        dim = next(int(f["params"]["dim"]) for f in described["fields"] if f["name"] == "vector")
        client.load_collection(collection)
        return cls(client, collection, dim, embedded=embedded, row_info=row_info)

    @property
    def spec(self) -> IndexSpec:
        """What Milvus searches with: FLAT in milvus-lite (exact), HNSW on a server."""
        return IndexSpec(f"milvus:{'FLAT' if self.embedded else 'HNSW'}")

    def flush(self) -> None:
        """Seal what was written (after a bulk load): a server builds its index on sealed segments, and
        milvus-lite scans unflushed rows one by one in Python (about 25x slower at 10k rows)."""
        self.client.flush(self.collection)

    def refresh(self) -> None:
        """Count the rows again (after writes through another client)."""
        with self._lock:
            self._count = self._count_rows()

    def _count_rows(self) -> int:
        rows = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    # --- sizes ----------------------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return self._count

    @property
    def memory_bytes(self) -> int:
        """An estimate of what the collection holds (float32 vectors and ids); it lives in Milvus, not here."""
        return self._count * (4 * self.dim + 8)

    # --- search ---------------------------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int, allowed: IdFilter | None,
                params: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        limit = min(k, self._count if allowed is None else min(len(allowed), self._count))
        if limit < 1:
            return empty_result(len(queries), k)
        gather = allowed is not None and len(allowed) <= GATHER_LIMIT and (
            (params.exact and not self.embedded) or limit > MAX_TOPK and not self.embedded)
        if gather:
            found, vectors = self._rows(allowed.ids)
            return exact_top_k(vectors, queries, k, found)
        if limit > MAX_TOPK and not self.embedded:
            raise ValueError(f"Milvus returns at most {MAX_TOPK} results per query; asked for {limit}")
        expression = "" if allowed is None else id_expression(allowed.ids)
        search_params: dict[str, Any] = {"metric_type": "IP"}
        if not self.embedded:
            search_params["params"] = {"ef": max(SERVER_EF, limit)}
        hits = self.client.search(self.collection, data=queries.tolist(), limit=limit, filter=expression,
                                  output_fields=["id"], search_params=search_params)
        scores, ids = empty_result(len(queries), k)
        for row, found in enumerate(hits):
            for col, hit in enumerate(found[:k]):
                ids[row, col] = int(hit["id"])
                scores[row, col] = float(hit["distance"])
        return merge_top_k([(scores, ids)], k)  # Milvus orders ties arbitrarily: smaller id first, as everywhere

    # --- changes --------------------------------------------------------------------------------------------
    def upsert(self, vectors: np.ndarray, ids: np.ndarray, categories: Sequence[str] | None = None,
               product_ids: Sequence[str] | None = None) -> None:
        """Write rows (new or replacing), in batches; the indexer's path (with metadata) and ``add``'s."""
        vectors = self._queries(vectors)
        ids = self._ids(ids)
        if categories is None or product_ids is None:
            categories, product_ids = self.row_info(ids) if self.row_info else ([""] * len(ids), [""] * len(ids))
        with self._lock:
            for start in range(0, len(ids), WRITE_BATCH):
                stop = min(len(ids), start + WRITE_BATCH)
                rows = [{"id": int(ids[n]), "vector": vectors[n].tolist(), "category": _text(categories[n]),
                         "product_id": _text(product_ids[n])} for n in range(start, stop)]
                self.client.upsert(self.collection, rows)
            self._count = self._count_rows()  # once per call: new ids and replaced ones count differently

    def _add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.upsert(vectors, ids)

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the collection holds, sorted."""
        found: list[int] = []
        for chunk in _chunks(ids, READ_BATCH):
            rows = self.client.query(self.collection, filter=id_expression(chunk), output_fields=["id"])
            found.extend(int(r["id"]) for r in rows)
        return np.array(sorted(found), dtype=np.int64)

    def _remove(self, ids: np.ndarray) -> int:
        with self._lock:
            present = self._existing(ids)
            for chunk in _chunks(present, READ_BATCH):
                self.client.delete(self.collection, ids=chunk.tolist())
            self._count -= len(present)
            return len(present)

    def _rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``ids`` the collection holds, sorted and distinct; their vectors), in one read per chunk."""
        wanted = np.unique(ids)
        found = np.empty((len(wanted), self.dim), dtype=np.float32)
        seen = np.zeros(len(wanted), dtype=bool)
        for chunk in _chunks(wanted, READ_BATCH):
            for row in self.client.query(self.collection, filter=id_expression(chunk), output_fields=["vector"]):
                n = int(np.searchsorted(wanted, int(row["id"])))
                found[n], seen[n] = np.asarray(row["vector"], dtype=np.float32), True
        return wanted[seen], found[seen]

    def _vectors(self, ids: np.ndarray) -> np.ndarray:
        present, vectors = self._rows(ids)
        missing = np.setdiff1d(ids, present)
        if len(missing):
            raise KeyError(f"id {int(missing[0])} is not in Milvus collection {self.collection}")
        return vectors[np.searchsorted(present, ids)]

    def close(self) -> None:
        """Release this store's client (pymilvus counts a connection's clients and closes it with the last); a
        replaced generation's store would otherwise keep its gRPC channel and threads for the life of the
        service."""
        self.client.close()

    # --- files ----------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write where the vectors are (the collection; Milvus keeps them) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"backend": "milvus", "collection": self.collection, "dim": self.dim, "count": self._count}
        tmp = path / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(path / META_FILE)

    @classmethod
    def load(cls, path: Path, *, uri: str = "data/milvus.db", token: str | None = None,
             model_id: str | None = None, row_info: RowInfo | None = None) -> Self:
        """Open the collection named in ``path``'s milvus.json on the Milvus at ``uri`` (the settings' URI, so
        the same generation can be served from milvus-lite or a cluster holding the same collection)."""
        meta = read_meta(path)
        return cls.open(connect(uri, token), meta["collection"], model_id=model_id, embedded=is_embedded(uri),
                        row_info=row_info)


def read_meta(path: Path) -> dict[str, Any]:
    return json.loads((Path(path) / META_FILE).read_text())


def is_milvus_store(path: Path) -> bool:
    return (Path(path) / META_FILE).is_file()
