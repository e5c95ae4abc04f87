"""What a validation score means, and when a model is too weak to trust.

Training scores the class map on held-out images (:func:`score_sample`). The number means
different things depending on the reference it is computed on: the held-out images' exact
masks (task 3: a dice of the objects) or only the user's rough marks (task 1: how well the
model agrees with marks drawn inside objects and on background, with the object outlines
unseen). Every score therefore carries its ``measure`` and the ``trivial`` score: that of the
best constant prediction (every pixel one class) on the same pixels, so a high number can be
told from "no better than calling everything a cell". Marks alone cannot call a model weak
(a good ISBI model agrees 0.55 with thin background strokes on membranes, against 0.49 for
everything-cell): there only a model at the trivial score is flagged.

:func:`warnings_for` turns the metrics of a model into one-line warnings that say what to do;
the CLI prints them, the widgets show them, and ``lazylabels predict`` repeats them for a saved
model (they are derived from the metrics stored in the checkpoint, so old models get them too).
"""

from __future__ import annotations

import math

import numpy as np

from .io import LazyDataset, Sample
from .labels import DETECTION, SEGMENTATION, SEPARATION

EXACT = "exact masks"
MARKS = "marks"
MIXED = "exact masks and marks"

#: a model whose best validation dice on exact masks stays below this is called weak
WEAK_DICE = 0.6
#: a model within this margin of the trivial score has learned nothing useful
TRIVIAL_MARGIN = 0.03
#: a model predicting objects on less than this share of the validation images predicts none
NO_OBJECT = 0.001
#: fewer optimiser steps than this cannot make a useful model at the default learning rate
FEW_ITERATIONS = 100
#: after this many steps a longer run no longer helps a weak model (the product path's
#: curves, docs/benchmarks.md: GlaS 0.770 at 10 minutes, 1410-1600 steps, 0.764 at 30
#: minutes, 4797 steps); its labels do
LONG_ITERATIONS = 2000

_MORE_LABELS = "mark more objects (and some background), draw exact masks on a few more images (GrabCut)"


def _what_to_do(iteration: int | None) -> str:
    """What improves a weak model: more labels, and a longer run only when the run was short."""
    if iteration is not None and iteration >= LONG_ITERATIONS:
        return f"{_MORE_LABELS}; after {iteration} iterations, training longer is unlikely to help"
    return f"{_MORE_LABELS}, or train longer"


def reference(sample: Sample) -> tuple[np.ndarray | None, bool]:
    """The label map a sample is scored on and whether it is an exact mask.

    Returns ``(labels (H, W) uint8 with 0 = unlabelled, 1 = background, >= 2 classes, exact)``;
    the exact mask when the sample has a non-empty one, else its detection marks.
    """
    if sample.segmentation is not None and np.any(sample.segmentation):
        return sample.segmentation, True
    return sample.detection, False


def _mean_dice(truth: np.ndarray, pred: np.ndarray, n_classes: int, first: int = 1) -> float:
    """Mean dice over the classes ``first..n_classes-1`` present in ``truth`` (NaN: none)."""
    scores = []
    for c in range(first, n_classes):
        t, p = truth == c, pred == c
        if not t.any():
            continue
        scores.append(2.0 * np.logical_and(t, p).sum() / (t.sum() + p.sum()))
    return float(np.mean(scores)) if scores else float("nan")


def score_sample(classes: np.ndarray, sample: Sample, n_classes: int) -> dict:
    """Score a predicted class map ``(H, W)`` (0 = background) on a sample's annotated pixels.

    On an exact mask the score is the mean dice over object classes (the paper's dice). On
    marks it is the mean dice over every class marked, background included: marks are mostly
    inside objects, so a dice of the objects alone gives "everything is an object" 0.98 on
    ISBI cells, while with the background strokes counted that scores about 0.5.

    Returns ``{"dice", "exact", "trivial", "foreground"}``: that score on the labelled pixels
    of :func:`reference`; whether the reference is an exact mask; the best score of a constant
    prediction (every pixel one class) on the same pixels; the share of the image predicted as
    an object. Scores are NaN where nothing is labelled.
    """
    ref, exact = reference(sample)
    nan = {"dice": float("nan"), "exact": exact, "trivial": float("nan"), "foreground": float("nan")}
    if ref is None:
        return nan
    m = ref > 0
    truth = ref[m].astype(np.int64) - 1
    first = 1 if exact else 0
    dice = _mean_dice(truth, classes[m].astype(np.int64), n_classes, first)
    constants = [_mean_dice(truth, np.full_like(truth, c), n_classes, first) for c in range(n_classes)]
    trivial = float(np.nanmax(constants)) if not np.all(np.isnan(constants)) else float("nan")
    return {"dice": dice, "exact": exact, "trivial": trivial, "foreground": float(np.mean(classes > 0))}


