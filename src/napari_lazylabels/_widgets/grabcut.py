"""GrabCut refine dock widget: detection marks of the current image -> exact masks.

The refinement (:func:`napari_lazylabels.core.grabcut.refine_iter`, a job of
:mod:`napari_lazylabels.core.jobs`) runs in a napari ``thread_worker``; its progress events
show in the status, and its result is written into the segmentation Labels layer as one
ordinary, undoable edit (:func:`_layers.set_labels_plane`, through ``Labels.data_setitem``),
so Ctrl+Z on the layer restores the previous masks. Stop asks the job to stop
(``should_stop``): the objects refined so far are written, the others stay as they were.
"""

from __future__ import annotations

import logging

from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QVBoxLayout,
    QWidget,
)

from ..core.labels import DETECTION, SEGMENTATION
from . import _layers, _viewer
from ._common import (
    LayerCombo,
    notify_errors,
    quiet_worker,
    run_stop_buttons,
    show_error,
    show_info,
)

log = logging.getLogger(__name__)

SCOPES = ("all objects", "objects in view", "selected label")


def _refine_worker_fn(image, detection, existing, region, label_value, should_stop):
    """Worker generator: the core's ``Progress("objects", done, total)`` events; returns the map."""
    from ..core.grabcut import refine_iter

    return (yield from refine_iter(
        image, detection, existing=existing, region=region, label_value=label_value, should_stop=should_stop
    ))


class GrabCutWidget(QWidget):
    """Refine the detection marks of the shown image into segmentation masks with GrabCut."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.last_changed = 0
        self._stop_requested = False
        self.image_combo = LayerCombo(napari_viewer, "Image")
        self.scope = QComboBox()
        self.scope.addItems(SCOPES)
        self.scope.setToolTip(
            "all objects: every mark of the shown image; objects in view: marks visible in the "
            "canvas; selected label: marks of the detection layer's selected label (class)."
        )
        self.run_btn, self.stop_btn, self._run_row = run_stop_buttons("Refine", self.run, self.stop)
        self.status = QLabel(
            "Marks of the detection layer become masks in the segmentation layer (undo with Ctrl+Z); "
            "background only where GrabCut is sure, the rest stays unlabelled."
        )
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("refine", self.scope)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addLayout(self._run_row)
        lay.addWidget(self.status)
        lay.addStretch(1)

    @notify_errors
    def run(self, *_) -> None:
        """Start the refinement of the shown image plane."""
        if self.worker is not None:
            show_info("GrabCut is already running.")
            return
        layer = self.image_combo.layer()
        if layer is None:
            raise ValueError("Open an image first (File > Open), then paint detection marks.")
        tasks = _layers.find_task_layers(self.viewer.layers, layer)
        det = tasks[DETECTION]
        if det is None:
            raise ValueError(
                f"'{layer.name}' has no detection layer. Create the label layers in the Lazy "
                "annotation widget and paint a mark inside each object."
            )
        seg = tasks[SEGMENTATION]
        if seg is None:
            classes = _layers.classes_of(layer, det)
            from ..core.labels import ClassSpec

            kwargs = _layers.labels_layer_kwargs(
                SEGMENTATION, layer.name, classes or ClassSpec(), geometry=layer,
                background=_viewer.image_background_color(layer),
            )
            seg = self.viewer.add_labels(_layers.empty_labels(layer), **kwargs)
        idx = _viewer.current_index(self.viewer, layer)
        scope = self.scope.currentText()
        region = _viewer.view_region(self.viewer, layer) if scope == "objects in view" else None
        label_value = int(det.selected_label) if scope == "selected label" else None
        image = _layers.image_plane(layer, idx)
        detection = _layers.label_plane(det, idx).copy()
        existing = _layers.label_plane(seg, idx).copy()

        self._stop_requested = False
        worker = quiet_worker(
            _refine_worker_fn, image, detection, existing, region, label_value, lambda: self._stop_requested,
            error_prefix="GrabCut failed",
        )
        worker.yielded.connect(lambda ev: self.status.setText(f"GrabCut: {ev.done}/{ev.total} objects"))
        worker.returned.connect(lambda result: self._apply(seg, idx, result))
        worker.finished.connect(self._finished)
        self.worker = worker
        self.run_btn.setEnabled(False)
        self.stop_btn.setEnabled(True)
        worker.start()

    def _apply(self, seg, idx, result) -> None:
        if result is None:
            return
        try:
            self.last_changed = _layers.set_labels_plane(seg, idx, result)
        except Exception as e:  # noqa: BLE001
            show_error(f"Could not write the masks: {e}")
            return
        # one short line (the dock is often low); the rule it follows is in the tooltip
        what = "GrabCut stopped: the objects done" if self._stop_requested else "GrabCut"
        self.status.setText(f"{what} changed {self.last_changed} pixels of '{seg.name}' (Ctrl+Z undoes it).")
        self.status.setToolTip(
            "Background is written only where GrabCut is sure; unsure pixels and unmarked objects stay unlabelled."
        )

    def stop(self, *_) -> None:
        """Ask the refinement to stop after the current object; what is done is written."""
        if self.worker is not None:
            self._stop_requested = True

    def is_running(self) -> bool:
        return self.worker is not None

    def _finished(self) -> None:
        self.worker = None
        self.run_btn.setEnabled(True)
        self.stop_btn.setEnabled(False)
