"""Predict dock widget: tiled prediction of chosen image layers in a ``thread_worker``.

Results are pushed as ``"<image> classes"`` (Labels), ``"<image> instances"`` (Labels),
``"<image> interfaces"`` and ``"<image> probabilities"`` (Image); running again updates
those layers in place. How instances are cut (interface threshold, smallest object, necks) is
set in the widget; **Re-split** applies new settings to the classes and interfaces layers
already there, without running the network again.
"""

from __future__ import annotations

import gc
import html
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
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

from ..core import options
from ..core.jobs import Cancelled, Progress, mapped
from ..core.options import DEFAULT_TTA, DEVICES, LARGE_IMAGE_TTA, LARGE_TTA_PIXELS, TTA_CHOICES
from . import _colors, _common, _layers, _viewer
from ._common import (
    limit_torch_threads,
    notify_errors,
    path_row,
    quiet_worker,
    run_stop_buttons,
    session,
    show_error,
    show_info,
)

log = logging.getLogger(__name__)

# PredictConfig.tta choices (the default preselected), and the large_image_tta choices ("same":
# the orientations above for every size; 8 only that way), from core.options (no torch).
TTA_ITEMS = tuple(f"{n} (off)" if n == 1 else str(n) for n in TTA_CHOICES)
LARGE_TTA_ITEMS = (*(str(n) for n in TTA_CHOICES[:-1]), "same")


def _import_post_processing() -> None:
    """The imports a prediction needs beyond torch and the engine: the instance step's
    scikit-image parts and what napari imports for its first Labels layer (pandas, scipy and
    scikit-image modules)."""
    import pandas  # noqa: F401
    import skimage.color  # noqa: F401
    import skimage.exposure  # noqa: F401
    from skimage.morphology import h_maxima  # noqa: F401 - imported lazily by the instance step
    from skimage.segmentation import watershed  # noqa: F401


def _warm_post_processing() -> None:
    """Background thread: after the shared warm-up (torch and the engine), the imports of
    :func:`_import_post_processing`, with the collector off (importing creates many objects
    and full collections would hold the interpreter lock)."""
    from ._common import _WARM

    _WARM.wait()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _import_post_processing()
    except BaseException as e:  # noqa: BLE001 - the main-thread warm-up imports again and reports
        log.warning("warming up the prediction imports failed: %s", e)
    finally:
        # the imported objects straight to the oldest generation, as the shared warm-up does:
        # the young collections would otherwise walk them all, holding the interpreter lock
        gc.freeze()
        gc.unfreeze()
        if was_enabled:
            gc.enable()
        _POST_WARM.set()


_POST_WARM = threading.Event()
_POST_WARM_LOCK = threading.Lock()
_POST_WARM_STARTED = False


def start_warm_up() -> None:
    """Start importing everything a prediction needs in background threads, once per process
    (the widget calls it when the viewer has drawn it): torch and the engine
    (:func:`._common.start_warm_up`, shared with the Train widget), then the post-processing
    and napari's Labels imports: on the main thread they would freeze the viewer for seconds."""
    global _POST_WARM_STARTED
    _common.start_warm_up()
    with _POST_WARM_LOCK:
        if _POST_WARM_STARTED:
            return
        _POST_WARM_STARTED = True
    threading.Thread(target=_warm_post_processing, name="lazylabels-predict-warm-up", daemon=True).start()


def when_warm(callback, poll_ms: int = 30) -> None:
    """Call ``callback()`` on the main thread once :func:`start_warm_up` has finished, without
    blocking the event loop meanwhile."""
    _common.when_warm(callback, poll_ms, done=_POST_WARM, start=start_warm_up)


def warm_imports() -> None:
    """Everything a prediction needs, imported on the calling thread if the background warm-up
    has not done it yet, and napari's first Labels layer made (the first one imports the rest
    of napari's labels machinery: made here, not when the first prediction is pushed)."""
    global _WARMED
    if _WARMED:
        return
    import torch  # noqa: F401
    from napari.layers import Labels

    from ..core import checkpoint, predict  # noqa: F401

    _import_post_processing()
    Labels(np.zeros((2, 2), np.uint8))
    _WARMED = True


_WARMED = False

CPU_BATCH = 2
"""Tiles per network pass on a CPU: as fast per tile as 8 (docs/benchmarks.md, "Prediction
in the viewer"), a quarter of the activations, and a Stop waits for one such pass."""


