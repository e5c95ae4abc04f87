import numpy as np
import pytest

from napari_lazylabels.core.data import (
    AugmentConfig,
    PatchSampler,
    PreparedSample,
    normalize,
    sample_patch,
    to_channels,
)
from napari_lazylabels.core.io import Sample


def _sample():
    img = np.zeros((120, 150), np.uint16)
    img[40:80, 50:100] = 1000
    det = np.zeros(img.shape, np.uint8)
    det[50:70, 60:90] = 2  # object marks
    det[5:10, 5:140] = 1  # background scribble
    return Sample("s", img, detection=det)


def test_normalize_bit_depths_agree():
    rng = np.random.default_rng(0)
    base = rng.random((32, 32))
    a = normalize((base * 255).astype(np.uint8), 1)
    b = normalize((base * 255).astype(np.uint16) * 257, 1)
    assert a.shape == (1, 32, 32) and a.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_channels():
    g = np.zeros((16, 16), np.uint8)
    assert to_channels(g, 3).shape == (16, 16, 3)
    same = np.repeat(g[..., None], 3, -1)
    assert to_channels(same, 1).shape == (16, 16, 1)
    colour = np.stack([g, g + 1, g], -1)
    with pytest.raises(ValueError, match="grayscale"):
        to_channels(colour, 1)


def test_patches_keep_labels_aligned_with_image():
    """Object marks sit on bright pixels and background scribbles on dark ones, after any
    rescale/rotation/flip: the warp moves image and labels together."""
    ps = PreparedSample(_sample(), 1, (1.0, 99.8), "ignore", ("detection",))
    cfg = AugmentConfig(patch_size=64, intensity=0.0)
    rng = np.random.default_rng(1)
    seen_obj = seen_bg = 0
    for _ in range(30):
        img, tgt = sample_patch(ps, rng, cfg)
        t = tgt["detection"]
        assert img.shape == (1, 64, 64) and t.shape == (64, 64)
        assert set(np.unique(t)) <= {-1, 0, 1}
        obj, bg = t == 1, t == 0
        if obj.any():
            seen_obj += 1
            assert img[0][obj].mean() > 0.8
        if bg.any():
            seen_bg += 1
            assert img[0][bg].mean() < 0.2
    assert seen_obj > 10 and seen_bg > 0  # patches are drawn around the labels


def test_sampler_batches_and_untasked_images_are_ignored():
    s1 = _sample()
    s2 = Sample("t", s1.image.copy(), segmentation=np.ones(s1.image.shape, np.uint8))
    tasks = ("detection", "segmentation")
    prepared = [PreparedSample(s, 1, (1.0, 99.8), "ignore", tasks) for s in (s1, s2)]
    sampler = PatchSampler(prepared, AugmentConfig(patch_size=32), seed=0)
    img, tgt = sampler.batch(8, tasks)
    assert img.shape == (8, 1, 32, 32)
    assert tgt["detection"].shape == (8, 32, 32)
    # every patch is labelled for at most... each image contributes to its own task only
    for b in range(8):
        has_det = (tgt["detection"][b] >= 0).any()
        has_seg = (tgt["segmentation"][b] >= 0).any()
        assert not (has_det and has_seg)
    with pytest.raises(ValueError, match="annotate"):
        PatchSampler([], AugmentConfig())
