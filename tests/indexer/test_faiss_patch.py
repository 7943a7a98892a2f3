"""pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces Index.search process-wide."""

import numpy as np

from indexer import IndexSpec, VectorIndex


def test_search_parameters_survive_the_torch_utils_patch():
    import faiss.contrib.torch_utils  # noqa: F401  (the patch, as the training code's imports apply it)

    rng = np.random.default_rng(0)
    base = rng.standard_normal((200, 8)).astype(np.float32)
    for spec in (IndexSpec("Flat"), IndexSpec("IVF4,Flat", nprobe=4)):
        index = VectorIndex.build(base, spec)
        _, ids = index.search(base[:1], 5, allowed_ids=np.array([3, 7, 9]))
        assert set(ids[0][ids[0] >= 0]) == {3, 7, 9}
