"""Speed benchmark (not a test): training and prediction throughput as ratios to references.

Every figure is a ratio against a reference measured in the same run, interleaved (one
repetition of ours, one of the reference, alternating which goes first; medians of the timed
repetitions), because the machine may be shared and absolute numbers are noisy.

* Training throughput (patches of 256x256 per second, batch 16) of the product's training
  step (:class:`napari_lazylabels.core.step.TrainStep`: the multi-task U-net, its loss, Adam)
  against ``RefUNet`` below, stepped the same way: a plain single-task U-net of the same depth
  and widths written simply in PyTorch, under each setting (fp32 / bf16 autocast x NCHW /
  channels_last). The multi-task net does more work (shared decoder block run twice, residual
  and separation blocks), so the fair figure is achieved TFLOP/s (FLOPs of one fwd+bwd counted with
  ``torch.utils.flop_counter.FlopCounterMode``: convolutions and matrix products only).
  ``torch.compile`` is tried once in a time-boxed subprocess.
* Data pipeline: ``PatchSampler.batch`` time per batch against the step time.
* Tiled prediction throughput (megapixels per second, Gaussian blending, overlap 0.25)
  against MONAI's ``sliding_window_inference(mode="gaussian")`` with the same network and
  the same per-tile forward (if MONAI is missing, against a naive full-accumulator loop).
* Peak memory predicting a large image: runs ``benchmarks/predict_memory.py``.
* On a CUDA GPU (when present): the same training comparison for the paper size, with
  cudnn benchmark mode, bf16, channels_last, torch.compile, a prefetching data pipeline, and
  TFLOP/s against the measured bf16 matrix-multiply peak.

Writes ``benchmarks/results/speed/<run-id>.json`` and ``docs/benchmarks-speed.md``, and
prints the markdown tables::

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/speed.py
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from _common import machine
from napari_lazylabels.core.allocator import cpu_allocation_cache
from napari_lazylabels.core.data import AugmentConfig, PatchSampler, PreparedSample
from napari_lazylabels.core.io import Sample
from napari_lazylabels.core.labels import SEGMENTATION, TASKS
from napari_lazylabels.core.losses import training_loss
from napari_lazylabels.core.model import MODEL_SIZES, ModelConfig, autocast_dtype, build_model
from napari_lazylabels.core.predict import PredictConfig, Predictor, sliding_window
from napari_lazylabels.core.step import TrainStep
from napari_lazylabels.core.tiling import SIGMA_SCALE
from napari_lazylabels.core.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "speed"
DOC = ROOT / "docs" / "benchmarks-speed.md"
PATCH = 256
N_CLASSES = 2


# --------------------------------------------------------------------------- reference net
class RefUNet(nn.Module):
    """A plain single-task U-net: (conv3x3-BN-ReLU) x2 per level, max-pool down, bilinear
    up + concatenated skip, 1x1 head. Same depth and widths as ours."""

    def __init__(self, widths, in_channels=1, n_classes=2):
        super().__init__()

        def double(a, b):
            return nn.Sequential(
                nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                nn.Conv2d(b, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
            )

        w = list(widths)
        self.down = nn.ModuleList(double(a, b) for a, b in zip([in_channels] + w[:-1], w, strict=True))
        self.up = nn.ModuleList(double(w[i + 1] + w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.head = nn.Conv2d(w[0], n_classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], 1))
        return self.head(x)


# --------------------------------------------------------------------------- helpers
def machine_info() -> dict:
    """The benchmarks' machine description and the reference library's version."""
    info = machine()
    with contextlib.suppress(Exception):
        import monai

        info["monai"] = monai.__version__
    return info


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synthetic_batch(batch: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, PATCH, PATCH, generator=g)
    tg = {}
    for t in TASKS:
        v = torch.randint(0, 2, (batch, PATCH, PATCH), generator=g)
        if t != SEGMENTATION:  # sparse like scribbles
            v[torch.rand(batch, PATCH, PATCH, generator=g) < 0.7] = -1
        tg[t] = v
    return x.to(device), {t: v.to(device) for t, v in tg.items()}


def ref_loss(out: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
    """The reference's loss: plain cross entropy of its one head on the segmentation target."""
    return F.cross_entropy(out.float(), targets[SEGMENTATION], ignore_index=-1), {}


class Trainer:
    """A training step on a fixed batch under one setting (autocast ``dtype``, memory format):
    ``"ours"`` is the product's (:class:`napari_lazylabels.core.step.TrainStep` with the
    product's loss, as training runs it), ``"ref"`` the same step of ``RefUNet`` and
    :func:`ref_loss`."""

    def __init__(self, kind: str, size: str, device: str, dtype, channels_last: bool, compile_: bool = False):
        torch.manual_seed(0)
        if kind == "ours":
            self.config = ModelConfig.named(size, n_classes=N_CLASSES)
            net, loss = build_model(self.config), training_loss(TrainConfig().task_weights, TrainConfig().balance_smoothing)
        else:
            self.config = None
            net, loss = RefUNet(MODEL_SIZES[size], 1, N_CLASSES), ref_loss
        self.kind, self.device = kind, device
        self.train_step = TrainStep.new(net, loss, torch.device(device), 2e-4, dtype, channels_last)
        if compile_:
            self.train_step.forward = torch.compile(self.train_step.model)
        self.net, self.mf = self.train_step.model, self.train_step.memory_format

    def loss(self, out, targets) -> torch.Tensor:
        return self.train_step.loss(out, targets)[0]

    def step(self, x, targets) -> torch.Tensor:
        return self.train_step(x, targets)[0]

    def flops_per_patch(self) -> float:
        """Convolution/matmul FLOPs of one fwd+bwd per 256x256 patch (counted at batch 1)."""
        x, tg = synthetic_batch(1, self.device, seed=1)
        net = self.net
        state = {k: v.clone() for k, v in net.state_dict().items()}  # BN running stats
        with FlopCounterMode(display=False) as fc:
            out = net(x.contiguous(memory_format=self.mf))
            self.loss(out, tg).backward()
        net.zero_grad(set_to_none=True)
        net.load_state_dict(state)
        return float(fc.get_total_flops())


