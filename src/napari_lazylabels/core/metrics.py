"""Segmentation metrics: Dice (Ke et al., section 4.1), object F1 and interface scores.

* :func:`dice`, :func:`class_dice`: the paper's ``2 |X & Y| / (|X| + |Y|)``.
* :func:`object_f1`: instance detection, a match is a pair with IoU above a threshold.
* :func:`interface_scores`: the paper's separation measures (section 4.1): the precision of
  the predicted interfaces and the share of touching object pairs that are told apart.

Interfaces and touching pairs are those of :mod:`napari_lazylabels.core.simulate`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .simulate import _as_instances, interface_mask, touching_pairs

__all__ = [
    "class_dice",
    "dice",
    "evaluate_image",
    "interface_scores",
    "object_f1",
    "summarize",
]


def _check_same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: prediction is {a.shape} but ground truth is {b.shape}.")


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice score ``2 |X & Y| / (|X| + |Y|)`` of two masks; 1.0 when both are empty.

    Args:
        pred: ``(H, W)`` bool (or 0/non-zero) prediction.
        gt: ``(H, W)`` bool ground truth.
    """
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    _check_same_shape(pred, gt, "dice")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def class_dice(
    pred_classes: np.ndarray, gt_classes: np.ndarray, n_classes: int
) -> dict[int, float]:
    """Dice score per foreground class.

    Args:
        pred_classes: ``(H, W)`` integer class indices (0 = background).
        gt_classes: ``(H, W)`` integer class indices.
        n_classes: number of classes including the background.

    Returns:
        ``{class index: dice}`` for classes ``1 .. n_classes - 1``.
    """
    pred, gt = np.asarray(pred_classes), np.asarray(gt_classes)
    _check_same_shape(pred, gt, "class_dice")
    p = np.bincount(pred.ravel().astype(np.int64), minlength=n_classes)
    g = np.bincount(gt.ravel().astype(np.int64), minlength=n_classes)
    both = np.bincount(pred[pred == gt].astype(np.int64), minlength=n_classes)
    out = {}
    for c in range(1, n_classes):
        tot = int(p[c]) + int(g[c])
        out[c] = 1.0 if tot == 0 else 2.0 * int(both[c]) / tot
    return out


