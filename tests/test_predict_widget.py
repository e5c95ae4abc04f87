"""The Predict widget: progress through every phase, a quick Stop, layers updated in place
and pushed without one long pause (GUI tests under Xvfb)."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import torch

from napari_lazylabels.core.checkpoint import save_checkpoint
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.model import ModelConfig, build_model

pytestmark = pytest.mark.gui


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8), size="custom")
    save_checkpoint(tmp_path / "model" / "best.pt", build_model(cfg), cfg, ClassSpec(names=("background", "cell")))
    return tmp_path / "model"


def _image(side: int) -> np.ndarray:
    """Bright discs on a dark background: objects for the instance step."""
    yy, xx = np.mgrid[:side, :side]
    return ((np.sin(yy / 9.0) * np.sin(xx / 9.0)) > 0.3).astype(np.uint8) * 200 + 20


def _widget(viewer, model_dir, tile: int = 64):
    from napari_lazylabels._widgets.predict import PredictWidget

    pw = PredictWidget(viewer)
    viewer.window.add_dock_widget(pw)
    pw.model_dir.setText(str(model_dir))
    pw.tile.setValue(tile)
    pw.tta.setCurrentIndex(0)  # one orientation: fast
    pw.device.setCurrentText("cpu")
    return pw


def _statuses(pw) -> list[str]:
    """Every status the widget shows from now on (the label's texts, in order)."""
    seen: list[str] = []
    orig = pw.status.setText

    def record(text):
        seen.append(text)
        orig(text)

    pw.status.setText = record
    return seen


def test_progress_names_every_phase_and_layers_are_updated_in_place(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """The status goes through the tiles, then the post-processing phases (classes,
    instances) and the layers, and the finished prediction's four layers are the same
    objects after a second Predict (data swapped, nothing re-added)."""
    from napari_lazylabels.core import predictor as predict_mod

    monkeypatch.setattr(predict_mod.Predictor, "forward", _interfaces_everywhere(predict_mod.Predictor.forward))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(300), name="im")
    pw = _widget(viewer, model_dir)
    pw.set_chosen(["im"])
    seen = _statuses(pw)
    frozen = gc.get_freeze_count()
    pw.run()
    qtbot.waitUntil(lambda: pw.runner.worker is not None, timeout=60_000)
    assert gc.get_freeze_count() > frozen  # full collections skip the viewer's objects
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert gc.get_freeze_count() == 0  # and collect them again afterwards
    phases = [s.split(": ", 1)[1].rsplit(" ", 1)[0] for s in seen if s.startswith("im: ")]
    phases = [p for p in phases if not p.startswith("importing")]  # the first Predict of a session
    assert phases[0] == "loading" and phases[1].startswith("tiles (1 orientation")
    after_tiles = phases[[i for i, p in enumerate(phases) if p.startswith("tiles")][-1] + 1 :]
    assert [p for p in ("classes", "instances", "layers") if p in after_tiles] == ["classes", "instances", "layers"]
    assert seen[-1].startswith("Updated: im classes, im instances, im interfaces, im probabilities")

    names = [f"im {k}" for k in ("classes", "instances", "interfaces", "probabilities")]
    first = {n: viewer.layers[n] for n in names}
    assert first["im instances"].data.dtype == np.uint16 and first["im instances"].data.max() > 1
    n_layers = len(viewer.layers)
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert len(viewer.layers) == n_layers
    assert all(viewer.layers[n] is first[n] for n in names)


def test_stop_ends_a_multi_tile_prediction_within_two_seconds(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """A slowed network (0.3 s per pass, 64 tiles in passes of 2): Stop pressed during the
    tiles ends the worker within 2 s, and the status ends in "stopped" (not "n/64")."""
    from napari_lazylabels.core import checkpoint

    load = checkpoint.load_model

    class Slow(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, tasks=None):
            time.sleep(0.3)
            return self.inner(x, tasks)

    monkeypatch.setattr(checkpoint, "load_model", lambda path, device="cpu": (lambda m, ck: (Slow(m), ck))(*load(path, device)))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(400), name="big")
    pw = _widget(viewer, model_dir)
    pw.set_chosen(["big"])
    pw.run()
    qtbot.waitUntil(lambda: "tiles" in pw.status.text() and not pw.status.text().endswith(" 0/64"), timeout=30_000)
    assert "/64" in pw.status.text()
    t0 = time.perf_counter()
    pw.stop()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=10_000)
    assert time.perf_counter() - t0 < 2.0
    assert pw.status.text().endswith("stopped") and "big: tiles" in pw.status.text()
    assert "big classes" not in viewer.layers
    assert pw.run_btn.isEnabled() and not pw.stop_btn.isEnabled()


