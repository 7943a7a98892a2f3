"""Item id -> vector id for a generation's base rows, resolved for a whole candidate list at once in numpy.

A shop sends up to ``max_candidates`` item-id strings per search. A Python dict of 1M strings answers each
after a few cache misses (about 100 ms for 100k ids on the shared 2-core machine). Here the request's ids are
joined and encoded once, laid out as zero-padded rows of 64-bit words, hashed with vectorised arithmetic and
looked up in an open-addressing table of row numbers; a probe compares the stored row's words with the
query's, so a hit is exact (no false match on a hash collision) and costs one random memory access.

Ids of more than ``MAX_WORDS`` x 8 UTF-8 bytes, or holding a NUL character, live in a plain dict instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_WORDS = 8  # ids up to 64 UTF-8 bytes are packed into words; longer ones go to the dict
_SEPARATOR = "\0"
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)  # splitmix64 finaliser
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# word & _FIRST_BYTES[i] keeps a word's first i bytes in memory order (built from bytes: right on either endianness)
_FIRST_BYTES = np.frombuffer(b"".join(bytes([255] * i + [0] * (8 - i)) for i in range(9)), dtype=np.uint64)


def _packed(strings: Sequence[str], words: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(rows of zero-padded 64-bit words, whether each string fits) for ``strings``, ``words`` per row (None:
    as many as the longest needs, at most MAX_WORDS); None when a string holds the NUL separator.

    The strings are joined and encoded once; each word is then one gather from a view of the encoded buffer
    that has a (possibly unaligned) uint64 starting at every byte, at the string's start plus 8j, with the
    bytes past the string's end masked off. numpy's own str -> bytes array conversion costs several times more."""
    joined = _SEPARATOR.join(strings).encode("utf-8", "surrogatepass")
    ends = np.flatnonzero(np.frombuffer(joined + b"\0", dtype=np.uint8) == 0)
    if len(ends) != len(strings):
        return None
    starts = np.zeros(len(ends), dtype=np.int64)
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts
    if words is None:
        words = max(1, min(MAX_WORDS, -(-int(lengths.max(initial=0)) // 8)))
    data = np.frombuffer(joined + b"\0" * (8 * words + 8), dtype=np.uint8)
    word_at = np.ndarray((len(data) - 7,), dtype=np.uint64, buffer=data, strides=(1,))  # a word at every byte
    rows = np.empty((len(strings), words), dtype=np.uint64)
    for j in range(words):
        rows[:, j] = word_at[starts + 8 * j]
        rows[:, j] &= _FIRST_BYTES[np.clip(lengths - 8 * j, 0, 8)]
    return rows, lengths <= 8 * words


def _hash(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row of words (splitmix64 chained over the words)."""
    h = np.full(len(words), _GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for column in words.T:
            x = h ^ column
            x ^= x >> np.uint64(30)
            x *= _MIX1
            x ^= x >> np.uint64(27)
            x *= _MIX2
            x ^= x >> np.uint64(31)
            h = x + _GOLDEN
    return h


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
            self._words, fits = packed
            self._others = {item_ids[i]: int(i) for i in np.flatnonzero(~fits)}
            packed_rows = np.flatnonzero(fits)
        size = 1 << max(4, int(np.ceil(np.log2(max(len(packed_rows), 1) * 4))))  # load <= 1/4: short probes
        self._mask = size - 1
        self._table = np.full(size, -1, dtype=np.int32 if self.count < 2**31 else np.int64)
        slot = (_hash(self._words[packed_rows]) & np.uint64(self._mask)).astype(np.int64)
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

    def lookup(self, item_ids: Sequence[str]) -> np.ndarray:
        """The row of each item id, -1 for ids not in the list (int64, in input order)."""
        if not len(item_ids):
            return np.full(0, -1, dtype=np.int64)
        packed = _packed(item_ids, self._words.shape[1]) if len(self._words) else None
        if packed is None:  # some query holds NUL, or nothing is packed: the dict answers
            return np.fromiter((self._get(i) for i in item_ids), dtype=np.int64, count=len(item_ids))
        words, fits = packed
        everyone = bool(fits.all())
        todo = np.arange(len(item_ids)) if everyone else np.flatnonzero(fits)
        words = words if everyone else words[todo]
        slot = (_hash(words) & np.uint64(self._mask)).astype(np.intp)
        found = np.full(len(item_ids), -1, dtype=np.int64)
        while len(todo):  # one round per probe step; ~1 in 10 ids needs a second one at load 1/4
            row = self._table[slot]
            same = self._words[row] == words  # row -1 (empty) reads the last id: masked by ``occupied``
            hit = (row >= 0) & (same[:, 0] if same.shape[1] == 1 else same.all(axis=1))
            found[todo[hit]] = row[hit]
            more = (row >= 0) & ~hit  # occupied by another id: probe the next slot
            todo, slot, words = todo[more], (slot[more] + 1) & self._mask, words[more]
        if self._others:
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
