"""The reader opens OME-Zarr images (NGFF 0.4 / zarr 2 as ``lazylabels predict`` writes them,
and NGFF 0.5 / zarr 3) with their label images, lazily; and what napari asks when opening them.

napari offers a folder to every reader with ``accepts_directories`` (its own builtins too), and
npe2 never matches a folder against ``filename_patterns``: opening ``x.ome.zarr`` with no
plugin named therefore raises ``MultipleReaderError`` (File > Open: "Choose reader") unless a
reader preference (``settings.plugins.extension2reader``, e.g. ``*.ome.zarr/``) names one.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
da = pytest.importorskip("dask.array")

from napari_lazylabels._reader import get_reader, read_ome_zarr  # noqa: E402
from napari_lazylabels.core.pixelsize import PixelSize  # noqa: E402
from napari_lazylabels.core.zarrio import OmeZarrWriter, pyramid_shapes  # noqa: E402

PLUGIN = "napari-lazylabels"
SHAPE = (1200, 1300)  # longer side > PYRAMID_MIN_SIDE (1024): two levels
HALF_UM = PixelSize(0.5, 0.5)


def _write_ome(path: Path, n_planes: int | None = None, n_channels: int = 1,
               pixel_size: PixelSize | None = HALF_UM) -> dict:
    """Write an OME-Zarr as ``lazylabels predict`` does; returns what was written:
    ``image`` ``([Z,] H, W, C)``, ``classes`` and ``instances`` ``([Z,] H, W)``."""
    rng = np.random.default_rng(0)
    planes = 1 if n_planes is None else n_planes
    image = rng.integers(0, 255, (planes, *SHAPE, n_channels), dtype=np.uint8)
    classes = (image[..., 0] // 86).astype(np.uint8)  # 0, 1, 2
    instances = np.zeros((planes, *SHAPE), np.uint32)
    instances[:, 100:300, 200:500] = 70_000  # beyond uint16
    instances[:, 900:1100, 1000:1250] = 3
    writer = OmeZarrWriter(path, SHAPE, n_planes, np.uint8, n_channels,
                           {"classes": np.uint8, "instances": np.uint32}, pixel_size)
    for z in range(planes):
        zz = None if n_planes is None else z
        writer.image_plane(zz)[:, :] = image[z]
        writer.label("classes", zz)[:, :] = classes[z]
        writer.label("instances", zz)[:, :] = instances[z]
    assert writer.finish() == path
    if n_planes is None:
        image, classes, instances = image[0], classes[0], instances[0]
    return {"image": image, "classes": classes, "instances": instances}


def _metadata_file(path: Path) -> Path:
    """The group's attributes file: ``.zattrs`` (zarr format 2) or ``zarr.json`` (3)."""
    return path / ".zattrs" if (path / ".zattrs").is_file() else path / "zarr.json"


def _levels(data) -> list:
    return data if isinstance(data, list) else [data]


def _assert_lazy(data, n_levels: int):
    levels = _levels(data)
    assert len(levels) == n_levels
    assert all(isinstance(a, da.Array) for a in levels)


def _read(path) -> list[tuple]:
    reader = get_reader(str(path))
    assert reader is read_ome_zarr
    return reader(str(path))


# --------------------------------------------------------------------------- the reader
def test_2d_with_labels_opens_lazily_at_its_pixel_size(tmp_path):
    path = tmp_path / "cells.ome.zarr"
    written = _write_ome(path)
    n_levels = len(pyramid_shapes(SHAPE))
    assert n_levels == 2

    layers = _read(path)
    assert [(kw["name"], t) for _, kw, t in layers] == [
        ("cells", "image"), ("cells classes", "labels"), ("cells instances", "labels")]
    for data, kw, _ in layers:
        _assert_lazy(data, n_levels)
        assert kw["multiscale"] is True
        assert tuple(kw["scale"]) == (0.5, 0.5)
        assert kw["metadata"]["unit"] == "micrometer"
        assert tuple(kw["units"]) == ("micrometer", "micrometer")
        assert "channel_axis" not in kw
    (img, _, _), (classes, _, _), (instances, _, _) = layers
    assert [a.shape for a in img] == [SHAPE, (600, 650)]  # the length-1 channel axis dropped
    assert np.array_equal(img[0].compute(), written["image"][..., 0])
    assert np.array_equal(classes[0].compute(), written["classes"])
    assert instances[0].dtype == np.uint32
    assert np.array_equal(instances[0].compute(), written["instances"])
    assert instances[1][50, 100].compute() == 70_000  # a pyramid level, still an id
    assert get_reader(str(_metadata_file(path))) is read_ome_zarr
    assert get_reader([str(path)]) is read_ome_zarr