def test_stop_during_the_instance_step(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """Stop pressed while instances are cut (a slowed watershed) ends the worker there."""
    import skimage.segmentation

    from napari_lazylabels.core import instances, predictor

    monkeypatch.setattr(instances, "PHASE_SECONDS", 0.0)
    real = skimage.segmentation.watershed

    def slow_watershed(*a, **k):
        time.sleep(0.05)
        return real(*a, **k)

    monkeypatch.setattr(skimage.segmentation, "watershed", slow_watershed)
    # Every object holds an interface pixel, so each goes through the (slowed) watershed.
    monkeypatch.setattr(predictor.Predictor, "forward", _interfaces_everywhere(predictor.Predictor.forward))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(300), name="im")
    pw = _widget(viewer, model_dir)
    pw.set_chosen(["im"])
    pw.run()
    qtbot.waitUntil(lambda: "instances" in pw.status.text() and not pw.status.text().endswith(" 0/0"), timeout=60_000)
    t0 = time.perf_counter()
    pw.stop()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=10_000)
    assert time.perf_counter() - t0 < 2.0
    assert pw.status.text().startswith("im: instances") and pw.status.text().endswith("stopped")
    assert "im instances" not in viewer.layers


def _interfaces_everywhere(forward):
    def wrapped(self, x, *a, **k):
        out = forward(self, x, *a, **k)
        if "interfaces" in out:
            itf = torch.zeros_like(out["interfaces"])
            itf[..., ::7, :] = 1.0  # lines of interface every 7 rows
            out["interfaces"] = itf
        p = torch.zeros_like(out["probabilities"])
        p[:, 1] = (x[:, 0] > 0.5).float()  # the bright discs
        p[:, 0] = 1 - p[:, 1]
        out["probabilities"] = p
        return out

    return wrapped


def test_layers_are_pushed_one_per_event_loop_turn(make_napari_viewer, qtbot):
    """A finished image's layers are added one per turn of the event loop, so the GUI
    repaints and handles input between them instead of pausing for all four at once. A new
    layer arrives in two turns: added as one pixel (napari's cost of a layer), then filled in
    place (the texture); the next Predict only fills the same layers."""
    from napari_lazylabels._widgets import _layers
    from napari_lazylabels._widgets.predict import PredictEvent, PredictionRunner
    from napari_lazylabels.core.predict import Prediction

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((64, 64), np.uint8), name="im")
    classes = np.zeros((64, 64), np.uint8)
    classes[10:30, 10:30] = 1
    probs = np.stack([1.0 - classes, classes]).astype(np.float32)
    pred = Prediction(probs, classes, np.zeros((64, 64), np.float32), classes.astype(np.int32))
    results, inserted = [], []
    viewer.layers.events.inserted.connect(lambda e: inserted.append((e.value.name, e.value.data.shape)))
    runner = PredictionRunner(viewer, on_result=results.append)
    layer_data = tuple(_layers.prediction_layer_data("im", [pred]))
    runner._on_yield(PredictEvent("layers", 1, 1, "im", layers=layer_data, settings={}))
    assert [ly.name for ly in viewer.layers] == ["im", "im classes"]  # the rest on later turns
    assert viewer.layers["im classes"].data.shape == (1, 1)  # filled on the next turn
    qtbot.waitUntil(lambda: bool(results), timeout=5000)
    names = ["im classes", "im instances", "im interfaces", "im probabilities"]
    assert [ly.name for ly in results[0]] == names
    assert inserted == [(n, (1, 1)) for n in names]
    assert all(ly.data.shape == (64, 64) and ly.scale.tolist() == [1, 1] for ly in results[0])
    assert viewer.layers["im classes"].colormap.map(1) is not None and viewer.layers["im interfaces"].visible is False
    runner._on_yield(PredictEvent("layers", 1, 1, "im", layers=layer_data, settings={}))
    qtbot.waitUntil(lambda: len(results) == 2, timeout=5000)
    assert len(inserted) == 4 and [ly.name for ly in results[1]] == names  # updated in place


