"""Tests of block-by-block prediction of images larger than memory (core/blocks.py): blocks
agree with whole-image prediction, reads stay bounded, the OME-Zarr output opens with its
pixel size, stacks get unique ids, Stop leaves nothing behind."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_lazylabels.core.blocks import (
    block_grid,
    block_halo,
    iter_predict_blocks,
    iter_predict_ome_zarr,
    merge_instances,
)
from napari_lazylabels.core.jobs import Cancelled, drive
from napari_lazylabels.core.labels import SEGMENTATION
from napari_lazylabels.core.model import ModelConfig, build_model
from napari_lazylabels.core.pixelsize import PixelSize
from napari_lazylabels.core.predictor import PredictConfig, Predictor
from napari_lazylabels.core.zarrio import OmeZarrWriter, open_lazy_image

zarr = pytest.importorskip("zarr")

FAST = PredictConfig(tile=64, overlap=0.25, batch_size=4, device="cpu", min_object_size=4, tta=1)


class Bright(torch.nn.Module):
    """Stand-in network: class 1 where the normalised input is above 0.5, no interfaces; the
    wrapped model's other heads as they are (its shapes)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        logit = torch.where(x[:, :1] > 0.5, 8.0, -8.0)
        out[SEGMENTATION] = torch.cat([torch.zeros_like(logit), logit, torch.full_like(logit, -20.0)], 1)
        out["separation"] = torch.cat([torch.zeros_like(logit), torch.full_like(logit, -20.0)], 1)
        return out


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=3, widths=(4, 8), size="custom")
    return Predictor(Bright(build_model(cfg)), cfg, FAST)


def discs(shape=(300, 340), n=60, seed=0, radius=(3, 12)) -> np.ndarray:
    """uint8 image of bright discs (some touching each other or the image edge) on dark."""
    import cv2

    rng = np.random.default_rng(seed)
    img = np.full(shape, 20, np.uint8)
    for _ in range(n):
        cy, cx, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(*radius)
        cv2.circle(img, (int(cx), int(cy)), int(r), 220, -1)
    return img


