"""Training: Adam on random augmented patches, the multi-task loss, validation, checkpoints.

The loop is a job (:mod:`~napari_lazylabels.core.jobs`), :func:`train_iter`, a generator of
:class:`TrainEvent` (a :class:`~napari_lazylabels.core.jobs.Progress` with the loss, metrics,
...) after every step, validation and checkpoint. A GUI runs it in a worker thread;
:func:`fit` runs it to the end (:func:`~napari_lazylabels.core.jobs.drive`). Budgets are
counted in iterations, seconds, or both (whichever ends first). A stop (``should_stop``) ends
it cleanly: it still validates, writes ``latest.pt``, keeps ``best.pt`` and returns its
:class:`TrainResult` with ``stopped`` True.

A run reads as: resume (:func:`_resume`: weights, optimiser, iteration and history of a
checkpoint), plan (:func:`plan_training`: device, settings and network, the one place that
decides them), split (:func:`_training_data`: training patches and validation images),
build (:func:`_build`: the network and its :class:`napari_lazylabels.core.step.TrainStep`),
step (:meth:`_Run.steps`) and finish (:meth:`_Run.finish`: last validation, the interface
threshold, the last checkpoints).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import checkpoint as ckpt_mod
from . import quality
from .allocator import cpu_allocation_cache
from .calibrate import tune_interface_threshold
from .crops import labelled_crops
from .data import AugmentConfig, PatchSampler, PreparedSample, object_size, scale_for_diameter
from .io import LazyDataset, Sample
from .jobs import Cancelled, Progress, drive, stoppable
from .labels import DEFAULT_TASK_WEIGHTS, DETECTION, LABEL_MODES, SEGMENTATION, SEPARATION, TASKS
from .losses import LossFn, training_loss
from .model import (
    ModelConfig,
    autocast_dtype,
    build_model,
    count_parameters,
    default_size,
    fuse_batchnorm,
    precision_name,
    resolve_device,
)
from .options import LR_SCHEDULES
from .predictor import PredictConfig, Predictor
from .prepare import image_value_range, model_channels
from .runfolder import (
    check_free_space,
    check_writable,
    folder_lock,
    link_or_copy,
    prepare_model_folder,
)
from .step import TrainStep, scheduled_learning_rate

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
        balance_smoothing: the class-balanced tasks
            (:data:`napari_lazylabels.core.losses.BALANCED_TASKS`: separation) add this share
            of a batch's labelled pixels to every class's count before weighing it, so a class
            with only a handful of pixels in a batch does not carry half the term (see
            :func:`napari_lazylabels.core.losses.masked_cross_entropy`); 0 = none. The default
            (about 120 pixels of a CPU batch) raised the held-out dice and object F1 on GlaS,
            where most batches hold no interface pixel, and kept DSB's and ISBI's dice
            (docs/benchmarks.md).
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
            main thread (the CLI, scripts), where steps run faster for a little more peak
            memory; not in a worker thread (the napari widgets), where glibc maps large blocks
            afresh anyway (docs/benchmarks.md).
        save_every: write ``latest.pt`` (weights, optimiser, iteration; atomically) after at
            least this many seconds of training since the last checkpoint, so a killed run
            loses at most this much; 0 writes it after every step. Where one save takes long
            (a "paper" model's checkpoint is over 500 MB) the interval grows to
            :data:`SAVE_COST_FACTOR` times the last save's time, so saving costs at most 5%. A
            validation that finds a new best model writes both files at once (``latest.pt``
            is a hard link to it).
        tune_instances: when training ends, choose the model's interface threshold on the
            images with complete exact masks, validation images first
            (:func:`tune_instances`; models with a separation head) and save it with the model.
        marks_to_segmentation: ignore mode: images without exact masks teach the
            segmentation head with their detection marks too (unmarked pixels ignored; see
            :func:`napari_lazylabels.core.labels.training_targets`). Off by default: with one
            exact mask among 5 images (the bundled sample) it keeps the held-out dice where
            the default drifts lower; with more exact masks single runs score lower, not yet
            told apart from run-to-run noise (docs/benchmarks.md).
    """

    iterations: int | None = 1000
    time_budget: float | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    task_weights: dict = field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
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
        if self.lr_schedule is not None and self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}.")
        if isinstance(self.augment, dict):
            object.__setattr__(self, "augment", AugmentConfig(**self.augment))
        unknown = set(self.task_weights) - set(TASKS)
        if unknown:
            raise ValueError(f"task_weights names unknown tasks {sorted(unknown)}; use some of {TASKS}.")
        for task, w in self.task_weights.items():
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ValueError(f"The weight of task {task!r} must be a number >= 0, got {w!r}.")
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
        """The config of a saved dict; keys this version does not know are ignored (older
        checkpoints record experiment settings such as ``balance_power``)."""
        known = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in known}
        if "augment" in d and isinstance(d["augment"], dict):
            aug = d["augment"]
            d["augment"] = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()})
        return cls(**d)


