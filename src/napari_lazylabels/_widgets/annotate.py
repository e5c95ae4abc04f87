"""Lazy annotation dock widget: the class list, the three task Labels layers, a table of
which images (stack slices) are annotated for which task, and project save/load."""

from __future__ import annotations

import logging
from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.labels import DETECTION, SEGMENTATION, SEPARATION, TASKS, ClassSpec
from . import _colors, _layers, _viewer
from ._common import LayerCombo, notify_errors, path_row, project_changed, show_info

log = logging.getLogger(__name__)

DEFAULT_BRUSH = 8


def parse_classes(text: str) -> ClassSpec:
    """``"background, nucleus, cell"`` (optionally ``name:#rrggbb``) -> :class:`ClassSpec`."""
    names, colors = [], []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, color = part.partition(":")
        names.append(name.strip())
        colors.append(color.strip())
    if names and names[0].lower() not in ("background", "bg"):
        names.insert(0, "background")
        colors.insert(0, "")
    if not any(colors):
        colors = []
    return ClassSpec(names=tuple(names), colors=tuple(colors))


def format_classes(classes: ClassSpec) -> str:
    return ", ".join(
        f"{n}:{classes.colors[i]}" if i < len(classes.colors) and classes.colors[i] else n
        for i, n in enumerate(classes.names)
    )


