import numpy as np
import pytest

from napari_lazylabels.core.data import (
    AugmentConfig,
    PatchSampler,
    PreparedSample,
    auto_scale,
    object_size,
    resize_targets,
    sample_patch,
)
from napari_lazylabels.core.io import Sample
from napari_lazylabels.core.prepare import normalize, to_channels


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


def test_color_jitter_shifts_channels_apart_on_rgb_only():
    """Colour jitter gives each channel of an RGB patch its own gain/offset (a stain shift);
    gray patches and ``color=0`` are left alone."""
    flat = np.full((64, 64), 128, np.uint8)
    flat[0, 0], flat[-1, -1] = 0, 255  # so the normalised plateau sits inside (0, 1)
    rgb = Sample("c", np.repeat(flat[..., None], 3, -1), detection=np.full(flat.shape, 2, np.uint8))
    ps = PreparedSample(rgb, 3, (0.0, 100.0), "ignore", ("detection",))
    spreads = {}
    for color in (0.0, 0.2):
        cfg = AugmentConfig(patch_size=16, intensity=0.0, color=color, rotate=False, scale_range=(1, 1))
        rng = np.random.default_rng(0)
        centre = [sample_patch(ps, rng, cfg)[0][:, 8, 8] for _ in range(20)]
        spreads[color] = max(float(np.ptp(c)) for c in centre)
    assert spreads[0.0] == 0.0
    assert 0.05 < spreads[0.2] < 0.9
    gray = PreparedSample(Sample("g", flat, detection=rgb.detection), 1, (0.0, 100.0), "ignore", ("detection",))
    cfg = AugmentConfig(patch_size=16, intensity=0.0, color=0.5, rotate=False, scale_range=(1, 1))
    img, _ = sample_patch(gray, np.random.default_rng(0), cfg)
    np.testing.assert_allclose(img[0, 8, 8], 128 / 255, atol=1e-6)
    with pytest.raises(ValueError, match="amplitudes"):
        AugmentConfig(color=-0.1)


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


def test_exact_masks_get_their_share_of_every_batch():
    s1 = _sample()
    tasks = ("detection", "segmentation")
    weak = [PreparedSample(Sample(f"w{i}", s1.image, detection=s1.detection), 1, (1.0, 99.8), "ignore", tasks) for i in range(9)]
    strong = PreparedSample(Sample("s", s1.image, segmentation=np.ones(s1.image.shape, np.uint8)), 1, (1.0, 99.8), "ignore", tasks)
    samples = weak + [strong]
    for share, lo, hi in ((0.5, 8, 16), (0.25, 4, 16), (0.0, 0, 16)):
        sampler = PatchSampler(samples, AugmentConfig(patch_size=32, mask_share=share), seed=0)
        counts = [int(np.sum(sampler.draw(16) == 9)) for _ in range(200)]
        assert min(counts) >= lo and max(counts) <= hi
        # the rest is drawn by size from all images: ~1/10 of them are the strong one
        assert np.mean(counts) == pytest.approx(16 * share + 16 * (1 - share) / 10, abs=0.35)
    # all or none of the images with exact masks: nothing to favour
    only = PatchSampler([strong, strong], AugmentConfig(patch_size=32), seed=0)
    assert only.strong_weights is None and len(only.draw(5)) == 5
    with pytest.raises(ValueError, match="mask_share"):
        AugmentConfig(mask_share=1.5)
    # marks that teach segmentation do not make an image one with an exact mask
    marked = [PreparedSample(Sample(f"w{i}", s1.image, detection=s1.detection), 1, (1.0, 99.8), "ignore", tasks,
                             marks_to_segmentation=True) for i in range(9)]
    assert all("segmentation" in m.tasks and not m.exact for m in marked) and strong.exact
    sampler = PatchSampler(marked + [strong], AugmentConfig(patch_size=32, mask_share=0.5), seed=0)
    assert np.mean([int(np.sum(sampler.draw(16) == 9)) for _ in range(200)]) == pytest.approx(8 + 0.8, abs=0.35)


def test_patches_find_the_few_interface_scribbles():
    s = _sample()
    s.separation = np.zeros(s.image.shape, np.uint8)
    s.separation[100:103, 130:133] = 2  # one small interface scribble in a corner
    tasks = ("detection", "separation")
    ps = PreparedSample(s, 1, (1.0, 99.8), "ignore", tasks)
    assert len(ps.interface_yx) == 9

    def hits(fraction):
        cfg = AugmentConfig(patch_size=32, interface_fraction=fraction, labelled_fraction=1.0)
        rng = np.random.default_rng(0)
        return sum(bool((sample_patch(ps, rng, cfg)[1]["separation"] == 1).any()) for _ in range(100))

    assert hits(1.0) == 100  # every patch holds the scribble
    assert hits(0.0) < 20  # drawn among all annotated pixels it is rarely seen
    assert 15 < hits(0.3) < 50
    assert AugmentConfig().interface_fraction == 0.0  # measured not to help (DSB): off


