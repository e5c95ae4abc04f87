"""CPU training step time by precision and memory format (not a test).

Decides :func:`napari_lazylabels.core.model.autocast_dtype` on the CPU: bf16 autocast is fast
where the CPU computes bf16 natively (AMX, AVX512-BF16) and very slow where torch emulates it
(AVX2-only CPUs). One training step (forward, backward, Adam) of batch 16 x 3 x 128 x 128, the
CPU default patch, for the multi-task net and a plain U-net of the given size, under float32 /
bf16 autocast x NCHW / channels_last; the minimum of ``--steps`` timed steps after two warm-up
steps. Appends one JSON record to ``benchmarks/results/speed/cpu-precision.jsonl``.

    OMP_NUM_THREADS=2 python benchmarks/cpu_precision.py --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import torch

from _common import RESULTS, append_jsonl, machine, utc_now
from napari_lazylabels.core.model import (
    ModelConfig,
    autocast_dtype,
    build_model,
    precision_name,
)

log = logging.getLogger("cpu_precision")
OUT = RESULTS / "speed" / "cpu-precision.jsonl"


def step_time(arch: str, size: str, bf16: bool, channels_last: bool, batch: int, patch: int, steps: int) -> float:
    tasks = {} if arch == "multitask" else {"tasks": ("segmentation",)}
    cfg = ModelConfig.named(size, in_channels=3, n_classes=2, architecture=arch, **tasks)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg).to(memory_format=mf).train()
    opt = torch.optim.Adam(model.parameters(), 2e-4)
    x = torch.randn(batch, 3, patch, patch).contiguous(memory_format=mf)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            out = model(x)
        loss = sum(v.float().mean() for v in out.values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    for arch in ("multitask", "unet"):
        for bf16 in (False, True):
            for cl in (False, True):
                s = step_time(arch, args.size, bf16, cl, args.batch, args.patch, args.steps)
                rows.append({"arch": arch, "bf16": bf16, "channels_last": cl, "step_s": round(s, 4)})
                log.info("%-9s %-7s %-14s %.3f s/step", arch, "bf16" if bf16 else "float32",
                         "channels_last" if cl else "NCHW", s)
    choice = precision_name(autocast_dtype(torch.device("cpu")))
    record = {
        "date": utc_now(),
        "command": " ".join(["python", *sys.argv]),
        "machine": machine(),  # CPU name, cpu_native_bf16, threads, load average
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "library_choice": choice, "torch": torch.__version__, "threads": args.threads,
        "size": args.size, "batch": args.batch, "patch": args.patch, "rows": rows,
    }
    append_jsonl(args.out, record)
    log.info("library choice on this CPU: %s; appended to %s", choice, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