@dataclass(frozen=True)
class TrainEvent(Progress):
    """One thing that happened in training, yielded by :func:`train_iter`: a
    :class:`~napari_lazylabels.core.jobs.Progress` whose ``phase`` (also named ``kind``) is
    ``"start"``, ``"step"``, ``"validation"``, ``"checkpoint"``, ``"warning"`` or ``"done"``,
    ``done`` (also named ``iteration``) the iteration reached and ``total`` the iteration the
    budget ends at (``None`` for a time budget).

    Validation metrics are :func:`napari_lazylabels.core.quality.summarize`'s (``dice``,
    ``n``, ``measure``, ``trivial``, ``foreground``); a warning's ``message`` is one line
    saying what to do.
    """

    elapsed: float
    loss: float | None = None
    parts: dict | None = None
    lr: float | None = None
    patches_per_s: float | None = None
    metrics: dict | None = None
    path: Path | None = None
    message: str = ""

    @property
    def kind(self) -> str:
        return self.phase

    @property
    def iteration(self) -> int:
        return self.done


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
    # A CPU learns far more per second from 128 px patches than from the paper's 256 px ones,
    # and within its few hundred steps Adam at 1e-3 decayed by a cosine learns more than the
    # paper's constant 2e-4 (docs/benchmarks.md); a GPU runs the paper's recipe.
    "cpu": {"batch_size": 16, "patch_size": 128, "learning_rate": 1e-3, "lr_schedule": "cosine"},
    "gpu": {"batch_size": 16, "patch_size": 256, "learning_rate": 2e-4, "lr_schedule": "constant"},
}


def device_defaults(device: torch.device | str) -> dict:
    """Batch and patch size, learning rate and schedule for a device, used where a config
    leaves them ``None``."""
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
    """A model config that fits a dataset (the network half of :func:`plan_training`).

    Channels come from its images (gray, RGB, or all channels of multi-channel images unless
    ``channels`` chooses some: :func:`napari_lazylabels.core.prepare.model_channels`), classes
    from its class list, tasks from the labels it has (a task nobody labelled is not trained),
    the size from the device unless ``size`` or ``widths`` is given, and the working scale from
    its objects' size (:func:`napari_lazylabels.core.data.scale_for_diameter` for
    ``patch_size``, by default the device's training patch) unless ``scale`` is given.

    Args:
        kwargs: :class:`ModelConfig` fields the user chose (``scale``, ``architecture``,
            ``tasks``, ``channels``, ...), and ``widths`` for a network of custom widths
            (``size`` ``"custom"``; then ``size`` must be ``None``).

    Raises:
        ValueError: nothing annotated, or channels that do not fit the images.
    """
    in_channels, channels, source_channels = model_channels([s.image for s in dataset], kwargs.pop("channels", None))
    if channels is not None:
        log.info("Multi-channel model: channels %s of %d-channel images, each with its own range.",
                 ", ".join(map(str, channels)), source_channels)
    elif in_channels == 1 and len(dataset) and all(s.image.ndim == 3 for s in dataset):
        log.info("RGB images with equal channels: training a grayscale model.")
    have = dataset.summary()
    tasks = tuple(t for t in TASKS if have[t] > 0)
    if not tasks:
        raise ValueError(
            "No image carries any annotation. Draw detection marks (task 1) on at least one image, "
            "including a few background scribbles (label 1)."
        )
    widths = kwargs.pop("widths", None)
    if widths is not None and size is not None:
        raise ValueError(f"Give a model size ({size!r}) or custom widths ({tuple(widths)}), not both.")
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
    kwargs.update(
        in_channels=in_channels, channels=channels, source_channels=source_channels,
        n_classes=dataset.classes.n_classes, architecture=architecture,
    )
    if widths is not None:
        return ModelConfig(widths=tuple(widths), size="custom", **kwargs)
    return ModelConfig.named(size or default_size(device), **kwargs)


