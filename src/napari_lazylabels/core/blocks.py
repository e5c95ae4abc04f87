"""Prediction of images larger than memory: block by block, from a lazy array into an OME-Zarr.

:func:`iter_predict_ome_zarr` predicts a :class:`~napari_lazylabels.core.zarrio.LazyImage`
(zarr, OME-Zarr, a large TIFF; a stack plane by plane) into ``STEM.ome.zarr``: the image,
``labels/classes`` and ``labels/instances``. The image is cut into square *blocks* of
:data:`BLOCK` pixels; each is predicted with a *halo* of context around it
(:func:`block_halo`), so only one window of ``(BLOCK + 2 halo)^2`` pixels is in memory at a
time, whatever the image's size:

* every window is normalised with the intensity range of the whole image (read from a
  subsample, :meth:`~napari_lazylabels.core.predictor.Predictor.value_range`) and predicted in
  the orientations the whole image would get, so blocks agree with each other;
* the class map is written for the block's core;
* instances are cut in the window, and each object that reaches into the core is written
  whole (also where it reaches into neighbouring blocks), on pixels no earlier block has
  claimed: with the id of the object an earlier block wrote when it continues it (the same
  object seen from the other side, or one larger than the halo that the earlier window cut at
  its edge), else with a new id unless more than half of it is claimed (:func:`merge_instances`).
  So an object larger than a block keeps one id; one that an earlier block saw as two pieces
  stays two.

Peak memory: the Python process with torch and the model, plus about ``(BLOCK + 2 halo)^2``
pixels times ~60 bytes (the window, its normalised copy, the float maps, the instance maps;
measured in docs/benchmarks.md), plus one decoded chunk of the input.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .instances import instances_from_prediction, recorded_instance_settings
from .io import atomic_write_json
from .jobs import Progress, mapped, stoppable
from .predictor import PredictConfig, Predictor
from .prepare import scaled_shape
from .stacks import iter_apply_link, iter_link_table
from .tiling import tile_starts
from .zarrio import MAPS_GROUP, AxesView, LabelRewriter, LazyImage, OmeZarrWriter, ome_label

log = logging.getLogger(__name__)

BLOCK = 2048
"""Side of the blocks whose predictions are written (without their halo), in image pixels."""

MAX_HALO = 1024
"""The largest halo read around a block."""


@dataclass(frozen=True)
class Block:
    """One block: its ``core`` (written) and its ``window`` (read, the core with its halo),
    each ``(y0, y1, x0, x1)`` in image pixels."""

    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]

    def local_core(self) -> tuple[slice, slice]:
        """The core as slices into the window."""
        (y0, y1, x0, x1), (wy, _, wx, _) = self.core, self.window
        return slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx)


INTERFACES_MAP = "interfaces"
"""The map of a block-by-block prediction a re-split cuts objects from: the interface
probability times 255, uint8 (``lazylabels/interfaces`` in the OME-Zarr)."""


def quantise(probability: np.ndarray) -> np.ndarray:
    """A probability map ``[0, 1]`` as uint8 ``round(255 p)`` (what :data:`INTERFACES_MAP` holds)."""
    return np.rint(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)


def block_halo(predictor: Predictor) -> int:
    """Context read around each block, in image pixels: half a tile of the network (its
    tiles see that far) and twice the model's typical object diameter (an object that
    reaches into the block is then seen whole), rounded up to 64, at most :data:`MAX_HALO`."""
    scale = predictor.config.scale
    need = predictor.predict_config.tile / scale / 2
    if predictor.config.object_diameter:
        need = max(need, 2 * predictor.config.object_diameter)
    return int(min(MAX_HALO, 64 * math.ceil(need / 64)))


def block_grid(shape: tuple[int, int], block: int = BLOCK, halo: int = 0) -> list[Block]:
    """The blocks of an ``(H, W)`` image in raster order (the last row and column of blocks
    may be smaller), with windows clipped to the image."""
    h, w = shape
    out = []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            y1, x1 = min(h, y0 + block), min(w, x0 + block)
            out.append(Block((y0, y1, x0, x1), (max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo))))
    return out


def merge_instances(
    out: np.ndarray, inst: np.ndarray, core: tuple[slice, slice], next_id: int
) -> tuple[np.ndarray, int]:
    """Add a window's objects to the instance map written so far.

    An object of the window that reaches into the core is written on unclaimed pixels:
    with the id of the written object it continues (one that earlier windows saw, and of
    which most of what lies in this window is this object: the same object, seen whole or cut
    at the edge of the earlier window, which this window extends), else, unless more than
    half of it is claimed already, with a new id.

    Args:
        out: ``(h, w)`` uint32, the written map over the window (0 = unclaimed); changed in place.
        inst: ``(h, w)`` int, the window's own instances (0 = none).
        core: the block's core within the window.
        next_id: the first free id.

    Returns:
        ``(out, next_id)``, new objects numbered from ``next_id``.
    """
    ids = np.unique(inst[core])
    ids = ids[ids > 0]
    if not ids.size:
        return out, next_id
    flat, written = inst.ravel(), out.ravel()
    n = int(flat.max()) + 1
    area = np.bincount(flat, minlength=n)
    is_written = written != 0
    claimed = np.bincount(flat[is_written], minlength=n)
    lut = np.zeros(n, np.int64)
    continued = _continued(flat, written, is_written, claimed)
    lut[list(continued)] = list(continued.values())
    new = ids[(lut[ids] == 0) & (claimed[ids] <= 0.5 * area[ids])]
    lut[new] = np.arange(next_id, next_id + new.size)
    mapped = lut[inst]
    free = (mapped != 0) & (out == 0)
    out[free] = mapped[free]
    return out, next_id + int(new.size)


def _continued(flat: np.ndarray, written: np.ndarray, is_written: np.ndarray, claimed: np.ndarray) -> dict[int, int]:
    """``{window id: written id}`` for each window object that continues a written object:
    more than half of the written object's pixels in the window, and more than half of the
    window object's claimed pixels, are their overlap (the largest overlap when several)."""
    both = (flat > 0) & is_written
    if not both.any():
        return {}
    old_ids = written[is_written].astype(np.int64)
    base = int(old_ids.max()) + 1
    pairs, overlap = np.unique(flat[both].astype(np.int64) * base + written[both], return_counts=True)
    obj, old = pairs // base, pairs % base
    found, sizes = np.unique(old_ids, return_counts=True)
    in_window = sizes[np.searchsorted(found, old)]
    ok = (overlap > 0.5 * in_window) & (overlap > 0.5 * claimed[obj])
    out: dict[int, int] = {}
    for k in np.flatnonzero(ok)[np.argsort(-overlap[ok], kind="stable")]:
        out.setdefault(int(obj[k]), int(old[k]))
    return out


