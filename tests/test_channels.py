"""Multi-channel images (issue 26, channels): reading TIFFs with their axes, per-channel
normalisation, models that record their channels, choosing channels, and the refusal of
images whose channels do not fit a model (core and CLI)."""

import json
import logging

import numpy as np
import pytest
import tifffile
import torch

from napari_lazylabels.cli import main
from napari_lazylabels.core import io
from napari_lazylabels.core.checkpoint import load_model
from napari_lazylabels.core.data import PreparedSample
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.predict import PredictConfig, Predictor
from napari_lazylabels.core.prepare import (
    NormalizedSource,
    model_channels,
    prepare_image,
)
from napari_lazylabels.core.train import TrainConfig, fit, infer_model_config
from test_train import FAST, TINY, blobs

P = (1.0, 99.8)


def _two_channel(seed=0, shape=(40, 48)):
    """``(2, H, W)`` uint16: a bright channel and a dim one, of different ranges."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 4000, shape), rng.integers(100, 140, shape)]).astype(np.uint16)


# --------------------------------------------------------------------------- reading
def test_imagej_and_ome_tiffs_with_channels_read_as_one_image(tmp_path):
    cyx = _two_channel()
    tifffile.imwrite(tmp_path / "ij.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "ome.ome.tif", cyx[None, :, None], ome=True, metadata={"axes": "TCZYX"})
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(cyx, 0, -1))  # no axes: a last axis of 2
    for name in ("ij.tif", "ome.ome.tif", "yxc.tif"):
        images = io.read_images(tmp_path / name)
        assert len(images) == 1, name
        np.testing.assert_array_equal(images[0][1], np.moveaxis(cyx, 0, -1))
        np.testing.assert_array_equal(io.read_image(tmp_path / name), np.moveaxis(cyx, 0, -1))


def test_stacks_stay_slices_and_rgb_stays_rgb(tmp_path):
    z = np.random.default_rng(1).integers(0, 255, (3, 32, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "pages.tif", z[:2])  # plain pages: a stack, as before
    tifffile.imwrite(tmp_path / "z.tif", z, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(tmp_path / "zc.tif", np.stack([z, z // 2], 1), imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([z[0], z[1], z[2], z[0]]), photometric="rgb")
    assert [n for n, _ in io.read_images(tmp_path / "pages.tif")] == ["pages_z000", "pages_z001"]
    assert [im.shape for _, im in io.read_images(tmp_path / "z.tif")] == [(32, 40)] * 3
    zc = io.read_images(tmp_path / "zc.tif")
    assert [n for n, _ in zc] == ["zc_z000", "zc_z001", "zc_z002"] and zc[1][1].shape == (32, 40, 2)
    np.testing.assert_array_equal(zc[1][1][..., 1], z[1] // 2)
    assert io.read_image(tmp_path / "rgba.tif").shape == (32, 40, 3)  # alpha dropped, as for PNG


def test_multichannel_images_are_written_as_tiff_and_read_back(tmp_path):
    image = np.moveaxis(_two_channel(), 0, -1)
    det = np.zeros(image.shape[:2], np.uint8)
    det[5:9, 5:9] = 2
    ds = io.LazyDataset(samples=[io.Sample("a", image, detection=det)])
    io.save_dataset(ds, tmp_path / "ds")
    assert (tmp_path / "ds" / "images" / "a.tif").exists()
    assert tifffile.TiffFile(tmp_path / "ds" / "images" / "a.tif").series[0].axes == "CYX"  # Fiji sees channels
    np.testing.assert_array_equal(io.load_dataset(tmp_path / "ds")[0].image, image)
    with pytest.raises(ValueError, match="use a .tif path"):
        io.write_image(tmp_path / "a.png", image)


# --------------------------------------------------------------------------- preparation
def test_each_channel_gets_its_own_range():
    image = np.moveaxis(_two_channel(), 0, -1)
    out = prepare_image(image, 2, P, channels=(0, 1), source_channels=2)
    assert out.shape == (2, 40, 48) and out.dtype == np.float32
    for c in range(2):
        lo, hi = np.percentile(image[..., c], P)
        np.testing.assert_allclose(out[c], (image[..., c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)
    # the chosen channels only, in the chosen order
    np.testing.assert_array_equal(prepare_image(image, 1, P, channels=(1,), source_channels=2), out[1:])
    np.testing.assert_array_equal(prepare_image(image, 2, P, channels=(1, 0), source_channels=2), out[::-1])


def _former_prepare(image, in_channels, scale):
    """The gray/RGB recipe before channels existed (commit 01a64cf), written out."""
    import cv2

    img = image[..., :3] if image.ndim == 3 and image.shape[-1] == 4 else image
    if in_channels == 1 and img.ndim == 3:
        img = img[..., 0]
    h, w = img.shape[:2]
    s = max(1, int(np.sqrt(h * w / 1_000_000)))
    sub = img[::s, ::s]
    sub = sub[..., None] if sub.ndim == 2 else sub
    sub = np.repeat(sub, 3, -1) if sub.shape[-1] != in_channels else sub
    lo, hi = (float(v) for v in np.percentile(sub.reshape(-1, in_channels), P))
    if scale != 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    img = img[..., None] if img.ndim == 2 else img
    img = np.repeat(img, 3, -1) if img.shape[-1] != in_channels else img
    out = (img.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.ascontiguousarray(np.moveaxis(out, -1, 0))


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_gray_and_rgb_are_prepared_exactly_as_before(scale):
    """Channels change nothing for gray and RGB images and models: the same numbers."""
    rng = np.random.default_rng(7)
    gray = rng.gamma(2.0, 300.0, (150, 130)).astype(np.uint16)
    rgb = rng.integers(0, 256, (90, 110, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (90, 110, 4), dtype=np.uint8)
    for image, c in ((gray, 1), (rgb, 3), (gray, 3), (rgba, 3), (np.repeat(gray[..., None], 3, -1), 1)):
        cfg = ModelConfig(in_channels=c, n_classes=2, widths=(4, 8), size="custom", scale=scale)
        assert cfg.channels is None and cfg.source_channels is None
        expected = _former_prepare(image, c, scale)
        np.testing.assert_array_equal(prepare_image(image, c, P, scale), expected)
        np.testing.assert_array_equal(Predictor(build_model(cfg), cfg, PredictConfig(device="cpu")).prepare(image), expected)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_training_prediction_and_tiles_prepare_channels_alike(monkeypatch, scale):
    from napari_lazylabels.core import predictor as predictor_mod

    image = np.moveaxis(np.concatenate([_two_channel(0, (70, 90)), _two_channel(1, (70, 90))[:1]]), 0, -1)
    cfg = ModelConfig(in_channels=2, n_classes=2, widths=(4, 8), size="custom", scale=scale,
                      channels=(2, 0), source_channels=3)
    det = np.zeros(image.shape[:2], np.uint8)
    det[2:6, 2:20] = 1
    train = PreparedSample(io.Sample("s", image, detection=det), 2, P, "ignore", ("detection",), scale,
                           channels=cfg.channels, source_channels=3)
    pred = Predictor(build_model(cfg), cfg, PredictConfig(device="cpu")).prepare(image)
    np.testing.assert_array_equal(np.moveaxis(train.image, -1, 0), pred)
    monkeypatch.setattr(predictor_mod, "EAGER_NORMALIZE_BYTES", 0)
    lazy = Predictor(build_model(cfg), cfg, PredictConfig(device="cpu")).prepare(image)
    assert isinstance(lazy, NormalizedSource)
    np.testing.assert_array_equal(lazy.read(10, 30, 5, 40), pred[:, 10:30, 5:40])


# --------------------------------------------------------------------------- models
def test_model_config_records_its_channels():
    cfg = ModelConfig(in_channels=2, channels=(0, 2), source_channels=3)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = {k: v for k, v in ModelConfig(in_channels=3).to_dict().items() if k not in ("channels", "source_channels")}
    assert ModelConfig.from_dict(old).channels is None  # a checkpoint of older code: an RGB model
    for bad in (dict(in_channels=2), dict(in_channels=2, channels=(0, 1)), dict(in_channels=1, channels=(0, 1), source_channels=2),
                dict(in_channels=2, channels=(0, 2), source_channels=2), dict(in_channels=2, channels=(1, 1), source_channels=2)):
        with pytest.raises(ValueError):
            ModelConfig(**bad)


def test_model_channels_of_images():
    g, rgb, two = np.zeros((8, 8)), np.zeros((8, 8, 3)), np.zeros((8, 8, 2))
    rgb[..., 0] = 1
    assert model_channels([g, g]) == (1, None, None)
    assert model_channels([g, rgb]) == (3, None, None)
    assert model_channels([two]) == (2, (0, 1), 2)
    assert model_channels([two], (1,)) == (1, (1,), 2)
    assert model_channels([rgb], (2, 0)) == (2, (2, 0), 3)  # choosing treats colours as channels
    with pytest.raises(ValueError, match="different numbers of channels"):
        model_channels([g, two])
    with pytest.raises(ValueError, match="from 0 to 1"):
        model_channels([two], (0, 2))


def _channel_blobs(n_channels=2):
    """blobs() with the objects in channel 0 and noise of another range in the others."""
    ds = blobs()
    rng = np.random.default_rng(3)
    for s in ds:
        noise = [(rng.random(s.image.shape) * 60000).astype(np.uint16) for _ in range(n_channels - 1)]
        s.image = np.stack([s.image.astype(np.uint16), *noise], -1)
    return ds


def test_train_and_predict_on_two_channels_and_refuse_others(tmp_path):
    ds = _channel_blobs(3)
    assert infer_model_config(ds, torch.device("cpu"), "tiny").channels is None  # 3 channels: RGB unless chosen
    assert infer_model_config(_channel_blobs(4), torch.device("cpu"), "tiny").channels == (0, 1, 2, 3)
    res = fit(ds, tmp_path / "m", train_config=TrainConfig(iterations=3, **FAST),
              model_options={"widths": TINY["widths"], "channels": (0, 2)})
    model, ck = load_model(res.best)
    mc = ck.model_config
    assert (mc.in_channels, mc.channels, mc.source_channels) == (2, (0, 2), 3)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_config"]["channels"] == [0, 2]
    predictor = Predictor(model, mc, PredictConfig(device="cpu", tta=1))
    assert predictor.predict(ds[0].image).classes.shape == ds[0].shape
    for wrong in (ds[0].image[..., 0], ds[0].image[..., :2]):
        with pytest.raises(ValueError) as e:
            predictor.predict(wrong)
        text = str(e.value)
        assert "\n" not in text and "trained on 3-channel images" in text and "reads channels 0, 2" in text
    # a gray model refuses a multi-channel image, saying what to do
    gray = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8), size="custom")
    with pytest.raises(ValueError, match=r"trained on gray \(1-channel\) images, but the image has 2 channels"):
        Predictor(build_model(gray), gray, PredictConfig(device="cpu")).predict(ds[0].image[..., :2])


def test_grabcut_refines_on_channels():
    from napari_lazylabels.core.grabcut import refine, to_uint8_rgb

    ds = _channel_blobs(2)
    for c in (2, 5):
        image = np.repeat(ds[0].image[..., :1], c, -1)
        rgb = to_uint8_rgb(image)
        assert rgb.shape == image.shape[:2] + (3,) and rgb.dtype == np.uint8
    seg = refine(ds[0].image, ds[0].detection)
    assert seg.shape == ds[0].shape and (seg > 1).any()


# --------------------------------------------------------------------------- command line
def _channel_folder(root, n_channels=2):
    """``root/images`` (ImageJ (C, Y, X) TIFFs) and ``root/masks`` for ``lazylabels simulate``."""
    rng = np.random.default_rng(0)
    for i in range(3):
        ds = blobs(1, seed=i)
        gt = np.zeros(ds[0].shape, np.uint16)
        gt[ds[0].image > 60] = 1
        noise = (rng.random((n_channels - 1, *ds[0].shape)) * 5000).astype(np.uint16)
        cyx = np.concatenate([ds[0].image[None].astype(np.uint16) * 10, noise])
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"im{i}.tif", cyx, imagej=True, metadata={"axes": "CYX"})
        io.write_label(root / "masks" / f"im{i}.png", gt)


def test_cli_trains_on_chosen_channels_and_refuses_other_images(tmp_path, capsys, caplog):
    _channel_folder(tmp_path / "gt", 3)
    lazy, model, pred = tmp_path / "lazy", tmp_path / "model", tmp_path / "pred"
    assert main(["simulate", str(tmp_path / "gt"), "--out", str(lazy), "--strong-fraction", "0.34"]) == 0
    assert main(["train", str(lazy), "--out", str(model), "--iterations", "2", "--size", "tiny", "--batch-size", "2",
                 "--patch-size", "32", "--device", "cpu", "--val-every", "0", "--channels", "2,0"]) == 0
    assert "channels 2, 0 of 3 (each its own range)" in capsys.readouterr().out
    assert json.loads((model / "config.json").read_text())["model_config"]["channels"] == [2, 0]
    assert main(["predict", str(model), str(tmp_path / "gt" / "images"), "--out", str(pred), "--device", "cpu",
                 "--tta", "1", "--no-probabilities"]) == 0
    assert io.read_label(pred / "im0_classes.png").shape == (64, 80)
    # a gray image: refused in one line that says what to do, exit code 2, nothing written
    io.write_image(tmp_path / "gray" / "g.png", blobs(1)[0].image)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(["predict", str(model), str(tmp_path / "gray"), "--out", str(tmp_path / "p2"), "--device", "cpu"])
    assert code == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0]
    assert "trained on 3-channel images" in errors[0] and "g.png has 1 channel" in errors[0]
    assert not list((tmp_path / "p2").glob("g_*"))
    # a bad --channels is refused by the parser, before any work
    with pytest.raises(SystemExit):
        main(["train", str(lazy), "--out", str(tmp_path / "m3"), "--channels", "0,x"])
    assert main(["train", str(lazy), "--out", str(tmp_path / "m4"), "--iterations", "1", "--device", "cpu",
                 "--channels", "0,3"]) == 2
