"""Accuracy benchmark: lazy-label methods and baselines on real data (not a test).

A *run* is (dataset, method, strong fraction, seed, model size, iteration budget, device).
Each finished run writes one JSON record (config, seed, versions, machine, iterations, wall
time, metrics) to ``benchmarks/results/accuracy/<dataset>/<run-id>.json``, atomically; a run
that fails writes nothing. Running again skips the records already there, so a tier can be
filled in over several sessions.

Data (from the shared development data only, ``$LAZYLABELS_SHARED_DATA`` or
``../shared/data`` beside the repository):

* ``glas``: GlaS training set (85 images). Validation: the 20 images of patients 3, 4, 7 and
  11 (8 benign, 12 malignant; grades.csv), so no patient is in both parts; trained on the
  other 65.
* ``isbi``: ISBI 2012 slices 0-19: train 0-14, validate 15-19.
* ``dsb``: DSB 2018 touching nuclei (48 images): images sorted by name, every 5th (index 0,
  5, 10, ...) validates (10), the others train (38).

Lazy labels are simulated from the train images' ground truth
(:func:`napari_lazylabels.core.simulate.simulate_folder`, default
:class:`~napari_lazylabels.core.simulate.SimulationConfig`, the run's seed; the exact-mask
images are the first ``round(fraction * n)`` of a seeded permutation, so a smaller fraction's
images are part of a larger one's). Validation images are never labelled nor trained on; they
are scored against their exact instance masks with
:func:`napari_lazylabels.core.metrics.evaluate_image` (foreground dice per image, object F1 at
IoU > 0.5, interface precision, pairs separated), averaged over images. The model of the
*last* iteration is scored: no checkpoint is selected on the validation images.

Methods:

* ``multitask-ignore``: the multi-task U-net, unannotated pixels ignored (the product default).
* ``multitask-paper``: the multi-task U-net, unannotated pixels are background (Ke et al.).
* ``unet-weak``: single-task U-net on the detection marks only (ignore mode). It never sees
  the exact masks, and the marks do not depend on the strong fraction: its run at 9.4%
  stands for every fraction.
* ``unet-strong``: single-task U-net on the exact-mask images only.
* ``pseudo-labels``: single-task U-net on GrabCut pseudo masks (exact masks where present).
* ``random-forest``: scikit-image multi-scale features + scikit-learn random forest (100
  trees) on the same scribbles and exact masks (needs scikit-learn).

Tiers: ``product`` (what a user runs: the console script with defaults and a time budget,
every dataset, 3 draws, 2 budgets; ``benchmarks/product_path.py``, which takes its own options),
``quick`` (strong fraction 0.094, seed 0, every method and dataset, CPU, the CPU default size ``tiny``),
``full`` (fractions 0.024, 0.047, 0.094, 1.0, seeds 0-2), ``gpu`` (as full, size paper on
CUDA, network methods only).

    OMP_NUM_THREADS=2 python benchmarks/accuracy.py --check            # one short run, < 15 min
    python benchmarks/accuracy.py --tier quick --list                  # what is missing
    nohup python benchmarks/accuracy.py --tier quick --dataset glas --method multitask-ignore \\
        > benchmarks/work/quick.log 2>&1 &
    python benchmarks/accuracy.py --table                              # docs/benchmarks-accuracy.md
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

import baselines
from _common import FOLDERS, REPO, machine, shared_data, utc_now, versions
from napari_lazylabels.core import io, metrics, simulate
from napari_lazylabels.core.checkpoint import load_checkpoint, save_calibration
from napari_lazylabels.core.data import AugmentConfig, object_size
from napari_lazylabels.core.io import LazyDataset
from napari_lazylabels.core.labels import DEFAULT_TASK_WEIGHTS, TASKS
from napari_lazylabels.core.losses import BALANCED_TASKS, masked_cross_entropy, multitask_loss
from napari_lazylabels.core.model import (
    CPU_DEFAULT_SIZE,
    ModelConfig,
    MultiTaskUNet,
    autocast_dtype,
    precision_name,
    resolve_device,
)
from napari_lazylabels.core.predict import (
    PredictConfig,
    Predictor,
    auto_min_object_size,
    instances_from_prediction,
    separating_interfaces,
)
from napari_lazylabels.core.train import (
    TrainConfig,
    device_defaults,
    fit,
    infer_model_config,
    tune_instances,
)

log = logging.getLogger("accuracy")

RESULTS = REPO / "benchmarks" / "results" / "accuracy"
WORK = REPO / "benchmarks" / "work" / "accuracy"
TABLE = REPO / "docs" / "benchmarks-accuracy.md"
RECORD_FORMAT = "napari-lazylabels accuracy record"
RECORD_VERSION = 1

METHODS = ("multitask-ignore", "multitask-paper", "unet-weak", "unet-strong", "pseudo-labels", "random-forest")
NETWORK_METHODS = METHODS[:-1]
FRACTIONS = (0.024, 0.047, 0.094, 1.0)
# Methods that never see the exact masks: the simulated marks of an image depend only on the
# seed and the image, not on which images got exact masks, so one run (at 9.4%) stands for
# every strong fraction.
FRACTION_FREE = ("unet-weak",)
FRACTION_FREE_AT = 0.094
# With exact masks on every image (100%) the pseudo-label set *is* the exact-mask set (GrabCut
# runs only where an image has no mask; baselines.pseudo_label_dataset), so pseudo-labels would
# repeat unet-strong's run step for step: its records serve that column.
SAME_AS_AT_FULL = {"pseudo-labels": "unet-strong"}
DATASETS = ("glas", "isbi", "dsb")

# Iterations (batches of 16 patches) per (architecture, size): sized so that one run, training
# plus scoring, takes about 10 minutes on the 2 CPU cores of the dev machine with the CPU
# default patch of 128 px (measured on ISBI: multitask "small" ~1.6 it/s, a single-task U-net
# about 2x as fast). Records made before the CPU default became 128 px (run ids without
# "_p128") used 256 px patches and a tenth of these budgets. "paper" on a GPU (256 px): a
# guess, about 10 min on one H100. "tiny" (2026-12-02, one step of batch 16 x 128 px, bf16 +
# channels_last, 1 thread, interleaved with "small"): multitask 1.1 vs 2.8 s (2.4x as many
# steps), single-task U-net 0.51 vs 1.54 s (3x).
ITERATIONS: dict[tuple[str, str], int] = {
    ("multitask", "tiny"): 1700,
    ("multitask", "small"): 700,
    ("unet", "tiny"): 4200,
    ("unet", "small"): 1400,
    ("multitask", "medium"): 250,
    ("unet", "medium"): 500,
    ("multitask", "paper"): 4000,
    ("unet", "paper"): 6000,
}
BATCH_SIZE = 16

TIERS = {
    # CPU tiers at the product's CPU default size ("tiny" since 2026-12-02; records at "small"
    # stay in the table as their own section).
    "quick": {"fractions": (0.094,), "seeds": (0,), "methods": METHODS, "size": CPU_DEFAULT_SIZE, "device": "cpu"},
    "full": {"fractions": FRACTIONS, "seeds": (0, 1, 2), "methods": METHODS, "size": CPU_DEFAULT_SIZE, "device": "cpu"},
    "gpu": {"fractions": FRACTIONS, "seeds": (0, 1, 2), "methods": NETWORK_METHODS, "size": "paper", "device": "cuda"},
}

# GlaS validation: whole patients (grades.csv), both grades, ~20 images.
GLAS_VAL_PATIENTS = ("3", "4", "7", "11")


# --------------------------------------------------------------------------- data
def split(dataset: str, root: Path) -> tuple[list[str], list[str]]:
    """Fixed (train stems, validation stems) of a dataset."""
    folder = root / FOLDERS[dataset]
    stems = sorted(p.stem for p in (folder / "masks").iterdir() if p.suffix == ".png")
    if dataset == "glas":
        with open(folder / "grades.csv", newline="") as f:
            patient = {r["name"]: r["patient ID"].strip() for r in csv.DictReader(f)}
        val = [s for s in stems if patient[s] in GLAS_VAL_PATIENTS]
    elif dataset == "isbi":
        val = [s for s in stems if int(s.split("_")[-1]) >= 15]
    elif dataset == "dsb":
        val = stems[::5]
    else:
        raise ValueError(dataset)
    train = [s for s in stems if s not in set(val)]
    return train, val


def lazy_dataset(dataset: str, root: Path, fraction: float, seed: int) -> tuple[LazyDataset, dict]:
    """Simulated lazy labels of the train images (cached in benchmarks/work, made atomically)."""
    train, _ = split(dataset, root)
    src = root / FOLDERS[dataset]
    key = f"{dataset}_f{fraction:g}_s{seed}"
    out = WORK / "datasets" / key
    if not (out / "simulation.json").exists():
        WORK.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=WORK))
        try:
            for sub in ("images", "masks"):
                (staging / "gt" / sub).mkdir(parents=True)
                for stem in train:
                    f = next((src / sub).glob(f"{stem}.*"))
                    (staging / "gt" / sub / f.name).symlink_to(f)
            simulate.simulate_folder(staging / "gt", staging / "lazy", strong_fraction=fraction, seed=seed)
            out.parent.mkdir(parents=True, exist_ok=True)
            if not (out / "simulation.json").exists():
                if out.exists():
                    shutil.rmtree(out)
                os.replace(staging / "lazy", out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    sim = json.loads((out / "simulation.json").read_text())
    ds = io.load_dataset(out)
    if sorted(ds.names()) != sorted(train):
        raise RuntimeError(f"{out} does not hold the train split of {dataset}; delete it and run again.")
    return ds, {"seed": sim["seed"], "strong_fraction": sim["strong_fraction"], "strong": sim["strong"],
                "n_strong": len(sim["strong"]), "config": sim["config"]}


def validation_set(dataset: str, root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    _, val = split(dataset, root)
    src = root / FOLDERS[dataset]
    out = []
    for stem in val:
        image = io.read_image(next((src / "images").glob(f"{stem}.*")))
        gt = io.read_label(src / "masks" / f"{stem}.png")
        out.append((stem, image, gt))
    return out


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class Run:
    dataset: str
    method: str
    fraction: float
    seed: int
    size: str
    iterations: int
    device: str
    mask_share: float | None = None  # None: the product default (AugmentConfig.mask_share)
    scale: float | None = None  # None: the product default (working scale from object size)
    augment: tuple[tuple[str, float], ...] = ()  # AugmentConfig overrides for experiments
    balance: tuple[str, ...] | None = None  # None: the product's (losses.BALANCED_TASKS)
    marks_seg: bool | None = None  # None: the product default (TrainConfig.marks_to_segmentation)
    balance_power: float | None = None  # None: the product's (1: classes weigh equally)
    # Multi-task alpha_k that differ from 1 (eq. 5 with every alpha = 1 is the reference of
    # the run ids): the product default's, then --task-weight overrides.
    task_weights: tuple[tuple[str, float], ...] = ()
    sep_feedback: float | None = None  # None: the product's network (1: the paper's)
    # Multi-task balance smoothing, resolved (the product default unless --balance-smoothing);
    # in the run id when not 0 (the runs before it existed had 0), like the task weights.
    balance_smoothing: float = 0.0

    @property
    def architecture(self) -> str:
        return "multitask" if self.method.startswith("multitask") else "unet"

    @property
    def run_id(self) -> str:
        if self.method == "random-forest":
            return f"{self.method}_f{self.fraction:g}_s{self.seed}"
        patch = device_defaults(self.device)["patch_size"]
        extra = "" if self.mask_share is None else f"_ms{self.mask_share:g}"
        extra += "" if self.scale is None else f"_sc{self.scale:g}"
        extra += "".join(f"_{k}{v:g}" for k, v in self.augment)
        if self.balance is not None:
            extra += "_bal" + ("-".join(t[:3] for t in self.balance) or "none")
        if self.marks_seg is not None:
            extra += f"_mseg{int(self.marks_seg)}"
        if self.balance_power is not None:
            extra += f"_bp{self.balance_power:g}"
        extra += "".join(f"_w{k[:3]}{v:g}" for k, v in self.task_weights)
        if self.sep_feedback is not None:
            extra += f"_sfb{self.sep_feedback:g}"
        if self.balance_smoothing:
            extra += f"_bsm{self.balance_smoothing:g}"
        return f"{self.method}_f{self.fraction:g}_s{self.seed}_{self.size}_it{self.iterations}_p{patch}{extra}_{self.device}"

    def path(self, results: Path) -> Path:
        return results / self.dataset / f"{self.run_id}.json"


def runs_for(tier: str, args) -> list[Run]:
    t = TIERS[tier]
    size = args.size or t["size"]
    device = args.device or t["device"]
    out = []
    for dataset in args.dataset or DATASETS:
        for method in args.method or t["methods"]:
            if method not in t["methods"] and not args.method:
                continue
            fractions = args.fraction or t["fractions"]
            if method in FRACTION_FREE:
                fractions = (FRACTION_FREE_AT,)
            for fraction in fractions:
                if fraction == 1.0 and method in SAME_AS_AT_FULL:
                    continue  # the run of SAME_AS_AT_FULL[method] stands for it
                for seed in args.seed if args.seed is not None else t["seeds"]:
                    if method == "random-forest":
                        out.append(Run(dataset, method, fraction, seed, "-", 0, "cpu"))
                        continue
                    arch = "multitask" if method.startswith("multitask") else "unet"
                    iters = args.iterations or ITERATIONS[(arch, size)]
                    out.append(Run(dataset, method, fraction, seed, size, iters, device, args.mask_share,
                                   args.scale, parse_augment(args.augment),
                                   None if args.balance is None else tuple(t for t in args.balance.split(",") if t),
                                   None if args.marks_seg is None or method != "multitask-ignore" else bool(args.marks_seg),
                                   args.balance_power,
                                   run_task_weights(args.task_weight) if arch == "multitask" else (),
                                   args.sep_feedback if arch == "multitask" else None,
                                   run_balance_smoothing(args.balance_smoothing) if arch == "multitask" else 0.0))
    return list(dict.fromkeys(out))


def run_balance_smoothing(value: float | None) -> float:
    """The multi-task runs' balance smoothing: ``--balance-smoothing`` or the product default."""
    return TrainConfig().balance_smoothing if value is None else float(value)