def test_channels_split_into_named_image_layers(tmp_path):
    path = tmp_path / "two.ome.zarr"
    written = _write_ome(path, n_channels=2)
    (img, kw, kind), *labels = _read(path)
    assert kind == "image" and len(labels) == 2
    assert kw["channel_axis"] == 0
    assert kw["name"] == ["two channel 0", "two channel 1"]  # omero.channels[].label
    assert [tuple(s) for s in kw["scale"]] == [(0.5, 0.5)] * 2
    assert [a.shape for a in img] == [(2, *SHAPE), (2, 600, 650)]
    assert np.array_equal(np.moveaxis(img[0].compute(), 0, -1), written["image"])


def test_stack_gets_its_z_spacing(tmp_path):
    path = tmp_path / "stack.ome.zarr"
    written = _write_ome(path, n_planes=3, pixel_size=PixelSize(0.5, 0.5, "µm", z=2.0))
    layers = _read(path)
    assert [kw["name"] for _, kw, _ in layers] == ["stack", "stack classes", "stack instances"]
    for data, kw, _ in layers:
        _assert_lazy(data, 2)
        assert tuple(kw["scale"]) == (2.0, 0.5, 0.5)
        assert _levels(data)[0].shape == (3, *SHAPE)
        assert _levels(data)[1].shape == (3, 600, 650)
    assert np.array_equal(layers[0][0][0][1].compute(), written["image"][1, ..., 0])
    assert np.array_equal(layers[2][0][0].compute(), written["instances"])


def test_no_pixel_size_gives_no_unit(tmp_path):
    path = tmp_path / "plain.ome.zarr"
    _write_ome(path, pixel_size=None)
    for _, kw, _ in _read(path):
        assert tuple(kw["scale"]) == (1.0, 1.0)
        assert "units" not in kw and "unit" not in kw["metadata"]


