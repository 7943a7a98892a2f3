"""The catalog database of one generation: SQLite rows keyed by the dense vector id, with FTS5 keyword search."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from indexer.catalog import CatalogRow

# The columns of a catalog row, shared by the base catalog and the delta (indexer/delta.py).
ITEM_COLUMNS = """
    id INTEGER PRIMARY KEY,          -- the vector id in the FAISS index and in vectors.npy (or the delta)
    item_id TEXT NOT NULL UNIQUE,
    product_id TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    category TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    image TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    attributes TEXT NOT NULL DEFAULT '{}'"""
SCHEMA = f"""
CREATE TABLE items ({ITEM_COLUMNS}
);
CREATE INDEX items_product ON items(product_id);
CREATE INDEX items_category ON items(category);
CREATE VIRTUAL TABLE items_fts USING fts5(title, category, description, content='items', content_rowid='id',
                                          tokenize='unicode61 remove_diacritics 2');
CREATE TABLE keyword_postings (term TEXT PRIMARY KEY, ids BLOB NOT NULL) WITHOUT ROWID;
"""
# A keyword filter that matches 100k rows costs ~40 ms to fetch from FTS5 row by row; the same ids as one blob per
# FTS term (little-endian int32, sorted) cost a page read. Written once when the store is created, from FTS5's
# own vocabulary (so its tokens are FTS5's), and used only for queries whose words are plain ASCII letters and
# digits (those tokenize to themselves); any other query goes to FTS5.
PLAIN_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class StoredItem:
    """A catalog image as the service reports it."""

    id: int
    item_id: str
    product_id: str
    title: str
    category: str
    image: str
    attributes: dict[str, str] = field(default_factory=dict)


def row_digest(product_id: str, title: str, category: str, description: str, content_hash: str, attributes: str) -> str:
    """What decides whether an item changed: its image bytes and every metadata field."""
    return json.dumps([product_id, title, category, description, content_hash, json.loads(attributes)], sort_keys=True)


def query_words(text: str) -> list[str]:
    """The words of a keyword query, lower-cased (what ``fts_query`` and the postings both match)."""
    return re.findall(r"\w+", text.lower())


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: every word must match (prefix match on the last one)."""
    words = query_words(text)
    if not words:
        return ""
    quoted = [f'"{w}"' for w in words]
    quoted[-1] += "*"
    return " AND ".join(quoted)


def create_store(path: Path, rows: Sequence[CatalogRow], content_hashes: Sequence[str]) -> None:
    """Write a new catalog database; row i gets vector id i."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(SCHEMA)
        conn.executemany(
            "INSERT INTO items (id, item_id, product_id, title, category, description, image, content_hash, attributes)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ((i, r.item_id, r.product_id, r.title, r.category, r.description, str(r.image), h,
              json.dumps(r.attributes, sort_keys=True)) for i, (r, h) in enumerate(zip(rows, content_hashes, strict=True))),
        )
        conn.execute("INSERT INTO items_fts(items_fts) VALUES ('rebuild')")
        write_postings(conn)
        conn.commit()
    finally:
        conn.close()


def write_postings(conn: sqlite3.Connection) -> None:
    """Fill ``keyword_postings`` from the FTS index: each term's row ids as a sorted int32 blob."""
    conn.execute("CREATE VIRTUAL TABLE temp.fts_terms USING fts5vocab(main, items_fts, instance)")
    rows = conn.execute("SELECT term, group_concat(DISTINCT doc) FROM temp.fts_terms GROUP BY term")
    conn.executemany("INSERT INTO keyword_postings (term, ids) VALUES (?, ?)",
                     ((term, np.unique(np.array(ids.split(","), dtype=np.int64)).astype("<i4").tobytes())
                      for term, ids in rows))
    conn.execute("DROP TABLE temp.fts_terms")


def plain_words(text: str) -> list[str] | None:
    """``fts_query``'s words when each is plain ASCII letters/digits (FTS5 tokenizes them to themselves), else None."""
    words = query_words(text)
    return words if words and all(PLAIN_WORD.fullmatch(w) for w in words) else None


