"""What test-time augmentation does for models kept by the accuracy benchmark (not a test).

Scores the validation images of an accuracy-benchmark dataset with one kept model
(``accuracy.py --keep-models``) predicted in 1, 2, 4 and 8 orientations
(:attr:`napari_lazylabels.core.predict.PredictConfig.tta`), with everything else as the
accuracy benchmark scores it (the model's tuned interface threshold, the run's smallest
object). ``--average-interfaces`` adds rows where the interface map is averaged over the
orientations too (the product keeps the plain orientation's; this is the comparison that
decided it). One JSON line per (model, setting) goes to ``benchmarks/results/tta/DATASET.jsonl``.

    python benchmarks/tta.py --dataset glas benchmarks/work/accuracy/models/glas/RUN_ID ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from _common import git_commit, machine, shared_data, utc_now
from accuracy import DATASETS, RESULTS, score, validation_set
from napari_lazylabels.core.checkpoint import load_checkpoint
from napari_lazylabels.core.predict import (
    PredictConfig,
    Predictor,
    dihedral,
    separating_interfaces,
)

OUT = RESULTS.parent / "tta"


class AveragingAllPredictor(Predictor):
    """The rejected variant: every output, the interface map too, is averaged over the
    orientations (each orientation predicted once, by a one-orientation predictor)."""

    def __init__(self, model, config, predict_config: PredictConfig) -> None:
        super().__init__(model, config, predict_config)
        self.one = Predictor(model, config, replace(predict_config, tta=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = self.predict_config.tta
        outs = [{name: dihedral(p, k, inverse=True) for name, p in self.one.forward(dihedral(x, k)).items()}
                for k in range(n)]
        return {name: sum(o[name] for o in outs) / n for name in outs[0]}


def evaluate(model_dir: Path, dataset: str, ttas: list[int], average_interfaces: bool) -> list[dict]:
    record_path = RESULTS / dataset / f"{model_dir.name}.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    min_size = record.get("config", {}).get("min_object_size")
    ck = load_checkpoint(model_dir / "latest.pt")
    val = validation_set(dataset, shared_data())
    rows = []
    variants = [(t, False) for t in ttas] + ([(t, True) for t in ttas if t > 1] if average_interfaces else [])
    for tta, avg in variants:
        if avg and "separation" not in ck.model_config.tasks:
            continue
        cls = AveragingAllPredictor if avg else Predictor
        pr = cls(ck.build("cpu"), ck.model_config,
                 PredictConfig(device="cpu", batch_size=8, min_object_size=min_size, tta=tta))
        thr = pr.interface_threshold

        def one(image, pr=pr, thr=thr):
            p = pr.predict(image, instances=True)
            if p.interfaces is None:
                return p.classes, p.instances, None, None
            return p.classes, p.instances, separating_interfaces(p.interfaces, p.instances, thr), p.interfaces >= thr

        t0 = time.perf_counter()
        summary, _ = score(val, one)
        row = {
            "model": model_dir.name, "dataset": dataset, "tta": tta, "interfaces_averaged": avg,
            "interface_threshold": thr, "min_object_size": min_size,
            "predict_s": round(time.perf_counter() - t0, 1), "n_val": len(val),
            **{k: summary.get(k) for k in ("dice", "object_f1", "pairs_separated", "interface_precision")},
        }
        logging.info("%s", row)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="kept model folders (benchmarks/work/accuracy/models/D/RUN_ID)")
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--tta", default="1,2,4,8", help="orientations to compare (comma list)")
    ap.add_argument("--average-interfaces", action="store_true", help="also rows with the interface map averaged")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = {"at": utc_now(),
             "command": "python benchmarks/tta.py " + " ".join(sys.argv[1:] if argv is None else argv),
             "machine": machine(), "git_commit": git_commit()}
    with open(OUT / f"{args.dataset}.jsonl", "a") as f:
        for m in args.models:
            for row in evaluate(m, args.dataset, [int(t) for t in args.tta.split(",")], args.average_interfaces):
                f.write(json.dumps({**row, **stamp}) + "\n")
                f.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
