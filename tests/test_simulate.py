"""Tests of lazy-label simulation from instance masks."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from napari_lazylabels.core import io
from napari_lazylabels.core.simulate import (
    SimulationConfig,
    interface_mask,
    simulate_folder,
    simulate_sample,
    touching_pairs,
)


def scene() -> np.ndarray:
    """1, 2 touch along a chord; 3, 4 are 5 px apart; 5 is alone."""
    inst = np.zeros((128, 192), np.uint16)
    for i, (c, r) in enumerate([((40, 40), 16), ((40, 68), 16)], start=1):
        rr, cc = disk(c, r, shape=inst.shape)
        free = inst[rr, cc] == 0
        inst[rr[free], cc[free]] = i
    inst[disk((40, 120), 12, shape=inst.shape)] = 3
    inst[disk((40, 148), 12, shape=inst.shape)] = 4  # cols 109-131, 137-159
    inst[disk((98, 90), 18, shape=inst.shape)] = 5
    return inst


def near(inst: np.ndarray, label: int) -> np.ndarray:
    """Euclidean distance of every pixel to object ``label``."""
    return ndimage.distance_transform_edt(inst != label)


def test_touching_pairs_scene():
    inst = scene()
    assert touching_pairs(inst) == {(1, 2)}
    assert touching_pairs(inst, touch_distance=6) == {(1, 2), (3, 4)}


@pytest.mark.parametrize("td", [1, 2, 3, 4])
def test_touch_distance_is_exact(td):
    for gap in range(0, 6):
        inst = np.zeros((20, 40), np.int32)
        inst[5:15, 5:15] = 1
        inst[5:15, 15 + gap : 25 + gap] = 2
        touching = gap + 1 <= td  # Chebyshev distance between the rectangles is gap + 1
        assert touching_pairs(inst, td) == ({(1, 2)} if touching else set())
        mask = interface_mask(inst, td)
        assert mask.any() == touching
        if touching:  # pixels within ceil(td / 2) (Chebyshev) of both objects
            r = max(1, -(-td // 2))
            grow = [ndimage.maximum_filter(inst == i, size=2 * r + 1) for i in (1, 2)]
            np.testing.assert_array_equal(mask, grow[0] & grow[1])
            mid = slice(15 + (gap - 1) // 2, 16 + gap // 2) if gap else slice(14, 16)
            assert mask[5:15, mid].all()  # the middle of the gap, or both contact columns


def test_interface_mask_scene():
    inst = scene()
    mask = interface_mask(inst)
    assert mask.any()
    assert np.all(near(inst, 1)[mask] <= 1.5) and np.all(near(inst, 2)[mask] <= 1.5)
    # Diagonal contact counts as touching.
    diag = np.zeros((10, 10), np.int32)
    diag[2:5, 2:5], diag[5:8, 5:8] = 1, 2
    assert touching_pairs(diag, 1) == {(1, 2)} and interface_mask(diag, 1).any()


def _check_detection(inst, det, cfg):
    objects = det >= 2
    assert np.all(inst[objects] > 0), "object marks outside objects"
    bnd = find_boundaries(inst, mode="inner") & (inst > 0)
    assert not np.any(objects & bnd), "object marks on boundaries"
    d_bnd = ndimage.distance_transform_edt(~(bnd | (inst == 0)))
    big = ndimage.maximum(d_bnd, inst, inst[objects]) > cfg.boundary_gap + 1
    assert np.all(d_bnd[objects][big] >= cfg.boundary_gap)
    bg = det == 1
    assert bg.any() and np.all(inst[bg] == 0)
    d_obj = ndimage.distance_transform_edt(inst == 0)
    assert np.all(d_obj[bg] > cfg.background_margin)
    frac = bg.sum() / (inst == 0).sum()
    assert 0.005 < frac < 0.08


@pytest.mark.parametrize("scribble_fraction", [0.0, 0.5, 1.0])
def test_detection_invariants(scribble_fraction):
    inst = scene()
    cfg = SimulationConfig(scribble_fraction=scribble_fraction, miss_rate=0.0)
    for seed in range(5):
        out = simulate_sample(inst, np.random.default_rng(seed), cfg)
        det = out["detection"]
        assert det.dtype == np.uint8 and det.shape == inst.shape
        assert set(np.unique(det)) <= {0, 1, 2}
        _check_detection(inst, det, cfg)
        # miss_rate = 0: every object is marked
        assert set(np.unique(inst[det == 2])) == {1, 2, 3, 4, 5}
        assert out["segmentation"] is None


def test_separation_only_between_touching_objects():
    inst = scene()
    cfg = SimulationConfig(interface_fraction=1.0)
    for seed in range(5):
        sep = simulate_sample(inst, np.random.default_rng(seed), cfg)["separation"]
        assert sep is not None and sep.dtype == np.uint8
        assert set(np.unique(sep)) == {0, 2}
        on = sep == 2
        assert np.all(near(inst, 1)[on] <= 3) and np.all(near(inst, 2)[on] <= 3)
    far = np.where(np.isin(inst, [3, 4, 5]), inst, 0)
    assert simulate_sample(far, np.random.default_rng(0), cfg)["separation"] is None
    none = SimulationConfig(interface_fraction=0.0)
    assert simulate_sample(inst, np.random.default_rng(0), none)["separation"] is None


def test_strong_segmentation_and_classes():
    inst = scene()
    seg = simulate_sample(inst, np.random.default_rng(0), strong=True)["segmentation"]
    assert seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, np.where(inst > 0, 2, 1))
    cfg = SimulationConfig(miss_rate=0.0)
    out = simulate_sample(inst, np.random.default_rng(0), cfg, strong=True, classes={1: 2, 5: 3})
    expected = np.select([inst == 0, inst == 1, inst == 5], [1, 3, 4], 2)
    np.testing.assert_array_equal(out["segmentation"], expected)
    det = out["detection"]
    assert set(np.unique(det[inst == 1])) <= {0, 3} and (det[inst == 1] == 3).any()
    assert set(np.unique(det[inst == 5])) <= {0, 4} and (det[inst == 5] == 4).any()


def test_miss_rate_one_leaves_no_object_marks():
    out = simulate_sample(scene(), np.random.default_rng(0), SimulationConfig(miss_rate=1.0))
    assert not np.any(out["detection"] >= 2)
    assert np.any(out["detection"] == 1)


def test_deterministic_for_seed():
    inst = scene()
    a = simulate_sample(inst, np.random.default_rng(3))
    b = simulate_sample(inst, np.random.default_rng(3))
    c = simulate_sample(inst, np.random.default_rng(4))
    for k in ("detection", "separation"):
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["detection"], c["detection"])


def test_thin_and_empty_objects():
    inst = np.zeros((40, 40), np.int32)
    inst[10, 5:30] = 1  # 1 px wide: no interior, no mark
    inst[20:23, 5:30] = 2  # 3 px wide: centre line only
    out = simulate_sample(inst, np.random.default_rng(0), SimulationConfig(miss_rate=0.0))
    det = out["detection"]
    assert not np.any(det[inst == 1] >= 2)
    assert np.all(np.nonzero(det == 2)[0] == 21)
    empty = simulate_sample(np.zeros((32, 32), np.uint16), np.random.default_rng(0), strong=True)
    assert not np.any(empty["detection"] >= 2) and empty["separation"] is None
    assert np.all(empty["segmentation"] == 1)


def _write_set(root, n=5):
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    base = scene()
    for i in range(n):
        inst = np.roll(base, 7 * i, axis=1)
        img = np.where(inst > 0, 200, 30).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"img_{i}.png"), img)
        cv2.imwrite(str(root / "masks" / f"img_{i}.png"), inst.astype(np.uint16))
    return root


def _maps(path):
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*.png"))}


def test_simulate_folder(tmp_path):
    src = _write_set(tmp_path / "set")
    ds = simulate_folder(src, tmp_path / "out", strong_fraction=0.4, seed=1)
    assert len(ds) == 5 and ds.classes.names == ("background", "object")
    meta = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert meta["seed"] == 1 and len(meta["strong"]) == 2
    loaded = io.load_dataset(tmp_path / "out")
    assert sorted(s.name for s in loaded if s.segmentation is not None) == meta["strong"]
    for s in loaded:
        inst = io.read_label(src / "masks" / f"{s.name}.png")
        _check_detection(inst, s.detection, SimulationConfig())
        if s.segmentation is not None:
            np.testing.assert_array_equal(s.segmentation, np.where(inst > 0, 2, 1))
    # Images are copied byte for byte.
    assert (tmp_path / "out/images/img_0.png").read_bytes() == (
        src / "images/img_0.png"
    ).read_bytes()

    # Same seed, same files; another seed, other labels.
    simulate_folder(src, tmp_path / "again", strong_fraction=0.4, seed=1)
    assert _maps(tmp_path / "out") == _maps(tmp_path / "again")
    simulate_folder(src, tmp_path / "other", strong_fraction=0.4, seed=2)
    assert _maps(tmp_path / "out") != _maps(tmp_path / "other")

    # Strong counts: round(f * n), at least one for f > 0.
    for frac, k in ((0.0, 0), (0.01, 1), (0.5, 2), (1.0, 5)):
        out = tmp_path / f"f{frac}"
        simulate_folder(src, out, strong_fraction=frac, seed=0)
        assert len(json.loads((out / "simulation.json").read_text())["strong"]) == k
        assert len(list((out / "segmentation").glob("*.png"))) == k if k else True


def test_simulate_folder_masks_dir_and_order_independence(tmp_path):
    src = _write_set(tmp_path / "set")
    full = simulate_folder(src, tmp_path / "full", strong_fraction=0.0, seed=5)
    sub = tmp_path / "sub_masks"
    sub.mkdir()
    for name in ("img_1.png", "img_3.png"):
        shutil.copy(src / "masks" / name, sub / name)
    part = simulate_folder(sub, tmp_path / "part", 0.0, 5, images_dir=src / "images")
    assert part.names() == ["img_1", "img_3"]
    by_name = {s.name: s for s in full}
    for s in part:
        np.testing.assert_array_equal(s.detection, by_name[s.name].detection)
    with pytest.raises(FileNotFoundError):
        simulate_folder(tmp_path / "sub_masks", tmp_path / "x", 0.0, 0)


@pytest.mark.shared_data
def test_simulate_folder_on_dsb(tmp_path, shared_data):
    src = shared_data / "dsb2018-touching-dev"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    stems = sorted(p.stem for p in (src / "masks").glob("*.png"))[:3]
    root = tmp_path / "dsb"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
        for s in stems:
            shutil.copy(src / sub / f"{s}.png", root / sub / f"{s}.png")
    cfg = SimulationConfig()
    ds = simulate_folder(root, tmp_path / "out", strong_fraction=0.34, seed=0, config=cfg)
    assert sum(s.segmentation is not None for s in ds) == 1
    for s in io.load_dataset(tmp_path / "out"):
        inst = io.read_label(root / "masks" / f"{s.name}.png")
        _check_detection(inst, s.detection, cfg)
        marked = len(np.unique(inst[s.detection == 2])) / (len(np.unique(inst)) - 1)
        assert marked > 0.6
        assert s.separation is not None  # every image has >= 3 touching pairs
        gi = interface_mask(inst, cfg.touch_distance)
        d = ndimage.distance_transform_edt(~gi)
        assert np.all(d[s.separation == 2] <= 2)
        if s.segmentation is not None:
            np.testing.assert_array_equal(s.segmentation, np.where(inst > 0, 2, 1))