def _status(name: str, phase: str, done: int, total: int) -> str:
    """The status line of a worker's event: ``"name: phase done/total"`` (no count when
    ``total`` is 0: an outcome, not a step)."""
    return f"{name}: {phase} {done}/{total}" if total else f"{name}: {phase}"


def _megapixels(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}x{side} px" if side * side == pixels else f"{pixels / 1e6:.1f} MP"


@dataclass(frozen=True)
class PredictEvent(Progress):
    """A Predict worker's event: a core :class:`~napari_lazylabels.core.jobs.Progress` of image
    layer ``image`` (``phase`` ``done`` of ``total``), and when that image is done the
    ``layers`` (layer data tuples, built in the worker) and instance ``settings``; ``model``
    (one line on what the model is worth, [warnings]) once the model is loaded."""

    image: str = ""
    layers: tuple = ()
    settings: dict | None = None
    model: tuple[str, list[str]] | None = None
    refresh: tuple = ()  # names of lazy layers whose files the worker has written to since
    saved: str = ""  # where a block-by-block prediction was written, when done
    info: str = ""  # one line to notify (a block-by-block prediction going on from a stopped one)


def _image_events(job, image: str, tiles: str = "tiles", plane: int = 0, planes: int = 1, phase: str | None = None):
    """Run a core job inside a worker generator: each of its events becomes a
    :class:`PredictEvent` of ``image``; returns the job's result (``yield from``).

    ``"tiles"`` events are named ``tiles`` and counted over ``planes`` planes of which this
    is ``plane``; the others keep their phase, or are named ``phase`` when given."""

    def event(ev: Progress) -> PredictEvent:
        if ev.phase == "tiles":
            return PredictEvent(tiles, plane * ev.total + ev.done, planes * ev.total, image)
        return PredictEvent(phase or ev.phase, ev.done, ev.total, image)

    return (yield from mapped(job, event))


def _tiles_phase(n: int, note: str = "") -> str:
    """The name of the tiles phase: ``"tiles (2 orientations, large image)"``."""
    return f"tiles ({n} orientation{'s' if n > 1 else ''}{', ' + note if note else ''})"


def _predict_worker_fn(model_path, device, tile, jobs, post=None, tta=None, large_tta="default", should_stop=None):
    """Worker generator: yields a :class:`PredictEvent` through every phase (``"loading"``,
    ``"tiles (N orientations)"`` over all planes, then ``"classes"``, ``"instances"`` (and
    ``"resizing"`` at a working scale) per plane, ``"layers"``), one with the ``model``'s
    report, and one with the ``layers`` per image, built here
    (:func:`_layers.prediction_layer_data`) so the main thread only swaps arrays in. Returns
    True when ``should_stop()`` ended it (:mod:`~napari_lazylabels.core.jobs`: asked at every
    event and between orientation passes), else False.

    ``post``: :class:`PredictConfig` fields of the instance step (``interface_threshold``,
    ``min_object_size`` (``None`` = the model's automatic size), ``neck_depth``); ``settings``
    are :meth:`Predictor.instance_settings`, kept for a later re-split. ``tta``: orientations
    per tile (:attr:`PredictConfig.tta`; ``None`` = its default); ``large_tta``: orientations
    for large images (:attr:`PredictConfig.large_image_tta`; ``None`` = ``tta`` for every
    size, ``"default"`` = its default)."""
    from ..core.checkpoint import load_model
    from ..core.model import resolve_device
    from ..core.predict import PredictConfig, Predictor
    from ..core.stacks import StackIds

    name = jobs[0][0] if jobs else ""
    try:
        yield PredictEvent("loading", 0, 1, name)
        model, ck = load_model(model_path, "cpu")
        extra = {} if tta is None else {"tta": int(tta)}
        if large_tta != "default":
            extra["large_image_tta"] = None if large_tta is None else int(large_tta)
        if resolve_device(device).type == "cpu":
            extra["batch_size"] = CPU_BATCH
        predictor = Predictor(model, ck.model_config, PredictConfig(device=device, tile=tile, **extra, **(post or {})))
        for job_name, planes in jobs:  # refuse an image of other channels before predicting any
            big = planes.plane_pixels > options.BLOCKWISE_PIXELS  # not read whole: a corner will do
            predictor.check(planes.lazy(0)[:16, :16] if big else planes[0], what=job_name)
        settings = predictor.instance_settings()
        yield PredictEvent("loading", 1, 1, name, model=_model_report(ck, jobs))
        for name, planes in jobs:
            if planes.plane_pixels > options.BLOCKWISE_PIXELS:
                yield from _predict_blockwise(predictor, ck, settings, name, planes, should_stop)
                continue
            preds = []
            ids = StackIds(predictor.predict_config.link_slices) if len(planes) > 1 else None
            for i, plane in enumerate(planes):
                n = predictor.orientations(tuple(round(d * ck.model_config.scale) for d in plane.shape[:2]))
                tiles = _tiles_phase(n, "large image" if n != predictor.predict_config.tta else "")
                job = predictor.predict_iter(plane, should_stop=should_stop)
                pred = yield from _image_events(job, name, tiles, i, len(planes))
                if ids is not None and pred.instances is not None:
                    pred.instances = ids.add(pred.instances)
                # Only p(background) is shown: keep one plane of the probabilities.
                pred.probabilities = np.ascontiguousarray(pred.probabilities[:1])
                preds.append(pred)
            yield PredictEvent("layers", 0, 1, name)
            layer_data = [_layers.compact_labels(d) for d in _layers.prediction_layer_data(name, preds, ck.classes, settings)]
            del preds
            yield PredictEvent("layers", 1, 1, name, layers=tuple(layer_data), settings=settings)
    except Cancelled:
        return True
    except RuntimeError as e:  # superqt drops a worker's RuntimeError without "finished"
        raise WorkerError(str(e)) from e
    return False


