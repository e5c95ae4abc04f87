"""Train dock widget (and the one-click "Train & predict" widget).

Training runs :func:`napari_lazylabels.core.train.train_iter` in a napari ``thread_worker``
generator; every :class:`TrainEvent` comes back to the main thread (``yielded``) where it
moves the napari progress bar and the loss curve, puts the validation score in the status in
words that say what it measures (:func:`napari_lazylabels.core.quality.describe_score`) and
shows each warning about the model once, in the status and as a notification. Stop asks
``train_iter`` to end cleanly (``should_stop``: it validates, writes ``latest.pt`` and keeps
``best.pt``); a second Stop quits the worker at its next yield; either ends in a final status.
Start again resumes from the model folder's ``latest.pt``.

Nothing heavy runs on the GUI thread: torch and the engine are imported by a warm-up thread
when the widget is created (:func:`._common.start_warm_up`), and Start waits for it without
blocking the event loop. The model folder defaults to ``<project>/models/model`` once the
images belong to a project (opened or saved); a model trained before the project was saved
moves into it (:class:`._common.Session`), and reopening the project restores it.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from qtpy.QtCore import Qt, QTimer
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
from ..core.options import DEVICES, MODEL_SIZES
from . import _layers, _viewer
from ._common import (
    LayerCombo,
    LossPlot,
    default_model_dir,
    has_model,
    is_temporary,
    is_warm,
    limit_torch_threads,
    new_project_model_dir,
    notify_errors,
    path_row,
    progress_to,
    quiet_worker,
    require_model,
    run_stop_buttons,
    session,
    show_error,
    show_info,
    show_warning,
    start_warm_up,
    when_warm,
)

log = logging.getLogger(__name__)

SIZES = ("default", *MODEL_SIZES)
SCALES = ("auto", "1", "0.5", "0.25")


def _train_worker_fn(dataset, out_dir, train_config, resume, size, model_options, should_stop):
    """Generator run in the worker thread: yields the core's TrainEvents (the core decides the
    network from the data, the device and the user's ``size`` and ``model_options``)."""
    from ..core.train import train_iter

    yield from train_iter(
        dataset, out_dir, train_config=train_config, resume=resume, size=size, should_stop=should_stop,
        model_options=model_options,
    )


