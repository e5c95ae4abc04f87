"""Calibration that training runs when it ends: the interface threshold that cuts the objects of
the exact masks best.

:func:`tune_interface_threshold` predicts the samples with complete exact masks once and
scores every threshold of :data:`TUNE_THRESHOLDS` on them; training stores the winner in
:attr:`ModelConfig.interface_threshold`, which prediction then uses by default
(:func:`~napari_lazylabels.core.instances.auto_interface_threshold`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .instances import DEFAULT_INTERFACE_THRESHOLD, instances_from_prediction
from .labels import BACKGROUND, UNLABELLED

if TYPE_CHECKING:
    from .predictor import Predictor

TUNE_THRESHOLDS = (0.3, 0.5, 0.7, 0.85, 0.95)
"""Interface thresholds :func:`tune_interface_threshold` tries."""


def exact_instances(sample) -> np.ndarray | None:
    """Instance ground truth from a sample's exact masks, or ``None``.

    Each object class's exact mask is cut into connected components (4-connectivity) after
    removing the sample's interface scribbles (task 2), which is how touching objects are
    told apart in a class mask. ``None`` when the sample has no exact mask, or the mask leaves
    pixels unannotated (then objects may be partial).

    Returns:
        ``(H, W)`` int32 instance ids (0 = none), or ``None``.
    """
    seg = sample.segmentation
    if seg is None or not np.any(seg > BACKGROUND) or np.any(seg == UNLABELLED):
        return None
    out = np.zeros(seg.shape, np.int32)
    cut = sample.separation == 2 if sample.separation is not None else np.zeros(seg.shape, bool)
    n = 0
    for c in range(BACKGROUND + 1, int(seg.max()) + 1):
        comp, k = ndimage.label((seg == c) & ~cut)
        out[comp > 0] = comp[comp > 0] + n
        n += k
    return out


def tune_interface_threshold(
    predictor: Predictor,
    samples,
    candidates: Sequence[float] = TUNE_THRESHOLDS,
    max_images: int = 8,
    max_side: int = 1024,
    min_objects: int = 5,
    margin: float = 0.005,
) -> tuple[float | None, dict[float, float]]:
    """The interface threshold that cuts the objects of the exact masks best (object F1).

    The samples with complete exact masks (:func:`exact_instances`; at most ``max_images``,
    each cropped to its central ``max_side`` square to bound the time) are predicted once;
    each candidate threshold cuts their instances (with the predictor's smallest object) and
    is scored by the mean object F1 at IoU > 0.5. A candidate must beat 0.5 by more than
    ``margin`` to be chosen, so that a model keeps the default unless its masks clearly ask
    for another (docs/benchmarks.md measures the effect per dataset).

    Args:
        predictor: a :class:`~napari_lazylabels.core.predictor.Predictor` of a model with a
            separation head.
        samples: :class:`~napari_lazylabels.core.io.Sample` objects (those without complete
            exact masks are skipped).

    Returns:
        ``(threshold, {candidate: mean object F1})``; threshold ``None`` when the model has no
        separation head or the masks hold fewer than ``min_objects`` objects.
    """
    from .metrics import object_f1

    if not predictor.has_interfaces:
        return None, {}
    maps, n_objects = _predicted_crops(predictor, samples, max_images, max_side)
    if n_objects < min_objects:
        return None, {}
    scores = {}
    for t in candidates:
        f1 = [object_f1(instances_from_prediction(c, i, t, predictor.min_object_size), gt)["f1"] for c, i, gt in maps]
        scores[float(t)] = float(np.mean(f1))
    base = scores.get(DEFAULT_INTERFACE_THRESHOLD, -1.0)
    best = max(scores, key=lambda t: (scores[t], -abs(t - DEFAULT_INTERFACE_THRESHOLD)))
    if scores[best] <= base + margin:
        best = DEFAULT_INTERFACE_THRESHOLD
    return best, scores


def _predicted_crops(
    predictor: Predictor, samples, max_images: int, max_side: int
) -> tuple[list[tuple[np.ndarray, np.ndarray | None, np.ndarray]], int]:
    """``([(classes, interfaces, exact instances)], objects)`` of the central ``max_side``
    crops of the first ``max_images`` samples with complete exact masks."""
    maps = []
    n_objects = 0
    for s in samples:
        if len(maps) >= max_images:
            break
        gt = exact_instances(s)
        if gt is None:
            continue
        h, w = gt.shape
        y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        crop = (slice(y0, y0 + max_side), slice(x0, x0 + max_side))
        pred = predictor.predict(np.asarray(s.image)[crop], instances=False)
        gt = gt[crop]
        n_objects += len(np.unique(gt)) - 1
        maps.append((pred.classes, pred.interfaces, gt))
    return maps, n_objects
