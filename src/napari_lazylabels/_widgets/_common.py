"""Small pieces shared by the dock widgets: error notifications, layer pickers, path rows,
run/stop buttons, the loss curve, torch thread limits and a per-viewer session (the model
trained last)."""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from qtpy.QtCore import QPointF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QPushButton, QSizePolicy, QWidget

log = logging.getLogger(__name__)


def path_row(placeholder: str, on_browse) -> tuple[QLineEdit, QHBoxLayout]:
    """A folder/file path field with a "…" browse button; returns ``(field, row layout)``."""
    edit = QLineEdit()
    edit.setPlaceholderText(placeholder)
    browse = QPushButton("…")
    browse.setMaximumWidth(30)
    browse.clicked.connect(on_browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(browse)
    return edit, row


def run_stop_buttons(run_text: str, on_run, on_stop) -> tuple[QPushButton, QPushButton, QHBoxLayout]:
    """A run button and a Stop button (disabled until a job runs), side by side in a row."""
    run, stop = QPushButton(run_text), QPushButton("Stop")
    stop.setEnabled(False)
    run.clicked.connect(on_run)
    stop.clicked.connect(on_stop)
    row = QHBoxLayout()
    row.addWidget(run)
    row.addWidget(stop)
    return run, stop, row


def notify_errors(func):
    """Decorator for Qt slots: an exception becomes a napari error notification."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - every error must reach the user
            log.exception("%s failed", func.__name__)
            show_error(e)
            return None

    return wrapper


def show_error(error: Exception | str) -> None:
    """Show an error as a napari notification (what went wrong and what to do)."""
    from napari.utils.notifications import show_error as _show

    _show(str(error) if not isinstance(error, str) else error)


def show_info(message: str) -> None:
    """Show an informational napari notification."""
    from napari.utils.notifications import show_info as _show

    _show(message)


def limit_torch_threads() -> int:
    """Leave one core to the GUI: ``torch.set_num_threads(cpu_count - 1)``; returns it."""
    import torch

    n = max(1, (os.cpu_count() or 2) - 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


_WARMED = False


def warm_torch() -> None:
    """Import ``torch.optim`` and ``torch._dynamo`` on the main thread once, before a worker
    starts: their first import holds the interpreter lock for about a second, which would
    freeze the GUI if it happened inside the worker."""
    global _WARMED
    if _WARMED:
        return
    import torch
    import torch.optim  # noqa: F401

    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # pragma: no cover - optional in some torch builds
        pass
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    _WARMED = True


def default_model_dir() -> Path:
    """A fresh model folder under the app data dir (or the temp dir)."""
    base = Path(os.environ.get("LAZYLABELS_MODEL_DIR", Path(tempfile.gettempdir()) / "napari-lazylabels"))
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="model-", dir=base))


@dataclass
class Session:
    """What the widgets of one viewer share: the model folder trained or loaded last."""

    model_dir: Path | None = None
    listeners: list = field(default_factory=list)

    def set_model(self, path) -> None:
        self.model_dir = Path(path) if path else None
        for cb in list(self.listeners):
            try:
                cb(self.model_dir)
            except RuntimeError:  # a deleted widget
                self.listeners.remove(cb)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session(viewer) -> Session:
    """The :class:`Session` of a viewer."""
    s = _SESSIONS.get(viewer)
    if s is None:
        s = _SESSIONS[viewer] = Session()
    return s


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type, kept up to date."""

    def __init__(self, viewer, layer_type: str = "Image", parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        viewer.layers.events.inserted.connect(self.refresh)
        viewer.layers.events.removed.connect(self.refresh)
        viewer.layers.events.changed.connect(self.refresh)
        self.refresh()

    def refresh(self, *_):
        current = self.currentText()
        names = [
            ly.name for ly in self.viewer.layers
            if ly.__class__.__name__ == self.layer_type
            and not ly.metadata.get("lazylabels", {}).get("prediction")
        ]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif self.viewer.layers.selection.active is not None and self.viewer.layers.selection.active.name in names:
            self.setCurrentText(self.viewer.layers.selection.active.name)
        self.blockSignals(False)
        if current != self.currentText():
            self.currentTextChanged.emit(self.currentText())

    def layer(self):
        """The chosen layer, or ``None``."""
        name = self.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


class LossPlot(QWidget):
    """A dependency-free loss curve: a polyline painted with QPainter (log-free, autoscaled)."""

    def __init__(self, parent=None, max_points: int = 2000) -> None:
        super().__init__(parent)
        self.values: list[tuple[int, float]] = []
        self.val_points: list[tuple[int, float]] = []
        self.max_points = max_points
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(240, 110)

    def clear(self) -> None:
        self.values.clear()
        self.val_points.clear()
        self.update()

    def add(self, iteration: int, loss: float) -> None:
        self.values.append((iteration, float(loss)))
        if len(self.values) > self.max_points:  # keep every other point: bounded memory
            self.values = self.values[::2]
        self.update()

    def add_validation(self, iteration: int, dice: float) -> None:
        self.val_points.append((iteration, float(dice)))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = self.rect().adjusted(30, 6, -6, -14)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        p.setPen(QPen(QColor(90, 90, 90)))
        p.drawRect(r)
        if len(self.values) < 2:
            p.setPen(QColor(160, 160, 160))
            p.drawText(r, Qt.AlignmentFlag.AlignCenter, "loss curve")
            p.end()
            return
        xs = [v[0] for v in self.values]
        ys = [v[1] for v in self.values]
        x0, x1 = min(xs), max(xs)
        y0, y1 = 0.0, max(ys) * 1.05 or 1.0
        sx = r.width() / max(1, x1 - x0)
        sy = r.height() / max(1e-12, y1 - y0)
        poly = QPolygonF([QPointF(r.left() + (x - x0) * sx, r.bottom() - (y - y0) * sy) for x, y in self.values])
        p.setPen(QPen(QColor(80, 170, 255), 1.5))
        p.drawPolyline(poly)
        p.setPen(QColor(200, 200, 200))
        p.drawText(2, r.top() + 10, f"{y1:.2g}")
        p.drawText(2, r.bottom(), "0")
        p.drawText(r.left(), self.height() - 2, f"it {x0}")
        p.drawText(r.right() - 50, self.height() - 2, f"{x1}")
        if self.val_points:
            p.setPen(QPen(QColor(255, 190, 60), 2))
            for it, d in self.val_points:
                if it < x0 or d != d:  # NaN
                    continue
                px = r.left() + (it - x0) * sx
                py = r.bottom() - d * r.height()  # dice in [0, 1] on the same box
                p.drawEllipse(QPointF(px, py), 2.5, 2.5)
        p.end()