def _window_tiles(predictor: Predictor, block: Block) -> int:
    pc = predictor.predict_config
    y0, y1, x0, x1 = block.window
    h, w = scaled_shape((y1 - y0, x1 - x0), predictor.config.scale)
    return len(tile_starts(h, pc.tile, pc.overlap)) * len(tile_starts(w, pc.tile, pc.overlap))


def iter_predict_blocks(
    predictor: Predictor,
    image,
    classes,
    instances=None,
    image_copy=None,
    block: int = BLOCK,
    halo: int | None = None,
    first_id: int = 1,
    should_stop: Callable[[], bool] | None = None,
    tiles_before: int = 0,
    tiles_total: int | None = None,
    start_block: int = 0,
    on_block: Callable[[int, int], None] | None = None,
    interfaces=None,
) -> Iterator[Progress]:
    """Job: predict a lazy ``(H, W[, C])`` image block by block into lazy outputs.

    Args:
        predictor: the model.
        image: ``(H, W[, C])`` array-like whose slices read that region only (zarr, dask,
            :class:`~napari_lazylabels.core.zarrio.AxesView`, a memory map).
        classes: ``(H, W)`` writable array-like for the class map.
        instances: ``(H, W)`` readable and writable uint32 array-like for instance ids
            (zeros to start), or ``None`` for none.
        image_copy: ``(H, W[, C])`` writable array-like that receives the image (the
            OME-Zarr's own copy), or ``None``.
        block: the blocks' side; halo: context around each (default :func:`block_halo`).
        first_id: the first instance id (a stack's planes continue the ids of the one before).
        should_stop: asked at every event and between orientations; raises
            :class:`~napari_lazylabels.core.jobs.Cancelled`.
        tiles_before, tiles_total: offset and total of the ``"tiles"`` events (a stack counts
            the tiles of all its planes).
        start_block: the first block to predict (a resumed run; the blocks before it are
            written, their ids below ``first_id``).
        on_block: called with ``(blocks done, next free id)`` after each block is written.
        interfaces: ``(H, W)`` writable uint8 array-like for the interface probability times
            255 (what a re-split cuts objects from, :func:`iter_resplit_ome_zarr`), or ``None``.

    Yields ``Progress("tiles", done, total)`` over all blocks, and the phases of each block.

    Returns:
        the next free instance id.
    """
    return (yield from stoppable(
        _predict_blocks(predictor, image, classes, instances, image_copy, block, halo, first_id,
                        should_stop, tiles_before, tiles_total, start_block, on_block, interfaces), should_stop))