def interleaved(fns: dict, warmup: int, steps: int, budget_s: float, min_steps: int = 2, device="cpu") -> dict:
    """Time each callable alternately; returns {name: [seconds of timed reps]}."""
    names = list(fns)
    times = {n: [] for n in names}
    t_start = time.perf_counter()
    for rep in range(warmup + steps):
        order = names if rep % 2 == 0 else names[::-1]
        for n in order:
            sync(device)
            t0 = time.perf_counter()
            fns[n]()
            sync(device)
            if rep >= warmup:
                times[n].append(time.perf_counter() - t0)
        timed = rep + 1 - warmup
        if timed >= min_steps and time.perf_counter() - t_start > budget_s:
            break
    return times


def med(v):
    return statistics.median(v) if v else float("nan")


# --------------------------------------------------------------------------- training
CPU_SETTINGS = [
    ("fp32 NCHW", None, False),
    ("fp32 channels_last", None, True),
    ("bf16 NCHW", torch.bfloat16, False),
    ("bf16 channels_last", torch.bfloat16, True),
]


def bench_training(size: str, batch: int, settings, device: str, warmup: int, steps: int, budget_s: float, log) -> dict:
    x, tg = synthetic_batch(batch, device)
    out = {"size": size, "widths": list(MODEL_SIZES[size]), "batch": batch, "settings": []}
    flops = {}
    for name, dtype, cl in settings:
        ours = Trainer("ours", size, device, dtype, cl)
        ref = Trainer("ref", size, device, dtype, cl)
        if not flops:
            flops = {"ours": ours.flops_per_patch(), "ref": ref.flops_per_patch()}
            out["gflop_per_patch_fwd_bwd"] = {k: v / 1e9 for k, v in flops.items()}
        t = interleaved({"ours": lambda o=ours: o.step(x, tg), "ref": lambda r=ref: r.step(x, tg)},
                        warmup, steps, budget_s, device=device)
        r = {"setting": name, "n_timed": len(t["ours"]), "step_s": {k: med(v) for k, v in t.items()},
             "step_s_all": t}
        r["patches_per_s"] = {k: batch / r["step_s"][k] for k in t}
        r["tflops"] = {k: r["patches_per_s"][k] * flops[k] / 1e12 for k in t}
        r["ratio_patches"] = r["patches_per_s"]["ours"] / r["patches_per_s"]["ref"]
        r["ratio_tflops"] = r["tflops"]["ours"] / r["tflops"]["ref"]
        out["settings"].append(r)
        log(f"  {size} {name}: ours {r['patches_per_s']['ours']:.2f} p/s, ref {r['patches_per_s']['ref']:.2f} p/s, "
            f"ratio {r['ratio_patches']:.2f}, per-FLOP {r['ratio_tflops']:.2f} ({r['n_timed']} timed)")
    best_o = max(out["settings"], key=lambda r: r["patches_per_s"]["ours"])
    best_r = max(out["settings"], key=lambda r: r["patches_per_s"]["ref"])
    out["best"] = {
        "ours": best_o["setting"], "ref": best_r["setting"],
        "ratio_patches": best_o["patches_per_s"]["ours"] / best_r["patches_per_s"]["ref"],
        "ratio_tflops": best_o["tflops"]["ours"] / best_r["tflops"]["ref"],
    }
    amp = autocast_dtype(torch.device(device))
    out["library_default"] = ("bf16" if amp is not None else "fp32") + " channels_last"
    return out


def compile_probe(size: str, batch: int, steps: int) -> dict:
    """Run in a subprocess: eager vs torch.compile, fp32 channels_last, ours only."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    x, tg = synthetic_batch(batch, "cpu")
    eager = Trainer("ours", size, "cpu", None, True)
    comp = Trainer("ours", size, "cpu", None, True, compile_=True)
    t0 = time.perf_counter()
    comp.step(x, tg)
    first = time.perf_counter() - t0
    t = interleaved({"eager": lambda: eager.step(x, tg), "compiled": lambda: comp.step(x, tg)}, 1, steps, 1e9)
    return {"first_step_s": first, "step_s": {k: med(v) for k, v in t.items()}, "step_s_all": t,
            "ratio": med(t["eager"]) / med(t["compiled"])}


def run_compile_probe(size: str, batch: int, timeout: float, log) -> dict:
    cmd = [sys.executable, __file__, "--compile-probe", size, "--batch", str(batch)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"size": size, "ok": False, "why": f"timed out after {timeout:.0f} s (compile + 4 steps)"}
    if p.returncode != 0:
        return {"size": size, "ok": False, "why": p.stderr.strip().splitlines()[-1:] or ["failed"],
                "wall_s": time.perf_counter() - t0}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res.update(size=size, ok=True, wall_s=time.perf_counter() - t0)
    log(f"  compile {size}: first step {res['first_step_s']:.0f} s, eager/compiled step ratio {res['ratio']:.2f}")
    return res


# --------------------------------------------------------------------------- allocator
def allocator_probe(size: str, batch: int, mode: str, where: str, steps: int = 4) -> dict:
    """Run in a subprocess: ours at the library's CPU setting, with the allocation cache on
    or off, on the main thread (the CLI) or a worker thread (the napari widget)."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    res = {}

    def run():
        with cpu_allocation_cache(mode == "on") as active:
            x, tg = synthetic_batch(batch, "cpu")
            t = Trainer("ours", size, "cpu", autocast_dtype(torch.device("cpu")), True)
            ts = interleaved({"step": lambda: t.step(x, tg)}, 2, steps, float("inf"))["step"]
            res.update(active=active, step_s=med(ts), step_s_all=ts)

    if where == "thread":
        th = threading.Thread(target=run)
        th.start()
        th.join()
    else:
        run()
    res["peak_rss_mb"] = peak_rss_mb()
    return res