def test_a_runtime_error_in_the_worker_ends_the_run_with_one_message(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """torch raises RuntimeError; superqt drops those without "finished", which left the
    widget busy for good: the worker re-raises it as another error, shown, and the run ends."""
    from napari_lazylabels._widgets import _common, predict
    from napari_lazylabels.core import checkpoint

    shown = []
    monkeypatch.setattr(predict, "show_error", lambda e: shown.append(str(e)))
    monkeypatch.setattr(_common, "show_error", lambda e: shown.append(str(e)))

    def broken(path, device="cpu"):
        raise RuntimeError("weights do not fit")

    monkeypatch.setattr(checkpoint, "load_model", broken)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(100), name="im")
    pw = _widget(viewer, model_dir)
    pw.set_chosen(["im"])
    with qtbot.capture_exceptions() as raised:  # napari also re-raises worker errors to its handler
        pw.run()
        qtbot.waitUntil(lambda: not pw.is_running(), timeout=10_000)
    assert shown == ["Prediction failed: weights do not fit"]
    assert [type(e[1]).__name__ for e in raised] in ([], ["WorkerError"])
    assert pw.run_btn.isEnabled()


def test_the_model_says_what_it_is_worth(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """Predict shows the model's stored validation score and its warnings, once each as a
    notification: here an RGB model never trained (0 iterations) meets a gray image."""
    import napari.utils.notifications as notifications

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, n_classes=2, widths=(4, 8), size="custom")
    save_checkpoint(tmp_path / "rgb" / "best.pt", build_model(cfg), cfg, ClassSpec(names=("background", "cell")),
                    iteration=0, metrics={"best_metric": 0.41, "dice": 0.41, "n": 2, "measure": "exact masks",
                                          "trivial": 0.2, "foreground": 0.3})
    shown = []
    monkeypatch.setattr(notifications, "show_warning", shown.append)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_image(96), name="gray")
    pw = _widget(viewer, tmp_path / "rgb")
    for _ in range(2):
        pw.run()
        qtbot.waitUntil(lambda: pw.runner.worker is not None, timeout=60_000)
        qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    text = pw.model_info.text()
    assert "Model: 0 iterations, validation dice 0.410 on exact masks of 2 images" in text
    assert "weak" in text and "colour (RGB)" in text and "only 0 iterations" in text
    assert "Classes:" in text and "1 = cell" in text  # the class map's legend
    assert len(shown) == 3 and len(set(shown)) == 3  # once each, not again on the second run