def _write_ngff05(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """An NGFF 0.5 image (zarr format 3, attributes under "ome") written by hand: axes c, y, x
    with one channel, two levels, a label image "nuclei" with colours."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4000, (1, *SHAPE), dtype=np.uint16)
    label = np.zeros(SHAPE, np.uint16)
    label[10:400, 20:300] = 5
    root = zarr.open_group(str(path), mode="w", zarr_format=3)

    def multiscale(group, data, axes, lead):
        paths = []
        for level in range(2):
            group.create_array(str(level), data=data[..., :: 2**level, :: 2**level], chunks=(*data.shape[:-2], 512, 512))
            paths.append({"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": lead + [0.25 * 2**level] * 2},
                {"type": "translation", "translation": [0.0] * len(lead) + [10.0, 20.0]}]})
        return [{"name": group.basename or "image", "axes": axes, "datasets": paths}]

    space = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
    root.attrs["ome"] = {"version": "0.5", "multiscales": multiscale(
        root, image, [{"name": "c", "type": "channel"}, *space], [1.0])}
    labels = root.create_group("labels")
    labels.attrs["ome"] = {"version": "0.5", "labels": ["nuclei"]}
    nuclei = labels.create_group("nuclei")
    nuclei.attrs["ome"] = {"version": "0.5", "multiscales": multiscale(nuclei, label, space, []),
                           "image-label": {"colors": [{"label-value": 5, "rgba": [255, 0, 0, 255]}]}}
    assert (path / "zarr.json").is_file() and not (path / ".zattrs").exists()
    return image, label


def test_ngff_05_zarr_v3_opens(tmp_path):
    path = tmp_path / "v3.ome.zarr"
    image, label = _write_ngff05(path)
    assert get_reader(str(path / "zarr.json")) is read_ome_zarr
    (img, ikw, itype), (lab, lkw, ltype) = _read(path)
    assert (itype, ikw["name"], ltype, lkw["name"]) == ("image", "v3", "labels", "v3 nuclei")
    for data, kw in ((img, ikw), (lab, lkw)):
        _assert_lazy(data, 2)
        assert tuple(kw["scale"]) == (0.25, 0.25)
        assert tuple(kw["translate"]) == (10.0, 20.0)
        assert kw["metadata"] == {"unit": "micrometer"}
    assert np.array_equal(img[0].compute(), image[0])
    assert np.array_equal(lab[0].compute(), label)
    assert lkw["colormap"][5] == (1.0, 0.0, 0.0, 1.0)


def test_what_is_no_ome_zarr_image_is_declined(tmp_path):
    """Plain zarr arrays and groups stay with napari's own reader; the labels group of an
    OME-Zarr has no multiscales of its own."""
    for fmt in (2, 3):
        arr = zarr.open_array(str(tmp_path / f"array{fmt}.zarr"), mode="w", shape=(64, 64), dtype="u1", zarr_format=fmt)
        arr[:] = 1
        arr.attrs["note"] = "no multiscales"
        assert get_reader(str(tmp_path / f"array{fmt}.zarr")) is None, fmt
        group = zarr.open_group(str(tmp_path / f"group{fmt}.zarr"), mode="w", zarr_format=fmt)
        group.create_array("0", shape=(64, 64), dtype="u1")
        group.attrs["note"] = "no multiscales"
        assert get_reader(str(tmp_path / f"group{fmt}.zarr")) is None, fmt
    assert get_reader(str(tmp_path / "array2.zarr" / ".zattrs")) is None
    assert get_reader(str(tmp_path / "array3.zarr" / "zarr.json")) is None
    assert get_reader(str(tmp_path / "group3.zarr" / "zarr.json")) is None
    path = tmp_path / "cells.ome.zarr"
    _write_ome(path)
    assert get_reader(str(path / "labels")) is None
    assert get_reader(str(tmp_path / "missing.ome.zarr")) is None
    assert get_reader([str(path), str(path)]) is None
    with pytest.raises(FileNotFoundError):
        read_ome_zarr(str(tmp_path / "group2.zarr"))


def test_one_label_image_opens_as_labels(tmp_path):
    path = tmp_path / "cells.ome.zarr"
    written = _write_ome(path)
    [(data, kw, kind)] = _read(path / "labels" / "classes")
    assert kind == "labels" and kw["name"] == "classes"
    assert tuple(kw["scale"]) == (0.5, 0.5)
    assert np.array_equal(_levels(data)[0].compute(), written["classes"])


def test_manifest_offers_the_reader_for_ome_zarr_metadata(tmp_path):
    """npe2 matches files by name: ``zarr.json``/``.zattrs`` are ours alone; ``*.ome.zarr``
    lists us in Preferences > Plugins (its reader list is ``get_readers(pattern)``)."""
    from napari.plugins import _initialize_plugins, _npe2

    _initialize_plugins()
    assert set(_npe2.get_readers(str(tmp_path / "a.ome.zarr" / "zarr.json"))) == {PLUGIN}
    assert set(_npe2.get_readers(str(tmp_path / "a.ome.zarr" / ".zattrs"))) == {PLUGIN}
    assert PLUGIN in _npe2.get_readers("*.ome.zarr/")
    assert PLUGIN not in _npe2.get_readers(str(tmp_path / "notes.json"))
    assert PLUGIN not in _npe2.get_readers(str(tmp_path / "a.tif"))


# --------------------------------------------------------------------------- napari's open path
@pytest.fixture
def no_reader_dialog(monkeypatch):
    """Fail the test if napari asks the user to choose a reader (QtReaderDialog)."""
    pytest.importorskip("qtpy")
    from napari._qt.dialogs import qt_reader_dialog

    def ask(self):
        pytest.fail(f"napari asked 'Choose reader' for {self._current_file}")

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", ask)


def _keep_settings_in_memory(monkeypatch):
    """The reader preferences these tests set stay out of the user's settings file
    (``make_napari_viewer`` resets the settings before and after each test)."""
    from napari.settings import NapariSettings

    monkeypatch.setattr(NapariSettings, "_maybe_save", lambda self: None)


def _types(layers) -> list[tuple[str, str]]:
    return [(ly.name, ly._type_string) for ly in layers]


EXPECTED = [("cells", "image"), ("cells classes", "labels"), ("cells instances", "labels")]


def _assert_opened(viewer, added):
    assert _types(added) == EXPECTED
    for ly in added:
        assert ly.multiscale and len(ly.data) == 2
        assert isinstance(ly.data[0], da.Array)
        assert tuple(ly.scale) == (0.5, 0.5)
        assert [str(u) for u in ly.units] == ["micrometer", "micrometer"]
    assert viewer.layers["cells instances"].data[0].dtype == np.uint32


@pytest.mark.gui
def test_ome_zarr_folder_asks_which_reader_without_a_preference(make_napari_viewer, tmp_path, monkeypatch):
    """napari 0.9: the folder has two readers (its builtins and ours): with no plugin named
    ``_open_or_raise_error`` raises MultipleReaderError, File > Open asks "Choose reader";
    ``viewer.open(path)`` (plugin="napari" by default) uses the builtins, which fail on it.
    "Remember this choice" stores the folder's own path, so the next OME-Zarr asks again."""
    from napari._qt.dialogs import qt_reader_dialog
    from napari.errors import MultipleReaderError
    from napari.settings import get_settings

    viewer = make_napari_viewer(show=True)
    _keep_settings_in_memory(monkeypatch)
    path = tmp_path / "cells.ome.zarr"
    _write_ome(path)
    with pytest.raises(MultipleReaderError) as err:
        viewer._open_or_raise_error([str(path)])
    assert set(err.value.available_plugins) == {"napari", PLUGIN}
    with pytest.raises(MultipleReaderError):
        viewer.open(str(path), plugin=None)
    with pytest.raises(ValueError, match="No arrays found"):
        viewer.open(str(path))  # napari's builtin zarr reader: it picks the labels group
    assert len(viewer.layers) == 0
    _assert_opened(viewer, viewer.open(str(path), plugin=PLUGIN))
    viewer.layers.clear()

    asked = []

    def choose_lazy_labels(self):
        asked.append(self._current_file)
        return "Lazy labels", True

    monkeypatch.setattr(qt_reader_dialog.QtReaderDialog, "get_user_choices", choose_lazy_labels)
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    _assert_opened(viewer, viewer.layers)
    assert get_settings().plugins.extension2reader == {os.path.realpath(path) + os.sep: PLUGIN}
    viewer.layers.clear()
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)  # remembered for this folder
    viewer._open_or_raise_error([str(path)])
    assert len(asked) == 1 and len(viewer.layers) == 6
    viewer.layers.clear()
    other = tmp_path / "other.ome.zarr"
    _write_ome(other)
    viewer.window._qt_viewer._qt_open([str(other)], stack=False)  # another folder asks again
    assert len(asked) == 2
    assert [ly.name for ly in viewer.layers] == ["other", "other classes", "other instances"]