def peak_rss_mb() -> float:
    """This process's peak resident memory (``VmHWM``: unlike ``ru_maxrss`` it starts afresh in
    a child process instead of inheriting the parent's peak)."""
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith("VmHWM:")).split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_allocator(sizes, batch: int, rounds: int, timeout: float, log) -> list[dict]:
    """The allocation cache on vs off, each in fresh processes (peak memory is per process),
    alternating which goes first."""
    out = []
    for size in sizes:
        for where in ("main", "thread"):
            runs = {"off": [], "on": []}
            for r in range(rounds):
                for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                    cmd = [sys.executable, __file__, "--allocator-probe", f"{size},{mode},{where}",
                           "--batch", str(batch)]
                    try:
                        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
                    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
                        log(f"  allocator probe {size} {mode} {where} failed: {e}")
                        continue
                    runs[mode].append(json.loads(p.stdout.strip().splitlines()[-1]))
            if not runs["on"] or not runs["off"]:
                continue
            row = {"size": size, "where": where, "batch": batch, "runs": runs,
                   "active": all(r["active"] for r in runs["on"]),
                   "step_s": {m: med([r["step_s"] for r in v]) for m, v in runs.items()},
                   "peak_rss_mb": {m: med([r["peak_rss_mb"] for r in v]) for m, v in runs.items()}}
            row["speedup"] = row["step_s"]["off"] / row["step_s"]["on"]
            row["rss_ratio"] = row["peak_rss_mb"]["on"] / row["peak_rss_mb"]["off"]
            log(f"  allocator {size} {where}: step {row['step_s']['off']:.3f} -> {row['step_s']['on']:.3f} s "
                f"({row['speedup']:.2f}x), peak RSS {row['peak_rss_mb']['off']:.0f} -> {row['peak_rss_mb']['on']:.0f} MB")
            out.append(row)
    return out


# --------------------------------------------------------------------------- data pipeline
def synthetic_sample(side: int = 1024, seed: int = 0) -> Sample:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    img = (128 + 60 * np.sin(xx / 23) * np.cos(yy / 17) + rng.normal(0, 10, (side, side))).clip(0, 255).astype(np.uint8)
    seg = np.where(img > 128, 2, 1).astype(np.uint8)
    det = np.zeros_like(seg)
    for _ in range(200):  # scribbles: short horizontal strokes
        y, x = rng.integers(0, side - 20, 2)
        det[y, x : x + 20] = seg[y, x : x + 20]
    sep = np.zeros_like(seg)
    sep[::64, :] = 2
    sep[det == 1] = 1
    return Sample("synthetic", img, det, sep, seg)


def bench_data(batch: int, reps: int = 5) -> dict:
    ps = PreparedSample(synthetic_sample(), 1, (1.0, 99.8), "ignore", TASKS)
    sampler = PatchSampler([ps], AugmentConfig(patch_size=PATCH), seed=0)
    sampler.batch(batch, TASKS)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sampler.batch(batch, TASKS)
        ts.append(time.perf_counter() - t0)
    return {"batch": batch, "batch_s": med(ts), "batch_s_all": ts}


# --------------------------------------------------------------------------- prediction
def naive_blend(x: torch.Tensor, forward, tile: int, overlap: float, batch: int, sigma_scale: float):
    """Reference when MONAI is missing: full-size accumulators, Gaussian weights."""
    from napari_lazylabels.core.predict import gaussian_importance_map, tile_starts

    _, _, h, w = x.shape
    wmap = torch.from_numpy(gaussian_importance_map((tile, tile), sigma_scale))
    pos = [(y, xx) for y in tile_starts(h, tile, overlap) for xx in tile_starts(w, tile, overlap)]
    acc, wsum = {}, torch.zeros(h, w)
    for i in range(0, len(pos), batch):
        chunk = pos[i : i + batch]
        out = forward(torch.cat([x[:, :, y : y + tile, xx : xx + tile] for y, xx in chunk]))
        for name, t in out.items():
            a = acc.setdefault(name, torch.zeros(t.shape[1], h, w))
            for j, (y, xx) in enumerate(chunk):
                a[:, y : y + tile, xx : xx + tile] += t[j].float() * wmap
        for y, xx in chunk:
            wsum[y : y + tile, xx : xx + tile] += wmap
    return {k: v / wsum for k, v in acc.items()}