def count_tiles(predictor: Predictor, shape: tuple[int, int], block: int = BLOCK, halo: int | None = None) -> int:
    """Tiles the network sees over all blocks of an ``(H, W)`` image."""
    halo = block_halo(predictor) if halo is None else halo
    return sum(_window_tiles(predictor, b) for b in block_grid(shape, block, halo))


def _predict_blocks(predictor, image, classes, instances, image_copy, block, halo, first_id, should_stop,
                    tiles_before, tiles_total, start_block=0, on_block=None, interfaces=None) -> Iterator[Progress]:
    shape = tuple(int(s) for s in image.shape[:2])
    halo = block_halo(predictor) if halo is None else halo
    blocks = block_grid(shape, block, halo)
    value_range = predictor.value_range(image)
    orientations = predictor.orientations(scaled_shape(shape, predictor.config.scale))
    total = tiles_total if tiles_total is not None else tiles_before + sum(_window_tiles(predictor, b) for b in blocks)
    log.info("Predicting %dx%d in %d blocks of %d px (halo %d px, %d orientations)", *shape, len(blocks), block, halo, orientations)
    done = tiles_before + sum(_window_tiles(predictor, b) for b in blocks[:start_block])
    next_id = first_id
    for i, b in enumerate(blocks[start_block:], start=start_block):
        y0, y1, x0, x1 = b.window
        window = np.asarray(image[y0:y1, x0:x1])
        job = predictor._predict(window, None, instances is not None, should_stop, value_range, orientations)
        pred = yield from _offset_tiles(job, done, total)
        done += _window_tiles(predictor, b)
        cy, cx = b.local_core()
        (py0, py1, px0, px1) = b.core
        classes[py0:py1, px0:px1] = pred.classes[cy, cx]
        if interfaces is not None and pred.interfaces is not None:
            interfaces[py0:py1, px0:px1] = quantise(pred.interfaces[cy, cx])
        if image_copy is not None:
            part = window[cy, cx]
            image_copy[py0:py1, px0:px1] = part[..., None] if part.ndim < image_copy.ndim else part
        if instances is not None:
            out = np.asarray(instances[y0:y1, x0:x1], np.uint32)
            out, next_id = merge_instances(out, pred.instances, (cy, cx), next_id)
            instances[y0:y1, x0:x1] = out
        del pred, window
        if on_block is not None:
            on_block(i + 1, next_id)
        yield Progress("tiles", done, total)
    return next_id


