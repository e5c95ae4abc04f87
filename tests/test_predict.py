"""Tests of whole-image prediction: sliding-window blending, Predictor, instances."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_lazylabels.core.labels import DETECTION, SEGMENTATION
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.predict import (
    PredictConfig,
    Prediction,
    PredictionCancelled,
    Predictor,
    PredictPhase,
    Progress,
    dihedral,
    gaussian_importance_map,
    instances_from_prediction,
    predict_file,
    resize_maps,
    separating_interfaces,
    sliding_window,
    tile_starts,
)

# One orientation: most tests check tiling and post-processing (test-time augmentation has its own).
FAST = PredictConfig(tile=64, overlap=0.25, batch_size=4, device="cpu", min_object_size=4, tta=1)


def double(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"seg": 2 * x}


@pytest.fixture(scope="module")
def multitask():
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=3, widths=(4, 8), size="custom")
    return build_model(cfg), cfg


# --------------------------------------------------------------------------- geometry
def test_importance_map():
    for shape in [(64, 64), (65, 40), (256, 256)]:
        w = gaussian_importance_map(shape)
        assert w.dtype == np.float32 and w.shape == shape
        assert np.all(w > 0) and w.min() >= 1e-3
        assert w.max() == pytest.approx(1.0)
        np.testing.assert_array_equal(w, w[::-1])
        np.testing.assert_array_equal(w, w[:, ::-1])
        cy, cx = (shape[0] - 1) // 2, (shape[1] - 1) // 2
        assert w[cy, cx] == w.max()


@pytest.mark.parametrize(
    "length,tile,overlap",
    [
        (10, 64, 0.25),
        (64, 64, 0.5),
        (300, 64, 0.25),
        (517, 256, 0.5),
        (1000, 256, 0.0),
        (257, 256, 0.75),
    ],
)
def test_tile_starts(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    if length <= tile:
        assert starts == [0]
        return
    assert starts[-1] == length - tile
    assert starts == sorted(set(starts))
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    assert np.diff(starts).max() <= max(1, round(tile * (1 - overlap)))


# --------------------------------------------------------------------------- sliding window
@pytest.mark.parametrize(
    "shape,tile,overlap,batch",
    [
        ((300, 517), 64, 0.25, 4),
        ((100, 90), 64, 0.5, 3),
        ((256, 256), 256, 0.25, 8),
        ((513, 1000), 256, 0.25, 8),
        ((513, 1000), 128, 0.75, 5),
        ((100, 90), 256, 0.25, 1),  # smaller than the tile: padded
        ((20, 300), 64, 0.0, 2),  # one dimension too small even for reflection
        ((300, 517), 96, 0.6, 64),
    ],
)
@pytest.mark.parametrize("band_bytes", [None, 0])  # the default band, and the smallest (shifted at every row)
def test_sliding_window_exact(shape, tile, overlap, batch, band_bytes, monkeypatch):
    if band_bytes is not None:
        import napari_lazylabels.core.tiling as tiling

        monkeypatch.setattr(tiling, "BAND_BYTES", band_bytes)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    seen = []
    out = sliding_window(
        image,
        double,
        tile=tile,
        overlap=overlap,
        batch_size=batch,
        progress=lambda ev: seen.append((ev.done, ev.total)),
    )
    assert out["seg"].shape == image.shape and out["seg"].dtype == np.float32
    np.testing.assert_allclose(out["seg"], 2 * image, rtol=1e-6, atol=1e-6)
    assert seen[-1][0] == seen[-1][1] and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_sliding_window_memmap_outputs(tmp_path):
    image = np.random.default_rng(1).random((1, 150, 211), dtype=np.float32)
    mm = np.memmap(tmp_path / "seg.f32", dtype=np.float32, mode="w+", shape=(1, 150, 211))
    mm2d = np.memmap(tmp_path / "seg2.f32", dtype=np.float32, mode="w+", shape=(150, 211))

    def fwd(x):
        return {"a": 2 * x, "b": x + 1}

    out = sliding_window(
        image, fwd, outputs={"a": mm, "b": mm2d}, tile=64, overlap=0.25, batch_size=3
    )
    assert out["a"] is mm and out["b"] is mm2d
    mm.flush()
    back = np.fromfile(tmp_path / "seg.f32", dtype=np.float32).reshape(1, 150, 211)
    np.testing.assert_allclose(back, 2 * image, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mm2d, image[0] + 1, rtol=1e-6, atol=1e-6)


def test_sliding_window_cancel():
    image = np.zeros((1, 200, 200), np.float32)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(PredictionCancelled):
        sliding_window(image, double, tile=64, batch_size=1, should_stop=stop)
    assert len(calls) == 3


# --------------------------------------------------------------------------- predictor
def _check(pred: Prediction, shape, k, interfaces=True):
    assert pred.probabilities.shape == (k, *shape) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(0), 1, atol=1e-5)
    assert pred.classes.shape == shape and pred.classes.dtype == np.uint8
    assert pred.classes.max() < k
    if interfaces:
        assert pred.interfaces.shape == shape and pred.interfaces.dtype == np.float32
        assert 0 <= pred.interfaces.min() and pred.interfaces.max() <= 1
    else:
        assert pred.interfaces is None
    assert pred.instances.shape == shape and pred.instances.dtype == np.int32


def test_predictor_multitask_gray(multitask):
    model, cfg = multitask
    image = np.random.default_rng(0).integers(0, 4000, (300, 517)).astype(np.uint16)
    pred = Predictor(model, cfg, FAST).predict(image)
    _check(pred, (300, 517), 3)
    assert pred.detection is None
    # the same through predict_iter: tile progress, the phases after the tiles, the Prediction
    gen = Predictor(model, cfg, FAST).predict_iter(image)
    events = []
    with pytest.raises(StopIteration) as end:
        while True:
            events.append(next(gen))
    assert all(isinstance(e, Progress) for e in events)
    tiles = [e for e in events if e.phase == "tiles"]
    assert events[: len(tiles)] == tiles and len(tiles) > 2 and tiles[-1].done == tiles[-1].total
    phases = events[len(tiles) :]
    assert phases[0].phase == "classes" and phases[-1].phase == "instances"
    assert phases[-1].done == phases[-1].total
    assert isinstance(end.value.value, Prediction)
    np.testing.assert_allclose(end.value.value.probabilities, pred.probabilities, atol=1e-6)


def test_predictor_rgb_model_and_gray_input():
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=3, n_classes=2, widths=(4, 8), size="custom")
    pc = PredictConfig(tile=64, device="cpu")
    predictor = Predictor(build_model(cfg), cfg, pc, keep_detection=True)
    rgb = np.random.default_rng(0).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    pred = predictor.predict(rgb)
    _check(pred, (70, 90), 2)
    assert pred.detection.shape == (2, 70, 90)
    _check(predictor.predict(rgb[..., 0]), (70, 90), 2)


def test_gray_model_rejects_colour(multitask):
    model, cfg = multitask
    predictor = Predictor(model, cfg, FAST)
    rgb = np.random.default_rng(0).integers(0, 255, (70, 90, 3)).astype(np.uint8)
    with pytest.raises(ValueError, match="grayscale"):
        predictor.predict(rgb)
    same = np.repeat(rgb[..., :1], 3, axis=-1)
    _check(predictor.predict(same), (70, 90), 3)


@pytest.mark.parametrize("task", [SEGMENTATION, DETECTION])
def test_single_task_unet(task):
    cfg = ModelConfig(
        in_channels=1, n_classes=2, widths=(4, 8), size="custom", architecture="unet", tasks=(task,)
    )
    pred = Predictor(build_model(cfg), cfg, FAST).predict(
        np.random.default_rng(0).random((80, 100))
    )
    _check(pred, (80, 100), 2, interfaces=False)
    if task == DETECTION:
        assert pred.detection is pred.probabilities


def test_predictor_cancel(multitask):
    model, cfg = multitask
    with pytest.raises(PredictionCancelled):
        Predictor(model, cfg, FAST).predict(
            np.zeros((200, 200), np.uint8), should_stop=lambda: True
        )
    seen = []
    with pytest.raises(PredictionCancelled):
        Predictor(model, cfg, FAST).predict(
            np.zeros((200, 200), np.uint8),
            should_stop=lambda: len(seen) >= 1,
            progress=lambda ev: seen.append(ev.done),
        )
    assert len(seen) == 1


def test_predict_stack(multitask):
    model, cfg = multitask
    stack = np.random.default_rng(0).integers(0, 255, (3, 64, 80)).astype(np.uint8)
    seen = []
    preds = Predictor(model, cfg, FAST).predict_stack(
        stack, progress=lambda ev: ev.phase == "tiles" and seen.append((ev.done, ev.total))
    )
    assert len(preds) == 3 and all(p.classes.shape == (64, 80) for p in preds)
    assert seen[-1][0] == seen[-1][1]
    with pytest.raises(ValueError, match="one RGB image"):
        Predictor(model, cfg, FAST).predict_stack(np.zeros((64, 80, 3), np.uint8))


def test_predict_file(multitask, tmp_path):
    from napari_lazylabels.core.io import read_label, write_image

    model, cfg = multitask
    image = np.random.default_rng(0).integers(0, 255, (90, 120)).astype(np.uint8)
    path = write_image(tmp_path / "img.png", image)
    for large in (10**9, 100):  # in memory, and with memory-mapped float maps
        out = tmp_path / f"out{large}"
        written = predict_file(Predictor(model, cfg, FAST), path, out, large_pixels=large)
        assert set(written) == {"classes", "instances", "interfaces", "probabilities"}
        import tifffile

        probs = tifffile.imread(written["probabilities"])
        assert probs.shape == (3, 90, 120) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
        assert tifffile.imread(written["interfaces"]).shape == (90, 120)
        assert read_label(written["classes"]).shape == (90, 120)
        assert read_label(written["instances"]).dtype == np.uint16
        assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written.values())


# --------------------------------------------------------------------------- instances
def test_instances_split_at_interface():
    classes = np.zeros((40, 60), np.uint8)
    classes[10:30, 10:50] = 1  # two touching 20x20 squares
    interfaces = np.zeros((40, 60), np.float32)
    interfaces[10:30, 29:31] = 0.9  # the interface line between them
    inst = instances_from_prediction(classes, interfaces, 0.5, min_size=10)
    assert inst.dtype == np.int32
    assert set(np.unique(inst)) == {0, 1, 2}
    assert np.all((inst > 0) == (classes > 0))  # interface pixels given back to the objects
    assert len(np.unique(inst[10:30, 10:29])) == 1 and len(np.unique(inst[10:30, 31:50])) == 1
    one = instances_from_prediction(classes, np.zeros_like(interfaces), 0.5, min_size=10)
    assert set(np.unique(one)) == {0, 1}
    assert set(np.unique(instances_from_prediction(classes, None, min_size=10))) == {0, 1}


def test_instances_per_class_and_small_removed():
    classes = np.zeros((30, 30), np.uint8)
    classes[5:15, 5:15] = 1
    classes[5:15, 15:25] = 2  # touches the class-1 square: still another object
    classes[25:27, 25:27] = 1  # 4 pixels: removed
    for interfaces in (None, np.zeros((30, 30), np.float32)):
        inst = instances_from_prediction(classes, interfaces, min_size=10)
        assert set(np.unique(inst)) == {0, 1, 2}
        assert inst[27 - 1, 27 - 1] == 0
        assert len(np.unique(inst[5:15, 5:15])) == 1 and inst[10, 10] != inst[10, 20]


def test_uncertain_pixels_split_instances_when_asked():
    """Two squares joined by a strip the class map calls foreground but with low confidence:
    split only when class probabilities are passed in."""
    from napari_lazylabels.core.predict import instances_from_prediction

    classes = np.zeros((40, 80), np.uint8)
    classes[10:30, 10:70] = 1
    probs = np.zeros((2, 40, 80), np.float32)
    probs[1] = np.where(classes > 0, 0.99, 0.01)
    probs[1, 10:30, 38:42] = 0.6  # a weak boundary
    probs[0] = 1 - probs[1]
    assert instances_from_prediction(classes, None).max() == 1
    inst = instances_from_prediction(classes, None, probabilities=probs, seed_probability=0.9)
    assert inst.max() == 2
    assert inst[20, 20] != inst[20, 60] and (inst[classes > 0] > 0).all()


def test_instances_split_at_necks_when_asked():
    """Two overlapping discs (a figure of eight) that the class map merges and no interface
    cuts: one object by default, two with ``neck_depth``; a single disc and an ellipse stay
    whole, and every foreground pixel keeps an object."""
    yy, xx = np.mgrid[:60, :120]
    classes = np.zeros((60, 120), np.uint8)
    classes[(yy - 30) ** 2 + (xx - 30) ** 2 <= 14**2] = 1
    classes[(yy - 30) ** 2 + (xx - 52) ** 2 <= 14**2] = 1  # centres 22 px apart: a neck
    classes[((yy - 30) / 10.0) ** 2 + ((xx - 95) / 20.0) ** 2 <= 1] = 1  # an ellipse, no neck
    for interfaces in (None, np.zeros(classes.shape, np.float32)):
        plain = instances_from_prediction(classes, interfaces)
        assert plain.max() == 2
        split = instances_from_prediction(classes, interfaces, neck_depth=2.0)
        assert split.max() == 3
        assert split[30, 25] != split[30, 57] and split[30, 85] == split[30, 105]
        assert (split[classes > 0] > 0).all()
    lone = np.zeros((40, 40), np.uint8)
    lone[(yy[:40, :40] - 20) ** 2 + (xx[:40, :40] - 20) ** 2 <= 15**2] = 1
    assert instances_from_prediction(lone, None, neck_depth=2.0).max() == 1


class Fixed(torch.nn.Module):
    """Stand-in network: the wrapped model's outputs, with the segmentation logits of class 1
    given by ``logit(x)`` (class 0 at 0, class 2 far below) and, with ``interfaces=False``,
    no interface anywhere; ``interfaces`` may also be a function giving the interface logit."""

    def __init__(self, inner, logit, interfaces=True):
        super().__init__()
        self.inner, self.logit, self.interfaces = inner, logit, interfaces

    def forward(self, x):
        out = self.inner(x)
        logit = self.logit(x[:, :1])
        out[SEGMENTATION] = torch.cat([torch.zeros_like(logit), logit, torch.full_like(logit, -20.0)], 1)
        if self.interfaces is False:
            out["separation"] = torch.cat([torch.zeros_like(logit), torch.full_like(logit, -20.0)], 1)
        elif callable(self.interfaces):
            out["separation"] = torch.cat([torch.zeros_like(logit), self.interfaces(x[:, :1])], 1)
        return out


def bright(x):
    return torch.where(x > 0.5, 8.0, -8.0)


def test_predictor_splits_at_uncertain_class_probability_when_configured(multitask):
    """``PredictConfig.seed_probability`` (the CLI's ``--split-uncertain``) reaches the
    instance step: two bright squares joined by a dimmer bridge that the class map calls
    foreground with ~0.73 confidence are one object by default and two when asked."""
    from dataclasses import replace

    model, cfg = multitask

    def confidence(x):
        return torch.where(x > 0.9, 8.0, torch.where(x > 0.3, 1.0, -8.0))

    image = np.zeros((64, 128), np.float32)
    image[16:48, 16:56] = image[16:48, 72:112] = 1.0
    image[24:40, 56:72] = 0.5  # the bridge
    plain = Predictor(Fixed(model, confidence, interfaces=False), cfg, FAST).predict(image)
    assert plain.instances.max() == 1
    split = Predictor(Fixed(model, confidence, interfaces=False), cfg, replace(FAST, seed_probability=0.9)).predict(image)
    assert split.instances.max() == 2 and split.instances[32, 30] != split.instances[32, 100]
    np.testing.assert_array_equal(split.classes, plain.classes)


def test_predictor_splits_at_the_configured_interface_threshold(multitask):
    """``PredictConfig.interface_threshold`` (the CLI's ``--interface-threshold``, the Predict
    widget's field) decides which interfaces cut: a line of interface probability ~0.73
    across one bright bar splits it at 0.5 and not at 0.9; out-of-range values are refused."""
    from dataclasses import replace

    model, cfg = multitask
    image = np.zeros((64, 128), np.float32)
    image[16:48, 16:112] = 1.0
    image[16:48, 62:66] = 0.95  # the interface, still foreground

    def interface(x):
        return torch.where((x > 0.9) & (x < 0.99), 1.0, -8.0)

    low = Predictor(Fixed(model, bright, interface), cfg, replace(FAST, interface_threshold=0.5)).predict(image)
    assert low.instances.max() == 2 and low.instances[32, 30] != low.instances[32, 100]
    assert 0.6 < low.interfaces[32, 64] < 0.8
    high = Predictor(Fixed(model, bright, interface), cfg, replace(FAST, interface_threshold=0.9)).predict(image)
    assert high.instances.max() == 1
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="interface_threshold is a probability"):
            PredictConfig(interface_threshold=bad)


def test_smallest_object_follows_the_models_object_size(multitask):
    """By default instances below a tenth of the typical training object's area go; a model
    without a measured object size, or an explicit ``min_object_size``, keeps 16 px / that."""
    from dataclasses import replace

    from napari_lazylabels.core.predict import auto_min_object_size

    model, cfg = multitask
    assert auto_min_object_size(cfg) == 16
    sized = replace(cfg, object_diameter=40.0)
    assert auto_min_object_size(sized) == int(0.1 * np.pi / 4 * 1600) == 125
    assert auto_min_object_size(replace(cfg, object_diameter=5.0)) == 16
    assert auto_min_object_size(sized, 7) == 7

    image = np.zeros((64, 96), np.float32)
    image[10:40, 10:40] = 1.0  # 900 px: kept
    image[50:58, 70:78] = 1.0  # 64 px: a speck for a model of 40 px objects
    cfg_nosep = replace(cfg, tasks=("detection", "segmentation"))
    pc = replace(FAST, min_object_size=None)
    assert Predictor(Fixed(model, bright), cfg_nosep, pc).predict(image).instances.max() == 2
    pred = Predictor(Fixed(model, bright), replace(cfg_nosep, object_diameter=40.0), pc).predict(image)
    assert pred.instances.max() == 1 and pred.instances[54, 74] == 0 and pred.classes[54, 74] == 1


def test_predictor_splits_at_necks_when_configured(multitask):
    """``PredictConfig.neck_depth`` (the CLI's ``--split-necks``) reaches the instance step."""
    from dataclasses import replace

    model, cfg = multitask

    yy, xx = np.mgrid[:64, :96]
    image = np.zeros((64, 96), np.float32)
    image[((yy - 32) ** 2 + (xx - 34) ** 2 <= 14**2) | ((yy - 32) ** 2 + (xx - 56) ** 2 <= 14**2)] = 1.0
    assert Predictor(Fixed(model, bright, interfaces=False), cfg, FAST).predict(image).instances.max() == 1
    split = Predictor(Fixed(model, bright, interfaces=False), cfg, replace(FAST, neck_depth=2.0)).predict(image).instances
    assert split.max() == 2 and split[32, 26] != split[32, 64]
    with pytest.raises(ValueError, match="neck_depth"):
        PredictConfig(neck_depth=-1)


@pytest.mark.parametrize("src_shape, dst_shape, rows", [((37, 53), (150, 211), 16), ((80, 80), (40, 40), 7), ((5, 9), (5, 9), 256)])
def test_resize_maps_matches_cv2_in_bands(src_shape, dst_shape, rows):
    import cv2

    src = np.random.default_rng(1).random((2, *src_shape), dtype=np.float32)
    dst = np.empty((2, *dst_shape), np.float32)
    resize_maps(src, dst, rows=rows)
    ref = np.stack([cv2.resize(c, dst_shape[::-1], interpolation=cv2.INTER_LINEAR) for c in src])
    np.testing.assert_allclose(dst, ref, atol=1e-5)


def test_predictor_at_working_scale(multitask, monkeypatch):
    """A model with scale 0.5 sees the image at half size; its maps come back at full size,
    and an object of the image is found where it is."""
    model, cfg = multitask
    half = ModelConfig(**{**cfg.to_dict(), "scale": 0.5})
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            seen.append(tuple(x.shape))
            out = self.inner(x)
            # class 1 wherever the (normalised) input is bright, at the network's scale
            bright = (x[:, :1] > 0.5).float() * 20
            out[SEGMENTATION] = torch.cat([-bright, bright, -bright], 1)
            return out

    image = np.zeros((301, 517), np.float32)
    image[100:200, 200:400] = 1.0
    pred = Predictor(Spy(model), half, FAST).predict(image)
    _check(pred, (301, 517), 3)
    assert sum(n for n, *_ in seen) == len(tile_starts(151, 64, 0.25)) * len(tile_starts(259, 64, 0.25))
    assert (pred.classes[104:196, 204:396] == 1).all() and (pred.classes[:96] == 0).all()
    assert pred.instances.max() == 1
    # large images keep their working-scale maps in memory-mapped files: same result
    import napari_lazylabels.core.predictor as predictor_mod

    monkeypatch.setattr(predictor_mod, "LARGE_IMAGE_PIXELS", 1000)
    again = Predictor(Spy(model), half, FAST).predict(image)
    np.testing.assert_array_equal(again.probabilities, pred.probabilities)


def test_separating_interfaces_keep_only_pixels_between_objects():
    inst = np.zeros((30, 50), np.int32)
    inst[5:25, 5:24] = 1
    inst[5:25, 26:45] = 2
    prob = np.zeros(inst.shape, np.float32)
    prob[5:25, 24:26] = 0.9  # between the two objects
    prob[5:25, 3:5] = 0.9  # along object 1's open edge
    prob[26:28, 20:30] = 0.4  # below the threshold
    sep = separating_interfaces(prob, inst, 0.5)
    assert sep[5:25, 24:26].all()
    assert not sep[:, :20].any() and not sep[26:].any()
    with pytest.raises(ValueError, match="shape"):
        separating_interfaces(prob, inst[:10])


def test_resplit_folder_cuts_written_predictions_again(tmp_path):
    """``resplit_folder`` (``lazylabels instances``) rewrites ``<stem>_instances`` from the
    class map and interface map on disk: a bar crossed by an interface of probability 0.7
    is two objects at threshold 0.5, one at 0.9; the model's automatic smallest object comes
    from ``lazylabels-predict.json``; a stale ``.tif`` of an earlier run goes."""
    import json

    from napari_lazylabels.core.io import read_label, write_image, write_label
    from napari_lazylabels.core.predict import PREDICTION_SETTINGS, resplit_folder

    classes = np.zeros((40, 100), np.uint8)
    classes[10:30, 10:90] = 1
    interfaces = np.zeros((40, 100), np.float32)
    interfaces[10:30, 49:51] = 0.7
    write_label(tmp_path / "a_classes.png", classes)
    write_image(tmp_path / "a_interfaces.tif", interfaces)
    write_image(tmp_path / "a_instances.tif", np.ones((40, 100), np.int32))  # stale
    (tmp_path / PREDICTION_SETTINGS).write_text(json.dumps({"auto_min_object_size": 700}))

    (path,) = resplit_folder(tmp_path, 0.5)
    inst = read_label(path)
    assert path.name == "a_instances.png" and not (tmp_path / "a_instances.tif").exists()
    assert inst.max() == 2 and inst[20, 20] != inst[20, 80] and inst[20, 20] > 0
    assert json.loads((tmp_path / PREDICTION_SETTINGS).read_text())["min_object_size"] == 700
    assert read_label(resplit_folder(tmp_path, 0.9)[0]).max() == 1
    assert read_label(resplit_folder(tmp_path, 0.5, min_object_size=900)[0]).max() == 0  # 780 px halves
    with pytest.raises(FileNotFoundError, match="run lazylabels predict first"):
        resplit_folder(tmp_path, stems=["b"])
    with pytest.raises(ValueError, match="interface_threshold"):
        resplit_folder(tmp_path, 0.0)


def test_exact_instances_cut_class_masks_at_interface_scribbles():
    from napari_lazylabels.core.io import Sample
    from napari_lazylabels.core.predict import exact_instances

    seg = np.ones((20, 40), np.uint8)
    seg[5:15, 5:35] = 2
    sep = np.zeros((20, 40), np.uint8)
    sep[5:15, 20] = 2
    img = np.zeros((20, 40), np.uint8)
    assert exact_instances(Sample("a", img, segmentation=seg)).max() == 1
    two = exact_instances(Sample("a", img, segmentation=seg, separation=sep))
    assert two.max() == 2 and two[10, 10] != two[10, 30] and two[10, 20] == 0
    partial = seg.copy()
    partial[0, 0] = 0
    assert exact_instances(Sample("a", img, segmentation=partial)) is None
    assert exact_instances(Sample("a", img, detection=seg)) is None


def test_tune_interface_threshold_picks_the_cut_that_matches_the_masks(multitask):
    """Bars crossed by a line of interface probability ~0.73: when the exact masks say each
    bar is one object, thresholds that cut (0.3-0.7) score lower and 0.85 is chosen (the
    candidate nearest 0.5 among the best); when an interface scribble says two, 0.5 stays."""
    from napari_lazylabels.core.io import Sample
    from napari_lazylabels.core.predict import tune_interface_threshold

    model, cfg = multitask
    image = np.zeros((64, 128), np.float32)
    seg = np.ones((64, 128), np.uint8)
    sep = np.zeros((64, 128), np.uint8)
    for y in (4, 24, 44):
        image[y : y + 16, 16:112] = 1.0
        image[y : y + 16, 62:66] = 0.95
        seg[y : y + 16, 16:112] = 2
        sep[y : y + 16, 63:65] = 2

    def interface(x):
        return torch.where((x > 0.9) & (x < 0.99), 1.0, -8.0)

    predictor = Predictor(Fixed(model, bright, interface), cfg, FAST)
    t, scores = tune_interface_threshold(predictor, [Sample("one", image, segmentation=seg)] * 2)
    assert t == 0.85 and scores[0.3] == scores[0.5] == scores[0.7] < scores[0.85] == scores[0.95] == 1.0
    t, scores = tune_interface_threshold(predictor, [Sample("two", image, segmentation=seg, separation=sep)])
    assert t == 0.5 and scores[0.5] == 1.0
    assert tune_interface_threshold(predictor, [Sample("none", image, detection=seg)]) == (None, {})


# --------------------------------------------------------------------------- test-time augmentation
def test_dihedral_transforms_are_the_eight_symmetries_and_invert():
    x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    seen = set()
    for k in range(8):
        y = dihedral(x, k)
        assert y.shape == ((1, 2, 3, 5) if k < 4 else (1, 2, 5, 3))
        torch.testing.assert_close(dihedral(y, k, inverse=True), x, rtol=0, atol=0)
        seen.add(tuple(y[0, 0].flatten().tolist()) + tuple(y.shape))
    assert len(seen) == 8
    torch.testing.assert_close(dihedral(x, 1), x.flip(-1), rtol=0, atol=0)
    torch.testing.assert_close(dihedral(x, 4), x.transpose(-1, -2), rtol=0, atol=0)
    with pytest.raises(ValueError, match="0..7"):
        dihedral(x, 8)


def test_tta_changes_nothing_for_a_model_that_ignores_orientation(multitask):
    """A pointwise stand-in looks the same in every orientation: 8 orientations give the
    one-orientation result exactly (to float rounding), on an image of several tiles."""
    from dataclasses import replace

    model, cfg = multitask
    rng = np.random.default_rng(0)
    image = rng.random((150, 97)).astype(np.float32)
    one = Predictor(Fixed(model, lambda x: 6 * x - 3), cfg, FAST).predict(image)
    eight = Predictor(Fixed(model, lambda x: 6 * x - 3), cfg, replace(FAST, tta=8)).predict(image)
    np.testing.assert_allclose(eight.probabilities, one.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eight.classes, one.classes)


def test_tta_averages_class_probabilities_over_orientations_but_not_interfaces(multitask):
    """A stand-in that sees position (a left-to-right ramp) predicts differently when the
    tile is mirrored: with 2 orientations the class probability of a single tile is the
    mean of the map and its mirror image, exactly; with 4 also of the up-down mirrors. The
    interface map stays the plain orientation's."""
    from dataclasses import replace

    model, cfg = multitask

    def ramp(x):  # logit grows from left to right, plus a little of the image
        w = x.shape[-1]
        return torch.linspace(-4, 4, w).expand_as(x) + x

    def iface(x):  # interface logit grows from top to bottom
        h = x.shape[-2]
        return torch.linspace(-4, 4, h)[:, None].expand_as(x).contiguous()

    image = np.random.default_rng(1).random((64, 64)).astype(np.float32)  # exactly one tile
    net = Fixed(model, ramp, interfaces=iface)
    one = Predictor(net, cfg, FAST).predict(image, instances=False)
    two = Predictor(net, cfg, replace(FAST, tta=2)).predict(image, instances=False)
    four = Predictor(net, cfg, replace(FAST, tta=4)).predict(image, instances=False)
    p = one.probabilities[1]
    assert not np.allclose(p, p[:, ::-1], atol=0.1)  # the stand-in does depend on orientation
    mirrored = Predictor(net, cfg, FAST).predict(np.ascontiguousarray(image[:, ::-1]), instances=False)
    np.testing.assert_allclose(two.probabilities[1], (p + mirrored.probabilities[1][:, ::-1]) / 2, atol=1e-5)
    np.testing.assert_allclose(four.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_allclose(two.interfaces, one.interfaces, rtol=0, atol=0)
    np.testing.assert_allclose(four.interfaces, one.interfaces, rtol=0, atol=0)
    assert one.interfaces[-1].mean() > 0.9 and one.interfaces[0].mean() < 0.1


def test_tta_must_be_a_number_of_orientations():
    for bad in (0, 3, 16):
        with pytest.raises(ValueError, match="orientations"):
            PredictConfig(tta=bad)


def test_predictor_runs_the_separation_path_once_per_tile_batch(multitask):
    """With 4 orientations the class map is averaged over all four, the interface map comes
    from the first: the separation decoder runs once per batch of tiles, not four times, and
    the maps equal those of a predictor that runs the whole network every time."""
    model, cfg = multitask
    runs = []
    hooks = [b.separation.register_forward_hook(lambda *a: runs.append(1)) for b in model.blocks]

    class Whole(torch.nn.Module):  # no `tasks` argument: the predictor calls it plainly
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    image = np.random.default_rng(0).random((100, 90)).astype(np.float32)
    pc = replace(FAST, tta=4)
    try:
        pred = Predictor(model, cfg, pc).predict(image)
        n_fast = len(runs)
        runs.clear()
        whole = Predictor(Whole(model), cfg, pc).predict(image)
        n_whole = len(runs)
    finally:
        for h in hooks:
            h.remove()
    n_batches = math.ceil(len(tile_starts(100, 64, 0.25)) * len(tile_starts(90, 64, 0.25)) / pc.batch_size)
    assert n_fast == n_batches * len(model.blocks) and n_whole == 4 * n_fast
    np.testing.assert_allclose(pred.probabilities, whole.probabilities, atol=1e-5)
    np.testing.assert_allclose(pred.interfaces, whole.interfaces, atol=1e-5)


def test_predictor_without_interfaces_skips_the_separation_decoder(multitask):
    """``keep_interfaces=False`` (what training's validation asks for) never runs the
    separation decoder, returns no interface map and the same class probabilities; training's
    validation scores the same dice with it."""
    from napari_lazylabels.core.io import Sample
    from napari_lazylabels.core.train import _validate, validation_score

    model, cfg = multitask
    runs = []
    hooks = [b.separation.register_forward_hook(lambda *a: runs.append(1)) for b in model.blocks]
    image = np.random.default_rng(0).random((100, 90)).astype(np.float32)
    try:
        full = Predictor(model, cfg, FAST).predict(image)
        assert runs  # the hooks do count separation passes
        runs.clear()
        lean = Predictor(model, cfg, replace(FAST, keep_interfaces=False)).predict(image)
        assert runs == [] and lean.interfaces is None and lean.instances is not None
        np.testing.assert_allclose(lean.probabilities, full.probabilities, atol=1e-6)
        truth = np.ones(image.shape, np.uint8)
        truth[:, 45:] = 2  # background left, class 1 right
        sample = Sample("v", image, segmentation=truth)
        scores = _validate(model, cfg, [sample], "cpu")
        assert runs == [] and scores["n"] == 1
        whole = Predictor(model, cfg, PredictConfig(device="cpu", batch_size=4, tta=1)).predict(image)
        assert runs  # the full pass, as validation ran it before, does use the separation path
        assert scores["dice"] == validation_score(whole.classes, sample, cfg.n_classes)
    finally:
        for h in hooks:
            h.remove()


# --------------------------------------------------------------------------- phases, Stop, large images
def test_post_processing_reports_its_phases_and_stops_inside_them(multitask, monkeypatch):
    """After the tiles, predict_iter yields a PredictPhase per band of the argmax and, through
    the instance step, per component that needs a watershed (PHASE_SECONDS = 0 here): 30
    bars, each crossed by an interface line, are 30 watershed components. Closing the
    generator in the instance step (what a worker's Stop does) leaves no Prediction."""
    from napari_lazylabels.core import instances as instances_mod

    monkeypatch.setattr(instances_mod, "PHASE_SECONDS", 0.0)
    classes = np.zeros((300, 200), np.uint8)
    interfaces = np.zeros((300, 200), np.float32)
    for i in range(30):
        classes[10 * i + 2 : 10 * i + 8, 10:190] = 1
        interfaces[10 * i + 2 : 10 * i + 8, 99:101] = 0.9
    events = list(instances_mod.iter_instances_from_prediction(classes, interfaces, 0.5, 4))
    assert [e.phase for e in events] == ["instances"] * len(events) and len(events) >= 30
    assert [e.done for e in events] == sorted(e.done for e in events) and events[-1] == PredictPhase("instances", 30, 30)
    inst = instances_from_prediction(classes, interfaces, 0.5, 4)
    assert inst.max() == 60  # each bar cut in two

    model, cfg = multitask
    net = Fixed(model, bright, interfaces=lambda x: torch.where((x > 0.2) & (x < 0.8), 8.0, -8.0))
    image = np.zeros((300, 200), np.float32)
    image[classes > 0] = 1.0
    image[interfaces > 0] = 0.5  # the interface line
    gen = Predictor(net, cfg, replace(FAST, min_object_size=4, interface_threshold=0.5)).predict_iter(image)
    seen = []
    for event in gen:
        seen.append(event)
        if isinstance(event, PredictPhase) and event.phase == "instances" and event.done > 5:
            gen.close()
            break
    assert seen[0].phase == "tiles" and not any(isinstance(e, Prediction) for e in seen)
    assert {e.phase for e in seen} == {"tiles", "classes", "instances"}


def test_stop_is_checked_between_the_orientations_of_a_batch(multitask):
    """With 4 orientations a batch of tiles is 4 network passes; a Stop raised during the
    first pass ends the prediction before the second (not after the batch's four)."""
    model, cfg = multitask
    calls = []

    class Counting(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            calls.append(x.shape[0])
            return self.inner(x)

    predictor = Predictor(Counting(model), cfg, replace(FAST, tta=4, batch_size=8))
    with pytest.raises(PredictionCancelled):
        predictor.predict(np.zeros((200, 200), np.float32), should_stop=lambda: len(calls) >= 1)
    assert calls == [8]


def test_large_images_get_fewer_orientations_unless_set(multitask):
    """Above PredictConfig.large_image_pixels an image is predicted in large_image_tta
    orientations (never more than tta); large_image_tta=None keeps tta for every size; the
    network runs that many passes per batch."""
    model, cfg = multitask
    default = Predictor(model, cfg, PredictConfig(device="cpu"))
    assert default.orientations((2048, 2048)) == 4
    assert default.orientations((4096, 4096)) == PredictConfig().large_image_tta < 4
    assert Predictor(model, cfg, PredictConfig(device="cpu", tta=1)).orientations((4096, 4096)) == 1
    assert Predictor(model, cfg, PredictConfig(device="cpu", large_image_tta=None)).orientations((8192, 8192)) == 4
    with pytest.raises(ValueError, match="orientations"):
        PredictConfig(large_image_tta=3)

    calls = []
    hook = model.register_forward_hook(lambda *a: calls.append(1))
    image = np.random.default_rng(0).random((100, 90)).astype(np.float32)  # 4 tiles: one batch
    try:
        for pixels, expected in ((100 * 90, 4), (100 * 90 - 1, 2)):
            calls.clear()
            pc = replace(FAST, tta=4, large_image_tta=2, large_image_pixels=pixels)
            Predictor(model, cfg, pc).predict(image, instances=False)
            assert len(calls) == expected
    finally:
        hook.remove()
