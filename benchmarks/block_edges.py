"""Do blocks agree with whole-image prediction on real images? (not a test; an experiment:
block sizes are pinned far below the product's 2048 px to make many block edges).

Predicts a ``SIDE x SIDE`` mosaic of held-out ISBI 2012 slices (12-19 of ``../shared/data``,
mirrored; the mosaic of ``viewer_freezes_predict.py``) whole and block by block
(:func:`napari_lazylabels.core.blocks.iter_predict_blocks`, the model's halo) for each block
size, and records object F1 against the ground truth, the number of objects and the object F1
between the block and whole-image instance maps (agreement), in
``benchmarks/results/blockwise/edges.jsonl``::

    python benchmarks/block_edges.py MODEL --side 2048 --blocks 512 256

MODEL: a model folder trained on ISBI slices 0-11 (e.g. ``benchmarks/work/product/isbi_f0.094_s0_3min/model``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import FOLDERS, RESULTS, append_jsonl, git_commit, machine, shared_data, utc_now
from viewer_freezes_predict import mosaic


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--blocks", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--tta", type=int, default=1)
    a = ap.parse_args(argv)

    from napari_lazylabels.core.blocks import block_halo, iter_predict_blocks
    from napari_lazylabels.core.checkpoint import load_model
    from napari_lazylabels.core.jobs import drive
    from napari_lazylabels.core.metrics import object_f1
    from napari_lazylabels.core.predictor import PredictConfig, Predictor

    folder = shared_data() / FOLDERS["isbi"]
    image, truth = mosaic(folder, a.side, 12), mosaic(folder, a.side, 12, masks=True)
    model, ck = load_model(a.model, "cpu")
    predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", tta=a.tta))
    t0 = time.perf_counter()
    whole = predictor.predict(image).instances
    row = {"when": utc_now(), "commit": git_commit(), "machine": machine(), "model": str(a.model), "side": a.side,
           "tta": a.tta, "halo": block_halo(predictor), "whole": {"seconds": round(time.perf_counter() - t0, 1),
           "f1": round(object_f1(whole, truth)["f1"], 4), "objects": int(len(np.unique(whole)) - 1)}, "blocks": {}}
    for block in a.blocks:
        inst = np.zeros(image.shape, np.uint32)
        t0 = time.perf_counter()
        drive(iter_predict_blocks(predictor, image, np.zeros(image.shape, np.uint8), inst, block=block))
        row["blocks"][str(block)] = {"seconds": round(time.perf_counter() - t0, 1), "f1": round(object_f1(inst, truth)["f1"], 4),
                                     "objects": int(len(np.unique(inst)) - 1),
                                     "agreement_f1": round(object_f1(inst, whole)["f1"], 4)}
    append_jsonl(RESULTS / "blockwise" / "edges.jsonl", row)
    print(json.dumps(row))  # noqa: T201 - the benchmark's output
    return 0


if __name__ == "__main__":
    sys.exit(main())
