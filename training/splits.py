"""Where training samples come from and how they are split by product, shared by train, eval and the benches.

Both ``lookalike train`` and ``lookalike eval`` split with the same seeded rule; ``train`` writes the split to
``OUT/split.json`` and ``eval --checkpoint OUT/best.pt`` reads it back, so evaluation is on products that were never
trained on.
"""

from __future__ import annotations

from pathlib import Path

from training.datasets import (
    ProductSplit,
    Sample,
    drop_small_products,
    limit_products,
    products_of,
    read_folder,
    read_inshop,
    read_sop,
    split_by_product,
    split_train_val,
)

SPLIT_FILE = "split.json"


class SplitError(ValueError):
    """A source or saved split that cannot be used (wrong options, a split naming unknown products)."""



def load_source(catalog: Path | None, folder: Path | None, sop: Path | None,
                inshop: Path | None) -> tuple[str, list[Sample], list[Sample] | None]:
    """``(description, train pool, official test set or None)`` from exactly one source option."""
    given = [(name, value) for name, value in (("--catalog", catalog), ("--folder", folder), ("--sop", sop),
                                               ("--inshop", inshop)) if value is not None]
    if len(given) != 1:
        raise SplitError("give exactly one of --catalog, --folder, --sop, --inshop")
    if catalog is not None:
        from indexer.catalog import read_catalog

        rows = read_catalog(catalog)
        return f"catalog {catalog}", [Sample(r.image, r.product_id, r.category) for r in rows], None
    if folder is not None:
        return f"folder {folder}", read_folder(folder), None
    if sop is not None:
        return f"sop {sop}", read_sop(sop, "train"), read_sop(sop, "test")
    assert inshop is not None
    return f"inshop {inshop}", read_inshop(inshop, "train"), read_inshop(inshop, "test")


def make_split(pool: list[Sample], official_test: list[Sample] | None, val_fraction: float, test_fraction: float,
               seed: int, max_products: int | None) -> tuple[ProductSplit, list[Sample]]:
    """The deterministic product split used by both commands, and all the samples it refers to.

    Products with a single image are dropped first (they can be neither trained on nor queried).
    Sources with an official test set keep it as the test split; validation products come from the train pool.
    """
    pool = drop_small_products(pool)
    if official_test is None:
        pool = limit_products(pool, max_products, seed)
        split = split_by_product(pool, val_fraction, test_fraction, seed)
        return split, pool
    test = drop_small_products(official_test)
    if max_products is not None:
        n_train = len(products_of(pool))
        n_test = len(products_of(test))
        share = max_products / max(n_train + n_test, 1)
        pool = limit_products(pool, max(3, round(n_train * share)), seed)
        test = limit_products(test, max(2, round(n_test * share)), seed)
    return split_train_val(pool, test, val_fraction, seed), pool + test


def split_for(out_or_ckpt_dir: Path | None, samples_pool: list[Sample], official_test: list[Sample] | None,
               val_fraction: float, test_fraction: float, seed: int,
               limit: int | None) -> tuple[ProductSplit, list[Sample], str]:
    if out_or_ckpt_dir is not None and (out_or_ckpt_dir / SPLIT_FILE).is_file():
        split = ProductSplit.load(out_or_ckpt_dir / SPLIT_FILE)
        samples = drop_small_products(samples_pool + (official_test or []))
        known = {s.label for s in samples}
        missing = [p for p in split.products("all") if p not in known]
        if missing:
            raise SplitError(f"{out_or_ckpt_dir / SPLIT_FILE} names {len(missing)} product(s) this source lacks, "
                           f"e.g. {missing[:3]}; is it the same dataset?")
        return split, samples, str(out_or_ckpt_dir / SPLIT_FILE)
    split, samples = make_split(samples_pool, official_test, val_fraction, test_fraction, seed, limit)
    return split, samples, f"seed {seed}"
