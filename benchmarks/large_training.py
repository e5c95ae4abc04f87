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
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from _common import RESULTS, append_jsonl, git_commit, machine, run_console, utc_now, versions


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=12000)
    ap.add_argument("--places", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lazylabels-large-training"))
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(a.work / f"ds{a.side}", a.side, a.places)
    out = a.work / "model"
    shutil.rmtree(out, ignore_errors=True)
    run = run_console(["train", str(ds), "--out", str(out), "--iterations", str(a.iterations)])
    crops = [line.split("INFO", 1)[-1].strip() for line in run.pop("stderr").splitlines() if "part(s) around its labels" in line]
    rec = {"kind": "large_training", "date": utc_now(), "commit": git_commit(), "side": a.side, "places": a.places,
           "iterations": a.iterations, **run, "crops": crops, "machine": machine(), "versions": versions()}
    append_jsonl(RESULTS / "large_training" / "records.jsonl", rec)
    sys.stdout.write(json.dumps({k: rec[k] for k in ("side", "seconds", "peak_rss_mb", "crops")}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
