"""Checkpoints that rebuild themselves: weights, optimiser state, iteration, configs, classes.

A model folder holds::

    MODEL/
        best.pt       the model: the validated network training chose (the highest score, or
                      under a decaying learning rate the newest sound one: train._Run)
        latest.pt     the newest checkpoint, written every ``TrainConfig.save_every`` seconds
                      and with every new best.pt (for resuming: a folder resumes from it)
        config.json   model and training configs, classes (human-readable, written beside)
        history.json  the loss curve and validation scores
        calibration.json  settings chosen after a checkpoint was written (the interface
                      threshold tuned when training ends), per checkpoint file and checked
                      against its weights; loading applies them (:func:`save_calibration`)

Every file is written atomically, so an interrupted save never destroys a trained model; a
checkpoint file is written once and never rewritten.
Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot run code. Each checkpoint
stores a SHA-256 of its weights (``weights_sha256``), checked when it is loaded, so a file
whose bytes changed on disk is refused instead of predicting garbage.
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import logging
import os
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .io import atomic_write_bytes, atomic_write_json
from .labels import ClassSpec
from .model import ModelConfig, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "napari-lazylabels checkpoint"
CHECKPOINT_VERSION = 1
BEST, LATEST, CONFIG, HISTORY = "best.pt", "latest.pt", "config.json", "history.json"
CALIBRATION = "calibration.json"
CALIBRATED = ("interface_threshold",)
"""The :class:`ModelConfig` fields that :func:`save_calibration` may record."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``state_dict`` and ``optimizer`` hold tensors on the CPU."""

    model_config: ModelConfig
    classes: ClassSpec
    state_dict: dict
    optimizer: dict | None = None
    iteration: int = 0
    train_config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    seed: int | None = None
    versions: dict = field(default_factory=dict)
    path: Path | None = None
    weights_sha256: str | None = None

    def build(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network with these weights, in eval mode on ``device``."""
        model = build_model(self.model_config)
        model.load_state_dict(self.state_dict)
        return model.to(device).eval()


def versions() -> dict:
    import numpy

    from .. import __version__

    return {
        "napari_lazylabels": __version__,
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "python": platform.python_version(),
    }


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a state dict's tensors."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        v = state_dict[k]
        if not isinstance(v, torch.Tensor):
            continue
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """About the size of a checkpoint file of ``model``: its weights, and twice that for
    Adam's two moments when an optimizer is given."""
    n = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    return n * (3 if optimizer is not None else 1) + (1 << 20)


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    model_config: ModelConfig,
    classes: ClassSpec,
    optimizer: torch.optim.Optimizer | None = None,
    iteration: int = 0,
    train_config: dict | None = None,
    metrics: dict | None = None,
    seed: int | None = None,
) -> Path:
    """Write one self-contained checkpoint file atomically, and ``config.json`` beside it."""
    path = Path(path)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model_config.to_dict(),
        "classes": classes.to_dict(),
        "state_dict": weights,
        "weights_sha256": weights_digest(weights),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "iteration": int(iteration),
        "train_config": train_config or {},
        "metrics": metrics or {},
        "seed": seed,
        "versions": versions(),
    }
    _write_state(path, state)
    atomic_write_json(
        path.parent / CONFIG,
        {
            "model_config": state["model_config"],
            "train_config": state["train_config"],
            "classes": state["classes"],
            "versions": state["versions"],
        },
    )
    return path


def save_calibration(checkpoint: Checkpoint, **values) -> Path:
    """Record settings chosen after ``checkpoint`` was written, without rewriting it.

    The values (fields of :data:`CALIBRATED`, e.g. ``interface_threshold``) go into
    ``calibration.json`` beside the file, under its name and with its weights' digest;
    :func:`load_checkpoint` applies them to the checkpoint's model config as long as the
    weights are those (a newer checkpoint of the same name ignores them).

    Args:
        checkpoint: a loaded checkpoint (its ``path`` and ``weights_sha256``).
        values: the settings, e.g. ``interface_threshold=0.7``.

    Returns:
        the path of ``calibration.json``.
    """
    unknown = set(values) - set(CALIBRATED)
    if unknown:
        raise ValueError(f"Only {CALIBRATED} are calibrated after training, got {sorted(unknown)}.")
    path = Path(checkpoint.path)
    sidecar = path.parent / CALIBRATION
    records = _read_calibrations(sidecar)
    records[path.name] = {"weights_sha256": checkpoint.weights_sha256, **values}
    return atomic_write_json(sidecar, records)


def _read_calibrations(sidecar: Path) -> dict:
    """``{checkpoint file name: {"weights_sha256": ..., setting: value}}``; ``{}`` when there is
    none, or it cannot be read (a warning: the settings' defaults apply)."""
    if not sidecar.exists():
        return {}
    try:
        records = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        log.warning("%s could not be read (%s): its checkpoints load without their calibrated settings.", sidecar, e)
        return {}
    return records if isinstance(records, dict) else {}