def bench_prediction(size: str, side: int, reps: int, log) -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig.named(size, n_classes=N_CLASSES)
    # one orientation: the same work as MONAI's sliding window (PredictConfig.tta multiplies it)
    pc = PredictConfig(device="cpu", tile=PATCH, overlap=0.25, batch_size=8, tta=1)
    net = build_model(cfg)
    predictor = Predictor(net, cfg, pc)  # BatchNorm folded into the convolutions (the default)
    unfused = Predictor(net, cfg, replace(pc, fuse_batchnorm=False))  # the network as trained
    image = synthetic_sample(side).image
    normed = predictor.prepare(image)  # (C, H, W) float32, as our sliding window sees it
    x = torch.from_numpy(np.ascontiguousarray(normed))[None]
    try:
        from monai.inferers import sliding_window_inference

        ref_name = "monai"

        def ref(forward=predictor.forward):
            with torch.inference_mode():
                return sliding_window_inference(
                    x, (PATCH, PATCH), pc.batch_size, forward, overlap=pc.overlap,
                    mode="gaussian", sigma_scale=SIGMA_SCALE,
                )
    except ImportError:
        ref_name = "naive"

        def ref(forward=predictor.forward):
            return naive_blend(x, forward, PATCH, pc.overlap, pc.batch_size, SIGMA_SCALE)

    fns = {
        "ours_sliding_window": lambda: sliding_window(normed, predictor.forward, None, PATCH, pc.overlap, pc.batch_size,
                                                      sigma_scale=SIGMA_SCALE),
        "ours_predict": lambda: predictor.predict(image, instances=False),
        ref_name: ref,
        ref_name + "_unfused": lambda: ref(unfused.forward),
    }
    # Same numbers? (interior pixels; borders differ: MONAI pads with zeros only when needed)
    a = fns["ours_sliding_window"]()["probabilities"]
    b = ref()["probabilities"]
    b = b[0].numpy() if isinstance(b, torch.Tensor) else b
    maxdiff = float(np.abs(a - b).max())
    t = interleaved(fns, 0, reps, 1e9, device="cpu")
    mp = side * side / 1e6
    res = {"size": size, "side": side, "reference": ref_name, "tile": PATCH, "overlap": pc.overlap,
           "batch": pc.batch_size, "amp": str(predictor.amp_dtype), "max_abs_diff_probabilities": maxdiff,
           "seconds": {k: med(v) for k, v in t.items()}, "seconds_all": t}
    res["mp_per_s"] = {k: mp / v for k, v in res["seconds"].items()}
    res["ratio_sliding_window"] = res["mp_per_s"]["ours_sliding_window"] / res["mp_per_s"][ref_name]
    res["ratio_predict"] = res["mp_per_s"]["ours_predict"] / res["mp_per_s"][ref_name]
    res["ratio_predict_vs_unfused"] = res["mp_per_s"]["ours_predict"] / res["mp_per_s"][ref_name + "_unfused"]
    log(f"  predict {size} {side}^2: ours window {res['mp_per_s']['ours_sliding_window']:.3f} MP/s, predict "
        f"{res['mp_per_s']['ours_predict']:.3f}, {ref_name} {res['mp_per_s'][ref_name]:.3f}; "
        f"ratios {res['ratio_sliding_window']:.2f} / {res['ratio_predict']:.2f}; max |diff| {maxdiff:.2g}; "
        f"predict vs {ref_name} with the unfused network {res['ratio_predict_vs_unfused']:.2f}")
    return res


# --------------------------------------------------------------------------- memory
def run_predict_memory(side: int, timeout: float) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "predict_memory.py"), str(side), "--device", "cpu"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"side": side, "ok": False, "why": f"timed out after {timeout:.0f} s"}
    res = {"side": side, "ok": p.returncode == 0, "wall_s": time.perf_counter() - t0, "stdout": p.stdout.strip()}
    if p.returncode:
        res["why"] = p.stderr.strip()[-500:]
        return res
    for key, pat in [("baseline_rss_mb", r"baseline RSS (\d+) MB"), ("peak_rss_mb", r"peak RSS (\d+) MB"),
                     ("over_mb", r"= (-?\d+) MB"), ("mp_per_s", r"([\d.]+) MP/s"),
                     ("outputs_mb", r"float outputs \(memmap\) (\d+) MB")]:
        m = re.search(pat, p.stdout)
        if m:
            res[key] = float(m.group(1))
    return res


# --------------------------------------------------------------------------- GPU
def matmul_peak(dtype, n: int = 8192, reps: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


class Prefetcher:
    """Background thread filling a queue with pinned sampler batches (a data pipeline that
    keeps the GPU busy: cv2 releases the GIL)."""

    def __init__(self, sampler, batch: int, depth: int = 4, workers: int = 4):
        self.q: queue.Queue = queue.Queue(depth)
        self.stop = False
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(sampler, batch, i), daemon=True) for i in range(workers)]
        for t in self.threads:
            t.start()

    def _run(self, sampler, batch, i):
        s = PatchSampler(sampler.samples, sampler.cfg, seed=100 + i)
        while not self.stop:
            x, tg = s.batch(batch, TASKS)
            self.q.put((x.pin_memory(), {k: v.pin_memory() for k, v in tg.items()}))

    def get(self):
        x, tg = self.q.get()
        return x.cuda(non_blocking=True), {k: v.cuda(non_blocking=True) for k, v in tg.items()}

    def close(self):
        self.stop = True
        with contextlib.suppress(queue.Empty):
            while True:
                self.q.get_nowait()