def test_resize_targets_keeps_thin_scribbles_and_majority():
    t = np.full((40, 40), -1, np.int16)
    t[10, :] = 1  # a 1 px line: at half size it would fall between nearest-neighbour samples
    t[:, 31] = 0
    t[20:30, 0:10] = 2
    t[20:30, 9] = 0  # a minority inside a class-2 block
    small = resize_targets(t, (20, 20))
    assert small.dtype == t.dtype
    assert (small[5, :15] == 1).all()  # the line survives
    assert (small[:, 15] == 0).sum() >= 18
    assert (small[10:15, 0:4] == 2).all()  # majority wins where several classes meet
    assert small[0, 0] == -1 and small[15, 8] == -1  # nothing labelled under it: ignored
    np.testing.assert_array_equal(resize_targets(t, t.shape), t)


def _blobs(radius, n=4, size=400):
    seg = np.ones((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = radius + 10 + (2 * radius + 10) * (i % 3), radius + 10 + (2 * radius + 10) * (i // 3)
        seg[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 2
    return Sample("b", np.zeros((size, size), np.uint8), segmentation=seg)


def test_auto_scale_by_object_size():
    assert object_size([_blobs(30)]) == pytest.approx(60, rel=0.05)
    assert auto_scale([_blobs(10)], 128) == 1.0  # small objects: no resizing
    assert auto_scale([_blobs(30)], 128) == 1.0  # 60 px: fits in half a 128 px patch
    assert auto_scale([_blobs(40)], 128) == 0.8  # 80 px: half a patch at 0.8
    assert auto_scale([_blobs(40)], 256) == 1.0  # a bigger patch holds them as they are
    assert auto_scale([_blobs(70, size=1000)], 128) == 0.45  # 140 px: 64 / 140
    # a 400 px image keeps two 128 px patches across: 0.64, not 0.45
    assert auto_scale([_blobs(70)], 128) == 0.64
    # no cliff: objects 10% larger give a scale about 10% smaller, not half of it
    a, b = auto_scale([_blobs(60, size=1000)], 128), auto_scale([_blobs(66, size=1000)], 128)
    assert 0.85 < b / a < 0.95
    assert auto_scale([_blobs(190, n=1, size=3000)], 128) == 0.25  # never below a quarter
    assert auto_scale([Sample("e", np.zeros((9, 9), np.uint8))], 128) == 1.0  # no objects
    # without exact masks the marks' length stands in for the objects' size
    det = np.zeros((400, 400), np.uint8)
    det[100:104, 50:150] = 2
    det[200:204, 50:160] = 2
    # (the major axis of a uniform bar is 1.15 x its length)
    assert object_size([Sample("d", np.zeros((400, 400), np.uint8), detection=det)]) == pytest.approx(1.15 * 105, rel=0.05)


def test_prepared_sample_at_working_scale():
    s = _sample()
    ps = PreparedSample(s, 1, (1.0, 99.8), "ignore", ("detection", "separation"), scale=0.5)
    assert ps.shape == (60, 75)
    assert ps.targets["detection"].shape == (60, 75)
    assert (ps.targets["detection"][25:35, 30:45] == 1).all()  # the object mark, halved
    assert ps.image[30, 37, 0] > 0.9 and ps.image[2, 2, 0] < 0.1
    ys, xs = ps.labelled_yx.T
    assert ys.max() < 60 and xs.max() < 75
    assert set(ps.targets["detection"][ys, xs].tolist()) <= {0, 1}


def test_object_size_labels_only_the_occupied_parts():
    """Marks in a few places of a large map are labelled part by part (between empty rows and
    columns): the same components, so the same typical size, as labelling the whole map."""
    import cv2
    from skimage.measure import regionprops

    from napari_lazylabels.core.data import _occupied_parts, object_size

    rng = np.random.default_rng(1)
    det = np.zeros((900, 1000), np.uint8)
    for _ in range(80):  # some touch, some cross the parts' would-be edges
        cv2.circle(det, (int(rng.integers(0, 1000)), int(rng.integers(0, 450))), int(rng.integers(2, 18)), 2, -1)
    det[700:720, 100:900] = 2  # a long mark alone in its rows
    fg = (det >= 2).astype(np.uint8)
    parts = _occupied_parts(fg)
    assert len(parts) >= 2 and sum(p.size for p in parts) < fg.size
    _, whole = cv2.connectedComponents(fg, connectivity=8)
    want = np.median([r.axis_major_length for r in regionprops(whole) if r.area >= 9])
    assert object_size([Sample("a", np.zeros(det.shape, np.uint8), detection=det)]) == pytest.approx(want)
