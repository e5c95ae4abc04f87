"""Time to a first useful model (issue 6; not a test).

From the bundled sample's lazy labels (``napari_lazylabels/sample_data/dataset``) a model is
trained with the product's default settings (device, model size, batch, patch, working scale
all "auto"), exactly as the one-click button and ``lazylabels demo`` do, for a long budget.
Every ``--every`` iterations the model is scored on the two held-out sample images with exact
masks (foreground dice, the training loop's own validation), and the time spent validating is
taken out of the clock. Reported: the dice curve against training time, the long run's dice
(mean of its last three scores), the first time the dice came within ``--tolerance`` of it,
and the time to predict the sample images as layers would be (whole images, Gaussian tiles).
``--more-heldout N`` also scores N more images of the DSB 2018 touching-nuclei set in
``../shared/data`` (every k-th, none of the sample's own), so that the curve is not the
judgement of two images.

    OMP_NUM_THREADS=2 python benchmarks/first_model.py --minutes 20
    python benchmarks/first_model.py --minutes 4 --device cuda      # on a GPU

Writes ``benchmarks/results/first_model/<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import FOLDERS, RESULTS, machine, shared_data, utc_now, versions
from napari_lazylabels.core import io
from napari_lazylabels.core.checkpoint import load_model
from napari_lazylabels.core.io import Sample
from napari_lazylabels.core.model import resolve_device
from napari_lazylabels.core.predict import PredictConfig, Predictor
from napari_lazylabels.core.prepare import image_channels
from napari_lazylabels.core.train import TrainConfig, fit
from napari_lazylabels.sample_data import sample_paths

log = logging.getLogger("first_model")
OUT = RESULTS / "first_model"


def held_out() -> list[Sample]:
    paths = sample_paths()
    out = []
    for f in sorted(Path(paths["test_images"]).iterdir()):
        gt = io.read_label(Path(paths["test_masks"]) / f"{f.stem}.png")
        seg = np.where(gt > 0, 2, 1).astype(np.uint8)
        out.append(Sample(f.stem, io.read_image(f), segmentation=seg))
    return out


def more_heldout(n: int) -> list[Sample]:
    """``n`` DSB images with exact masks from the shared data, none of the bundled sample's."""
    root = shared_data() / FOLDERS["dsb"]  # exits with a message where the data is absent
    used = {p.stem.removeprefix("dsb_") for d in ("dataset", "test_images") for p in
            (Path(sample_paths()[d]) / ("images" if d == "dataset" else "")).iterdir()}
    files = [f for f in sorted((root / "images").iterdir()) if not any(f.stem.startswith(u) for u in used)]
    out = []
    spread = files[:: max(1, len(files) // n)]
    for f in spread + [f for f in files if f not in spread]:
        if len(out) == n:
            break
        image = io.read_image(f)
        if image_channels(image) == 3:
            continue  # stained tissue in colour: the sample (and its model) is grey fluorescence
        gt = io.read_label(root / "masks" / f"{f.stem}.png")
        out.append(Sample(f.stem[:10], image, segmentation=np.where(gt > 0, 2, 1).astype(np.uint8)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0, help="the long run's training budget")
    ap.add_argument("--every", type=int, default=20, help="score every this many iterations")
    ap.add_argument("--tolerance", type=float, default=0.02)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--iterations", type=int, help="a budget in steps instead of --minutes (a busy machine "
                    "then changes the time, not the model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a TrainConfig field for a comparison, e.g. marks_to_segmentation=false (JSON value)")
    ap.add_argument("--more-heldout", type=int, default=0, metavar="N",
                    help="also score N images of the shared DSB set (needs ../shared/data)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    ds = io.load_dataset(sample_paths()["dataset"])
    val = held_out() + (more_heldout(args.more_heldout) if args.more_heldout else [])
    device = resolve_device(args.device)
    overrides = {k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)}
    cfg = TrainConfig(iterations=args.iterations, time_budget=None if args.iterations else args.minutes * 60,
                      seed=0, val_every=args.every, device=args.device, num_threads=args.threads, **overrides)
    curve: list[dict] = []
    state = {"last_step": 0.0, "val_time": 0.0}

    def on_event(ev):
        if ev.kind == "step":
            state["last_step"] = ev.elapsed
        elif ev.kind == "validation":
            state["val_time"] += ev.elapsed - state["last_step"]
            train_s = ev.elapsed - state["val_time"]
            curve.append({"iteration": ev.iteration, "train_s": round(train_s, 1), "dice": round(ev.metrics["dice"], 4)})
            log.info("it %d, %.0f s of training: held-out dice %.3f", ev.iteration, train_s, ev.metrics["dice"])
        elif ev.kind == "start":
            log.info("start: %s", ev.message)
            state["start"] = ev.message

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = fit(ds, Path(tmp) / "model", train_config=cfg, validation=val, progress=on_event)
        wall = time.perf_counter() - t0
        model, ck = load_model(res.latest, device=device)
        predictor = Predictor(model, ck.model_config, PredictConfig(device=str(device)))
        t1 = time.perf_counter()
        pixels = 0
        for s in ds:
            predictor.predict(s.image, instances=True)
            pixels += s.image.shape[0] * s.image.shape[1]
        predict_s = time.perf_counter() - t1

    final = float(np.mean([c["dice"] for c in curve[-3:]]))
    first = next((c for c in curve if c["dice"] >= final - args.tolerance), None)
    record = {
        "date": utc_now(),
        "device": str(device),
        "start": state.get("start"),
        "model_config": ck.model_config.to_dict(),
        "train_config": ck.train_config,  # as resolved by training (auto settings filled in)
        "versions": versions(),
        "machine": machine(),
        "iterations": res.iteration,
        "wall_s": round(wall, 1),
        "long_run_dice": round(final, 4),
        "overrides": overrides,
        "tolerance": args.tolerance,
        "heldout_images": [s.name for s in val],
        "first_useful": first,
        "predict_sample_s": round(predict_s, 2),
        "predict_sample_mp": round(pixels / 1e6, 3),
        "curve": curve,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    tag = "".join(f"_{k}-{v}" for k, v in sorted(overrides.items()))
    path = OUT / f"{device.type}-{record['date'][:10]}{'_it' + str(args.iterations) if args.iterations else ''}{tag}.json"
    io.atomic_write_json(path, record)
    sys.stdout.write(json.dumps({k: v for k, v in record.items() if k != "curve"}, indent=1) + "\n")
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
