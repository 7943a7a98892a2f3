"""The one "grow x4 until enough" schedule: over-fetching results, probing lists, reading rows in chunks."""

from __future__ import annotations

from collections.abc import Iterator

GROWTH = 4


def growing(start: int, limit: int, factor: int = GROWTH) -> Iterator[int]:
    """``start``, ``start*factor``, ... capped at ``limit``; the last value yielded is ``limit``.

    The caller stops early once it has enough: ``for fetch in growing(k, n): ... if enough: break``.
    """
    if factor < 2:
        raise ValueError("factor must be at least 2")
    limit = max(1, int(limit))
    value = max(1, min(int(start), limit))
    while True:
        yield value
        if value >= limit:
            return
        value = min(limit, value * factor)
