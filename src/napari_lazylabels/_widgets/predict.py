"""Predict dock widget: tiled prediction of chosen image layers in a ``thread_worker``.

Results are pushed as ``"<image> classes"`` (Labels), ``"<image> instances"`` (Labels),
``"<image> interfaces"`` and ``"<image> probabilities"`` (Image); running again updates
those layers in place. How instances are cut (interface threshold, smallest object, necks) is
set in the widget; **Re-split** applies new settings to the classes and interfaces layers
already there, without running the network again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _layers
from ._common import (
    limit_torch_threads,
    notify_errors,
    path_row,
    run_stop_buttons,
    session,
    show_error,
    show_info,
)

log = logging.getLogger(__name__)

# PredictConfig.tta choices (the default, 4, is preselected; kept equal by a test).
TTA_ITEMS = ("1 (off)", "2", "4", "8")


def _predict_worker_fn(model_path, device, tile, jobs, post=None, tta=None):
    """Worker generator: yields ``("progress", name, done, total)`` and
    ``("result", name, [Prediction], ClassSpec, settings)``.

    ``post``: :class:`PredictConfig` fields of the instance step (``interface_threshold``,
    ``min_object_size`` (``None`` = the model's automatic size), ``neck_depth``); ``settings``
    are :meth:`Predictor.instance_settings`, kept for a later re-split. ``tta``: orientations
    per tile (:attr:`PredictConfig.tta`; ``None`` = its default)."""
    from ..core.checkpoint import load_model
    from ..core.predict import PredictConfig, Prediction, Predictor

    model, ck = load_model(model_path, "cpu")
    extra = {} if tta is None else {"tta": int(tta)}
    predictor = Predictor(model, ck.model_config, PredictConfig(device=device, tile=tile, **extra, **(post or {})))
    settings = predictor.instance_settings()
    for name, planes in jobs:
        preds = []
        for i, plane in enumerate(planes):
            for item in predictor.predict_iter(plane):
                if isinstance(item, Prediction):
                    preds.append(item)
                else:
                    done, total = item
                    yield ("progress", name, i * total + done, len(planes) * total)
        yield ("result", name, preds, ck.classes, settings)


def _resplit_worker_fn(jobs, neck_depth: float = 0.0):
    """Worker generator: instances again from kept class and interface maps (no network).

    ``jobs``: ``[(name, classes (N, H, W), interfaces (N, H, W) or None, interface_threshold,
    min_object_size, the model's recorded "auto" values)]``. Yields ``("progress", name, done, total)`` per plane and
    ``("instances", name, (N, H, W) int32, settings used)``."""
    from ..core.predict import instances_from_prediction

    for name, classes, interfaces, threshold, min_size, auto in jobs:
        out = np.zeros(classes.shape, np.int32)
        for i in range(classes.shape[0]):
            out[i] = instances_from_prediction(
                np.asarray(classes[i]), None if interfaces is None else np.asarray(interfaces[i], np.float32),
                threshold, min_size, neck_depth=neck_depth,
            )
            yield ("progress", name, i + 1, classes.shape[0])
        settings = {"interface_threshold": threshold, "neck_depth": neck_depth, "min_object_size": min_size, **auto}
        yield ("instances", name, out, settings)


class PredictionRunner:
    """Runs a prediction worker for some image layers and pushes the layers back.

    Args:
        viewer: the napari viewer.
        device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        tile: tile side of the sliding window.
        tta: orientations each tile is predicted in (:attr:`PredictConfig.tta`; ``None`` =
            its default).
        on_finished: called (no arguments) when the worker ends.
        on_progress: called with ``(image name, done, total)``.
        on_result: called with the list of layers pushed for one image.
        post: instance settings (:class:`PredictConfig` fields ``interface_threshold``,
            ``min_object_size``, ``neck_depth``); default: the model's defaults.
    """

    def __init__(self, viewer, device: str = "auto", tile: int = 256, on_finished=None, on_progress=None,
                 on_result=None, post: dict | None = None, tta: int | None = None) -> None:
        self.viewer = viewer
        self.device = device
        self.tile = tile
        self.tta = tta
        self.post = dict(post or {})
        self.on_finished = on_finished
        self.on_progress = on_progress
        self.on_result = on_result
        self.worker = None
        self.pushed: list[str] = []
        self._pbar = None

    def run(self, image_layers, model_path) -> None:
        """Start predicting ``image_layers`` with the model at ``model_path``."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        if model_path is None:
            raise ValueError("No model yet: train one (Train widget) or load a model folder.")
        jobs = [
            (ly.name, [_layers.image_plane(ly, i) for i in range(_layers.n_planes(ly))])
            for ly in image_layers
        ]
        if not jobs:
            raise ValueError("Choose at least one image layer to predict.")
        limit_torch_threads()
        self._pbar = progress(total=0, desc="Predicting")
        worker = thread_worker(_predict_worker_fn, start_thread=False)(
            str(model_path), self.device, self.tile, jobs, self.post, self.tta
        )
        self._start(worker, "Prediction")

    def resplit(self, image_names, settings: dict) -> None:
        """Instances again for ``image_names`` from their ``"<image> classes"`` and
        ``"<image> interfaces"`` layers, with ``settings`` (``interface_threshold`` and
        ``min_object_size``, ``None`` for the model's own, as recorded when it predicted, and
        ``neck_depth``); the ``"<image> instances"`` layers are updated in place."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        from ..core.predict import recorded_instance_settings

        jobs = []
        for name in image_names:
            cls_name, inst_name, itf_name = (f"{name} {k}" for k in ("classes", "instances", "interfaces"))
            if cls_name not in self.viewer.layers:
                raise ValueError(f"No prediction of '{name}' yet: press Predict first, then Re-split.")
            classes = np.asarray(self.viewer.layers[cls_name].data)
            interfaces = np.asarray(self.viewer.layers[itf_name].data) if itf_name in self.viewer.layers else None
            if classes.ndim == 2:
                classes = classes[None]
                interfaces = None if interfaces is None else interfaces[None]
            old = {}
            if inst_name in self.viewer.layers:
                old = self.viewer.layers[inst_name].metadata.get(_layers.META, {}).get("settings", {})
            auto = {k: old[k] for k in ("auto_interface_threshold", "auto_min_object_size") if k in old}
            threshold, min_size = recorded_instance_settings(
                auto, settings.get("interface_threshold"), settings.get("min_object_size")
            )
            jobs.append((name, classes, interfaces, threshold, min_size, auto))
        if not jobs:
            raise ValueError("Choose at least one predicted image to re-split.")
        self._pbar = progress(total=0, desc="Splitting instances")
        worker = thread_worker(_resplit_worker_fn, start_thread=False)(jobs, settings.get("neck_depth", 0.0))
        self._start(worker, "Re-splitting instances")

    def _start(self, worker, what: str) -> None:
        worker.yielded.connect(self._on_yield)
        worker.errored.connect(lambda e: show_error(f"{what} failed: {e}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.quit()

    def _on_yield(self, item) -> None:
        if item[0] == "progress":
            _, name, done, total = item
            pbar = self._pbar  # napari's progress may process events (and finish us) meanwhile
            if pbar is not None:
                if pbar.total != total:
                    pbar.total = total
                if done > pbar.n:
                    pbar.update(done - pbar.n)
            if self.on_progress is not None:
                self.on_progress(name, done, total)
            return
        if item[0] == "instances":
            _, name, inst, settings = item
            layer_data = [_layers.instances_layer_data(name, inst if inst.shape[0] > 1 else inst[0], settings)]
        else:
            _, name, preds, classes, settings = item
            layer_data = _layers.prediction_layer_data(name, preds, classes, settings)
        layers = _layers.upsert_layers(self.viewer, layer_data)
        self.pushed += [ly.name for ly in layers]
        if self.on_result is not None:
            self.on_result(layers)

    def _finished(self) -> None:
        self.worker = None
        pbar, self._pbar = self._pbar, None
        if pbar is not None:
            pbar.close()
        if self.on_finished is not None:
            self.on_finished()


class PredictWidget(QWidget):
    """Predict chosen image layers (any size) with the trained or a loaded model."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.runner: PredictionRunner | None = None
        self.images = QListWidget()
        self.images.setMaximumHeight(120)
        self.model_dir, mrow = path_row("the model trained last", self._browse)
        self.device = QComboBox()
        self.device.addItems(("auto", "cuda", "mps", "cpu"))
        self.tile = QSpinBox()
        self.tile.setRange(32, 2048)
        self.tile.setSingleStep(32)
        self.tile.setValue(256)
        self.tta = QComboBox()
        self.tta.addItems(TTA_ITEMS)
        self.tta.setCurrentIndex(TTA_ITEMS.index("4"))
        self.tta.setToolTip(
            "Test-time augmentation: every tile is predicted mirrored in this many ways and the "
            "class probabilities are averaged. More orientations: somewhat more accurate, "
            "proportionally slower (1 = off, fastest)."
        )
        # How instances are cut; Re-split applies changes without predicting again.
        self.interface_threshold = QDoubleSpinBox()
        self.interface_threshold.setRange(0.0, 1.0)
        self.interface_threshold.setSingleStep(0.05)
        self.interface_threshold.setSpecialValueText("auto")
        self.interface_threshold.setValue(0.0)
        self.interface_threshold.setToolTip(
            "Interface probability that cuts objects apart. auto: the model's own, chosen on your "
            "exact masks when training ended (else 0.5). Raise it when single objects come out "
            "cut in pieces; lower it when touching objects stay merged. Then press Re-split."
        )
        self.min_size = QSpinBox()
        self.min_size.setRange(0, 100_000_000)
        self.min_size.setSpecialValueText("auto")
        self.min_size.setSuffix(" px")
        self.min_size.setToolTip(
            "Objects smaller than this are dropped as specks. auto: a tenth of the area of a "
            "typical object of the model's training labels (at least 16 px)."
        )
        self.necks = QDoubleSpinBox()
        self.necks.setRange(0.0, 100.0)
        self.necks.setSingleStep(0.5)
        self.necks.setSpecialValueText("off")
        self.necks.setSuffix(" px")
        self.necks.setToolTip(
            "Also cut objects at necks this many pixels shallower than their centres: for round "
            "touching objects such as nuclei (about a tenth of their radius); cuts irregular "
            "objects apart, so off by default."
        )
        self.resplit_btn = QPushButton("Re-split")
        self.resplit_btn.setToolTip("Cut the instances of the ticked images again with these settings (no network).")
        self.resplit_btn.clicked.connect(self.resplit)
        self.run_btn, self.stop_btn, self._run_row = run_stop_buttons("Predict", self.run, self.stop)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("model", mrow)
        form.addRow("device", self.device)
        form.addRow("tile", self.tile)
        form.addRow("orientations", self.tta)
        form.addRow("interface threshold", self.interface_threshold)
        form.addRow("smallest object", self.min_size)
        form.addRow("split necks", self.necks)
        form.addRow("", self.resplit_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("images to predict"))
        lay.addWidget(self.images)
        lay.addLayout(form)
        lay.addLayout(self._run_row)
        lay.addWidget(self.status)
        lay.addStretch(1)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed, napari_viewer.layers.events.changed):
            ev.connect(self.refresh)
        sess = session(napari_viewer)
        sess.listeners.append(self._on_model)
        if sess.model_dir is not None:
            self._on_model(sess.model_dir)
        self.refresh()

    def _on_model(self, path) -> None:
        self.model_dir.setText(str(path) if path else "")

    def refresh(self, *_) -> None:
        """Re-list the image layers (predictions excluded), keeping the check marks."""
        checked = {self.images.item(i).text() for i in range(self.images.count())
                   if self.images.item(i).checkState() == Qt.CheckState.Checked}
        known = {self.images.item(i).text() for i in range(self.images.count())}
        self.images.clear()
        for ly in self.viewer.layers:
            if ly.__class__.__name__ != "Image" or ly.metadata.get(_layers.META, {}).get("prediction"):
                continue
            item = QListWidgetItem(ly.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = ly.name in checked or (ly.name not in known and not checked)
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.images.addItem(item)

    def chosen_layers(self) -> list:
        names = [self.images.item(i).text() for i in range(self.images.count())
                 if self.images.item(i).checkState() == Qt.CheckState.Checked]
        return [self.viewer.layers[n] for n in names if n in self.viewer.layers]

    def set_chosen(self, names) -> None:
        """Check exactly the image layers named in ``names``."""
        for i in range(self.images.count()):
            item = self.images.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    @notify_errors
    def run(self, *_) -> None:
        """Predict the checked images in the background."""
        if self.runner is not None and self.runner.worker is not None:
            show_info("A prediction is already running.")
            return
        path = self.model_dir.text().strip() or None
        if path is None and session(self.viewer).model_dir is not None:
            path = str(session(self.viewer).model_dir)
        if path is None:
            raise ValueError("No model yet: train one with the Train widget, or choose a model folder (…).")
        if not Path(path).exists():
            raise ValueError(f"No model folder at {path}: pick one written by the Train widget.")
        layers = self.chosen_layers()
        self.runner = self._runner()
        self.runner.run(layers, path)
        self._busy(True)
        self.status.setText(f"Predicting {len(layers)} image layer(s)…")

    def instance_settings(self) -> dict:
        """The instance settings of the form (``None`` for auto)."""
        return {
            "interface_threshold": float(self.interface_threshold.value()) or None,
            "min_object_size": self.min_size.value() or None,
            "neck_depth": float(self.necks.value()),
        }

    @notify_errors
    def resplit(self, *_) -> None:
        """Cut the instances of the ticked, already predicted images again (no network)."""
        if self.is_running():
            show_info("Wait for the running prediction to finish, or press Stop.")
            return
        names = [ly.name for ly in self.chosen_layers()]
        self.runner = self._runner()
        self.runner.resplit(names, self.instance_settings())
        self._busy(True)
        self.status.setText(f"Re-splitting {len(names)} image layer(s)…")

    def _runner(self) -> PredictionRunner:
        return PredictionRunner(
            self.viewer, self.device.currentText(), self.tile.value(), on_finished=self._finished,
            on_progress=lambda n, d, t: self.status.setText(f"{n}: {d}/{t}"),
            on_result=lambda layers: self.status.setText("Updated: " + ", ".join(ly.name for ly in layers)),
            post=self.instance_settings(), tta=int(self.tta.currentText().split()[0]),
        )

    def _busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.resplit_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)

    def stop(self, *_) -> None:
        if self.runner is not None:
            self.runner.stop()

    def is_running(self) -> bool:
        return self.runner is not None and self.runner.worker is not None

    def _finished(self) -> None:
        self._busy(False)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.model_dir.setText(path)