def _calibrated(path: Path, digest: str | None) -> dict:
    """The calibrated settings recorded for the checkpoint at ``path`` whose weights have
    ``digest``: ``{}`` when none are recorded for these weights."""
    record = _read_calibrations(path.parent / CALIBRATION).get(path.name)
    if not isinstance(record, dict) or digest is None or record.get("weights_sha256") != digest:
        return {}
    return {k: v for k, v in record.items() if k in CALIBRATED}


def _write_state(path: Path, state: dict) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically."""
    buf = _io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A model folder resolves to its ``best.pt`` (else ``latest.pt``); a file to itself."""
    p = Path(path)
    if p.is_dir():
        for name in (BEST, LATEST):
            if (p / name).exists():
                return p / name
        raise FileNotFoundError(
            f"{p} holds no {BEST} or {LATEST}: train a model into it first "
            "(`lazylabels train DATASET --out MODEL`)."
        )
    if not p.exists():
        raise FileNotFoundError(f"No model file or folder at {p}.")
    return p


def resolve_resume_path(path: str | os.PathLike) -> Path:
    """Where training continues from: a model folder resolves to its ``latest.pt`` (the newest
    checkpoint; else ``best.pt``), a file to itself."""
    p = Path(path)
    if p.is_dir() and (p / LATEST).exists():
        return p / LATEST
    return resolve_checkpoint_path(p)


def history_until(history: dict, iteration: int) -> dict:
    """``history`` without the steps and validations after ``iteration``: those of a run
    killed after its last checkpoint, which the resumed run does again."""
    return {**history, **{k: [e for e in history.get(k, []) if e[0] <= iteration] for k in ("steps", "validation")}}


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint (file, or model folder) with ``weights_only=True``.

    Raises:
        FileNotFoundError: nothing there.
        ValueError: not a napari-lazylabels checkpoint, or a corrupt/truncated file.
    """
    p = resolve_checkpoint_path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        text = str(e)
        if "GLOBAL" in text.upper() and "weights_only" in text:
            raise ValueError(
                f"{p} holds Python objects other than tensors, which could run code; it was not "
                "loaded. It is not a napari-lazylabels model (or it was altered): use a model "
                "written by `lazylabels train` or the Train widget."
            ) from None
        # torch's own text advises loading with weights_only=False: never repeat that
        reason = "not a checkpoint" if "weights_only" in text else text.split(". ")[0][:160]
        raise ValueError(
            f"{p} could not be read as a model ({type(e).__name__}: {reason}). The file is "
            "corrupt or incomplete; use the other checkpoint in its folder (best.pt / latest.pt) "
            "or train again."
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{p} is not a napari-lazylabels model (it lacks our checkpoint header). "
            "Pick a model folder or .pt file written by `lazylabels train` or the Train widget."
        )
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise ValueError(
            f"{p} was written by a newer napari-lazylabels (format {state['version']}); upgrade."
        )
    digest = state.get("weights_sha256")
    if isinstance(state.get("state_dict"), dict):
        actual = weights_digest(state["state_dict"])
        if digest is not None and actual != digest:
            raise ValueError(
                f"{p} is corrupt: its weights changed on disk since they were saved (checksum "
                "mismatch). Use the other checkpoint in its folder (best.pt / latest.pt) or train again."
            )
        digest = actual
    try:
        model_config = ModelConfig.from_dict(state["model_config"])
        return Checkpoint(
            model_config=replace(model_config, **_calibrated(p, digest)),
            classes=ClassSpec.from_dict(state["classes"]),
            state_dict=state["state_dict"],
            optimizer=state.get("optimizer"),
            iteration=int(state.get("iteration", 0)),
            train_config=state.get("train_config") or {},
            metrics=state.get("metrics") or {},
            seed=state.get("seed"),
            versions=state.get("versions") or {},
            path=p,
            weights_sha256=digest,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{p} is an incomplete napari-lazylabels model ({e}); train again.") from e


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a model for prediction: returns ``(model in eval mode, Checkpoint)``."""
    ckpt = load_checkpoint(path)
    try:
        model = ckpt.build(device)
    except RuntimeError as e:
        raise ValueError(f"{ckpt.path}: weights do not fit the saved config ({e}).") from e
    return model, ckpt


def write_history(model_dir: str | os.PathLike, history: dict) -> Path:
    return atomic_write_json(Path(model_dir) / HISTORY, history)


def read_history(model_dir: str | os.PathLike) -> dict:
    p = Path(model_dir) / HISTORY
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); delete it to start a new loss history.") from e