def run_task_weights(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    """The product's task weights with ``["separation=0.1", ...]`` overrides, as sorted
    ``(("separation", 0.1), ...)`` pairs of the weights that are not 1 (tasks checked)."""
    out = dict(DEFAULT_TASK_WEIGHTS)
    for item in items or []:
        task, _, value = item.partition("=")
        if task not in TASKS or not value:
            raise SystemExit(f"--task-weight takes TASK=W with TASK one of {TASKS}, got {item!r}")
        out[task] = float(value)
    return tuple(sorted((k, v) for k, v in out.items() if v != 1.0))


def parse_augment(items: list[str] | None) -> tuple[tuple[str, float], ...]:
    """``["color=0.1", ...]`` -> sorted ``(("color", 0.1), ...)``, checked against AugmentConfig."""
    out = {}
    for item in items or ():
        key, _, value = item.partition("=")
        if key not in AugmentConfig.__dataclass_fields__ or key in ("patch_size", "scale_range"):
            raise SystemExit(f"--augment {item!r}: not a numeric AugmentConfig field.")
        out[key] = float(value)
    return tuple(sorted(out.items()))


def training_set(run: Run, lazy: LazyDataset, cache_key: str) -> tuple[LazyDataset, str, str]:
    """(dataset, architecture, label mode) a network method trains on."""
    if run.method == "multitask-ignore":
        return lazy, "multitask", "ignore"
    if run.method == "multitask-paper":
        return lazy, "multitask", "paper"
    if run.method == "unet-weak":
        return baselines.weak_only(lazy), "unet", "ignore"
    if run.method == "unet-strong":
        return baselines.strong_only(lazy), "unet", "ignore"
    if run.method == "pseudo-labels":
        return pseudo_labels(lazy, cache_key), "unet", "ignore"
    raise ValueError(run.method)


def pseudo_labels(lazy: LazyDataset, cache_key: str) -> LazyDataset:
    """GrabCut pseudo labels, cached per simulated dataset (they depend on its marks only)."""
    path = WORK / "pseudo" / f"{cache_key}.npz"
    cache: dict[str, np.ndarray] = {}
    if path.exists():
        with np.load(path) as z:
            cache = {k: z[k] for k in z.files}
    n_before = len(cache)
    t0 = time.perf_counter()
    ds = baselines.pseudo_label_dataset(lazy, cache=cache)
    if len(cache) > n_before:
        log.info("GrabCut pseudo labels: %d images in %.0f s", len(cache) - n_before, time.perf_counter() - t0)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, **cache)
        os.replace(tmp, path)
    return ds