class CatalogStore:
    """Read-only access to a generation's catalog database, safe to share between request threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self.count = self._one("SELECT COUNT(*) FROM items")[0]
        self.has_postings = self._one("SELECT COUNT(*) FROM sqlite_master WHERE name = 'keyword_postings'")[0] > 0

    def close(self) -> None:
        self._conn.close()

    def _all(self, sql: str, params: Iterable[object] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _one(self, sql: str, params: Iterable[object] = ()) -> sqlite3.Row:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchone()

    @staticmethod
    def _item(row: sqlite3.Row) -> StoredItem:
        return StoredItem(row["id"], row["item_id"], row["product_id"], row["title"], row["category"], row["image"],
                          json.loads(row["attributes"]))

    def by_item_id(self, item_id: str) -> StoredItem | None:
        row = self._one("SELECT * FROM items WHERE item_id = ?", (item_id,))
        return self._item(row) if row else None

    def by_ids(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """Items for vector ids (one query, the ids passed as a JSON array)."""
        rows = self._all("SELECT * FROM items WHERE id IN (SELECT value FROM json_each(?))",
                         (json.dumps([int(i) for i in ids]),))
        return {row["id"]: self._item(row) for row in rows}

    def ids_for_item_ids(self, item_ids: Sequence[str]) -> dict[str, int]:
        """Vector ids of the given item ids; unknown ones are absent from the result."""
        rows = self._all("SELECT item_id, id FROM items WHERE item_id IN (SELECT value FROM json_each(?))",
                         (json.dumps(list(item_ids)),))
        return {row["item_id"]: row["id"] for row in rows}

    def keyword_ids(self, text: str, limit: int) -> list[tuple[int, float]]:
        """Ids matching the keywords with their BM25 relevance (higher is better), best first."""
        query = fts_query(text)
        if not query:
            return []
        rows = self._all("SELECT rowid, bm25(items_fts) AS rank FROM items_fts WHERE items_fts MATCH ? "
                         "ORDER BY rank LIMIT ?", (query, limit))
        return [(r["rowid"], -float(r["rank"])) for r in rows]

    def keyword_mask(self, text: str, size: int) -> np.ndarray:
        """Ids matching the keywords (as ``fts_query`` means them) as a mask of ``size``, unranked: from the
        postings when the words allow (an AND of terms, the last one a prefix), else from FTS5."""
        words = plain_words(text) if self.has_postings else None
        if words is None:
            mask = np.zeros(size, dtype=bool)
            mask[self.keyword_rowids(text)] = True
            return mask
        result: np.ndarray | None = None
        with self._lock:
            for n, word in enumerate(words):
                if n == len(words) - 1:  # prefix: every term from the word up to the next word in byte order
                    rows = self._conn.execute("SELECT ids FROM keyword_postings WHERE term >= ? AND term < ?",
                                              (word, word[:-1] + chr(ord(word[-1]) + 1)))
                else:
                    rows = self._conn.execute("SELECT ids FROM keyword_postings WHERE term = ?", (word,))
                hits = np.zeros(size, dtype=bool)
                for (blob,) in rows:
                    hits[np.frombuffer(blob, dtype="<i4")] = True
                result = hits if result is None else result & hits
        return result

    def keyword_rowids(self, text: str) -> np.ndarray:
        """Ids matching the keywords, unranked (no BM25: cheaper when the caller only filters)."""
        query = fts_query(text)
        if not query:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            rows = self._conn.execute("SELECT rowid FROM items_fts WHERE items_fts MATCH ?", (query,))
            return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def item_id_column(self) -> list[str]:
        """Every row's item_id in vector-id order (one scan; the service keeps them in RAM per generation)."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT item_id FROM items ORDER BY id")]

    def category_column(self) -> list[str]:
        """The category of every row, in id order (ids are dense 0..count-1)."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT category FROM items ORDER BY id")]

    def ids_in_categories(self, categories: Sequence[str]) -> list[int]:
        marks = ",".join("?" * len(categories))
        return [r["id"] for r in self._all(f"SELECT id FROM items WHERE category IN ({marks})", list(categories))]

    def fingerprints(self) -> dict[str, tuple[int, str]]:
        """item_id -> (vector id, a digest of the row's content and metadata), for incremental diffs."""
        rows = self._all("SELECT id, item_id, product_id, title, category, description, content_hash, attributes FROM items")
        return {r["item_id"]: (r["id"], row_digest(r["product_id"], r["title"], r["category"], r["description"],
                                                  r["content_hash"], r["attributes"])) for r in rows}