def summarize(scores: list[dict]) -> dict:
    """Validation metrics from per-image :func:`score_sample` results.

    Returns ``{"dice", "n", "measure", "trivial", "foreground"}``: means over the images that
    could be scored; ``measure`` is :data:`EXACT`, :data:`MARKS` or :data:`MIXED`.
    """
    valid = [s for s in scores if not math.isnan(s["dice"])]
    if not valid:
        return {"dice": float("nan"), "n": 0, "measure": None, "trivial": None, "foreground": None}
    exact = {bool(s["exact"]) for s in valid}
    measure = MIXED if len(exact) == 2 else EXACT if exact == {True} else MARKS
    trivial = [s["trivial"] for s in valid if not math.isnan(s["trivial"])]
    return {
        "dice": float(np.mean([s["dice"] for s in valid])),
        "n": len(valid),
        "measure": measure,
        "trivial": float(np.mean(trivial)) if trivial else None,
        "foreground": float(np.mean([s["foreground"] for s in valid])),
    }


def is_sound(metrics: dict) -> bool:
    """Whether validation metrics (:func:`summarize`) show a model that has learned something:
    a score above the trivial one by :data:`TRIVIAL_MARGIN` and some object predicted. Metrics
    without a trivial score or foreground share are judged on what they have."""
    value = metrics.get("dice")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    trivial, foreground = metrics.get("trivial"), metrics.get("foreground")
    if trivial is not None and value <= trivial + TRIVIAL_MARGIN:
        return False
    return foreground is None or foreground >= NO_OBJECT


def describe_score(metrics: dict, best: bool = False) -> str:
    """One line saying what a validation score measures, e.g. ``"validation dice 0.81 on
    exact masks of 2 images"`` or ``"agreement with your marks 0.96 on 3 images (no exact
    masks held out: not a dice of the objects)"``. ``best`` takes ``metrics["best_metric"]``
    (the saved model's score: the highest, or the newest sound network's under a decaying
    learning rate, so it is not called "best")."""
    value = metrics.get("best_metric") if best else metrics.get("dice")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no validation score"
    n = metrics.get("n")
    on = f" of {n} image{'s' if n != 1 else ''}" if n else ""
    measure = metrics.get("measure")
    trivial = metrics.get("trivial")
    tail = "" if trivial is None else f"; everything-one-class scores {trivial:.2f}"
    if measure == MARKS:
        return (f"agreement with your marks {value:.3f}{on.replace(' of', ' on')} (mean dice of every "
                f"marked class, background included; no exact masks held out: not a dice of the objects{tail})")
    if measure == MIXED:
        return f"validation dice {value:.3f} on exact masks and marks{on}{tail}"
    if measure == EXACT:
        return f"validation dice {value:.3f} on exact masks{on}{tail}"
    return f"validation score {value:.3f}"


def warnings_for(metrics: dict | None, iteration: int | None = None) -> list[str]:
    """One-line warnings about a model, each saying what to do (empty: nothing to say).

    Args:
        metrics: the validation metrics of the model (:func:`summarize`, as stored in the
            checkpoint; ``best_metric`` is used when present, else ``dice``).
        iteration: optimiser steps the model was trained for.
    """
    out = []
    metrics = metrics or {}
    if iteration is not None and iteration < FEW_ITERATIONS:
        out.append(
            f"The model was trained for only {iteration} iterations: its predictions are unreliable. "
            f"Train longer (at least a few hundred iterations)."
        )
    value = metrics.get("best_metric", metrics.get("dice"))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if metrics.get("measure") is None and iteration is not None and iteration >= FEW_ITERATIONS:
            out.append(
                "The model was never validated, so its quality is unknown. Draw exact masks (GrabCut) on "
                "a few images, or keep validation on."
            )
        return out
    measure = metrics.get("measure")
    trivial = metrics.get("trivial")
    if trivial is not None and value <= trivial + TRIVIAL_MARGIN:
        out.append(
            f"The model does no better ({value:.2f}) than calling every pixel one class ({trivial:.2f}): "
            f"it has not learned the objects. To fix: {_what_to_do(iteration)}."
        )
    elif measure in (EXACT, MIXED) and value < WEAK_DICE:
        out.append(
            f"The model is weak (validation dice {value:.2f} on exact masks). To improve: {_what_to_do(iteration)}."
        )
    foreground = metrics.get("foreground")
    if foreground is not None and foreground < NO_OBJECT:
        out.append(f"The model predicts (almost) no object on the validation images. To fix: {_what_to_do(iteration)}.")
    if measure == MARKS:
        out.append(
            "No held-out image has an exact mask, so the score shown only checks your marks, not the object "
            "outlines. For a real dice, draw exact masks (GrabCut) on a few more images."
        )
    return out


def check_trainable(dataset: LazyDataset) -> None:
    """Raise a clear ``ValueError`` when the labels cannot teach any object: only background
    (label 1) is painted, on every image and task."""
    for s in dataset:
        for task in (DETECTION, SEGMENTATION):
            lab = s.label(task)
            if lab is not None and np.any(lab >= 2):
                return
        sep = s.label(SEPARATION)
        if sep is not None and np.any(sep >= 2):
            return
    if any(s.tasks() for s in dataset):
        raise ValueError(
            "Only background is painted (label 1): mark some objects too (label 2 and up, a rough stroke "
            "inside each object) before training."
        )