@dataclass(frozen=True)
class TrainSetup:
    """What a training run uses, decided before it starts (:func:`plan_training`)."""

    device: torch.device
    train_config: TrainConfig
    """Every by-device (``None``) setting filled in for ``device``."""
    model_config: ModelConfig


def plan_training(
    dataset: LazyDataset,
    train_config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    size: str | None = None,
    **model_options,
) -> TrainSetup:
    """The device, the training settings and the network of a run: the one place that decides
    them. :func:`train_iter` asks it; ``lazylabels train`` asks it first to show the network,
    and the Train widget passes its choices through :func:`train_iter`.

    Args:
        dataset: the images with lazy labels.
        train_config: budget and hyper-parameters; its ``None`` settings are filled in for the
            device (:func:`resolve_for_device`).
        model_config: the network when it is already decided (the caller's, or that of the
            checkpoint being resumed); used as it is.
        size: a name of :data:`napari_lazylabels.core.model.MODEL_SIZES` for a new network;
            ``None``: by device.
        model_options: what the user chose about a new network (``scale``, ``architecture``,
            ``tasks``, ``widths``, ...); the rest follows the data (:func:`infer_model_config`).

    Raises:
        ValueError: ``model_options`` with a ``model_config`` (a network already decided).
    """
    cfg = train_config or TrainConfig()
    device = resolve_device(cfg.device)
    cfg = resolve_for_device(cfg, device)
    if model_config is None:
        model_config = infer_model_config(dataset, device, size, patch_size=cfg.augment.patch_size, **model_options)
    elif model_options:
        raise ValueError(
            f"The network is already decided (a model config, or the checkpoint being resumed); "
            f"drop the model options {sorted(model_options)}."
        )
    return TrainSetup(device, cfg, model_config)


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


def _inference_predictor(model: nn.Module, model_config: ModelConfig, device: torch.device, **options):
    """A predictor of one orientation on an inference copy of the training ``model``
    (BatchNorm folded into its convolutions, eval mode: :func:`model.fuse_batchnorm`), so the
    training model keeps its mode and weights."""
    config = PredictConfig(device=str(device), batch_size=4, tta=1, fuse_batchnorm=False, **options)
    return Predictor(fuse_batchnorm(model), model_config, config)


def _validate(model: nn.Module, model_config: ModelConfig, samples: list[Sample], device: torch.device) -> dict:
    """:func:`napari_lazylabels.core.quality.summarize` of the model's class maps of
    ``samples``; one orientation and no interface map, so validation stays quick."""
    predictor = _inference_predictor(model, model_config, device, keep_interfaces=False)
    scores = []
    for s in samples:
        pred = predictor.predict(s.image, instances=False, value_range=getattr(s, "value_range", None))
        scores.append(quality.score_sample(pred.classes, s, model_config.n_classes))
    return quality.summarize(scores)


