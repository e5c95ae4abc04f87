"""Multi-channel images in the viewer (issue 26, channels): a (C, Y, X) TIFF opened with
napari's own reader is one image with channels, a project keeps its channels, the Train
widget chooses the channels of a new model, and Predict refuses an image of other channels
with one notification."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")
pytest.importorskip("qtpy")

from napari_lazylabels.core.io import LazyDataset, save_dataset  # noqa: E402
from napari_lazylabels.core.labels import ClassSpec  # noqa: E402
from test_widgets import make_sample  # noqa: E402


def _annotation(viewer):
    """The annotation widget as the Plugins menu makes it."""
    _, ann = viewer.window.add_plugin_dock_widget("napari-lazylabels", "Lazy annotation")
    return ann


@pytest.fixture
def shown(monkeypatch):
    """Every notification: ``[(level, message)]``."""
    from napari.utils import notifications

    from napari_lazylabels._widgets import _common

    out: list[tuple[str, str]] = []
    for level in ("error", "warning", "info"):
        monkeypatch.setattr(notifications, f"show_{level}", lambda m, level=level: out.append((level, str(m))))
    monkeypatch.setattr(_common, "show_error", lambda m: out.append(("error", str(m))))
    return out


@pytest.fixture
def channel_project(tmp_path):
    """A project of two annotated 4-channel images (the objects in channel 0)."""
    samples = []
    rng = np.random.default_rng(0)
    for i in range(2):
        s = make_sample(f"c{i}", seed=i)
        noise = (rng.random((*s.image.shape[:2], 3)) * 3000).astype(np.uint16)
        s.image = np.dstack([s.image.astype(np.uint16) * 10, noise])
        samples.append(s)
    return save_dataset(LazyDataset(ClassSpec(("background", "cell")), samples), tmp_path / "project")


@pytest.mark.gui
def test_a_channel_tiff_opened_by_napari_is_one_image_with_channels(make_napari_viewer, tmp_path):
    cyx = np.random.default_rng(0).integers(0, 4000, (2, 64, 80)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "fluo.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    viewer = make_napari_viewer(show=True)
    ann = _annotation(viewer)
    viewer.open(str(tmp_path / "fluo.tif"))  # napari's own reader: a (2, 64, 80) layer, a slider
    layer = viewer.layers["fluo"]
    assert layer.data.shape == (2, 64, 80)
    assert not ann.first_axis_channels.isHidden() and ann.first_axis_channels.isChecked()  # the file says C
    tasks = ann.create_layers()
    assert all(ly.data.shape == (64, 80) for ly in tasks.values())
    from napari_lazylabels._widgets import _layers

    np.testing.assert_array_equal(_layers.image_plane(layer), np.moveaxis(cyx, 0, -1))
    assert ann.table_status() == [("fluo", {"detection": False, "separation": False, "segmentation": False})]
    # unticked, the planes are a stack of two images (as any 3D layer)
    ann.first_axis_channels.setChecked(False)
    assert _layers.label_shape(layer) == (2, 64, 80) and len(ann.table_status()) == 2


@pytest.mark.gui
def test_a_yxc_tiff_is_channels_not_a_stack_of_thin_images(make_napari_viewer, tmp_path):
    """napari shows a (512, 512, 2) TIFF as 512 images 2 px wide; the plugin takes it as one
    image with 2 channels and makes (512, 512) label layers."""
    tifffile.imwrite(tmp_path / "two_channels.tif", np.zeros((512, 512, 2), np.uint8))
    viewer = make_napari_viewer(show=True)
    ann = _annotation(viewer)
    viewer.open(str(tmp_path / "two_channels.tif"))
    assert viewer.layers[0].data.shape == (512, 512, 2)
    assert ann.first_axis_channels.isHidden()
    tasks = ann.create_layers()
    assert all(ly.data.shape == (512, 512) for ly in tasks.values())


@pytest.mark.gui
def test_train_widget_chooses_channels_and_predict_refuses_other_images(
    make_napari_viewer, qtbot, channel_project, shown, tmp_path
):
    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels._widgets.train import TrainWidget
    from napari_lazylabels.core.checkpoint import load_checkpoint

    viewer = make_napari_viewer(show=True)
    viewer.open(str(channel_project), plugin="napari-lazylabels")
    images = viewer.layers["images"]
    assert images.data.shape == (2, 4, 96, 96) and viewer.layers["detection"].data.shape == (2, 96, 96)
    tw = TrainWidget(viewer)
    viewer.window.add_dock_widget(tw)
    tw.image_combo.setCurrentText("images")
    assert not tw.channels.isHidden() and [b.text() for b in tw.channels.boxes] == ["0", "1", "2", "3"]
    assert tw.channels.chosen() == (0, 1, 2, 3)  # all by default
    tw.channels.boxes[1].setChecked(False)
    tw.widths = (4, 8)
    tw.device.setCurrentText("cpu")
    tw.budget_kind.setCurrentText("iterations")
    tw.budget.setValue(2)
    tw.batch.setValue(2)
    tw.patch.setValue(48)
    tw.start()
    qtbot.waitUntil(lambda: not tw.is_running(), timeout=120_000)
    model_dir = tw.last_result_dir
    mc = load_checkpoint(model_dir).model_config
    assert (mc.channels, mc.source_channels, mc.in_channels) == ((0, 2, 3), 4, 3)

    # a gray image is refused in one notification; the channel image is predicted
    viewer.add_image(np.zeros((96, 96), np.uint8), name="gray")
    pw = PredictWidget(viewer)
    viewer.window.add_dock_widget(pw)
    pw.model_dir.setText(str(model_dir))
    pw.device.setCurrentText("cpu")
    pw.tta.setCurrentIndex(0)
    shown.clear()
    pw.set_chosen(["images", "gray"])  # the gray image is refused before the other is predicted
    with qtbot.capture_exceptions():
        pw.run()
        qtbot.waitUntil(lambda: not pw.is_running(), timeout=60_000)
    errors = [m for lvl, m in shown if lvl == "error"]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "trained on 4-channel images" in errors[0] and "has 1 channel" in errors[0]
    assert "gray classes" not in viewer.layers and "images classes" not in viewer.layers
    shown.clear()
    pw.set_chosen(["images"])
    pw.run()
    qtbot.waitUntil(lambda: not pw.is_running(), timeout=120_000)
    assert viewer.layers["images classes"].data.shape == (2, 96, 96)


@pytest.mark.gui
def test_layers_split_per_channel_combine_into_one_image(make_napari_viewer):
    """napari splits an image with ``channel_axis`` into one layer per channel: selected and
    combined, they are one multi-channel image, its channels named after the layers."""
    from napari_lazylabels._widgets import _layers
    from napari_lazylabels._widgets.train import TrainWidget

    cyx = np.random.default_rng(0).integers(0, 4000, (2, 64, 80)).astype(np.uint16)
    viewer = make_napari_viewer(show=True)
    split = viewer.add_image(cyx, channel_axis=0, name=["DAPI", "GFP"], scale=(0.5, 0.5))
    ann = _annotation(viewer)
    viewer.layers.selection = set(split)
    image = ann.combine_channels()
    assert image.data.shape == (2, 64, 80) and tuple(image.scale)[-2:] == (0.5, 0.5)
    assert ann.image_combo.currentText() == image.name and not any(ly.visible for ly in split)
    np.testing.assert_array_equal(_layers.image_plane(image), np.moveaxis(cyx, 0, -1))
    tasks = ann.create_layers()
    assert all(ly.data.shape == (64, 80) and tuple(ly.scale) == (0.5, 0.5) for ly in tasks.values())
    tw = TrainWidget(viewer)
    tw.image_combo.setCurrentText(image.name)
    assert [b.text() for b in tw.channels.boxes] == ["0 DAPI", "1 GFP"]
    with pytest.raises(ValueError, match="2D shape"):
        _layers.channels_layer_data([split[0]])


def test_a_model_of_three_chosen_channels_is_not_called_a_colour_model():
    """The Predict widget's model report names an RGB model used on gray images; a model
    reading three channels of a multi-channel image is not an RGB model, so an image whose
    channels look alike gets no such note."""
    from types import SimpleNamespace

    from napari_lazylabels._widgets.predict import _model_report
    from napari_lazylabels.core.labels import ClassSpec
    from napari_lazylabels.core.model import ModelConfig

    flat = np.full((32, 32, 4), 7, np.uint8)  # every channel alike: looks gray
    classes = ClassSpec(names=("background", "cell"))
    rgb = SimpleNamespace(model_config=ModelConfig(in_channels=3), iteration=500, metrics={}, classes=classes)
    chosen = SimpleNamespace(model_config=ModelConfig(in_channels=3, channels=(0, 2, 3), source_channels=4),
                             iteration=500, metrics={}, classes=classes)
    assert any("colour (RGB)" in n for n in _model_report(rgb, [("im", [flat[..., :3]])])[1])
    assert not any("colour (RGB)" in n for n in _model_report(chosen, [("im", [flat])])[1])


@pytest.mark.gui
def test_channel_names_come_from_the_file_napari_opened(make_napari_viewer, tmp_path):
    """ImageJ slice labels (and OME channel names) of a (C, Y, X) TIFF name the Train widget's
    channel boxes; a file without names keeps the numbers."""
    cyx = np.random.default_rng(0).integers(0, 4000, (2, 64, 80)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "named.tif", cyx, imagej=True, metadata={"axes": "CYX", "Labels": ["DAPI", "GFP"]})
    tifffile.imwrite(tmp_path / "ome.ome.tif", cyx, ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["Hoechst", "actin"]}})
    tifffile.imwrite(tmp_path / "plain.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    viewer = make_napari_viewer(show=True)
    _, tw = viewer.window.add_plugin_dock_widget("napari-lazylabels", "Train")
    for name, expected in (("named", ["0 DAPI", "1 GFP"]), ("ome.ome", ["0 Hoechst", "1 actin"]), ("plain", ["0", "1"])):
        viewer.open(str(tmp_path / f"{name}.tif"))
        tw.image_combo.setCurrentText(name)
        tw._show_channels()
        assert not tw.channels.isHidden() and [b.text() for b in tw.channels.boxes] == expected, name
