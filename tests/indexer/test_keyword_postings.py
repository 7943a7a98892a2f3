"""Keyword filters from the stored postings give exactly FTS5's answer, and the rest still goes to FTS5."""

from pathlib import Path

import numpy as np

from indexer import CatalogRow, CatalogStore
from indexer.catalog_store import create_store

TITLES = ["Oak chair", "oak CHAIRS set", "Chaise longue", "Café table", "cafe_table", "Table 2x4", "table2",
          "über sofa", "Sofa-bed 3 seats", "chair chair chair", "", "Oakley lamp", "lamp"]


def test_postings_answer_as_fts5_does(tmp_path):
    rng = np.random.default_rng(3)
    rows = [CatalogRow(item_id=f"i{i}", product_id=f"p{i}", image=Path(f"/x/{i}.jpg"),
                       title=str(rng.choice(TITLES)), category=str(rng.choice(["chairs", "tables", "lamps"])),
                       description=str(rng.choice(TITLES))) for i in range(400)]
    create_store(tmp_path / "catalog.db", rows, [str(i) for i in range(len(rows))])
    store = CatalogStore(tmp_path / "catalog.db")
    try:
        assert store.has_postings
        queries = ["oak", "oak chair", "chair oak", "ch", "c", "chairs", "table 2", "2x4", "table2", "cafe", "café",
                   "cafe_table", "über", "uber", "sofa bed", "sofa-bed 3", "lamps", "zzz", "oak zzz", "", "  ", "t"]
        expected = {text: _fts_mask(store, text, len(rows)) for text in queries}
        assert expected["oak"].any() and expected["c"].sum() > 100
        asked_fts: list[str] = []
        fts_rowids = store.keyword_rowids
        store.keyword_rowids = lambda text: asked_fts.append(text) or fts_rowids(text)
        for text in queries:
            assert np.array_equal(store.keyword_mask(text, len(rows)), expected[text]), text
        # plain ASCII words came from the postings; accents, underscores and empty queries went to FTS5
        assert asked_fts == ["café", "cafe_table", "über", "", "  "]
    finally:
        store.close()


def _fts_mask(store: CatalogStore, text: str, size: int) -> np.ndarray:
    mask = np.zeros(size, dtype=bool)
    mask[store.keyword_rowids(text)] = True
    return mask
