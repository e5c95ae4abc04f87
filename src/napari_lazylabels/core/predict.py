"""Whole-image prediction: Gaussian-blended sliding windows, class maps and instances.

Inference follows Ke et al. (section 4.1): the network sees ``tile x tile`` patches (256 by
default) that overlap; each patch's softmax probabilities are weighted by a Gaussian centred
on the patch (pixels near a patch's border are harder to classify) and the weighted patches
are averaged into whole-image probability maps.

Memory stays bounded for very large images (e.g. 16k x 16k):

* :func:`sliding_window` walks the tiles row by row and keeps only a rolling *band* of
  accumulators (weighted sums and the weight sum, float32) for the image rows that can still
  receive tiles: about ``tile + stride * (rows spanned by one batch)`` rows of the image's
  width. When rows become final they are divided by their weight and written into the
  ``outputs`` arrays, which may be ``np.memmap`` files the caller preallocated.
* The input may be a lazy tile source (:class:`TileSource`); :class:`Predictor` normalises
  huge images tile by tile, so no float copy of the whole image is ever made.
* :func:`predict_file` writes float maps of large images to memory-mapped temporary files and
  streams them into tiled TIFFs.

What is *not* bounded: the input image itself, the class map (1-2 bytes per pixel), the
instance map (4 bytes per pixel) and the temporaries of :func:`instances_from_prediction`
(about 6 bytes per pixel, the watershed only runs on one connected component at a time).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch
from scipy import ndimage

from . import model as model_lib
from .data import normalize, percentiles, resize_image, to_channels
from .io import as_image, atomic_path, read_image, write_image, write_label
from .labels import DETECTION, SEGMENTATION, SEPARATION, n_task_classes
from .model import ModelConfig
from .runfolder import check_writable, folder_lock

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""A batch of tiles ``(B, C, P, P)`` float32 to ``{name: (B, K, P, P)}`` per-pixel outputs."""

PROBABILITIES = "probabilities"
INTERFACES = "interfaces"
DETECTION_OUT = "detection"

EAGER_NORMALIZE_BYTES = 256 * 2**20
"""Images whose normalised float32 copy is at most this big are normalised once up front;
larger ones are normalised tile by tile while windowing."""

LARGE_IMAGE_PIXELS = 50_000_000
"""Above this many pixels :func:`predict_file` keeps float maps in memory-mapped files."""


class PredictionCancelled(RuntimeError):
    """Raised when ``should_stop()`` returned True during a prediction."""


@dataclass(frozen=True)
class PredictPhase:
    """A progress event of a step after the tiles, yielded by :meth:`Predictor.predict_iter`
    (and the instance step's generator) so that a consumer can show every phase and stop in it.

    Not a tuple, so consumers of the ``(done_tiles, total_tiles)`` protocol (:func:`_drive`'s
    ``progress``) skip it; ``should_stop`` is still checked at each one.

    Attributes:
        phase: ``"resizing"`` (working-scale maps back to the image's size), ``"classes"``
            (the argmax) or ``"instances"`` (cutting objects).
        done: units of the phase done (row bands; connected components for ``"instances"``).
        total: units of the phase (for ``"instances"`` the components found so far: the
            count grows class by class).
    """

    phase: str
    done: int
    total: int


PHASE_SECONDS = 0.05
"""Long post-processing loops yield a :class:`PredictPhase` at least this often (seconds of
work), so a Stop takes effect and the progress moves while they run."""


# --------------------------------------------------------------------------- geometry
def gaussian_importance_map(
    patch_size: tuple[int, int], sigma_scale: float = 0.125, min_weight: float = 1e-3
) -> np.ndarray:
    """Gaussian weight of each pixel of a patch, for blending overlapping patches.

    Args:
        patch_size: ``(P_h, P_w)``.
        sigma_scale: standard deviation as a fraction of the patch side.
        min_weight: lower clamp, so that every pixel gets some weight (patch borders at
            the image border are the only predictions there).

    Returns:
        ``(P_h, P_w)`` float32, centred on the patch, maximum exactly 1, symmetric under
        flips, every value ``>= min_weight``.
    """
    axes = []
    for n in patch_size:
        n = int(n)
        if n < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}.")
        sigma = max(sigma_scale * n, 1e-6)
        r = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        g = np.exp(-0.5 * (r / sigma) ** 2)
        g = (g + g[::-1]) / 2  # exactly symmetric
        axes.append(g)
    w = np.outer(axes[0], axes[1])
    w /= w.max()
    return np.maximum(w, min_weight).astype(np.float32)


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``.

    Neighbouring tiles overlap by about ``overlap * tile`` pixels (the stride is
    ``round(tile * (1 - overlap))``, at least 1); the last tile ends flush with ``length``.
    A single tile (start 0) when ``length <= tile``.
    """
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}.")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {overlap}.")
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


# --------------------------------------------------------------------------- tile sources
@runtime_checkable
class TileSource(Protocol):
    """A lazily read ``(C, H, W)`` float32 image.

    ``read(y0, y1, x0, x1)`` returns ``(C, y1 - y0, x1 - x0)`` float32 for a region inside
    the image.
    """

    shape: tuple[int, int, int]

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray: ...


class ArraySource:
    """A :class:`TileSource` over an in-memory (or memory-mapped) ``(C, H, W)`` array."""

    def __init__(self, array: np.ndarray) -> None:
        if array.ndim != 3:
            raise ValueError(f"Expected a (C, H, W) image, got shape {array.shape}.")
        self.array = array
        self.shape = tuple(int(s) for s in array.shape)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return np.asarray(self.array[:, y0:y1, x0:x1], dtype=np.float32)


class NormalizedSource:
    """A :class:`TileSource` that normalises a raw ``(H, W[, 3])`` image tile by tile.

    Args:
        image: the raw image, any dtype (not copied).
        in_channels: channels the model expects.
        value_range: ``(lo, hi)`` intensities mapped to 0 and 1 (from the whole image).
    """

    def __init__(
        self, image: np.ndarray, in_channels: int, value_range: tuple[float, float]
    ) -> None:
        self.image = image
        self.in_channels = in_channels
        self.value_range = value_range
        self.shape = (in_channels, int(image.shape[0]), int(image.shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return normalize(self.image[y0:y1, x0:x1], self.in_channels, value_range=self.value_range)


def _as_source(image) -> TileSource:
    if isinstance(image, np.ndarray):
        return ArraySource(image)
    if isinstance(image, TileSource):
        return image
    raise TypeError(f"Expected a (C, H, W) array or a TileSource, got {type(image).__name__}.")


def _pad_tile(arr: np.ndarray, tile: int) -> np.ndarray:
    """Pad ``(C, h, w)`` at the bottom/right to ``(C, max(h, tile), max(w, tile))``:
    reflect where the side allows it, replicate otherwise."""
    _, h, w = arr.shape
    ph, pw = max(0, tile - h), max(0, tile - w)
    if not (ph or pw):
        return arr
    mode = "reflect" if ph < h and pw < w else "edge"
    return np.pad(arr, ((0, 0), (0, ph), (0, pw)), mode=mode)


# --------------------------------------------------------------------------- sliding window
BAND_BYTES = 32 * 2**20
"""Sliding window: bytes per channel of the band of weighted sums held in memory."""


def _batches(ys: Sequence[int], xs: Sequence[int], batch_size: int) -> list[list[tuple[int, int]]]:
    tiles = [(y, x) for y in ys for x in xs]
    return [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]


def iter_sliding_window(
    image: np.ndarray | TileSource,
    forward: Forward,
    outputs: dict[str, np.ndarray] | None = None,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    sigma_scale: float = 0.125,
) -> Iterator[tuple[int, int]]:
    """Generator form of :func:`sliding_window`.

    Yields ``(done_tiles, total_tiles)`` after each batch and *returns* (``StopIteration``
    value, e.g. via ``result = yield from iter_sliding_window(...)``) the outputs dict.
    Closing the generator early leaves ``outputs`` partially written.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    src = _as_source(image)
    _, h, w = src.shape
    hp, wp = max(h, tile), max(w, tile)  # padded size
    ys, xs = tile_starts(hp, tile, overlap), tile_starts(wp, tile, overlap)
    batches = _batches(ys, xs, batch_size)
    total = len(ys) * len(xs)
    # Rows [band_y0, band_y0 + cap) are held; a batch needs [first y, last y + tile). The band
    # holds at least BAND_BYTES per channel (all of a 1024-wide image of up to 8192 rows), so
    # it is shifted (an overlapping copy of the held rows) rarely or never.
    cap = min(hp, max(max(b[-1][0] + tile - b[0][0] for b in batches), BAND_BYTES // (4 * wp)))
    weight = gaussian_importance_map((tile, tile), sigma_scale)
    cpu = torch.device("cpu")
    weight_t: dict[torch.device, torch.Tensor] = {cpu: torch.from_numpy(weight)}
    outputs = {} if outputs is None else outputs
    views: dict[str, np.ndarray] = {}  # (K, H, W) views of outputs
    # The accumulators are CPU tensors (their adds and divisions use every thread).
    sums: dict[str, torch.Tensor] = {}  # (K, cap, wp) weighted sums
    wsum = torch.zeros((cap, wp), dtype=torch.float32)
    band_y0 = 0
    log.debug("sliding window: %dx%d, %d tiles, band of %d rows", h, w, total, cap)

    def flush(upto: int) -> None:
        """Write rows [band_y0, upto) out and shift the band up."""
        nonlocal band_y0
        n = upto - band_y0
        if n <= 0:
            return
        lo, hi = band_y0, min(upto, h)
        if hi > lo:
            wrow = wsum[: hi - lo, :w]
            for name, acc in sums.items():
                torch.div(acc[:, : hi - lo, :w], wrow, out=torch.from_numpy(views[name][:, lo:hi]))
        keep = cap - n
        # torch ops, which release the interpreter lock (numpy's fill of a 4096-wide band of
        # 1920 rows held it long enough to pause a viewer's main thread); the kept rows are
        # cloned first, as source and destination may overlap.
        for acc in [*sums.values(), wsum[None]]:
            if keep > 0:
                acc[:, :keep] = acc[:, n:cap].clone()
            acc[:, max(keep, 0) :].zero_()
        band_y0 = upto

    done = 0
    for batch in batches:
        if batch[-1][0] + tile > band_y0 + cap:
            flush(batch[0][0])
        x_np = np.stack(
            [_pad_tile(src.read(y, min(y + tile, h), x, min(x + tile, w)), tile) for y, x in batch]
        )
        result = forward(torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32)))
        with torch.inference_mode():
            weighted = {}
            for name, t in result.items():
                if t.ndim != 4 or t.shape[0] != len(batch) or tuple(t.shape[-2:]) != (tile, tile):
                    raise ValueError(
                        f"forward returned {name!r} of shape {tuple(t.shape)}; expected "
                        f"({len(batch)}, K, {tile}, {tile})."
                    )
                if t.device not in weight_t:
                    weight_t[t.device] = torch.from_numpy(weight).to(t.device)
                weighted[name] = (t.float() * weight_t[t.device]).cpu()
        if not sums:  # first batch: allocate accumulators and missing outputs
            unknown = set(outputs) - set(weighted)
            if unknown:
                raise ValueError(
                    f"outputs has {sorted(unknown)} but forward returns {sorted(weighted)}."
                )
            for name, arr in weighted.items():
                k = arr.shape[1]
                if name not in outputs:
                    outputs[name] = np.empty((k, h, w), np.float32)
                view = outputs[name]
                if view.ndim == 2:
                    view = view[None]
                if tuple(view.shape) != (k, h, w):
                    raise ValueError(
                        f"outputs[{name!r}] has shape {outputs[name].shape}; expected {(k, h, w)}."
                    )
                views[name] = view
                sums[name] = torch.zeros((k, cap, wp), dtype=torch.float32)
        for i, (y, x) in enumerate(batch):
            r = y - band_y0
            wsum[r : r + tile, x : x + tile] += weight_t[cpu]
            for name, t in weighted.items():
                sums[name][:, r : r + tile, x : x + tile] += t[i]
        done += len(batch)
        yield done, total
    flush(hp)
    return outputs


