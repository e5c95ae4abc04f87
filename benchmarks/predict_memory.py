"""Memory check of whole-image prediction (not a test).

Predicts a synthetic ``side x side`` uint8 image with a small multi-task model, writing the
float maps into ``np.memmap`` files in a temporary folder, and reports the peak resident
memory beyond the baseline (Python + torch + model), the input image and the outputs
(memory-mapped output pages that were touched count in RSS too), plus wall time and
megapixels per second.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/predict_memory.py 4096
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_lazylabels.core import predictor as predictor_mod
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.predict import PredictConfig, Predictor

MB = 2**20


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("side", type=int, nargs="?", default=16384)
    ap.add_argument("--widths", default="4,8,16", help="model channel widths")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--tta", type=int, default=1, help="orientations per tile (PredictConfig.tta; "
                    "1 as in the recorded figures: more only multiply the time)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scale", type=float, default=1.0, help="the model's working scale")
    ap.add_argument("--instances", action="store_true", help="also compute instances (not bounded)")
    ap.add_argument(
        "--eager-limit-mb",
        type=float,
        default=None,
        help="override EAGER_NORMALIZE_BYTES (0 = always normalise tile by tile)",
    )
    args = ap.parse_args()
    if args.eager_limit_mb is not None:
        predictor_mod.EAGER_NORMALIZE_BYTES = int(args.eager_limit_mb * MB)

    side, k = args.side, args.classes
    cfg = ModelConfig(
        in_channels=1,
        n_classes=k,
        widths=tuple(int(w) for w in args.widths.split(",")),
        size="custom",
        scale=args.scale,
    )
    torch.manual_seed(0)
    predictor = Predictor(
        build_model(cfg),
        cfg,
        PredictConfig(tile=args.tile, batch_size=args.batch_size, device=args.device, tta=args.tta),
    )
    # Synthetic image: smooth blobs plus noise, built row band by row band.
    image = np.empty((side, side), np.uint8)
    rng = np.random.default_rng(0)
    xx = np.arange(side, dtype=np.float32)
    for y in range(0, side, 1024):
        yy = np.arange(y, min(y + 1024, side), dtype=np.float32)[:, None]
        band = 128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 29.0) + rng.normal(0, 10, (len(yy), side))
        image[y : y + len(yy)] = np.clip(band, 0, 255)
    baseline = rss_now()
    in_bytes = image.nbytes
    with tempfile.TemporaryDirectory() as tmp:
        outputs = {
            "probabilities": np.memmap(
                Path(tmp) / "p.f32", np.float32, "w+", shape=(k, side, side)
            ),
            "interfaces": np.memmap(Path(tmp) / "i.f32", np.float32, "w+", shape=(side, side)),
        }
        out_bytes = sum(a.nbytes for a in outputs.values())
        t0 = time.perf_counter()
        pred = predictor.predict(image, outputs=outputs, instances=args.instances)
        wall = time.perf_counter() - t0
        extra = pred.classes.nbytes + (pred.instances.nbytes if pred.instances is not None else 0)
        peak = peak_rss()
        mp = side * side / 1e6
        print(
            f"image {side}x{side} ({mp:.1f} MP), model widths {cfg.widths}, {k} classes, "
            f"working scale {cfg.scale:g}, device {predictor.device}"
        )
        print(
            f"input {in_bytes / MB:.0f} MB, float outputs (memmap) {out_bytes / MB:.0f} MB, "
            f"classes/instances {extra / MB:.0f} MB"
        )
        print(f"baseline RSS {baseline / MB:.0f} MB, peak RSS {peak / MB:.0f} MB")
        over = peak - baseline - out_bytes - extra
        print(
            f"peak RSS - baseline - outputs - classes/instances = {over / MB:.0f} MB "
            f"(input already in baseline)"
        )
        print(f"wall {wall:.1f} s, {mp / wall:.2f} MP/s")
        del pred, outputs


if __name__ == "__main__":
    main()
