"""Retake the user guide's screenshots (``docs/images/*.png``) from a real napari viewer.

Each shot follows a person's path: the bundled sample opened with File > Open Sample, the
widgets docked from the Plugins menu (``add_plugin_dock_widget``), buttons pressed through the
widgets' own slots, and the whole window saved with ``viewer.screenshot(canvas_only=False)``.

* ``annotate``: Lazy annotation and GrabCut refine docked, GrabCut run on the objects in view
  of the sample's nuclei stack.
* ``train``: the Train widget after a short training run (``--seconds``), with its loss curve,
  the model's score and any warning in the status.
* ``predict``: a default model trained for ``--seconds`` on the sample, the Predict widget
  docked, the nuclei stack predicted, its instances shown.
* ``channels``: a two-channel ImageJ TIFF (the StarDist nuclei as "DAPI" and a cytoplasm-like
  ring channel made from them) opened with ``viewer.open`` (napari's File > Open path), Lazy
  annotation and Train docked: one image with channels, one box per channel.
* ``stack``: a Z stack (the StarDist nuclei drifting and blurring through 6 slices, an ImageJ
  TIFF with a pixel size) opened with ``viewer.open``, predicted by the Predict widget with
  "link objects across slices" ticked, a middle slice shown.
* ``blockwise``: a 10240x10240 lazy (dask) montage of the StarDist nuclei, above the
  block-by-block limit, predicted by the Predict widget into an OME-Zarr in a temporary cache;
  the shot is taken mid-run (some blocks predicted, the rest not yet), then the run is stopped.

Needs a display: run it under Xvfb::

    xvfb-run -s "-screen 0 1600x1000x24" python tools/screenshots.py annotate train predict --seconds 45
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
PLUGIN = "napari-lazylabels"
STACK = "images 256x256"  # the sample's stack of equally sized nuclei images
log = logging.getLogger("screenshots")


def _wait(busy, timeout: float) -> None:
    """Run the event loop until ``busy()`` is False, then a second more so the layers draw."""
    from napari.qt import get_qapp

    app = get_qapp()
    t0 = time.monotonic()
    while busy():
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.05)


def _viewer_with_sample():
    """A shown viewer with the bundled sample opened as File > Open Sample does."""
    import napari

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open_sample(PLUGIN, "lazy_labels")
    return viewer


def _focus(viewer, image: str, zoom: float = 1.0) -> None:
    """Show only ``image`` and its label layers, the camera centred on it (``zoom`` > 1 shows
    a part of it)."""
    import numpy as np

    for layer in viewer.layers:
        layer.visible = layer.name == image or layer.name.endswith(f"[{image}]")
    viewer.layers.selection.active = viewer.layers[image]
    _wait(lambda: False, 1)  # the canvas takes its final size first
    own = np.asarray(viewer.layers[image].extent.world)[:, -2:]
    canvas = np.asarray(viewer.canvas.size, dtype=float)  # (height, width) in screen pixels
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.zoom = 0.95 * zoom * float(np.min(canvas / (own[1] - own[0])))
    camera.center = tuple((own[0] + own[1]) / 2)


def _save(viewer, name: str) -> None:
    _wait(lambda: False, 5)
    path = IMAGES / f"{name}.png"
    viewer.screenshot(str(path), canvas_only=False)
    log.info("wrote %s", path)


def shot_annotate(args) -> None:
    """Lazy annotation with the legend and per-image table; GrabCut on the objects in view."""
    viewer = _viewer_with_sample()
    _, ann = viewer.window.add_plugin_dock_widget(PLUGIN, "Lazy annotation")
    _, gc = viewer.window.add_plugin_dock_widget(PLUGIN, "GrabCut refine")
    ann.image_combo.setCurrentText(STACK)
    gc.image_combo.setCurrentText(STACK)
    _focus(viewer, STACK, zoom=1.6)  # a part of the image: "objects in view" is then a real choice
    detection = next(ly for ly in viewer.layers if ly.name.startswith("detection") and ly.visible)
    viewer.layers.selection.active = detection
    detection.mode = "paint"
    gc.scope.setCurrentText("objects in view")
    _wait(lambda: False, 2)
    gc.run()
    _wait(gc.is_running, 300)
    log.info("GrabCut: %s", gc.status.text())
    _save(viewer, "annotate")
    viewer.close()


def shot_train(args) -> None:
    """The Train widget after ``--seconds`` of training on the sample (defaults otherwise)."""
    viewer = _viewer_with_sample()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    tw.model_dir.setText(str(Path(tempfile.mkdtemp(prefix="lazylabels-shot-")) / "model"))
    tw.budget_kind.setCurrentText("seconds")
    tw.budget.setValue(int(args.seconds))
    _focus(viewer, STACK)
    tw.start()
    _wait(tw.is_running, args.seconds * 4 + 300)
    log.info("Train status: %s", tw.status.text())
    _save(viewer, "train")
    viewer.close()


def shot_predict(args) -> None:
    """The Predict widget's result on the sample's nuclei stack with a freshly trained model."""
    model_dir = _trained_sample_model(args.seconds)
    _predict_and_save(_viewer_with_sample(), STACK, model_dir, "predict")


def _predict_and_save(viewer, image: str, model_dir: Path, shot: str, link_slices: bool = False, step=None) -> None:
    """Predict ``image`` with the Predict widget from the Plugins menu, show the image and
    its instances only (at slice ``step`` of a stack), save the shot and close the viewer."""
    _, pw = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
    pw.model_dir.setText(str(model_dir))
    pw.set_chosen([image])
    pw.link_slices.setChecked(link_slices)
    pw.run()
    _wait(pw.is_running, 600)
    log.info("Predict status: %s", pw.status.text())
    if step is not None:
        viewer.dims.set_current_step(0, step)
    _focus(viewer, image)
    for layer in viewer.layers:  # the image and its instances only
        layer.visible = layer.name in (image, f"{image} instances")
    viewer.layers.selection.active = viewer.layers[f"{image} instances"]
    _save(viewer, shot)
    viewer.close()


def _trained_sample_model(seconds: float) -> Path:
    """A default model trained ``seconds`` on the bundled sample (as the one-click button)."""
    from napari_lazylabels.core.io import load_dataset
    from napari_lazylabels.core.model import resolve_device
    from napari_lazylabels.core.train import TrainConfig, fit, infer_model_config
    from napari_lazylabels.sample_data import sample_paths

    ds = load_dataset(sample_paths()["dataset"])
    model_dir = Path(tempfile.mkdtemp(prefix="lazylabels-shot-")) / "model"
    fit(ds, model_dir, infer_model_config(ds, resolve_device("auto")), TrainConfig(iterations=None, time_budget=seconds))
    return model_dir


def _stardist_nuclei():
    from napari_lazylabels.core.io import read_image
    from napari_lazylabels.sample_data import sample_paths

    return read_image(sample_paths()["dataset"] / "images" / "stardist_nuclei.png")


def shot_channels(args) -> None:
    """A (C, Y, X) fluorescence TIFF opened as a person does: one image, two channel boxes."""
    import napari
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi

    dapi = _stardist_nuclei().astype(np.float32)
    smooth = ndi.gaussian_filter(dapi, 6)
    ring = np.clip(ndi.grey_dilation(smooth, size=15) - smooth, 0, None)  # a cytoplasm-like ring
    data = np.stack([dapi, ring * (dapi.max() / max(ring.max(), 1e-6))]).astype(np.uint16)
    path = Path(tempfile.mkdtemp(prefix="lazylabels-shot-")) / "two_channels.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "cytoplasm"]})
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(path))
    name = viewer.layers[0].name
    _, ann = viewer.window.add_plugin_dock_widget(PLUGIN, "Lazy annotation")
    ann.image_combo.setCurrentText(name)
    _wait(lambda: False, 2)
    ann.create_layers()
    _, tw = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    _focus(viewer, name)
    _save(viewer, "channels")
    viewer.close()


def shot_stack(args) -> None:
    """A Z stack opened with viewer.open, predicted with its objects linked across slices."""
    import napari
    import numpy as np
    import tifffile
    from scipy import ndimage as ndi

    model_dir = _trained_sample_model(args.seconds)
    nuclei = _stardist_nuclei().astype(np.float32)
    planes = [ndi.gaussian_filter(ndi.shift(nuclei, (1.5 * z, 1.0 * z), mode="reflect"), 0.4 * abs(z - 2.5))
              for z in range(6)]
    path = Path(tempfile.mkdtemp(prefix="lazylabels-shot-")) / "nuclei_zstack.tif"
    tifffile.imwrite(path, np.stack(planes).astype(np.uint8), imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(path))
    _predict_and_save(viewer, viewer.layers[0].name, model_dir, "stack", link_slices=True, step=3)


BLOCKWISE_SHARE = 0.16
"""Share of the montage's tiles predicted before the ``blockwise`` shot (4 of its 25 blocks)."""
BLOCKWISE_WAIT = 600.0
"""Seconds the ``blockwise`` shot waits for them at most (then it is taken as it is)."""