REFRESH_SECONDS = 2.0
"""How often the layers of a block-by-block prediction are redrawn while it is written."""


def prediction_store(name: str) -> Path:
    """Where the Predict widget writes the OME-Zarr of an image predicted block by block:
    ``<user cache>/napari-lazylabels/predictions/<name>.ome.zarr`` (replaced by the next
    prediction of that image with another model or other settings; gone on with when the last
    one was stopped, shown as it is when it was finished; the notification says where, to
    copy or open it later)."""
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "napari-lazylabels" / "predictions" / f"{_layers._stem(name)}.ome.zarr"


def _resume_key(predictor, ck, name: str, image) -> dict:
    """What identifies a block-by-block prediction of the widget, so that one stopped (Stop,
    napari closed, the machine down) goes on where it stopped when the same image is predicted
    with the same model and settings: the layer's name, a fingerprint of its pixels
    (:func:`~napari_lazylabels.core.blocks.image_fingerprint`), the weights' digest and the
    prediction settings."""
    import dataclasses

    from ..core.blocks import image_fingerprint

    model = ck.weights_sha256
    if model is None and ck.path is not None:  # a checkpoint from before the digest
        model = f"{ck.path}:{Path(ck.path).stat().st_mtime_ns}"
    settings = dataclasses.asdict(predictor.predict_config)
    settings.pop("device", None)  # the same maps on CPU and GPU, to their rounding
    return {"layer": name, "fingerprint": image_fingerprint(image), "model": model, "predict": settings}