def score(val, predict_one) -> tuple[dict, list[dict]]:
    per_image = []
    for stem, image, gt in val:
        classes, inst, interfaces, raw = predict_one(image)
        m = metrics.evaluate_image(classes, inst, interfaces, gt)
        # The separation head's thresholded map before keeping only the pixels between two
        # predicted objects (records before 2026-11-25 scored this map as interface_precision).
        m["interface_precision_raw"] = (
            math.nan if raw is None else metrics.interface_scores(raw, inst, gt)["precision"]
        )
        per_image.append({"image": stem, **{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}})
    summary = metrics.summarize([{k: (math.nan if v is None else v) for k, v in r.items() if k != "image"} for r in per_image])
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    return summary, per_image


def speck_filter(lazy: LazyDataset) -> int:
    """Smallest object every method keeps: the product's default for the run's lazy labels
    (a tenth of the typical object's area), so all methods drop the same specks."""
    return auto_min_object_size(ModelConfig(object_diameter=object_size(list(lazy))))


def network_predictor(ck, device, min_size: int):
    """``predict_one(image) -> (classes, instances, separating interfaces, raw interfaces)``
    for a trained network checkpoint, as :func:`score` wants it."""
    predictor = Predictor(ck.build(device), ck.model_config,
                          PredictConfig(device=str(device), batch_size=8, min_object_size=min_size))
    threshold = predictor.interface_threshold

    def predict_one(image):
        p = predictor.predict(image, instances=True)
        if p.interfaces is None:
            return p.classes, p.instances, None, None
        raw = p.interfaces >= threshold
        return p.classes, p.instances, separating_interfaces(p.interfaces, p.instances, threshold), raw

    return predict_one