class ChannelChoice(QWidget):
    """One check box per channel of a multi-channel image: the channels a new model reads
    (all ticked by default; a new image of as many channels keeps the choice)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.boxes: list[QCheckBox] = []
        self._row = QHBoxLayout(self)
        self._row.setContentsMargins(0, 0, 0, 0)

    def set_channels(self, names: list[str]) -> None:
        """Show one box per channel, labelled by its number and name (all ticked when the
        number of channels changes)."""
        if len(names) != len(self.boxes):
            for box in self.boxes:
                self._row.removeWidget(box)
                box.deleteLater()
            self.boxes = []
            for _ in names:
                box = QCheckBox()
                box.setChecked(True)
                self._row.addWidget(box)
                self.boxes.append(box)
        for c, (box, name) in enumerate(zip(self.boxes, names, strict=True)):
            box.setText(str(c) if name == str(c) else f"{c} {name}")
            box.setToolTip(f"Train on channel {c} ({name}); each channel gets its own intensity range")

    def chosen(self) -> tuple[int, ...]:
        """The ticked channels, in order."""
        return tuple(c for c, box in enumerate(self.boxes) if box.isChecked())


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


class TrainWidget(QWidget):
    """Train the multi-task U-net on the viewer's lazy labels, in the background.

    Attributes:
        widths: channel widths of a custom network instead of the size box's (advanced:
            scripts and tests, e.g. ``(4, 8)``); ``None``: the size box.
        last_event: the newest :class:`napari_lazylabels.core.train.TrainEvent` of the run
            (``None`` before its first).
        predict_after: predict every trained image when training ends or is stopped.
        worker: the running napari worker, or ``None``.
        last_result_dir: the model folder of the last run.
        warnings: the warnings about the model of the last run (each shown once).
    """

    def __init__(self, napari_viewer, parent=None) -> None:
        # Long but flat: the run state, then the form's fields in the order it shows them,
        # the layout and the session hooks; splitting it would only scatter the form.
        super().__init__(parent)
        self.viewer = napari_viewer
        self.widths: tuple[int, ...] | None = None
        self.predict_after = False
        self.worker = None
        self.preview_worker = None
        self.last_result_dir: Path | None = None
        self.last_event = None
        self._stop_requested = False
        self._pbar = None
        self._pbar_shown = 0.0
        self._steps = 0
        self._used_layers: list = []
        self._predictor_runner = None
        self._finished_flag = False
        self._predict_started = False
        self._pending = False  # Start pressed, waiting for the warm-up
        self._start_token = 0
        self._quit_requested = False
        self._done = False
        self._failed: str | None = None
        self._score_text = ""
        self._auto_dir: str | None = None  # the model folder text the widget chose itself
        self.warnings: list[str] = []

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
        self.channels = ChannelChoice()
        self.channels_label = QLabel("channels")
        self.channels.setToolTip("The channels of the multi-channel image a new model trains on (and reads when it predicts).")
        self.model_dir, mrow = path_row("(<project>/models/model once saved, else a new unsaved-models folder)", self._browse_model_dir)
        self.resume = QCheckBox("continue from the folder's latest checkpoint")
        self.resume.setChecked(True)
        self.preview = QCheckBox("preview the current view whenever the model is updated")
        # Off by default: the preview predicts in a second thread beside training (on a few
        # cores both slow down) and adding its layer holds the viewer once (docs/benchmarks.md,
        # "Viewer freezes while training").
        self.preview.setChecked(False)
        self.preview.setToolTip(
            "Predict the visible region with each new model (best.pt) while training runs. Costs training "
            "speed on a CPU, and the viewer pauses briefly when the preview layer first appears."
        )

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
        form.addRow(self.channels_label, self.channels)
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

        self.image_combo.currentTextChanged.connect(self._show_channels)
        napari_viewer.layers.events.inserted.connect(self._show_channels)
        self._show_channels()

        sess = session(napari_viewer)
        sess.listeners.append(self._on_session_model)
        sess.project_listeners.append(self._on_project)
        if sess.model_dir is not None:
            self._set_auto_dir(sess.model_dir)
            self.status.setText(f"Model: {sess.model_dir}. Start continues training it; Predict uses it.")
        elif sess.project is not None:
            self._on_project(sess.project)
        # torch imports off the GUI thread, before the first Start; once the dock is drawn,
        # so that the import does not compete with napari for the interpreter meanwhile
        QTimer.singleShot(500, start_warm_up)

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

    def _show_channels(self, *_) -> None:
        """Show the channel boxes of the chosen image when it has channels (else hide them)."""
        layer = self.image_combo.layer()
        try:
            names = _layers.channel_names(layer) if layer is not None and _layers.channel_axis(layer) is not None else []
        except (ValueError, AttributeError):
            names = []
        if names:
            self.channels.set_channels(names)
        self.channels.setVisible(bool(names))
        self.channels_label.setVisible(bool(names))

    def channel_options(self, used) -> dict:
        """``{"channels": ...}`` for a new model of the image layers ``used`` when they have
        channels (the ticked ones; all when the boxes show another image's), else ``{}``."""
        counts = {_layers.channel_count(ly) for ly in used if _layers.channel_axis(ly) is not None}
        if not counts:
            return {}
        if len(counts) > 1:
            raise ValueError(
                f"The annotated images have different numbers of channels ({', '.join(map(str, sorted(counts)))}): "
                "a model takes one kind. Annotate images with the same channels, or delete the others' labels."
            )
        n = counts.pop()
        chosen = self.channels.chosen() if len(self.channels.boxes) == n else tuple(range(n))
        if not chosen:
            raise ValueError("Tick at least one channel to train on (channels, under the preview image).")
        return {"channels": chosen}

    def _set_auto_dir(self, path) -> None:
        self._auto_dir = str(path)
        self.model_dir.setText(str(path))

    def _is_auto_dir(self) -> bool:
        text = self.model_dir.text().strip()
        return not text or text == self._auto_dir

    def _on_session_model(self, path) -> None:
        """The session's model changed (trained, loaded, moved into the project, restored)."""
        if path is None or self.is_running():
            return
        text = self.model_dir.text().strip()
        if str(path) != text and (self._is_auto_dir() or not Path(text).exists()):
            self._set_auto_dir(path)

    def _on_project(self, project) -> None:
        """A project became known: its models folder replaces the temp-folder default."""
        if self.is_running() or not self._is_auto_dir():
            return
        text = self.model_dir.text().strip()
        if text and has_model(text) and not is_temporary(text):
            return
        model = session(self.viewer).model_dir
        if model is not None and has_model(model):
            self._set_auto_dir(model)
        else:
            self._set_auto_dir(new_project_model_dir(project))

    def _out_dir(self) -> Path:
        text = self.model_dir.text().strip()
        project = session(self.viewer).project
        if not text or (self._is_auto_dir() and project is not None and is_temporary(text) and not has_model(text)):
            path = new_project_model_dir(project) if project is not None else default_model_dir()
            self._set_auto_dir(path)
            return path
        return Path(text).expanduser()

    def _fresh_dir(self, out_dir: Path) -> Path:
        """A free folder next to ``out_dir`` for a new model (never train over a model)."""
        project = session(self.viewer).project
        if project is not None and out_dir.parent == project / "models":
            return new_project_model_dir(project)
        n = 2
        while (out_dir.parent / f"{out_dir.name}-{n}").exists():
            n += 1
        return out_dir.parent / f"{out_dir.name}-{n}"

    # ------------------------------------------------------------------ start / stop
    @notify_errors
    def start(self, *_) -> None:
        """Start (or resume) training in a worker thread.

        The labels are read and checked at once (a clear error when nothing can be learned);
        the worker starts when the warm-up thread has imported torch, meanwhile the viewer
        stays responsive and Stop cancels."""
        if self.is_running():
            show_info("Training is already running; press Stop first.")
            return
        from ..core.quality import check_trainable

        dataset, used = _layers.annotated_dataset(self.viewer.layers)
        check_trainable(dataset)
        self._pending = True
        self._start_token += 1
        token = self._start_token
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        if not is_warm():
            self.status.setText("Loading the training engine (first Start only)…")

        def go():
            if token != self._start_token or not self._pending:
                return  # cancelled by Stop
            self._pending = False
            try:
                self._start_worker(dataset, used)
            except Exception as e:  # noqa: BLE001 - every error must reach the user
                log.exception("Start failed")
                self._reset_buttons()
                self.status.setText(f"Training did not start: {e}")
                show_error(e)

        when_warm(go)

    def _reset_buttons(self) -> None:
        self.start_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)

    def _start_worker(self, dataset, used) -> None:
        from napari.utils import progress

        from ..core.checkpoint import LATEST

        cfg = self.train_config()
        out_dir = self._out_dir()
        resume = None
        fresh_note = ""
        if self.resume.isChecked() and (out_dir / LATEST).exists():
            resume = out_dir / LATEST
        elif has_model(out_dir):  # a new model never overwrites one
            previous, out_dir = out_dir, self._fresh_dir(out_dir)
            self.model_dir.setText(str(out_dir))
            if self._auto_dir == str(previous):
                self._auto_dir = str(out_dir)
            fresh_note = f" ({previous} keeps its model; tick 'continue' to train it further)"
        size = None if self.size.currentText() == "default" else self.size.currentText()
        options = {}  # a new network's settings the user chose; resuming continues the saved one
        if resume is None and self.scale.currentText() != "auto":
            options["scale"] = float(self.scale.currentText())
        if resume is None and self.widths is not None:
            options["widths"], size = tuple(self.widths), None
        if resume is None:
            options.update(self.channel_options(used))
        limit_torch_threads()
        self._stop_requested = False
        self._quit_requested = False
        self._finished_flag = False
        self._predict_started = False
        self._done = False
        self._failed = None
        self._score_text = ""
        self.warnings = []
        self._used_layers = used
        self.last_event = None
        self._steps = 0
        self.plot.clear()
        total = cfg.iterations if cfg.iterations is not None else int(cfg.time_budget)
        self._pbar = progress(total=total, desc="Training")
        self._pbar_shown = 0.0
        self._budget_seconds = cfg.iterations is None

        worker = quiet_worker(
            _train_worker_fn, dataset, out_dir, cfg, resume, size, options, lambda: self._stop_requested,
            error_prefix="Training failed", on_error=self._on_error,
        )
        worker.yielded.connect(self._on_event)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        session(self.viewer).busy.add(out_dir)
        self.start_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        what = f"continuing the model in {out_dir}" if resume else f"a new model in {out_dir}{fresh_note}"
        self.status.setText(f"Training on {len(dataset)} image(s): {what}…")
        self.last_result_dir = out_dir
        worker.start()

    def stop(self, *_) -> None:
        """Stop training: the first press ends it cleanly (best model kept), a second quits at
        the next step; before the worker starts, Stop cancels the start."""
        if self._pending:
            self._pending = False
            self._start_token += 1
            self._reset_buttons()
            self.status.setText("Stopped before training started: no model was trained.")
            return
        if self.worker is None:
            return
        if not self._stop_requested:
            self._stop_requested = True
            self.status.setText("Stopping: finishing the step, validating and saving…")
        else:
            self._quit_requested = True
            self.status.setText("Stopping now (second Stop): quitting at the next step, without the final save…")
            self.worker.quit()

    def is_running(self) -> bool:
        """Whether training runs (or Start waits for the warm-up)."""
        return self.worker is not None or self._pending

    # ------------------------------------------------------------------ events (main thread)
    def _on_event(self, ev) -> None:
        self.last_event = ev
        if ev.kind == "step":
            self._steps += 1
            self.plot.add(ev.iteration, ev.loss)
            pbar = self._pbar
            now = time.perf_counter()
            # napari's progress bar processes events as it moves: twice a second is enough
            if pbar is not None and now - self._pbar_shown >= 0.5:
                done = min(int(ev.elapsed) if self._budget_seconds else self._steps, pbar.total)
                if done > pbar.n:
                    self._pbar_shown = now
                    progress_to(pbar, done)
            if self._steps % 5 == 1 and not self._stop_requested:
                pps = f", {ev.patches_per_s:.0f} patches/s" if ev.patches_per_s else ""
                score = f"\n{self._score_text}" if self._score_text else ""
                self.status.setText(f"iteration {ev.iteration}, loss {ev.loss:.4f}{pps}, {ev.elapsed:.0f} s{score}")
        elif ev.kind == "validation":
            from ..core.quality import describe_score

            metrics = ev.metrics or {}
            self.plot.add_validation(ev.iteration, metrics.get("dice", float("nan")))
            self._score_text = f"iteration {ev.iteration}: {describe_score(metrics)}"
        elif ev.kind == "warning":
            self._warn(ev.message)
        elif ev.kind == "checkpoint":
            session(self.viewer).set_model(Path(ev.path).parent)
            if self.preview.isChecked():
                self._start_preview(ev.path)
        elif ev.kind == "start":
            self.status.setText(f"Training started on {ev.message}.")
        elif ev.kind == "done":
            self._done = True
            from ..core.quality import describe_score

            metrics = ev.metrics or {}
            best = metrics.get("best_metric")
            score = describe_score({**(metrics.get("best") or {}), "best_metric": best}, best=True)
            for w in metrics.get("warnings") or []:
                self._warn(w)
            threshold = metrics.get("interface_threshold")
            cut = (f" Objects are cut at interface probability {threshold:g} (tuned on your exact masks)."
                   if threshold is not None else "")
            folder = Path(ev.path).parent
            if not folder.exists() and self.last_result_dir is not None:  # moved into the project
                folder = self.last_result_dir
            self.status.setText(
                f"Training {ev.message} at iteration {ev.iteration}: {score}.{cut} Model: {folder}" + self._warning_lines()
            )
            session(self.viewer).set_model(folder)
            self._preview_best()
            self._maybe_predict()

    def _warn(self, message: str) -> None:
        """Show a warning about the model once: in the status and as a notification."""
        if not message or message in self.warnings:
            return
        self.warnings.append(message)
        show_warning(message)
        if not self._done:
            self.status.setText(f"Warning: {message}")

    def _warning_lines(self) -> str:
        return "".join(f"\nWarning: {w}" for w in self.warnings)

    def _on_error(self, exc) -> None:
        self._failed = str(exc)
        self.status.setText(f"Training failed: {exc}")

    def _on_finished(self) -> None:
        out_dir = self.last_result_dir
        sess = session(self.viewer)
        sess.busy.discard(out_dir)
        self.worker = None
        self._finished_flag = True
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        self._reset_buttons()
        if out_dir is not None and has_model(out_dir) and is_temporary(out_dir) and sess.project is not None:
            sess.sync_project(self.viewer, sess.project)  # saved during training: move it in now
            if sess.model_dir is not None and not out_dir.exists():
                self.last_result_dir = out_dir = sess.model_dir
        if not self._done and self._failed is None:
            if out_dir is not None and has_model(out_dir):
                sess.set_model(out_dir)
                kept = f"the model folder {out_dir} keeps the best model saved so far."
            else:
                kept = "no model was saved."
            how = "quit by a second Stop" if self._quit_requested else "ended"
            self.status.setText(f"Training {how} before its final validation and save: {kept}" + self._warning_lines())
        self._maybe_predict()

    def _maybe_predict(self) -> None:
        # Signals may be handled out of order when a slot processes events (napari's progress
        # bar does): predict once the worker has finished and a best model exists.
        if not (self.predict_after and self._finished_flag) or self._predict_started:
            return
        from ..core.checkpoint import BEST

        if not self._done:  # quit or failed: the status says what happened; nothing to push
            self._predict_started = self._failed is not None or self._quit_requested
            return
        self._predict_started = True
        if self.last_result_dir is None or not (self.last_result_dir / BEST).exists() or not self._steps:
            self.status.setText(
                "Stopped before the first training step: there is no model to predict with. "
                "Press Train & predict again and let it train (watch the loss curve fall)."
            )
            show_warning("No predictions: training stopped before a model was trained.")
            return
        if self.warnings:
            self.status.setText(
                self.status.text() + "\nPredicting with this model anyway: check its predictions against the "
                "warnings above before trusting them."
            )
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
            idx = _viewer.current_index(self.viewer, layer)
            rows, cols = _viewer.view_region(self.viewer, layer)
            # at most 512 x 512 around the view's centre: a preview, not a prediction
            rows = _clip_span(rows, 512)
            cols = _clip_span(cols, 512)
            if rows.stop - rows.start < 16 or cols.stop - cols.start < 16:
                return
            crop = _layers.image_plane(layer, idx)[rows, cols]
        except Exception as e:  # noqa: BLE001 - a preview must never break training
            log.debug("no preview: %s", e)
            return
        # a failed preview is logged, never shown: it must not interrupt training
        worker = thread_worker(_preview_worker_fn, start_thread=False, ignore_errors=True)(checkpoint, "cpu", crop)

        def done(classes):
            # an Image layer (see _colors.preview_display); later previews update it in place
            data, kwargs, kind = _layers.preview_layer_data(layer, classes, idx, rows, cols)
            (ly,) = _viewer.upsert_layers(self.viewer, [(data, kwargs, kind)])
            ly.translate = kwargs["translate"]

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

        ck = load_checkpoint(require_model(path))
        folder = Path(path) if Path(path).is_dir() else Path(path).parent
        self._auto_dir = None
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
            raise ValueError("There is no trained model yet: train one (Start) or load one (Load model…) first.")
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
    """At most ``size`` of ``span``, around its middle."""
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