class Recording:
    """An array-like that records the largest region read (the whole-image subsample, ``[::s, ::s]``,
    aside)."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.largest = array, array.shape, array.dtype, 0

    def __getitem__(self, key):
        out = self.array[key]
        if not all(k.start is None and k.stop is None for k in key if isinstance(k, slice)):
            self.largest = max(self.largest, out.shape[0] * out.shape[1])
        return out

    def __setitem__(self, key, value):
        self.array[key] = value


def _same_objects(a: np.ndarray, b: np.ndarray) -> None:
    """``a`` and ``b`` hold the same objects, numbered differently: a one-to-one id map."""
    assert ((a > 0) == (b > 0)).all()
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] == len(np.unique(pairs[1]))


def test_block_grid_cores_cover_the_image_once():
    blocks = block_grid((300, 340), block=128, halo=32)
    cover = np.zeros((300, 340), int)
    for b in blocks:
        y0, y1, x0, x1 = b.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = b.window
        assert wy0 == max(0, y0 - 32) and wy1 == min(300, y1 + 32) and wx1 == min(340, x1 + 32)
    assert (cover == 1).all() and len(blocks) == 9


def test_merge_instances_writes_an_object_once():
    """Two windows overlapping on one object: the first writes it whole (also outside its
    core), the second sees it mostly claimed and skips it, and writes only its own."""
    out = np.zeros((10, 20), np.uint32)
    first = np.zeros((10, 12), np.int32)
    first[2:6, 8:12] = 3  # reaches from the first core into the second
    w1, nid = merge_instances(out[:, :12].copy(), first, (slice(0, 10), slice(0, 10)), 1)
    out[:, :12] = w1
    assert nid == 2 and (out[2:6, 8:12] == 1).all()
    second = np.zeros((10, 12), np.int32)
    second[2:6, 0:4] = 1  # the same object seen from the right
    second[7:9, 5:9] = 2  # its own
    w2, nid = merge_instances(out[:, 8:].copy(), second, (slice(0, 10), slice(2, 12)), nid)
    out[:, 8:] = w2
    assert nid == 3 and set(np.unique(out)) == {0, 1, 2} and (out[7:9, 13:17] == 2).all()


def test_blocks_match_the_whole_image(predictor):
    """Block by block (blocks of 96 px, halo 32 px > the largest disc) gives the class map and
    the objects of whole-image prediction, ids unique, and never reads or writes more than
    one window at a time."""
    image = discs()
    whole = predictor.predict(image)
    source = Recording(image)
    classes = Recording(np.zeros(image.shape, np.uint8))
    inst = Recording(np.zeros(image.shape, np.uint32))
    next_id = drive(iter_predict_blocks(predictor, source, classes, inst, block=96, halo=32))
    np.testing.assert_array_equal(classes.array, whole.classes)
    _same_objects(inst.array, whole.instances)
    assert next_id - 1 == whole.instances.max() == len(np.unique(inst.array)) - 1
    window = (96 + 64) ** 2
    assert source.largest <= window and inst.largest <= window and classes.largest <= 96 * 96


def test_objects_larger_than_the_halo_keep_one_id(predictor):
    """Objects much longer than a block and its halo (a winding band through every block, a
    bar across a block edge) come out whole, with one id each, as whole-image prediction
    gives them, beside small objects that stay as they were."""
    import cv2

    image = discs((300, 340), n=25, radius=(3, 8))
    cv2.rectangle(image, (5, 140), (335, 160), 220, -1)  # a band through all blocks of its row
    cv2.rectangle(image, (150, 5), (165, 120), 220, -1)  # a bar across a block edge
    cv2.polylines(image, [np.array([[10, 280], [120, 200], [250, 290], [330, 220]], np.int32)], False, 220, 9)
    whole = predictor.predict(image)
    inst = np.zeros(image.shape, np.uint32)
    drive(iter_predict_blocks(predictor, image, np.zeros(image.shape, np.uint8), inst, block=64, halo=32))
    _same_objects(inst, whole.instances)
    assert len(np.unique(inst[145:155, 10:330])) == 1  # the band: one id


def test_halo_covers_tiles_and_objects(predictor):
    assert block_halo(predictor) == 64  # half a 64 px tile is 32, rounded up to 64
    big = Predictor(predictor.model, replace(predictor.config, object_diameter=100.0), FAST)
    assert block_halo(big) == 256


def _ome_zarr_input(path, planes: np.ndarray, pixel_size) -> None:
    """An OME-Zarr image as another tool writes it (here: our own writer)."""
    stack = planes.ndim == 3
    w = OmeZarrWriter(path, planes.shape[-2:], len(planes) if stack else None, planes.dtype, 1, {}, pixel_size)
    for z in range(len(planes) if stack else 1):
        w.image_plane(z if stack else None)[:, :] = (planes[z] if stack else planes)[..., None]
    w.finish()


def test_ome_zarr_in_and_out(predictor, tmp_path):
    """An OME-Zarr input with a pixel size is predicted into an OME-Zarr whose labels
    (under labels/, NGFF 0.4 multiscales with image-label) match whole-image prediction and
    carry the pixel size; the image is copied; pyramid levels halve."""
    predictor = Predictor(predictor.model, predictor.config, replace(FAST, tile=128, batch_size=8))
    image = discs((1100, 1300), n=300)
    _ome_zarr_input(tmp_path / "in.ome.zarr", image, PixelSize(0.25, 0.25, "µm"))
    lazy = open_lazy_image(tmp_path / "in.ome.zarr")
    assert lazy.plane_shape == (1100, 1300) and lazy.pixel_size == PixelSize(0.25, 0.25, "µm")
    out = drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "out.ome.zarr", block=512))
    root = zarr.open_group(str(out), mode="r")
    assert list(root["labels"].attrs["labels"]) == ["classes", "instances"]
    classes = root["labels/classes"]
    ms = classes.attrs["multiscales"][0]
    assert ms["version"] == "0.4" and [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.25, 0.25]
    assert ms["datasets"][1]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    assert classes["1"].shape == (550, 650) and "image-label" in classes.attrs
    whole = predictor.predict(image)
    np.testing.assert_array_equal(classes["0"][:], whole.classes)
    _same_objects(root["labels/instances/0"][:], whole.instances)
    np.testing.assert_array_equal(root["0"][0], image)
    # the pyramids, written block by block, are those of the finished maps (labels: every
    # other pixel, objects spilling into earlier blocks included; the image: 2x2 means)
    inst = root["labels/instances/0"][:]
    np.testing.assert_array_equal(root["labels/instances/1"][:], inst[::2, ::2])
    np.testing.assert_array_equal(root["labels/classes/1"][:], whole.classes[::2, ::2])
    level1 = image.reshape(550, 2, 650, 2).astype(np.float32).mean((1, 3))
    assert np.abs(root["1"][0].astype(np.float32) - level1).max() <= 0.5
    assert open_lazy_image(out).pixel_size == PixelSize(0.25, 0.25, "µm")
    assert not list(tmp_path.glob(".*partial"))


def test_stack_ids_unique_across_planes(predictor, tmp_path):
    planes = np.stack([discs(seed=1), discs(seed=2)])
    path = tmp_path / "stack.zarr"
    zarr.create_array(str(path), shape=planes.shape, chunks=(1, 128, 128), dtype=planes.dtype)[:] = planes
    lazy = open_lazy_image(path)
    assert lazy.n_stack == 1 and lazy.n_planes == 2
    out = drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "stack.ome.zarr", block=128))
    inst = zarr.open_group(str(out), mode="r")["labels/instances/0"][:]
    a, b = (set(np.unique(p)) - {0} for p in inst)
    assert a and b and not a & b
    for z in range(2):
        _same_objects(inst[z], predictor.predict(planes[z]).instances)


def test_stop_leaves_nothing(predictor, tmp_path):
    image = discs((600, 600), n=100)
    path = tmp_path / "im.zarr"
    zarr.create_array(str(path), shape=image.shape, chunks=(128, 128), dtype=image.dtype)[:] = image
    target = tmp_path / "im.ome.zarr"
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        drive(iter_predict_ome_zarr(predictor, open_lazy_image(path), target, should_stop=stop, block=128), should_stop=stop)
    assert not target.exists() and not list(tmp_path.glob(".*partial"))


def test_channels_are_checked_before_any_work(predictor, tmp_path):
    rgb = np.stack([discs(), discs(seed=3), discs(seed=4)], -1)
    path = tmp_path / "rgb.zarr"
    zarr.create_array(str(path), shape=rgb.shape, chunks=(128, 128, 3), dtype=rgb.dtype)[:] = rgb
    with pytest.raises(ValueError, match="(?i)colou?r|channel"):
        drive(iter_predict_ome_zarr(predictor, open_lazy_image(path), tmp_path / "rgb.ome.zarr"))
    assert not (tmp_path / "rgb.ome.zarr").exists()


# --------------------------------------------------------------------------- the command line
def test_cli_predicts_zarr_and_large_tiffs_into_ome_zarr(tmp_path, one_object_model, monkeypatch, caplog):
    """`lazylabels predict` takes a zarr folder (always block by block), a TIFF above the
    size limit, and any TIFF with --ome-zarr, and writes STEM.ome.zarr with the pixel size; a
    folder that is not a readable zarr is skipped with one line (exit 1), the rest written;
    `lazylabels instances` cuts them again."""
    import tifffile

    from napari_lazylabels.cli import main
    from napari_lazylabels.core import options

    image = discs((200, 260))
    zarr.create_array(str(tmp_path / "plain.zarr"), shape=image.shape, chunks=(64, 64), dtype=image.dtype)[:] = image
    tifffile.imwrite(tmp_path / "ome.tif", image, ome=True, tile=(64, 64),
                     metadata={"axes": "YX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    tifffile.imwrite(tmp_path / "small.tif", image)
    (tmp_path / "broken.zarr").mkdir()
    out = tmp_path / "pred"
    args = ["predict", str(one_object_model), str(tmp_path / "plain.zarr"), str(tmp_path / "ome.tif"),
            str(tmp_path / "small.tif"), str(tmp_path / "broken.zarr"), "--out", str(out), "--device", "cpu",
            "--tta", "1", "--tile", "64"]
    monkeypatch.setattr(options, "BLOCKWISE_PIXELS", 200 * 250)  # ome.tif and small.tif are above it
    assert main(args) == 1
    assert "skipped" in caplog.text and "broken.zarr" in caplog.text
    for stem in ("plain", "ome", "small"):
        root = zarr.open_group(str(out / f"{stem}.ome.zarr"), mode="r")
        assert root["labels/classes/0"].shape == image.shape
        assert set(np.unique(root["labels/instances/0"][:])) == {1}  # one object, one block
    scale = zarr.open_group(str(out / "ome.ome.zarr"), mode="r")["labels/classes"].attrs["multiscales"][0]
    assert scale["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.2, 0.2]
    assert scale["axes"][0]["unit"] == "micrometer"
    assert main(["instances", str(out), "--min-size", "4"]) == 0  # cut again block by block, from the maps kept
    assert set(np.unique(zarr.open_group(str(out / "plain.ome.zarr"), mode="r")["labels/instances/0"][:])) == {1}
    # below the limit a TIFF is predicted whole into PNGs, unless --ome-zarr asks
    monkeypatch.setattr(options, "BLOCKWISE_PIXELS", 10**9)
    out2 = tmp_path / "pred2"
    assert main(args[:2] + [str(tmp_path / "small.tif"), "--out", str(out2)] + args[8:]) == 0
    assert (out2 / "small_classes.png").exists() and not (out2 / "small.ome.zarr").exists()
    assert main(args[:2] + [str(tmp_path / "small.tif"), "--out", str(out2), "--ome-zarr"] + args[8:]) == 0
    assert (out2 / "small.ome.zarr").is_dir()


def test_a_tiff_in_one_piece_is_read_region_by_region(tmp_path, monkeypatch, caplog):
    """tifffile writes a plain TIFF as one strip: its zarr view would decode the whole image
    for every block; such an uncompressed file is read row range by row range from the file
    instead (a compressed one says how to save it for bounded memory)."""
    import tifffile

    from napari_lazylabels.core import zarrio

    monkeypatch.setattr(zarrio, "LARGE_CHUNK_BYTES", 1000)
    image = discs((200, 260)).astype(np.uint16) * 7
    tifffile.imwrite(tmp_path / "plain.tif", image)
    lazy = open_lazy_image(tmp_path / "plain.tif")
    assert isinstance(lazy.data.array, zarrio.ContiguousFile)
    np.testing.assert_array_equal(lazy.data[50:90, 100:260], image[50:90, 100:260])
    np.testing.assert_array_equal(lazy.data[::7, ::5], image[::7, ::5])
    tifffile.imwrite(tmp_path / "packed.tif", image, compression="zlib", rowsperstrip=200)
    packed = open_lazy_image(tmp_path / "packed.tif")
    np.testing.assert_array_equal(packed.data[10:20, 30:40], image[10:20, 30:40])
    assert "save it tiled" in caplog.text


def test_a_killed_run_goes_on_where_it_stopped(predictor, tmp_path):
    """With a resume key, a stopped (or killed) run keeps its partial folder and what it
    finished; the same run again goes on from the first block not recorded, removing what the
    interrupted block had written, and gives exactly the maps and ids of an uninterrupted run;
    another key (another model or setting) starts over."""
    predictor = Predictor(predictor.model, predictor.config, replace(FAST, tile=128, batch_size=8))
    image = discs((500, 520), n=120)
    path = tmp_path / "im.zarr"
    zarr.create_array(str(path), shape=image.shape, chunks=(128, 128), dtype=image.dtype)[:] = image
    lazy = open_lazy_image(path)
    whole = drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "whole.ome.zarr", block=128))
    key = {"input": str(path), "model": "m1"}
    target = tmp_path / "im.ome.zarr"
    partial = tmp_path / ".im.ome.zarr.partial"
    blocks_done = []

    def stop_after_five():
        return len(blocks_done) >= 5

    job = iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key, should_stop=stop_after_five)
    with pytest.raises(Cancelled):
        for ev in job:
            if ev.phase == "tiles" and ev.done and json_block(partial) is not None:
                blocks_done[:] = range(json_block(partial))
    assert not target.exists() and partial.is_dir() and json_block(partial) >= 5
    # what the interrupted block wrote of its objects (ids not yet recorded) is removed again
    inst = zarr.open_group(str(partial), mode="r+")["labels/instances/0"]
    y0, _, x0, _ = block_grid(image.shape, 128, block_halo(predictor))[json_block(partial)].window
    region = inst[y0 : y0 + 50, x0 : x0 + 50]
    inst[y0 : y0 + 50, x0 : x0 + 50] = np.where(region == 0, 100_000, region)  # as a block writes: unclaimed pixels
    out = drive(iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key))
    a, b = (zarr.open_group(str(p), mode="r") for p in (out, whole))
    for name in ("labels/classes/0", "labels/instances/0", "0"):
        np.testing.assert_array_equal(a[name][:], b[name][:])
    assert not partial.exists()
    # another run's partial folder is not resumed
    job = iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key, should_stop=lambda: True)
    with pytest.raises(Cancelled):
        drive(job)
    assert partial.is_dir()
    out = drive(iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key={**key, "model": "m2"}))
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/instances/0"][:], b["labels/instances/0"][:])


def json_block(partial):
    import json

    try:
        return json.loads((partial / "lazylabels-progress.json").read_text())["block"]
    except (OSError, ValueError):
        return None


def test_a_prediction_written_in_place_goes_on_after_a_stop(predictor, tmp_path):
    """The viewer's writer (in place, layers shown over it) with a resume key: a stopped run
    keeps what it wrote and its progress, a writer made again for the same key reopens it and
    the run goes on to the maps and ids of an uninterrupted run; another key starts over."""
    from napari_lazylabels.core.blocks import ome_zarr_writer

    predictor = Predictor(predictor.model, predictor.config, replace(FAST, tile=128, batch_size=8))
    image = discs((500, 520), n=120)
    lazy = open_lazy_image(_zarr(tmp_path / "im.zarr", image))
    whole = zarr.open_group(str(drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "whole.ome.zarr", block=128))), mode="r")
    target, key = tmp_path / "cache" / "im.ome.zarr", {"layer": "im", "model": "m1"}

    def stop_after_three_blocks():
        return (json_block(target) or 0) >= 3

    writer = ome_zarr_writer(predictor, lazy, target, resume_key=key, block=128, atomic=False)
    job = iter_predict_ome_zarr(predictor, lazy, target, should_stop=stop_after_three_blocks, block=128,
                                resume_key=key, writer=writer)
    with pytest.raises(Cancelled):
        drive(job)
    assert json_block(target) == 3 and (zarr.open_group(str(target), mode="r")["labels/classes/0"][:] > 0).any()
    writer = ome_zarr_writer(predictor, lazy, target, resume_key=key, block=128, atomic=False)
    assert writer.resumed
    first_tiles = []
    for ev in iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key, writer=writer):
        if ev.phase == "tiles" and not first_tiles:
            first_tiles.append(ev.done)
    assert first_tiles[0] > 3  # the blocks written before the stop are not predicted again
    out = zarr.open_group(str(target), mode="r")
    for name in ("labels/classes/0", "labels/instances/0", "0"):
        np.testing.assert_array_equal(out[name][:], whole[name][:])
    # finished: predicting it again with the same key gives it as it is, at once
    writer = ome_zarr_writer(predictor, lazy, target, resume_key=key, block=128, atomic=False)
    assert writer.complete and not list(iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key, writer=writer))
    np.testing.assert_array_equal(zarr.open_group(str(target), mode="r")["labels/instances/0"][:], whole["labels/instances/0"][:])
    # a finished prediction, another model: started over, empty
    writer = ome_zarr_writer(predictor, lazy, target, resume_key={**key, "model": "m2"}, block=128, atomic=False)
    assert not writer.resumed and not zarr.open_group(str(target), mode="r")["labels/classes/0"][:].any()


def test_image_fingerprint_tells_images_apart():
    from napari_lazylabels.core.blocks import image_fingerprint
    from napari_lazylabels.core.zarrio import AxesView, LazyImage

    def lazy(a):
        return LazyImage(AxesView(a, "YX", "YX"), 0, False, None, "im")

    a, b = discs(seed=0), discs(seed=1)
    assert image_fingerprint(lazy(a)) == image_fingerprint(lazy(a.copy()))
    assert image_fingerprint(lazy(a)) != image_fingerprint(lazy(b))
    assert image_fingerprint(lazy(a)) != image_fingerprint(lazy(a[:, :-1]))


def _zarr(path, image):
    zarr.create_array(str(path), shape=image.shape, chunks=(128, 128), dtype=image.dtype)[:] = image
    return path


def test_evaluate_scores_an_ome_zarr_prediction(predictor, tmp_path, capsys):
    """`lazylabels evaluate` scores a block-by-block prediction (STEM.ome.zarr) against the
    masks as it scores PNG predictions: the same scores as the maps it holds give."""
    from skimage.io import imsave
    from skimage.measure import label

    from napari_lazylabels.cli import main
    from napari_lazylabels.core.evaluate import evaluate_folder
    from napari_lazylabels.core.metrics import evaluate_image

    image = discs((300, 340), n=60)
    gt = label(image > 100).astype(np.uint16)
    (tmp_path / "masks").mkdir()
    imsave(tmp_path / "masks" / "discs.png", gt, check_contrast=False)
    lazy = open_lazy_image(_zarr(tmp_path / "discs.zarr", image))
    out = drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "pred" / "discs.ome.zarr", block=128))
    root = zarr.open_group(str(out), mode="r")
    classes, instances = root["labels/classes/0"][:], root["labels/instances/0"][:]
    res = evaluate_folder(tmp_path / "pred", tmp_path)
    want = evaluate_image(classes, instances, np.zeros(gt.shape, bool), gt)
    assert res["images"]["discs"] == want and want["dice"] > 0.95
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path)]) == 0
    assert "dice" in capsys.readouterr().out


def test_a_stack_is_linked_block_by_block(predictor, tmp_path):
    """With link_slices, a stack predicted block by block has the objects of whole-slice
    prediction linked by StackIds: one id per object through the stack. A run stopped while
    it links a plane goes on to the same ids."""
    from napari_lazylabels.core.stacks import stack_instances

    predictor = Predictor(predictor.model, predictor.config, replace(FAST, tile=128, batch_size=8, link_slices=True))
    base = discs((300, 340), n=50, seed=3)
    planes = np.stack([np.roll(base, (2 * z, 3 * z), axis=(0, 1)) for z in range(3)])
    lazy = open_lazy_image(_zarr_stack(tmp_path / "stack.zarr", planes))
    out = drive(iter_predict_ome_zarr(predictor, lazy, tmp_path / "whole.ome.zarr", block=128))
    inst = zarr.open_group(str(out), mode="r")["labels/instances/0"][:]
    want = stack_instances([predictor.predict(p).instances for p in planes], link=True)
    _same_objects(inst.reshape(-1, inst.shape[-1]), want.reshape(-1, want.shape[-1]))
    assert len((set(np.unique(inst[2])) & set(np.unique(inst[0]))) - {0}) > 20  # objects one id through the stack
    # stopped in the middle of linking the last plane, then the same run again
    key, target = {"input": "stack", "model": "m"}, tmp_path / "resumed.ome.zarr"
    seen = []

    tiles = 3 * 3  # the 128-px tiles of a 300 x 340 plane, each read to find links and written once
    per_plane = tiles + tiles + 1

    def stop_while_linking_plane_2() -> bool:  # plane 1 linked, plane 2's table saved, 3 tiles written
        return sum(ev.phase == "linking" for ev in seen) > per_plane + tiles + 3

    job = iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key, should_stop=stop_while_linking_plane_2)
    with pytest.raises(Cancelled):
        for ev in job:
            seen.append(ev)
    assert seen[-1].phase == "linking" and (target.parent / ".resumed.ome.zarr.partial" / "lazylabels-link-2.npy").exists()
    out = drive(iter_predict_ome_zarr(predictor, lazy, target, block=128, resume_key=key))
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["labels/instances/0"][:], inst)


def _zarr_stack(path, planes):
    zarr.create_array(str(path), shape=planes.shape, chunks=(1, 128, 128), dtype=planes.dtype)[:] = planes
    return path


class Seams(torch.nn.Module):
    """Stand-in network: class 1 where the normalised input is above 0.3, interface
    probability 0.95 where it is between 0.3 and 0.7 (the mid-gray seams between squares)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        v = x[:, :1]
        logit = torch.where(v > 0.3, 8.0, -8.0)
        out[SEGMENTATION] = torch.cat([torch.zeros_like(logit), logit, torch.full_like(logit, -20.0)], 1)
        seam = torch.where((v > 0.3) & (v < 0.7), 3.0, -8.0)
        out["separation"] = torch.cat([torch.zeros_like(seam), seam], 1)
        return out


