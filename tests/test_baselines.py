"""Baselines for the accuracy benchmark: pseudo-labels, single-task data, random forest."""

import numpy as np
import pytest

from napari_lazylabels.core import baselines
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