def training_variants(run: Run, cfg: TrainConfig) -> tuple[dict, dict]:
    """An experiment run's variants of the product's training, as :func:`fit`'s ``loss`` and
    ``model_factory`` (none for the product's own), and what its record keeps of them (the
    ``train_config`` keys the tables read: ``balance_classes``, ``balance_power``)."""
    balance = BALANCED_TASKS if run.balance is None else tuple(run.balance)
    power = 1.0 if run.balance_power is None else run.balance_power
    variants = {}
    if run.balance is not None or run.balance_power is not None:
        variants["loss"] = partial(
            multitask_loss, weights=dict(cfg.task_weights), balance=balance,
            balance_smoothing=cfg.balance_smoothing, cross_entropy=partial(masked_cross_entropy, power=power),
        )
    if run.sep_feedback is not None:
        variants["model_factory"] = partial(MultiTaskUNet, separation_feedback=run.sep_feedback)
    return variants, {"balance_classes": list(balance), "balance_power": power}


def execute(run: Run, root: Path, results: Path, keep_model: bool = False, threads: int | None = None) -> dict:
    """Do one run and write its record; raises on failure (nothing written)."""
    t_start = time.perf_counter()
    lazy, sim = lazy_dataset(run.dataset, root, run.fraction, run.seed)
    val = validation_set(run.dataset, root)
    cache_key = f"{run.dataset}_f{run.fraction:g}_s{run.seed}"
    record = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "run_id": run.run_id,
        "config": {
            "dataset": run.dataset, "method": run.method, "strong_fraction": run.fraction,
            "size": run.size, "iterations": run.iterations, "device": run.device,
            "batch_size": BATCH_SIZE if run.method != "random-forest" else None,
            "patch_size": device_defaults(run.device)["patch_size"] if run.method != "random-forest" else None,
            "scale_override": run.scale, "augment_override": dict(run.augment),
        },
        "seed": run.seed,
        "data": {
            "folder": FOLDERS[run.dataset], "n_train": len(lazy), "n_val": len(val),
            "val_images": [v[0] for v in val], "simulation": sim,
        },
        "started": utc_now(),
        "versions": versions(),
        "machine": machine(),
    }
    min_size = speck_filter(lazy)
    record["config"]["min_object_size"] = min_size
    timing: dict[str, float] = {}
    if run.method == "random-forest":
        t0 = time.perf_counter()
        rf = baselines.RandomForestSegmenter(seed=run.seed, n_jobs=threads)
        rf.fit(lazy)
        timing["train_s"] = time.perf_counter() - t0
        record["train"] = {"n_training_pixels": rf.n_training_pixels, "n_estimators": rf.n_estimators,
                           "max_depth": rf.max_depth, "sigma": [rf.sigma_min, rf.sigma_max]}

        def predict_one(image):
            classes = rf.predict(image)
            return classes, instances_from_prediction(classes, None, min_size=min_size), None, None

        t0 = time.perf_counter()
        summary, per_image = score(val, predict_one)
        timing["predict_s"] = time.perf_counter() - t0
    else:
        train_ds, arch, mode = training_set(run, lazy, cache_key)
        timing["prepare_s"] = time.perf_counter() - t_start
        device = resolve_device(run.device)
        model_config = infer_model_config(train_ds, device, run.size, architecture=arch, scale=run.scale)
        augment = dict(run.augment)
        if run.mask_share is not None:
            augment["mask_share"] = run.mask_share
        balance = {}
        if run.marks_seg is not None:
            balance["marks_to_segmentation"] = run.marks_seg
        if run.architecture == "multitask":
            balance["balance_smoothing"] = run.balance_smoothing
            balance["task_weights"] = {**dict.fromkeys(TASKS, 1.0), **dict(run.task_weights)}
        # The method tables keep the optimiser their records were made with (the paper's
        # constant 2e-4); product_path.py measures the product's defaults.
        cfg = TrainConfig(
            **balance, learning_rate=2e-4, lr_schedule="constant",
            iterations=run.iterations, batch_size=BATCH_SIZE, label_mode=mode, device=run.device,
            val_fraction=0.0, val_every=0, seed=run.seed, num_threads=threads,
            augment=AugmentConfig(**augment),
        )
        model_dir = WORK / "models" / run.dataset / run.run_id
        if model_dir.exists():
            shutil.rmtree(model_dir)
        speeds = []

        def on_event(ev):
            if ev.kind == "step":
                speeds.append(ev.patches_per_s)
                if ev.iteration % 10 == 0 or ev.iteration == ev.total:
                    log.info("%s it %d/%s loss %.4f %.1f patches/s %.0f s", run.run_id, ev.iteration,
                             ev.total, ev.loss, ev.patches_per_s, ev.elapsed)

        t0 = time.perf_counter()
        variants, recorded = training_variants(run, cfg)
        result = fit(train_ds, model_dir, model_config, cfg, validation=[], progress=on_event, **variants)
        timing["train_s"] = time.perf_counter() - t0
        ck = load_checkpoint(result.latest)
        record["config"]["interface_threshold"] = ck.model_config.interface_threshold
        record["config"]["tta"] = PredictConfig().tta
        record["config"]["precision"] = precision_name(autocast_dtype(device) if cfg.amp else None)
        predict_one = network_predictor(ck, device, min_size)

        t0 = time.perf_counter()
        summary, per_image = score(val, predict_one)
        timing["predict_s"] = time.perf_counter() - t0
        record["train"] = {
            "architecture": arch, "label_mode": mode, "tasks": list(ck.model_config.tasks),
            "widths": list(ck.model_config.widths), "in_channels": ck.model_config.in_channels,
            "scale": ck.model_config.scale,
            "n_train_images": len(train_ds), "iterations_done": result.iteration,
            "final_loss": result.history["steps"][-1][1] if result.history["steps"] else None,
            "mean_loss_last10": float(np.mean([s[1] for s in result.history["steps"][-10:]])) if result.history["steps"] else None,
            "median_patches_per_s": float(np.median(speeds)) if speeds else None,
            "train_config": {**cfg.to_dict(), **recorded},
        }
        if not keep_model:
            shutil.rmtree(model_dir, ignore_errors=True)
    timing["wall_s"] = time.perf_counter() - t_start
    record["iterations"] = run.iterations
    record["timing"] = {k: round(v, 1) for k, v in timing.items()}
    record["wall_time_s"] = round(timing["wall_s"], 1)
    record["metrics"] = summary
    record["per_image"] = per_image
    io.atomic_write_json(run.path(results), record)
    return record


