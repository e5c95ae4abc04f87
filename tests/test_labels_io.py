import json
import os

import cv2
import numpy as np
import pytest

from napari_lazylabels.core import io
from napari_lazylabels.core.labels import (
    ClassSpec,
    mask_outline,
    training_targets,
    validate_label_map,
)


def _dataset(rng):
    img = (rng.random((40, 50)) * 4000).astype(np.uint16)
    det = np.zeros((40, 50), np.uint8)
    det[5:10, 5:10] = 2
    det[30:35, 30:45] = 1
    sep = np.zeros_like(det)
    sep[20, 10:20] = 2
    rgb = (rng.random((30, 20, 3)) * 255).astype(np.uint8)
    seg = np.ones((30, 20), np.uint8)
    seg[5:15, 5:15] = 3
    return io.LazyDataset(
        ClassSpec(("background", "cell", "debris"), ("#000000", "#ff0000", "#00ff00")),
        [io.Sample("a", img, detection=det, separation=sep), io.Sample("b", rgb, segmentation=seg)],
    )


def test_dataset_round_trip(tmp_path):
    ds = _dataset(np.random.default_rng(0))
    io.save_dataset(ds, tmp_path / "ds")
    back = io.load_dataset(tmp_path / "ds")
    assert back.classes == ds.classes
    assert back.names() == ["a", "b"]
    for s, t in zip(ds, back, strict=True):
        np.testing.assert_array_equal(s.image, t.image)
        assert s.image.dtype == t.image.dtype
        for task in ("detection", "separation", "segmentation"):
            if s.label(task) is None:
                assert t.label(task) is None
            else:
                np.testing.assert_array_equal(s.label(task), t.label(task))
    assert back.summary() == {"detection": 1, "separation": 1, "segmentation": 1}
    # clearing a map removes its file: the image leaves that task
    back[0].separation = np.zeros((40, 50), np.uint8)
    io.save_dataset(back, tmp_path / "ds")
    assert not (tmp_path / "ds" / "separation" / "a.png").exists()
    assert io.load_dataset(tmp_path / "ds")[0].separation is None


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    io.atomic_write_json(target, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        io.atomic_write_json(target, {"v": 2})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary left behind


def test_training_targets_modes():
    det = np.array([[0, 1, 2]])
    sep = np.array([[0, 0, 2]])
    seg = None
    t = training_targets(det, sep, seg, "ignore")
    np.testing.assert_array_equal(t["detection"], [[-1, 0, 1]])
    # detection-marked pixels are known non-interfaces; unmarked ones stay ignored
    np.testing.assert_array_equal(t["separation"], [[-1, 0, 1]])
    assert t["segmentation"] is None
    p = training_targets(det, sep, seg, "paper")
    np.testing.assert_array_equal(p["detection"], [[0, 0, 1]])
    np.testing.assert_array_equal(p["separation"], [[0, 0, 1]])
    with pytest.raises(ValueError, match="label mode"):
        training_targets(det, sep, seg, "lazy")


def test_marks_can_teach_segmentation_where_no_exact_mask_is():
    """With ``marks_to_segmentation`` an image without an exact mask gets its detection marks
    as a partial segmentation target (unmarked pixels ignored); an exact mask wins where there
    is one, and the separation negatives still come from the real maps only."""
    det = np.array([[0, 1, 2, 3]])
    t = training_targets(det, None, None, "ignore", marks_to_segmentation=True)
    np.testing.assert_array_equal(t["segmentation"], [[-1, 0, 1, 2]])
    np.testing.assert_array_equal(t["separation"], training_targets(det, None, None, "ignore")["separation"])
    seg = np.array([[1, 1, 2, 2]])
    with_mask = training_targets(det, None, seg, "ignore", marks_to_segmentation=True)
    np.testing.assert_array_equal(with_mask["segmentation"], [[0, 0, 1, 1]])
    assert training_targets(None, None, None, "ignore", marks_to_segmentation=True)["segmentation"] is None
    with pytest.raises(ValueError, match="ignore"):
        training_targets(det, None, None, "paper", marks_to_segmentation=True)


@pytest.mark.parametrize(
    "label, match",
    [
        (np.zeros((5, 5), np.uint8), "shape"),
        (np.full((4, 4), 7, np.uint8), "only 3 classes"),
        (np.full((4, 4), -1, np.int32), "negative"),
        (np.full((4, 4), 0.5), "non-integer"),
        (np.zeros((4, 4, 3), np.uint8), "RGB"),
    ],
)
def test_bad_label_maps_explain(label, match):
    with pytest.raises(ValueError, match=match):
        validate_label_map(label, (4, 4), 3, "detection map of x")


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((3, 64, 64)), "channel-first"),
        (np.zeros((4, 4)), "at least"),
        (np.zeros((5, 64, 64, 3)), "2D image"),
        (np.full((16, 16), np.nan), "NaN"),
        (np.zeros((16, 16), complex), "dtype"),
    ],
)
def test_bad_images_explain(image, match):
    with pytest.raises(ValueError, match=match):
        io.as_image(image)


