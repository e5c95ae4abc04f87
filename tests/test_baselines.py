"""Baselines for the accuracy benchmark: pseudo-labels, single-task data, random forest."""

import numpy as np
import pytest

import baselines
from test_train import blobs


def test_weak_and_strong_only_filter_tasks():
    ds = blobs(3)
    weak = baselines.weak_only(ds)
    assert all(s.segmentation is None and s.detection is not None for s in weak)
    strong = baselines.strong_only(ds)
    assert [s.name for s in strong] == ["b0"] and strong[0].detection is None


def test_pseudo_labels_keep_exact_masks_and_grabcut_the_rest():
    ds = blobs(2)
    pl = baselines.pseudo_label_dataset(ds)
    assert np.array_equal(pl[0].segmentation, ds[0].segmentation)  # exact mask kept
    assert pl[1].segmentation is not None and pl[1].detection is None
    truth = ds[1].image > 60
    fg = pl[1].segmentation == 2
    assert 2 * (fg & truth).sum() / (fg.sum() + truth.sum()) > 0.8


def test_pseudo_labels_with_every_mask_exact_are_the_strong_only_set(monkeypatch):
    # The accuracy benchmark lets unet-strong's 100% run stand for pseudo-labels at 100%.
    ds = blobs(3)
    for s in ds:
        s.segmentation = np.where(s.image > 60, 2, 1).astype(np.uint8)
    monkeypatch.setattr(baselines, "refine", lambda *a, **k: pytest.fail("GrabCut ran on an exact-mask image"))
    pl, strong = baselines.pseudo_label_dataset(ds), baselines.strong_only(ds)
    assert [s.name for s in pl] == [s.name for s in strong] == ["b0", "b1", "b2"]
    for a, b in zip(pl, strong, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.segmentation, b.segmentation)
        assert a.detection is b.detection is None and a.separation is b.separation is None


def test_random_forest_learns_scribbles():
    pytest.importorskip("sklearn")
    ds = blobs(2)
    rf = baselines.RandomForestSegmenter()
    rf.fit(ds)
    test = blobs(1, seed=5)[0]
    classes = rf.predict(test.image)
    truth = test.image > 60
    fg = classes > 0
    assert classes.shape == test.image.shape
    assert 2 * (fg & truth).sum() / (fg.sum() + truth.sum()) > 0.8