def bench_gpu(size: str, batch: int, log) -> dict:
    res = {"gpu": torch.cuda.get_device_name(0), "size": size, "batch": batch}
    res["peak_tflops"] = {"bf16": matmul_peak(torch.bfloat16), "fp32_tf32_off": matmul_peak(torch.float32, 4096, 5)}
    log(f"  GPU matmul peak bf16 {res['peak_tflops']['bf16']:.0f} TFLOP/s")
    settings = [
        ("fp32 NCHW", None, False, False, False),
        ("tf32 NCHW", None, False, False, True),
        ("bf16 NCHW", torch.bfloat16, False, False, True),
        ("bf16 channels_last", torch.bfloat16, True, False, True),
        ("bf16 channels_last + cudnn.benchmark", torch.bfloat16, True, True, True),
    ]
    rows = []
    for name, dtype, cl, bench, tf32 in settings:
        torch.backends.cudnn.benchmark = bench
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        r = bench_training(size, batch, [(name, dtype, cl)], "cuda", 5, 20, 120.0, log)
        rows.append(r["settings"][0])
        res["gflop_per_patch_fwd_bwd"] = r["gflop_per_patch_fwd_bwd"]
    torch.backends.cudnn.benchmark = True
    # torch.compile at the best eager setting
    try:
        x, tg = synthetic_batch(batch, "cuda")
        flops = res["gflop_per_patch_fwd_bwd"]
        o = Trainer("ours", size, "cuda", torch.bfloat16, True, compile_=True)
        rf = Trainer("ref", size, "cuda", torch.bfloat16, True, compile_=True)
        t = interleaved({"ours": lambda: o.step(x, tg), "ref": lambda: rf.step(x, tg)}, 3, 20, 120.0, device="cuda")
        r = {"setting": "bf16 channels_last + cudnn.benchmark + compile", "n_timed": len(t["ours"]),
             "step_s": {k: med(v) for k, v in t.items()}, "step_s_all": t}
        r["patches_per_s"] = {k: batch / r["step_s"][k] for k in t}
        r["tflops"] = {k: r["patches_per_s"][k] * flops[k] / 1e3 for k in t}
        r["ratio_patches"] = r["patches_per_s"]["ours"] / r["patches_per_s"]["ref"]
        r["ratio_tflops"] = r["tflops"]["ours"] / r["tflops"]["ref"]
        rows.append(r)
        log(f"  GPU compile: ours {r['patches_per_s']['ours']:.1f} p/s, ref {r['patches_per_s']['ref']:.1f} p/s")
    except Exception as e:  # noqa: BLE001 - report, do not fail the run
        res["compile_error"] = repr(e)[:300]
    for r in rows:
        r["mfu"] = {k: v / res["peak_tflops"]["bf16"] for k, v in r["tflops"].items()}
    res["settings"] = rows
    # Data pipeline: synchronous sampler vs prefetching threads, ours at the best setting.
    ps = PreparedSample(synthetic_sample(2048), 1, (1.0, 99.8), "ignore", TASKS)
    sampler = PatchSampler([ps], AugmentConfig(patch_size=PATCH), seed=0)
    tr = Trainer("ours", size, "cuda", torch.bfloat16, True)
    x, tg = synthetic_batch(batch, "cuda")

    def sync_step():
        xb, tb = sampler.batch(batch, TASKS)
        tr.step(xb.cuda(), {k: v.cuda() for k, v in tb.items()})

    pf = Prefetcher(sampler, batch)
    t = interleaved({"resident": lambda: tr.step(x, tg), "sync_sampler": sync_step,
                     "prefetch": lambda: tr.step(*pf.get())}, 3, 15, 120.0, device="cuda")
    pf.close()
    res["data_pipeline"] = {k: batch / med(v) for k, v in t.items()}
    log(f"  GPU data pipeline patches/s: {res['data_pipeline']}")
    return res


# --------------------------------------------------------------------------- report
def fmt(v, nd=2):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


# --------------------------------------------------------------------------- run to run
REGRESSION = 0.85  # a figure below this share of the previous record's is flagged (noise: ~15%)


def previous_record(rec: dict, results: Path = None) -> tuple[str, dict] | None:
    """The newest earlier record of this benchmark on the same kind of machine (CPU model,
    core count, GPU), or ``None``."""
    results = results or RESULTS
    m = rec["machine"]
    key = (m.get("cpu"), m.get("cores"), m.get("gpu"))
    for path in sorted(results.glob("*.json"), reverse=True):
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        om = old.get("machine", {})
        if (om.get("cpu"), om.get("cores"), om.get("gpu")) != key:
            continue
        return path.name, old
    return None