def _predict_blockwise(predictor, ck, settings: dict, name: str, planes, should_stop=None):
    """Worker generator for an image above ``BLOCKWISE_PIXELS``: predict it block by block
    (:func:`~napari_lazylabels.core.blocks.iter_predict_ome_zarr`) from the layer's lazy data
    into :func:`prediction_store`, written in place; its classes and instances layers (over the
    zarr files, multiscale) come first, and are redrawn every :data:`REFRESH_SECONDS` as
    blocks are written. Memory stays bounded by the blocks, whatever the image's size. A run
    that was stopped goes on from its last block written (:func:`_resume_key`)."""
    import time

    from ..core.blocks import iter_predict_ome_zarr, ome_zarr_writer

    image = planes.lazy_image(name)
    path = prediction_store(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _resume_key(predictor, ck, name, image)
    writer = ome_zarr_writer(predictor, image, path, resume_key=key, atomic=False)
    layer_data = _layers.lazy_prediction_layer_data(name, {k: writer.levels(k) for k in ("classes", "instances")},
                                                    ck.classes, settings, store=path)
    names = tuple(d[1]["name"] for d in layer_data)
    yield PredictEvent("layers", 1, 1, name, layers=tuple(layer_data), settings=settings)
    if writer.complete:
        yield PredictEvent("saved", 1, 1, name, refresh=names,
                           info=f"{name}: already predicted with this model and these settings ({path})")
        return
    if writer.resumed:
        yield PredictEvent("resuming", 0, 1, name, info=f"{name}: going on with the prediction stopped earlier ({path})")
    n = predictor.orientations(tuple(round(d * predictor.config.scale) for d in image.plane_shape))
    tiles = _tiles_phase(n, "block by block")
    last = time.perf_counter()

    def event(ev: Progress) -> PredictEvent:  # the layers are redrawn every REFRESH_SECONDS
        nonlocal last
        refresh = ()
        if time.perf_counter() - last > REFRESH_SECONDS:
            refresh, last = names, time.perf_counter()
        return PredictEvent(tiles if ev.phase == "tiles" else ev.phase, ev.done, ev.total, name, refresh=refresh)

    job = iter_predict_ome_zarr(predictor, image, path, should_stop=should_stop, resume_key=key, writer=writer)
    yield from mapped(job, event)
    yield PredictEvent("saved", 1, 1, name, refresh=names, saved=str(path))


def _model_report(ck, jobs) -> tuple[str, list[str]]:
    """``(one line on what the model is worth, [warnings])`` for a loaded checkpoint and the
    ``jobs`` about to be predicted (a colour model on gray images is named: it runs, on
    three equal channels it never saw)."""
    from ..core.prepare import image_channels
    from ..core.quality import describe_score, warnings_for

    notes = list(warnings_for(ck.metrics, ck.iteration))
    gray = [name for name, planes in jobs if planes and image_channels(planes[0]) == 1]
    if ck.model_config.in_channels == 3 and ck.model_config.channels is None and gray:
        notes.append(
            f"The model was trained on colour (RGB) images; {', '.join(gray)} is gray, so each pixel is "
            "repeated into three equal channels the model never saw. Train a model on gray images for it."
        )
    legend = _colors.legend_html("prediction", ck.classes)
    return f"Model: {ck.iteration} iterations, {describe_score(ck.metrics, best=True)}<br>Classes: {legend}", notes


class WorkerError(Exception):
    """A worker's RuntimeError (e.g. from torch), re-raised as an exception superqt reports:
    it swallows RuntimeErrors as "aborted thread" and never emits ``finished``, which would
    leave the widget busy for good."""


def _resplit_worker_fn(jobs, neck_depth: float = 0.0, should_stop=None, link_slices: bool = False, stores=()):
    """Worker generator: instances again from kept class and interface maps (no network).

    ``jobs``: ``[(name, classes (N, H, W), interfaces (N, H, W) or None, interface_threshold,
    min_object_size, the model's recorded "auto" values)]``. Each plane is cut by the core's
    instance step (:func:`~napari_lazylabels.core.predict.iter_instances_from_prediction`,
    the job form of ``instances_from_prediction``: it reports its components and stops
    inside a plane). Yields :class:`PredictEvent` ``"instances"`` (components of a plane, as
    they are cut) and one with the image's instances layer in ``layers`` and the ``settings``
    used; returns True when ``should_stop()`` ended it, else False. The planes of a stack get
    ids unique across it, linked between slices with ``link_slices``
    (:class:`~napari_lazylabels.core.stacks.StackIds`).

    ``stores``: ``[(name, OME-Zarr folder, interface_threshold, min_object_size)]`` of images
    predicted block by block, cut again on disk
    (:func:`~napari_lazylabels.core.blocks.iter_resplit_ome_zarr`); their instances layer is
    redrawn (``refresh``) when its folder is replaced."""
    from ..core.blocks import iter_resplit_ome_zarr
    from ..core.jobs import stoppable
    from ..core.predict import iter_instances_from_prediction
    from ..core.stacks import StackIds

    for name, store, threshold, min_size in stores:
        job = iter_resplit_ome_zarr(store, threshold, min_size, neck_depth, link_slices, should_stop)
        try:
            n = yield from mapped(job, lambda ev, name=name: PredictEvent(ev.phase, ev.done, ev.total, name))
        except Cancelled:
            return True
        yield PredictEvent(f"{n} objects, cut again block by block", 0, 0, name,
                           refresh=(_layers.prediction_layer_name(name, "instances"),),
                           info=f"{name}: {n} objects, cut again block by block in {store}")

    for name, classes, interfaces, threshold, min_size, auto in jobs:
        out = np.zeros(classes.shape, np.int32)
        n = classes.shape[0]
        ids = StackIds(link_slices)
        try:
            for i in range(n):
                job = iter_instances_from_prediction(
                    np.asarray(classes[i]), None if interfaces is None else np.asarray(interfaces[i], np.float32),
                    threshold, min_size, neck_depth=neck_depth,
                )
                phase = "instances" if n == 1 else f"instances (plane {i + 1}/{n})"
                cut = yield from _image_events(stoppable(job, should_stop), name, phase=phase)
                out[i] = ids.add(cut) if n > 1 else cut
        except Cancelled:
            return True
        settings = {"interface_threshold": threshold, "neck_depth": neck_depth, "min_object_size": min_size,
                    "link_slices": link_slices, **auto}
        layer = _layers.compact_labels(_layers.instances_layer_data(name, out if n > 1 else out[0], settings))
        yield PredictEvent("instances", 1, 1, name, layers=(layer,), settings=settings)
    return False


class PredictionRunner:
    """Runs a prediction worker for some image layers and pushes the layers back.

    Everything slow runs off the GUI thread: imports in the warm-up threads
    (:func:`start_warm_up`; :meth:`run` waits for them without blocking), and in the worker:
    loading the model, the tiles, post-processing and the layer data (the arrays shown). The
    main thread only adds the layers the first time and swaps their data afterwards (the same
    layer objects), one layer per turn of the event loop.

    Args:
        viewer: the napari viewer.
        device: ``"auto"``, ``"cuda"``, ``"mps"`` or ``"cpu"``.
        tile: tile side of the sliding window.
        tta: orientations each tile is predicted in (:attr:`PredictConfig.tta`; ``None`` =
            its default).
        large_tta: orientations for images above :attr:`PredictConfig.large_image_pixels`
            (:attr:`PredictConfig.large_image_tta`; ``None``: ``tta`` for every size;
            ``"default"``: its default).
        on_finished: called (no arguments) when the worker ends.
        on_progress: called with ``(image name, phase, done, total)``; phase ``"tiles"``,
            ``"classes"``, ``"instances"``, ...
        on_result: called with the list of layers pushed for one image.
        on_stopped: called with ``(image name)`` when a Stop ended the worker.
        on_model: called with ``(line, [warnings])`` once the model is loaded: what its
            validation score measures and what is wrong with it, if anything.
        post: instance settings (:class:`PredictConfig` fields ``interface_threshold``,
            ``min_object_size``, ``neck_depth``, ``link_slices``); default: the model's
            defaults.
    """

    def __init__(self, viewer, device: str = "auto", tile: int = 256, on_finished=None, on_progress=None,
                 on_result=None, post: dict | None = None, tta: int | None = None, large_tta="default",
                 on_stopped=None, on_model=None) -> None:
        import threading

        self.viewer = viewer
        self.device = device
        self.tile = tile
        self.tta = tta
        self.large_tta = large_tta
        self.post = dict(post or {})
        self.on_finished = on_finished
        self.on_progress = on_progress
        self.on_result = on_result
        self.on_stopped = on_stopped
        self.on_model = on_model
        self.worker = None
        self.pushed: list[str] = []
        self.stopped = False
        self.last_progress: tuple | None = None
        self.tiles_phase = ""  # e.g. "tiles (2 orientations, large image)"
        self._stop = threading.Event()
        self._pbar = None
        self._pending: list = []  # ("layer", layer data tuple) to push, ("done", on_result) marks
        self._batch: list = []  # the layers pushed since the last mark
        self._worker_done = False
        self._frozen = False
        self.waiting = False  # run() was called; the worker starts when the imports are warm

    def run(self, image_layers, model_path) -> None:
        """Start predicting ``image_layers`` with the model at ``model_path``."""
        if model_path is None:
            raise ValueError("No model yet: train one (Train widget) or load a model folder.")
        jobs = [(ly.name, _layers.Planes(ly)) for ly in image_layers]  # read by the worker, plane by plane
        if not jobs:
            raise ValueError("Choose at least one image layer to predict.")

        def launch():
            self.waiting = False
            if self._stop.is_set():  # stopped before it started
                self.stopped = True
                if self.on_stopped is not None:
                    self.on_stopped(jobs[0][0])
                self._finish_now()
                return
            try:
                warm_imports()  # the rest, if the background warm-up failed
                limit_torch_threads()
                worker = quiet_worker(
                    _predict_worker_fn, str(model_path), self.device, self.tile, jobs, self.post, self.tta,
                    self.large_tta, self._stop.is_set, error_prefix="Prediction failed",
                )
                self._start(worker, "Predicting")
            except Exception as e:  # noqa: BLE001 - every error must reach the user
                log.exception("starting the prediction failed")
                show_error(f"Prediction failed: {e}")
                self._finish_now()

        # The first Predict of a session waits for the background imports without blocking.
        self.waiting = True
        if self.on_progress is not None and not _POST_WARM.is_set():
            self.on_progress(jobs[0][0], "importing torch and scikit-image", 0, 1)
        when_warm(launch)

    def resplit(self, image_names, settings: dict) -> None:
        """Instances again for ``image_names`` from their ``"<image> classes"`` and
        ``"<image> interfaces"`` layers, with ``settings`` (``interface_threshold`` and
        ``min_object_size``, ``None`` for the model's own, as recorded when it predicted,
        ``neck_depth`` and ``link_slices``); the ``"<image> instances"`` layers are updated in
        place."""
        from ..core.predict import recorded_instance_settings

        jobs, stores = [], []
        for name in image_names:
            store = _layers.blockwise_store(self.viewer.layers, name)
            if store is not None:  # cut again on disk, block by block
                stores.append((name, store, settings.get("interface_threshold"), settings.get("min_object_size")))
                continue
            kept = _layers.prediction_maps(self.viewer.layers, name)
            if kept is None:
                raise ValueError(f"No prediction of '{name}' yet: press Predict first, then Re-split.")
            classes, interfaces, recorded = kept
            auto = {k: recorded[k] for k in ("auto_interface_threshold", "auto_min_object_size") if k in recorded}
            threshold, min_size = recorded_instance_settings(
                auto, settings.get("interface_threshold"), settings.get("min_object_size")
            )
            jobs.append((name, classes, interfaces, threshold, min_size, auto))
        if not jobs and not stores:
            raise ValueError("Choose at least one predicted image to re-split.")
        worker = quiet_worker(
            _resplit_worker_fn, jobs, settings.get("neck_depth", 0.0), self._stop.is_set,
            bool(settings.get("link_slices", False)), stores, error_prefix="Re-splitting instances failed",
        )
        self._start(worker, "Splitting instances")

    def _start(self, worker, desc: str) -> None:
        """Run ``worker`` (a :func:`._common.quiet_worker`: its error is shown once, by it)
        with a napari progress bar described by ``desc``."""
        from napari.utils import progress

        # A full garbage collection scans every tracked object of the viewer (hundreds of
        # thousands with torch loaded) holding the interpreter lock, and the worker's
        # allocations trigger them: the viewer would freeze that long, repeatedly, while
        # predicting (docs/benchmarks.md, "Prediction in the viewer"). Objects that exist now
        # are set aside until the run ends (not for good: a removed layer in a reference cycle
        # could then never be freed).
        gc.freeze()
        self._frozen = True
        self._pbar = progress(total=0, desc=desc)
        worker.yielded.connect(self._on_yield)
        worker.returned.connect(self._on_returned)
        worker.finished.connect(self._finished)
        self.worker = worker
        self._worker_done = False
        worker.start()

    def stop(self) -> None:
        """Ask the worker to stop: it checks between the network passes of a batch of tiles
        (one orientation of at most a few tiles) and in every step after the tiles."""
        if self.worker is not None or self.waiting:
            self._stop.set()

    def is_busy(self) -> bool:
        """Waiting for the imports, predicting, or pushing layers."""
        return self.waiting or self.worker is not None

    def _on_yield(self, ev: PredictEvent) -> None:
        """A worker's event: the model's report, an image's layers to push, or progress."""
        if ev.model is not None:
            if self.on_model is not None:
                self.on_model(*ev.model)
            return
        if ev.layers:
            self._pending += [("layer", d) for d in ev.layers]
            self._pending.append(("done", self.on_result))
            self._push_next()
            return
        for name in ev.refresh:  # lazy layers over files the worker writes (block by block)
            if name in self.viewer.layers:
                self.viewer.layers[name].refresh()
        if ev.saved:
            show_info(f"{ev.image}: predicted block by block into {ev.saved} (open it again with File > Open)")
        if ev.info:
            show_info(ev.info)
        self.last_progress = (ev.image, ev.phase, ev.done, ev.total)
        if ev.phase.startswith("tiles"):
            self.tiles_phase = ev.phase
        if self.on_progress is not None:
            self.on_progress(*self.last_progress)
        # napari's progress bar may process events (later items, even the end) while it
        # updates: it shows the latest item, whichever call gets here.
        if self._pbar is not None:
            _common.progress_to(self._pbar, ev.done, ev.total, desc=f"{ev.image}: {ev.phase}")

    def _on_returned(self, stopped) -> None:
        """The worker's result: True when a Stop ended it (:mod:`~napari_lazylabels.core.jobs`)."""
        if stopped is True:
            self.stopped = True
            if self.on_stopped is not None:
                self.on_stopped(self.last_progress[0] if self.last_progress else "")

    def _push_next(self) -> None:
        """Add or update the next pending layer, then come back on the next turn of the event
        loop: each layer's slicing and drawing is its own short pause, not one long one. A new
        layer (the first Predict of an image) is added as a one-pixel :func:`_viewer.placeholder`
        and filled in place on the next turn, so napari's cost of a new layer and the
        texture of its data are two pauses too."""
        from qtpy.QtCore import QTimer

        if not self._pending:
            return
        kind, payload = self._pending.pop(0)
        if kind == "done":
            layers, self._batch = self._batch, []
            if payload is not None:
                payload(layers)
        elif _viewer.needs_new_layer(self.viewer, payload) and not payload[1].get("multiscale"):
            _viewer.upsert_layers(self.viewer, [_viewer.placeholder(payload)])
            self._pending.insert(0, (kind, payload))  # filled on the next turn
        else:
            layers = _viewer.upsert_layers(self.viewer, [payload])
            self.pushed += [ly.name for ly in layers]
            self._batch += layers
        if self._pending:
            QTimer.singleShot(0, self._push_next)
        elif self._worker_done:
            self._finish_now()

    def _finished(self) -> None:
        self._worker_done = True
        if not self._pending:
            self._finish_now()

    def _finish_now(self) -> None:
        """The worker has ended and its layers are pushed: ``worker`` becomes ``None``."""
        self.worker = None
        if self._frozen:
            gc.unfreeze()  # into the oldest generation, collected again from now on
            self._frozen = False
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
        self.device.addItems(DEVICES)
        self.tile = QSpinBox()
        self.tile.setRange(32, 2048)
        self.tile.setSingleStep(32)
        self.tile.setValue(256)
        self.tta = QComboBox()
        self.tta.addItems(TTA_ITEMS)
        self.tta.setCurrentIndex(TTA_CHOICES.index(DEFAULT_TTA))
        self.tta.setToolTip(
            "Test-time augmentation: every tile is predicted mirrored in this many ways and the "
            "class probabilities are averaged. More orientations: somewhat more accurate, "
            "proportionally slower (1 = off, fastest)."
        )
        self.large_tta = QComboBox()
        self.large_tta.addItems(LARGE_TTA_ITEMS)
        self.large_tta.setCurrentText(str(LARGE_IMAGE_TTA))
        self.large_tta.setToolTip(
            f"Orientations for images above {_megapixels(LARGE_TTA_PIXELS)} (e.g. 4096x4096): "
            "prediction time grows with the pixels times the orientations, while the accuracy "
            "that more orientations add does not grow with the image. 'same': the "
            "orientations above for every size."
        )
        self._make_instance_fields()
        self.run_btn, self.stop_btn, self._run_row = run_stop_buttons("Predict", self.run, self.stop)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.model_info = QLabel("")  # what the model is worth (its score, warnings), its classes
        self.model_info.setWordWrap(True)
        self.model_info.setTextFormat(Qt.TextFormat.RichText)
        self._warned: set = set()
        form = QFormLayout()
        form.addRow("model", mrow)
        form.addRow("device", self.device)
        form.addRow("tile", self.tile)
        form.addRow("orientations", self.tta)
        form.addRow(f"  above {_megapixels(LARGE_TTA_PIXELS)}", self.large_tta)
        form.addRow("interface threshold", self.interface_threshold)
        form.addRow("smallest object", self.min_size)
        form.addRow("split necks", self.necks)
        form.addRow("stacks", self.link_slices)
        form.addRow("", self.resplit_btn)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("images to predict"))
        lay.addWidget(self.images)
        lay.addLayout(form)
        lay.addLayout(self._run_row)
        lay.addWidget(self.model_info)
        lay.addWidget(self.status)
        lay.addStretch(1)
        for ev in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed, napari_viewer.layers.events.changed):
            ev.connect(self.refresh)
        # imports off the GUI thread before the first Predict, once the dock is drawn
        QTimer.singleShot(500, start_warm_up)
        self._started = 0.0
        sess = session(napari_viewer)
        sess.listeners.append(self._on_model)
        if sess.model_dir is not None:
            self._on_model(sess.model_dir)
        self.refresh()

    def _make_instance_fields(self) -> None:
        """The fields of how instances are cut, and Re-split, which applies them without
        predicting again."""
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
        self.link_slices = QCheckBox("link objects across slices")
        self.link_slices.setToolTip(
            "In a stack (Z or T): an object that overlaps an object of the slice before (more "
            "than half of their union) keeps its id, so one cell through the stack is one label. "
            "Off: every object of every slice has its own id. Ids are unique across the stack "
            "either way."
        )
        self.resplit_btn = QPushButton("Re-split")
        self.resplit_btn.setToolTip("Cut the instances of the ticked images again with these settings (no network).")
        self.resplit_btn.clicked.connect(self.resplit)

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
        if self.is_running():
            show_info("A prediction is already running.")
            return
        path = self.model_dir.text().strip() or None
        if path is None and session(self.viewer).model_dir is not None:
            path = str(session(self.viewer).model_dir)
        if path is None:
            raise ValueError("No model yet: train one with the Train widget, or choose a model folder (…).")
        if not Path(path).exists():
            raise ValueError(f"No model folder at {path}: pick one written by the Train widget.")
        import time

        layers = self.chosen_layers()
        self.runner = self._runner()
        self._started = time.perf_counter()
        self.status.setText(f"Predicting {len(layers)} image layer(s)…")
        self._busy(True)
        try:
            self.runner.run(layers, path)  # the first of a session may say "importing ..." first
        except Exception:
            self._busy(False)
            self.runner = None
            raise

    def instance_settings(self) -> dict:
        """The instance settings of the form (``None`` for auto)."""
        return {
            "interface_threshold": float(self.interface_threshold.value()) or None,
            "min_object_size": self.min_size.value() or None,
            "neck_depth": float(self.necks.value()),
            "link_slices": self.link_slices.isChecked(),
        }

    @notify_errors
    def resplit(self, *_) -> None:
        """Cut the instances of the ticked, already predicted images again (no network)."""
        if self.is_running():
            show_info("Wait for the running prediction to finish, or press Stop.")
            return
        import time

        names = [ly.name for ly in self.chosen_layers()]
        self.runner = self._runner()
        self.runner.resplit(names, self.instance_settings())
        self._busy(True)
        self._started = time.perf_counter()
        self.status.setText(f"Re-splitting {len(names)} image layer(s)…")

    def _runner(self) -> PredictionRunner:
        return PredictionRunner(
            self.viewer, self.device.currentText(), self.tile.value(), on_finished=self._finished,
            on_progress=lambda n, ph, d, t: self.status.setText(_status(n, ph, d, t)),
            on_result=lambda layers: self.status.setText("Updated: " + ", ".join(ly.name for ly in layers)),
            on_stopped=self._stopped, on_model=self._model_report,
            post=self.instance_settings(), tta=int(self.tta.currentText().split()[0]),
            large_tta=None if self.large_tta.currentText() == "same" else int(self.large_tta.currentText()),
        )

    def _model_report(self, line: str, warnings: list[str]) -> None:
        """Show what the model is worth; each warning once per model as a notification."""
        from napari.utils.notifications import show_warning

        self.model_info.setText("<br>".join([line, *(f"Warning: {html.escape(w)}" for w in warnings)]))
        key = self.model_dir.text()
        for w in warnings:
            if (key, w) not in self._warned:
                self._warned.add((key, w))
                show_warning(w)

    def _busy(self, busy: bool) -> None:
        self.run_btn.setEnabled(not busy)
        self.resplit_btn.setEnabled(not busy)
        self.stop_btn.setEnabled(busy)

    def stop(self, *_) -> None:
        if self.runner is not None:
            self.runner.stop()

    def is_running(self) -> bool:
        return self.runner is not None and self.runner.is_busy()

    def _stopped(self, name: str) -> None:
        last = self.runner.last_progress if self.runner is not None else None
        where = _status(*last) if last else name
        self.status.setText(f"{where}: stopped")

    def _finished(self) -> None:
        import time

        self._busy(False)
        runner = self.runner
        if runner is not None and runner._stop.is_set() and not runner.stopped:
            self._stopped("")  # stopped between two events
        elif runner is not None and not runner.stopped and runner.pushed:
            how = runner.tiles_phase.removeprefix("tiles (").removesuffix(")")
            self.status.setText(
                f"{self.status.text()} ({time.perf_counter() - self._started:.0f} s{'; ' + how if how else ''})"
            )

    def _browse(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.model_dir.setText(path)