def _overlaps(
    gt: np.ndarray, pred: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sparse overlap table of two label images (0 = background included).

    Returns:
        ``(g, p, inter, gt_area, pred_area)``: ids of each overlapping pair, its pixel count,
        and the areas of the gt / pred labels indexed by id (``np.bincount``).
    """
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    mp = int(p.max()) + 1 if p.size else 1
    keys, inter = np.unique(g * mp + p, return_counts=True)
    return keys // mp, keys % mp, inter, np.bincount(g), np.bincount(p)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Relabel to ``0..K`` when the ids are sparse (keeps bincounts small)."""
    if labels.size and int(labels.max()) > 4 * labels.size:
        _, inv = np.unique(labels, return_inverse=True)
        return inv.reshape(labels.shape) + (0 if labels.min() == 0 else 1)
    return labels


def object_f1(
    pred_instances: np.ndarray, gt_instances: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Object-level precision, recall and F1.

    A predicted and a ground-truth object match when their IoU exceeds ``iou_threshold``;
    at thresholds >= 0.5 matches are unique, below that they are assigned greedily by IoU.

    Args:
        pred_instances: ``(H, W)`` integer instance labels, 0 = background.
        gt_instances: ``(H, W)`` integer instance labels, 0 = background.
        iou_threshold: IoU a match must exceed.

    Returns:
        ``{"precision", "recall", "f1", "tp", "fp", "fn"}``; precision (recall) is NaN without
        predicted (ground-truth) objects, F1 is 1.0 when both are empty.
    """
    pred = _compact(_as_instances(pred_instances))
    gt = _compact(_as_instances(gt_instances))
    _check_same_shape(pred, gt, "object_f1")
    g, p, inter, ga, pa = _overlaps(gt, pred)
    n_gt = int(np.count_nonzero(ga[1:]))
    n_pred = int(np.count_nonzero(pa[1:]))
    fg = (g > 0) & (p > 0)
    g, p, inter = g[fg], p[fg], inter[fg]
    iou = inter / (ga[g] + pa[p] - inter)
    ok = iou > iou_threshold
    if iou_threshold >= 0.5:
        tp = int(np.count_nonzero(ok))
    else:
        used_g, used_p, tp = set(), set(), 0
        for i in np.flatnonzero(ok)[np.argsort(-iou[ok], kind="stable")]:
            if g[i] not in used_g and p[i] not in used_p:
                used_g.add(g[i])
                used_p.add(p[i])
                tp += 1
    fp, fn = n_pred - tp, n_gt - tp
    denom = 2 * tp + fp + fn
    return {
        "precision": tp / n_pred if n_pred else math.nan,
        "recall": tp / n_gt if n_gt else math.nan,
        "f1": 2 * tp / denom if denom else 1.0,
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def _best_match(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """For each gt id, the pred label (0 = background) it overlaps most; index = gt id."""
    g, p, inter, ga, _ = _overlaps(gt, pred)
    best = np.zeros(len(ga), np.int64)
    # Sort by (gt id, overlap): the last entry of each gt id is its largest overlap.
    order = np.lexsort((inter, g))
    last = np.r_[g[order][1:] != g[order][:-1], True]
    best[g[order][last]] = p[order][last]
    return best


def interface_scores(
    pred_interface: np.ndarray | None,
    pred_instances: np.ndarray,
    gt_instances: np.ndarray,
    touch_distance: int = 2,
    tolerance: float = 2,
) -> dict[str, float]:
    """How well touching objects are separated (Ke et al., section 4.1).

    Args:
        pred_interface: ``(H, W)`` bool predicted interface pixels, or ``None``.
        pred_instances: ``(H, W)`` predicted instance labels, 0 = background.
        gt_instances: ``(H, W)`` ground-truth instance labels, 0 = background.
        touch_distance: objects within this Chebyshev distance (px) touch
            (:func:`napari_lazylabels.core.simulate.touching_pairs`).
        tolerance: a predicted interface pixel is correct within this Euclidean distance (px)
            of a ground-truth interface pixel.

    Returns:
        ``{"precision", "pairs_separated", "n_pairs", "n_pred_pixels"}``: precision is the
        share of predicted interface pixels near a ground-truth interface (NaN without
        predicted pixels); pairs_separated is the share of touching ground-truth pairs whose
        objects are matched (by largest overlap, background included) to two different
        predicted objects; an undetected object leaves its pairs unseparated (NaN without
        touching pairs).
    """
    gt = _as_instances(gt_instances)
    pred = _as_instances(pred_instances)
    _check_same_shape(pred, gt, "interface_scores")

    n_pix = 0
    precision = math.nan
    if pred_interface is not None:
        pi = np.asarray(pred_interface, bool)
        _check_same_shape(pi, gt, "interface_scores")
        n_pix = int(np.count_nonzero(pi))
        if n_pix:
            gi = interface_mask(gt, touch_distance)
            if gi.any():
                d = cv2.distanceTransform(
                    (~gi).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE
                )
                precision = float(np.count_nonzero(pi & (d <= tolerance))) / n_pix
            else:
                precision = 0.0

    pairs = touching_pairs(gt, touch_distance)
    separated = math.nan
    if pairs:
        best = _best_match(gt, pred)
        a, b = np.array(sorted(pairs)).T
        ok = (best[a] > 0) & (best[b] > 0) & (best[a] != best[b])
        separated = float(np.count_nonzero(ok)) / len(pairs)
    return {
        "precision": precision,
        "pairs_separated": separated,
        "n_pairs": len(pairs),
        "n_pred_pixels": n_pix,
    }


def evaluate_image(
    pred_classes: np.ndarray,
    pred_instances: np.ndarray,
    pred_interface: np.ndarray | None,
    gt_instances: np.ndarray,
    touch_distance: int = 2,
    tolerance: float = 2,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """All scores of one image against its instance ground truth.

    Args:
        pred_classes: ``(H, W)`` predicted class indices (0 = background).
        pred_instances: ``(H, W)`` predicted instance labels (0 = background).
        pred_interface: ``(H, W)`` bool predicted interfaces, or ``None``.
        gt_instances: ``(H, W)`` ground-truth instance labels (0 = background).
        touch_distance, tolerance: see :func:`interface_scores`.
        iou_threshold: see :func:`object_f1`.

    Returns:
        Flat dict: ``dice`` (foreground), ``object_precision``, ``object_recall``,
        ``object_f1``, ``tp``, ``fp``, ``fn``, ``interface_precision``, ``pairs_separated``,
        ``n_pairs``, ``n_interface_pixels``.
    """
    gt = _as_instances(gt_instances)
    out = {"dice": dice(np.asarray(pred_classes) > 0, gt > 0)}
    f1 = object_f1(pred_instances, gt, iou_threshold)
    out.update(
        object_precision=f1["precision"],
        object_recall=f1["recall"],
        object_f1=f1["f1"],
        tp=f1["tp"],
        fp=f1["fp"],
        fn=f1["fn"],
    )
    it = interface_scores(pred_interface, pred_instances, gt, touch_distance, tolerance)
    out.update(
        interface_precision=it["precision"],
        pairs_separated=it["pairs_separated"],
        n_pairs=it["n_pairs"],
        n_interface_pixels=it["n_pred_pixels"],
    )
    return out


def summarize(results: list[dict]) -> dict[str, float]:
    """Mean of each numeric score over images, ignoring NaN, plus ``n`` (number of images).

    A score that is NaN in every image stays NaN.
    """
    out: dict[str, float] = {}
    keys = [k for r in results for k in r]
    for k in dict.fromkeys(keys):
        vals = np.array(
            [float(r[k]) for r in results if isinstance(r.get(k), (int, float, np.number))],
            float,
        )
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if vals.size else math.nan
    out["n"] = len(results)
    return out