def compare_records(new: dict, old: dict) -> list[dict]:
    """Figures that both records hold, side by side: ``{"figure", "before", "now", "change",
    "higher_is_better", "flag"}``. Ratios measured against a reference in the same run are the
    ones to trust across runs (absolute speeds move with the machine's load)."""
    rows = []

    def add(name, before, now, higher_is_better=True):
        if before is None or now is None or not before or before != before or now != now:
            return
        change = now / before
        worse = change < REGRESSION if higher_is_better else change > 1 / REGRESSION
        rows.append({"figure": name, "before": before, "now": now, "change": change,
                     "higher_is_better": higher_is_better, "flag": worse})

    old_t = {(t["size"], t["batch"], r["setting"]): r for t in old.get("training", []) for r in t["settings"]}
    for t in new.get("training", []):
        for r in t["settings"]:
            o = old_t.get((t["size"], t["batch"], r["setting"]))
            if o is None:
                continue
            label = f"train {t['size']} {r['setting']}"
            add(f"{label}: ours patches/s", o["patches_per_s"]["ours"], r["patches_per_s"]["ours"])
            add(f"{label}: per-FLOP ratio to the reference", o["ratio_tflops"], r["ratio_tflops"])
    old_best = {(t["size"], t["batch"]): t["best"] for t in old.get("training", [])}
    for t in new.get("training", []):
        o = old_best.get((t["size"], t["batch"]))
        if o is not None:
            add(f"train {t['size']}: per-FLOP best/best", o["ratio_tflops"], t["best"]["ratio_tflops"])
    op, np_ = old.get("prediction"), new.get("prediction")
    if op and np_ and op.get("side") == np_.get("side") and op.get("size") == np_.get("size"):
        add("predict: Predictor.predict MP/s", op["mp_per_s"].get("ours_predict"), np_["mp_per_s"].get("ours_predict"))
        add("predict: blending ratio to the reference", op.get("ratio_sliding_window"), np_.get("ratio_sliding_window"))
        add("predict: Predictor.predict ratio to the reference as trained", op.get("ratio_predict_vs_unfused"),
            np_.get("ratio_predict_vs_unfused"))
    old_m = {m["side"]: m for m in old.get("memory", []) if m.get("ok")}
    for mm in new.get("memory", []):
        o = old_m.get(mm["side"])
        if mm.get("ok") and o is not None:
            add(f"memory {mm['side']}^2: MB beyond outputs", o.get("over_mb"), mm.get("over_mb"), higher_is_better=False)
    return rows