def tune_instances(model: nn.Module, model_config: ModelConfig, samples, device) -> ModelConfig:
    """``model_config`` with the interface threshold that cuts the objects of the samples'
    complete exact masks best (:func:`napari_lazylabels.core.calibrate.tune_interface_threshold`);
    unchanged when there are too few objects to tell or the model has no separation head.
    Training does this when it ends (``TrainConfig.tune_instances``); ``model`` keeps its mode.
    Interfaces come from one orientation whatever ``PredictConfig.tta`` says: one is enough."""
    predictor = _inference_predictor(model, model_config, device)
    t0 = time.perf_counter()
    threshold, scores = tune_interface_threshold(predictor, samples)
    if threshold is None:
        log.info("Interface threshold not tuned: fewer than 5 objects in complete exact masks.")
        return model_config
    log.info(
        "Interface threshold %.2f (object F1 on the exact masks: %s; %.1f s)", threshold,
        ", ".join(f"{t:g}: {f:.3f}" for t, f in scores.items()), time.perf_counter() - t0,
    )
    return replace(model_config, interface_threshold=threshold)


# --------------------------------------------------------------------------- the phases of a run
@dataclass
class _Resumed:
    """Where a run starts: nothing (a new network), or a checkpoint's network, weights,
    optimiser state, iteration, best score and history."""

    model_config: ModelConfig | None = None
    state_dict: dict | None = None
    optimizer: dict | None = None
    iteration: int = 0
    best_metric: float | None = None
    history: dict = field(default_factory=lambda: {"steps": [], "validation": []})


def _resume(resume: str | Path | None, dataset: LazyDataset, model_config: ModelConfig | None) -> _Resumed:
    """The state to continue from ``resume`` (a checkpoint or model folder), checked against
    the dataset's classes and the caller's ``model_config``."""
    if resume is None:
        return _Resumed()
    ck = ckpt_mod.load_checkpoint(ckpt_mod.resolve_resume_path(resume))
    if model_config is not None and model_config != ck.model_config:
        raise ValueError("The model config differs from the checkpoint's; resume without a config.")
    if ck.classes.names != dataset.classes.names:
        raise ValueError(
            f"The checkpoint was trained for classes {ck.classes.names}, the dataset has "
            f"{dataset.classes.names}. Train a new model, or use the same class list."
        )
    folder = Path(resume) if Path(resume).is_dir() else Path(resume).parent
    history = ckpt_mod.read_history(folder) or _Resumed().history
    return _Resumed(
        ck.model_config, ck.state_dict, ck.optimizer, ck.iteration, ck.metrics.get("best_metric"),
        ckpt_mod.history_until(history, ck.iteration),
    )


@dataclass
class _TrainingData:
    """The training images as patches (``sampler``) and the validation images."""

    prepared: list[PreparedSample]
    sampler: PatchSampler
    val_samples: list[Sample]


def _training_data(
    dataset: LazyDataset, setup: TrainSetup, validation: list[Sample] | None, start_iteration: int
) -> _TrainingData:
    """Split the dataset into training and validation images (a ``validation`` set of the
    caller's, an empty one turning validation off, or :func:`_split`) and prepare the
    training images for the network's tasks and working scale."""
    cfg, mc = setup.train_config, setup.model_config
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
    if cfg.label_mode == "ignore":  # large images: the parts around their labels (core.crops)
        train_samples, val_samples = (_crops(samples, setup) for samples in (train_samples, val_samples))
    prepared = [
        PreparedSample(
            s, mc.in_channels, mc.norm_percentiles, cfg.label_mode, mc.tasks, mc.scale,
            marks_to_segmentation=cfg.marks_to_segmentation, channels=mc.channels,
            source_channels=mc.source_channels,
        )
        for s in train_samples
    ]
    prepared = [p for p in prepared if p.tasks]
    if not prepared:
        raise ValueError(
            f"No training image is labelled for the model's tasks {mc.tasks}. Annotate "
            "detection marks (and background scribbles) on at least one image."
        )
    sampler = PatchSampler(prepared, cfg.augment, seed=cfg.seed + start_iteration)
    return _TrainingData(prepared, sampler, val_samples)