def test_a_stack_layer_gets_instance_ids_unique_across_slices_or_linked(make_napari_viewer, qtbot, tmp_path):
    """A (Z, Y, X) image layer with the same plane twice: each plane's object gets its own id,
    or, with "link objects across slices" ticked, the id of the object it continues; Re-split
    keeps the choice (issue 26, stacks)."""
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8), size="custom")
    model = build_model(cfg)
    with torch.no_grad():  # one object everywhere, no interface
        model.heads["segmentation"].bias.copy_(torch.tensor([-20.0, 20.0]))
        model.heads["separation"].bias.copy_(torch.tensor([20.0, -20.0]))
    save_checkpoint(tmp_path / "one" / "best.pt", model, cfg, ClassSpec(names=("background", "cell")))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.stack([_image(96)] * 2), name="zs", scale=(2.0, 0.5, 0.5))
    pw = _widget(viewer, tmp_path / "one")
    pw.set_chosen(["zs"])

    def ids(plane):
        return set(np.unique(viewer.layers["zs instances"].data[plane])) - {0}

    pw.run()
    qtbot.waitUntil(lambda: "zs instances" in viewer.layers and not pw.is_running(), timeout=60_000)
    assert viewer.layers["zs instances"].data.shape == (2, 96, 96)
    assert viewer.layers["zs instances"].scale[0] == 2.0
    assert ids(0) == {1} and ids(1) == {2}
    pw.link_slices.setChecked(True)
    pw.resplit()
    qtbot.waitUntil(lambda: not pw.is_running() and ids(1) == {1}, timeout=30_000)
    assert ids(0) == {1}
    pw.link_slices.setChecked(False)
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running() and ids(1) == {2}, timeout=60_000)
    pw.link_slices.setChecked(True)
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running() and ids(1) == {1}, timeout=60_000)


def test_a_lazy_stack_is_read_plane_by_plane_by_the_worker(make_napari_viewer, qtbot, model_dir, monkeypatch):
    """A dask-backed stack layer (as napari's lazy readers give) is not loaded whole when
    Predict is pressed: each plane is read when the worker reaches it, off the main thread."""
    import threading

    import dask
    import dask.array as da

    from napari_lazylabels._widgets import _layers

    reads: list[tuple[int, str]] = []

    def plane(block, block_info=None):
        reads.append((block_info[None]["chunk-location"][0], threading.current_thread().name))
        return block

    data = da.from_array(np.stack([_image(96)] * 3), chunks=(1, 96, 96)).map_blocks(plane, dtype=np.uint8)
    monkeypatch.setitem(dask.config.config, "scheduler", "synchronous")  # chunks computed by the caller's thread
    viewer = make_napari_viewer(show=True)
    layer = viewer.add_image(data, name="lazy")
    planes = _layers.Planes(layer)
    reads.clear()
    assert len(planes) == 3 and reads == []  # made without reading
    assert planes[2].shape == (96, 96) and [i for i, _ in reads] == [2]
    pw = _widget(viewer, model_dir)
    pw.set_chosen(["lazy"])
    reads.clear()
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=120_000)
    worker_reads = {i for i, name in reads if name != threading.main_thread().name}
    assert worker_reads == {0, 1, 2}  # every plane, each by the worker (dask computes in its caller here)
    assert viewer.layers["lazy instances"].data.shape == (3, 96, 96)