def markdown(rec: dict) -> str:
    m = rec["machine"]
    lines = [
        "# Speed benchmark",
        "",
        "Generated by `benchmarks/speed.py` (do not edit by hand). Every ratio compares against a",
        "reference measured in the same run, interleaved, medians of the timed repetitions.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['platform']}, "
        f"torch {m['torch']}{', MONAI ' + m['monai'] if 'monai' in m else ''}; {m['date']}; load average at "
        f"start {m.get('loadavg_at_start')}.",
        f"Command: `{m['command']}`",
        "",
    ]
    if rec["training"]:
        lines += [
            "## Training throughput (CPU, 256x256 patches)",
            "",
            "Reference: `RefUNet` in `benchmarks/speed.py`, a plain single-task U-net of the same depth and "
            "widths. GFLOP are convolution/matmul FLOPs of one fwd+bwd per patch (FlopCounterMode).",
            "",
            "| size | batch | setting | ours patches/s | ref patches/s | ratio | ours GFLOP/s | ref GFLOP/s | per-FLOP ratio | timed |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for t in rec["training"]:
        for r in t["settings"]:
            star = " (default)" if r["setting"] == t["library_default"] else ""
            lines.append(
                f"| {t['size']} | {t['batch']} | {r['setting']}{star} | {fmt(r['patches_per_s']['ours'])} | "
                f"{fmt(r['patches_per_s']['ref'])} | {fmt(r['ratio_patches'])} | {fmt(r['tflops']['ours'] * 1e3, 0)} | "
                f"{fmt(r['tflops']['ref'] * 1e3, 0)} | {fmt(r['ratio_tflops'])} | {r['n_timed']} |"
            )
    if rec["training"]:
        lines += ["", "| size | GFLOP/patch ours | GFLOP/patch ref | best ours | best ref | ratio best/best | per-FLOP best/best |",
                  "|---|---|---|---|---|---|---|"]
    for t in rec["training"]:
        g, b = t["gflop_per_patch_fwd_bwd"], t["best"]
        lines.append(f"| {t['size']} | {fmt(g['ours'], 1)} | {fmt(g['ref'], 1)} | {b['ours']} | {b['ref']} | "
                     f"{fmt(b['ratio_patches'])} | {fmt(b['ratio_tflops'])} |")
    if rec["training"]:
        cache = rec.get("training_allocation_cache")
        lines += ["", "Both networks trained with freed memory kept for reuse (`core.allocator`, as the "
                  "library trains on the CPU)." if cache else "Freed memory was not kept for reuse "
                  "(`core.allocator` inactive here: not glibc, or malloc tuned through the environment)."]
    if rec.get("allocator"):
        lines += ["", "### Keeping freed memory for reuse (`TrainConfig.reuse_cpu_memory`)", "",
                  "Ours at the library's CPU setting, the allocation cache off vs on, each run in a fresh process "
                  "(2 warm-up + 4 timed steps; medians over the processes), on the main thread (the CLI) and on a "
                  "worker thread (the napari widget).", "",
                  "| size | thread | step s, off | step s, on | speed-up | peak RSS MB, off | peak RSS MB, on | processes |",
                  "|---|---|---|---|---|---|---|---|"]
        for a in rec["allocator"]:
            lines.append(f"| {a['size']} | {a['where']} | {fmt(a['step_s']['off'], 3)} | {fmt(a['step_s']['on'], 3)} | "
                         f"{fmt(a['speedup'])} | {fmt(a['peak_rss_mb']['off'], 0)} | {fmt(a['peak_rss_mb']['on'], 0)} | "
                         f"{len(a['runs']['off'])}+{len(a['runs']['on'])} |")
    if rec.get("compile"):
        lines += ["", "torch.compile (ours, fp32 channels_last, time-boxed subprocess):"]
        for c in rec["compile"]:
            if c.get("ok"):
                lines.append(f"- {c['size']}: first (compiling) step {fmt(c['first_step_s'], 0)} s; eager/compiled "
                             f"step-time ratio {fmt(c['ratio'])} (>1 = compile faster)")
            else:
                lines.append(f"- {c['size']}: not measured: {c.get('why')}")
    if rec.get("data"):
        d = rec["data"]
        lines += ["", f"Data pipeline: `PatchSampler.batch({d['batch']})` takes {fmt(d['batch_s'], 3)} s per batch, "
                  f"{fmt(100 * d['fraction_of_step'], 1)}% of a {d['vs']} training step ({fmt(d['step_s'], 1)} s)."]
    if rec.get("prediction"):
        p = rec["prediction"]
        ref = p["reference"]
        ref_text = ('MONAI `sliding_window_inference(mode="gaussian")`' if ref == "monai"
                    else "a naive full-accumulator loop")
        lines += [
            "", f"## Tiled prediction (CPU, {p['size']} multi-task net, {p['side']}x{p['side']} image, tile {p['tile']}, "
            f"overlap {p['overlap']}, batch {p['batch']}, autocast {p['amp']})", "",
            f"Reference: {ref_text} "
            f"with the same per-tile forward (`Predictor.forward`: network + softmax; BatchNorm folded into the "
            f"convolutions, `PredictConfig.fuse_batchnorm`). Max |difference| of the "
            f"probabilities: {p['max_abs_diff_probabilities']:.2g}.", "",
            "| method | MP/s | ratio to reference |", "|---|---|---|",
            f"| ours `sliding_window` (blending only) | {fmt(p['mp_per_s']['ours_sliding_window'], 3)} | {fmt(p['ratio_sliding_window'])} |",
            f"| ours `Predictor.predict` (normalise + blend + argmax) | {fmt(p['mp_per_s']['ours_predict'], 3)} | {fmt(p['ratio_predict'])} |",
            f"| {ref} | {fmt(p['mp_per_s'][ref], 3)} | 1.00 |",
        ]
        if ref + "_unfused" in p["mp_per_s"]:
            lines += [f"| {ref}, the network as trained (BatchNorm not folded) | {fmt(p['mp_per_s'][ref + '_unfused'], 3)} | "
                      f"{fmt(p['mp_per_s'][ref + '_unfused'] / p['mp_per_s'][ref])} |", "",
                      f"Our prediction path (`Predictor.predict`) against {ref} with the network as trained: "
                      f"{fmt(p['ratio_predict_vs_unfused'])}x."]
    if rec.get("memory"):
        lines += ["", "## Peak memory predicting a large image (`benchmarks/predict_memory.py`, widths 4,8,16)", ""]
        for mm in rec["memory"]:
            if mm.get("ok"):
                lines.append(f"- {mm['side']}x{mm['side']}: peak RSS {fmt(mm.get('peak_rss_mb'), 0)} MB (baseline "
                             f"{fmt(mm.get('baseline_rss_mb'), 0)} MB, memmapped outputs {fmt(mm.get('outputs_mb'), 0)} MB); "
                             f"peak beyond baseline, outputs and class map: {fmt(mm.get('over_mb'), 0)} MB; "
                             f"{fmt(mm.get('mp_per_s'))} MP/s")
            else:
                lines.append(f"- {mm['side']}x{mm['side']}: not measured: {mm.get('why')}")
    if rec.get("gpu"):
        g = rec["gpu"]
        lines += ["", f"## Training on GPU ({g['gpu']}, {g['size']}, batch {g['batch']})", "",
                  f"Measured bf16 matmul peak {fmt(g['peak_tflops']['bf16'], 0)} TFLOP/s.", "",
                  "| setting | ours patches/s | ref patches/s | ratio | ours TFLOP/s | ref TFLOP/s | per-FLOP ratio | ours % of peak |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in g["settings"]:
            lines.append(f"| {r['setting']} | {fmt(r['patches_per_s']['ours'], 1)} | {fmt(r['patches_per_s']['ref'], 1)} | "
                         f"{fmt(r['ratio_patches'])} | {fmt(r['tflops']['ours'], 1)} | {fmt(r['tflops']['ref'], 1)} | "
                         f"{fmt(r['ratio_tflops'])} | {fmt(100 * r['mfu']['ours'], 1)} |")
        if "data_pipeline" in g:
            lines.append(f"\nData pipeline (patches/s): {json.dumps({k: round(v, 1) for k, v in g['data_pipeline'].items()})}")
    if rec.get("compared_with"):
        c = rec["compared_with"]
        lines += ["", f"## Compared with the previous record on this kind of machine ({c['record']})", "",
                  f"Flagged (**!**): worse than {REGRESSION:.0%} of the previous figure (or memory above "
                  f"{1 / REGRESSION:.0%} of it); the machine's own noise between runs is about 15%, so "
                  "a flag asks for a rerun before it is called a regression.", "",
                  "| figure | before | now | now/before | |", "|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['figure']} | {fmt(r['before'], 3)} | {fmt(r['now'], 3)} | {fmt(r['change'])} | "
                         f"{'**!**' if r['flag'] else ''} |")
        if not c["rows"]:
            lines.append("| (no figure in common) | | | | |")
    if rec.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in rec["notes"]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,small", help="model sizes trained at --batch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--paper", action="store_true", help="also the paper size at batch 4 (CPU)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per setting (at least 2 are kept)")
    ap.add_argument("--setting-budget", type=float, default=100.0,
                    help="seconds per training setting after which no more timed steps start")
    ap.add_argument("--compile-timeout", type=float, default=180.0, help="0 disables the torch.compile probe")
    ap.add_argument("--predict-size", default="small")
    ap.add_argument("--predict-side", type=int, default=1024)
    ap.add_argument("--predict-reps", type=int, default=3)
    ap.add_argument("--memory-side", type=int, default=8192, help="tried if 4096 projects under --memory-timeout")
    ap.add_argument("--memory-timeout", type=float, default=300.0)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: train,allocator,compile,data,predict,memory,gpu")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--allocator-rounds", type=int, default=2, help="processes per mode in the allocator A/B")
    ap.add_argument("--compile-probe", help=argparse.SUPPRESS)
    ap.add_argument("--allocator-probe", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/speed/<run-id>.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile_probe:
        print(json.dumps(compile_probe(args.compile_probe, args.batch, 2)))
        return
    if args.allocator_probe:
        size, mode, where = args.allocator_probe.split(",")
        print(json.dumps(allocator_probe(size, args.batch, mode, where)))
        return
    skip = set(filter(None, args.skip.split(",")))
    t_run = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_run:6.0f}s] {msg}", flush=True)

    rec = {"machine": machine_info(), "args": vars(args), "training": [], "notes": []}
    sizes = [(s, args.batch) for s in args.sizes.split(",") if s]
    if args.paper:
        sizes.append(("paper", 4))
    if "memory" not in skip:
        log("peak memory (predict_memory.py; first, while this process is small: a child inherits its parent's peak RSS)")
        first = run_predict_memory(4096, args.memory_timeout)
        rec["memory"] = [first]
        if first.get("ok") and args.memory_side > 4096:
            projected = first["wall_s"] * (args.memory_side / 4096) ** 2
            if projected < args.memory_timeout:
                rec["memory"].append(run_predict_memory(args.memory_side, args.memory_timeout))
            else:
                rec["memory"].append({"side": args.memory_side, "ok": False,
                                      "why": f"projected {projected:.0f} s from the 4096 run exceeds {args.memory_timeout:.0f} s"})
        log(f"  {[(m['side'], m.get('peak_rss_mb'), m.get('ok')) for m in rec['memory']]}")
    if "train" not in skip:
        log("training (CPU)")
        with cpu_allocation_cache() as cache:  # as the library trains on the CPU
            rec["training_allocation_cache"] = cache
            for size, batch in sizes:
                rec["training"].append(bench_training(size, batch, CPU_SETTINGS, "cpu", args.warmup, args.steps,
                                                      args.setting_budget, log))
    if "allocator" not in skip:
        log("allocation cache off vs on (fresh processes)")
        rec["allocator"] = bench_allocator([s for s, b in sizes if b == args.batch], args.batch,
                                           args.allocator_rounds, args.memory_timeout, log)
    if "data" not in skip:
        log("data pipeline")
        d = bench_data(args.batch)
        chosen = next((t for t in rec["training"] if t["batch"] == args.batch and t["size"] == "small"),
                      rec["training"][0] if rec["training"] else None)
        ref_step, d["vs"] = None, "training"
        if chosen is not None:
            ref_step = next(r["step_s"]["ours"] for r in chosen["settings"] if r["setting"] == chosen["library_default"])
            d["vs"] = f"{chosen['size']} multi-task ({chosen['library_default']}, batch {chosen['batch']})"
        d["step_s"] = ref_step or float("nan")
        d["fraction_of_step"] = d["batch_s"] / d["step_s"] if ref_step else float("nan")
        rec["data"] = d
        log(f"  PatchSampler.batch({args.batch}): {d['batch_s']:.3f} s")
    if "compile" not in skip and args.compile_timeout > 0:
        log("torch.compile probe (tiny)")
        rec["compile"] = [run_compile_probe("tiny", args.batch, args.compile_timeout, log)]
    if "predict" not in skip:
        log("prediction")
        rec["prediction"] = bench_prediction(args.predict_size, args.predict_side, args.predict_reps, log)
    if "gpu" not in skip and torch.cuda.is_available():
        log("GPU training")
        rec["gpu"] = bench_gpu("paper", args.batch, log)
    elif not torch.cuda.is_available():
        rec["notes"].append("No CUDA GPU in this run: the GPU part (matmul peak, TFLOP/s, cudnn.benchmark, "
                            "compile, prefetching pipeline) was not measured.")
    rec["total_s"] = time.perf_counter() - t_run
    rec["notes"].append("FLOPs count convolutions and matrix products only (BatchNorm, activations, interpolation, "
                        "concatenation, the loss and Adam are memory-bound work that FlopCounterMode leaves out).")
    rec["notes"].append(f"{args.warmup} warm-up + up to {args.steps} timed steps per setting (fewer when a setting "
                        f"passed {args.setting_budget:.0f} s; at least 2), ours and reference alternating.")
    prev = previous_record(rec)
    if prev is not None:
        rec["compared_with"] = {"record": prev[0], "rows": compare_records(rec, prev[1])}
        for r in rec["compared_with"]["rows"]:
            if r["flag"]:
                log(f"  slower than {prev[0]}: {r['figure']} {r['before']:.3g} -> {r['now']:.3g}")
    md = markdown(rec)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else RESULTS / f"{dt.datetime.now():%Y%m%d-%H%M%S}-{platform.node() or 'host'}.json"
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=1, default=str)
    os.replace(tmp, out)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(md)
    print(md)
    log(f"wrote {out} and {DOC} in {rec['total_s']:.0f} s")


if __name__ == "__main__":
    main()
