"""Changes between full rebuilds: added/updated items with their vectors, and tombstones for dead base rows.

Each generation has at most one ``delta.db`` (SQLite, WAL) beside its catalog. Writers (the service's admin
endpoints, ``lookalike index --incremental``) and readers (the service) are separate connections; a
``version`` counter tells readers when to reload their in-memory snapshot. Delta rows get vector ids above
every base id, so base and delta ids never collide.
"""

from __future__ import annotations

import json
import sqlite3
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


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    return conn


class DeltaLog:
    """Read and write one generation's delta. Writes are transactions; readers take snapshots."""

    def __init__(self, generation_dir: Path, base_count: int, dim: int) -> None:
        self.path = generation_dir / DELTA_DB
        self.base_count = base_count
        self.dim = dim
        self._conn = _connect(self.path)

    def close(self) -> None:
        self._conn.close()

    def version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def _bump(self) -> None:
        self._conn.execute("INSERT INTO meta(key, value) VALUES ('version', 1) "
                           "ON CONFLICT(key) DO UPDATE SET value = value + 1")

    def _drop_delta_row(self, item_id: str) -> bool:
        row = self._conn.execute("SELECT id FROM delta_items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            return False
        self._conn.execute("DELETE FROM delta_items WHERE id = ?", (row[0],))
        self._conn.execute("DELETE FROM delta_fts WHERE rowid = ?", (row[0],))
        return True

    def upsert(self, row: CatalogRow, content_hash: str, vector: np.ndarray, base_id: int | None) -> int:
        """Add or replace an item; a replaced base row is tombstoned. Returns the new vector id."""
        vector = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"vector has dimension {vector.shape[0]}, the generation {self.dim}")
        with self._conn:
            self._drop_delta_row(row.item_id)
            if base_id is not None:
                self._conn.execute("INSERT OR IGNORE INTO tombstones(id) VALUES (?)", (base_id,))
            top = self._conn.execute("SELECT MAX(id) FROM delta_items").fetchone()[0]
            new_id = max(self.base_count, (top or 0) + 1)
            self._conn.execute(
                "INSERT INTO delta_items (id, item_id, product_id, title, category, description, image, content_hash,"
                " attributes, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (new_id, row.item_id, row.product_id, row.title, row.category, row.description, str(row.image),
                 content_hash, json.dumps(row.attributes, sort_keys=True), vector.tobytes()))
            self._conn.execute("INSERT INTO delta_fts(rowid, title, category, description) VALUES (?, ?, ?, ?)",
                               (new_id, row.title, row.category, row.description))
            self._bump()
        return new_id

    def delete(self, item_id: str, base_id: int | None) -> bool:
        """Delete an item wherever it lives; True when something was deleted."""
        with self._conn:
            dropped = self._drop_delta_row(item_id)
            if base_id is not None:
                dropped = self._conn.execute("INSERT OR IGNORE INTO tombstones(id) VALUES (?)", (base_id,)).rowcount > 0 or dropped
            if dropped:
                self._bump()
        return dropped

    def fingerprints(self) -> dict[str, str]:
        """item_id -> row digest of the live delta rows (see indexer.catalog_store.row_digest)."""
        rows = self._conn.execute("SELECT item_id, product_id, title, category, description, content_hash, attributes "
                                  "FROM delta_items").fetchall()
        return {r[0]: row_digest(*r[1:]) for r in rows}

    def tombstoned(self) -> set[int]:
        return {r[0] for r in self._conn.execute("SELECT id FROM tombstones")}

    def keyword_ids(self, text: str) -> list[tuple[int, float]]:
        query = fts_query(text)
        if not query:
            return []
        rows = self._conn.execute("SELECT rowid, bm25(delta_fts) FROM delta_fts WHERE delta_fts MATCH ? ORDER BY 2",
                                  (query,)).fetchall()
        return [(int(r[0]), -float(r[1])) for r in rows]

    def snapshot(self) -> DeltaSnapshot:
        with self._conn:  # one read transaction: rows and tombstones of the same version
            version = self.version()
            rows = self._conn.execute("SELECT * FROM delta_items ORDER BY id").fetchall()
            dead = self._conn.execute("SELECT id FROM tombstones ORDER BY id").fetchall()
        names = [d[0] for d in self._conn.execute("SELECT * FROM delta_items LIMIT 0").description]
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