@pytest.mark.gui
def test_ome_zarr_opens_without_a_question_with_a_preference(
    make_napari_viewer, tmp_path, monkeypatch, no_reader_dialog
):
    """The reader preference ``*.ome.zarr/`` -> napari-lazylabels (Preferences > Plugins)
    opens every OME-Zarr folder with our reader; its metadata file needs none."""
    from napari.settings import get_settings

    viewer = make_napari_viewer(show=True)
    _keep_settings_in_memory(monkeypatch)
    path = tmp_path / "cells.ome.zarr"
    _write_ome(path)

    meta = _metadata_file(path)
    _assert_opened(viewer, viewer._open_or_raise_error([str(meta)]))  # no preference needed
    viewer.layers.clear()
    viewer.window._qt_viewer._qt_open([str(meta)], stack=False)
    _assert_opened(viewer, viewer.layers)
    viewer.layers.clear()

    get_settings().plugins.extension2reader = {"*.ome.zarr/": PLUGIN}
    _assert_opened(viewer, viewer._open_or_raise_error([str(path)]))
    viewer.layers.clear()
    _assert_opened(viewer, viewer.open(str(path), plugin=None))
    viewer.layers.clear()
    viewer.window._qt_viewer._qt_open([str(path)], stack=False)
    _assert_opened(viewer, viewer.layers)
    viewer.layers.clear()

    channels = tmp_path / "two.ome.zarr"
    _write_ome(channels, n_channels=2)
    assert _types(viewer._open_or_raise_error([str(channels)])) == [
        ("two channel 0", "image"), ("two channel 1", "image"),
        ("two classes", "labels"), ("two instances", "labels")]
    viewer.layers.clear()
    v3 = tmp_path / "v3.ome.zarr"
    _write_ngff05(v3)
    added = viewer._open_or_raise_error([str(v3)])
    assert _types(added) == [("v3", "image"), ("v3 nuclei", "labels")]
    assert np.allclose(added[1].colormap.map(5), (1.0, 0.0, 0.0, 1.0))
    viewer.layers.clear()
    # a plain zarr array is still napari's: our reader declines it, the builtins read it
    arr = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=(64, 64), dtype="u1", zarr_format=2)
    arr[:] = 7
    get_settings().plugins.extension2reader = {}
    assert _types(viewer.open(str(tmp_path / "plain.zarr"))) == [("plain", "image")]


