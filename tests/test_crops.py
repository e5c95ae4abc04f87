"""Training on large images reads only the parts around their labels (core/crops.py):
normalised as the whole image, drawn as often as the whole image, and only when worth it."""

import logging
import math

import numpy as np
import pytest

from napari_lazylabels.core.crops import Crop, labelled_crops
from napari_lazylabels.core.data import AugmentConfig, PatchSampler, PreparedSample
from napari_lazylabels.core.io import LazyDataset, Sample
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.prepare import image_value_range

SHAPE = (4200, 4300)  # above CROP_PIXELS (4096^2)


def _image() -> np.ndarray:
    """A texture whose brightness varies over the image: a crop alone would get another range."""
    rng = np.random.default_rng(0)
    yy = np.linspace(0, 1, SHAPE[0], dtype=np.float32)[:, None]
    return np.clip(rng.normal(60, 10, SHAPE) + 150 * yy * (rng.random(SHAPE) > 0.7), 0, 255).astype(np.uint8)


def _marks(*centres, shape=SHAPE) -> np.ndarray:
    det = np.zeros(shape, np.uint8)
    for y, x in centres:
        det[y - 20 : y + 20, x - 20 : x + 20] = 2  # an object mark
        det[y + 40 : y + 50, x - 20 : x + 20] = 1  # a background scribble
    return det


def _range(image):
    return image_value_range(image, 1, (1.0, 99.8))


def test_a_large_image_is_cut_around_its_labels_and_normalised_as_a_whole():
    image = _image()
    sample = Sample("big", image, detection=_marks((300, 300), (3900, 4000)))
    crops = labelled_crops(sample, margin=128, value_range=_range)
    assert len(crops) == 2 and all(isinstance(c, Crop) for c in crops)
    whole = PreparedSample(sample, 1, (1.0, 99.8), "ignore", ("detection",))
    for c in crops:
        (y0, x0), (h, w) = c.origin, c.shape
        assert h * w < 1500 * 1500  # a tile and its margin, not the image
        np.testing.assert_array_equal(c.image, image[y0 : y0 + h, x0 : x0 + w])
        np.testing.assert_array_equal(c.detection, sample.detection[y0 : y0 + h, x0 : x0 + w])
        assert c.value_range == pytest.approx(_range(image))
        part = PreparedSample(c, 1, (1.0, 99.8), "ignore", ("detection",))
        np.testing.assert_array_equal(part.image, whole.image[y0 : y0 + h, x0 : x0 + w])  # normalised as the whole
    # every labelled pixel is in a crop, with a margin of context around it
    covered = np.zeros(SHAPE, bool)
    for c in crops:
        (y0, x0), (h, w) = c.origin, c.shape
        covered[max(0, y0 + 128) : y0 + h - 128, max(0, x0 + 128) : x0 + w - 128] = True
    assert covered[sample.detection > 0].all()
    # drawn as often as the whole image: the crops share its weight
    assert sum(c.weight for c in crops) == pytest.approx(math.sqrt(SHAPE[0] * SHAPE[1]))
    prepared = [PreparedSample(c, 1, (1.0, 99.8), "ignore", ("detection",), scale=0.5) for c in crops]
    assert sum(p.weight for p in prepared) == pytest.approx(0.5 * math.sqrt(SHAPE[0] * SHAPE[1]))
    assert PatchSampler(prepared, AugmentConfig(patch_size=32)).weights.sum() == pytest.approx(1.0)


def test_images_are_kept_whole_when_cutting_does_not_pay():
    image = _image()
    small = Sample("small", image[:1000, :1000], detection=_marks((300, 300), shape=(1000, 1000)))
    assert labelled_crops(small, 128, _range) == [small]
    exact = Sample("exact", image, segmentation=np.ones(SHAPE, np.uint8))
    assert labelled_crops(exact, 128, _range) == [exact]
    everywhere = Sample("dense", image, detection=_marks(*[(y, x) for y in range(200, 4200, 900) for x in range(200, 4300, 900)]))
    assert labelled_crops(everywhere, 128, _range) == [everywhere]
    unlabelled = Sample("none", image, detection=np.zeros(SHAPE, np.uint8))
    assert labelled_crops(unlabelled, 128, _range) == [unlabelled]
    # an empty exact-mask map (a layer nobody drew on, as the viewer gives it) is no exact mask
    drawn = Sample("drawn", image, detection=_marks((300, 300)), segmentation=np.zeros(SHAPE, np.uint8))
    (crop,) = labelled_crops(drawn, 128, _range)
    assert crop.segmentation.shape == crop.shape and not crop.segmentation.any()


def test_training_on_a_large_image_uses_its_crops(tmp_path, caplog):
    from napari_lazylabels.core.train import TrainConfig, fit

    image = _image()
    ds = LazyDataset(ClassSpec(), [Sample("big", image, detection=_marks((500, 600), (3700, 3800)))])
    caplog.set_level(logging.INFO)
    cfg = TrainConfig(iterations=2, batch_size=2, learning_rate=1e-3, val_every=0, augment={"patch_size": 32}, device="cpu")
    result = fit(ds, tmp_path / "m", train_config=cfg, size="tiny")
    assert result.best.exists()
    assert "trained on the 2 part(s) around its labels" in caplog.text


def test_colour_crops_are_normalised_as_the_whole_image():
    """An RGB image's crops, prepared for a colour model, equal the whole image's preparation."""
    gray = _image()
    image = np.stack([gray, gray[::-1], np.roll(gray, 500, axis=1)], axis=-1)
    sample = Sample("rgb", image, detection=_marks((300, 300)))

    def colour_range(im):
        return image_value_range(im, 3, (1.0, 99.8))

    (crop,) = labelled_crops(sample, 128, colour_range)
    whole = PreparedSample(sample, 3, (1.0, 99.8), "ignore", ("detection",))
    part = PreparedSample(crop, 3, (1.0, 99.8), "ignore", ("detection",))
    (y0, x0), (h, w) = crop.origin, crop.shape
    assert part.image.shape[-1] == 3
    np.testing.assert_array_equal(part.image, whole.image[y0 : y0 + h, x0 : x0 + w])


def test_multichannel_crops_are_normalised_as_the_whole_image():
    """A 4-channel image trained on channels (2, 0): each crop channel gets the whole image's
    range of that channel."""
    gray = _image()
    image = np.stack([gray, gray[::-1], np.roll(gray, 500, axis=1), gray // 3], axis=-1)
    sample = Sample("fluo", image, detection=_marks((3900, 4000)))
    kw = {"channels": (2, 0), "source_channels": 4}

    def channel_range(im):
        return image_value_range(im, 2, (1.0, 99.8), **kw)

    (crop,) = labelled_crops(sample, 128, channel_range)
    whole = PreparedSample(sample, 2, (1.0, 99.8), "ignore", ("detection",), **kw)
    part = PreparedSample(crop, 2, (1.0, 99.8), "ignore", ("detection",), **kw)
    (y0, x0), (h, w) = crop.origin, crop.shape
    assert part.image.shape[-1] == 2
    np.testing.assert_array_equal(part.image, whole.image[y0 : y0 + h, x0 : x0 + w])
