"""napari side: manifest, reader/writer, sample data and the dock widgets (headless, Xvfb)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_lazylabels.core.io import LazyDataset, Sample, load_dataset, save_dataset  # noqa: E402
from napari_lazylabels.core.labels import ClassSpec  # noqa: E402

ROOT = Path(__file__).parents[1]
TINY = (4, 8)  # the network's widths: a fast one for GUI tests


def _disk(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_sample(name="img", shape=(96, 96), seed=0, rgb=False) -> Sample:
    """A small image with four bright disks, marks inside them and background scribbles."""
    rng = np.random.default_rng(seed)
    img = rng.normal(40, 8, shape)
    det = np.zeros(shape, np.uint8)
    sep = np.zeros(shape, np.uint8)
    seg = np.ones(shape, np.uint8)
    centres = [(24, 24), (24, 70), (70, 30), (68, 68)]
    for cy, cx in centres:
        m = _disk(shape, cy, cx, 12)
        img[m] += 140
        det[_disk(shape, cy, cx, 4)] = 2
        seg[m] = 2
    det[2:6, 2:40] = 1
    det[88:92, 50:90] = 1
    sep[44:50, 44:50] = 1
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rgb:
        img = np.stack([img, img // 2, img], -1)
    return Sample(name=name, image=img, detection=det, separation=sep, segmentation=seg if seed == 0 else None)


@pytest.fixture
def dataset_dir(tmp_path) -> Path:
    """A dataset folder in core format with two annotated images."""
    ds = LazyDataset(
        classes=ClassSpec(names=("background", "cell")),
        samples=[make_sample("a", seed=0), make_sample("b", seed=1)],
    )
    return save_dataset(ds, tmp_path / "project")


# --------------------------------------------------------------------------- no viewer needed
def test_manifest_validates():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(ROOT / "src" / "napari_lazylabels" / "napari.yaml")
    assert pm.name == "napari-lazylabels"
    assert {w.display_name for w in pm.contributions.widgets} >= {"Lazy annotation", "GrabCut refine", "Train", "Predict"}
    # every command imports
    import importlib

    for cmd in pm.contributions.commands:
        mod, _, attr = cmd.python_name.partition(":")
        assert hasattr(importlib.import_module(mod), attr), cmd.python_name


def test_reader_writer_roundtrip(dataset_dir, tmp_path):
    from napari_lazylabels._reader import get_reader
    from napari_lazylabels._writer import write_dataset

    assert get_reader(str(tmp_path / "nothing")) is None
    reader = get_reader(str(dataset_dir))
    assert reader is not None
    layer_data = reader(str(dataset_dir))
    kinds = [(t, kw["name"]) for _, kw, t in layer_data]
    assert kinds == [("image", "images"), ("labels", "detection"), ("labels", "separation"), ("labels", "segmentation")]
    assert layer_data[0][0].shape == (2, 96, 96)
    out = write_dataset(str(tmp_path / "copy"), [(d, kw, t) for d, kw, t in layer_data])
    again = load_dataset(out[0])
    orig = load_dataset(dataset_dir)
    assert again.names() == orig.names() == ["a", "b"]
    assert again.classes == orig.classes
    for s0, s1 in zip(orig, again, strict=True):
        for task in ("detection", "separation", "segmentation"):
            a, b = s0.label(task), s1.label(task)
            assert (a is None and b is None) or np.array_equal(a, b)


def test_reader_mixed_shapes_and_rgb(tmp_path):
    from napari_lazylabels._widgets._layers import dataset_to_layer_data, layer_data_to_dataset

    ds = LazyDataset(samples=[make_sample("g"), make_sample("c", shape=(80, 100), rgb=True)])
    ld = dataset_to_layer_data(ds)
    assert [kw["name"] for _, kw, t in ld if t == "image"] == ["g", "c"]
    back = layer_data_to_dataset(ld)
    assert sorted(back.names()) == ["c", "g"]
    c = next(s for s in back if s.name == "c")
    assert c.image.shape == (80, 100, 3) and c.detection.shape == (80, 100)


def test_prediction_layer_data_shapes():
    from napari_lazylabels._widgets._layers import prediction_layer_data
    from napari_lazylabels.core.predict import Prediction

    p = Prediction(
        probabilities=np.full((2, 10, 12), 0.5, np.float32), classes=np.zeros((10, 12), np.uint8),
        interfaces=np.zeros((10, 12), np.float32), instances=np.zeros((10, 12), np.int32),
    )
    one = prediction_layer_data("im", [p])
    assert [kw["name"] for _, kw, _ in one] == ["im classes", "im instances", "im interfaces", "im probabilities"]
    assert [d.shape for d, _, _ in one] == [(10, 12)] * 4
    two = prediction_layer_data("im", [p, p])
    assert all(d.shape == (2, 10, 12) for d, _, _ in two)


def test_sample_data_contribution(dataset_dir, monkeypatch):
    """``make_sample_data`` loads ``sample_paths()["dataset"]`` (a stand-in module here)."""
    import sys
    import types

    fake = types.ModuleType("napari_lazylabels.sample_data")
    fake.sample_paths = lambda: {"dataset": dataset_dir}
    monkeypatch.setitem(sys.modules, "napari_lazylabels.sample_data", fake)
    from napari_lazylabels._sample_data import make_sample_data

    ld = make_sample_data()
    assert [(t, kw["name"]) for _, kw, t in ld] == [
        ("image", "images"), ("labels", "detection"), ("labels", "separation"), ("labels", "segmentation"),
    ]
    assert ld[0][1]["metadata"]["lazylabels"]["source"] is None  # never save into the package


def test_sample_data_when_bundled():
    try:
        from napari_lazylabels.sample_data import sample_paths
    except ImportError:
        pytest.skip("the bundled sample folder is not there yet")
    from napari_lazylabels._sample_data import make_sample_data

    ld = make_sample_data()
    assert ld[0][2] == "image"
    assert [t for _, _, t in ld[1:4]] == ["labels"] * 3
    assert Path(sample_paths()["dataset"]).is_dir()


# --------------------------------------------------------------------------- GUI
def _wait_idle(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.is_running(), timeout=timeout)


def _tiny_trainer(widget, iterations=1000):
    widget.widths = TINY
    widget.device.setCurrentText("cpu")
    widget.budget_kind.setCurrentText("iterations")
    widget.budget.setValue(iterations)
    widget.batch.setValue(2)
    widget.patch.setValue(48)
    widget.preview.setChecked(False)


@pytest.mark.gui
def test_full_loop(make_napari_viewer, qtbot, dataset_dir, tmp_path):
    from napari_lazylabels._widgets.annotate import AnnotationWidget
    from napari_lazylabels._widgets.grabcut import GrabCutWidget
    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels._widgets.train import TrainWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")
    assert [ly.name for ly in viewer.layers] == ["images", "detection", "separation", "segmentation"]

    ann = AnnotationWidget(viewer)
    viewer.window.add_dock_widget(ann)
    assert ann.image_combo.currentText() == "images"
    assert ann.classes().names == ("background", "cell")
    status = dict(ann.table_status())
    assert status["a"] == {"detection": True, "separation": True, "segmentation": True}
    assert status["b"]["segmentation"] is False
    tasks = ann.create_layers()
    assert tasks["detection"].brush_size == ann.brush.value()

    # GrabCut on image "b" (slice 1), which has no masks yet; then undo.
    viewer.dims.set_current_step(0, 1)
    seg = viewer.layers["segmentation"]
    before = seg.data[1].copy()
    gc = GrabCutWidget(viewer)
    gc.run()
    _wait_idle(qtbot, gc)
    assert gc.last_changed > 0
    after = seg.data[1]
    assert after[70, 30] == 2 and after[24, 70] == 2 and np.any(after == 1)  # objects / background
    assert np.array_equal(seg.data[0], load_dataset(dataset_dir)[0].segmentation)  # slice 0 untouched
    seg.undo()
    assert np.array_equal(seg.data[1], before)
    seg.redo()
    assert seg.data[1][70, 30] == 2
    qtbot.waitUntil(lambda: dict(ann.table_status())["b"]["segmentation"], timeout=3000)

    # Train a tiny model; Stop after a few steps.
    tw = TrainWidget(viewer)
    _tiny_trainer(tw)
    tw.model_dir.setText(str(tmp_path / "model"))
    tw.scale.setCurrentText("0.5")  # the network works at half size; layers stay full size
    tw.start()
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.iteration >= 3, timeout=30_000)
    tw.stop()
    _wait_idle(qtbot, tw)
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.kind == "done", timeout=5000)
    assert (tmp_path / "model" / "best.pt").exists() and (tmp_path / "model" / "latest.pt").exists()
    # resume: continues from latest.pt; the new best model triggers a preview of the view
    tw.budget.setValue(2)
    tw.preview.setChecked(True)
    tw.image_combo.setCurrentText("images")
    tw.start()
    _wait_idle(qtbot, tw)
    qtbot.waitUntil(lambda: tw.preview_worker is None, timeout=30_000)
    assert "images preview" in viewer.layers
    preview = viewer.layers["images preview"]
    assert preview.data.ndim == 3 and preview.data.shape[0] == 1 and preview.translate[0] == 1
    from napari_lazylabels.core.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "model" / "latest.pt").iteration >= 5
    assert load_checkpoint(tmp_path / "model" / "latest.pt").model_config.scale == 0.5

    # Predict; layers appear; re-predict updates them in place.
    pw = PredictWidget(viewer)
    assert pw.model_dir.text() == str(tmp_path / "model")
    from napari_lazylabels.core.predict import PredictConfig

    # the engine's defaults preselected
    assert int(pw.tta.currentText().split()[0]) == PredictConfig().tta
    assert pw.large_tta.currentText() == str(PredictConfig().large_image_tta)
    pw.set_chosen(["images"])
    pw.interface_threshold.setValue(0.7)
    pw.run()
    _wait_idle(qtbot, pw)
    settings = viewer.layers["images instances"].metadata["lazylabels"]["settings"]
    assert settings["interface_threshold"] == 0.7 and settings["min_object_size"] == settings["auto_min_object_size"] >= 16
    assert settings["auto_interface_threshold"] in (0.3, 0.5, 0.7, 0.85, 0.95)
    classes = viewer.layers["images classes"]
    assert classes.data.shape == (2, 96, 96) and classes.data.dtype == np.uint8
    assert viewer.layers["images instances"].data.dtype == np.uint16  # < 65536 objects: shown without hashing
    assert viewer.layers["images interfaces"].data.dtype == np.float32
    prob = viewer.layers["images probabilities"]
    assert prob.data.shape == (2, 96, 96) and prob.data.dtype == np.float32
    n_layers = len(viewer.layers)
    pw.run()
    _wait_idle(qtbot, pw)
    assert len(viewer.layers) == n_layers and viewer.layers["images classes"] is classes

    # Paint, save the project with the writer, reopen: labels intact.
    det = viewer.layers["detection"]
    det.data_setitem((np.array([0]), np.array([50]), np.array([50])), 2)
    out = tmp_path / "saved"
    layers = [viewer.layers[n] for n in ("images", "detection", "separation", "segmentation")]
    from napari_lazylabels._writer import write_dataset

    written = write_dataset(str(out), [ly.as_layer_data_tuple() for ly in layers])
    assert written == [str(out)]
    again = load_dataset(out)
    assert again.names() == ["a", "b"]
    assert again[0].detection[50, 50] == 2
    assert np.array_equal(again[1].segmentation, seg.data[1])
    from napari_lazylabels._reader import get_reader

    reopened = {kw["name"]: d for d, kw, _ in get_reader(str(out))(str(out))}
    assert np.array_equal(reopened["segmentation"][1], seg.data[1])
    assert np.array_equal(reopened["detection"], det.data)

    # Project save/load from the annotation widget.
    ann.image_combo.refresh()
    ann.image_combo.setCurrentText("images")
    root = ann.save_project(str(tmp_path / "proj2"))
    assert load_dataset(root).names() == ["a", "b"]


@pytest.mark.gui
def test_save_via_napari_writer(make_napari_viewer, dataset_dir, tmp_path):
    viewer = make_napari_viewer(show=True)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")
    out = tmp_path / "via_napari"
    viewer.layers.select_all()
    paths = viewer.layers.save(str(out), selected=True, plugin="napari-lazylabels")
    assert Path(paths[0]).is_dir()
    assert load_dataset(paths[0]).names() == ["a", "b"]


@pytest.mark.gui
def test_one_click(make_napari_viewer, qtbot, dataset_dir, tmp_path):
    from napari_lazylabels._widgets.train import OneClickWidget

    viewer = make_napari_viewer(show=True)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")
    w = OneClickWidget(viewer)
    viewer.window.add_dock_widget(w)
    _tiny_trainer(w.trainer, iterations=3)
    w.trainer.model_dir.setText(str(tmp_path / "m"))
    w.run()
    qtbot.waitUntil(lambda: "images classes" in viewer.layers and not w.trainer.is_running(), timeout=60_000)
    runner = w.trainer._predictor_runner
    qtbot.waitUntil(lambda: runner.worker is None, timeout=30_000)
    assert viewer.layers["images classes"].data.shape == (2, 96, 96)


@pytest.mark.gui
def test_resplit_applies_instance_settings_without_the_network(make_napari_viewer, qtbot, monkeypatch):
    """Re-split cuts the instances again from the classes and interfaces layers: a bar crossed
    by a line of interface probability 0.7 is two objects at threshold 0.5 and one at 0.9;
    "auto" smallest object is the model's size kept on the instances layer; a huge smallest
    object drops them all; an image without a prediction gets a message."""
    from napari_lazylabels._widgets import _common
    from napari_lazylabels._widgets._layers import META, prediction_layer_data
    from napari_lazylabels._widgets._viewer import upsert_layers
    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels.core.predict import Prediction

    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((40, 100), np.float32), name="im")
    classes = np.zeros((40, 100), np.uint8)
    classes[10:30, 10:90] = 1
    interfaces = np.zeros((40, 100), np.float32)
    interfaces[10:30, 49:51] = 0.7
    probs = np.stack([1.0 - classes, classes]).astype(np.float32)
    pred = Prediction(probs, classes, interfaces, (classes > 0).astype(np.int32))
    upsert_layers(viewer, prediction_layer_data("im", [pred], None, {"auto_min_object_size": 500, "auto_interface_threshold": 0.9}))
    pw = PredictWidget(viewer)
    pw.set_chosen(["im"])

    def resplit(threshold, min_size=0):
        pw.interface_threshold.setValue(threshold)
        pw.min_size.setValue(min_size)
        pw.resplit()
        _wait_idle(qtbot, pw)
        return viewer.layers["im instances"]

    inst = resplit(0.5)
    assert len(np.unique(inst.data[classes > 0])) == 2 and inst.data[20, 20] != inst.data[20, 80]
    assert inst.metadata[META]["settings"]["min_object_size"] == 500  # auto: the model's
    assert resplit(0.0).data.max() == 1  # auto: the model's 0.9
    assert inst.metadata[META]["settings"]["interface_threshold"] == 0.9
    assert resplit(0.5).data.max() == 2
    assert resplit(0.9, min_size=5000).data.max() == 0  # 1600 px bar: a speck now
    assert inst.metadata[META]["settings"] == {"interface_threshold": 0.9, "neck_depth": 0.0, "min_object_size": 5000,
                                               "link_slices": False,
                                               "auto_min_object_size": 500, "auto_interface_threshold": 0.9}

    shown = []
    monkeypatch.setattr(_common, "show_error", lambda e: shown.append(str(e)))
    viewer.add_image(np.zeros((8, 8), np.float32), name="fresh")
    pw.set_chosen(["fresh"])
    pw.resplit()
    assert shown and "press Predict first" in shown[-1]


@pytest.mark.gui
def test_errors_become_notifications(make_napari_viewer, monkeypatch):
    from napari_lazylabels._widgets import _common
    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels._widgets.train import TrainWidget

    shown = []
    monkeypatch.setattr(_common, "show_error", lambda e: shown.append(str(e)))
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.zeros((32, 32), np.uint8), name="blank")
    TrainWidget(viewer).start()
    assert shown and "No image has lazy labels" in shown[-1]
    pw = PredictWidget(viewer)
    pw.model_dir.setText("")
    pw.run()
    assert "No model yet" in shown[-1]


def _measure_responsiveness(viewer, qtbot, tmp_path, configure) -> tuple[float, str]:
    from qtpy.QtCore import QTimer

    from napari_lazylabels._widgets.train import TrainWidget

    tw = TrainWidget(viewer)
    configure(tw)
    tw.model_dir.setText(str(tmp_path / "model"))
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    tw.start()  # warm-up imports happen here, before the worker and the measurement
    qtbot.waitUntil(lambda: tw.last_event is not None and tw.last_event.iteration >= 1, timeout=60_000)
    timer.start()
    _wait_idle(qtbot, tw, timeout=120_000)
    timer.stop()
    gaps = np.diff(ticks) * 1000
    worst = float(gaps.max())
    cfg = tw.train_config()
    size = tw.widths if tw.widths is not None else tw.size.currentText()
    line = (
        f"GUI responsiveness while training (model {size}, {tw.last_event.iteration} iterations, "
        f"batch {cfg.batch_size}, patch {cfg.augment.patch_size}, {os.cpu_count()} cores, torch threads "
        f"{cfg.num_threads}): longest gap between 10 ms timer ticks {worst:.1f} ms, median "
        f"{np.median(gaps):.1f} ms, p99 {np.percentile(gaps, 99):.1f} ms over {len(gaps)} ticks"
    )
    out = os.environ.get("LAZYLABELS_BENCH_OUT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
    print(line)  # noqa: T201 - the figure for docs/benchmarks.md (pytest -s)
    assert len(gaps) > 20
    return worst, line


@pytest.mark.gui
def test_training_keeps_gui_responsive(make_napari_viewer, qtbot, dataset_dir, tmp_path):
    """Longest gap between 10 ms QTimer ticks while a tiny model trains in the worker."""
    viewer = make_napari_viewer(show=True)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")

    def configure(tw):
        _tiny_trainer(tw, iterations=80)
        tw.patch.setValue(64)
        tw.batch.setValue(4)

    worst, line = _measure_responsiveness(viewer, qtbot, tmp_path, configure)
    assert worst < 100, line


@pytest.mark.gui
@pytest.mark.slow
def test_training_keeps_gui_responsive_default_model(make_napari_viewer, qtbot, dataset_dir, tmp_path):
    """The same with the CPU defaults (the default model size, batch 4, patch 128) for 8 seconds."""
    viewer = make_napari_viewer(show=True)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")

    def configure(tw):
        tw.device.setCurrentText("cpu")
        tw.budget_kind.setCurrentText("seconds")
        tw.budget.setValue(8)
        tw.preview.setChecked(False)

    worst, line = _measure_responsiveness(viewer, qtbot, tmp_path, configure)
    assert worst < 100, line


@pytest.mark.gui
def test_annotation_on_new_rgb_image(make_napari_viewer, qtbot, tmp_path):
    from napari_lazylabels._widgets.annotate import AnnotationWidget
    from napari_lazylabels._widgets.grabcut import GrabCutWidget

    viewer = make_napari_viewer(show=True)
    s = make_sample("rgb", rgb=True)
    viewer.add_image(s.image, name="rgb")
    ann = AnnotationWidget(viewer)
    ann.classes_edit.setText("background, round:#00ff00, other")
    tasks = ann.create_layers()
    assert [tasks[t].data.shape for t in ("detection", "separation", "segmentation")] == [(96, 96)] * 3
    assert tasks["detection"].data.dtype == np.uint8
    assert tasks["detection"].selected_label == 2 and tasks["separation"].selected_label == 2
    assert viewer.layers.selection.active is tasks["detection"] and tasks["detection"].mode == "paint"
    assert ann.table_status() == [("rgb", {"detection": False, "separation": False, "segmentation": False})]
    _set = tasks["detection"].data_setitem
    rr, cc = np.nonzero(s.detection)
    _set((rr, cc), s.detection[rr, cc])
    qtbot.waitUntil(lambda: ann.table_status()[0][1]["detection"], timeout=3000)

    # GrabCut only the selected label's marks (class "round" = 2): nothing of class 3 exists.
    gc = GrabCutWidget(viewer)
    gc.scope.setCurrentText("selected label")
    tasks["detection"].selected_label = 3
    gc.run()
    qtbot.waitUntil(lambda: not gc.is_running(), timeout=30_000)
    assert not np.any(tasks["segmentation"].data)
    gc.scope.setCurrentText("objects in view")
    gc.run()
    qtbot.waitUntil(lambda: not gc.is_running(), timeout=30_000)
    assert tasks["segmentation"].data[24, 24] == 2

    root = ann.save_project(str(tmp_path / "p"))
    ds = load_dataset(root)
    assert ds.classes.names == ("background", "round", "other") and ds.classes.colors[1] == "#00ff00"
    assert ds[0].image.shape == (96, 96, 3)
    assert np.array_equal(ds[0].detection, s.detection)
    layers = ann.load_project(str(root))
    assert [ly.name for ly in layers][:2] == ["rgb", "detection"]
    assert viewer.layers["detection"] is tasks["detection"]  # updated in place