def test_a_multiscale_image_layer_is_annotated_and_predicted_at_full_resolution():
    """An OME-Zarr opened as a multiscale layer: the plugin reads its first level (napari's
    ``np.asarray`` of the layer's data gives the level on screen), eagerly for annotation and
    training, lazily for prediction block by block."""
    from napari.layers import Image

    from napari_lazylabels._widgets import _layers

    full = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    layer = Image([full, full[::2, ::2]], multiscale=True)
    planes = _layers.Planes(layer)
    np.testing.assert_array_equal(planes[0], full)
    np.testing.assert_array_equal(_layers.image_plane(layer), full)
    assert planes.lazy(0).shape == (64, 80) and planes.plane_pixels == 64 * 80
    np.testing.assert_array_equal(planes.lazy(0)[10:20, 5:9], full[10:20, 5:9])


@pytest.mark.parametrize("shape, kwargs, want", [
    ((3, 40, 50), {}, (40, 50)),  # a stack
    ((40, 50, 4), {"rgb": True}, (40, 50, 3)),  # RGBA: the colours
    ((2, 40, 50), {"metadata": {"lazylabels": {"channel_axis": 0}}}, (40, 50, 2)),  # (C, Y, X)
])
def test_lazy_planes_read_regions_channels_last(shape, kwargs, want):
    """Planes.lazy gives each plane as ``(H, W[, C])`` whatever the layer's layout, reading
    only the region sliced, equal to the eager plane."""
    from napari.layers import Image

    from napari_lazylabels._widgets import _layers

    data = (np.arange(np.prod(shape)) % 251).astype(np.uint8).reshape(shape)
    planes = _layers.Planes(Image(data, **kwargs))
    last = len(planes) - 1
    lazy = planes.lazy(last)
    assert lazy.shape == want
    np.testing.assert_array_equal(lazy[5:15, 7:9], planes[last][5:15, 7:9])
