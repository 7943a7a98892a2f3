"""Item id -> vector id for a generation's base rows, resolved for a whole candidate list at once in numpy.

A shop sends up to ``max_candidates`` item-id strings per search. A Python dict of 1M strings answers each
after a few cache misses (about 100 ms for 100k ids on the shared 2-core machine). Here the request's ids are
joined and encoded once, laid out as columns of zero-padded 64-bit words, hashed with vectorised arithmetic and
looked up in an open-addressing table of row numbers; a probe compares the stored row's words with the
query's, so a hit is exact (no false match on a hash collision) and costs one random memory access.

Ids of more than ``MAX_WORDS`` x 8 UTF-8 bytes, or holding a NUL character, live in a plain dict instead.
A list that arrives as one comma-separated text (``JoinedIds``) is packed from that text directly: no Python
string per id, which is most of the cost when the 100k strings lie scattered over the heap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_WORDS = 8  # ids up to 64 UTF-8 bytes are packed into words; longer ones go to the dict
_SEPARATOR = "\0"
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# word & _FIRST_BYTES[i] keeps a word's first i bytes in memory order (built from bytes: right on either endianness)
_FIRST_BYTES = np.frombuffer(b"".join(bytes([255] * i + [0] * (8 - i)) for i in range(9)), dtype=np.uint64)


def _packed(strings: Sequence[str], words: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(word columns: ``words`` rows of one zero-padded 64-bit word per string, whether each string fits) for
    ``strings`` (``words`` None: as many as the longest needs, at most MAX_WORDS); None when a string holds the
    NUL separator. The strings are joined and encoded once (see ``_packed_buffer``)."""
    joined = _SEPARATOR.join(strings).encode("utf-8", "surrogatepass")
    return _packed_buffer(joined, len(strings), 0, words)