def test_rgba_and_single_channel_are_accepted(tmp_path):
    """An (H, W, 4) array is 4 channels to the core (a 4-channel fluorescence image); RGBA
    files lose their alpha when read, and gray or RGB models take the colours of RGBA."""
    from napari_lazylabels.core.prepare import prepare_image

    assert io.as_image(np.zeros((16, 16, 4), np.uint8)).shape == (16, 16, 4)
    assert io.as_image(np.zeros((16, 16, 1), np.uint8)).shape == (16, 16)
    rgba = np.random.default_rng(0).integers(0, 255, (16, 16, 4), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert io.read_image(tmp_path / "rgba.png").shape == (16, 16, 3)
    np.testing.assert_array_equal(prepare_image(rgba, 3), prepare_image(rgba[..., :3], 3))


def test_missing_folder_and_bad_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images/"):
        io.load_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "lazylabels.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid dataset description"):
        io.read_classes(tmp_path)


def test_class_spec_validation():
    with pytest.raises(ValueError, match="at least one object class"):
        ClassSpec(("background",))
    with pytest.raises(ValueError, match="unique"):
        ClassSpec(("background", "a", "a"))
    assert ClassSpec(("background", "a")).value_of("a") == 2


def test_ignore_mode_implies_separation_negatives_from_other_maps():
    """Marks, the inside of exact masks and their outline against open background are never
    interfaces, also on images without a separation map."""
    det = np.zeros((7, 9), np.uint8)
    det[3, 1] = 1  # background stroke
    det[3, 7] = 2  # object mark
    seg = np.ones((7, 9), np.uint8)
    seg[:, 5:] = 2
    sep = training_targets(det, None, seg, "ignore")["separation"]
    assert sep[3, 1] == 0 and sep[3, 7] == 0
    assert (sep == 0).all()  # inside (> 2 px from the edge) and the open edge itself
    # without the exact mask only the marks are known
    sep = training_targets(det, None, None, "ignore")["separation"]
    assert sep[3, 1] == 0 and sep[3, 7] == 0 and (sep == 0).sum() == 2
    assert training_targets(None, None, None, "ignore")["separation"] is None
    assert training_targets(np.zeros((4, 4), np.uint8), None, None, "ignore")["separation"] is None
    # paper mode keeps the paper's rule: no separation map, no separation loss
    assert training_targets(det, None, seg, "paper")["separation"] is None


def test_narrow_gaps_and_scribbled_interfaces_stay_unknown():
    """Where two objects of an exact mask face each other across a narrow strip, and around
    an interface scribble, nobody said where the interface ends: those pixels stay ignored."""
    seg = np.ones((40, 60), np.uint8)
    seg[10:30, 10:28] = 2
    seg[10:30, 30:50] = 2  # a 2 px strip of background between two objects
    outline = mask_outline(seg)
    assert not outline[15:25, 26:32].any()  # the strip and the edges facing it
    assert outline[20, 9] and outline[20, 10] and outline[9, 20] and outline[20, 50]
    assert not outline[0:5].any()  # far from any edge: that is the interior's business
    sep = np.zeros(seg.shape, np.uint8)
    sep[10:30, 28:30] = 2  # interface scribble in the strip
    t = training_targets(None, sep, seg, "ignore")["separation"]
    assert (t[10:30, 28:30] == 1).all()  # the scribble is an interface
    assert (t[15:25, 25:33] != 0).all()  # no negative from the mask within 3 px of it
    assert (t[20, 0:7] == 0).all() and (t[20, 53:60] == 0).all()  # open background is known

