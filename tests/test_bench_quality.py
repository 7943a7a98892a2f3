import numpy as np

from bench.demo_quality import product_recall


def test_product_recall_groups_images_by_product():
    gallery = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.7, 0.7]], dtype=np.float32)
    products = ["a", "a", "b", "c"]
    queries = np.array([[1, 0], [0, 1], [0.6, 0.8]], dtype=np.float32)
    # query 0 -> a first; query 1 -> b first; query 2 (truth a) ranks c, b, a -> position 2
    recall = product_recall(queries, ["a", "b", "a"], gallery, products, (1, 2, 3))
    assert recall == {1: 2 / 3, 2: 2 / 3, 3: 1.0}
