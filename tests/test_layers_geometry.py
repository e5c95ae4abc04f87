"""Layers made by the plugin line up with the user's image (scale, translate, units), the
sample opens laid out, background marks stand out, and widgets opened from the Plugins menu
(napari's viewer proxy) behave like the ones built directly (issues 23 and 26)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_lazylabels.core.io import LazyDataset, Sample, load_dataset, read_images, save_dataset  # noqa: E402
from napari_lazylabels.core.labels import ClassSpec  # noqa: E402

SCALE = (0.5, 0.5)
TRANSLATE = (10.0, -20.0)
TASK_NAMES = ["detection", "separation", "segmentation"]


def _image(shape=(600, 500), mean=40.0, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, 20, shape), 0, 255).astype(np.uint8)


def _plugin_widget(viewer):
    """The annotation widget as the Plugins menu makes it (it holds napari's viewer proxy)."""
    _, ann = viewer.window.add_plugin_dock_widget("napari-lazylabels", "Lazy annotation")
    assert type(ann.viewer).__name__ == "PublicOnlyProxy"
    return ann


def _scaled_image(viewer, **kw):
    return viewer.add_image(_image(), name="cells", scale=SCALE, translate=TRANSLATE, units=("um", "um"), **kw)


def _geometry(layer) -> tuple:
    return tuple(layer.scale), tuple(layer.translate), tuple(str(u) for u in layer.units)


# --------------------------------------------------------------------------- label layers
@pytest.mark.gui
def test_label_layers_take_the_image_geometry_from_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    ann = _plugin_widget(viewer)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tasks = ann.create_layers()
    assert not [str(c.message) for c in caught if "Private attribute" in str(c.message)]
    # one image in the viewer: plain task names, even through the proxy
    assert [ly.name for ly in viewer.layers] == ["cells", *TASK_NAMES]
    for task in TASK_NAMES:
        assert _geometry(viewer.layers[task]) == _geometry(image) == (SCALE, TRANSLATE, ("micrometer",) * 2)

    # A mark painted over image pixel (400, 300) lands at label index (400, 300).
    det = viewer.layers["detection"]
    world = image.data_to_world((400, 300))
    assert np.allclose(world, (10 + 200, -20 + 150))
    at = np.round(det.world_to_data(world)).astype(int)
    assert tuple(at) == (400, 300)
    det.brush_size = 8  # in image pixels
    det.paint(tuple(at), 2)
    assert det.data[400, 300] == 2
    row = np.flatnonzero(det.data[400])
    assert row.min() == 296 and row.max() == 304  # a brush of 8 image pixels (+ centre)
    assert tasks["detection"].brush_size == ann.brush.value()


@pytest.mark.gui
def test_update_realigns_labels_after_the_image_moves(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    ann = _plugin_widget(viewer)
    ann.create_layers()
    image.translate = (0.0, 0.0)
    image.scale = (2.0, 2.0)
    ann.create_layers()  # "Create / update label layers"
    assert [ly.name for ly in viewer.layers] == ["cells", *TASK_NAMES]
    assert all(_geometry(viewer.layers[t])[:2] == ((2.0, 2.0), (0.0, 0.0)) for t in TASK_NAMES)
    # a new class list: the layers keep their labels and take the classes' names and colours
    det = viewer.layers["detection"]
    det.data[5, 5] = 2
    ann.classes_edit.setText("background, nucleus, mitosis:#123456")
    ann.create_layers()
    assert det.data[5, 5] == 2 and len(viewer.layers) == 1 + len(TASK_NAMES)
    assert list(det.features["class"]) == ["background", "nucleus", "mitosis"]
    assert det.metadata["lazylabels"]["classes"]["names"] == ["background", "nucleus", "mitosis"]
    assert np.allclose(det.colormap.map(np.array([3]))[0][:3], [0x12 / 255, 0x34 / 255, 0x56 / 255])


# --------------------------------------------------------------------------- predictions
def _prediction(shape, n_classes=2):
    from napari_lazylabels.core.predict import Prediction

    probs = np.full((n_classes, *shape), 1.0 / n_classes, np.float32)
    classes = np.zeros(shape, np.uint8)
    classes[50:90, 60:120] = 1
    return Prediction(probabilities=probs, classes=classes, interfaces=np.zeros(shape, np.float32),
                      instances=(classes > 0).astype(np.int32))


@pytest.mark.gui
def test_prediction_layers_take_the_image_geometry(make_napari_viewer):
    from napari_lazylabels._widgets import _layers, _viewer

    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    ann = _plugin_widget(viewer)
    classes = ClassSpec(names=("background", "nucleus"))
    # as the Predict widget calls it: by image name only; upsert_layers finds the image
    layers = _viewer.upsert_layers(ann.viewer, _layers.prediction_layer_data("cells", [_prediction((600, 500))], classes))
    assert [ly.name for ly in layers] == ["cells classes", "cells instances", "cells interfaces", "cells probabilities"]
    for ly in layers:
        assert _geometry(ly) == _geometry(image), ly.name
    # re-predicting updates in place and keeps the geometry; an explicit geometry also works
    image.translate = (0.0, 5.0)
    data = _layers.prediction_layer_data("cells", [_prediction((600, 500))], classes, geometry=image)
    assert all(kw["translate"] == (0.0, 5.0) and kw["scale"] == SCALE for _, kw, _ in data)
    again = _viewer.upsert_layers(ann.viewer, data)
    assert [ly.name for ly in again] == [ly.name for ly in layers]
    assert viewer.layers["cells classes"].translate.tolist() == [0.0, 5.0]
    inst = _layers.instances_layer_data("cells", np.zeros((600, 500), np.int32), geometry=image)
    assert inst[1]["scale"] == SCALE
    # the helper other widgets use for the layers they make themselves
    assert _layers.labels_layer_kwargs("segmentation", "cells", classes, geometry=image)["translate"] == (0.0, 5.0)
    crop = _layers.geometry_kwargs(image, ndim=2, offset=(100, 40))  # a preview of a crop
    assert crop["translate"] == (0.0 + 100 * 0.5, 5.0 + 40 * 0.5) and crop["scale"] == SCALE

    # the class map names its classes: napari's status bar shows the class under the cursor
    status = viewer.layers["cells classes"].get_status(position=image.data_to_world((70, 100)), world=True)
    assert "nucleus" in str(status)


# --------------------------------------------------------------------------- dataset folder
@pytest.mark.gui
def test_save_and_reopen_keeps_the_geometry(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    ann = _plugin_widget(viewer)
    ann.create_layers()
    viewer.layers["detection"].data[100:110, 100:110] = 2
    root = ann.save_project(str(tmp_path / "proj"))
    stored = json.loads((root / "lazylabels.json").read_text())["geometry"]
    assert stored == {"cells": {"scale": [0.5, 0.5], "translate": [10.0, -20.0], "units": ["micrometer"] * 2}}
    assert load_dataset(root)[0].geometry == stored["cells"]

    # reopened in a fresh viewer through the reader: image and labels where they were
    viewer2 = make_napari_viewer(show=True)
    viewer2.open(str(root), plugin="napari-lazylabels")
    assert [ly.name for ly in viewer2.layers] == ["cells", *TASK_NAMES]
    for ly in viewer2.layers:
        assert _geometry(ly) == _geometry(image), ly.name
    assert viewer2.layers["detection"].data[105, 105] == 2

    # the napari writer (File > Save Selected Layers) keeps it as well
    from napari_lazylabels._writer import write_dataset

    out = write_dataset(str(tmp_path / "copy"), [ly.as_layer_data_tuple() for ly in viewer2.layers])
    assert load_dataset(out[0])[0].geometry == stored["cells"]


def test_old_dataset_folders_load_without_geometry(tmp_path):
    from napari_lazylabels._widgets._layers import dataset_to_layer_data

    ds = LazyDataset(samples=[Sample("a", _image((64, 64)))])
    root = save_dataset(ds, tmp_path / "old")
    meta = json.loads((root / "lazylabels.json").read_text())
    assert "geometry" not in meta  # plain pixels: the JSON stays as before
    (root / "lazylabels.json").write_text(json.dumps({"classes": meta["classes"]}))  # an old folder
    loaded = load_dataset(root)
    assert loaded[0].geometry is None
    assert all("scale" not in kw for _, kw, _ in dataset_to_layer_data(loaded))
    # a malformed entry is skipped, the images still open
    (root / "lazylabels.json").write_text(json.dumps({**meta, "geometry": {"a": {"scale": [0, "x"]}}}))
    assert load_dataset(root)[0].geometry is None


# --------------------------------------------------------------------------- the sample
def _world_box(layer) -> np.ndarray:
    """``(2, 2)`` world (y, x) corners of a layer's last two axes."""
    return np.asarray(layer.extent.world)[:, -2:]


@pytest.mark.gui
def test_sample_opens_laid_out_with_visible_background(make_napari_viewer):
    try:
        from napari_lazylabels.sample_data import sample_paths  # noqa: F401
    except ImportError:
        pytest.skip("the bundled sample folder is not there")
    from napari_lazylabels._widgets import _colors, _layers, _viewer

    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-lazylabels", "lazy_labels")
    images = [ly for ly in viewer.layers if ly.__class__.__name__ == "Image"]
    assert len(images) >= 2
    boxes = [_world_box(ly) for ly in images]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            (ay0, ax0), (ay1, ax1) = boxes[i]
            (by0, bx0), (by1, bx1) = boxes[j]
            overlap = min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0)
            assert not overlap, (images[i].name, images[j].name)
    for image in images:
        tasks = _layers.find_task_layers(viewer.layers, image)
        mean = _viewer.image_display_color(image)
        for task, ly in tasks.items():
            assert ly is not None and np.allclose(_world_box(ly), _world_box(image)), (image.name, task)
        bg = tasks["detection"].colormap.map(np.array([1]))[0]  # value 1 = background class
        assert _colors.contrast_ratio(bg, mean) >= 3, (image.name, bg, mean)


@pytest.mark.gui
def test_background_marks_stand_out_on_gray_and_bright_images(make_napari_viewer):
    from napari_lazylabels._widgets import _colors, _viewer

    viewer = make_napari_viewer(show=True)
    em = viewer.add_image(_image((128, 128), mean=128.0), name="em", contrast_limits=(0, 255))
    ann = _plugin_widget(viewer)
    ann.create_layers()
    for task in ("detection", "separation", "segmentation"):
        bg = viewer.layers[task].colormap.map(np.array([1]))[0]
        assert _colors.contrast_ratio(bg, _viewer.image_display_color(em)) >= 3, task
    bright = np.full((64, 64), 230, np.uint8)
    assert _colors.contrast_ratio(_colors.background_color(bright, contrast_limits=(0, 255)),
                                  _colors.mean_display_color(bright, contrast_limits=(0, 255))) >= 3
    # a colour set by the project wins
    assert _colors.task_colormap("detection", ClassSpec(("background", "x"), ("#123456", "")), "#00ffff")[1] == "#123456"


# --------------------------------------------------------------------------- channels
@pytest.mark.gui
def test_two_channel_tiff_is_one_image_with_channels(make_napari_viewer, monkeypatch, tmp_path):
    """A (Y, X, 2) TIFF, which napari shows as 512 images 2 px wide, is one 2-channel image to
    the CLI's reader and to the widgets (tests/test_channels*.py test channels further)."""
    import tifffile

    from napari_lazylabels._widgets import _common

    path = tmp_path / "two_channels.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 2), np.uint8))
    assert [im.shape for _, im in read_images(path)] == [(512, 512, 2)]  # the CLI's reader

    shown = []
    monkeypatch.setattr(_common, "show_error", lambda e: shown.append(str(e)))
    viewer = make_napari_viewer(show=True)
    ann = _plugin_widget(viewer)  # docked first: opening the image must not raise in a Qt slot
    viewer.open(str(path))
    assert viewer.layers[0].data.shape == (512, 512, 2)
    assert ann.image_combo.currentText() == viewer.layers[0].name
    tasks = ann.create_layers()
    assert not shown and all(ly.data.shape == (512, 512) for ly in tasks.values())


# --------------------------------------------------------------------------- visible region
@pytest.mark.gui
def test_view_region_uses_public_api_only(make_napari_viewer, qtbot):
    from napari_lazylabels._widgets import _viewer

    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    ann = _plugin_widget(viewer)
    camera = viewer.scene.camera
    camera.center = image.data_to_world((300, 250))
    camera.zoom = 4.0
    h, w = viewer.canvas.size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows, cols = _viewer.view_region(ann.viewer, ann.viewer.layers["cells"])
    assert not [str(c.message) for c in caught if "Private attribute" in str(c.message)]
    # canvas pixels / zoom = world units; / scale 0.5 = image pixels
    assert abs((rows.stop - rows.start) - h / 4.0 / 0.5) <= 2 and abs((rows.start + rows.stop) / 2 - 300) <= 1
    assert abs((cols.stop - cols.start) - w / 4.0 / 0.5) <= 2 and abs((cols.start + cols.stop) / 2 - 250) <= 1


@pytest.mark.gui
def test_grabcut_makes_its_segmentation_layer_on_the_image(make_napari_viewer, qtbot):
    """GrabCut on an image that has detection marks but no segmentation layer yet: the layer
    it creates lies over the image (scale, translate, units), like the annotation widget's."""
    from napari_lazylabels._widgets import _layers
    from napari_lazylabels._widgets.grabcut import GrabCutWidget

    viewer = make_napari_viewer(show=True)
    image = _scaled_image(viewer)
    det = np.zeros(image.data.shape, np.uint8)
    det[100:110, 100:110], det[300:304, 300:304] = 2, 1
    classes = ClassSpec(("background", "cell"))
    viewer.add_labels(det, **_layers.labels_layer_kwargs("detection", image.name, classes, geometry=image))
    gc = GrabCutWidget(viewer)
    gc.image_combo.refresh()
    gc.run()
    qtbot.waitUntil(lambda: gc.worker is None, timeout=60_000)
    seg = [ly for ly in viewer.layers if ly.name.startswith("segmentation")]
    assert len(seg) == 1 and _geometry(seg[0]) == _geometry(image)
