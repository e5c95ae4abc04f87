"""Train dock widget (and the one-click "Train & predict" widget).

Training runs :func:`napari_lazylabels.core.train.train_iter` in a napari ``thread_worker``
generator; every :class:`TrainEvent` comes back to the main thread (``yielded``) where it
moves the napari progress bar and the loss curve. Stop asks ``train_iter`` to end cleanly
(``should_stop``: it validates, writes ``latest.pt`` and keeps ``best.pt``); a second Stop
quits the worker at its next yield. Start again resumes from the model folder's
``latest.pt``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..core.labels import (
    DEFAULT_TASK_WEIGHTS,
    DETECTION,
    LABEL_MODES,
    SEGMENTATION,
    SEPARATION,
    TASKS,
)
from . import _layers
from ._common import (
    LayerCombo,
    LossPlot,
    default_model_dir,
    limit_torch_threads,
    notify_errors,
    path_row,
    run_stop_buttons,
    session,
    show_error,
    show_info,
    warm_torch,
)

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")
SIZES = ("default", "tiny", "small", "medium", "paper")
SCALES = ("auto", "1", "0.5", "0.25")


def _train_worker_fn(dataset, out_dir, model_config, train_config, resume, size, should_stop):
    """Generator run in the worker thread: yields the core's TrainEvents."""
    from ..core.train import train_iter

    yield from train_iter(
        dataset, out_dir, model_config=model_config, train_config=train_config, resume=resume,
        size=size, should_stop=should_stop,
    )


def _preview_worker_fn(checkpoint, device, crop):
    """Predict one crop with a checkpoint (worker thread); returns the class map."""
    from ..core.checkpoint import load_model
    from ..core.predict import PredictConfig, Predictor

    model, ck = load_model(checkpoint, "cpu")
    # the class map only: no interface map, one orientation (a preview, while training runs)
    predictor = Predictor(
        model, ck.model_config, PredictConfig(device=device, batch_size=2, tta=1, keep_interfaces=False)
    )
    return predictor.predict(crop, instances=False).classes


def annotated_datasets(viewer):
    """All image layers of the viewer that have lazy labels, as one core dataset.

    Returns:
        ``(LazyDataset, [image layers used])``.

    Raises:
        ValueError: nothing annotated, or image layers with different class lists.
    """
    from ..core.io import LazyDataset

    samples, used, classes = [], [], None
    for layer in list(viewer.layers):
        if layer.__class__.__name__ != "Image" or layer.metadata.get(_layers.META, {}).get("prediction"):
            continue
        try:
            tasks = _layers.find_task_layers(viewer.layers, layer)
        except ValueError:
            continue
        if not any(tasks.values()):
            continue
        layer_classes = _layers.classes_of(layer, *tasks.values())
        if classes is not None and layer_classes is not None and layer_classes.names != classes.names:
            raise ValueError(
                f"Image '{layer.name}' uses classes {layer_classes.names} but another image uses "
                f"{classes.names}. Use one class list per project (Lazy annotation widget)."
            )
        classes = classes or layer_classes
        names = set(s.name for s in samples)
        for s in _layers.layers_to_samples(layer, tasks):
            if s.tasks():
                if s.name in names:
                    s.name = f"{_layers._stem(layer.name)}_{s.name}"
                samples.append(s)
        used.append(layer)
    if not samples:
        raise ValueError(
            "No image has lazy labels yet. Open the Lazy annotation widget, create the label "
            "layers and paint a few detection marks (and some background with label 1)."
        )
    from ..core.labels import ClassSpec

    return LazyDataset(classes=classes or ClassSpec(), samples=samples), used


