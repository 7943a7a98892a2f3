import math

import numpy as np
import pytest

from training.metrics import map_at_r_from_hits, nearest_neighbours, retrieval_metrics


def _on_circle(degrees):
    radians = np.radians(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


# Six points on the unit circle; cosine similarity ranks neighbours by angular distance.
ANGLES = [0, 12, 20, 35, 90, 100]
LABELS = ["A", "A", "B", "A", "B", "B"]
# Neighbour orders (self excluded), worked out by hand from the angle differences:
#   q0 A@0   : 1A(12) 2B(20) 3A(35) 4B 5B      R=2  top-2 [A,B] AP = (1/1)/2     = 0.5
#   q1 A@12  : 2B(8)  0A(12) 3A(23) 4B 5B      R=2  top-2 [B,A] AP = (1/2)/2     = 0.25
#   q2 B@20  : 1A(8)  3A(15) 0A(20) 4B 5B      R=2  top-2 [A,A] AP = 0
#   q3 A@35  : 2B(15) 1A(23) 0A(35) 4B 5B      R=2  top-2 [B,A] AP = (1/2)/2     = 0.25
#   q4 B@90  : 5B(10) 3A(55) 2B(70) 1A 0A      R=2  top-2 [B,A] AP = (1/1)/2     = 0.5
#   q5 B@100 : 4B(10) 3A(65) 2B(80) 1A 0A      R=2  top-2 [B,A] AP = 0.5
# Recall@1: q0,q4,q5 -> 3/6.  Recall@2: all but q2 -> 5/6.  Recall@5: 6/6.
# MAP@R = (0.5+0.25+0+0.25+0.5+0.5)/6 = 1/3.  R-Precision = (.5+.5+0+.5+.5+.5)/6 = 2.5/6.


def test_hand_computed_recall_and_map_at_r():
    m = retrieval_metrics(_on_circle(ANGLES), LABELS, ks=(1, 2, 5))
    assert m["recall@1"] == pytest.approx(3 / 6)
    assert m["recall@2"] == pytest.approx(5 / 6)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["map@r"] == pytest.approx(1 / 3)
    assert m["r_precision"] == pytest.approx(2.5 / 6)
    assert (m["queries"], m["samples"], m["classes"]) == (6, 6, 2)


def test_neighbour_order_excludes_self():
    idx, sims = nearest_neighbours(_on_circle(ANGLES), 5)
    assert idx[0].tolist() == [1, 2, 3, 4, 5]
    assert idx[1].tolist() == [2, 0, 3, 4, 5]
    assert idx[4].tolist()[:3] == [5, 3, 2]
    assert sims[0, 0] == pytest.approx(math.cos(math.radians(12)), abs=1e-6)


def test_map_at_r_definition_from_the_reality_check_paper():
    # R = 3, neighbours ranked [correct, wrong, correct, correct]: only the first R count,
    # precision is taken only where the neighbour is correct, and the sum is divided by R:
    # (1/1 + 2/3) / 3 = 5/9.  Plain AP over the retrieved correct ones would give (1 + 2/3)/2.
    ap, rp = map_at_r_from_hits(np.array([[1, 0, 1, 1]]), np.array([3]))
    assert ap[0] == pytest.approx(5 / 9)
    assert rp[0] == pytest.approx(2 / 3)
    # the paper's example: R=10, only the first neighbour correct -> MAP@R = 0.1, and 1.0 when all are
    hits = np.zeros((2, 10), dtype=bool)
    hits[0, 0] = True
    hits[1, :] = True
    ap, _ = map_at_r_from_hits(hits, np.array([10, 10]))
    assert ap.tolist() == pytest.approx([0.1, 1.0])


def test_perfect_and_singleton_classes():
    # two tight clusters plus a singleton class that is a distractor, never a query
    x = _on_circle([0, 1, 2, 90, 91, 45])
    m = retrieval_metrics(x, [0, 0, 0, 1, 1, 2], ks=(1,))
    assert m["recall@1"] == 1.0 and m["map@r"] == 1.0 and m["queries"] == 5
    empty = retrieval_metrics(x[:2], ["a", "b"], ks=(1,))
    assert empty["queries"] == 0 and empty["map@r"] == 0.0


def test_exact_duplicates_still_count_as_neighbours():
    x = np.ones((4, 3), dtype=np.float32)  # every similarity ties
    m = retrieval_metrics(x, [0, 0, 1, 1], ks=(3,))
    assert m["recall@3"] == 1.0 and m["queries"] == 4


def test_scale_does_not_matter_and_bad_inputs_fail():
    x = _on_circle(ANGLES)
    assert retrieval_metrics(x * 7, LABELS)["map@r"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="one label per embedding"):
        retrieval_metrics(x, LABELS[:3])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan), [0, 0])


def test_agrees_with_pytorch_metric_learning_on_random_data():
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 25, size=300)
    centres = rng.normal(size=(25, 16))
    x = (centres[labels] + rng.normal(scale=1.2, size=(300, 16))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ours = retrieval_metrics(x, labels, ks=(1,))
    import torch

    theirs = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r", "r_precision"),
                                k="max_bin_count").get_accuracy(torch.from_numpy(x), torch.from_numpy(labels))
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
