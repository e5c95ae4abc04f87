"""Small pieces shared by the dock widgets: error notifications (one per error), layer
pickers, path rows, run/stop buttons, the loss curve, torch thread limits, the background
warm-up of torch (so that no click imports it on the GUI thread) and a per-viewer session:
the project folder and the model trained or loaded last, kept in ``<project>/models/``."""

from __future__ import annotations

import ctypes
import functools
import gc
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
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


# ---------------------------------------------------------------------------- warm-up
_WARM = threading.Event()
_WARM_LOCK = threading.Lock()
_WARM_THREAD: threading.Thread | None = None
_WARM_ERROR: list[BaseException] = []


def _dlopen_torch_libraries() -> None:
    """Load torch's large shared libraries with ``dlopen`` called through ctypes, which
    releases the interpreter lock for the call (the import of ``torch._C`` holds it for the
    whole load, long enough to freeze the viewer: docs/benchmarks.md, "Viewer freezes while
    training"). The import then finds them loaded. Linux only; a failure just leaves the work
    to the import."""
    if not sys.platform.startswith("linux"):
        return
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return
    libdir = Path(spec.origin).parent / "lib"
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):  # pragma: no cover - no dlopen in the process
        return
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for name in ("libc10.so", "libtorch_cpu.so", "libtorch.so", "libtorch_python.so"):
        if (libdir / name).exists():
            dlopen(os.fsencode(libdir / name), os.RTLD_NOW | os.RTLD_LOCAL)


def _warm_up() -> None:
    """The warm-up thread's work: every import the training and prediction workers need, and
    one Adam step (its first step imports more of torch)."""
    was_enabled = gc.isenabled()
    # Importing torch creates millions of objects: with the collector on, its full passes
    # hold the interpreter lock long enough to freeze the viewer, many times over.
    gc.disable()
    try:
        _dlopen_torch_libraries()
        import torch
        import torch.optim

        try:
            import torch._dynamo  # noqa: F401 - the optimisers import it on their first step
        except Exception:  # pragma: no cover - optional in some torch builds
            pass
        from ..core import checkpoint, predict, quality, train  # noqa: F401

        w = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([w])
        w.sum().backward()
        opt.step()
    except BaseException as e:  # noqa: BLE001 - reported when a job needs torch
        log.warning("warming up torch failed: %s", e)
        _WARM_ERROR.append(e)
    finally:
        # Move the new objects straight to the oldest generation: left in the youngest, the
        # next collections would walk the millions of them generation by generation, holding
        # the interpreter lock (the viewer freezes). Frozen for good they could never be freed;
        # unfrozen at once, nothing is kept alive that a full collection would free.
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        _WARM.set()


def start_warm_up() -> None:
    """Import torch and the engine in a background thread, once per process; widgets call it
    when they are created (plugin load) so that Start and Predict find everything imported."""
    global _WARM_THREAD
    with _WARM_LOCK:
        if _WARM_THREAD is not None or _WARM.is_set():
            return
        if "torch._dynamo" in sys.modules and "napari_lazylabels.core.train" in sys.modules:
            _WARM.set()  # already imported (a script, a test session)
            return
        _WARM_THREAD = threading.Thread(target=_warm_up, name="lazylabels-warm-up", daemon=True)
        _WARM_THREAD.start()


def is_warm() -> bool:
    """Whether the warm-up has finished (or was never needed)."""
    return _WARM.is_set()


def when_warm(callback, poll_ms: int = 30, done: threading.Event | None = None, start=None) -> None:
    """Call ``callback()`` on the main thread once the warm-up has finished, without blocking
    the event loop meanwhile (a single-shot timer polls). ``start`` begins a warm-up (default
    :func:`start_warm_up`) and ``done`` says when it has finished (default its event): a
    widget with more to import passes its own."""
    from qtpy.QtCore import QTimer

    (start or start_warm_up)()
    done = done or _WARM
    if done.is_set():
        callback()
        return

    def poll():
        if done.is_set():
            callback()
        else:
            QTimer.singleShot(poll_ms, poll)

    QTimer.singleShot(poll_ms, poll)


def warm_torch() -> None:
    """Finish the warm-up on the calling thread (blocking): for scripts and tests that need
    torch imported before a worker starts."""
    start_warm_up()
    _WARM.wait()