def _crops(samples: list[Sample], setup: TrainSetup) -> list[Sample]:
    """:func:`~napari_lazylabels.core.crops.labelled_crops` of each sample: a large image
    becomes the parts around its labels, each with a patch's reach of context and the whole
    image's intensity range (as prediction normalises it)."""
    mc, patch = setup.model_config, setup.train_config.augment.patch_size or 256
    margin = math.ceil(patch / mc.scale)

    def whole_range(image):
        return image_value_range(image, mc.in_channels, mc.norm_percentiles, mc.channels, mc.source_channels)

    return [c for s in samples for c in labelled_crops(s, margin, whole_range)]


def _build(
    setup: TrainSetup, resumed: _Resumed, loss: LossFn | None, model_factory: Callable[[ModelConfig], nn.Module]
) -> TrainStep:
    """The network (with the resumed weights) and its optimiser (with the resumed state),
    stepping on the product's loss unless ``loss`` is given."""
    cfg = setup.train_config
    model = model_factory(setup.model_config)
    if resumed.state_dict is not None:
        model.load_state_dict(resumed.state_dict)
    amp_dtype = autocast_dtype(setup.device) if cfg.amp else None
    return TrainStep.new(
        model, loss or training_loss(cfg.task_weights, cfg.balance_smoothing), setup.device, cfg.learning_rate,
        amp_dtype, cfg.channels_last, resumed.optimizer,
    )


