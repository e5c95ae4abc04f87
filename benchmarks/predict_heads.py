"""Prediction throughput with and without head selection (not a test).

:class:`napari_lazylabels.core.predict.Predictor` asks the multi-task network for the heads
each orientation needs (the class map's in every orientation, the separation head's in the
first only), so the network skips the detection path and, in the later orientations, the
separation decoder. This times ``Predictor.predict`` (normalise, Gaussian-blended tiles,
argmax and instances) against the same predictor whose network is wrapped to run every head
every time (the behaviour before), interleaved, medians of ``--reps`` timed calls after one
warm-up; both give the same maps (checked). It also times what training's validation and
the Train widget's preview ask for, the class map alone (``predict(instances=False)``), with
and without the interface map (``PredictConfig.keep_interfaces``). Appends one JSON record to
``benchmarks/results/speed/predict-heads.jsonl``.

    OMP_NUM_THREADS=2 python benchmarks/predict_heads.py --threads 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, append_jsonl, machine, utc_now
from napari_lazylabels.core.model import ModelConfig, build_model, precision_name
from napari_lazylabels.core.predict import PredictConfig, Predictor

log = logging.getLogger("predict_heads")
OUT = RESULTS / "speed" / "predict-heads.jsonl"


class EveryHead(torch.nn.Module):
    """The network called without ``tasks``: every head, every orientation."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner(x)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--side", type=int, default=1024)
    ap.add_argument("--tta", default="4,1", help="orientations to time (PredictConfig.tta; default 4)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    image = (rng.random((args.side, args.side, 3)) * 255).astype(np.uint8)
    rows = []
    for size in args.sizes.split(","):
        torch.manual_seed(0)
        cfg = ModelConfig.named(size, in_channels=3, n_classes=2)
        model = build_model(cfg).eval()
        for tta in (int(t) for t in args.tta.split(",")):
            pc = replace(PredictConfig(device="cpu"), tta=tta)
            fast, whole = Predictor(model, cfg, pc), Predictor(EveryHead(model), cfg, pc)
            lean = Predictor(model, cfg, replace(pc, keep_interfaces=False))
            a, b = fast.predict(image), whole.predict(image)  # warm-up, and the same maps?
            c = lean.predict(image, instances=False)
            diff = max(float(np.abs(a.probabilities - b.probabilities).max()),
                       float(np.abs(a.interfaces - b.interfaces).max()),
                       float(np.abs(a.probabilities - c.probabilities).max()))
            # (name, predictor, compute instances?)
            order = [("heads asked for", fast, True), ("every head", whole, True),
                     ("class map, with interfaces", fast, False), ("class map only", lean, False)]
            times: dict[str, list[float]] = {name: [] for name, _, _ in order}
            for rep in range(args.reps):
                for name, pr, inst in order if rep % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    pr.predict(image, instances=inst)
                    times[name].append(time.perf_counter() - t0)
            mp = args.side**2 / 1e6
            row = {"size": size, "tta": tta, "side": args.side, "precision": precision_name(fast.amp_dtype),
                   "tile": pc.tile, "overlap": pc.overlap, "batch": pc.batch_size, "max_abs_diff": diff,
                   "seconds": {k: statistics.median(v) for k, v in times.items()}, "seconds_all": times}
            row["mp_per_s"] = {k: mp / v for k, v in row["seconds"].items()}
            row["speedup"] = row["seconds"]["every head"] / row["seconds"]["heads asked for"]
            row["class_map_speedup"] = row["seconds"]["class map, with interfaces"] / row["seconds"]["class map only"]
            log.info("%s tta %d %d^2: heads asked for %.3f MP/s, every head %.3f MP/s, %.2fx; class map "
                     "without / with interfaces %.3f / %.3f MP/s, %.2fx (max |diff| %.2g)",
                     size, tta, args.side, row["mp_per_s"]["heads asked for"], row["mp_per_s"]["every head"],
                     row["speedup"], row["mp_per_s"]["class map only"],
                     row["mp_per_s"]["class map, with interfaces"], row["class_map_speedup"], diff)
            rows.append(row)
    record = {"date": utc_now(),
              "command": "python benchmarks/predict_heads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine(), "torch": torch.__version__, "rows": rows}
    append_jsonl(args.out, record)
    log.info("record appended to %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
