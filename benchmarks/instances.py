"""How instance post-processing settings score with one trained model (not a test).

Predicts the validation images of an accuracy-benchmark dataset once with a model kept by
``accuracy.py --keep-models``, then turns the same probability maps into instances with
several settings of :func:`napari_lazylabels.core.predict.instances_from_prediction`
(interface threshold, splitting at uncertain class probability) and scores each. Only the
post-processing differs between rows, so they compare exactly.

    python benchmarks/instances.py benchmarks/work/accuracy/models/dsb/RUN_ID --dataset dsb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from accuracy import shared_data, validation_set  # noqa: E402
from napari_lazylabels.core import metrics  # noqa: E402
from napari_lazylabels.core.checkpoint import load_model  # noqa: E402
from napari_lazylabels.core.predict import (  # noqa: E402
    PredictConfig,
    Predictor,
    instances_from_prediction,
    separating_interfaces,
)

SETTINGS = [
    {"interface_threshold": 0.5},
    {"interface_threshold": 0.3},
    {"interface_threshold": 0.2},
    {"interface_threshold": 0.5, "seed_probability": 0.9},
    {"interface_threshold": 0.3, "seed_probability": 0.9},
    {"interface_threshold": 0.5, "seed_probability": 0.7},
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model folder or checkpoint")
    ap.add_argument("--dataset", choices=("glas", "isbi", "dsb"), required=True)
    ap.add_argument("--min-size", type=int, default=16)
    args = ap.parse_args(argv)

    model, ck = load_model(Path(args.model) / "latest.pt" if Path(args.model).is_dir() else args.model)
    predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", batch_size=8))
    val = validation_set(args.dataset, shared_data())
    preds = [(gt, predictor.predict(image, instances=False)) for _, image, gt in val]
    rows = []
    for setting in SETTINGS:
        results = []
        for gt, p in preds:
            t = setting["interface_threshold"]
            inst = instances_from_prediction(
                p.classes, p.interfaces, t, args.min_size,
                probabilities=p.probabilities if "seed_probability" in setting else None,
                seed_probability=setting.get("seed_probability", 0.9),
            )
            itf = None if p.interfaces is None else separating_interfaces(p.interfaces, inst, t)
            results.append(metrics.evaluate_image(p.classes, inst, itf, gt))
        s = metrics.summarize(results)
        rows.append({**setting, **{k: round(s[k], 3) for k in ("dice", "object_f1", "pairs_separated", "interface_precision")}})
        sys.stdout.write(json.dumps(rows[-1]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