def _offset_tiles(job, before: int, total: int) -> Iterator[Progress]:
    """Re-yield a window's job with its ``"tiles"`` events counted over the whole image."""

    def count(event: Progress) -> Progress:
        return Progress("tiles", before + event.done, total) if event.phase == "tiles" else event

    return (yield from mapped(job, count))


def iter_resplit_ome_zarr(
    path: str | os.PathLike,
    interface_threshold: float | None = None,
    min_object_size: int | None = None,
    neck_depth: float = 0.0,
    link_slices: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[Progress]:
    """Job: cut the objects of a block-by-block prediction (``STEM.ome.zarr`` from
    :func:`iter_predict_ome_zarr`) again with other settings, block by block, from its class
    map and its quantised interface map (:data:`INTERFACES_MAP`): no network runs, and memory
    holds one window. ``labels/instances`` (with its pyramid) is replaced when complete
    (:class:`~napari_lazylabels.core.zarrio.LabelRewriter`; a stop or an error leaves it as it
    was), and the settings used are recorded in the root's ``"lazylabels"`` attribute.

    Args:
        interface_threshold, min_object_size: ``None``: the model's own, as recorded
            (:func:`~napari_lazylabels.core.instances.recorded_instance_settings`).
        neck_depth: see :class:`~napari_lazylabels.core.predictor.PredictConfig`.
        link_slices: link a stack's objects through the planes; ``None``: as recorded.

    Returns:
        the number of objects.

    Raises:
        ValueError: not such a prediction, or one without an interface map (a model without
            a separation head, or written before the map was kept).
    """
    import zarr

    PredictConfig(interface_threshold=interface_threshold, min_object_size=min_object_size, neck_depth=neck_depth)
    path = Path(path)
    root = zarr.open_group(str(path), mode="r+")
    meta = dict(root.attrs.get("lazylabels") or {})
    if INTERFACES_MAP not in (meta.get("maps") or {}):
        raise ValueError(
            f"{path.name} keeps no interface map to cut its objects again (a model without a separation head, or "
            "predicted by an older version): predict it again with --interface-threshold / --min-size."
        )
    settings = dict(meta.get("settings") or {})
    threshold, min_size = recorded_instance_settings(settings, interface_threshold, min_object_size)
    link = bool(settings.get("link_slices")) if link_slices is None else bool(link_slices)
    classes, interfaces = ome_label(path, "classes"), root[f"{MAPS_GROUP}/{INTERFACES_MAP}"]
    grid = block_grid(tuple(classes.shape[-2:]), int(meta["block"]), int(meta["halo"]))
    rewriter = LabelRewriter(path, "instances")
    try:
        job = _cut_planes(rewriter, classes, interfaces, grid, (threshold, min_size, neck_depth), link, int(meta["block"]))
        n = yield from stoppable(job, should_stop)
        rewriter.finish()
    except BaseException:
        rewriter.abort()
        raise
    settings.update(interface_threshold=threshold, min_object_size=min_size, neck_depth=neck_depth, link_slices=link)
    meta.pop("run", None)  # its objects are no longer those of that run: predicting again redoes it
    root.attrs["lazylabels"] = {**meta, "settings": settings}
    log.info("%s: %d objects (interface threshold %.2f, smallest object %d px)", path.name, n, threshold, min_size)
    return n


def _cut_planes(rewriter: LabelRewriter, classes, interfaces, grid: list[Block], cut: tuple, link: bool,
                tile: int) -> Iterator[Progress]:
    """Job: the instances of every plane of ``classes`` / ``interfaces`` (zarr arrays,
    ``([Z,] Y, X)``, interfaces x 255) window by window into ``rewriter``'s label image, with
    ``cut = (interface_threshold, min_object_size, neck_depth)``, ids unique over a stack
    (linked plane to plane with ``link``). Returns the number of objects."""
    threshold, min_size, neck_depth = cut
    stacked = classes.ndim == 3
    axes, n_planes = ("ZYX", classes.shape[0]) if stacked else ("YX", 1)
    next_id, linked = 1, 0
    for z in range(n_planes):
        cls, itf = (AxesView(a, axes, "YX", {"Z": z}) for a in (classes, interfaces))
        out = rewriter.label(z if stacked else None)
        first_id = next_id
        for i, b in enumerate(grid):
            yield Progress("instances", z * len(grid) + i, n_planes * len(grid))
            y0, y1, x0, x1 = b.window
            inst = instances_from_prediction(np.asarray(cls[y0:y1, x0:x1]),
                                             np.asarray(itf[y0:y1, x0:x1], np.float32) / 255, threshold,
                                             min_size, neck_depth=neck_depth)
            window, next_id = merge_instances(np.asarray(out[y0:y1, x0:x1], np.uint32), inst, b.local_core(), next_id)
            out[y0:y1, x0:x1] = window
        if link and stacked and z > 0:
            linked += yield from _link_plane(rewriter.label(z - 1), out, first_id, next_id, tile)
    yield Progress("instances", n_planes * len(grid), n_planes * len(grid))
    return next_id - 1 - linked


def ome_zarr_path(out_dir: str | os.PathLike, stem: str) -> Path:
    """Where :func:`iter_predict_ome_zarr` writes an image's prediction: ``STEM.ome.zarr``."""
    return Path(out_dir) / f"{stem}.ome.zarr"


PROGRESS_FILE = "lazylabels-progress.json"
"""In a partial OME-Zarr: what run wrote it and how far it got (:func:`iter_predict_ome_zarr`)."""


def iter_predict_ome_zarr(
    predictor: Predictor,
    image: LazyImage,
    path: str | os.PathLike,
    instances: bool = True,
    should_stop: Callable[[], bool] | None = None,
    block: int = BLOCK,
    resume_key: dict | None = None,
    writer: OmeZarrWriter | None = None,
) -> Iterator[Progress]:
    """Job: predict a lazy image (a stack plane by plane, instance ids unique across it; with
    the predictor's ``link_slices`` an object continuing one of the plane before takes its id,
    linked on disk after each plane, :func:`_link_plane`) into an OME-Zarr at ``path``: the image at the root, ``labels/classes`` (uint8, uint16 above
    255 classes) and ``labels/instances`` (uint32), each with a pyramid and the image's
    pixel size (:class:`~napari_lazylabels.core.zarrio.OmeZarrWriter`). Nothing is left at
    ``path`` unless complete.

    Args:
        resume_key: what identifies this run (the input file, the model, the settings; JSON).
            With it the partial folder records its progress after every block and is kept when
            the run is stopped, fails or is killed, and a later run with the same key goes on
            from the first block not written (ids and maps as an uninterrupted run gives);
            without it a stop or an error removes the partial folder.
        writer: the :func:`ome_zarr_writer` to write into (one written in place, which a
            viewer shows as it fills; made with the same ``resume_key`` to go on from what it
            holds); by default one is made for ``path``.

    Returns:
        ``path``.
    """
    predictor.check(image.plane(0)[:8, :8], what=image.name)  # channels, before any work
    halo = block_halo(predictor)
    key = _run_key(predictor, resume_key, block, instances)
    if writer is None:
        writer = ome_zarr_writer(predictor, image, path, instances, resume_key, block)
    if writer.complete:
        log.info("%s: already predicted with this model and these settings in %s", image.name, writer.path)
        return writer.path
    start = _resume_point(writer, key)
    link = instances and bool(image.n_stack) and bool(predictor.predict_config.link_slices)
    try:
        per_plane = count_tiles(predictor, image.plane_shape, block, halo)
        total = per_plane * image.n_planes
        grid = block_grid(image.plane_shape, block, halo)
        next_id, linked = start["next_id"], start["linked"]
        for z in range(start["plane"], image.n_planes):
            zi = z if image.n_stack else None
            resumed = z == start["plane"]
            first, plane_first_id = (start["block"], start["first_id"]) if resumed else (0, next_id)
            inst = writer.label("instances", zi) if instances else None

            def record(done: int, nid: int, z=z, plane_first_id=plane_first_id, linked=linked) -> None:
                _record(writer, key, z, done, nid, plane_first_id, linked)

            if first < len(grid):
                if writer.resumed and resumed and inst is not None:
                    _forget_unrecorded(inst, grid[first], next_id)
                itf = writer.map(INTERFACES_MAP, zi) if INTERFACES_MAP in writer.maps else None
                next_id = yield from iter_predict_blocks(
                    predictor, image.plane(z), writer.label("classes", zi), inst, writer.image_plane(zi), block, halo,
                    next_id, should_stop, z * per_plane, total, first, record, itf,
                )
            if link and z > 0:
                job = _link_plane(writer.label("instances", z - 1), inst, plane_first_id, next_id, block,
                                  writer.tmp / f"lazylabels-link-{z}.npy")
                linked += yield from stoppable(job, should_stop)
            _record(writer, key, z + 1, 0, next_id, next_id, linked)  # the plane is done (and linked)
        if instances:
            log.info("%s: %d objects%s", image.name, next_id - 1 - linked,
                     f" through the stack ({linked} continued from the slice before)" if link else "")
        for table in writer.tmp.glob("lazylabels-link-*.npy"):
            table.unlink()
        (writer.tmp / PROGRESS_FILE).unlink(missing_ok=True)
        return (yield from writer.iter_finish())
    except BaseException:
        if key is None:
            writer.abort()
        else:
            log.info("%s: progress kept in %s; predicting it again with the same model and settings goes on "
                     "from there", image.name, writer.tmp)
        raise


def _record(writer: OmeZarrWriter, key: dict | None, plane: int, block: int, next_id: int, first_id: int,
            linked: int) -> None:
    """Save how far a resumable run got: ``block`` blocks of ``plane`` written, the next free
    id, the plane's first id and the objects linked so far (nothing without a ``key``)."""
    if key is not None:
        atomic_write_json(writer.tmp / PROGRESS_FILE, {"key": key, "plane": plane, "block": block, "next_id": next_id,
                                                       "first_id": first_id, "linked": linked})


def _link_plane(previous, current, first_id: int, next_id: int, tile: int, saved: Path | None = None) -> Iterator[Progress]:
    """Job: give the objects of ``current`` (ids ``first_id ..``) that continue an object of
    ``previous`` (the plane before) its id (:func:`~napari_lazylabels.core.stacks.iter_link_table`),
    on disk tile by tile. With ``saved`` the table is kept in that file before it is written,
    so a run killed while writing it writes it again (writing is idempotent) instead of
    linking a half-linked plane.

    Returns:
        how many objects were linked.
    """
    try:
        table = np.load(saved) if saved is not None else None
    except (OSError, ValueError):
        table = None
    if table is None:
        table = yield from iter_link_table(previous, current, first_id, next_id, tile=tile)
        if saved is not None:
            part = saved.with_suffix(".partial.npy")
            np.save(part, table)
            os.replace(part, saved)
    return (yield from iter_apply_link(current, table, first_id, tile=tile))


def ome_zarr_writer(predictor: Predictor, image: LazyImage, path: str | os.PathLike, instances: bool = True,
                    resume_key: dict | None = None, block: int = BLOCK, atomic: bool = True) -> OmeZarrWriter:
    """The OME-Zarr writer of a prediction of ``image``: its shapes, channels and pixel size,
    ``labels/classes`` (uint8; uint16 above 255 classes) and ``labels/instances`` (uint32).

    With a ``resume_key`` (see :func:`iter_predict_ome_zarr`) the folder a stopped or killed
    run of the same key left is kept (``writer.resumed``), one that a run of the same key
    finished in place is kept as it is (``writer.complete``: predicting again gives it at
    once), and any other is started over, so layers made over
    :meth:`~OmeZarrWriter.levels` before the run show what it goes on from."""
    labels = {"classes": np.uint8 if predictor.config.n_classes < 256 else np.uint16}
    if instances:
        labels["instances"] = np.uint32
    key = _run_key(predictor, resume_key, block, instances)
    maps = {INTERFACES_MAP: np.uint8} if instances and predictor.has_interfaces else {}
    attrs = {"settings": predictor.instance_settings(), "block": block, "halo": block_halo(predictor),
             "maps": {INTERFACES_MAP: "interface probability x 255"} if maps else {}}
    if key is not None:
        attrs["run"] = key
    writer = OmeZarrWriter(path, image.plane_shape, image.n_planes if image.n_stack else None, image.data.dtype,
                           image.n_channels, labels, image.pixel_size, name=image.name, atomic=atomic,
                           resume=key is not None, maps=maps, attrs=attrs)
    if writer.resumed:
        recorded = _recorded(writer)
        if not recorded:  # no progress file: a finished folder (written in place) or a foreign one
            writer.complete = (dict(writer.root.attrs).get("lazylabels") or {}).get("run") == key
        if recorded.get("key") != key and not writer.complete:
            writer.restart()
    return writer


def _run_key(predictor: Predictor, resume_key: dict | None, block: int, instances: bool) -> dict | None:
    """What the progress file records of a run: the caller's key and the blocks' geometry,
    as JSON reads it back."""
    if resume_key is None:
        return None
    key = {**resume_key, "block": block, "halo": block_halo(predictor), "instances": instances}
    return json.loads(json.dumps(key))


def _recorded(writer: OmeZarrWriter) -> dict:
    """The progress file of a partial folder (``{}`` when there is none, or it is unreadable)."""
    try:
        saved = json.loads((writer.tmp / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def image_fingerprint(image: LazyImage, side: int = 32) -> str:
    """A SHA-256 of ``image``'s shape, dtype and five ``side``-pixel windows (corners and
    centre) of its first, middle and last planes: it tells another image apart (the resume key
    of an image without a file) while reading a few chunks of a huge one."""
    h = hashlib.sha256(f"{tuple(image.data.shape)}|{image.data.dtype}".encode())
    bottom, right = (max(0, d - side) for d in image.plane_shape)
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    for z in sorted({0, image.n_planes // 2, image.n_planes - 1}):
        plane = image.plane(z)
        for y, x in corners:
            h.update(np.ascontiguousarray(plane[y : y + side, x : x + side]).tobytes())
    return h.hexdigest()


def _resume_point(writer: OmeZarrWriter, key: dict | None) -> dict:
    """Where to start: after the blocks the partial folder records for the same ``key``, or
    at the beginning (a partial folder of another run is started over)."""
    fresh = {"plane": 0, "block": 0, "next_id": 1, "first_id": 1, "linked": 0}
    if key is None or not writer.resumed:
        return fresh
    saved = _recorded(writer)
    if saved.get("key") != key:
        writer.restart()
        return fresh
    log.info("Resuming %s at plane %d, block %d", writer.path.name, saved["plane"], saved["block"])
    nid = int(saved["next_id"])
    return {"plane": int(saved["plane"]), "block": int(saved["block"]), "next_id": nid,
            "first_id": int(saved.get("first_id", nid)), "linked": int(saved.get("linked", 0))}


def _forget_unrecorded(instances, b: Block, next_id: int) -> None:
    """Remove ids from ``next_id`` on in the window of block ``b``: what a killed run wrote of
    the block it did not finish (only that block's window can hold such ids)."""
    y0, y1, x0, x1 = b.window
    out = np.asarray(instances[y0:y1, x0:x1])
    stale = out >= next_id
    if stale.any():
        instances[y0:y1, x0:x1] = np.where(stale, 0, out).astype(out.dtype)