def shot_blockwise(args) -> None:
    """A large lazy image predicted block by block, as seen mid-run: the blocks written so far
    coloured by their classes and instances, the Predict widget's progress in the dock."""
    import os
    import shutil

    import dask.array as da
    import napari
    import numpy as np

    from napari_lazylabels.core import options

    model_dir = _trained_sample_model(args.seconds)
    nuclei = _stardist_nuclei().astype(np.uint8)  # 512x512
    variants = [da.from_array(np.ascontiguousarray(np.rot90(f, k))) for f in (nuclei, nuclei[::-1]) for k in range(4)]
    side = 10240 // nuclei.shape[0]  # 20 x 20 tiles, each a rotation or mirror of the nuclei
    data = da.block([[variants[(3 * i + 5 * j) % 8] for j in range(side)] for i in range(side)])
    assert data.shape[0] * data.shape[1] > options.BLOCKWISE_PIXELS  # predicted block by block
    cache = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = scratch = tempfile.mkdtemp(prefix="lazylabels-shot-cache-")  # not the user's
    try:
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        viewer.add_image(data, name="montage", scale=(0.2, 0.2),  # a pixel size
                         contrast_limits=(0, float(np.percentile(nuclei, 99.8))))
        _, pw = viewer.window.add_plugin_dock_widget(PLUGIN, "Predict")
        pw.model_dir.setText(str(model_dir))
        pw.set_chosen(["montage"])
        pw.run()

        def share() -> float:  # of the tiles predicted so far
            last = pw.runner.last_progress if pw.runner is not None else None
            return last[2] / last[3] if last and last[1].startswith("tiles") and last[3] else 0.0

        t0 = time.monotonic()
        _wait(lambda: pw.is_running() and share() < BLOCKWISE_SHARE and time.monotonic() - t0 < BLOCKWISE_WAIT,
              BLOCKWISE_WAIT + 60)
        log.info("Predict status after %.0f s: %s", time.monotonic() - t0, pw.status.text())
        if "montage instances" in viewer.layers:  # both label layers shown, as the widget adds them
            viewer.layers.selection.active = viewer.layers["montage instances"]
        viewer.reset_view()  # the whole montage
        _wait(lambda: False, 2)
        _save(viewer, "blockwise")
        pw.stop()
        _wait(pw.is_running, 600)
        log.info("Predict status: %s", pw.status.text())
        viewer.close()
    finally:
        if cache is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = cache
        shutil.rmtree(scratch, ignore_errors=True)  # the partial OME-Zarr


SHOTS = {"annotate": shot_annotate, "train": shot_train, "predict": shot_predict, "channels": shot_channels,
         "stack": shot_stack, "blockwise": shot_blockwise}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shots", nargs="+", choices=sorted(SHOTS))
    ap.add_argument("--seconds", type=float, default=45.0, help="training time of the models of the shots")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in args.shots:
        SHOTS[name](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