def squares(shape=(300, 340), side=40, seam=3) -> np.ndarray:
    """Touching bright squares, in three clusters, separated by mid-gray seams, on dark."""
    img = np.full(shape, 20, np.uint8)
    for cy, cx in ((20, 20), (20, 190), (170, 60)):
        for i in range(3):
            for j in range(3):
                y, x = cy + i * (side + seam), cx + j * (side + seam)
                img[y - seam : y + side, x - seam : x + side] = 120
        for i in range(3):
            for j in range(3):
                y, x = cy + i * (side + seam), cx + j * (side + seam)
                img[y : y + side, x : x + side] = 220
    return img


def test_a_block_by_block_prediction_is_cut_again_from_its_maps(tmp_path):
    """iter_resplit_ome_zarr cuts a block-by-block prediction's objects again from the maps
    it keeps: another interface threshold gives the objects whole-image cutting of those maps
    gives (touching squares merged), the recorded one gives the prediction's objects back;
    the pyramid follows, the settings are recorded; a stop leaves the instances as they were."""
    from skimage.measure import label

    from napari_lazylabels.core.blocks import iter_resplit_ome_zarr
    from napari_lazylabels.core.instances import instances_from_prediction
    from napari_lazylabels.core.metrics import object_f1

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=3, widths=(4, 8), size="custom")
    seams = Predictor(Seams(build_model(cfg)), cfg, replace(FAST, tile=128, batch_size=8))
    image = squares((1100, 1200))  # two pyramid levels
    lazy = open_lazy_image(_zarr(tmp_path / "sq.zarr", image))
    out = drive(iter_predict_ome_zarr(seams, lazy, tmp_path / "sq.ome.zarr", block=128, resume_key={"input": "sq"}))
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["lazylabels"]["run"]["input"] == "sq"
    first = root["labels/instances/0"][:]
    assert len(np.unique(first)) - 1 == 27  # every square its own object (squares() on a larger image: the same)
    classes, itf = root["labels/classes/0"][:], root["lazylabels/interfaces"][:]
    assert itf.dtype == np.uint8 and 240 <= itf.max() <= 245  # softmax(0, 3) = 0.953, x 255

    assert drive(iter_resplit_ome_zarr(out, interface_threshold=0.99)) == 3  # seams no longer split: 3 clusters
    assert "run" not in zarr.open_group(str(out), mode="r").attrs["lazylabels"]  # no longer that run's objects
    merged = zarr.open_group(str(out), mode="r")
    _same_objects(merged["labels/instances/0"][:], instances_from_prediction(classes, itf / 255, 0.99, 4))
    _same_objects(merged["labels/instances/0"][:], label(image > 100))
    np.testing.assert_array_equal(merged["labels/instances/1"][:], merged["labels/instances/0"][::2, ::2])
    assert merged.attrs["lazylabels"]["settings"]["interface_threshold"] == 0.99
    with pytest.raises(Cancelled):
        drive(iter_resplit_ome_zarr(out, interface_threshold=0.5, should_stop=lambda: True))
    _same_objects(zarr.open_group(str(out), mode="r")["labels/instances/0"][:], label(image > 100))  # unchanged
    assert drive(iter_resplit_ome_zarr(out, interface_threshold=0.5)) == 27
    again = zarr.open_group(str(out), mode="r")["labels/instances/0"][:]
    assert object_f1(again, first)["f1"] == 1.0  # the seams, ties of the watershed, may go either way
    assert not list((out / "labels").glob(".instances.*"))  # no partial or old folder left