def quiet_worker(func, *args, error_prefix: str, on_error=None, **kwargs):
    """An unstarted napari ``thread_worker`` of ``func(*args, **kwargs)`` that reports its
    exception once, as one line ``"<error_prefix>: <message>"``.

    A worker created without an ``errored`` handler re-raises its exception on the main
    thread, where napari shows it as a notification with a traceback: with the widget's own
    notification the user would see every error twice. The worker is made with ``ignore_errors``
    (and napari's relay, where present, disconnected); the traceback goes to the log.
    ``on_error(exc)`` (optional) runs after, e.g. to put the line in the widget's status.
    """
    from napari.qt.threading import thread_worker

    worker = thread_worker(func, start_thread=False, ignore_errors=True)(*args, **kwargs)
    relay = getattr(worker, "_relay_error", None)
    if relay is not None:
        try:
            worker.errored.disconnect(relay)
        except (TypeError, RuntimeError):  # not connected in this napari version
            pass

    def handle(exc):
        log.error("%s: %s", error_prefix, exc, exc_info=(type(exc), exc, exc.__traceback__))
        show_error(f"{error_prefix}: {exc}")
        if on_error is not None:
            on_error(exc)

    worker.errored.connect(handle)
    return worker


def progress_to(pbar, done: int, total: int | None = None, desc: str | None = None) -> None:
    """Move a napari progress bar to ``done`` of ``total`` (``None``: keep its total).

    A new ``desc`` starts a new phase, counted from 0. napari's bar counts by increments
    (``update``) while the workers report how far they are: this turns one into the other,
    backwards too (the bar may process events while it updates, so a later report can be
    shown before an earlier one).
    """
    if desc is not None and pbar.desc != desc:
        pbar.set_description(desc)
        pbar.n = 0
    if total is not None and pbar.total != total:
        pbar.total = total
    if done != pbar.n:
        pbar.update(done - pbar.n)


def show_warning(message: str) -> None:
    """Show a napari warning notification."""
    from napari.utils.notifications import show_warning as _show

    _show(message)


# ---------------------------------------------------------------------------- models and projects
MODELS = "models"
"""The project folder's sub-folder of models (``<project>/models/<name>/best.pt``)."""
MODEL_LINK = "current.json"
"""``<project>/models/current.json``: ``{"model": path}``, the project's current model (a
folder inside ``models/`` as a relative path, or a folder elsewhere as an absolute one)."""


def temp_model_base() -> Path:
    """Where models go while no project is known: ``$LAZYLABELS_MODEL_DIR``, else the user's
    data folder (``~/.local/share/napari-lazylabels/unsaved-models`` on Linux; it survives a
    reboot, unlike the temp dir), else the temp dir."""
    env = os.environ.get("LAZYLABELS_MODEL_DIR")
    if env:
        return Path(env)
    try:
        import platformdirs  # a napari dependency

        return Path(platformdirs.user_data_dir("napari-lazylabels")) / "unsaved-models"
    except ImportError:  # pragma: no cover - napari always brings it
        return Path(tempfile.gettempdir()) / "napari-lazylabels"


def default_model_dir() -> Path:
    """A fresh model folder under :func:`temp_model_base` (moved into the project when the
    project is saved)."""
    base = temp_model_base()
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="model-", dir=base))


def is_temporary(path) -> bool:
    """Whether a model folder lies under :func:`temp_model_base` (made by the widgets before
    a project was known; it moves into the project when the project is saved)."""
    try:
        Path(path).resolve().relative_to(temp_model_base().resolve())
        return True
    except ValueError:
        return False


def has_model(path) -> bool:
    """Whether a folder holds a trained model (``best.pt`` or ``latest.pt``)."""
    p = Path(path)
    return p.is_dir() and ((p / "best.pt").exists() or (p / "latest.pt").exists())


def require_model(path) -> Path:
    """The model folder (or ``.pt`` file) ``path``; a ``ValueError`` in widget words when it
    holds no model (the core's message points to the CLI)."""
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".pt":
        return p
    if not p.exists():
        raise ValueError(f"There is no folder {p}: choose a model folder with '…', or train one (Train widget, Start).")
    if not has_model(p):
        raise ValueError(
            f"{p} holds no trained model (best.pt / latest.pt): choose another model folder with '…', "
            "or train one into it (Train widget, Start)."
        )
    return p


def project_of(viewer) -> Path | None:
    """The project (dataset folder) the viewer's annotated images were opened from or saved
    to: the ``source`` the reader and the annotation widget keep in the image layer's
    metadata; ``None`` when no image has one."""
    from ..core.io import is_dataset

    for layer in list(viewer.layers):
        if layer.__class__.__name__ != "Image":
            continue
        meta = layer.metadata.get("lazylabels", {}) or {}
        source = meta.get("source")
        if source and not meta.get("prediction") and is_dataset(source):
            return Path(source)
    return None


def new_project_model_dir(project) -> Path:
    """``<project>/models/model`` or, when that holds a model, the first free ``model-<n>``."""
    models = Path(project) / MODELS
    path, n = models / "model", 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = models / f"model-{n}"
    return path