class TrainWidget(QWidget):
    """Train the multi-task U-net on the viewer's lazy labels, in the background.

    Attributes:
        model_config: advanced override of the network (e.g.
            ``ModelConfig(widths=(4, 8), size="custom", ...)``); ``None`` infers it from the
            data, the device and the size box.
        predict_after: predict every trained image when training ends or is stopped.
        worker: the running napari worker, or ``None``.
        last_result_dir: the model folder of the last run.
    """

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model_config = None
        self.predict_after = False
        self.worker = None
        self.preview_worker = None
        self.last_result_dir: Path | None = None
        self.events_seen: list = []
        self._stop_requested = False
        self._pbar = None
        self._used_layers: list = []
        self._predictor_runner = None
        self._finished_flag = False
        self._predict_started = False

        self.image_combo = LayerCombo(napari_viewer, "Image")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.budget_kind = QComboBox()
        self.budget_kind.addItems(["seconds", "iterations"])
        self.budget = QSpinBox()
        self.budget.setRange(1, 10_000_000)
        self.budget.setValue(180)
        self.size = QComboBox()
        self.size.addItems(SIZES)
        self.size.setToolTip("Model size; 'default' picks 'paper' on a GPU and 'tiny' on a CPU (2.4x the steps of 'small' in the same time).")
        self.scale = QComboBox()
        self.scale.addItems(SCALES)
        self.scale.setToolTip(
            "Working scale: the network sees the images resized by this factor (0.5 = half size), "
            "so that large objects fit in its patches; predictions come back at full size. "
            "'auto' picks 1, 0.5 or 0.25 from the size of your objects."
        )
        self.batch = QSpinBox()
        self.batch.setRange(0, 256)
        self.batch.setSpecialValueText("auto")
        self.batch.setValue(0)
        self.patch = QSpinBox()
        self.patch.setRange(0, 1024)
        self.patch.setSingleStep(32)
        self.patch.setSpecialValueText("auto")
        self.patch.setValue(0)
        self.weights = {}
        wrow = QHBoxLayout()
        for task, label in ((DETECTION, "det"), (SEPARATION, "sep"), (SEGMENTATION, "seg")):
            sp = QDoubleSpinBox()
            sp.setRange(0.0, 100.0)
            sp.setSingleStep(0.1)
            sp.setValue(DEFAULT_TASK_WEIGHTS[task])
            sp.setToolTip(f"Weight of the {task} task in the loss (alpha_k)")
            self.weights[task] = sp
            wrow.addWidget(QLabel(label))
            wrow.addWidget(sp)
        self.label_mode = QComboBox()
        self.label_mode.addItems(LABEL_MODES)
        self.model_dir, mrow = path_row("(a new folder in the temp dir)", self._browse_model_dir)
        self.resume = QCheckBox("continue from the folder's latest checkpoint")
        self.resume.setChecked(True)
        self.preview = QCheckBox("preview the current view at each new best model")
        self.preview.setChecked(True)

        self.start_btn, self.stop_btn, self._run_row = run_stop_buttons("Start", self.start, self.stop)
        self.load_btn = QPushButton("Load model…")
        self.save_btn = QPushButton("Save model as…")
        self.load_btn.clicked.connect(self._load_model_dialog)
        self.save_btn.clicked.connect(self._save_model_dialog)
        self.plot = LossPlot()
        self.status = QLabel("Paint lazy labels, then Start.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("preview image", self.image_combo)
        form.addRow("device", self.device)
        brow = QHBoxLayout()
        brow.addWidget(self.budget)
        brow.addWidget(self.budget_kind)
        form.addRow("budget", brow)
        form.addRow("model size", self.size)
        form.addRow("working scale", self.scale)
        prow = QHBoxLayout()
        prow.addWidget(self.batch)
        prow.addWidget(QLabel("patch"))
        prow.addWidget(self.patch)
        form.addRow("batch", prow)
        form.addRow("task weights", wrow)
        form.addRow("label mode", self.label_mode)
        form.addRow("model folder", mrow)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.resume)
        lay.addWidget(self.preview)
        lay.addLayout(self._run_row)
        row2 = QHBoxLayout()
        row2.addWidget(self.load_btn)
        row2.addWidget(self.save_btn)
        lay.addLayout(row2)
        lay.addWidget(self.plot)
        lay.addWidget(self.status)
        lay.addStretch(1)

    # ------------------------------------------------------------------ configuration
    def train_config(self):
        """The :class:`TrainConfig` from the widget's fields."""
        from ..core.data import AugmentConfig
        from ..core.model import resolve_device
        from ..core.train import TrainConfig

        device = self.device.currentText()
        resolve_device(device)  # a clear error now if the device is not there
        batch = self.batch.value() or None  # None: the core's default for the device
        patch = self.patch.value() or None
        seconds = self.budget_kind.currentText() == "seconds"
        n = self.budget.value()
        return TrainConfig(
            iterations=None if seconds else n,
            time_budget=float(n) if seconds else None,
            batch_size=batch,
            task_weights={t: float(self.weights[t].value()) for t in TASKS},
            label_mode=self.label_mode.currentText(),
            device=device,
            augment=AugmentConfig(patch_size=patch),
            val_every=50 if not seconds else 100,
            num_threads=limit_torch_threads(),
        )

    def _out_dir(self) -> Path:
        text = self.model_dir.text().strip()
        if not text:
            path = default_model_dir()
            self.model_dir.setText(str(path))
            return path
        return Path(text).expanduser()

    # ------------------------------------------------------------------ start / stop
    @notify_errors
    def start(self, *_) -> None:
        """Start (or resume) training in a worker thread."""
        if self.worker is not None:
            show_info("Training is already running; press Stop first.")
            return
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        from ..core.checkpoint import LATEST

        dataset, used = annotated_datasets(self.viewer)
        cfg = self.train_config()
        out_dir = self._out_dir()
        resume = None
        if self.resume.isChecked() and (out_dir / LATEST).exists():
            resume = out_dir / LATEST
        model_config = self.model_config
        if model_config is not None and resume is None:
            channels = 3 if any(s.image.ndim == 3 for s in dataset) else 1
            have = dataset.summary()
            tasks = tuple(t for t in model_config.tasks if have[t] > 0) or model_config.tasks
            model_config = replace(model_config, in_channels=channels, n_classes=dataset.classes.n_classes, tasks=tasks)
        if resume is not None:
            model_config = None
        size = None if self.size.currentText() == "default" else self.size.currentText()
        if self.scale.currentText() != "auto":
            scale = float(self.scale.currentText())
            if model_config is not None:
                model_config = replace(model_config, scale=scale)
            elif resume is None:
                from ..core.model import resolve_device
                from ..core.train import infer_model_config

                model_config = infer_model_config(
                    dataset, resolve_device(cfg.device), size, patch_size=cfg.augment.patch_size, scale=scale
                )
        warm_torch()
        limit_torch_threads()
        self._stop_requested = False
        self._finished_flag = False
        self._predict_started = False
        self._used_layers = used
        self.events_seen = []
        self.plot.clear()
        total = cfg.iterations if cfg.iterations is not None else int(cfg.time_budget)
        self._pbar = progress(total=total, desc="Training")
        self._budget_seconds = cfg.iterations is None

        worker = thread_worker(_train_worker_fn, start_thread=False)(
            dataset, out_dir, model_config, cfg, resume, size, lambda: self._stop_requested
        )
        worker.yielded.connect(self._on_event)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.status.setText(
            f"Training on {len(dataset)} image(s) ({'resuming' if resume else 'new model'}) into {out_dir}…"
        )
        self.last_result_dir = out_dir
        worker.start()

    def stop(self, *_) -> None:
        """Stop training: the first press ends it cleanly (best model kept), a second quits."""
        if self.worker is None:
            return
        if not self._stop_requested:
            self._stop_requested = True
            self.status.setText("Stopping: finishing the step, validating and saving…")
        else:
            self.worker.quit()

    def is_running(self) -> bool:
        return self.worker is not None

    # ------------------------------------------------------------------ events (main thread)
    def _on_event(self, ev) -> None:
        self.events_seen.append(ev.kind)
        if ev.kind == "step":
            self.plot.add(ev.iteration, ev.loss)
            pbar = self._pbar
            if pbar is not None:
                delta = min(int(ev.elapsed), pbar.total) - pbar.n if self._budget_seconds else 1
                if delta > 0:
                    pbar.update(delta)
            if self.events_seen.count("step") % 5 == 1:
                pps = f", {ev.patches_per_s:.0f} patches/s" if ev.patches_per_s else ""
                self.status.setText(f"iteration {ev.iteration}, loss {ev.loss:.4f}{pps}, {ev.elapsed:.0f} s")
        elif ev.kind == "validation":
            dice = ev.metrics.get("dice", float("nan"))
            self.plot.add_validation(ev.iteration, dice)
        elif ev.kind == "checkpoint":
            session(self.viewer).set_model(Path(ev.path).parent)
            if self.preview.isChecked():
                self._start_preview(ev.path)
        elif ev.kind == "start":
            self.status.setText(f"Training started on {ev.message}.")
        elif ev.kind == "done":
            best = ev.metrics.get("best_metric")
            score = f", best validation dice {best:.3f}" if isinstance(best, float) else ""
            threshold = ev.metrics.get("interface_threshold")
            cut = (f" Objects are cut at interface probability {threshold:g} (tuned on your exact masks)."
                   if threshold is not None else "")
            self.status.setText(f"Training {ev.message} at iteration {ev.iteration}{score}.{cut} Model: {Path(ev.path).parent}")
            session(self.viewer).set_model(Path(ev.path).parent)
            self._preview_best()
            self._maybe_predict()

    def _on_error(self, exc) -> None:
        show_error(f"Training failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self._finished_flag = True
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        self.start_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
        self._maybe_predict()

    def _maybe_predict(self) -> None:
        # Signals may be handled out of order when a slot processes events (napari's progress
        # bar does): predict once the worker has finished and a best model exists.
        if not (self.predict_after and self._finished_flag) or self._predict_started:
            return
        from ..core.checkpoint import BEST

        if self.last_result_dir is None or not (self.last_result_dir / BEST).exists():
            return
        self._predict_started = True
        self.predict_trained()

    def predict_trained(self) -> None:
        """Predict every image layer that was trained on, with the best model."""
        from .predict import PredictionRunner

        layers = [ly for ly in self._used_layers if ly in self.viewer.layers]
        if not layers:
            return
        self._predictor_runner = PredictionRunner(self.viewer, device=self.device.currentText())
        self._predictor_runner.run(layers, self.last_result_dir)

    # ------------------------------------------------------------------ preview
    def _preview_best(self) -> None:
        """Preview the current view with the best model (at the end of training)."""
        from ..core.checkpoint import BEST

        if self.preview.isChecked() and self.last_result_dir is not None and (self.last_result_dir / BEST).exists():
            self._start_preview(self.last_result_dir / BEST)

    def _start_preview(self, checkpoint) -> None:
        if self.preview_worker is not None:
            return
        layer = self.image_combo.layer()
        if layer is None:
            return
        from napari.qt.threading import thread_worker

        try:
            idx = _layers.current_index(self.viewer, layer)
            rows, cols = _layers.view_region(self.viewer, layer)
            # at most 512 x 512 around the view's centre: a preview, not a prediction
            rows = _clip_span(rows, 512)
            cols = _clip_span(cols, 512)
            if rows.stop - rows.start < 16 or cols.stop - cols.start < 16:
                return
            crop = _layers.image_plane(layer, idx)[rows, cols]
        except Exception as e:  # noqa: BLE001 - a preview must never break training
            log.debug("no preview: %s", e)
            return
        worker = thread_worker(_preview_worker_fn, start_thread=False)(checkpoint, "cpu", crop)
        stacked = len(_layers.label_shape(layer)) == 3

        def done(classes):
            data = classes[None] if stacked else classes
            translate = (idx, rows.start, cols.start) if stacked else (rows.start, cols.start)
            classes_spec = _layers.classes_of(layer)
            kwargs = {
                "name": f"{layer.name} preview",
                "opacity": 0.45,
                "translate": translate,
                "metadata": {_layers.META: {"prediction": "preview", "image": layer.name}},
            }
            if classes_spec is not None:
                kwargs["colormap"] = _layers.prediction_colormap(classes_spec)
            (ly,) = _layers.upsert_layers(self.viewer, [(data, kwargs, "labels")])
            ly.translate = translate

        def finished():
            self.preview_worker = None

        worker.returned.connect(done)
        worker.errored.connect(lambda e: log.warning("preview failed: %s", e))
        worker.finished.connect(finished)
        self.preview_worker = worker
        worker.start()

    # ------------------------------------------------------------------ model folder
    def _browse_model_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.model_dir.setText(path)

    @notify_errors
    def load_model(self, path) -> None:
        """Use an existing model folder: prediction uses it and Start resumes from it."""
        from ..core.checkpoint import load_checkpoint

        ck = load_checkpoint(path)
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        self.model_dir.setText(str(folder))
        session(self.viewer).set_model(folder)
        self.status.setText(
            f"Loaded a {ck.model_config.size} model (classes {', '.join(ck.classes.names)}, "
            f"iteration {ck.iteration}) from {folder}."
        )

    @notify_errors
    def save_model(self, path) -> None:
        """Copy the current model folder to ``path``."""
        src = Path(self.model_dir.text().strip() or "")
        if not src.is_dir() or not any(src.glob("*.pt")):
            raise ValueError("There is no trained model yet: train one (Start) or load one first.")
        dst = Path(path)
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and not f.name.endswith(".tmp"):
                shutil.copy2(f, dst / f.name)
        show_info(f"Model saved to {dst}")

    def _load_model_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Load a model folder")
        if path:
            self.load_model(path)

    def _save_model_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save the model into a folder")
        if path:
            self.save_model(path)


def _clip_span(span: slice, size: int) -> slice:
    n = span.stop - span.start
    if n <= size:
        return span
    mid = span.start + n // 2
    return slice(mid - size // 2, mid - size // 2 + size)


class OneClickWidget(QWidget):
    """The first path for a new user: train with sensible defaults on every annotated image
    and push predictions when training ends (or is stopped).

    Attributes:
        trainer: the :class:`TrainWidget` doing the work (its fields are the advanced settings).
    """

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.trainer = TrainWidget(napari_viewer)
        self.trainer.predict_after = True
        self.trainer.preview.setChecked(False)
        self.trainer.setVisible(False)
        self.advanced = QCheckBox("show settings")
        self.advanced.toggled.connect(self.trainer.setVisible)
        info = QLabel(
            "1. Paint detection marks (one label per class) and some background (label 1).\n"
            "2. Press Train & predict. Stop whenever the loss curve flattens: the predictions "
            "appear as '<image> classes' / 'instances' layers."
        )
        info.setWordWrap(True)
        self.button = QPushButton("Train && predict")
        self.button.setMinimumHeight(36)
        self.button.clicked.connect(self.run)
        self.stop_btn = QPushButton("Stop (and predict)")
        self.stop_btn.clicked.connect(self.trainer.stop)
        lay = QVBoxLayout(self)
        lay.addWidget(info)
        lay.addWidget(self.button)
        lay.addWidget(self.stop_btn)
        lay.addWidget(self.trainer.plot)
        lay.addWidget(self.trainer.status)
        lay.addWidget(self.advanced, alignment=Qt.AlignmentFlag.AlignLeft)
        lay.addWidget(self.trainer)
        lay.addStretch(1)

    def run(self, *_) -> None:
        """Start training with the defaults; predictions follow when it ends."""
        self.trainer.start()
