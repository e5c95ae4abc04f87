"""Training: Adam on random augmented patches, the multi-task loss, validation, checkpoints.

The loop is a generator, :func:`train_iter`, that yields small :class:`TrainEvent` objects
after every step, validation and checkpoint. A GUI runs it in a worker thread and stops it at
the next yield; :func:`fit` runs it to the end with a tqdm-like ``progress`` and a
``should_stop`` callable. Budgets are counted in iterations, seconds, or both (whichever ends
first). Stopping early still writes ``latest.pt`` and keeps ``best.pt``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt_mod
from . import quality
from .allocator import cpu_allocation_cache
from .data import AugmentConfig, PatchSampler, PreparedSample, object_size, scale_for_diameter
from .io import LazyDataset, Sample
from .labels import DEFAULT_TASK_WEIGHTS, DETECTION, LABEL_MODES, SEGMENTATION, SEPARATION, TASKS
from .losses import multitask_loss
from .model import (
    ModelConfig,
    autocast_dtype,
    build_model,
    count_parameters,
    default_size,
    precision_name,
    resolve_device,
)
from .runfolder import (
    check_free_space,
    check_writable,
    folder_lock,
    link_or_copy,
    prepare_model_folder,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        iterations: optimiser steps to run in this call (``None``: only ``time_budget``).
        time_budget: wall-clock seconds for this call (``None``: only ``iterations``).
        batch_size: patches per step (paper: 16); ``None`` picks by device.
        learning_rate: Adam's learning rate; ``None`` picks by device (:data:`DEVICE_DEFAULTS`:
            1e-3 on a CPU, the paper's 2e-4 on a GPU).
        lr_schedule: ``"constant"`` (paper) or ``"cosine"`` (decay to 5% over the budget);
            ``None`` picks by device (cosine on a CPU, constant on a GPU). A CPU's budget buys a
            few hundred to a thousand steps, where the paper's constant 2e-4 is still far from
            its end (docs/benchmarks.md, "Accuracy as a user gets it").
        task_weights: alpha_k of eq. (5) per task.
        balance_classes: tasks whose cross entropy weighs each class equally within a batch
            (:func:`napari_lazylabels.core.losses.masked_cross_entropy`); the paper's plain
            mean over pixels for the others. Default: separation, whose interface scribbles
            are a few percent of its labelled pixels (DSB, 700 steps: touching pairs
            separated 0.11 -> 0.24, dice 0.863 -> 0.895, object F1 0.724 -> 0.717).
        balance_power: how strongly balanced tasks are balanced: a pixel of class c weighs
            ``n_c ** -balance_power`` (1: classes weigh equally; 0.5: by the inverse square
            root of their frequency; see :func:`napari_lazylabels.core.losses.masked_cross_entropy`).
        balance_smoothing: balanced tasks add this share of a batch's labelled pixels to
            every class's count before weighing it, so a class with only a handful of pixels
            in a batch does not carry half the term (see
            :func:`napari_lazylabels.core.losses.masked_cross_entropy`); 0 = none. Default
            0.001 (about 120 pixels of a CPU batch): on GlaS, where 80% of the batches hold
            no interface pixel and the rest a few, the multi-task net's held-out dice rose
            from 0.719 to 0.804 over 3 seeds (object F1 0.40 -> 0.52); DSB nuclei and ISBI
            cells, whose batches hold 70-600 interface pixels, kept their dice and gained
            object F1 (docs/benchmarks.md, 2026-12-05).
        label_mode: ``"ignore"`` (unannotated pixels are ignored) or ``"paper"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"``.
        amp: bf16 autocast where it helps: CUDA, and CPUs with native bf16 (AMX or
            AVX512-BF16); other CPUs train in float32 (:func:`model.autocast_dtype`).
        channels_last: channels-last memory format (faster with bf16 on CPU and GPU).
        augment: patch sampling and augmentation.
        val_fraction: share of images held out for validation when no validation set is given
            and fewer than 5 images have exact masks (then none of those is held out); with 5
            or more, one in 5 of the exact-mask images is held out instead (:func:`_split`).
            Only when at least 5 images are labelled; otherwise validation uses the training
            images' own labels.
        val_every: validate every this many iterations and at the end; 0 turns validation
            off (``best.pt`` is then the last model).
        seed: seeds the sampler, the split and torch.
        num_threads: torch CPU threads (``None``: torch's default).
        reuse_cpu_memory: on the CPU, keep freed memory in the process for the next step
            instead of handing it back to the system at every step
            (:func:`napari_lazylabels.core.allocator.cpu_allocation_cache`; Linux with glibc;
            handed back when training ends). ``None`` (default): when training runs on the
            main thread (the CLI, scripts), where steps ran 1.10-1.18x ("tiny") and
            1.32-1.71x ("small") faster for 6-9% and 29-31% more peak memory; not in a worker
            thread (the napari widgets), where glibc maps large blocks afresh anyway and
            steps gained 0.88-1.25x for 12-20% more memory (docs/benchmarks.md).
        save_every: write ``latest.pt`` (weights, optimiser, iteration; atomically) after at
            least this many seconds of training since the last checkpoint, so a killed run
            loses at most this much; 0 writes it after every step. Where one save takes long
            (a "paper" model's 576 MB took 12 s on a 2-core CPU, docs/benchmarks.md) the
            interval grows to 20 times the last save's time, so saving costs at most 5%. A
            validation that finds a new best model writes both files at once (``latest.pt``
            is a hard link to it).
        tune_instances: when training ends, choose the model's interface threshold on the
            images with complete exact masks, validation images first
            (:func:`napari_lazylabels.core.predict.tune_interface_threshold`; models with a
            separation head) and save it with the model.
        marks_to_segmentation: ignore mode: images without exact masks teach the
            segmentation head with their detection marks too (unmarked pixels ignored; see
            :func:`napari_lazylabels.core.labels.training_targets`). Off by default: with one
            exact mask among 5 images (the bundled sample) it kept the held-out dice at
            0.70-0.72 where the default drifted to 0.48; with 1-6 exact-mask images single
            runs scored lower (ISBI object F1 0.698 vs 0.735; GlaS 0.737, the default's 3 seeds
            0.736-0.795; DSB's comparison, 0.855 vs 0.913, rested on a default record that a
            rerun did not reproduce), not yet told apart from run-to-run noise
            (docs/benchmarks.md).
    """

    iterations: int | None = 1000
    time_budget: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    task_weights: dict = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    balance_classes: tuple[str, ...] = (SEPARATION,)
    balance_power: float = 1.0
    balance_smoothing: float = 0.001
    label_mode: str = "ignore"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.1
    val_every: int = 200
    seed: int = 0
    num_threads: int | None = None
    reuse_cpu_memory: bool | None = None
    tune_instances: bool = True
    marks_to_segmentation: bool = False
    save_every: float = 60.0

    def __post_init__(self) -> None:
        if self.iterations is None and self.time_budget is None:
            raise ValueError("Give an iteration budget, a time budget, or both.")
        if not (isinstance(self.save_every, (int, float)) and self.save_every >= 0):
            raise ValueError(f"save_every is a number of seconds >= 0, got {self.save_every!r}.")
        if self.iterations is not None and self.iterations < 1:
            raise ValueError("iterations must be >= 1.")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError("time_budget must be > 0 seconds.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1.")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode must be one of {LABEL_MODES}.")
        if self.marks_to_segmentation and self.label_mode != "ignore":
            raise ValueError("marks_to_segmentation needs label_mode 'ignore' (paper mode calls unmarked pixels background).")
        if self.learning_rate is not None and not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a number > 0, got {self.learning_rate}.")
        if self.lr_schedule not in (None, "constant", "cosine"):
            raise ValueError("lr_schedule must be 'constant' or 'cosine'.")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        unknown = set(self.task_weights) - set(TASKS)
        if unknown:
            raise ValueError(f"task_weights names unknown tasks {sorted(unknown)}; use some of {TASKS}.")
        for task, w in self.task_weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"The weight of task {task!r} must be a number >= 0, got {w!r}.")
        object.__setattr__(self, "balance_classes", tuple(self.balance_classes))
        unknown = set(self.balance_classes) - set(TASKS)
        if unknown:
            raise ValueError(f"balance_classes names unknown tasks {sorted(unknown)}; use some of {TASKS}.")
        if not 0 <= self.balance_power <= 1:
            raise ValueError(f"balance_power must lie in [0, 1] (1: classes weigh equally), got {self.balance_power}.")
        if not (isinstance(self.balance_smoothing, (int, float)) and 0 <= self.balance_smoothing < 1):
            raise ValueError(
                f"balance_smoothing is a share of a batch's labelled pixels in [0, 1), got {self.balance_smoothing!r}."
            )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = asdict(self.augment)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        if "augment" in d and isinstance(d["augment"], dict):
            aug = d["augment"]
            d["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        return cls(**d)


@dataclass
class TrainEvent:
    """One thing that happened in training, yielded by :func:`train_iter`.

    ``kind`` is ``"start"``, ``"step"``, ``"validation"``, ``"checkpoint"``, ``"warning"`` or
    ``"done"``. Validation metrics are :func:`napari_lazylabels.core.quality.summarize`'s
    (``dice``, ``n``, ``measure``, ``trivial``, ``foreground``); a warning's ``message`` is one
    line saying what to do.
    """

    kind: str
    iteration: int
    total: int | None
    elapsed: float
    loss: float | None = None
    parts: dict | None = None
    lr: float | None = None
    patches_per_s: float | None = None
    metrics: dict | None = None
    path: Path | None = None
    message: str = ""


@dataclass
class TrainResult:
    model_dir: Path
    best: Path
    latest: Path
    iteration: int
    best_metric: float | None
    history: dict
    stopped: bool
    interface_threshold: float | None = None
    """The best model's interface threshold (tuned when training ended), ``None`` if not tuned."""
    warnings: list[str] = field(default_factory=list)
    """One-line warnings about the model (:func:`napari_lazylabels.core.quality.warnings_for`)."""
    best_metrics: dict = field(default_factory=dict)
    """Validation metrics of the best model (:func:`napari_lazylabels.core.quality.summarize`)."""


SAVE_COST_FACTOR = 20
"""Periodic checkpoints wait at least this many times the last save's duration (at most 5%
of the training time goes to saving, however large the model)."""

DEVICE_DEFAULTS: dict[str, dict] = {
    # Measured on ISBI (docs/benchmarks.md): on a 2-core CPU, 128 px patches learn far more
    # per second than the paper's 256 px ones; a GPU runs the paper's setting.
    # A CPU budget buys a few hundred to a thousand steps: Adam at 1e-3 decayed by a cosine over
    # the budget learned more in 400 steps than the paper's constant 2e-4 on all three data
    # sets (docs/benchmarks.md, "Accuracy as a user gets it"); a GPU keeps the paper's recipe.
    "cpu": {"batch_size": 16, "patch_size": 128, "learning_rate": 1e-3, "lr_schedule": "cosine"},
    "gpu": {"batch_size": 16, "patch_size": 256, "learning_rate": 2e-4, "lr_schedule": "constant"},
}


def device_defaults(device: torch.device | str) -> dict:
    """Batch and patch size for a device, used where a config leaves them ``None``."""
    return DEVICE_DEFAULTS["cpu" if torch.device(device).type == "cpu" else "gpu"]


def resolve_for_device(cfg: TrainConfig, device: torch.device | str) -> TrainConfig:
    """``cfg`` with every by-device (``None``) setting filled in for ``device``."""
    d = device_defaults(device)
    augment = cfg.augment
    if augment.patch_size is None:
        augment = replace(augment, patch_size=d["patch_size"])
    return replace(
        cfg, batch_size=cfg.batch_size or d["batch_size"], augment=augment,
        learning_rate=cfg.learning_rate or d["learning_rate"], lr_schedule=cfg.lr_schedule or d["lr_schedule"],
    )


def infer_model_config(
    dataset: LazyDataset,
    device: torch.device,
    size: str | None = None,
    patch_size: int | None = None,
    **kwargs,
) -> ModelConfig:
    """A model config that fits a dataset: channels from its images, classes from its class
    list, tasks from the labels it has (a task nobody labelled is not trained), size from the
    device unless given, and the working scale from its objects' size
    (:func:`napari_lazylabels.core.data.auto_scale` for ``patch_size``, by default the
    device's training patch) unless ``scale`` is given."""
    channels = {1 if s.image.ndim == 2 else 3 for s in dataset}
    rgb = any(
        s.image.ndim == 3 and not (np.array_equal(s.image[..., 0], s.image[..., 1]) and np.array_equal(s.image[..., 0], s.image[..., 2]))
        for s in dataset
    )
    in_channels = 3 if rgb else 1
    if channels == {3} and not rgb:
        log.info("RGB images with equal channels: training a grayscale model.")
    have = dataset.summary()
    tasks = tuple(t for t in TASKS if have[t] > 0)
    if not tasks:
        raise ValueError(
            "No image carries any annotation. Draw detection marks (task 1) on at least one image, "
            "including a few background scribbles (label 1)."
        )
    architecture = kwargs.pop("architecture", "multitask")
    if architecture == "unet" and "tasks" not in kwargs:
        kwargs["tasks"] = (SEGMENTATION,) if SEGMENTATION in tasks else (DETECTION,)
    kwargs.setdefault("tasks", tasks)
    diameter = object_size(list(dataset))
    if kwargs.get("object_diameter") is None and diameter is not None:
        kwargs["object_diameter"] = round(diameter, 2)
    if kwargs.get("scale") is None:
        side = float(np.median([min(s.shape) for s in dataset])) if len(dataset) else None
        kwargs["scale"] = scale_for_diameter(diameter, patch_size or device_defaults(device)["patch_size"], side)
        if kwargs["scale"] != 1:
            log.info("Objects are large (median %.0f px): working at scale %g.", diameter, kwargs["scale"])
    return ModelConfig.named(
        size or default_size(device),
        in_channels=in_channels,
        n_classes=dataset.classes.n_classes,
        architecture=architecture,
        **kwargs,
    )


#: exact-mask images a validation split may take: one in this many (at least 1 when there are
#: this many), so the segmentation task keeps most of the few exact masks it learns from
EXACT_PER_HELD_OUT = 5
#: the split's random stream is apart from the seed's other uses (an image set simulated with
#: the same seed draws its exact-mask images from ``default_rng(seed)``)
_SPLIT_STREAM = 0x5B17


def _split(dataset: LazyDataset, cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    """``(train, validation)`` samples when no validation set is given.

    With at least :data:`EXACT_PER_HELD_OUT` exact-mask images, validation holds out one in
    that many of them (and nothing else), so the score is a dice of the objects and the
    segmentation task keeps the rest; with fewer, ``cfg.val_fraction`` of the images without
    exact masks are held out and scored on their marks, and every exact mask is trained on.
    Fewer than 5 labelled images: no split (validation then reads the training images).
    """
    labelled = [s for s in dataset if s.tasks()]
    if len(labelled) < 5 or cfg.val_fraction <= 0:
        return labelled, []
    rng = np.random.default_rng((cfg.seed, _SPLIT_STREAM))
    strong = [s for s in labelled if SEGMENTATION in s.tasks()]
    if len(strong) >= EXACT_PER_HELD_OUT:
        pool, n_val = strong, len(strong) // EXACT_PER_HELD_OUT
    else:
        names = {s.name for s in strong}
        pool = [s for s in labelled if s.name not in names]
        n_val = min(len(pool) - 1, max(1, round(cfg.val_fraction * len(labelled))))
    if n_val < 1:
        return labelled, []
    val_names = {pool[i].name for i in rng.permutation(len(pool))[:n_val]}
    return [s for s in labelled if s.name not in val_names], [s for s in labelled if s.name in val_names]


def validation_score(classes: np.ndarray, sample: Sample, n_classes: int) -> float:
    """Mean dice over foreground classes on a sample's annotated pixels.

    Uses the exact masks when the sample has them (then it is the paper's dice), otherwise the
    detection marks and background scribbles (:func:`napari_lazylabels.core.quality.score_sample`).
    """
    return quality.score_sample(classes, sample, n_classes)["dice"]


def _validate(model, model_config, samples, device) -> dict:
    from .predictor import PredictConfig, Predictor

    # one orientation and no interface map: validation scores the class map, picks the best
    # model and should stay quick
    predictor = Predictor(
        model, model_config, PredictConfig(device=str(device), batch_size=4, tta=1, keep_interfaces=False)
    )
    scores = []
    for s in samples:
        pred = predictor.predict(s.image, instances=False)
        scores.append(quality.score_sample(pred.classes, s, model_config.n_classes))
    model.train()
    return quality.summarize(scores)


def tune_instances(model, model_config: ModelConfig, samples, device) -> ModelConfig:
    """``model_config`` with the interface threshold that cuts the objects of the samples'
    complete exact masks best (:func:`napari_lazylabels.core.predict.tune_interface_threshold`);
    unchanged when there are too few objects to tell or the model has no separation head.
    Training does this when it ends (``TrainConfig.tune_instances``)."""
    from .calibrate import tune_interface_threshold
    from .predictor import PredictConfig, Predictor

    # Interfaces come from one orientation whatever PredictConfig.tta says: one is enough.
    predictor = Predictor(model, model_config, PredictConfig(device=str(device), batch_size=4, tta=1))
    t0 = time.perf_counter()
    threshold, scores = tune_interface_threshold(predictor, samples)
    model.train()
    if threshold is None:
        log.info("Interface threshold not tuned: fewer than 5 objects in complete exact masks.")
        return model_config
    log.info(
        "Interface threshold %.2f (object F1 on the exact masks: %s; %.1f s)", threshold,
        ", ".join(f"{t:g}: {f:.3f}" for t, f in scores.items()), time.perf_counter() - t0,
    )
    return replace(model_config, interface_threshold=threshold)


def train_iter(
    dataset: LazyDataset,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: str | Path | None = None,
    validation: list[Sample] | None = None,
    size: str | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> Iterator[TrainEvent]:
    """Train a model on a dataset, yielding :class:`TrainEvent` as it goes.

    Args:
        dataset: images with lazy labels (any subset of tasks per image).
        out_dir: model folder; gets ``best.pt``, ``latest.pt``, ``config.json``, ``history.json``.
        model_config: the network; inferred from the dataset and device when ``None``.
        train_config: budget and hyper-parameters.
        resume: a checkpoint or model folder to continue from (weights, optimiser, iteration).
        validation: held-out samples (e.g. with exact masks) to pick the best checkpoint;
            when ``None`` a split is made by ``train_config.val_fraction``.
        size: model size name when ``model_config`` is inferred.
        should_stop: called every step; training ends cleanly when it returns True.
        overwrite: replace a model already in ``out_dir`` (its files are removed before
            training starts); without it such a folder is refused unless ``resume`` is that
            folder or one of its checkpoints. The folder is locked for the whole run
            (:func:`napari_lazylabels.core.runfolder.folder_lock`) and checked writable first.

    Yields:
        events; the last one has ``kind == "done"`` and ``path`` = the best checkpoint.

    Returns:
        a :class:`TrainResult` (the value of ``StopIteration``).
    """
    device = resolve_device((train_config or TrainConfig()).device)
    cfg = resolve_for_device(train_config or TrainConfig(), device)
    reuse = cfg.reuse_cpu_memory
    if reuse is None:
        reuse = threading.current_thread() is threading.main_thread()
    out_dir = check_writable(out_dir, "the model folder")
    with folder_lock(out_dir, "train"), cpu_allocation_cache(device.type == "cpu" and reuse):
        prepare_model_folder(out_dir, resume, overwrite)
        return (yield from _train_iter(
            dataset, Path(out_dir), model_config, cfg, device, resume, validation, size, should_stop
        ))


def _train_iter(
    dataset: LazyDataset,
    out_dir: Path,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    device: torch.device,
    resume: str | Path | None,
    validation: list[Sample] | None,
    size: str | None,
    should_stop: Callable[[], bool] | None,
) -> Iterator[TrainEvent]:
    """:func:`train_iter`'s work, with the config resolved for ``device``."""
    dataset.validate()
    quality.check_trainable(dataset)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)

    start_iteration, opt_state, history = 0, None, {"steps": [], "validation": []}
    best_metric: float | None = None
    init_state = None
    if resume is not None:
        ck = ckpt_mod.load_checkpoint(ckpt_mod.resolve_resume_path(resume))
        if model_config is not None and model_config != ck.model_config:
            raise ValueError("The model config differs from the checkpoint's; resume without a config.")
        if ck.classes.names != dataset.classes.names:
            raise ValueError(
                f"The checkpoint was trained for classes {ck.classes.names}, the dataset has "
                f"{dataset.classes.names}. Train a new model, or use the same class list."
            )
        model_config, init_state, opt_state = ck.model_config, ck.state_dict, ck.optimizer
        start_iteration = ck.iteration
        best_metric = ck.metrics.get("best_metric")
        history = ckpt_mod.history_until(
            ckpt_mod.read_history(Path(resume) if Path(resume).is_dir() else Path(resume).parent) or history,
            start_iteration,
        )
    if model_config is None:
        model_config = infer_model_config(dataset, device, size, patch_size=cfg.augment.patch_size)

    if cfg.val_every and validation is None:
        train_samples, val_samples = _split(dataset, cfg)
    else:  # a validation set of its own (an empty list turns validation off): train on all
        train_samples, val_samples = [s for s in dataset if s.tasks()], []
    if validation is not None:
        val_samples = list(validation)
    elif not val_samples and cfg.val_every:
        val_samples = train_samples[:8]
        log.info("No held-out images: validation scores the training images' own labels.")
    if not cfg.val_every:
        val_samples = []
    prepared = [
        PreparedSample(
            s, model_config.in_channels, model_config.norm_percentiles, cfg.label_mode, model_config.tasks,
            model_config.scale, marks_to_segmentation=cfg.marks_to_segmentation,
        )
        for s in train_samples
    ]
    prepared = [p for p in prepared if p.tasks]
    if not prepared:
        raise ValueError(
            f"No training image is labelled for the model's tasks {model_config.tasks}. Annotate "
            "detection marks (and background scribbles) on at least one image."
        )
    sampler = PatchSampler(prepared, cfg.augment, seed=cfg.seed + start_iteration)

    model = build_model(model_config)
    if init_state is not None:
        model.load_state_dict(init_state)
    model.to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    if opt_state is not None:
        optimizer.load_state_dict(opt_state)
        for g in optimizer.param_groups:
            g["lr"] = cfg.learning_rate
    amp_dtype = autocast_dtype(device) if cfg.amp else None
    precision = precision_name(amp_dtype) + ("" if amp_dtype is None else " autocast")

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    log.info(
        "Training %s (%s, %d parameters) on %s in %s: %d train / %d validation images, tasks %s",
        model_config.architecture, model_config.size, count_parameters(model), device, precision,
        len(prepared), len(val_samples), model_config.tasks,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    check_free_space(out_dir, 3 * ckpt_mod.checkpoint_bytes(model, optimizer), "two checkpoints and a temporary copy")
    train_dict = {**cfg.to_dict(), "train_images": [p.name for p in prepared], "val_images": [s.name for s in val_samples]}

    last_save, save_interval = time.perf_counter(), cfg.save_every

    def save(name: str, iteration: int, metrics: dict) -> Path:
        nonlocal last_save, save_interval
        started = time.perf_counter()
        p = ckpt_mod.save_checkpoint(
            out_dir / name, model, model_config, dataset.classes, optimizer, iteration,
            train_dict, {**metrics, "best_metric": best_metric}, cfg.seed,
        )
        if name == ckpt_mod.BEST:  # the newest checkpoint is always latest.pt, for resuming
            link_or_copy(p, out_dir / ckpt_mod.LATEST)
        ckpt_mod.write_history(out_dir, history)
        now = time.perf_counter()
        save_interval = cfg.save_every and max(cfg.save_every, SAVE_COST_FACTOR * (now - started))
        last_save = now
        return p

    t0 = time.perf_counter()
    total = cfg.iterations
    best_metrics: dict = {}
    last_metrics: dict = {}

    def validate(iteration: int) -> Iterator[TrainEvent]:
        nonlocal best_metric, best_metrics, last_metrics
        metrics = _validate(model, model_config, val_samples, device)
        last_metrics = metrics
        history["validation"].append([iteration, metrics["dice"]])
        yield TrainEvent("validation", iteration, total, time.perf_counter() - t0, metrics=metrics)
        score = metrics["dice"]
        if best_metric is None or (not math.isnan(score) and score > best_metric):
            best_metric = None if math.isnan(score) else score
            best_metrics = metrics
            p = save(ckpt_mod.BEST, iteration, metrics)
            yield TrainEvent("checkpoint", iteration, total, time.perf_counter() - t0, path=p, metrics=metrics)

    yield TrainEvent(
        "start", start_iteration, total, 0.0,
        message=f"{device} ({precision}), {model_config.size} model ({count_parameters(model):,} parameters), "
        f"working scale {model_config.scale:g}",
    )
    it = 0
    stopped = False
    last_val_it = None
    while True:
        elapsed = time.perf_counter() - t0
        if cfg.iterations is not None and it >= cfg.iterations:
            break
        if cfg.time_budget is not None and elapsed >= cfg.time_budget:
            break
        if should_stop is not None and should_stop():
            stopped = True
            break
        frac = max(
            it / cfg.iterations if cfg.iterations else 0.0,
            elapsed / cfg.time_budget if cfg.time_budget else 0.0,
        )
        lr = cfg.learning_rate
        if cfg.lr_schedule == "cosine":
            lr = cfg.learning_rate * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        for g in optimizer.param_groups:
            g["lr"] = lr
        ts = time.perf_counter()
        image, targets = sampler.batch(cfg.batch_size, model_config.tasks)
        image = image.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        targets = {t: v.to(device, non_blocking=True) for t, v in targets.items()}
        with autocast():
            outputs = model(image)
        loss, parts = multitask_loss(
            outputs, targets, cfg.task_weights, cfg.balance_classes, cfg.balance_power, cfg.balance_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        it += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(
                f"The loss became {lv} at iteration {start_iteration + it}; lower the learning rate."
            )
        step_time = time.perf_counter() - ts
        history["steps"].append([start_iteration + it, round(lv, 5)])
        yield TrainEvent(
            "step", start_iteration + it, total and start_iteration + total, time.perf_counter() - t0,
            loss=lv, parts=parts, lr=lr, patches_per_s=cfg.batch_size / max(step_time, 1e-9),
        )
        if val_samples and it % cfg.val_every == 0:
            last_val_it = it
            yield from validate(start_iteration + it)
        if time.perf_counter() - last_save >= save_interval:
            save(ckpt_mod.LATEST, start_iteration + it, {})

    if it > 0 and last_val_it != it and val_samples:
        yield from validate(start_iteration + it)
    final_metrics = dict(last_metrics)
    tune = cfg.tune_instances and it > 0 and SEPARATION in model_config.tasks
    if tune:
        # Images held out from training (validation) first: their masks were not learned.
        val_names = {v.name for v in val_samples}
        tune_samples = list(val_samples) + [s for s in dataset if s.name not in val_names]
        model_config = tune_instances(model, model_config, tune_samples, device)
    latest = save(ckpt_mod.LATEST, start_iteration + it, final_metrics)
    best = out_dir / ckpt_mod.BEST
    threshold = model_config.interface_threshold
    if not best.exists() or not val_samples:  # no validation: best.pt is the last model
        best = save(ckpt_mod.BEST, start_iteration + it, final_metrics)
    elif tune:  # the best model of an earlier iteration gets its own threshold
        ck = ckpt_mod.load_checkpoint(best)
        tuned = model_config if ck.iteration == start_iteration + it else tune_instances(ck.build(device), ck.model_config, tune_samples, device)
        threshold = tuned.interface_threshold
        ckpt_mod.update_model_config(best, replace(ck.model_config, interface_threshold=threshold))
    warnings = quality.warnings_for({**best_metrics, "best_metric": best_metric}, start_iteration + it)
    for w in warnings:
        log.warning(w)
        yield TrainEvent("warning", start_iteration + it, total, time.perf_counter() - t0, message=w)
    result = TrainResult(
        out_dir, best, latest, start_iteration + it, best_metric, history, stopped, threshold, warnings,
        dict(best_metrics),
    )
    yield TrainEvent(
        "done", start_iteration + it, total, time.perf_counter() - t0, path=best,
        metrics={"best_metric": best_metric, "stopped": stopped, "interface_threshold": threshold,
                 "best": dict(best_metrics), "warnings": warnings},
        message="stopped" if stopped else "finished",
    )
    return result


def fit(
    dataset: LazyDataset,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: str | Path | None = None,
    validation: list[Sample] | None = None,
    size: str | None = None,
    progress=None,
    should_stop: Callable[[], bool] | None = None,
    on_event: Callable[[TrainEvent], None] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train to the end of the budget (or until ``should_stop()``), see :func:`train_iter`.

    Args:
        progress: a tqdm-like object (``update(n)``, ``set_postfix(**kw)``, optional
            ``total``); steps are reported to it.
        on_event: called with every :class:`TrainEvent`.
        overwrite: replace a model already in ``out_dir`` (see :func:`train_iter`).

    Returns:
        a :class:`TrainResult` with the checkpoint paths and the loss history.
    """
    gen = train_iter(dataset, out_dir, model_config, train_config, resume, validation, size, should_stop, overwrite)
    result = None
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if on_event is not None:
            on_event(ev)
        if progress is not None:
            if ev.kind == "step":
                progress.update(1)
                with contextlib.suppress(Exception):
                    progress.set_postfix(loss=f"{ev.loss:.4f}", refresh=False)
            elif ev.kind == "validation":
                with contextlib.suppress(Exception):
                    progress.set_postfix(val_dice=f"{ev.metrics['dice']:.3f}", refresh=False)
    return result
