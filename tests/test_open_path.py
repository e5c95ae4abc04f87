"""napari's own open path (File > Open, drag and drop, ``viewer.open(path)`` with no plugin
named): plain images open with napari's reader and no "Choose reader" question; a project
opens with ours from its ``lazylabels.json`` or its folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("qtpy")

pytestmark = pytest.mark.gui

PLUGIN = "napari-lazylabels"


def _image(shape=(40, 56)) -> np.ndarray:
    """A small gray ``uint8`` image ``(H, W)`` with a bright square."""
    img = np.random.default_rng(0).integers(0, 60, shape, dtype=np.uint8)
    img[10:20, 12:30] = 200
    return img


def _write(path: Path, img: np.ndarray) -> Path:
    if path.suffix == ".png":
        import cv2

        assert cv2.imwrite(str(path), img)
    else:
        import tifffile

        tifffile.imwrite(str(path), img)
    return path


def _reader_plugins(path) -> set[str]:
    """Plugins whose manifest offers a reader for ``path`` (what napari's open path asks)."""
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    return {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}


@pytest.fixture
def no_reader_dialog(monkeypatch):
    """Fail the test if napari asks the user to choose a reader (QtReaderDialog)."""
    from napari._qt.dialogs import qt_reader_dialog

    def ask(self):
        pytest.fail(f"napari asked 'Choose reader' for {self._current_file}")

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", ask)


def test_manifest_claims_projects_not_images(tmp_path):
    from napari_lazylabels.core.io import LazyDataset, Sample, save_dataset

    root = save_dataset(LazyDataset(samples=[Sample(name="a", image=_image())]), tmp_path / "p")
    for name in ("slice_00.png", "stack.tif", "UPPER.TIFF", "photo.jpg", "notes.json"):
        assert PLUGIN not in _reader_plugins(tmp_path / name), name
    assert "napari" in _reader_plugins(tmp_path / "slice_00.png")
    assert _reader_plugins(root / "lazylabels.json") == {PLUGIN}
    assert PLUGIN in _reader_plugins(root)


def test_plain_images_open_with_napari_reader(make_napari_viewer, tmp_path, no_reader_dialog):
    viewer = make_napari_viewer(show=True)
    img = _image()
    for name in ("slice_00.png", "stack.tif"):
        path = _write(tmp_path / name, img)
        # File > Open and drag and drop hand the chosen paths to QtViewer._qt_open, which
        # calls viewer.open -> _open_or_raise_error and shows the reader dialog only when that
        # raises (several readers and no remembered choice, or the reader failed).
        viewer.window._qt_viewer._qt_open([str(path)], stack=False)
        assert [ly._type_string for ly in viewer.layers] == ["image"], name
        assert np.array_equal(np.asarray(viewer.layers[0].data), img)
        viewer.layers.clear()
        # Scripting with the choice left to napari (napari 0.9's viewer.open defaults to
        # plugin="napari", its builtins, which would pass whatever our manifest claimed).
        added = viewer.open(str(path), plugin=None)
        assert [ly._type_string for ly in added] == ["image"], name
        viewer.layers.clear()


def _save_project(viewer, out: Path) -> Path:
    """Save an image and its three task layers with this plugin's writer (File > Save)."""
    img = _image()
    viewer.add_image(img, name="slice_00")
    det = np.zeros(img.shape, np.uint8)
    det[14:17, 18:22] = 2
    det[1:3, 1:20] = 1
    sep = np.zeros(img.shape, np.uint8)
    sep[30:33, 30:40] = 1
    seg = np.zeros(img.shape, np.uint8)
    seg[8:22, 10:32] = 2
    for name, data in (("detection", det), ("separation", sep), ("segmentation", seg)):
        viewer.add_labels(data, name=name)
    viewer.layers.select_all()
    paths = viewer.layers.save(str(out), selected=True, plugin=PLUGIN)
    viewer.layers.clear()
    return Path(paths[0])


def _assert_project_layers(viewer):
    assert {ly.name: ly._type_string for ly in viewer.layers} == {
        "slice_00": "image",
        "detection": "labels",
        "separation": "labels",
        "segmentation": "labels",
    }
    assert np.array_equal(viewer.layers["slice_00"].data, _image())
    assert viewer.layers["detection"].data[15, 20] == 2
    assert viewer.layers["separation"].data[31, 35] == 1
    assert viewer.layers["segmentation"].data[15, 15] == 2


def test_project_json_opens_without_a_choice(make_napari_viewer, tmp_path, no_reader_dialog):
    viewer = make_napari_viewer(show=True)
    root = _save_project(viewer, tmp_path / "project")
    meta = root / "lazylabels.json"
    assert meta.is_file()
    assert _reader_plugins(meta) == {PLUGIN}

    viewer.window._qt_viewer._qt_open([str(meta)], stack=False)
    _assert_project_layers(viewer)
    viewer.layers.clear()
    viewer._open_or_raise_error([str(meta)])
    _assert_project_layers(viewer)
    viewer.layers.clear()
    viewer.open(str(meta), plugin=None)
    _assert_project_layers(viewer)


def test_project_folder_opens_and_the_choice_sticks(make_napari_viewer, tmp_path, monkeypatch):
    """napari offers every folder to each reader with ``accepts_directories`` (its own too), so
    File > Open Folder asks once; "Remember" then opens that project with no question."""
    from napari._qt.dialogs import qt_reader_dialog

    viewer = make_napari_viewer(show=True)
    root = _save_project(viewer, tmp_path / "project")
    assert PLUGIN in _reader_plugins(root)
    asked = []

    def choose_lazy_labels(self):
        asked.append(self._current_file)
        return "Lazy labels", True

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", choose_lazy_labels)
    viewer.window._qt_viewer._qt_open([str(root)], stack=False)
    _assert_project_layers(viewer)
    viewer.layers.clear()
    viewer.window._qt_viewer._qt_open([str(root)], stack=False)
    _assert_project_layers(viewer)
    assert len(asked) == 1
    viewer.layers.clear()
    viewer.open(str(root), plugin=None)  # the remembered choice, no question
    _assert_project_layers(viewer)


def test_reader_declines_what_is_not_a_project(tmp_path):
    """Folders and files that are no project get ``None``, so napari tries its own reader."""
    from napari_lazylabels._reader import get_reader

    (tmp_path / "plain").mkdir()
    png = _write(tmp_path / "plain" / "a.png", _image())
    assert get_reader(str(png)) is None
    assert get_reader(str(tmp_path / "plain")) is None
    assert get_reader(str(tmp_path / "missing" / "lazylabels.json")) is None
