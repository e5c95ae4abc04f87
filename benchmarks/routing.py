"""Training step time with and without task routing on real lazy labels (not a test).

``TrainConfig.route_tasks`` runs the multi-task net's segmentation and separation paths only
on the samples of a batch labelled for them. How much that saves depends on the data: the
share of each batch from exact-mask images (``AugmentConfig.mask_share``) and how many weak
images carry interface scribbles. This draws real batches with the product's sampler from a
dataset of the accuracy benchmark (simulated lazy labels of the shared data, cached by
``benchmarks/accuracy.py``), and times full and routed training steps interleaved on the same
batches (forward, loss, backward, Adam; the product's CPU precision). Appends one JSON record
to ``benchmarks/results/speed/routing.jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/routing.py --dataset glas --fraction 0.094 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402  (the benchmark's data, splits and machine description)
from napari_lazylabels.core.data import PatchSampler, PreparedSample  # noqa: E402
from napari_lazylabels.core.losses import multitask_loss  # noqa: E402
from napari_lazylabels.core.model import autocast_dtype, build_model  # noqa: E402
from napari_lazylabels.core.train import (  # noqa: E402
    TrainConfig,
    _routed_forward,
    infer_model_config,
    resolve_for_device,
)

log = logging.getLogger("routing")
OUT = accuracy.REPO / "benchmarks" / "results" / "speed" / "routing.jsonl"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=accuracy.DATASETS, default="glas")
    ap.add_argument("--fraction", type=float, default=0.094)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--steps", type=int, default=12, help="timed steps per variant (after 2 warm-ups)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    lazy, _ = accuracy.lazy_dataset(args.dataset, accuracy.shared_data(), args.fraction, args.seed)
    device = torch.device("cpu")
    cfg = resolve_for_device(TrainConfig(batch_size=accuracy.BATCH_SIZE), device)
    mc = infer_model_config(lazy, device, args.size, architecture="multitask")
    prepared = [PreparedSample(s, mc.in_channels, mc.norm_percentiles, cfg.label_mode, mc.tasks, mc.scale)
                for s in lazy]
    prepared = [p for p in prepared if p.tasks]
    sampler = PatchSampler(prepared, cfg.augment, seed=args.seed)
    model = build_model(mc).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    amp = autocast_dtype(device)

    def step(image, targets, route: bool) -> tuple[float, int]:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=amp) if amp is not None else contextlib.nullcontext():
            if route:
                outputs, tg = _routed_forward(model, image, targets)
            else:
                outputs, tg = model(image), targets
        loss, _ = multitask_loss(outputs, tg, cfg.task_weights, cfg.balance_classes, cfg.balance_power)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        rows = outputs["segmentation"].shape[0] if "segmentation" in outputs else 0
        return time.perf_counter() - t, rows

    times = {False: [], True: []}
    rows = []
    for i in range(args.steps + 2):
        image, targets = sampler.batch(cfg.batch_size, mc.tasks)
        image = image.contiguous(memory_format=torch.channels_last)
        for route in ((False, True) if i % 2 else (True, False)):
            dt, k = step(image, targets, route)
            if i >= 2:
                times[route].append(dt)
                if route:
                    rows.append(k)
    full, routed = float(np.median(times[False])), float(np.median(times[True]))
    record = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", *sys.argv]),
        "machine": accuracy.machine(), "versions": accuracy.all_versions(),
        "dataset": args.dataset, "fraction": args.fraction, "size": args.size, "batch": cfg.batch_size,
        "patch": cfg.augment.patch_size, "mask_share": cfg.augment.mask_share,
        "precision": "float32" if amp is None else str(amp).removeprefix("torch."),
        "steps": args.steps, "full_step_s": round(full, 4), "routed_step_s": round(routed, 4),
        "speedup": round(full / routed, 3), "mean_routed_rows": round(float(np.mean(rows)), 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    log.info("%s %.1f%%: full %.3f s, routed %.3f s per step (%.2fx); segmentation/separation on %.1f of %d "
             "samples; appended to %s", args.dataset, 100 * args.fraction, full, routed, full / routed,
             record["mean_routed_rows"], cfg.batch_size, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