def test_a_large_layer_is_predicted_block_by_block_into_lazy_layers(make_napari_viewer, qtbot, monkeypatch, tmp_path, caplog,
                                                                  one_object_model):
    """An image layer above the block-by-block limit (a dask array with a physical scale) is
    predicted from its lazy data into an OME-Zarr in the user's cache: its classes and
    instances layers are multiscale views of the zarr files, at the image's scale, added
    while the blocks are written and redrawn as they come; the main thread never reads the
    image whole; the store opens again (ids equal to the layer's); Re-split cuts it again on
    disk and the layer shows the new objects."""
    import threading

    import dask
    import dask.array as da
    import zarr

    from napari_lazylabels._widgets import predict as predict_mod
    from napari_lazylabels.core import options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(options, "BLOCKWISE_PIXELS", 1000 * 1000)
    monkeypatch.setattr(predict_mod, "REFRESH_SECONDS", 0.0)
    monkeypatch.setitem(dask.config.config, "scheduler", "synchronous")
    image = np.tile(_image(96), (12, 12))[:1100, :1150]  # 1.27 MP: two pyramid levels
    biggest = {"main": 0}

    def watch(block, block_info=None):
        if threading.current_thread() is threading.main_thread():
            biggest["main"] = max(biggest["main"], block.size)
        return block

    data = da.from_array(image, chunks=(256, 256)).map_blocks(watch, dtype=np.uint8)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(data, name="big", scale=(0.5, 0.5))
    pw = _widget(viewer, one_object_model.parent, tile=128)  # one object everywhere
    pw.tta.setCurrentIndex(0)  # one orientation
    pw.set_chosen(["big"])
    refreshed = []
    monkeypatch.setattr(predict_mod.PredictionRunner, "_on_yield", _spy_refresh(predict_mod.PredictionRunner._on_yield, refreshed))
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=180_000)
    classes, inst = viewer.layers["big classes"], viewer.layers["big instances"]
    assert classes.multiscale and inst.multiscale and len(inst.data) == 2
    assert tuple(inst.scale) == (0.5, 0.5) and inst.data[0].shape == image.shape
    assert refreshed and "big instances" in refreshed[-1]
    assert biggest["main"] <= 256 * 256  # napari drew chunks; the worker read the blocks
    store = tmp_path / "cache" / "napari-lazylabels" / "predictions" / "big.ome.zarr"
    root = zarr.open_group(str(store), mode="r")
    ids = root["labels/instances/0"][:]
    np.testing.assert_array_equal(ids, np.asarray(inst.data[0]))
    assert (ids == 1).all() and (root["labels/classes/0"][:] == 1).all()  # one block, one object
    np.testing.assert_array_equal(root["0"][0], image)  # the image, copied block by block
    # Re-split cuts the store again on disk; the layer shows it
    infos = []
    monkeypatch.setattr(predict_mod, "show_info", infos.append)
    pw.min_size.setValue(2_000_000)  # larger than the image: the one object goes
    pw.resplit()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert not np.asarray(viewer.layers["big instances"].data[0]).any()
    assert any("cut again block by block" in m for m in infos)
    assert pw.status.text().startswith("big: 0 objects, cut again block by block"), pw.status.text()
    assert not zarr.open_group(str(store), mode="r")["labels/instances/1"][:].any()  # the pyramid too
    pw.min_size.setValue(0)  # auto again: the object is back
    pw.resplit()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert (np.asarray(viewer.layers["big instances"].data[0]) == 1).all()


def _spy_refresh(on_yield, seen):
    def spy(self, ev):
        if ev.refresh:
            seen.append(ev.refresh)
        return on_yield(self, ev)

    return spy


def test_stop_ends_a_block_by_block_prediction_quickly(make_napari_viewer, qtbot, monkeypatch, tmp_path, model_dir):
    """Stop during a block-by-block prediction ends it within seconds (between two network
    passes), says so in the status, and leaves the widget ready for another run."""
    from napari_lazylabels._widgets import predict as predict_mod
    from napari_lazylabels.core import options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(options, "BLOCKWISE_PIXELS", 1000 * 1000)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.tile(_image(96), (30, 30)), name="big")  # 2880 x 2880: 4 blocks
    pw = _widget(viewer, model_dir, tile=64)
    pw.set_chosen(["big"])
    pw.run()
    qtbot.waitUntil(lambda: pw.runner is not None and pw.runner.tiles_phase.endswith("block by block)"), timeout=120_000)
    assert isinstance(pw.runner, predict_mod.PredictionRunner)
    asked = time.perf_counter()
    pw.stop()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=30_000)
    assert time.perf_counter() - asked < 10
    assert "stopped" in pw.status.text() and pw.run_btn.isEnabled()


