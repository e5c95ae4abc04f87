"""How instance post-processing settings score with one trained model (not a test).

Predicts the validation images of an accuracy-benchmark dataset once with a model kept by
``accuracy.py --keep-models``, then turns the same probability maps into instances with
several settings of :func:`napari_lazylabels.core.predict.instances_from_prediction`
(interface threshold, splitting at uncertain class probability, splitting at necks, the
smallest object kept) and scores each. Only the post-processing differs between rows, so they
compare exactly. ``--truth-foreground`` scores the settings on the exact foreground of the
ground truth instead (no model): what a setting can do when the class map is right.

    python benchmarks/instances.py benchmarks/work/accuracy/models/dsb/RUN_ID --dataset dsb
    python benchmarks/instances.py --truth-foreground --dataset isbi

Sizes are relative to the typical object (median diameter ``d`` of the run's lazy labels,
:func:`napari_lazylabels.core.data.object_size`): ``min_area`` as a share of a disc of diameter
``d``, ``seed_area`` (the smallest seed, ``min_seed_size``; default a quarter of the smallest
object) likewise, ``neck`` (h of the h-maxima) as a share of its radius. ``detection_seeds``
P: seeds are where the *detection* head (trained on the rough inner marks) is at least P
sure, instead of the interface map (multi-task models).

Besides the scores, each row says where the predicted separating interface pixels fall
(shares, within 2 px): on a ground-truth interface (objects within 2 px), in a narrow gap
between two objects 2-6 px apart (a right cut that the interface precision counts as wrong),
on another object boundary, or inside one object (a false cut).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from _common import shared_data
from accuracy import lazy_dataset, validation_set
from napari_lazylabels.core import metrics
from napari_lazylabels.core.checkpoint import load_model
from napari_lazylabels.core.data import object_size
from napari_lazylabels.core.predict import (
    PredictConfig,
    Predictor,
    instances_from_prediction,
    separating_interfaces,
)
from napari_lazylabels.core.simulate import interface_mask


def _near(mask: np.ndarray, px: float = 2) -> np.ndarray:
    if not mask.any():
        return np.zeros(mask.shape, bool)
    return cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= px


def interface_placement(itf: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Pixel counts ``[all, on a gt interface, in a 2-6 px gap, on another boundary, inside]``
    of the predicted separating interface ``itf`` (see the module docstring)."""
    on = _near(interface_mask(gt, 2))
    gap = _near(interface_mask(gt, 6)) & ~on
    edge = _near(find_boundaries(gt, mode="inner")) & ~on & ~gap
    inside = (gt > 0) & ~on & ~gap & ~edge
    return np.array([itf.sum(), (itf & on).sum(), (itf & gap).sum(), (itf & edge).sum(), (itf & inside).sum()])

SETTINGS = [
    {"interface_threshold": 0.5, "min_area": 0.0},
    {"interface_threshold": 0.5, "min_area": 0.05},
    {"interface_threshold": 0.5, "min_area": 0.1},
    {"interface_threshold": 0.5, "min_area": 0.2},
    {"interface_threshold": 0.3, "min_area": 0.1},
    {"interface_threshold": 0.2, "min_area": 0.1},
    {"interface_threshold": 0.7, "min_area": 0.1},
    {"interface_threshold": 0.85, "min_area": 0.1},
    {"interface_threshold": 0.95, "min_area": 0.1},
    {"interface_threshold": 0.5, "min_area": 0.1, "seed_area": 0.1},
    {"interface_threshold": 0.5, "min_area": 0.1, "seed_area": 0.2},
    {"interface_threshold": 0.7, "min_area": 0.1, "seed_area": 0.1},
    {"interface_threshold": 0.5, "min_area": 0.1, "seed_probability": 0.9},
    {"interface_threshold": 0.5, "min_area": 0.1, "detection_seeds": 0.5},
    {"interface_threshold": 0.5, "min_area": 0.1, "detection_seeds": 0.9},
    {"interface_threshold": 0.5, "min_area": 0.1, "neck": 0.05},
    {"interface_threshold": 0.5, "min_area": 0.1, "neck": 0.1},
    {"interface_threshold": 0.5, "min_area": 0.1, "neck": 0.2},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model folder or checkpoint (not with --truth-foreground)")
    ap.add_argument("--dataset", choices=("glas", "isbi", "dsb"), required=True)
    ap.add_argument("--truth-foreground", action="store_true",
                    help="score the settings on the ground truth's foreground instead of a model's prediction")
    args = ap.parse_args(argv)
    if bool(args.model) == args.truth_foreground:
        ap.error("give a model, or --truth-foreground")

    root = shared_data()
    lazy, _ = lazy_dataset(args.dataset, root, 0.094, 0)
    d = object_size(list(lazy)) or 16.0
    area = math.pi / 4 * d * d
    val = validation_set(args.dataset, root)
    if args.truth_foreground:
        preds = [(gt, (gt > 0).astype(np.uint8), None, None, None) for _, _, gt in val]
    else:
        model, ck = load_model(Path(args.model) / "latest.pt" if Path(args.model).is_dir() else args.model)
        predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", batch_size=8), keep_detection=True)
        preds = []
        for _, image, gt in val:
            p = predictor.predict(image, instances=False)
            preds.append((gt, p.classes, p.interfaces, p.probabilities, p.detection))
    sys.stdout.write(json.dumps({"dataset": args.dataset, "object_diameter": round(d, 2)}) + "\n")
    for setting in SETTINGS:
        t = setting["interface_threshold"]
        min_size = max(16, int(setting["min_area"] * area)) if setting["min_area"] else 16
        det = setting.get("detection_seeds")
        if det is not None and any(p[4] is None for p in preds):
            continue  # no detection head
        results = []
        placed = np.zeros(5)
        for gt, classes, interfaces, probs, detection in preds:
            if det is not None:
                split, sp, probabilities = None, det, detection
            else:
                split, sp = interfaces, setting.get("seed_probability", 0.9)
                probabilities = probs if "seed_probability" in setting else None
            inst = instances_from_prediction(
                classes, split, t, min_size, probabilities=probabilities, seed_probability=sp,
                neck_depth=setting.get("neck", 0.0) * d / 2,
                min_seed_size=max(1, int(setting["seed_area"] * area)) if "seed_area" in setting else None,
            )
            itf = None if interfaces is None else separating_interfaces(interfaces, inst, t)
            results.append(metrics.evaluate_image(classes, inst, itf, gt))
            if itf is not None:
                placed += interface_placement(itf, gt)
        s = metrics.summarize(results)
        row = {**setting, "min_size": min_size,
               **{k: round(s[k], 3) for k in ("dice", "object_f1", "object_precision", "object_recall",
                                              "pairs_separated", "interface_precision")}}
        if placed[0]:
            row["interface_pixels"] = int(placed[0])
            row.update({k: round(float(v / placed[0]), 3) for k, v in
                        zip(("on_interface", "in_gap", "on_boundary", "inside"), placed[1:], strict=True)})
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
