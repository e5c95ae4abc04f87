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
object) likewise, ``neck`` (h of the h-maxima) as a share of its radius.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import lazy_dataset, shared_data, validation_set  # noqa: E402
from napari_lazylabels.core import metrics  # noqa: E402
from napari_lazylabels.core.checkpoint import load_model  # noqa: E402
from napari_lazylabels.core.data import object_size  # noqa: E402
from napari_lazylabels.core.predict import (  # noqa: E402
    PredictConfig,
    Predictor,
    instances_from_prediction,
    separating_interfaces,
)

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
        preds = [(gt, (gt > 0).astype(np.uint8), None, None) for _, _, gt in val]
    else:
        model, ck = load_model(Path(args.model) / "latest.pt" if Path(args.model).is_dir() else args.model)
        predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", batch_size=8))
        preds = []
        for _, image, gt in val:
            p = predictor.predict(image, instances=False)
            preds.append((gt, p.classes, p.interfaces, p.probabilities))
    sys.stdout.write(json.dumps({"dataset": args.dataset, "object_diameter": round(d, 2)}) + "\n")
    for setting in SETTINGS:
        t = setting["interface_threshold"]
        min_size = max(16, int(setting["min_area"] * area)) if setting["min_area"] else 16
        results = []
        for gt, classes, interfaces, probs in preds:
            inst = instances_from_prediction(
                classes, interfaces, t, min_size,
                probabilities=probs if "seed_probability" in setting else None,
                seed_probability=setting.get("seed_probability", 0.9),
                neck_depth=setting.get("neck", 0.0) * d / 2,
                min_seed_size=max(1, int(setting["seed_area"] * area)) if "seed_area" in setting else None,
            )
            itf = None if interfaces is None else separating_interfaces(interfaces, inst, t)
            results.append(metrics.evaluate_image(classes, inst, itf, gt))
        s = metrics.summarize(results)
        row = {**setting, "min_size": min_size,
               **{k: round(s[k], 3) for k in ("dice", "object_f1", "object_precision", "object_recall",
                                              "pairs_separated", "interface_precision")}}
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