def rescore(path: Path, root: Path) -> dict | None:
    """Score a record's kept model (``--keep-models``) again with the current prediction and
    post-processing code, without training; the record keeps its training part and notes the
    rescoring (and the metrics it had before). ``None`` when the model was not kept."""
    record = json.loads(path.read_text())
    c = record["config"]
    model_dir = WORK / "models" / c["dataset"] / record["run_id"]
    if c["method"] == "random-forest" or not (model_dir / "latest.pt").exists():
        return None
    lazy, _ = lazy_dataset(c["dataset"], root, c["strong_fraction"], record["seed"])
    min_size = speck_filter(lazy)
    ck = load_checkpoint(model_dir / "latest.pt")
    device = resolve_device("cpu")
    if ck.model_config.interface_threshold is None and "separation" in ck.model_config.tasks:
        # trained before training tuned it: tune as training now does when it ends
        train_ds = lazy if c["method"].startswith("multitask") else None
        if train_ds is not None:
            ck.model_config = tune_instances(ck.build(device), ck.model_config, train_ds, device)
            save_calibration(ck, interface_threshold=ck.model_config.interface_threshold)
    predict_one = network_predictor(ck, device, min_size)
    summary, per_image = score(validation_set(c["dataset"], root), predict_one)
    record.setdefault("rescored", []).append({
        "at": utc_now(),
        "git_commit": versions().get("git_commit"), "previous_metrics": record["metrics"],
    })
    record["config"]["min_object_size"] = min_size
    record["config"]["interface_threshold"] = ck.model_config.interface_threshold
    record["config"]["tta"] = PredictConfig().tta
    record["metrics"], record["per_image"] = summary, per_image
    io.atomic_write_json(path, record)
    return record