class _Run:
    """One training run's state between its steps: the network and its step, the data, the
    history and best score, and when the last checkpoint was written."""

    def __init__(
        self, out_dir: Path, classes, setup: TrainSetup, step: TrainStep, data: _TrainingData, resumed: _Resumed
    ) -> None:
        self.out_dir, self.classes, self.step, self.data = out_dir, classes, step, data
        self.device, self.cfg, self.model_config = setup.device, setup.train_config, setup.model_config
        self.start_iteration, self.history, self.best_metric = resumed.iteration, resumed.history, resumed.best_metric
        self.best_metrics: dict = {}
        self.last_metrics: dict = {}
        self.train_dict = {
            **self.cfg.to_dict(), "train_images": [p.name for p in data.prepared],
            "val_images": [s.name for s in data.val_samples],
        }
        self.last_save, self.save_interval = time.perf_counter(), self.cfg.save_every
        self.t0 = self.last_save
        self.it = 0  # steps done in this call
        self.last_val_it: int | None = None  # the step of the last validation in this call

    @property
    def total(self) -> int | None:
        """The iteration this call's budget ends at (``None`` for a time budget)."""
        return None if self.cfg.iterations is None else self.start_iteration + self.cfg.iterations

    @property
    def iteration(self) -> int:
        return self.start_iteration + self.it

    def event(self, kind: str, **kw) -> TrainEvent:
        return TrainEvent(kind, self.iteration, self.total, time.perf_counter() - self.t0, **kw)

    def start(self) -> TrainEvent:
        """Log what trains where, check the folder has room for the checkpoints, start the clock."""
        mc, model = self.model_config, self.step.model
        amp_dtype = autocast_dtype(self.device) if self.cfg.amp else None
        precision = precision_name(amp_dtype) + ("" if amp_dtype is None else " autocast")
        log.info(
            "Training %s (%s, %d parameters) on %s in %s: %d train / %d validation images, tasks %s",
            mc.architecture, mc.size, count_parameters(model), self.device, precision,
            len(self.data.prepared), len(self.data.val_samples), mc.tasks,
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        check_free_space(
            self.out_dir, 3 * ckpt_mod.checkpoint_bytes(model, self.step.optimizer), "two checkpoints and a temporary copy"
        )
        self.last_save, self.save_interval = time.perf_counter(), self.cfg.save_every
        self.t0 = time.perf_counter()
        return TrainEvent(
            "start", self.start_iteration, self.total, 0.0,
            message=f"{self.device} ({precision}), {mc.size} model ({count_parameters(model):,} parameters), "
            f"working scale {mc.scale:g}",
        )

    def save(self, name: str, metrics: dict) -> Path:
        """Write checkpoint ``name`` of the current network (``best.pt`` also becomes
        ``latest.pt``) and the history; the next periodic save waits at least
        :data:`SAVE_COST_FACTOR` times this save's duration."""
        started = time.perf_counter()
        p = ckpt_mod.save_checkpoint(
            self.out_dir / name, self.step.model, self.model_config, self.classes, self.step.optimizer,
            self.iteration, self.train_dict, {**metrics, "best_metric": self.best_metric}, self.cfg.seed,
        )
        if name == ckpt_mod.BEST:  # the newest checkpoint is always latest.pt, for resuming
            link_or_copy(p, self.out_dir / ckpt_mod.LATEST)
        ckpt_mod.write_history(self.out_dir, self.history)
        now = time.perf_counter()
        self.save_interval = self.cfg.save_every and max(self.cfg.save_every, SAVE_COST_FACTOR * (now - started))
        self.last_save = now
        return p

    def _replaces_best(self, metrics: dict) -> bool:
        """Whether the network just validated becomes the model (``best.pt``).

        A constant learning rate (the paper's) keeps the network with the highest score. A
        decaying schedule ends at the network it is designed for, so there the newest network
        replaces the model unless it has collapsed (no better than one class everywhere, or no
        object predicted: :func:`napari_lazylabels.core.quality.is_sound`) while the kept one
        has not. The validation images are few (one exact mask of 8 on GlaS at 9.4%): picking
        the highest score on them chose the network of step 200 of 1600 and lost 0.04-0.08
        held-out dice on GlaS and DSB (docs/benchmarks.md, "Which network is the model").
        """
        score = metrics["dice"]
        if self.best_metric is None:
            return True
        if math.isnan(score):
            return False
        if self.cfg.lr_schedule == "cosine":
            kept_sound = quality.is_sound({**self.best_metrics, "dice": self.best_metric})
            return quality.is_sound(metrics) or (not kept_sound and score > self.best_metric)
        return score > self.best_metric

    def validate(self) -> Iterator[TrainEvent]:
        """Score the network on the validation images; the network that
        :meth:`_replaces_best` chooses is written to ``best.pt``.
        Both are done before the events are yielded, so a stop at either loses nothing."""
        metrics = _validate(self.step.model, self.model_config, self.data.val_samples, self.device)
        self.last_metrics = metrics
        self.history["validation"].append([self.iteration, metrics["dice"]])
        score = metrics["dice"]
        best = None
        if self._replaces_best(metrics):
            self.best_metric = None if math.isnan(score) else score
            self.best_metrics = metrics
            best = self.save(ckpt_mod.BEST, metrics)
        yield self.event("validation", metrics=metrics)
        if best is not None:
            yield self.event("checkpoint", path=best, metrics=metrics)

    def steps(self) -> Iterator[TrainEvent]:
        """Step until the budget is spent; validate every ``val_every`` steps and write
        ``latest.pt`` every ``save_every`` seconds. A stop ends it at any of its events
        (:class:`~napari_lazylabels.core.jobs.Cancelled`, caught by :func:`_train_iter`)."""
        cfg, val_samples = self.cfg, self.data.val_samples
        while True:
            elapsed = time.perf_counter() - self.t0
            if cfg.iterations is not None and self.it >= cfg.iterations:
                return
            if cfg.time_budget is not None and elapsed >= cfg.time_budget:
                return
            progress = max(
                self.it / cfg.iterations if cfg.iterations else 0.0,
                elapsed / cfg.time_budget if cfg.time_budget else 0.0,
            )
            lr = scheduled_learning_rate(cfg.learning_rate, cfg.lr_schedule, progress)
            self.step.set_learning_rate(lr)
            ts = time.perf_counter()
            loss, parts = self.step(*self.data.sampler.batch(cfg.batch_size, self.model_config.tasks))
            self.it += 1
            lv = float(loss)
            if not math.isfinite(lv):
                raise FloatingPointError(f"The loss became {lv} at iteration {self.iteration}; lower the learning rate.")
            step_time = time.perf_counter() - ts
            self.history["steps"].append([self.iteration, round(lv, 5)])
            yield TrainEvent(
                "step", self.iteration, self.total, time.perf_counter() - self.t0,
                loss=lv, parts=parts, lr=lr, patches_per_s=cfg.batch_size / max(step_time, 1e-9),
            )
            if val_samples and self.it % cfg.val_every == 0:
                self.last_val_it = self.it
                yield from self.validate()
            if time.perf_counter() - self.last_save >= self.save_interval:
                self.save(ckpt_mod.LATEST, {})

    def finish(self, dataset: LazyDataset, stopped: bool) -> Iterator[TrainEvent]:
        """Validate the last network (unless just done), tune its interface threshold, write
        the last checkpoints, warn about a weak model. Returns the :class:`TrainResult`."""
        val_samples = self.data.val_samples
        if self.it > 0 and self.last_val_it != self.it and val_samples:
            yield from self.validate()
        final_metrics = dict(self.last_metrics)
        tune = self.cfg.tune_instances and self.it > 0 and SEPARATION in self.model_config.tasks
        tune_samples: list[Sample] = []
        if tune:  # images held out from training (validation) first: their masks were not learned
            val_names = {v.name for v in val_samples}
            tune_samples = list(val_samples) + [s for s in dataset if s.name not in val_names]
            self.model_config = tune_instances(self.step.model, self.model_config, tune_samples, self.device)
        best = self.out_dir / ckpt_mod.BEST
        threshold = self.model_config.interface_threshold
        if not best.exists() or not val_samples:  # no validation: best.pt is the last model
            best = self.save(ckpt_mod.BEST, final_metrics)
        else:
            self.save(ckpt_mod.LATEST, final_metrics)
            if tune:
                threshold = self._calibrate_best(best, tune_samples)
        warnings = quality.warnings_for({**self.best_metrics, "best_metric": self.best_metric}, self.iteration)
        for w in warnings:
            log.warning(w)
            yield self.event("warning", message=w)
        result = TrainResult(
            self.out_dir, best, self.out_dir / ckpt_mod.LATEST, self.iteration, self.best_metric, self.history,
            stopped, threshold, warnings, dict(self.best_metrics),
        )
        yield self.event(
            "done", path=best, message="stopped" if stopped else "finished",
            metrics={"best_metric": self.best_metric, "stopped": stopped, "interface_threshold": threshold,
                     "best": dict(self.best_metrics), "warnings": warnings},
        )
        return result

    def _calibrate_best(self, best: Path, tune_samples: list[Sample]) -> float | None:
        """The interface threshold of ``best.pt`` (the last network's when it is that one,
        else tuned on it), recorded beside it (:func:`checkpoint.save_calibration`)."""
        ck = ckpt_mod.load_checkpoint(best)
        if ck.iteration == self.iteration:
            tuned = self.model_config
        else:
            tuned = tune_instances(ck.build(self.device), ck.model_config, tune_samples, self.device)
        if tuned.interface_threshold != ck.model_config.interface_threshold:
            ckpt_mod.save_calibration(ck, interface_threshold=tuned.interface_threshold)
        return tuned.interface_threshold


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
    *,
    model_options: dict | None = None,
    loss: LossFn | None = None,
    model_factory: Callable[[ModelConfig], nn.Module] = build_model,
) -> Iterator[TrainEvent]:
    """Train a model on a dataset, yielding :class:`TrainEvent` as it goes.

    Args:
        dataset: images with lazy labels (any subset of tasks per image).
        out_dir: model folder; gets ``best.pt``, ``latest.pt``, ``config.json``,
            ``history.json`` (and ``calibration.json`` when ``best.pt`` is an earlier network
            than the last and its interface threshold is tuned).
        model_config: the network; inferred from the dataset and device when ``None``
            (:func:`plan_training`).
        train_config: budget and hyper-parameters.
        resume: a checkpoint or model folder to continue from (weights, optimiser, iteration).
        validation: held-out samples (e.g. with exact masks) to pick the best checkpoint;
            when ``None`` a split is made by ``train_config.val_fraction``.
        size: model size name when ``model_config`` is inferred.
        should_stop: asked at every event; when it returns True training ends cleanly at
            that event (:mod:`~napari_lazylabels.core.jobs`): the last network is validated
            and saved, and the result says ``stopped``. A driver's ``should_stop``
            (:func:`~napari_lazylabels.core.jobs.drive`) does the same.
        overwrite: replace a model already in ``out_dir`` (its files are removed before
            training starts); without it such a folder is refused unless ``resume`` is that
            folder or one of its checkpoints. The folder is locked for the whole run
            (:func:`napari_lazylabels.core.runfolder.folder_lock`) and checked writable first.
        model_options: what the user chose about a new network when ``model_config`` is
            inferred (``scale``, ``widths``, ...; see :func:`plan_training`).
        loss: ``(outputs, targets) -> (loss, parts)``; default the product's
            (:func:`napari_lazylabels.core.losses.training_loss` of the train config).
            Experiments pass variants (``functools.partial(multitask_loss, ...)``).
        model_factory: builds the network from its config (default
            :func:`napari_lazylabels.core.model.build_model`); experiments pass variants that
            train differently but predict alike (checkpoints rebuild with ``build_model``).

    Yields:
        events; the last one has ``kind == "done"`` and ``path`` = the best checkpoint.

    Returns:
        a :class:`TrainResult` (the value of ``StopIteration``).
    """
    cfg = train_config or TrainConfig()
    device = resolve_device(cfg.device)
    reuse = cfg.reuse_cpu_memory
    if reuse is None:
        reuse = threading.current_thread() is threading.main_thread()
    out_dir = check_writable(out_dir, "the model folder")
    with folder_lock(out_dir, "train"), cpu_allocation_cache(device.type == "cpu" and reuse):
        prepare_model_folder(out_dir, resume, overwrite)
        job = _train_iter(
            dataset, Path(out_dir), model_config, cfg, resume, validation, size, model_options or {}, loss,
            model_factory,
        )
        return (yield from stoppable(job, should_stop))


