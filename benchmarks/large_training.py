"""Peak memory and time of ``lazylabels train`` on one large image with marks in a few places
(not a test).

Writes a dataset folder with one synthetic ``SIDE x SIDE`` uint8 image (nuclei-like discs on a
noisy background, as ``blockwise_memory.py`` makes) whose detection marks (object marks inside
the discs and background scribbles, derived from the discs drawn) sit in ``--places`` squares
of 600 px, then runs the installed console script as a user does, with defaults and an
iteration budget:

    lazylabels train DATASET --out MODEL --iterations N

and records its peak resident memory (``/usr/bin/time``), wall time and the log's line on
crops, appending to ``benchmarks/results/large_training/records.jsonl``::

    python benchmarks/large_training.py --side 12000 --iterations 60 --work /tmp/large-training

Run it from a checkout before and after a change (``PYTHONPATH=<checkout>/src``) to compare.

``--isbi``: the same on real EM instead, with accuracy: a SIDE x SIDE mosaic of ISBI 2012
slices 0-11 (``../shared/data``) whose lazy labels are simulated from the ground truth
(``simulate_sample``) and kept in ``--places`` squares of 1024 px only; after training, the
model predicts a 2048 x 2048 mosaic of the held-out slices 12-19 and ``lazylabels evaluate``
scores it (dice, object F1), recorded with the run::

    python benchmarks/large_training.py --isbi --side 6144 --iterations 400 --seed 0
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from _common import (
    FOLDERS,
    RESULTS,
    append_jsonl,
    git_commit,
    machine,
    run_console,
    shared_data,
    utc_now,
    versions,
)


def make_dataset(path: Path, side: int, places: int, seed: int = 0) -> Path:
    """A dataset folder with one ``side x side`` image, marks in ``places`` squares (kept if present)."""
    import cv2

    from napari_lazylabels.core.io import LazyDataset, Sample, save_dataset
    from napari_lazylabels.core.labels import ClassSpec

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    image = rng.normal(30, 8, (side, side)).clip(0, 255).astype(np.uint8)
    objects = np.zeros((side, side), np.uint8)
    for _ in range(side * side // 900):
        centre, r = (int(rng.integers(0, side)), int(rng.integers(0, side))), int(rng.integers(4, 15))
        cv2.circle(image, centre, r, int(rng.integers(150, 230)), -1)
        cv2.circle(objects, centre, max(1, r // 2), 1, -1)
    detection = np.zeros((side, side), np.uint8)
    for k in range(places):  # spread along the diagonal
        c = int((k + 0.5) * side / places)
        sq = (slice(c - 300, c + 300), slice(c - 300, c + 300))
        detection[sq] = np.where(objects[sq] > 0, 2, 0)  # object marks inside the discs
        detection[c - 300 : c + 300 : 40, c - 300 : c + 300][image[c - 300 : c + 300 : 40, c - 300 : c + 300] < 60] = 1
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_dataset(LazyDataset(ClassSpec(), [Sample("big", image, detection=detection)]), tmp)
    tmp.rename(path)
    return path


def make_isbi_dataset(path: Path, side: int, places: int, seed: int = 0) -> Path:
    """A dataset folder with one ``side x side`` mosaic of ISBI slices 0-11, lazy labels
    simulated from its ground truth in ``places`` squares of 1024 px along the diagonal."""
    from napari_lazylabels.core.io import LazyDataset, Sample, save_dataset
    from napari_lazylabels.core.labels import ClassSpec
    from napari_lazylabels.core.simulate import simulate_sample
    from viewer_freezes_predict import mosaic

    if path.exists():
        return path
    folder = shared_data() / FOLDERS["isbi"]
    image, truth = mosaic(folder, side, 0), mosaic(folder, side, 0, masks=True)
    labels = simulate_sample(truth, np.random.default_rng(seed))
    keep = np.zeros((side, side), bool)
    for k in range(places):
        c = int((k + 0.5) * side / places)
        keep[c - 512 : c + 512, c - 512 : c + 512] = True
    maps = {t: None if labels.get(t) is None else np.where(keep, labels[t], 0).astype(labels[t].dtype)
            for t in ("detection", "separation")}
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_dataset(LazyDataset(ClassSpec(names=("background", "cell")), [Sample("isbi", image, **maps)]), tmp)
    tmp.rename(path)
    return path


def held_out_scores(model: Path, work: Path) -> dict:
    """Dice and object F1 of ``model`` on a 2048 x 2048 mosaic of ISBI slices 12-19, through
    ``lazylabels predict`` and ``lazylabels evaluate --json``."""
    from skimage.io import imsave

    from viewer_freezes_predict import mosaic

    folder = shared_data() / FOLDERS["isbi"]
    test = work / "heldout"
    if not test.exists():
        (test / "images").mkdir(parents=True)
        (test / "masks").mkdir()
        imsave(test / "images" / "held.png", mosaic(folder, 2048, 12), check_contrast=False)
        imsave(test / "masks" / "held.png", mosaic(folder, 2048, 12, masks=True).astype(np.uint16), check_contrast=False)
    pred = work / "pred"
    shutil.rmtree(pred, ignore_errors=True)
    run_console(["predict", str(model), str(test / "images"), "--out", str(pred)])
    run_console(["evaluate", str(pred), str(test / "masks"), "--json", str(work / "scores.json")])
    summary = json.loads((work / "scores.json").read_text())["summary"]
    return {k: summary[k] for k in ("dice", "object_f1") if k in summary}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--places", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lazylabels-large-training"))
    ap.add_argument("--isbi", action="store_true", help="a mosaic of real EM with simulated labels, and its accuracy")
    ap.add_argument("--seed", type=int, default=0, help="lazylabels train --seed")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.isbi:
        ds = make_isbi_dataset(a.work / f"isbi{a.side}", a.side, a.places)
    else:
        ds = make_dataset(a.work / f"ds{a.side}", a.side, a.places)
    out = a.work / "model"
    shutil.rmtree(out, ignore_errors=True)
    run = run_console(["train", str(ds), "--out", str(out), "--iterations", str(a.iterations), "--seed", str(a.seed)])
    crops = [line.split("INFO", 1)[-1].strip() for line in run.pop("stderr").splitlines() if "part(s) around its labels" in line]
    rec = {"kind": "large_training", "date": utc_now(), "commit": git_commit(), "data": "isbi" if a.isbi else "discs",
           "side": a.side, "places": a.places, "iterations": a.iterations, "seed": a.seed, **run, "crops": crops,
           "machine": machine(), "versions": versions()}
    if a.isbi:
        rec["held_out"] = held_out_scores(out, a.work)
    append_jsonl(RESULTS / "large_training" / "records.jsonl", rec)
    keys = ("data", "side", "seed", "seconds", "peak_rss_mb", "crops", "held_out")
    sys.stdout.write(json.dumps({k: rec[k] for k in keys if k in rec}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
