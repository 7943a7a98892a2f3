"""The vectorised item-id lookup answers exactly as a dict, whatever the ids hold and however hashes collide."""

import numpy as np
import pytest

import indexer.item_ids as item_ids
from indexer.item_ids import MAX_WORDS, ItemIdIndex, JoinedIds


def random_ids(count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    alphabet = list("abcXYZ019-_/ .") + ["é", "ü", "中", "\ud800"]  # ASCII, accents, CJK, a lone surrogate
    ids = ("".join(rng.choice(alphabet, rng.integers(0, 3 * MAX_WORDS))) for _ in range(count))
    return list(dict.fromkeys(ids)) + ["x" * (8 * MAX_WORDS + 5), "y" * 8 * MAX_WORDS]  # too long for the words


def queries_for(ids: list[str]) -> list[str]:
    # known ids, unknown ones, prefixes/extensions of known ones, the empty id, over-long ids, a NUL
    return ids[::3] + [i + "!" for i in ids[:40]] + [i[:-1] for i in ids[:40] if i] + [
        "", "nope", "x" * (8 * MAX_WORDS + 4), "x" * (8 * MAX_WORDS + 5), "y" * 8 * MAX_WORDS]


@pytest.mark.parametrize("ascii_only", [True, False])
def test_lookup_matches_a_dict(ascii_only):
    ids = [i for i in random_ids(3000, seed=1) if i.isascii() or not ascii_only]
    index = ItemIdIndex(ids)
    expected = {item: row for row, item in enumerate(ids)}
    queries = queries_for(ids)
    assert index.lookup(queries).tolist() == [expected.get(q, -1) for q in queries]
    with_nul = queries + ["a\0b"]
    assert index.lookup(with_nul).tolist() == [expected.get(q, -1) for q in with_nul]
    assert index.lookup([]).tolist() == []


def test_lookup_stays_exact_when_every_hash_collides(monkeypatch):
    real_hash = item_ids._hash
    monkeypatch.setattr(item_ids, "_hash", lambda words: real_hash(words) & np.uint64(7))  # 8 distinct hashes
    ids = random_ids(300, seed=2)
    index = ItemIdIndex(ids)
    expected = {item: row for row, item in enumerate(ids)}
    queries = queries_for(ids)
    assert index.lookup(queries).tolist() == [expected.get(q, -1) for q in queries]


def test_ids_holding_nul_fall_back_to_a_dict():
    index = ItemIdIndex(["a", "b\0c", "d"])
    assert index.lookup(["d", "b\0c", "a", "b"]).tolist() == [2, 1, 0, -1]


@pytest.mark.parametrize("width", [0, 5, 8, 12, 36, 8 * MAX_WORDS + 3])
def test_ids_of_one_width_match_a_dict(width):
    """Catalogs of SKUs or UUIDs: every id (and every query) has the same encoded length, packed by a strided
    view; mixed-width queries, a NUL and multi-byte characters still answer exactly."""
    rng = np.random.default_rng(width)
    alphabet = list("0123456789ABCDEF")
    fixed = list(dict.fromkeys("".join(rng.choice(alphabet, width)) for _ in range(2000)))
    prefix = [fixed[0][:-1]] if width else []  # a shorter id that a NUL-padded query of the common width mimics
    ids = fixed + prefix
    index = ItemIdIndex(ids)
    expected = {item: row for row, item in enumerate(ids)}
    same_width = fixed[::2] + ["".join(rng.choice(alphabet, width)) for _ in range(50)]
    if width >= 2:
        same_width += ["é" + i[2:] for i in fixed[:20]]  # two UTF-8 bytes for one character: same byte width
    checks = [same_width, same_width + ["short"]]
    if width:
        checks.append(same_width[:5] + [fixed[0][:-1] + "\0"])
    for queries in checks:
        assert index.lookup(queries).tolist() == [expected.get(q, -1) for q in queries]


def test_ids_joined_in_one_text_resolve_as_the_list_does():
    """A shop's list sent as one comma-separated text resolves without splitting it, to the same rows; texts
    that splitting and stripping would change (spaces, empty ids, non-ASCII, NUL) are refused by ``make``."""
    rng = np.random.default_rng(7)
    variable = [f"i{i}" for i in range(3000)] + ["z" * 20]
    fixed = [f"sku-{i:08d}" for i in range(3000)]
    long = variable + ["x" * (8 * MAX_WORDS + 5)]  # an id beyond the packed words: lives in the dict
    for ids in (variable, fixed, long):
        index = ItemIdIndex(ids)
        queries = [ids[i] for i in rng.integers(0, len(ids), 500)] + ["nope", "i", "sku-0", ids[-1]]
        joined = JoinedIds.make(",".join(queries))
        assert joined is not None and len(joined) == len(queries)
        assert index.lookup(joined).tolist() == index.lookup(queries).tolist()
        assert index.lookup(JoinedIds.make(ids[0])).tolist() == [0]
        same_width = [ids[i] for i in rng.integers(0, 3000, 200)]  # one width for the fixed ids: strided path
        assert index.lookup(JoinedIds.make(",".join(same_width))).tolist() == index.lookup(same_width).tolist()
    for text in ("a, b", "a,,b", ",a", "a,", "a\tb", "é,b", "a\0,b", ""):
        assert JoinedIds.make(text) is None
    for space in (chr(c) for c in range(128) if chr(c).isspace()):  # whatever str.strip() would take off
        assert JoinedIds.make(f"a{space},b") is None and JoinedIds.make(f"a,{space}b") is None
    assert JoinedIds.make("a;b", separator=";").split() == ["a", "b"]