def test_predict_again_goes_on_with_a_stopped_block_by_block_prediction(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, one_object_model
):
    """A block-by-block prediction stopped in the viewer keeps the blocks it wrote; Predict
    on the same image with the same model goes on from there (a notification says so) and
    completes the layers."""
    import json

    from napari_lazylabels._widgets import predict as predict_mod
    from napari_lazylabels.core import options

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(options, "BLOCKWISE_PIXELS", 1000 * 1000)
    infos, events = [], []
    monkeypatch.setattr(predict_mod, "show_info", infos.append)
    monkeypatch.setattr(predict_mod.PredictionRunner, "_on_yield", _spy_events(predict_mod.PredictionRunner._on_yield, events))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.tile(_image(96), (30, 30)), name="big")  # 2880 x 2880: 2 x 2 blocks
    pw = _widget(viewer, one_object_model.parent, tile=128)
    pw.set_chosen(["big"])
    progress = tmp_path / "cache" / "napari-lazylabels" / "predictions" / "big.ome.zarr" / "lazylabels-progress.json"

    def blocks_done() -> int:
        try:
            return json.loads(progress.read_text())["block"]
        except (OSError, ValueError):
            return 0

    pw.run()
    qtbot.waitUntil(lambda: blocks_done() >= 1, timeout=120_000)
    pw.stop()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=30_000)
    done = blocks_done()
    assert "stopped" in pw.status.text() and 1 <= done < 4
    events.clear()
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=180_000)
    assert any("going on with the prediction stopped earlier" in m for m in infos)
    tiles = [ev for ev in events if ev.phase.startswith("tiles")]
    assert tiles[0].done >= done * tiles[-1].total // 4  # the blocks written were not predicted again
    classes, inst = (np.asarray(viewer.layers[f"big {k}"].data[0]) for k in ("classes", "instances"))
    assert (classes == 1).all() and (inst == 1).all()  # one object everywhere, continued across the 4 blocks
    assert not progress.exists()
    # the same again: shown as it is, not predicted again
    events.clear()
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert any("already predicted" in m for m in infos) and not any(ev.phase.startswith("tiles") for ev in events)
    assert (np.asarray(viewer.layers["big instances"].data[0]) == 1).all()


def _spy_events(on_yield, seen):
    def spy(self, ev):
        seen.append(ev)
        return on_yield(self, ev)

    return spy


def test_a_block_by_block_prediction_opened_from_its_file_can_be_cut_again(
    make_napari_viewer, qtbot, monkeypatch, tmp_path, one_object_model
):
    """An OME-Zarr that lazylabels predicted block by block, opened with File > Open's path
    in a new session, is cut again by the Predict widget's Re-split (its layers say where
    the prediction is kept)."""
    import zarr

    from napari_lazylabels._widgets import predict as predict_mod
    from napari_lazylabels.core.blocks import iter_predict_ome_zarr
    from napari_lazylabels.core.checkpoint import load_model
    from napari_lazylabels.core.jobs import drive
    from napari_lazylabels.core.predictor import PredictConfig, Predictor
    from napari_lazylabels.core.zarrio import open_lazy_image

    image = np.tile(_image(96), (12, 12))[:1100, :1150]
    zarr.create_array(str(tmp_path / "big.zarr"), shape=image.shape, chunks=(256, 256), dtype=image.dtype)[:] = image
    model, ck = load_model(one_object_model, "cpu")
    predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", tile=128, tta=1))
    store = drive(iter_predict_ome_zarr(predictor, open_lazy_image(tmp_path / "big.zarr"), tmp_path / "out" / "big.ome.zarr"))
    viewer = make_napari_viewer(show=True)
    viewer._open_or_raise_error([str(store / ".zattrs")])  # File > Open's path
    assert {"big", "big classes", "big instances"} <= {ly.name for ly in viewer.layers}
    assert (np.asarray(viewer.layers["big instances"].data[0]) == 1).all()
    infos = []
    monkeypatch.setattr(predict_mod, "show_info", infos.append)
    pw = _widget(viewer, one_object_model.parent, tile=128)
    pw.set_chosen(["big"])
    pw.min_size.setValue(2_000_000)  # larger than the image: the one object goes
    pw.resplit()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    assert any("cut again block by block" in m for m in infos)
    assert not np.asarray(viewer.layers["big instances"].data[0]).any()
