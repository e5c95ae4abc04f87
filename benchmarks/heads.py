"""Which head should draw the class map? Rescore a kept multi-task model with the class
probabilities of the segmentation head (the product), the detection head, or a mix.

The multi-task net has two heads over the same classes: detection (task 1, trained on the
rough marks of every image) and segmentation (task 3, trained on the few exact masks). With
few exact masks the segmentation head sees few images; the detection head sees them all but
was never taught where boundaries lie. This benchmark scores, on the accuracy benchmark's
validation split, class maps from ``w * detection + (1 - w) * segmentation`` for a few ``w``,
with the product's instance post-processing (the separation head unchanged).

Usage (a model kept by ``accuracy.py --keep-models``)::

    OMP_NUM_THREADS=1 python benchmarks/heads.py RECORD.json [--weights 0 0.25 0.5 1]

Writes ``benchmarks/results/heads/<dataset>_<run id>.json`` and logs one line per weight.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

import accuracy
from _common import RESULTS, shared_data
from napari_lazylabels.core import io
from napari_lazylabels.core.checkpoint import load_checkpoint
from napari_lazylabels.core.model import resolve_device
from napari_lazylabels.core.predict import (
    PredictConfig,
    Predictor,
    instances_from_prediction,
    separating_interfaces,
)

log = logging.getLogger("heads")
OUT = RESULTS / "heads"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("record", type=Path, help="an accuracy record of a multi-task run kept with --keep-models")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0],
                    help="detection weights w to score (0 = the product's segmentation head)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = json.loads(args.record.read_text())
    c = record["config"]
    model = accuracy.WORK / "models" / c["dataset"] / record["run_id"] / "latest.pt"
    if not model.exists():
        log.error("no kept model at %s: run accuracy.py with --keep-models first", model)
        return 2
    root = shared_data()
    lazy, _ = accuracy.lazy_dataset(c["dataset"], root, c["strong_fraction"], record["seed"])
    min_size = accuracy.speck_filter(lazy)
    ck = load_checkpoint(model)
    device = resolve_device("cpu")
    pc = PredictConfig(device="cpu", batch_size=8, min_object_size=min_size)
    predictor = Predictor(ck.build(device), ck.model_config, pc, keep_detection=True)
    threshold = predictor.interface_threshold
    val = accuracy.validation_set(c["dataset"], root)
    maps = []  # predict once; each weight only mixes the kept maps
    for _, image, _ in val:
        p = predictor.predict(image, instances=False)
        if p.detection is None:
            log.error("the model has no detection head")
            return 2
        maps.append((p.probabilities, p.detection, p.interfaces))
    by_index = [(stem, i, gt) for i, (stem, _, gt) in enumerate(val)]
    out = {"record": args.record.name, "run_id": record["run_id"], "metrics_in_record": record["metrics"],
           "dataset": c["dataset"], "tta": pc.tta, "weights": {}}
    for w in args.weights:

        def predict_one(i, w=w):
            seg, det, itf = maps[i]
            mix = w * det + (1 - w) * seg
            classes = np.argmax(mix, 0).astype(np.uint8)
            inst = instances_from_prediction(classes, itf, threshold, min_size,
                                             probabilities=None if pc.seed_probability is None else mix,
                                             seed_probability=pc.seed_probability or 0.9,
                                             neck_depth=pc.neck_depth)
            if itf is None:
                return classes, inst, None, None
            return classes, inst, separating_interfaces(itf, inst, threshold), itf >= threshold

        summary, _ = accuracy.score(by_index, predict_one)
        out["weights"][f"{w:g}"] = summary
        log.info("detection weight %g: dice %.3f object F1 %.3f", w, summary["dice"], summary["object_f1"])
    if "0" in out["weights"]:  # the product's own class map: must reproduce the record
        log.info("w = 0 reproduces the record: dice %.4f vs %.4f", out["weights"]["0"]["dice"],
                 record["metrics"]["dice"])
    OUT.mkdir(parents=True, exist_ok=True)
    io.atomic_write_json(OUT / f"{c['dataset']}_{record['run_id']}.json", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
