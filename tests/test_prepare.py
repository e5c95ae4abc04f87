"""One way to prepare an image (core.prepare): training and prediction see the same input."""

import numpy as np
import pytest

from napari_lazylabels.core import predictor as predictor_mod
from napari_lazylabels.core.data import PreparedSample
from napari_lazylabels.core.io import Sample
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.predictor import PredictConfig, Predictor
from napari_lazylabels.core.prepare import (
    NormalizedSource,
    image_channels,
    intensity_range,
    normalize,
    prepare_image,
    resize_image,
)

P = (1.0, 99.8)


def _train(image, in_channels, scale):
    """The training input, ``(C, H, W)``."""
    det = np.zeros(image.shape[:2], np.uint8)
    det[2:6, 2:20] = 1
    ps = PreparedSample(Sample("s", image, detection=det), in_channels, P, "ignore", ("detection",), scale)
    return np.moveaxis(ps.image, -1, 0)


def _predictor(in_channels, scale):
    cfg = ModelConfig(in_channels=in_channels, n_classes=2, widths=(4, 8), size="custom", scale=scale)
    return Predictor(build_model(cfg), cfg, PredictConfig(device="cpu"))


def _read(src):
    return src if isinstance(src, np.ndarray) else src.read(0, src.shape[1], 0, src.shape[2])


def _images():
    rng = np.random.default_rng(0)
    gray = rng.normal(1000, 300, (130, 170)).clip(0, 4095).astype(np.uint16)
    gray[40:60, 50:90] = 4000  # a bright object: its pixels move the upper percentile
    rgb = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    return {"gray": (gray, 1), "rgb": (rgb, 3), "gray on an RGB model": (gray, 3)}


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("case", list(_images()))
def test_training_and_prediction_prepare_an_image_identically(case, scale):
    image, c = _images()[case]
    train = _train(image, c, scale)
    pred = _predictor(c, scale).prepare(image)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.float32
    np.testing.assert_array_equal(train, pred)
    assert train.shape[1:] == (round(image.shape[0] * scale), round(image.shape[1] * scale))


def test_range_comes_from_the_image_at_its_own_resolution():
    """At a working scale the range is the full-resolution image's, then the image is resized:
    a few bright pixels that area averaging dims still map to about 1."""
    image = np.zeros((200, 200), np.uint8)
    image[::2, ::2] = 200  # a fine pattern: the resized image is a flat 50
    lo, hi = intensity_range(image, 1, (0.0, 100.0))
    assert (lo, hi) == (0.0, 200.0)
    out = prepare_image(image, 1, (0.0, 100.0), scale=0.5)
    np.testing.assert_allclose(out, 0.25, atol=1e-6)
    expected = normalize(resize_image(image, 0.5), 1, value_range=(lo, hi))
    np.testing.assert_array_equal(out, expected)


def _former_percentiles(values, low, high, max_samples=1_000_000):
    flat = values.reshape(-1)
    lo, hi = np.percentile(flat[:: max(1, flat.size // max_samples)], (low, high))
    return float(lo), float(hi)


def test_scale_one_keeps_the_former_numbers():
    """At scale 1 a gray image gets the range the former prediction took (rows and columns
    strided to about a million pixels, then every k-th value), for any size; below 4 million
    pixels that is also the former training's (every k-th value of the whole image)."""
    rng = np.random.default_rng(3)
    for shape in [(300, 400), (1100, 1300), (2100, 2300)]:
        image = rng.gamma(2.0, 300.0, shape).astype(np.float32)
        s = max(1, int(np.sqrt(shape[0] * shape[1] / 1e6)))
        former = _former_percentiles(image[::s, ::s], *P)
        assert intensity_range(image, 1, P) == former
        if shape[0] * shape[1] < 4_000_000:
            assert former == _former_percentiles(image, *P)
        span = former[1] - former[0]
        expected = ((image - np.float32(former[0])) * np.float32(1 / span))[None]
        np.testing.assert_array_equal(prepare_image(image, 1, P), expected)


def test_rgb_with_equal_channels_is_gray_for_a_gray_model():
    gray, _ = _images()["gray"]
    rgb = np.repeat(gray[..., None], 3, -1)
    assert image_channels(gray) == 1 and image_channels(rgb) == 1
    for scale in (1.0, 0.5):
        np.testing.assert_array_equal(_train(rgb, 1, scale), _train(gray, 1, scale))
        np.testing.assert_array_equal(_predictor(1, scale).prepare(rgb), _predictor(1, scale).prepare(gray))
    colour = rgb.copy()
    colour[0, 0, 1] += 1
    assert image_channels(colour) == 3
    with pytest.raises(ValueError, match="grayscale"):
        _predictor(1, 1.0).prepare(colour)
    with pytest.raises(ValueError, match="grayscale"):
        _train(colour, 1, 1.0)


def test_image_channels():
    g = np.zeros((16, 16), np.uint8)
    assert image_channels(g) == 1
    assert image_channels(g[..., None]) == 1
    assert image_channels(np.stack([g, g, g, g + 255], -1)) == 1  # alpha does not count
    assert image_channels(np.stack([g, g + 1, g], -1)) == 3


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_large_image_lazy_path_equals_eager_path(monkeypatch, scale):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 60000, (300, 260), dtype=np.uint16)
    eager = _predictor(1, scale).prepare(image)
    monkeypatch.setattr(predictor_mod, "EAGER_NORMALIZE_BYTES", 0)
    lazy = _predictor(1, scale).prepare(image)
    assert isinstance(lazy, NormalizedSource) and lazy.shape == eager.shape
    np.testing.assert_array_equal(_read(lazy), eager)
    np.testing.assert_array_equal(lazy.read(10, 50, 20, 90), eager[:, 10:50, 20:90])
    gray_on_rgb = prepare_image(image, 3, P, scale, eager_bytes=0)
    np.testing.assert_array_equal(gray_on_rgb.read(0, 40, 0, 40), prepare_image(image, 3, P, scale)[:, :40, :40])


def test_a_thin_large_image_gets_its_range():
    """The range's subsample of a long thin image may be thinner than an image may be."""
    image = np.tile(np.arange(1000, dtype=np.uint16), 1_200_000 * 16 // 1000).reshape(-1, 16)  # 4 x 4 strides
    lo, hi = intensity_range(image, 1, (0.0, 100.0))
    assert lo == 0 and hi > 900