def link_model(project, model_dir) -> None:
    """Record ``model_dir`` as the project's current model (``models/current.json``)."""
    from ..core.io import atomic_write_json

    project, model_dir = Path(project), Path(model_dir)
    try:
        ref = str(model_dir.resolve().relative_to((project / MODELS).resolve()))
    except ValueError:
        ref = str(model_dir.resolve())
    atomic_write_json(project / MODELS / MODEL_LINK, {"model": ref})


def project_model(project) -> Path | None:
    """The project's current model folder: the one ``models/current.json`` names, else the
    most recently written one under ``models/``; ``None`` when there is none."""
    models = Path(project) / MODELS
    link = models / MODEL_LINK
    if link.is_file():
        try:
            ref = json.loads(link.read_text()).get("model")
        except (OSError, ValueError, AttributeError) as e:
            log.warning("ignoring %s: %s", link, e)
            ref = None
        if ref:
            path = Path(ref) if Path(ref).is_absolute() else models / ref
            if has_model(path):
                return path
    if not models.is_dir():
        return None
    found = [p for p in models.iterdir() if has_model(p)]

    def written(p: Path) -> float:
        return max(f.stat().st_mtime for f in p.glob("*.pt"))

    return max(found, key=written) if found else None


def project_changed(viewer=None, root=None) -> None:
    """Hook for the annotation widget and the writer: a project was saved to (or opened
    from) ``root``. The viewer's session adopts it: a model kept only in the temp folder
    moves into ``<root>/models/``, and a project with a model restores it."""
    try:
        if viewer is None:
            from napari import current_viewer

            viewer = current_viewer()
        if viewer is None:
            return
        session(viewer).sync_project(viewer, root)
    except Exception:  # noqa: BLE001 - saving the labels matters more; the log says why
        log.exception("could not adopt the project %s", root)


@dataclass
class Session:
    """What the widgets of one viewer share: the project folder and the model folder trained
    or loaded last.

    Attributes:
        model_dir: the current model folder (``None``: no model yet).
        project: the project (dataset folder) of the viewer's images, ``None`` until one is
            opened or saved.
        busy: model folders a training run is writing (not moved meanwhile).
        listeners: ``callback(model_dir)`` called when the model changes.
        project_listeners: ``callback(project)`` called when the project changes.
    """

    model_dir: Path | None = None
    project: Path | None = None
    busy: set = field(default_factory=set)
    listeners: list = field(default_factory=list)
    project_listeners: list = field(default_factory=list)
    _linked: tuple = (None, None)  # (project, model) written to models/current.json last

    def set_model(self, path) -> None:
        self.model_dir = Path(path) if path else None
        link = (self.project, self.model_dir)
        if None not in link and link != self._linked and has_model(self.model_dir):
            try:
                link_model(self.project, self.model_dir)
                self._linked = link
            except OSError as e:
                log.warning("could not link the model into the project: %s", e)
        _call(self.listeners, self.model_dir)

    def sync_project(self, viewer, root=None) -> None:
        """Adopt the viewer's project (``root``, else :func:`project_of`): move a temporary
        model into it, or restore the project's model when there is no model yet."""
        project = Path(root) if root is not None else project_of(viewer)
        if project is None:
            return
        changed = project != self.project
        self.project = project
        model = self.model_dir
        if model is not None and is_temporary(model) and has_model(model) and model not in self.busy:
            target = new_project_model_dir(project)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(model), str(target))
            log.info("moved the model from %s into the project: %s", model, target)
            self.set_model(target)
        elif changed and (model is None or (is_temporary(model) and not has_model(model))):
            restored = project_model(project)
            if restored is not None:
                self.set_model(restored)
        elif changed and model is not None and has_model(model) and model not in self.busy:
            self.set_model(model)  # links it into the project
        if changed:
            _call(self.project_listeners, project)


def _call(callbacks: list, value) -> None:
    for cb in list(callbacks):
        try:
            cb(value)
        except RuntimeError:  # a deleted widget
            callbacks.remove(cb)


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session(viewer) -> Session:
    """The :class:`Session` of a viewer (the real viewer behind napari's proxy, so that every
    widget of the viewer shares one)."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    s = _SESSIONS.get(viewer)
    if s is None:
        s = _SESSIONS[viewer] = Session()
        vref, sref = weakref.ref(viewer), weakref.ref(s)

        def on_inserted(*_):
            v, ss = vref(), sref()
            if v is not None and ss is not None:
                ss.sync_project(v)

        viewer.layers.events.inserted.connect(on_inserted)
        s._on_inserted = on_inserted  # kept alive with the session
        s.sync_project(viewer)
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