def resize_maps(src: np.ndarray, dst: np.ndarray, rows: int = 256) -> np.ndarray:
    """Bilinearly resize float maps ``src`` ``(K, h, w)`` into ``dst`` ``(K, H, W)`` (e.g. a
    model's working-scale output back to the image's size), band by band, so that ``dst`` may
    be a memory-mapped array and the temporaries stay small.

    Pixel centres are aligned as in ``cv2.resize`` (``align_corners=False``); borders are
    replicated. Returns ``dst``.
    """
    return _drive(_iter_resize_maps(src, dst, rows), None, None)


def _iter_resize_maps(src: np.ndarray, dst: np.ndarray, rows: int = 256) -> Iterator[PredictPhase]:
    """Generator form of :func:`resize_maps`: yields ``PredictPhase("resizing", band, bands)``
    after each band of ``rows`` output rows and returns ``dst``."""
    k, h, w = src.shape
    kd, hd, wd = dst.shape
    if kd != k:
        raise ValueError(f"resize_maps: {k} maps into {kd}.")
    bands = max(1, -(-hd // rows))
    sx, sy = w / wd, h / hd
    map_x = np.clip((np.arange(wd, dtype=np.float32) + 0.5) * np.float32(sx) - 0.5, 0, w - 1)
    for y0 in range(0, hd, rows):
        y1 = min(hd, y0 + rows)
        ys = np.clip((np.arange(y0, y1, dtype=np.float32) + 0.5) * np.float32(sy) - 0.5, 0, h - 1)
        lo, hi = int(np.floor(ys[0])), min(h, int(np.floor(ys[-1])) + 2)
        mx = np.broadcast_to(map_x, (y1 - y0, wd))
        my = np.broadcast_to((ys - lo)[:, None], (y1 - y0, wd))
        mx, my = np.ascontiguousarray(mx), np.ascontiguousarray(my)
        for c in range(k):
            band = np.ascontiguousarray(src[c, lo:hi], dtype=np.float32)
            dst[c, y0:y1] = cv2.remap(band, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        yield PredictPhase("resizing", y0 // rows + 1, bands)
    return dst


def sliding_window(
    image: np.ndarray | TileSource,
    forward: Forward,
    outputs: dict[str, np.ndarray] | None = None,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    sigma_scale: float = 0.125,
) -> dict[str, np.ndarray]:
    """Gaussian-weighted sliding-window inference over a whole image.

    Args:
        image: ``(C, H, W)`` float32 array (may be a memmap) or a :class:`TileSource`.
            Images smaller than ``tile`` are padded (reflect, or replicate when too small)
            and the outputs cropped back.
        forward: maps a batch ``(B, C, tile, tile)`` float32 tensor to
            ``{name: (B, K, tile, tile)}`` tensors (any device and float dtype).
        outputs: ``{name: (K, H, W)}`` float32 arrays to fill (e.g. preallocated
            ``np.memmap``; ``(H, W)`` is accepted for ``K == 1``). Missing names are
            allocated as plain arrays.
        tile: patch side.
        overlap: overlap between neighbouring patches, a fraction of ``tile`` in ``[0, 1)``.
        batch_size: patches per forward call (batches span tile rows).
        should_stop: checked before the first and after every batch; when it returns True
            :class:`PredictionCancelled` is raised.
        progress: called with ``(done_tiles, total_tiles)`` after every batch.
        sigma_scale: Gaussian sigma as a fraction of ``tile``.

    Returns:
        ``{name: (K, H, W) float32}``, the weighted average of the patch outputs (the
        ``outputs`` dict, completed).
    """
    if should_stop is not None and should_stop():
        raise PredictionCancelled("Prediction cancelled.")
    gen = iter_sliding_window(image, forward, outputs, tile, overlap, batch_size, sigma_scale)
    return _drive(gen, should_stop, progress)


def _drive(gen, should_stop, progress):
    """Run a progress generator, calling ``progress`` and ``should_stop`` at each event."""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if isinstance(event, tuple) and progress is not None:
                progress(*event)
            if should_stop is not None and should_stop():
                raise PredictionCancelled("Prediction cancelled.")
    finally:
        gen.close()


# --------------------------------------------------------------------------- instances
def instances_from_prediction(
    classes: np.ndarray,
    interfaces: np.ndarray | None,
    interface_threshold: float = 0.5,
    min_size: int = 16,
    min_seed_size: int | None = None,
    seed_erosion: int = 0,
    probabilities: np.ndarray | None = None,
    seed_probability: float = 0.9,
    neck_depth: float = 0.0,
) -> np.ndarray:
    """Instances from a class map, split at predicted interfaces (the separation task).

    Per object class ``c >= 1`` (objects of different classes are never merged): each
    connected component of ``classes == c`` is one object, unless it holds two or more
    *seeds*, the connected parts of the component where ``interfaces < interface_threshold``
    (optionally eroded by ``seed_erosion`` pixels; seeds below ``min_seed_size`` pixels are
    dropped). Then a watershed on the interface probability, started from the seeds and
    masked to the component, gives the interface pixels back to the neighbouring objects.
    Without ``interfaces``, plain connected components (4-connectivity).

    Args:
        classes: ``(H, W)`` class indices, 0 = background.
        interfaces: ``(H, W)`` interface probability or ``None``.
        interface_threshold: pixels at or above it separate objects.
        min_size: objects smaller than this (pixels) are removed (set to 0).
        min_seed_size: smallest seed; default ``max(1, min_size // 4)``.
        seed_erosion: erode the seeds by this many pixels first.
        probabilities: optional ``(K, H, W)`` class probabilities. Then a pixel also
            separates objects where its class probability is below ``seed_probability``, so
            objects split by a thin, uncertain background line (membranes, the gaps between
            nuclei the class map merges) get one seed each; the watershed then grows the
            seeds back over the uncertain pixels of the component.
        seed_probability: class probability a seed pixel needs (with ``probabilities``).
        neck_depth: when > 0, objects are also split at necks: every seed is cut further
            into the basins of the distance to its edge whose peak rises at least this many
            pixels above the neck joining it to another (h-maxima), and a watershed on that
            distance gives each part its pixels. Touching round objects that the class map
            merges and the interface map does not cut come apart; a value of about a tenth
            of the objects' radius splits pairs of nuclei without cutting single ones.

    Returns:
        ``(H, W)`` int32, 0 = no object, objects numbered ``1..N`` (class by class).
    """
    return _drive(
        iter_instances_from_prediction(
            classes, interfaces, interface_threshold, min_size, min_seed_size, seed_erosion,
            probabilities, seed_probability, neck_depth,
        ),
        None,
        None,
    )


def iter_instances_from_prediction(
    classes: np.ndarray,
    interfaces: np.ndarray | None,
    interface_threshold: float = 0.5,
    min_size: int = 16,
    min_seed_size: int | None = None,
    seed_erosion: int = 0,
    probabilities: np.ndarray | None = None,
    seed_probability: float = 0.9,
    neck_depth: float = 0.0,
) -> Iterator[PredictPhase]:
    """Generator form of :func:`instances_from_prediction` (the same arguments).

    Yields ``PredictPhase("instances", done, total)`` after each class's labelling and then at
    least every :data:`PHASE_SECONDS` of the per-component loop (``done`` components of the
    ``total`` found so far), and *returns* the ``(H, W)`` int32 instance map (``result = yield
    from ...``), so a worker shows the step's progress and can stop inside it.
    """
    from skimage.morphology import h_maxima
    from skimage.segmentation import watershed

    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"classes must be (H, W), got {classes.shape}.")
    if interfaces is not None:
        interfaces = np.asarray(interfaces)
        if interfaces.ndim == 3 and interfaces.shape[0] == 1:
            interfaces = interfaces[0]
        if interfaces.shape != classes.shape:
            raise ValueError(
                f"interfaces {interfaces.shape} and classes {classes.shape} differ in shape."
            )
    if min_seed_size is None:
        min_seed_size = max(1, min_size // 4)
    out = np.zeros(classes.shape, np.int32)
    next_id = 1
    n_classes = int(classes.max()) + 1 if classes.size else 0
    done = found = 0
    for c in range(1, n_classes):
        fg = classes == c
        comp, n = ndimage.label(fg)
        found += n
        yield PredictPhase("instances", done, found)
        if n == 0:
            continue
        split = interfaces
        threshold = interface_threshold
        if probabilities is not None and c < len(probabilities):
            # One "separation" map, scaled so that 1 separates: interfaces at their
            # threshold, or class probability below the seed probability.
            doubt = (1.0 - np.asarray(probabilities[c], np.float32)) / max(1e-6, 1.0 - seed_probability)
            split = doubt if interfaces is None else np.maximum(doubt, np.asarray(interfaces, np.float32) / interface_threshold)
            threshold = 1.0
        if split is None and neck_depth <= 0:
            sizes = np.bincount(comp.ravel(), minlength=n + 1)
            keep = sizes >= min_size
            keep[0] = False
            lut = np.zeros(n + 1, np.int32)
            lut[keep] = np.arange(next_id, next_id + int(keep.sum()), dtype=np.int32)
            next_id += int(keep.sum())
            np.copyto(out, lut[comp], where=fg)
            done += n
            continue
        # Components without any interface pixel are single objects: label them at once,
        # and run the per-component watershed only where an interface may split one.
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        crossed = np.zeros(n + 1, bool)
        if split is not None:
            crossed[comp[fg & (np.asarray(split) >= threshold)]] = True
        del fg
        big = sizes >= min_size
        big[0] = False
        if neck_depth > 0:
            crossed[:] = True  # any component may have a neck
        simple = big & ~crossed
        lut = np.zeros(n + 1, np.int32)
        lut[simple] = np.arange(next_id, next_id + int(simple.sum()), dtype=np.int32)
        next_id += int(simple.sum())
        np.copyto(out, lut[comp], where=simple[comp])
        todo = big & crossed
        done += n - int(todo.sum())
        last = time.perf_counter()
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None or not todo[i]:
                continue
            done += 1
            if time.perf_counter() - last >= PHASE_SECONDS:
                yield PredictPhase("instances", done, found)
                last = time.perf_counter()
            mask = comp[sl] == i
            interf = np.zeros(mask.shape, np.float32) if split is None else np.asarray(split[sl], dtype=np.float32)
            seed_mask = mask & (interf < threshold)
            if seed_erosion > 0:
                seed_mask = ndimage.binary_erosion(seed_mask, iterations=seed_erosion)
            landscape = interf
            if neck_depth > 0:
                landscape = -ndimage.distance_transform_edt(np.pad(seed_mask, 1))[1:-1, 1:-1]
                seed_mask = h_maxima(-landscape, neck_depth).astype(bool) & seed_mask
            seeds, ns = ndimage.label(seed_mask)
            if ns > 1 and neck_depth <= 0:  # neck seeds are peaks: a pixel or a ridge
                seed_sizes = np.bincount(seeds.ravel(), minlength=ns + 1)
                small = seed_sizes < min_seed_size
                small[0] = False
                if small.any():
                    seeds[small[seeds]] = 0
                    seeds, ns = ndimage.label(seeds > 0)
            region = out[sl]
            if ns <= 1:
                region[mask] = next_id
                next_id += 1
                continue
            parts = watershed(landscape, markers=seeds, mask=mask)
            sizes = np.bincount(parts.ravel(), minlength=ns + 1)
            keep = sizes >= min_size
            keep[0] = False
            lut = np.zeros(ns + 1, np.int32)
            lut[keep] = np.arange(next_id, next_id + int(keep.sum()), dtype=np.int32)
            next_id += int(keep.sum())
            np.copyto(region, lut[parts], where=mask)
    yield PredictPhase("instances", found, found)
    return out


def separating_interfaces(
    interfaces: np.ndarray, instances: np.ndarray, threshold: float = 0.5, distance: int = 2
) -> np.ndarray:
    """The predicted interface pixels that separate two predicted objects.

    The separation head's probability map can also be high along an object's edge against
    open background, where there is nothing to separate; this keeps only the pixels at or
    above ``threshold`` that have two different objects within ``distance`` px (Chebyshev).

    Args:
        interfaces: ``(H, W)`` interface probability.
        instances: ``(H, W)`` instance ids (0 = none), e.g. from
            :func:`instances_from_prediction`.

    Returns:
        ``(H, W)`` bool.
    """
    interfaces = np.asarray(interfaces)
    inst = np.asarray(instances).astype(np.int32, copy=False)
    if interfaces.shape != inst.shape:
        raise ValueError(f"interfaces {interfaces.shape} and instances {inst.shape} differ in shape.")
    size = 2 * distance + 1
    top = int(inst.max(initial=0)) + 1  # stands for "no object" in the minimum
    hi = ndimage.maximum_filter(inst, size=size, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(inst > 0, inst, top), size=size, mode="constant", cval=top)
    return (interfaces >= threshold) & (hi > 0) & (lo != top) & (hi != lo)


MIN_OBJECT_FRACTION = 0.1
"""Default smallest instance, as a share of the area of the model's typical object."""


def auto_min_object_size(config: ModelConfig, min_object_size: int | None = None) -> int:
    """``min_object_size`` if given, else a tenth (:data:`MIN_OBJECT_FRACTION`) of the area of
    a disc of the model's typical object diameter, at least 16 px (16 px without one)."""
    if min_object_size is not None:
        return int(min_object_size)
    d = config.object_diameter
    if d is None:
        return 16
    return max(16, int(MIN_OBJECT_FRACTION * math.pi / 4 * d * d))


DEFAULT_INTERFACE_THRESHOLD = 0.5
"""Interface threshold of a model that was not tuned."""

TUNE_THRESHOLDS = (0.3, 0.5, 0.7, 0.85, 0.95)
"""Interface thresholds :func:`tune_interface_threshold` tries."""


def auto_interface_threshold(config: ModelConfig, interface_threshold: float | None = None) -> float:
    """``interface_threshold`` if given, else the model's tuned one, else 0.5."""
    if interface_threshold is not None:
        return float(interface_threshold)
    if config.interface_threshold is not None:
        return float(config.interface_threshold)
    return DEFAULT_INTERFACE_THRESHOLD


def recorded_instance_settings(
    recorded: dict, interface_threshold: float | None = None, min_object_size: int | None = None
) -> tuple[float, int]:
    """``(interface_threshold, min_object_size)`` for re-cutting recorded predictions: the
    values given, else the model's own as recorded (:meth:`Predictor.instance_settings`), else
    0.5 and 16 px."""
    if interface_threshold is None:
        interface_threshold = recorded.get("auto_interface_threshold", DEFAULT_INTERFACE_THRESHOLD)
    if min_object_size is None:
        min_object_size = recorded.get("auto_min_object_size", 16)
    return float(interface_threshold), int(min_object_size)


def exact_instances(sample) -> np.ndarray | None:
    """Instance ground truth from a sample's exact masks, or ``None``.

    Each object class's exact mask is cut into connected components (4-connectivity) after
    removing the sample's interface scribbles (task 2), which is how touching objects are
    told apart in a class mask. ``None`` when the sample has no exact mask, or the mask leaves
    pixels unannotated (then objects may be partial).
    """
    from .labels import BACKGROUND, UNLABELLED

    seg = sample.segmentation
    if seg is None or not np.any(seg > BACKGROUND) or np.any(seg == UNLABELLED):
        return None
    out = np.zeros(seg.shape, np.int32)
    cut = sample.separation == 2 if sample.separation is not None else np.zeros(seg.shape, bool)
    n = 0
    for c in range(BACKGROUND + 1, int(seg.max()) + 1):
        comp, k = ndimage.label((seg == c) & ~cut)
        out[comp > 0] = comp[comp > 0] + n
        n += k
    return out


def tune_interface_threshold(
    predictor: Predictor,
    samples,
    candidates: Sequence[float] = TUNE_THRESHOLDS,
    max_images: int = 8,
    max_side: int = 1024,
    min_objects: int = 5,
    margin: float = 0.005,
) -> tuple[float | None, dict[float, float]]:
    """The interface threshold that cuts the objects of the exact masks best (object F1).

    The samples with complete exact masks (:func:`exact_instances`; at most ``max_images``,
    each cropped to its central ``max_side`` square to bound the time) are predicted once;
    each candidate threshold cuts their instances (with the predictor's smallest object) and
    is scored by the mean object F1 at IoU > 0.5. A candidate must beat 0.5 by more than
    ``margin`` to be chosen. On held-out images of three datasets, tuning this way raised object
    F1 on DSB nuclei (0.707 -> 0.758) and ISBI cells (0.655 -> 0.720) and cost a little on GlaS
    glands (0.466 -> 0.447) (docs/benchmarks.md).

    Args:
        predictor: a :class:`Predictor` of a model with a separation head.
        samples: :class:`~napari_lazylabels.core.io.Sample` objects (those without complete
            exact masks are skipped).

    Returns:
        ``(threshold, {candidate: mean object F1})``; threshold ``None`` when the model has no
        separation head or the masks hold fewer than ``min_objects`` objects.
    """
    from .metrics import object_f1

    if not predictor.has_interfaces:
        return None, {}
    maps = []
    n_objects = 0
    for s in samples:
        if len(maps) >= max_images:
            break
        gt = exact_instances(s)
        if gt is None:
            continue
        h, w = gt.shape
        y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
        crop = (slice(y0, y0 + max_side), slice(x0, x0 + max_side))
        pred = predictor.predict(np.asarray(s.image)[crop], instances=False)
        gt = gt[crop]
        n_objects += len(np.unique(gt)) - 1
        maps.append((pred.classes, pred.interfaces, gt))
    if n_objects < min_objects:
        return None, {}
    scores = {}
    for t in candidates:
        f1 = [object_f1(instances_from_prediction(c, i, t, predictor.min_object_size), gt)["f1"] for c, i, gt in maps]
        scores[float(t)] = float(np.mean(f1))
    base = scores.get(DEFAULT_INTERFACE_THRESHOLD, -1.0)
    best = max(scores, key=lambda t: (scores[t], -abs(t - DEFAULT_INTERFACE_THRESHOLD)))
    if scores[best] <= base + margin:
        best = DEFAULT_INTERFACE_THRESHOLD
    return best, scores


def _argmax_rows(probs: np.ndarray, rows: int = 512) -> np.ndarray:
    """``argmax`` over the class axis of ``(K, H, W)`` band by band (bounded for memmaps)."""
    return _drive(_iter_argmax_rows(probs, rows), None, None)


def _iter_argmax_rows(probs: np.ndarray, rows: int = 512) -> Iterator[PredictPhase]:
    """Generator form of :func:`_argmax_rows`: yields ``PredictPhase("classes", band, bands)``
    after each band of ``rows`` rows and returns the ``(H, W)`` class map."""
    k, h, w = probs.shape
    dtype = np.uint8 if k <= 256 else np.uint16
    out = np.empty((h, w), dtype)
    bands = max(1, -(-h // rows))
    for i, y in enumerate(range(0, h, rows)):
        out[y : y + rows] = np.argmax(probs[:, y : y + rows], axis=0)
        yield PredictPhase("classes", i + 1, bands)
    return out


# --------------------------------------------------------------------------- predictor
TTA_CHOICES = (1, 2, 4, 8)

LARGE_TTA_PIXELS = 2048 * 2048
"""Default :attr:`PredictConfig.large_image_pixels`: above it, fewer orientations."""

LARGE_IMAGE_TTA = 2
"""Default :attr:`PredictConfig.large_image_tta` (docs/benchmarks.md, "Orientations for large
images")."""


def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The ``k``-th of the 8 flips/transpositions of the last two axes (``k = 0`` identity;
    1 mirror left-right, 2 up-down, 3 both, 4-7 the same after a transposition), or its
    inverse. ``(..., H, W)`` -> ``(..., H, W)`` (``(..., W, H)`` for ``k >= 4``)."""
    if not 0 <= k < 8:
        raise ValueError(f"k must be in 0..7, got {k}.")
    dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
    transpose = k >= 4
    if inverse and transpose:
        x = x.transpose(-1, -2)
    if dims:
        x = torch.flip(x, dims)
    if not inverse and transpose:
        x = x.transpose(-1, -2)
    return x


@dataclass(frozen=True)
class PredictConfig:
    """How to predict.

    Args:
        tile: patch side (paper: 256).
        overlap: overlap of neighbouring patches, fraction of ``tile``.
        batch_size: patches per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: autocast (bf16 where supported, see :func:`model.autocast_dtype`).
        channels_last: use the channels-last memory format.
        fuse_batchnorm: predict with a copy of the network whose BatchNorm layers are folded
            into their convolutions (:func:`model.fuse_batchnorm`: same maps up to rounding,
            one pass over every feature map less).
        interface_threshold: interface probability that separates objects, in (0, 1]; ``None``
            (default): the model's own (:attr:`ModelConfig.interface_threshold`, chosen on its
            exact masks when training ended), else 0.5. Raise it when single objects come out
            cut in pieces, lower it when touching objects stay merged; the best value depends
            on the model (docs/benchmarks.md: on DSB nuclei 0.85 gave object F1 0.758 vs 0.707
            at 0.5, on ISBI cells 0.3 gave 0.720 vs 0.655).
        min_object_size: instances smaller than this (pixels) are removed; ``None``
            (default): a tenth of the area of the model's typical object
            (:attr:`ModelConfig.object_diameter`, measured on its training labels), at least
            16 px, or 16 px when the model does not know its objects' size. Measured on
            held-out images (docs/benchmarks.md): object F1 0.415 -> 0.557 on GlaS glands
            and 0.714 -> 0.724 on DSB nuclei, foreground dice within 0.001.
        save_probabilities: :func:`predict_file` also writes the probability maps.
        keep_detection: also return the detection head's probabilities (multi-task).
        keep_interfaces: compute the separation head's interface map (models with one).
            ``False`` skips the separation decoder when only the class map is wanted
            (training's validation does); instances are then plain connected components.
        sigma_scale: Gaussian blending sigma as a fraction of ``tile``.
        seed_probability: instances also split where the class probability drops below
            this (see :func:`instances_from_prediction`); ``None`` (default) splits at
            predicted interfaces only, as the paper does.
        neck_depth: instances also split at necks this many pixels (at the image's
            resolution) shallower than the objects' centres (see
            :func:`instances_from_prediction`); 0 (default) turns it off. For round touching
            objects (nuclei) about a tenth of their radius.
        tta: test-time augmentation: every tile is predicted in this many orientations
            (1 = as is, 2 = + mirrored left-right, 4 (default) = + mirrored up-down and both,
            8 = + the four transposed ones) and the class (and detection) probabilities,
            mapped back, are averaged; prediction takes ``tta`` times as long. The network was
            trained on flipped and rotated patches, so each orientation is an equally good
            guess and their mean a better one. The interface map stays that of the image as
            is: interfaces are lines a pixel or two wide that shift between orientations, so
            their mean blurs them below the threshold tuned for the model. Measured on
            held-out images (docs/benchmarks.md): 4 orientations raised the foreground dice
            of 7 models by 0.003-0.024 (mean 0.011) and object F1 by up to 0.06 on GlaS,
            ISBI and DSB.
        large_image_tta: orientations for images above ``large_image_pixels`` (at most
            ``tta``); ``None``: ``tta`` whatever the size. Prediction time grows with the
            pixels times the orientations, and the few thousandths of dice that 4 orientations
            add over fewer (docs/benchmarks.md, "Orientations for large images") do not grow
            with the image; a caller that sets ``tta`` explicitly for every image (the CLI's
            ``--tta``) sets this to ``None``.
        large_image_pixels: images with more pixels (at the working scale) than this are
            predicted in ``large_image_tta`` orientations.
    """

    tile: int = 256
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    fuse_batchnorm: bool = True
    interface_threshold: float | None = None
    min_object_size: int | None = None
    save_probabilities: bool = True
    keep_detection: bool = False
    keep_interfaces: bool = True
    sigma_scale: float = 0.125
    seed_probability: float | None = None
    neck_depth: float = 0.0
    tta: int = 4
    large_image_tta: int | None = LARGE_IMAGE_TTA
    large_image_pixels: int = LARGE_TTA_PIXELS

    def __post_init__(self) -> None:
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta is a number of orientations, one of {TTA_CHOICES}; got {self.tta}.")
        if self.large_image_tta is not None and self.large_image_tta not in TTA_CHOICES:
            raise ValueError(
                f"large_image_tta is a number of orientations, one of {TTA_CHOICES} (or None); "
                f"got {self.large_image_tta}."
            )
        if self.large_image_pixels < 0:
            raise ValueError(f"large_image_pixels is a number of pixels >= 0, got {self.large_image_pixels}.")
        if self.interface_threshold is not None and not 0 < self.interface_threshold <= 1:
            raise ValueError(
                f"interface_threshold is a probability in (0, 1], got {self.interface_threshold}."
            )
        if self.min_object_size is not None and self.min_object_size < 0:
            raise ValueError(f"min_object_size is a number of pixels >= 0, got {self.min_object_size}.")
        if self.neck_depth < 0:
            raise ValueError(f"neck_depth is a depth in pixels >= 0, got {self.neck_depth}.")
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}.")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {self.overlap}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class Prediction:
    """A model's prediction for one 2D image.

    Attributes:
        probabilities: ``(K, H, W)`` float32 softmax of the segmentation head (of the one
            head of a single-task U-net). May be an ``np.memmap``.
        classes: ``(H, W)`` uint8 (uint16 for > 256 classes) argmax; 0 = background.
        interfaces: ``(H, W)`` float32 interface probability, ``None`` without a
            separation head.
        instances: ``(H, W)`` int32 instance ids (0 = none), or ``None`` if not computed.
        detection: ``(K, H, W)`` float32 detection probabilities, or ``None``.
    """

    probabilities: np.ndarray
    classes: np.ndarray
    interfaces: np.ndarray | None = None
    instances: np.ndarray | None = None
    detection: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.classes.shape)


class Predictor:
    """Runs a trained network over whole images.

    Args:
        model: a network from :func:`model.build_model`; it is moved to the device and put
            in eval mode (call ``model.train()`` again before training it further).
        config: the model's :class:`ModelConfig`.
        predict_config: tiling, device and post-processing options.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        predict_config: PredictConfig = PredictConfig(),
    ) -> None:
        self.config = config
        self.predict_config = predict_config
        self.device = model_lib.resolve_device(predict_config.device)
        self.amp_dtype = model_lib.autocast_dtype(self.device) if predict_config.amp else None
        self.model = model.to(self.device).eval()
        if predict_config.fuse_batchnorm:
            self.model = model_lib.fuse_batchnorm(self.model)
        if predict_config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        tasks = config.tasks
        self.main_task = (
            SEGMENTATION
            if SEGMENTATION in tasks
            else (DETECTION if DETECTION in tasks else tasks[0])
        )
        self.has_interfaces = predict_config.keep_interfaces and SEPARATION in tasks
        self.has_detection = (
            predict_config.keep_detection and DETECTION in tasks and self.main_task != DETECTION
        )
        # Our networks compute only the heads asked for; any other module gets the plain call.
        self._selects_heads = "tasks" in inspect.signature(self.model.forward).parameters

    # ------------------------------------------------------------------ network
    @property
    def min_object_size(self) -> int:
        """Smallest instance kept, in pixels (see :attr:`PredictConfig.min_object_size`)."""
        return auto_min_object_size(self.config, self.predict_config.min_object_size)

    @property
    def interface_threshold(self) -> float:
        """Interface probability that cuts objects (see :attr:`PredictConfig.interface_threshold`)."""
        return auto_interface_threshold(self.config, self.predict_config.interface_threshold)

    def instance_settings(self) -> dict:
        """How this predictor cuts instances, and the model's own values for "auto":
        ``interface_threshold``, ``auto_interface_threshold``, ``min_object_size``,
        ``auto_min_object_size``, ``neck_depth``, ``seed_probability`` (recorded with
        predictions so that :func:`recorded_instance_settings` can re-cut them later)."""
        pc = self.predict_config
        return {
            "interface_threshold": self.interface_threshold,
            "auto_interface_threshold": auto_interface_threshold(self.config),
            "min_object_size": self.min_object_size,
            "auto_min_object_size": auto_min_object_size(self.config),
            "neck_depth": pc.neck_depth,
            "seed_probability": pc.seed_probability,
        }

    def _heads(self, first: bool) -> tuple[str, ...]:
        """The heads one orientation needs: the class map's, the detection head's if kept, and
        the separation head's in the first orientation only (interfaces are not averaged), so
        the network skips the paths of the others."""
        heads = [self.main_task]
        if self.has_detection:
            heads.append(DETECTION)
        if self.has_interfaces and first:
            heads.append(SEPARATION)
        return tuple(heads)

    def orientations(self, shape: tuple[int, ...]) -> int:
        """Orientations each tile of an image of ``shape`` ``(H, W[, C])`` at the working scale
        is predicted in: :attr:`PredictConfig.tta`, or :attr:`PredictConfig.large_image_tta`
        (when fewer) above :attr:`PredictConfig.large_image_pixels`."""
        pc = self.predict_config
        if pc.large_image_tta is None or shape[0] * shape[1] <= pc.large_image_pixels:
            return pc.tta
        return min(pc.tta, pc.large_image_tta)

    def forward(
        self, x: torch.Tensor, should_stop: Callable[[], bool] | None = None, tta: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Probabilities for a batch of normalised tiles.

        Args:
            x: ``(B, C, P, P)`` float32.
            should_stop: checked before each orientation's pass; raises
                :class:`PredictionCancelled`, so a Stop waits for one pass, not the batch's
                ``tta`` passes.
            tta: orientations (default :attr:`PredictConfig.tta`).

        Returns:
            ``{"probabilities": (B, K, P, P), "interfaces": (B, 1, P, P) (with a separation
            head), "detection": (B, K, P, P) (if kept)}`` float32 on the model's device;
            class and detection probabilities are the mean over the orientations.
        """
        x = x.to(self.device, non_blocking=True)
        if self.predict_config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        n = self.predict_config.tta if tta is None else tta
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for k in range(n):
                if should_stop is not None and should_stop():
                    raise PredictionCancelled("Prediction cancelled.")
                xk = dihedral(x, k)
                if k and self.predict_config.channels_last:
                    xk = xk.contiguous(memory_format=torch.channels_last)
                with amp:
                    logits = self.model(xk, self._heads(first=k == 0)) if self._selects_heads else self.model(xk)
                probs = {PROBABILITIES: torch.softmax(logits[self.main_task].float(), 1)}
                if self.has_interfaces and k == 0:
                    probs[INTERFACES] = torch.softmax(logits[SEPARATION].float(), 1)[:, 1:2]
                if self.has_detection:
                    probs[DETECTION_OUT] = torch.softmax(logits[DETECTION].float(), 1)
                for name, p in probs.items():
                    p = dihedral(p, k, inverse=True)
                    out[name] = p if name not in out else out[name].add_(p)
            if n > 1:
                for name, p in out.items():
                    if name != INTERFACES:
                        p.div_(n)
        return out

    # ------------------------------------------------------------------ input
    def prepare(self, image: np.ndarray) -> np.ndarray | TileSource:
        """Validate and normalise an image for the network.

        The intensity range comes from the *whole* image (a strided subsample of about a
        million pixels); small images are normalised at once, large ones tile by tile.

        Args:
            image: ``(H, W)`` or ``(H, W, 3)``, any dtype.

        Returns:
            ``(C, H, W)`` float32 array or a lazy :class:`NormalizedSource`.

        Raises:
            ValueError: an RGB image for a gray model, or an invalid image.
        """
        img = as_image(image)
        c = self.config.in_channels
        if c == 1 and img.ndim == 3:
            if not (
                np.array_equal(img[..., 0], img[..., 1])
                and np.array_equal(img[..., 0], img[..., 2])
            ):
                raise ValueError(
                    "This model was trained on grayscale images but got an RGB image whose "
                    "channels differ. Convert the image to grayscale first, or use a model "
                    "trained on RGB images (in_channels=3)."
                )
            img = img[..., 0]
        if self.config.scale != 1:
            img = resize_image(img, self.config.scale)
        h, w = img.shape[:2]
        step = max(1, int(math.sqrt(h * w / 1_000_000)))
        sub = to_channels(img[::step, ::step], c)
        value_range = percentiles(sub, *self.config.norm_percentiles)
        if c * h * w * 4 <= EAGER_NORMALIZE_BYTES:
            return normalize(img, c, value_range=value_range)
        log.info("Normalising a %dx%d image tile by tile (range %s)", h, w, value_range)
        return NormalizedSource(img, c, value_range)

    # ------------------------------------------------------------------ prediction
    def predict_iter(
        self,
        image: np.ndarray,
        outputs: dict[str, np.ndarray] | None = None,
        instances: bool = True,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, int] | PredictPhase | Prediction]:
        """Predict one image step by step (for a napari ``thread_worker``).

        Protocol: yields ``(done_tiles, total_tiles)`` tuples after every batch of tiles, then
        a :class:`PredictPhase` for each step after the tiles (``"resizing"`` at a working
        scale, ``"classes"``, ``"instances"``; at least every :data:`PHASE_SECONDS` of work),
        then yields the :class:`Prediction` as its last item (and also returns it, so a
        ``GeneratorWorker``'s ``returned`` signal carries it). A consumer can stop at any
        yield (``worker.quit()``, ``generator.close()``); nothing is left half-written except
        ``outputs``.

        Args:
            image: ``(H, W)`` or ``(H, W, 3)``.
            outputs: optional preallocated float32 arrays (e.g. ``np.memmap``):
                ``"probabilities"`` ``(K, H, W)``, ``"interfaces"`` ``(H, W)``,
                ``"detection"`` ``(K, H, W)``.
            instances: also compute instances (:func:`instances_from_prediction`).
            should_stop: also checked between the orientations of a batch of tiles (raises
                :class:`PredictionCancelled`), for a Stop that does not wait for a whole batch.
        """
        pc = self.predict_config
        full_shape = as_image(image).shape[:2]
        src = self.prepare(image)
        n = self.orientations(src.shape[1:])

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            if should_stop is None and n == pc.tta:  # the plain call (subclasses may override it)
                return self.forward(x)
            return self.forward(x, should_stop=should_stop, tta=n)

        outputs = dict(outputs or {})
        for name in list(outputs):
            if (name == INTERFACES and not self.has_interfaces) or (
                name == DETECTION_OUT and not self.has_detection
            ):
                del outputs[name]
        if self.config.scale == 1:
            result = yield from iter_sliding_window(
                src, forward, outputs, pc.tile, pc.overlap, pc.batch_size, pc.sigma_scale
            )
        else:
            # At the working scale into temporary maps (memory-mapped for large images), then
            # resized back to the image's pixels.
            with tempfile.TemporaryDirectory(prefix="lazylabels-scaled-") as tmp:
                small = self._working_maps(src.shape[1:], Path(tmp))
                small = yield from iter_sliding_window(
                    src, forward, small, pc.tile, pc.overlap, pc.batch_size, pc.sigma_scale
                )
                for name, arr in small.items():
                    dst = outputs.get(name)
                    if dst is None:
                        dst = np.empty((arr.shape[0], *full_shape), np.float32)
                    outputs[name] = dst
                    yield from _iter_resize_maps(arr, dst if dst.ndim == 3 else dst[None])
                del small, arr
            result = outputs
        del src  # the normalised input (4 bytes per pixel) is not needed after the tiles
        probs = result[PROBABILITIES]
        classes = yield from _iter_argmax_rows(probs)
        interfaces = result.get(INTERFACES)
        if interfaces is not None and interfaces.ndim == 3:
            interfaces = interfaces[0]
        detection = result.get(DETECTION_OUT)
        if self.main_task == DETECTION:
            detection = probs
        inst = None
        if instances:
            inst = yield from iter_instances_from_prediction(
                classes, interfaces, self.interface_threshold, self.min_object_size,
                probabilities=None if pc.seed_probability is None else probs,
                seed_probability=pc.seed_probability or 0.9, neck_depth=pc.neck_depth,
            )
        pred = Prediction(probs, classes, interfaces, inst, detection)
        yield pred
        return pred

    def _working_maps(self, shape: tuple[int, int], folder: Path) -> dict[str, np.ndarray]:
        """Float maps at the working scale: plain arrays, or ``np.memmap`` files in ``folder``
        when an image is larger than :data:`LARGE_IMAGE_PIXELS`."""
        names = {PROBABILITIES: n_task_classes(self.main_task, self.config.n_classes)}
        if self.has_interfaces:
            names[INTERFACES] = 1
        if self.has_detection:
            names[DETECTION_OUT] = self.config.n_classes
        if shape[0] * shape[1] <= LARGE_IMAGE_PIXELS:
            return {n: np.empty((k, *shape), np.float32) for n, k in names.items()}
        return {n: np.memmap(folder / f"{n}.f32", np.float32, "w+", shape=(k, *shape)) for n, k in names.items()}

    def predict(
        self,
        image: np.ndarray,
        outputs: dict[str, np.ndarray] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        instances: bool = True,
    ) -> Prediction:
        """Predict one 2D image (see :meth:`predict_iter` for the arguments).

        Args:
            should_stop: checked between batches, between a batch's orientations and in the
                steps after the tiles; raises :class:`PredictionCancelled`.
            progress: called with ``(done_tiles, total_tiles)``.

        Returns:
            the :class:`Prediction`.
        """
        if should_stop is not None and should_stop():
            raise PredictionCancelled("Prediction cancelled.")
        return _drive(self.predict_iter(image, outputs, instances, should_stop), should_stop, progress)

    def predict_stack(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[int, int], None] | None = None,
        instances: bool = True,
    ) -> list[Prediction]:
        """Predict a stack of 2D images slice by slice.

        Args:
            images: ``(N, H, W)`` or ``(N, H, W, 3)`` array, or a sequence of 2D images.
            should_stop: checked between batches; raises :class:`PredictionCancelled`.
            progress: called with ``(done, total)`` tiles over the whole stack (assuming
                slices of equal size).
            instances: also compute instances.

        Returns:
            one :class:`Prediction` per slice.
        """
        return list(self.iter_stack(images, should_stop, progress, instances))

    def iter_stack(
        self, images, should_stop=None, progress=None, instances: bool = True
    ) -> Iterator[Prediction]:
        """Like :meth:`predict_stack` but yields each slice's :class:`Prediction` when done."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3 and images.shape[-1] in (3, 4):
                raise ValueError(
                    f"predict_stack got shape {images.shape}, which looks like one RGB image; "
                    "use predict() for a single image, or pass (N, H, W[, 3])."
                )
            if images.ndim not in (3, 4):
                raise ValueError(
                    f"Expected a stack (N, H, W) or (N, H, W, 3), got shape {images.shape}."
                )
        n = len(images)
        for i in range(n):
            slice_progress = None
            if progress is not None:

                def slice_progress(done, total, i=i):
                    progress(i * total + done, n * total)

            yield self.predict(
                images[i], should_stop=should_stop, progress=slice_progress, instances=instances
            )


# --------------------------------------------------------------------------- files
def _atomic_tiff(path: Path, arr: np.ndarray, rows: int = 256) -> Path:
    """Stream ``(H, W)`` or ``(K, H, W)`` float array (e.g. a memmap) into a tiled, zlib
    compressed TIFF, reading ``rows`` rows at a time; written to a temporary file next to
    ``path`` that then replaces it."""
    import tifffile

    shape = tuple(arr.shape)
    pages = arr[None] if arr.ndim == 2 else arr
    k, h, w = pages.shape

    def tiles():
        for p in range(k):
            for y in range(0, h, rows):
                strip = np.ascontiguousarray(pages[p, y : y + rows])
                for x in range(0, w, rows):
                    yield strip[:, x : x + rows]

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=shape,
            dtype=arr.dtype,
            tile=(rows, rows),
            compression="zlib",
            photometric="minisblack",
        )
    return path


def write_instances(out_dir: str | os.PathLike, stem: str, instances: np.ndarray) -> Path:
    """Write ``<stem>_instances.png`` (16-bit, under 65536 objects) or ``<stem>_instances.tif``
    (int32) atomically, removing the other one if an earlier run left it.

    Returns:
        the path written.
    """
    out_dir = Path(out_dir)
    png, tif = out_dir / f"{stem}_instances.png", out_dir / f"{stem}_instances.tif"
    if int(instances.max(initial=0)) < 65536:
        path, stale = write_image(png, instances.astype(np.uint16)), tif
    else:
        path, stale = write_image(tif, np.asarray(instances, np.int32)), png
    stale.unlink(missing_ok=True)
    return path


PREDICTION_SETTINGS = "lazylabels-predict.json"


def save_prediction_settings(out_dir: str | os.PathLike, predictor: Predictor, model: str | None = None) -> Path:
    """Write ``out_dir/lazylabels-predict.json``: the model, its test-time orientations
    (``tta``; ``large_image_tta`` above ``large_image_pixels``) and how instances were cut
    (``interface_threshold`` and ``min_object_size`` used, the model's own
    ``auto_interface_threshold`` and ``auto_min_object_size``, ``neck_depth``,
    ``seed_probability``), so :func:`resplit_folder` can start from them."""
    from .io import atomic_write_json

    return atomic_write_json(
        Path(out_dir) / PREDICTION_SETTINGS,
        {"model": None if model is None else str(model), "tta": predictor.predict_config.tta,
         "large_image_tta": predictor.predict_config.large_image_tta,
         "large_image_pixels": predictor.predict_config.large_image_pixels,
         **predictor.instance_settings()},
    )


def resplit_folder(
    pred_dir: str | os.PathLike,
    interface_threshold: float | None = None,
    min_object_size: int | None = None,
    neck_depth: float = 0.0,
    stems: Iterable[str] | None = None,
) -> list[Path]:
    """Cut the instances of predictions already written by :func:`predict_file` again.

    For every ``<stem>_classes.png`` in ``pred_dir`` (or those of ``stems``), the instances
    are computed from it and ``<stem>_interfaces.tif`` (when there) with
    :func:`instances_from_prediction`, and ``<stem>_instances.*`` is rewritten atomically. No
    network runs: changing how objects are cut takes seconds instead of a new prediction.

    Args:
        pred_dir: a folder written by ``lazylabels predict`` / :func:`predict_file`.
        interface_threshold: see :class:`PredictConfig`; ``None``: the model's own, read from
            ``lazylabels-predict.json`` (0.5 without that file).
        neck_depth: see :class:`PredictConfig`.
        min_object_size: smallest object in pixels; ``None``: the model's automatic size,
            read from ``lazylabels-predict.json`` (16 px without that file).
        stems: only these images (default: all).

    Returns:
        the instance files written.

    Raises:
        FileNotFoundError: no ``*_classes.png`` (or a requested stem's) in ``pred_dir``.
    """
    import json

    from .io import atomic_write_json, read_label

    # the same checks and messages as a prediction's settings
    PredictConfig(interface_threshold=interface_threshold, min_object_size=min_object_size, neck_depth=neck_depth)
    pred_dir = Path(pred_dir)
    settings_path = pred_dir / PREDICTION_SETTINGS
    try:
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    except ValueError as e:
        raise ValueError(
            f"{settings_path} is not valid JSON ({e}); delete it to cut with the default settings, "
            "or predict again."
        ) from e
    if not isinstance(settings, dict):
        raise ValueError(f"{settings_path} is not a lazylabels predict record; delete it or predict again.")
    interface_threshold, min_object_size = recorded_instance_settings(settings, interface_threshold, min_object_size)
    found = {p.name[: -len("_classes.png")]: p for p in sorted(pred_dir.glob("*_classes.png"))}
    if stems is not None:
        missing = [s for s in stems if s not in found]
        if missing:
            raise FileNotFoundError(f"No predictions of {missing} in {pred_dir}: run lazylabels predict first.")
        found = {s: found[s] for s in stems}
    if not found:
        raise FileNotFoundError(
            f"No *_classes.png in {pred_dir}: give the --out folder of lazylabels predict."
        )
    written = []
    lock = contextlib.ExitStack()
    lock.enter_context(folder_lock(pred_dir, "instances"))
    for stem, cls_path in found.items():
        classes = read_label(cls_path)
        itf_path = pred_dir / f"{stem}_interfaces.tif"
        interfaces = read_image(itf_path) if itf_path.exists() else None
        inst = instances_from_prediction(
            classes, interfaces, interface_threshold, min_object_size, neck_depth=neck_depth
        )
        written.append(write_instances(pred_dir, stem, inst))
        log.info("%s: %d instances", stem, int(inst.max(initial=0)))
    settings.update(interface_threshold=interface_threshold, min_object_size=min_object_size,
                    neck_depth=neck_depth, seed_probability=None)
    atomic_write_json(settings_path, settings)
    lock.close()
    return written


def predict_file(
    predictor: Predictor,
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    save_probabilities: bool | None = None,
    instances: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    large_pixels: int = LARGE_IMAGE_PIXELS,
    image: np.ndarray | None = None,
    stem: str | None = None,
) -> dict[str, Path]:
    """Predict an image file and write the results next to each other in ``out_dir``.

    ``image`` and ``stem`` override the pixels and the output name (used for the slices of a
    stack, see :func:`napari_lazylabels.core.io.read_images`).

    Files (``<stem>`` is the image's file stem), each written atomically:

    * ``<stem>_classes.png``: class map, 8-bit (16-bit for > 256 classes).
    * ``<stem>_instances.png`` 16-bit when there are fewer than 65536 instances, else
      ``<stem>_instances.tif`` (int32).
    * ``<stem>_interfaces.tif``: float32 interface probability (with a separation head).
    * ``<stem>_probabilities.tif``: ``(K, H, W)`` float32, if ``save_probabilities``
      (default: the predictor's ``PredictConfig.save_probabilities``).

    For images above ``large_pixels`` the float maps live in memory-mapped temporary files in
    ``out_dir`` (removed afterwards) and are streamed into tiled TIFFs, so the float maps
    never need to fit in RAM; the input image, class and instance maps do.

    ``out_dir`` is locked while the image is predicted
    (:func:`napari_lazylabels.core.runfolder.folder_lock`: another process predicting into it
    is refused, and temporary files that a killed run left there are removed first). An
    earlier prediction's ``<stem>_*`` file of a kind this one does not write (interfaces of a
    model without a separation head, probabilities when not saved) is removed, so the folder
    never mixes two models' outputs for one image.

    Returns:
        ``{"classes": path, "instances": path, "interfaces": path, "probabilities": path}``
        for the files written.
    """
    image_path, out_dir = Path(image_path), check_writable(out_dir)
    if save_probabilities is None:
        save_probabilities = predictor.predict_config.save_probabilities
    stem = stem or image_path.stem
    image = read_image(image_path) if image is None else as_image(image, what=f"image {stem}")
    h, w = image.shape[:2]
    temps: list[Path] = []
    outputs: dict[str, np.ndarray] = {}
    written: dict[str, Path] = {}
    pred = None
    lock = contextlib.ExitStack()
    lock.enter_context(folder_lock(out_dir, "predict"))
    try:
        if h * w > large_pixels:
            cfg = predictor.config
            k = cfg.n_classes if predictor.main_task != SEPARATION else 2

            def memmap(name: str, shape) -> np.ndarray:
                fd, tmp = tempfile.mkstemp(
                    prefix=f".{stem}_{name}.", suffix=".f32.tmp", dir=out_dir
                )
                temps.append(Path(tmp))  # removed in `finally`, even on SIGTERM
                os.close(fd)
                return np.memmap(tmp, dtype=np.float32, mode="w+", shape=shape)

            outputs[PROBABILITIES] = memmap(PROBABILITIES, (k, h, w))
            if predictor.has_interfaces:
                outputs[INTERFACES] = memmap(INTERFACES, (h, w))
            log.info(
                "Large image %s (%dx%d): float maps memory-mapped in %s",
                image_path.name,
                h,
                w,
                out_dir,
            )
        pred = predictor.predict(
            image, outputs, should_stop=should_stop, progress=progress, instances=instances
        )
        written["classes"] = write_label(out_dir / f"{stem}_classes.png", pred.classes)
        if pred.instances is not None:
            written["instances"] = write_instances(out_dir, stem, pred.instances)
        large = bool(outputs)  # float maps are memmaps: stream them
        if pred.interfaces is not None:
            target = out_dir / f"{stem}_interfaces.tif"
            written["interfaces"] = (
                _atomic_tiff(target, pred.interfaces)
                if large
                else write_image(target, pred.interfaces)
            )
        if save_probabilities:
            # Own streaming writer: pages stay MINISBLACK (a 3-class stack is not RGB).
            written["probabilities"] = _atomic_tiff(
                out_dir / f"{stem}_probabilities.tif", pred.probabilities
            )
        _remove_stale_outputs(out_dir, stem, written)
    finally:
        outputs.clear()  # drop the memmaps before removing their files
        pred = None
        for tmp in temps:
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:  # e.g. still mapped on Windows
                log.warning("Could not remove temporary file %s: %s", tmp, e)
        lock.close()
    log.info("Wrote %s", ", ".join(str(p.name) for p in written.values()))
    return written


def _remove_stale_outputs(out_dir: Path, stem: str, written: dict[str, Path]) -> None:
    """Remove ``<stem>_{instances,interfaces,probabilities}.*`` files that this prediction did
    not write: an earlier run's, whose model they no longer match."""
    for kind in ("instances", INTERFACES, PROBABILITIES):
        if kind in written:
            continue
        for suffix in (".png", ".tif"):
            old = out_dir / f"{stem}_{kind}{suffix}"
            if old.exists():
                old.unlink()
                log.info("Removed %s, left by an earlier prediction", old.name)