class AnnotationWidget(QWidget):
    """Set up and track lazy annotations of one image layer (2D, RGB, multi-channel or a
    stack)."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._watched: list = []
        self.image_combo = LayerCombo(napari_viewer, "Image")
        self.image_combo.currentTextChanged.connect(self._image_changed)
        self.classes_edit = QLineEdit("background, object")
        self.classes_edit.setToolTip(
            "Comma-separated class names, background first (label value 1); optional colours "
            "as name:#rrggbb. Object class i is painted with label value i + 1."
        )
        self.first_axis_channels = QCheckBox("its first axis holds channels (C, Y, X)")
        self.first_axis_channels.setToolTip(
            "A 3D image with a few planes may be channels of one image (e.g. a fluorescence TIFF: "
            "napari shows a slider over them) or a stack of images. Ticked: one image with these "
            "channels, labelled once; unticked: each plane is an image of its own."
        )
        self.first_axis_channels.toggled.connect(self._set_channel_axis)
        self.brush = QSpinBox()
        self.brush.setRange(1, 200)
        self.brush.setValue(DEFAULT_BRUSH)
        self.brush.valueChanged.connect(self._set_brush)
        self.create_btn = QPushButton("Create / update label layers")
        self.create_btn.clicked.connect(self.create_layers)
        self.combine_btn = QPushButton("Combine selected layers as channels")
        self.combine_btn.setToolTip(
            "Image layers that are the channels of one image (napari opens some files as one "
            "layer per channel): select them in the layer list, then press this to make one "
            "multi-channel image to annotate and train on."
        )
        self.combine_btn.clicked.connect(lambda: self.combine_channels())
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        # short headers: the dock is narrow and the image names take the row headers' width
        self.table.setHorizontalHeaderLabels(["detect", "separ", "segm"])
        for col, task in enumerate(("detection", "separation", "segmentation")):
            self.table.horizontalHeaderItem(col).setToolTip(f"{task} labels painted on this image")
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(120)
        self.table.cellDoubleClicked.connect(self._goto_row)
        self.project, prow = path_row("dataset folder", self._browse)
        self.save_btn = QPushButton("Save project")
        self.load_btn = QPushButton("Load project")
        self.save_btn.clicked.connect(lambda: self.save_project())
        self.load_btn.clicked.connect(lambda: self.load_project())
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.refresh_table)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("", self.first_axis_channels)
        form.addRow("classes", self.classes_edit)
        form.addRow("brush size", self.brush)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.combine_btn)
        lay.addWidget(self.create_btn)
        lay.addWidget(self.legend)
        lay.addWidget(QLabel("annotated (double-click a row to go there)"))
        lay.addWidget(self.table)
        lay.addLayout(prow)
        row = QHBoxLayout()
        row.addWidget(self.save_btn)
        row.addWidget(self.load_btn)
        lay.addLayout(row)
        lay.addStretch(1)
        napari_viewer.layers.events.inserted.connect(lambda *_: self._timer.start())
        napari_viewer.layers.events.removed.connect(lambda *_: self._timer.start())
        self._image_changed()

    # ------------------------------------------------------------------ state
    def image_layer(self):
        return self.image_combo.layer()

    def task_layers(self) -> dict:
        layer = self.image_layer()
        if layer is None:
            return {t: None for t in TASKS}
        try:
            return _layers.find_task_layers(self.viewer.layers, layer)
        except ValueError:  # an image the plugin cannot label; create_layers says why
            return {t: None for t in TASKS}

    def classes(self) -> ClassSpec:
        return parse_classes(self.classes_edit.text())

    def _image_changed(self, *_) -> None:
        layer = self.image_layer()
        if layer is not None:
            found = _layers.classes_of(layer, *self.task_layers().values())
            if found is not None:
                self.classes_edit.setText(format_classes(found))
            src = layer.metadata.get(_layers.META, {}).get("source")
            if src and not self.project.text():
                self.project.setText(str(src))
        self._show_channel_choice(layer)
        self._watch()
        self.refresh_table()
        self._update_legend()

    def _show_channel_choice(self, layer) -> None:
        """Offer "first axis holds channels" for a layer that may be ``(C, Y, X)``, ticked
        as :func:`._layers.channel_axis` finds it (the file's axes, or an earlier choice)."""
        ambiguous = layer is not None and _layers.may_hold_channels(layer)
        self.first_axis_channels.setVisible(ambiguous)
        if ambiguous:
            self.first_axis_channels.blockSignals(True)
            self.first_axis_channels.setChecked(_layers.channel_axis(layer) == 0)
            self.first_axis_channels.blockSignals(False)

    def _set_channel_axis(self, checked: bool) -> None:
        """Record the choice on the layer: its labels become ``(Y, X)`` (channels) or
        ``(C, Y, X)`` (a stack); press Create to make them."""
        layer = self.image_layer()
        if layer is None or not _layers.may_hold_channels(layer):
            return
        layer.metadata.setdefault(_layers.META, {})["channel_axis"] = 0 if checked else None
        self._watch()
        self.refresh_table()

    def _watch(self) -> None:
        for ly in self._watched:
            try:
                ly.events.paint.disconnect(self._schedule)
                ly.events.data.disconnect(self._schedule)
            except (TypeError, RuntimeError, ValueError):
                pass
        self._watched = [ly for ly in self.task_layers().values() if ly is not None]
        for ly in self._watched:
            ly.events.paint.connect(self._schedule)
            ly.events.data.connect(self._schedule)

    def _schedule(self, *_) -> None:
        self._timer.start()

    def _background(self) -> str | None:
        """Colour of background marks that stands out on the chosen image (None: no image)."""
        layer = self.image_layer()
        try:
            return _viewer.image_background_color(layer) if layer is not None else None
        except ValueError:
            return None

    def _update_legend(self) -> None:
        try:
            classes = self.classes()
        except ValueError as e:
            self.legend.setText(str(e))
            return
        background = self._background()
        self.legend.setText(
            "detection / segmentation labels: " + _colors.legend_html(DETECTION, classes, background)
            + "<br>separation: " + _colors.legend_html(SEPARATION, classes, background)
        )

    # ------------------------------------------------------------------ layers
    @notify_errors
    def create_layers(self, *_) -> dict:
        """Create the missing task Labels layers (or update their classes and colours)."""
        layer = self.image_layer()
        if layer is None:
            raise ValueError("Open an image first (File > Open), then create the label layers.")
        classes = self.classes()
        _layers.label_shape(layer)  # raises for unsupported shapes
        meta = layer.metadata.setdefault(_layers.META, {})
        meta["classes"] = classes.to_dict()
        if _layers.channel_axis(layer) is not None:  # kept with the layer (File > Save Selected Layers)
            meta["channel_axis"] = _layers.channel_axis(layer)
        tasks = self.task_layers()
        # Compare names, not objects: from the Plugins menu the widget holds napari's viewer
        # proxy, which hands out a new wrapper object for the same layer on every access.
        others = [ly for ly in self.viewer.layers if ly.__class__.__name__ == "Image" and ly.name != layer.name
                  and not ly.metadata.get(_layers.META, {}).get("prediction")]
        geometry = _layers.geometry_kwargs(layer)
        background = _viewer.image_background_color(layer)
        for task in TASKS:
            ly = tasks[task]
            name = None
            if ly is None:
                name = _layers.task_layer_name(task)
                if name in self.viewer.layers or others:
                    name = _layers.task_layer_name(task, layer.name)
            kwargs = _layers.labels_layer_kwargs(
                task, layer.name, classes, name, geometry=geometry, background=background
            )
            if ly is None:
                ly = self.viewer.add_labels(_layers.empty_labels(layer), **kwargs)
                ly.selected_label = 2  # first object class / the interface label
                tasks[task] = ly
            else:  # new classes, or the image moved or was rescaled: the labels stay
                _viewer.restyle_labels(ly, kwargs)
            ly.brush_size = self.brush.value()  # napari counts it in data pixels: image pixels
        det = tasks[DETECTION]
        self.viewer.layers.selection.active = det
        det.mode = "paint"
        self._watch()
        self.refresh_table()
        self._update_legend()
        return tasks

    @notify_errors
    def combine_channels(self, layers=None):
        """Add one multi-channel image of the selected image layers (or ``layers``), in the
        layer list's order, and choose it (:func:`._layers.channels_layer_data`)."""
        if layers is None:  # names: the viewer proxy hands out new wrappers of the same layers
            selected = {ly.name for ly in self.viewer.layers.selection}
            layers = [ly for ly in self.viewer.layers if ly.name in selected]
        data, kwargs, _ = _layers.channels_layer_data(layers)
        layer = self.viewer.add_image(data, **kwargs)
        for ly in layers:
            ly.visible = False
        self.image_combo.refresh()
        self.image_combo.setCurrentText(layer.name)
        self._image_changed()
        return layer

    def _set_brush(self, value: int) -> None:
        for ly in self.task_layers().values():
            if ly is not None:
                ly.brush_size = value

    # ------------------------------------------------------------------ table
    def refresh_table(self) -> None:
        """Re-count which images / slices carry labels for each task."""
        layer = self.image_layer()
        if layer is None:
            self.table.setRowCount(0)
            return
        try:
            rows = _layers.annotation_table(layer, self.task_layers())
        except ValueError:
            self.table.setRowCount(0)
            return
        self.table.setRowCount(len(rows))
        self.table.setVerticalHeaderLabels([name for name, _ in rows])
        for r, (_, status) in enumerate(rows):
            for c, task in enumerate(TASKS):
                item = QTableWidgetItem("✓" if status[task] else "")
                self.table.setItem(r, c, item)

    def table_status(self) -> list[tuple[str, dict]]:
        """The table's content as ``[(name, {task: bool})]``."""
        out = []
        for r in range(self.table.rowCount()):
            name = self.table.verticalHeaderItem(r).text()
            out.append((name, {t: self.table.item(r, c).text() == "✓" for c, t in enumerate(TASKS)}))
        return out

    def _goto_row(self, row: int, _col: int) -> None:
        layer = self.image_layer()
        if layer is not None and len(_layers.label_shape(layer)) == 3:
            step = list(self.viewer.dims.current_step)
            step[self.viewer.dims.ndim - layer.ndim] = row
            self.viewer.dims.current_step = tuple(step)

    # ------------------------------------------------------------------ project
    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Dataset folder")
        if path:
            self.project.setText(path)

    @notify_errors
    def save_project(self, path: str | None = None) -> Path:
        """Save the image and its labels to a dataset folder (atomic writes)."""
        from ..core.io import save_dataset

        path = path or self.project.text().strip()
        if not path:
            raise ValueError("Choose a dataset folder to save into (…).")
        layer = self.image_layer()
        if layer is None:
            raise ValueError("There is no image to save.")
        dataset = _layers.layers_to_dataset(layer, self.task_layers(), self.classes())
        root = save_dataset(dataset, path)
        meta = layer.metadata.setdefault(_layers.META, {})
        meta["names"] = dataset.names()
        meta["source"] = str(root)
        self.project.setText(str(root))
        project_changed(self.viewer, root)  # the model moves into <root>/models (train widget)
        show_info(f"Saved {len(dataset)} image(s) with lazy labels to {root}.")
        return root

    @notify_errors
    def load_project(self, path: str | None = None) -> list:
        """Open a dataset folder: its images and label layers (updated in place if present)."""
        from ..core.io import load_dataset

        path = path or self.project.text().strip()
        if not path:
            raise ValueError("Choose a dataset folder to load (…).")
        dataset = load_dataset(path)
        layers = _viewer.upsert_layers(self.viewer, _layers.dataset_to_layer_data(dataset, source=str(path)))
        self.project.setText(str(path))
        project_changed(self.viewer, path)  # restores the project's model (train/predict widgets)
        image = next(ly for ly in layers if ly.__class__.__name__ == "Image")
        self.image_combo.refresh()
        self.image_combo.setCurrentText(image.name)
        self.classes_edit.setText(format_classes(dataset.classes))
        self._image_changed()
        return layers


__all__ = ["AnnotationWidget", "parse_classes", "DETECTION", "SEPARATION", "SEGMENTATION"]
