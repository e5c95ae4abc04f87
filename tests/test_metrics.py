"""Tests of the segmentation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_lazylabels.core.metrics import (
    class_dice,
    dice,
    evaluate_image,
    interface_scores,
    object_f1,
    summarize,
)
from napari_lazylabels.core.simulate import interface_mask


def test_dice_known_overlap():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0, :10] = True
    b[0, 5:10] = True
    b[1, :5] = True
    assert dice(a, b) == pytest.approx(2 * 5 / 20)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError):
        dice(a, b[:5])


def test_class_dice():
    gt = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [1, 1, 2, 0]])
    # class 1: pred 3 px, gt 3 px, both 2; class 2: pred 3, gt 3, both 2; class 3 absent.
    assert class_dice(pred, gt, 4) == {1: pytest.approx(4 / 6), 2: pytest.approx(4 / 6), 3: 1.0}


def test_object_f1_known_counts():
    gt = np.zeros((40, 40), np.int32)
    gt[2:10, 2:10] = 1
    gt[20:30, 20:30] = 2
    gt[2:8, 30:36] = 3
    pred = np.zeros_like(gt)
    pred[2:10, 2:10] = 50_000  # exact match, sparse id
    pred[20:30, 24:34] = 7  # IoU 60 / 140 < 0.5
    pred[32:38, 2:8] = 3  # nothing there
    r = object_f1(pred, gt)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["precision"] == pytest.approx(1 / 3) and r["recall"] == pytest.approx(1 / 3)
    assert r["f1"] == pytest.approx(2 / 6)
    r = object_f1(pred, gt, iou_threshold=0.4)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    empty = object_f1(np.zeros_like(gt), np.zeros_like(gt))
    assert empty["f1"] == 1.0 and math.isnan(empty["precision"]) and math.isnan(empty["recall"])
    none = object_f1(np.zeros_like(gt), gt)
    assert none["f1"] == 0.0 and none["recall"] == 0.0 and none["fn"] == 3


def touching() -> np.ndarray:
    gt = np.zeros((40, 60), np.int32)
    gt[10:30, 5:25] = 1
    gt[10:30, 25:45] = 2  # 1 and 2 touch along column 24/25
    gt[10:20, 50:58] = 3  # alone
    return gt


def test_interface_scores_gt_prediction():
    gt = touching()
    r = interface_scores(interface_mask(gt), gt, gt)
    assert r["precision"] == 1.0 and r["pairs_separated"] == 1.0
    assert r["n_pairs"] == 1 and r["n_pred_pixels"] == int(interface_mask(gt).sum())
    # Relabelled prediction still separates the pair.
    assert interface_scores(None, gt * 3 + (gt > 0), gt)["pairs_separated"] == 1.0


def test_interface_scores_merged_and_missed():
    gt = touching()
    merged = (gt > 0).astype(np.int32)
    r = interface_scores(None, merged, gt)
    assert r["pairs_separated"] == 0.0 and math.isnan(r["precision"]) and r["n_pred_pixels"] == 0
    missed = np.where(gt == 2, 0, gt)
    assert interface_scores(None, missed, gt)["pairs_separated"] == 0.0


def test_interface_precision_tolerance():
    gt = touching()
    pred = np.zeros(gt.shape, bool)
    pred[12:28, 26] = True  # 2 px off the interface at 24/25 (band columns 24, 25)
    pred[12:28, 35] = True  # far inside object 2
    r = interface_scores(pred, gt, gt, tolerance=2)
    assert r["precision"] == pytest.approx(0.5)
    assert interface_scores(pred, gt, gt, tolerance=0)["precision"] == 0.0
    # No touching pairs: nothing to separate, every predicted interface pixel is wrong.
    lone = np.where(gt == 2, 0, gt)
    r = interface_scores(pred, lone, lone)
    assert math.isnan(r["pairs_separated"]) and r["n_pairs"] == 0 and r["precision"] == 0.0


def test_evaluate_and_summarize():
    gt = touching()
    r = evaluate_image((gt > 0).astype(int), gt, interface_mask(gt), gt)
    assert r["dice"] == 1.0 and r["object_f1"] == 1.0
    assert r["interface_precision"] == 1.0 and r["pairs_separated"] == 1.0
    merged = (gt > 0).astype(np.int32)
    r2 = evaluate_image(merged, merged, None, gt)
    assert r2["dice"] == 1.0 and r2["pairs_separated"] == 0.0
    assert math.isnan(r2["interface_precision"])
    s = summarize([r, r2])
    assert s["n"] == 2 and s["pairs_separated"] == 0.5
    assert s["interface_precision"] == 1.0  # NaN ignored
    assert math.isnan(summarize([r2])["interface_precision"])