# --------------------------------------------------------------------------- table
TABLE_METRICS = (("dice", "Dice (foreground, mean over images)"), ("object_f1", "Object F1 (IoU > 0.5)"),
                 ("pairs_separated", "Touching pairs separated"),
                 ("interface_precision", "Interface precision (interface pixels between two predicted objects)"),
                 ("interface_precision_raw", "Interface precision of the raw separation map (>= 0.5 anywhere)"))


def load_records(results: Path) -> list[dict]:
    out = []
    for p in sorted(results.glob("*/*.json")):
        with contextlib.suppress(ValueError, OSError):
            r = json.loads(p.read_text())
            if r.get("format") == RECORD_FORMAT:
                out.append(r)
    return out


def _cell(values: list[float]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f} (n=1)"
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} (n={len(v)})"


def variant(record: dict) -> str:
    """The experiment overrides of a record's run id (e.g. ``"sc0.25, color0.1"``), ``""`` for
    the product defaults."""
    c = record["config"]
    old = [] if "min_object_size" in c else ["specks ≥ 16 px kept"]  # scored before 2026-12-02
    if c["method"].startswith("multitask") and "interface_threshold" not in c:
        old.append("interface threshold 0.5, not tuned")  # trained before 2026-12-02 afternoon
    if c["method"] != "random-forest" and "tta" not in c:
        old.append("one orientation")  # scored before test-time augmentation (2026-12-02 evening)
    if c["method"] == "random-forest":
        return ", ".join(old)
    head = f"_p{c['patch_size']}"
    rid = record["run_id"]
    rest = rid[rid.index(head) + len(head):] if head in rid else ""
    rest = rest[: -len(f"_{c['device']}")] if rest.endswith(f"_{c['device']}") else rest
    tokens = [x for x in rest.split("_") if x]
    if c["method"].startswith("multitask"):
        # Weights are in the run id relative to 1; the table names them relative to the
        # product default, so the default's rows stay unlabelled.
        tc = record.get("train", {}).get("train_config", {})
        used = tc.get("task_weights") or dict.fromkeys(TASKS, 1.0)
        tokens = [x for x in tokens if not (x.startswith("w") and x[1:4] in {t[:3] for t in TASKS})]
        tokens += [f"w{t[:3]}{used.get(t, 1.0):g}" for t in TASKS if used.get(t, 1.0) != DEFAULT_TASK_WEIGHTS[t]]
        # Balance smoothing likewise (records without it trained with 0); it means nothing
        # without a balanced task ("balnone": the oldest such records have no train_config).
        smoothing = tc.get("balance_smoothing", 0.0)
        tokens = [x for x in tokens if not x.startswith("bsm")]
        balanced = "balnone" not in tokens and tc.get("balance_classes", True)
        if balanced and smoothing != TrainConfig().balance_smoothing:
            tokens.append(f"bsm{smoothing:g}")
    return ", ".join(tokens + old)


def _trained_on(records: list[dict]) -> dict[tuple[str, str], int]:
    """Network runs per (CPU or GPU, training precision). Records from before the precision
    was recorded (2026-12-02 noon) trained under bf16 autocast, the default then everywhere."""
    out: dict[tuple[str, str], int] = {}
    for r in records:
        if r["config"]["method"] == "random-forest":
            continue
        m = r.get("machine", {})
        where = m.get("gpu") or m.get("cpu") or "unknown machine"
        key = (where, r["config"].get("precision", "bfloat16"))
        out[key] = out.get(key, 0) + 1
    return out