def _packed_buffer(joined: bytes, count: int, separator: int,
                   words: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``_packed`` for ``count`` ids already joined by the byte ``separator`` in ``joined``; None when the
    separators do not make ``count`` ids.

    Each word is one gather from a view of the buffer that has a (possibly unaligned) uint64 starting at every
    byte, at the id's start plus 8j, with the bytes past the id's end masked off; ids of one common width are a
    strided view (no gather). numpy's own str -> bytes array conversion costs several times more. Word j of
    every id is one contiguous column, so hashing and comparing read whole columns."""
    size = len(joined)
    longest = 8 * MAX_WORDS if words is None else 8 * words
    data = np.frombuffer(joined + b"\0" * (longest + 8), dtype=np.uint8)  # one copy, zero padding after the end
    cuts = np.flatnonzero(data[:size] == separator)
    if len(cuts) != count - 1:
        return None
    width = _common_width(cuts, size, count)
    if width is not None:  # SKUs, UUIDs, zero-padded numbers: every word is a strided view, no gather
        words = words or max(1, min(MAX_WORDS, -(-width // 8)))
        grid = np.ndarray((words, count), dtype=np.uint64, buffer=data, strides=(8, width + 1))
        columns = grid & _FIRST_BYTES[np.clip(width - 8 * np.arange(words), 0, 8)][:, None]
        return columns, np.full(count, width <= 8 * words)
    ends = np.append(cuts, size)
    starts = np.zeros(len(ends), dtype=np.int64)
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    if words is None:
        words = max(1, min(MAX_WORDS, -(-int(lengths.max(initial=0)) // 8)))
    word_at = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))  # a word at every byte
    offsets = 8 * np.arange(words, dtype=np.int64)[:, None]
    columns = word_at[starts + offsets]  # fancy indexing reads the strided view in place (np.take copies it)
    columns &= _FIRST_BYTES[np.clip(lengths - offsets, 0, 8)]
    return columns, lengths <= 8 * words


def _common_width(cuts: np.ndarray, size: int, count: int) -> int | None:
    """The encoded length shared by all ``count`` ids joined in ``size`` bytes with separators at ``cuts``, or
    None when they differ: a separator at every width + 1 bytes."""
    if (size + 1) % count:
        return None
    step = (size + 1) // count
    if len(cuts) and (cuts[0] != step - 1 or (np.diff(cuts) != step).any()):
        return None
    return step - 1


def _hash(columns: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each string's words (splitmix64 chained over the word columns)."""
    h = np.full(columns.shape[1], _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in columns:
            x = h ^ column
            x ^= x >> np.uint64(30)
            x *= _MIX1
            x ^= x >> np.uint64(27)
            x *= _MIX2
            x ^= x >> np.uint64(31)
            h = x + _GOLDEN
    return h


def _same(stored: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Whether each stored row of words (n, w) equals the query's words (columns (w, n))."""
    same = stored[:, 0] == columns[0]
    for j in range(1, len(columns)):
        same &= stored[:, j] == columns[j]
    return same


@dataclass(frozen=True)
class JoinedIds:
    """Item ids as one ASCII text, joined by ``separator`` (a shop's list sent as one comma-separated string, or
    a request's list joined once): resolved without a Python string per id. Every id is non-empty and holds no
    space or control character; ``make`` checks that and says None when the text needs splitting instead."""

    text: str
    separator: str
    encoded: bytes = field(repr=False)  # the text's bytes (ASCII), packed as they are
    count: int  # ids in the text

    @classmethod
    def make(cls, text: str, separator: str = ",") -> JoinedIds | None:
        """The ids of ``text``, or None unless it is ASCII with no empty id and no byte <= 0x20 (spaces, which
        ``str.split`` + ``str.strip`` would take off, and control characters such as NUL, with which a padded id
        would pack like a shorter one). One vectorised pass over the bytes: about 1 ms for 100k ids."""
        if not text or len(separator) != 1 or not text.isascii() or not separator.isascii():
            return None
        encoded = text.encode("ascii")
        data = np.frombuffer(encoded, dtype=np.uint8)
        if (data <= 0x20).any():
            return None
        cuts = np.flatnonzero(data == ord(separator))
        if len(cuts) and (cuts[0] == 0 or cuts[-1] == len(data) - 1 or (np.diff(cuts) == 1).any()):  # an empty id
            return None
        return cls(text, separator, encoded, len(cuts) + 1)

    def __len__(self) -> int:
        return self.count

    def split(self) -> list[str]:
        return self.text.split(self.separator)


class ItemIdIndex:
    """Exact item-id lookup over a fixed list of ids (row i has id i), vectorised over many queries."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.count = len(item_ids)
        packed = _packed(item_ids, None)
        if packed is None:  # an id holds NUL (not expected in catalogs): all of them in the dict
            self._others = {item: i for i, item in enumerate(item_ids)}
            self._words = np.zeros((0, 1), dtype=np.uint64)
            packed_rows = np.zeros(0, dtype=np.int64)
        else:
            columns, fits = packed
            self._words = np.ascontiguousarray(columns.T)  # one row per id: a probe gathers its words at once
            self._others = {item_ids[i]: int(i) for i in np.flatnonzero(~fits)}
            packed_rows = np.flatnonzero(fits)
            columns = columns[:, packed_rows]
        size = 1 << max(4, int(np.ceil(np.log2(max(len(packed_rows), 1) * 4))))  # load <= 1/4: short probes
        self._mask = size - 1
        self._table = np.full(size, -1, dtype=np.int32 if self.count < 2**31 else np.int64)
        if not len(packed_rows):
            return
        slot = (_hash(columns) & np.uint64(self._mask)).astype(np.int64)
        pending = np.arange(len(packed_rows))
        while len(pending):  # linear probing, one round per probe step: each free slot takes one pending id
            want = slot[pending]
            free = self._table[want] < 0
            first = np.unique(want[free], return_index=True)[1]
            placed = np.flatnonzero(free)[first]
            self._table[want[placed]] = packed_rows[pending[placed]]
            rest = np.ones(len(pending), dtype=bool)
            rest[placed] = False
            pending = pending[rest]
            slot[pending] = (slot[pending] + 1) & self._mask

    def lookup(self, item_ids: Sequence[str] | JoinedIds) -> np.ndarray:
        """The row of each item id, -1 for ids not in the list (int64, in input order).

        The first probe of every id is a few whole-array passes (two gathers: the slot's row, that row's
        words); only the ids whose slot holds another id probe on, a shrinking subset per step. ``JoinedIds``
        are packed straight from their text (no string object per id)."""
        if isinstance(item_ids, JoinedIds):
            packed = _packed_buffer(item_ids.encoded, len(item_ids), ord(item_ids.separator),
                                    self._words.shape[1]) if len(self._words) else None
            if packed is None or (self._others and not packed[1].all()):  # long ids live in the dict: split
                return self.lookup(item_ids.split())
            return self._probe(*packed, ())
        if not len(item_ids):
            return np.full(0, -1, dtype=np.int64)
        packed = _packed(item_ids, self._words.shape[1]) if len(self._words) else None
        if packed is None:  # some query holds NUL, or nothing is packed: the dict answers
            return np.fromiter((self._get(i) for i in item_ids), dtype=np.int64, count=len(item_ids))
        return self._probe(*packed, item_ids)

    def _probe(self, columns: np.ndarray, fits: np.ndarray, item_ids: Sequence[str]) -> np.ndarray:
        """Rows of the packed ids (``columns``, ``fits`` as ``_packed`` gives them); over-long ids from the dict
        (by their name in ``item_ids``, needed only when some id does not fit)."""
        slot = (_hash(columns) & np.uint64(self._mask)).astype(np.intp)
        row = self._table.take(slot)
        occupied = row >= 0
        same = _same(self._words.take(row, axis=0), columns)  # row -1 (empty) reads the last id: masked below
        hit = same & occupied & fits  # an over-long id's first words may equal a shorter id's
        found = np.where(hit, row, -1).astype(np.int64, copy=False)
        todo = np.flatnonzero(occupied & ~hit & fits)  # ~1 in 10 ids at load 1/4
        slot, columns = (slot[todo] + 1) & self._mask, columns[:, todo]
        while len(todo):
            row = self._table.take(slot)
            hit = (row >= 0) & _same(self._words.take(row, axis=0), columns)
            found[todo[hit]] = row[hit]
            more = np.flatnonzero((row >= 0) & ~hit)  # occupied by another id: probe the next slot
            todo, slot, columns = todo[more], (slot[more] + 1) & self._mask, columns[:, more]
        if self._others and not fits.all():
            for i in np.flatnonzero(~fits):
                found[i] = self._others.get(item_ids[i], -1)
        return found

    def _get(self, item_id: str) -> int:
        if item_id in self._others:
            return self._others[item_id]
        return int(self.lookup([item_id])[0]) if _SEPARATOR not in item_id and len(self._words) else -1

    @property
    def nbytes(self) -> int:
        """RAM of the packed ids and the table (the dict of long ids not counted)."""
        return int(self._words.nbytes + self._table.nbytes)
