"""Peak memory and time of ``lazylabels predict`` on images larger than memory (not a test).

Writes a synthetic ``SIDE x SIDE`` uint8 zarr (bright discs of 4-14 px radius on a noisy dark
background, chunk by chunk, so that making it needs no memory either), then runs the
installed console script as a user does, with defaults:

    lazylabels predict MODEL big.zarr --out OUT

and records its peak resident memory (``/usr/bin/time``'s maximum resident set size), wall time, megapixels per
second and the objects found, appending a record to
``benchmarks/results/blockwise/records.jsonl``.

    python benchmarks/blockwise_memory.py MODEL --sides 10000 40000 --work /tmp/blockwise
    python benchmarks/blockwise_memory.py MODEL --sides 10000 --resplit 0.7   # and a re-split of it

MODEL is any trained model folder (e.g. from ``lazylabels train <sample dataset> --minutes 1``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import RESULTS, append_jsonl, git_commit, machine, run_console, utc_now, versions

MB = 2**20


def make_zarr(path: Path, side: int, chunk: int = 1024, seed: int = 0) -> Path:
    """A ``side x side`` uint8 zarr of discs, written one chunk at a time (kept if present)."""
    import cv2
    import zarr

    if path.exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.create_array(str(tmp), shape=(side, side), chunks=(chunk, chunk), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for y in range(0, side, chunk):
        for x in range(0, side, chunk):
            h, w = min(chunk, side - y), min(chunk, side - x)
            block = rng.normal(30, 8, (h, w)).clip(0, 255).astype(np.uint8)
            for _ in range(h * w // 900):
                cv2.circle(block, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(4, 15)),
                           int(rng.integers(150, 230)), -1)
            arr[y : y + h, x : x + w] = block
    tmp.rename(path)
    return path


def run(model: str, image: Path, out: Path) -> dict:
    """``lazylabels predict MODEL IMAGE --out OUT`` (:func:`timed`)."""
    shutil.rmtree(out, ignore_errors=True)
    return timed(["predict", model, str(image), "--out", str(out)])


def timed(args: list[str]) -> dict:
    """The console script with ``args`` under ``/usr/bin/time`` (:func:`_common.run_console`):
    command, wall seconds and peak resident memory."""
    out = run_console(args)
    out.pop("stderr")
    return out


def count_objects(out: Path, name: str) -> int:
    import zarr

    root = zarr.open_group(str(out / f"{name}.ome.zarr"), mode="r")
    inst = root["labels/instances/0"]
    top = 0
    for y in range(0, inst.shape[0], 4096):  # the largest id, read in bands
        top = max(top, int(np.asarray(inst[y : y + 4096]).max()))
    return top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--sides", type=int, nargs="+", default=[10000, 40000])
    ap.add_argument("--work", type=Path, default=Path("/tmp/lazylabels-blockwise"))
    ap.add_argument("--keep", action="store_true", help="keep the outputs")
    ap.add_argument("--resplit", type=float, metavar="THRESHOLD",
                    help="then cut the prediction again: lazylabels instances OUT --interface-threshold THRESHOLD")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for side in args.sides:
        name = f"discs{side}"
        t0 = time.perf_counter()
        image = make_zarr(args.work / f"{name}.zarr", side)
        made = time.perf_counter() - t0
        out = args.work / f"out{side}"
        rec = {"kind": "blockwise_memory", "date": utc_now(), "commit": git_commit(), "side": side,
               "megapixels": side * side / 1e6, **run(args.model, image, out)}
        rec["mp_per_s"] = round(rec["megapixels"] / rec["seconds"], 3)
        rec["objects"] = count_objects(out, name)
        if args.resplit is not None:
            again = timed(["instances", str(out), "--interface-threshold", str(args.resplit)])
            rec["resplit"] = {**again, "objects": count_objects(out, name)}
        rec.update(make_seconds=round(made, 1), machine=machine(), versions=versions())
        append_jsonl(RESULTS / "blockwise" / "records.jsonl", rec)
        keys = ("side", "seconds", "peak_rss_mb", "mp_per_s", "objects", "resplit")
        sys.stdout.write(json.dumps({k: rec[k] for k in keys if k in rec}) + "\n")
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
