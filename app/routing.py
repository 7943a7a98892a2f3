"""Category routing (opt-in, ``CATEGORY_ROUTING``): predict a photo query's category, show it, nudge the ranking.

A linear probe (``models.category_probe``) is fitted on the served generation's own vectors and ``category``
column the first time a routed search reaches that generation (at most ``ROUTING_MAX_ITEMS`` images, seeded), and
kept with the generation. The search then fetches ``ROUTING_POOL`` x the wanted results, adds
``CATEGORY_ROUTE_WEIGHT`` x p(the result's category | query) to each score, and re-ranks: a soft filter, so a
product of another category still wins when it looks enough alike. ``bench/shopper_quality.py`` measures it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.schemas import Hit, PredictedCategory
from models.category_probe import CategoryProbe, fit_category_probe

if TYPE_CHECKING:
    from app.serving import LoadedGeneration

ROUTING_MAX_ITEMS = 20_000
ROUTING_POOL = 4


@dataclass
class CategoryProbes:
    """One probe per generation name (None: the generation has fewer than two categories)."""

    probes: dict[str, CategoryProbe | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def for_generation(self, gen: LoadedGeneration) -> CategoryProbe | None:
        with self.lock:
            if gen.name not in self.probes:
                self.probes = {gen.name: fit_generation_probe(gen)}  # only the served generation is kept
            return self.probes[gen.name]


def fit_generation_probe(gen: LoadedGeneration, max_items: int = ROUTING_MAX_ITEMS,
                         seed: int = 0) -> CategoryProbe | None:
    """A probe from the generation's live base rows: their stored vectors and catalog categories."""
    ids = np.arange(gen.manifest.count, dtype=np.int64)
    if len(ids) > max_items:
        ids = np.sort(np.random.default_rng(seed).choice(ids, max_items, replace=False))
    rows = gen.catalog.by_ids([int(i) for i in ids])  # deleted rows are left out
    live = [int(i) for i in ids if int(i) in rows]
    categories = [rows[i].category for i in live]
    if len({c for c in categories if c}) < 2:
        return None
    return fit_category_probe(gen.vectors.vectors(np.asarray(live, dtype=np.int64)), categories)


def route(probe: CategoryProbe, vector: np.ndarray, results: list[Hit], weight: float
          ) -> tuple[PredictedCategory, list[Hit]]:
    """The query's predicted category, and ``results`` re-ranked by score + weight x p(result's category)."""
    probs = probe.probabilities(vector[None, :])[0]
    best = int(probs.argmax())
    index = {name: i for i, name in enumerate(probe.categories)}
    boosted = [(hit.score + weight * (float(probs[index[hit.category]]) if hit.category in index else 0.0), n)
               for n, hit in enumerate(results)]
    order = [n for _, n in sorted(boosted, key=lambda pair: (-pair[0], pair[1]))]
    return PredictedCategory(name=probe.categories[best], probability=round(float(probs[best]), 4)), \
        [results[n] for n in order]