def _train_iter(
    dataset: LazyDataset,
    out_dir: Path,
    model_config: ModelConfig | None,
    cfg: TrainConfig,
    resume: str | Path | None,
    validation: list[Sample] | None,
    size: str | None,
    model_options: dict,
    loss: LossFn | None,
    model_factory: Callable[[ModelConfig], nn.Module],
) -> Iterator[TrainEvent]:
    """:func:`train_iter`'s work in its folder: resume, plan, split, build, step, finish."""
    dataset.validate()
    quality.check_trainable(dataset)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    resumed = _resume(resume, dataset, model_config)
    setup = plan_training(dataset, cfg, resumed.model_config or model_config, size, **model_options)
    data = _training_data(dataset, setup, validation, resumed.iteration)
    run = _Run(out_dir, dataset.classes, setup, _build(setup, resumed, loss, model_factory), data, resumed)
    try:
        yield run.start()
        yield from run.steps()
        stopped = False
    except Cancelled:  # a stop: end cleanly with what was trained so far
        stopped = True
    return (yield from run.finish(dataset, stopped))


def fit(
    dataset: LazyDataset,
    out_dir: str | Path,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    resume: str | Path | None = None,
    validation: list[Sample] | None = None,
    size: str | None = None,
    progress: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    overwrite: bool = False,
    **kwargs,
) -> TrainResult:
    """Train to the end of the budget (or until ``should_stop()``), see :func:`train_iter`.

    Args:
        progress: called with every :class:`TrainEvent` (:func:`~napari_lazylabels.core.jobs.drive`).
        should_stop: see :func:`train_iter`.
        overwrite: replace a model already in ``out_dir`` (see :func:`train_iter`).
        kwargs: :func:`train_iter`'s ``model_options``, ``loss``, ``model_factory``.

    Returns:
        a :class:`TrainResult` with the checkpoint paths and the loss history.
    """
    job = train_iter(
        dataset, out_dir, model_config, train_config, resume, validation, size, should_stop, overwrite, **kwargs
    )
    return drive(job, progress)
