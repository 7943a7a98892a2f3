"""The shopper box bench's failure classes and crop coverage (pure functions; no model, no scenes)."""

from __future__ import annotations

import numpy as np

from bench.shopper_boxes import box_report, failure, product_in_crop

TRUTH = (100.0, 100.0, 100.0, 200.0)


def test_each_kind_of_bad_box_gets_its_class():
    assert failure((102.0, 98.0, 100.0, 200.0), TRUTH, []) is None  # IoU >= 0.5
    assert failure(None, TRUTH, []) == "missed"
    assert failure((400.0, 20.0, 80.0, 80.0), TRUTH, [(390.0, 10.0, 90.0, 90.0)]) == "other product"
    assert failure((400.0, 20.0, 80.0, 80.0), TRUTH, []) == "background"
    assert failure((110.0, 110.0, 80.0, 60.0), TRUTH, []) == "too tight"  # inside the product, a quarter of it
    assert failure((20.0, 20.0, 300.0, 400.0), TRUTH, []) == "too wide"  # holds it all, mostly room
    assert failure((150.0, 150.0, 200.0, 200.0), TRUTH, []) == "shifted"


def test_product_in_crop_counts_the_pixels_inside_the_served_square():
    mask = np.zeros((400, 400), bool)
    mask[100:300, 100:200] = True
    assert product_in_crop(mask, TRUTH, 0.1) == 1.0
    assert 0.45 < product_in_crop(mask, (100.0, 100.0, 100.0, 100.0), 0.0) <= 0.5  # the upper half


def test_the_report_counts_top_boxes_and_the_best_detection():
    report = box_report([[(400.0, 20.0, 80.0, 80.0), TRUTH], []], [TRUTH, TRUTH], [[], []],
                        [np.ones((400, 400), bool)] * 2, 0.1)
    assert report["iou>=0.5"] == 0.0 and report["any_detection_iou>=0.5"] == 0.5
    assert report["failures"]["background"] == 0.5 and report["failures"]["missed"] == 0.5
