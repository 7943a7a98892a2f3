"""Changes between full rebuilds: added/updated items with their vectors, and tombstones for dead base rows.

Each generation has at most one ``delta.db`` (SQLite, WAL) beside its catalog. Writers (the service's admin
endpoints, ``lookalike index --incremental``) and readers (the service) are separate connections; a
``version`` counter tells readers when to reload their in-memory snapshot. Delta rows get vector ids above
every base id, so base and delta ids never collide, and never reused, so an id seen in an older snapshot
never names another item.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.catalog import CatalogRow
from indexer.catalog_store import ITEM_COLUMNS, StoredItem, fts_query, row_digest

DELTA_DB = "delta.db"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS delta_items ({ITEM_COLUMNS},
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (id INTEGER PRIMARY KEY);  -- base vector ids that are deleted or replaced
CREATE VIRTUAL TABLE IF NOT EXISTS delta_fts USING fts5(title, category, description,
                                                         tokenize='unicode61 remove_diacritics 2');
"""


@dataclass(frozen=True)
class DeltaSnapshot:
    """The delta as a reader sees it at one version."""

    version: int
    ids: np.ndarray  # int64, vector ids of live delta rows
    vectors: np.ndarray  # float32 (n, dim)
    items: dict[int, StoredItem]
    by_item_id: dict[str, int]
    tombstones: np.ndarray  # int64, sorted base ids that are dead


@dataclass(frozen=True)
class DeltaChange:
    """What one committed write did: the item's new vector id (upserts), whether it replaced a live version,
    and the delta version it committed as (versions order the writes: a replay in version order is exact)."""

    id: int | None
    replaced: bool
    version: int


def _connect(path: Path) -> sqlite3.Connection:
    """An autocommit connection (transactions are explicit) in WAL mode, waiting up to 30 s for a lock."""
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


class DeltaLog:
    """Read and write one generation's delta.

    One writer at a time: writes take a lock (threads of this process) and ``BEGIN IMMEDIATE`` (other
    processes, e.g. ``lookalike index --incremental``), and allocate vector ids inside their transaction from
    a counter that never goes back, so an id is never reused. Readers use their own connection and read
    every snapshot in one transaction, so they never see half a write.
    """

    def __init__(self, generation_dir: Path, base_count: int, dim: int) -> None:
        self.path = generation_dir / DELTA_DB
        self.base_count = base_count
        self.dim = dim
        self._writer = _connect(self.path)
        self._writer.executescript(SCHEMA)
        self._reader = _connect(self.path)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                yield self._reader
            finally:
                self._reader.execute("COMMIT")

    @staticmethod
    def _meta(conn: sqlite3.Connection, key: str) -> int | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else None

    def version(self) -> int:
        with self._read() as conn:
            return self._meta(conn, "version") or 0

    def _bump(self, conn: sqlite3.Connection) -> int:
        conn.execute("INSERT INTO meta(key, value) VALUES ('version', 1) "
                     "ON CONFLICT(key) DO UPDATE SET value = value + 1")
        return self._meta(conn, "version") or 0

    def _next_id(self, conn: sqlite3.Connection) -> int:
        """A fresh vector id above every base id and every id ever handed out in this delta."""
        stored = self._meta(conn, "next_id")
        if stored is None:
            top = conn.execute("SELECT MAX(id) FROM delta_items").fetchone()[0]
            stored = max(self.base_count, (top or 0) + 1)
        conn.execute("INSERT INTO meta(key, value) VALUES ('next_id', ?) ON CONFLICT(key) DO UPDATE SET value = ?",
                     (stored + 1, stored + 1))
        return stored

    @staticmethod
    def _drop_delta_row(conn: sqlite3.Connection, item_id: str) -> bool:
        row = conn.execute("SELECT id FROM delta_items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM delta_items WHERE id = ?", (row[0],))
        conn.execute("DELETE FROM delta_fts WHERE rowid = ?", (row[0],))
        return True

    @staticmethod
    def _tombstone(conn: sqlite3.Connection, base_id: int | None) -> bool:
        """Tombstone a base row; True when it was live until now."""
        if base_id is None:
            return False
        return conn.execute("INSERT OR IGNORE INTO tombstones(id) VALUES (?)", (base_id,)).rowcount > 0

    def upsert(self, row: CatalogRow, content_hash: str, vector: np.ndarray, base_id: int | None) -> DeltaChange:
        """Add or replace an item in one transaction: the old version serves until the new one is committed.

        ``base_id`` is the item's row in the base catalog if it has one (tombstoned or not); it is tombstoned.
        """
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"vector has dimension {vector.shape[0]}, the generation {self.dim}")
        with self._write() as conn:
            replaced = self._drop_delta_row(conn, row.item_id)
            replaced = self._tombstone(conn, base_id) or replaced
            new_id = self._next_id(conn)
            conn.execute(
                "INSERT INTO delta_items (id, item_id, product_id, title, category, description, image, content_hash,"
                " attributes, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id, row.item_id, row.product_id, row.title, row.category, row.description, str(row.image),
                 content_hash, json.dumps(row.attributes, sort_keys=True), vector.tobytes()))
            conn.execute("INSERT INTO delta_fts(rowid, title, category, description) VALUES (?, ?, ?, ?)",
                         (new_id, row.title, row.category, row.description))
            version = self._bump(conn)
        return DeltaChange(new_id, replaced, version)

    def delete(self, item_id: str, base_id: int | None) -> DeltaChange | None:
        """Delete an item wherever it lives, in one transaction; None when it was not live."""
        with self._write() as conn:
            dropped = self._drop_delta_row(conn, item_id)
            dropped = self._tombstone(conn, base_id) or dropped
            version = self._bump(conn) if dropped else 0
        return DeltaChange(None, True, version) if dropped else None

    def fingerprints(self) -> dict[str, str]:
        """item_id -> row digest of the live delta rows (see indexer.catalog_store.row_digest)."""
        with self._read() as conn:
            rows = conn.execute("SELECT item_id, product_id, title, category, description, content_hash, attributes "
                                "FROM delta_items").fetchall()
        return {r[0]: row_digest(*r[1:]) for r in rows}

    def tombstoned(self) -> set[int]:
        with self._read() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM tombstones")}

    def keyword_ids(self, text: str) -> list[tuple[int, float]]:
        query = fts_query(text)
        if not query:
            return []
        with self._read() as conn:
            rows = conn.execute("SELECT rowid, bm25(delta_fts) FROM delta_fts WHERE delta_fts MATCH ? ORDER BY 2",
                                (query,)).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    def snapshot(self) -> DeltaSnapshot:
        with self._read() as conn:  # one read transaction: rows and tombstones of the same version
            version = self._meta(conn, "version") or 0
            cursor = conn.execute("SELECT * FROM delta_items ORDER BY id")
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
            dead = conn.execute("SELECT id FROM tombstones ORDER BY id").fetchall()
        items: dict[int, StoredItem] = {}
        vectors = np.zeros((len(rows), self.dim), dtype=np.float32)
        for n, raw in enumerate(rows):
            r = dict(zip(names, raw, strict=True))
            items[r["id"]] = StoredItem(r["id"], r["item_id"], r["product_id"], r["title"], r["category"], r["image"],
                                        json.loads(r["attributes"]))
            vectors[n] = np.frombuffer(r["vector"], dtype=np.float32)
        ids = np.fromiter(items, dtype=np.int64, count=len(items))
        return DeltaSnapshot(version, ids, vectors, items, {it.item_id: i for i, it in items.items()},
                             np.array([d[0] for d in dead], dtype=np.int64))