def write_table(results: Path, path: Path) -> str:
    records = load_records(results)
    lines = [
        "# Accuracy benchmark (generated)",
        "",
        "Generated by `python benchmarks/accuracy.py --table` from the records in "
        "`benchmarks/results/accuracy/`; do not edit by hand. How the runs are made (data splits, "
        "simulated lazy labels, methods, budgets) is described in `benchmarks/accuracy.py`.",
        "Cells: mean ± sample sd over seeds, and n = number of seeds (runs). Scores are on the "
        "held-out validation images against exact ground truth; the last iteration's model is "
        "scored. Budgets are short, fixed iteration counts (a run takes 20-60 min on 2 shared CPU "
        "cores), so the figures compare methods under equal, short training, not converged accuracy.",
        "Names in brackets are a run's departures from the product defaults, as in its run id: "
        "`wsep0.1` = separation weight alpha_2 of 0.1 (`wdet`, `wseg` likewise), `balnone` = no "
        "class-balanced loss, `mseg1` = marks teach segmentation, `sfbX` = share X of the separation "
        "gradient that reaches the shared layers, `bsmX` = balance smoothing X (a share of the "
        "batch's labelled pixels added to each class's count), `colorX` / `msX` / `scX` / `bpX` = "
        "colour jitter, exact-mask share of a batch, working scale, balance power.",
        "",
    ]
    if not records:
        lines.append("No records yet.")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        c = r["config"]
        groups.setdefault((c["dataset"], c["size"] if c["method"] != "random-forest" else None,
                           c["device"] if c["method"] != "random-forest" else None), []).append(r)
    for dataset in DATASETS:
        for setting in sorted({(k[1], k[2]) for k in groups if k[0] == dataset and k[1] is not None}
                              | ({(None, None)} if (dataset, None, None) in groups else set()), key=str):
            rs = groups.get((dataset, *setting), [])
            if setting != (None, None):
                rs = rs + groups.get((dataset, None, None), [])
            elif any(k[0] == dataset and k[1] is not None for k in groups):
                continue  # random forest shown with the network tables
            if not rs:
                continue
            fracs = sorted({r["config"]["strong_fraction"] for r in rs})
            title = f"## {dataset}" + (f": networks size `{setting[0]}` on {setting[1]}" if setting[0] else "")
            lines += [title, ""]
            n_val = rs[0]["data"]["n_val"]
            n_train = rs[0]["data"]["n_train"]
            lines.append(f"{n_train} train images (lazy labels), {n_val} validation images.")
            lines.append("")
            for key, label in TABLE_METRICS:
                lines.append(f"**{label}**")
                lines.append("")
                lines.append("| method | iterations | " + " | ".join(f"{f:.1%} strong" for f in fracs) + " |")
                lines.append("|---|---|" + "---|" * len(fracs))
                for method in METHODS:
                    mrs = [r for r in rs if r["config"]["method"] == method]
                    alias = [r for r in rs if r["config"]["method"] == SAME_AS_AT_FULL.get(method)
                             and r["config"]["strong_fraction"] == 1.0]
                    for var, it in sorted({(variant(r), r["config"]["iterations"]) for r in mrs}):
                        cells = []
                        for f in fracs:
                            vals = [r["metrics"].get(key) for r in (alias if f == 1.0 and alias else mrs)
                                    if (method in FRACTION_FREE or r["config"]["strong_fraction"] == f)
                                    and r["config"]["iterations"] == it and variant(r) == var]
                            cells.append(_cell(vals) if vals else "")
                        name = method + (f" ({var})" if var else "")
                        if method in FRACTION_FREE:
                            name += " (no exact masks: one run serves every fraction)"
                        if method in SAME_AS_AT_FULL and any(cells[i] for i, f in enumerate(fracs) if f == 1.0):
                            name += f" (100%: {SAME_AS_AT_FULL[method]}'s run, the same training set)"
                        lines.append(f"| {name} | {it if it else '–'} | " + " | ".join(cells) + " |")
                lines.append("")
            walls = [r["wall_time_s"] for r in rs]
            lines.append(f"Wall time per run: {min(walls):.0f}-{max(walls):.0f} s. Networks trained on: "
                         + "; ".join(f"{m} ({p}): {n}" for (m, p), n in sorted(_trained_on(rs).items())) + ".")
            lines.append("")
    text = "\n".join(lines).rstrip() + "\n"
    io.atomic_write_bytes(path, text.encode())
    return text


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--tier=product" in argv or any(a == "--tier" and b == "product" for a, b in zip(argv, argv[1:], strict=False)):
        # The product-path tier runs the console script as a user does (benchmarks/product_path.py).
        import product_path

        rest = [a for a in argv if a != "--tier=product"]
        if "--tier" in rest:
            i = rest.index("--tier")
            del rest[i:i + 2]
        return product_path.main(rest)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tier", choices=tuple(TIERS), default="quick")
    ap.add_argument("--dataset", action="append", choices=DATASETS)
    ap.add_argument("--method", action="append", choices=METHODS)
    ap.add_argument("--fraction", action="append", type=float)
    ap.add_argument("--seed", action="append", type=int)
    ap.add_argument("--size", choices=("tiny", "small", "medium", "paper"))
    ap.add_argument("--iterations", type=int, help="override the iteration budget (a different run id)")
    ap.add_argument("--device", help="override the tier's device (cpu, cuda)")
    ap.add_argument("--mask-share", type=float, help="override AugmentConfig.mask_share (in the run id)")
    ap.add_argument("--scale", type=float, help="override the working scale (in the run id)")
    ap.add_argument("--augment", action="append", metavar="KEY=VALUE",
                    help="override an AugmentConfig field for an experiment, e.g. color=0.1 (in the run id)")
    ap.add_argument("--balance-power", type=float,
                    help="class-balanced tasks weigh a pixel of class c by n_c ** -P (default 1: classes "
                         "weigh equally; in the run id)")
    ap.add_argument("--balance-smoothing", type=float,
                    help="override TrainConfig.balance_smoothing (in the run id)")
    ap.add_argument("--task-weight", action="append", metavar="TASK=W",
                    help="override alpha_k of one task of the multi-task loss, e.g. separation=0.1 (in the run id)")
    ap.add_argument("--sep-feedback", type=float,
                    help="share of the separation gradient that reaches the shared layers (default 1, the "
                         "paper's network; multi-task; in the run id)")
    ap.add_argument("--marks-seg", type=int, choices=(0, 1),
                    help="override TrainConfig.marks_to_segmentation (multitask-ignore; in the run id)")
    ap.add_argument("--balance", metavar="TASKS",
                    help="tasks whose loss weighs each class equally (default: separation): comma list of "
                         "tasks, '' for none (in the run id)")
    ap.add_argument("--max-runs", type=int)
    ap.add_argument("--list", action="store_true", help="list the runs of the tier that have no record yet")
    ap.add_argument("--table", action="store_true", help=f"write {TABLE.relative_to(REPO)} from the records")
    ap.add_argument("--check", action="store_true", help="one short CPU run end to end (ISBI, tiny, 20 it)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="records folder")
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument("--rescore", action="store_true",
                    help="score the kept models of the records again with the current post-processing (no training)")
    ap.add_argument("--stale-only", action="store_true",
                    help="with --rescore: only records scored with other prediction defaults (test-time augmentation)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("napari_lazylabels.core.io",):
        logging.getLogger(name).setLevel(logging.WARNING)

    if args.table:
        write_table(args.results, TABLE)
        print(f"wrote {TABLE}")
        return 0
    root = shared_data()
    if args.check:
        run = Run("isbi", "multitask-ignore", 0.094, 0, args.size or "tiny", args.iterations or 20, "cpu")
        results = WORK / "check"
        path = run.path(results)
        if path.exists():
            path.unlink()
        t0 = time.perf_counter()
        rec = execute(run, root, results, threads=args.threads)
        m = rec["metrics"]
        for key in ("dice", "object_f1", "interface_precision", "pairs_separated"):
            assert key in m, key
        print(f"check OK in {time.perf_counter() - t0:.0f} s: {path}")
        print(json.dumps({k: m[k] for k in ("dice", "object_f1", "interface_precision", "pairs_separated", "n")}))
        return 0

    if args.rescore:
        for path in sorted(args.results.glob("*/*.json")):
            r = json.loads(path.read_text())
            if (args.dataset and r["config"]["dataset"] not in args.dataset) or (
                args.method and r["config"]["method"] not in args.method
            ) or (args.size and r["config"].get("size") != args.size):
                continue
            if args.stale_only and r["config"].get("tta") == PredictConfig().tta:
                continue
            new = rescore(path, root)
            if new is not None:
                m = new["metrics"]
                print(f"rescored {path.relative_to(args.results)}: dice {m['dice']:.3f} object F1 {m['object_f1']:.3f}", flush=True)
        return 0
    todo = [r for r in runs_for(args.tier, args) if not r.path(args.results).exists()]
    if args.list:
        total = len(runs_for(args.tier, args))
        print(f"{len(todo)} of {total} runs of tier {args.tier!r} have no record:")
        for r in todo:
            print(f"  {r.dataset:5s} {r.run_id}")
        return 0
    if args.max_runs is not None:
        todo = todo[: args.max_runs]
    failed = 0
    for i, run in enumerate(todo, 1):
        if run.path(args.results).exists():  # done meanwhile by another process
            continue
        log.info("run %d/%d: %s %s", i, len(todo), run.dataset, run.run_id)
        try:
            rec = execute(run, root, args.results, args.keep_models, args.threads)
        except KeyboardInterrupt:
            raise
        except Exception:
            failed += 1
            log.error("run %s %s failed, nothing written:\n%s", run.dataset, run.run_id, traceback.format_exc())
            continue
        m = rec["metrics"]
        print(f"done {run.dataset} {run.run_id}: dice {m['dice']:.3f} object F1 {m['object_f1']:.3f} "
              f"pairs separated {m['pairs_separated']} in {rec['wall_time_s']:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
