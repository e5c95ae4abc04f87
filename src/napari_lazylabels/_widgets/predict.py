"""Predict dock widget: tiled prediction of chosen image layers in a ``thread_worker``.

Results are pushed as ``"<image> classes"`` (Labels), ``"<image> instances"`` (Labels),
``"<image> interfaces"`` and ``"<image> probabilities"`` (Image); running again updates
those layers in place.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
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


def _predict_worker_fn(model_path, device, tile, jobs):
    """Worker generator: yields ``("progress", name, done, total)`` and
    ``("result", name, [Prediction], ClassSpec)``."""
    from ..core.checkpoint import load_model
    from ..core.predict import PredictConfig, Prediction, Predictor

    model, ck = load_model(model_path, "cpu")
    predictor = Predictor(model, ck.model_config, PredictConfig(device=device, tile=tile))
    for name, planes in jobs:
        preds = []
        for i, plane in enumerate(planes):
            for item in predictor.predict_iter(plane):
                if isinstance(item, Prediction):
                    preds.append(item)
                else:
                    done, total = item
                    yield ("progress", name, i * total + done, len(planes) * total)
        yield ("result", name, preds, ck.classes)


class PredictionRunner:
    """Runs a prediction worker for some image layers and pushes the layers back.

    Args:
        viewer: the napari viewer.
        device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        tile: tile side of the sliding window.
        on_finished: called (no arguments) when the worker ends.
        on_progress: called with ``(image name, done, total)``.
        on_result: called with the list of layers pushed for one image.
    """

    def __init__(self, viewer, device: str = "auto", tile: int = 256, on_finished=None, on_progress=None, on_result=None) -> None:
        self.viewer = viewer
        self.device = device
        self.tile = tile
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
        worker = thread_worker(_predict_worker_fn, start_thread=False)(str(model_path), self.device, self.tile, jobs)
        worker.yielded.connect(self._on_yield)
        worker.errored.connect(lambda e: show_error(f"Prediction failed: {e}"))
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
        _, name, preds, classes = item
        layers = _layers.upsert_layers(self.viewer, _layers.prediction_layer_data(name, preds, classes))
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
        self.run_btn, self.stop_btn, self._run_row = run_stop_buttons("Predict", self.run, self.stop)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("model", mrow)
        form.addRow("device", self.device)
        form.addRow("tile", self.tile)
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
        self.runner = PredictionRunner(
            self.viewer, self.device.currentText(), self.tile.value(), on_finished=self._finished,
            on_progress=lambda n, d, t: self.status.setText(f"Predicting {n}: {d}/{t}"),
            on_result=lambda layers: self.status.setText("Updated: " + ", ".join(ly.name for ly in layers)),
        )
        self.runner.run(layers, path)
        self.run_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        self.status.setText(f"Predicting {len(layers)} image layer(s)…")

    def stop(self, *_) -> None:
        if self.runner is not None:
            self.runner.stop()

    def is_running(self) -> bool:
        return self.runner is not None and self.runner.worker is not None

    def _finished(self) -> None:
        self.run_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.model_dir.setText(path)
