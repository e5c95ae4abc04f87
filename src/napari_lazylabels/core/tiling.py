"""Gaussian-blended sliding-window inference over whole images, in bounded memory.

Inference follows Ke et al. (section 4.1): the network sees ``tile x tile`` patches (256 by
default) that overlap; each patch's outputs are weighted by a Gaussian centred on the patch
(pixels near a patch's border are harder to classify) and the weighted patches are averaged
into whole-image maps.

Memory stays bounded for very large images (e.g. 16k x 16k):

* :func:`iter_sliding_window` walks the tiles row by row and keeps only a rolling *band* of
  accumulators (weighted sums and the weight sum, float32) for the image rows that can still
  receive tiles: about ``tile + stride * (rows spanned by one batch)`` rows of the image's
  width. When rows become final they are divided by their weight and written into the
  ``outputs`` arrays, which may be ``np.memmap`` files the caller preallocated.
* The input may be a lazy :class:`TileSource`;
  :class:`~napari_lazylabels.core.prepare.NormalizedSource` normalises a raw image tile by
  tile, so no float copy of the whole image is made.
* :func:`resize_maps` and :func:`argmax_rows` work on whole-image maps band by band, so they
  too run on memory-mapped arrays with small temporaries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from .jobs import Cancelled, Progress, drive

log = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], dict[str, torch.Tensor]]
"""A batch of tiles ``(B, C, P, P)`` float32 to ``{name: (B, K, P, P)}`` per-pixel outputs."""

SIGMA_SCALE = 0.125
"""Standard deviation of the Gaussian blending weight, as a fraction of the tile side."""

BAND_BYTES = 32 * 2**20
"""Sliding window: bytes per channel of the band of weighted sums held in memory."""


# --------------------------------------------------------------------------- geometry
def gaussian_importance_map(
    patch_size: tuple[int, int], sigma_scale: float = SIGMA_SCALE, min_weight: float = 1e-3
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
def _batches(ys: Sequence[int], xs: Sequence[int], batch_size: int) -> list[list[tuple[int, int]]]:
    tiles = [(y, x) for y in ys for x in xs]
    return [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]


class _Band:
    """The rolling band of accumulators of :func:`iter_sliding_window`.

    It holds image rows ``[y0, y0 + cap)`` of the padded ``(hp, wp)`` image: per output a
    ``(K, cap, wp)`` weighted sum and one ``(cap, wp)`` weight sum. They are CPU float32
    tensors, so their adds and divisions use every thread and release the interpreter lock.
    Final rows are divided by their weight into ``(K, H, W)`` views of the outputs.
    """

    def __init__(self, h: int, w: int, cap: int, wp: int) -> None:
        self.h, self.w, self.cap, self.wp = h, w, cap, wp
        self.y0 = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.views: dict[str, np.ndarray] = {}
        self.wsum = torch.zeros((cap, wp), dtype=torch.float32)

    def allocate(self, weighted: dict[str, torch.Tensor], outputs: dict[str, np.ndarray]) -> None:
        """Create the sums of the first batch's outputs, and the ``outputs`` arrays missing
        (plain arrays); check the shapes of those given."""
        h, w = self.h, self.w
        unknown = set(outputs) - set(weighted)
        if unknown:
            raise ValueError(f"outputs has {sorted(unknown)} but forward returns {sorted(weighted)}.")
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
            self.views[name] = view
            self.sums[name] = torch.zeros((k, self.cap, self.wp), dtype=torch.float32)

    def add(
        self, batch: list[tuple[int, int]], weighted: dict[str, torch.Tensor], weight: torch.Tensor
    ) -> None:
        """Add a batch's weighted tiles ``{name: (B, K, tile, tile)}`` at their ``(y, x)``."""
        tile = weight.shape[-1]
        for i, (y, x) in enumerate(batch):
            r = y - self.y0
            self.wsum[r : r + tile, x : x + tile] += weight
            for name, t in weighted.items():
                self.sums[name][:, r : r + tile, x : x + tile] += t[i]

    def flush(self, upto: int) -> None:
        """Write rows ``[y0, upto)`` out and shift the band down the image to start at ``upto``."""
        n = upto - self.y0
        if n <= 0:
            return
        lo, hi = self.y0, min(upto, self.h)
        if hi > lo:
            wrow = self.wsum[: hi - lo, : self.w]
            for name, acc in self.sums.items():
                torch.div(acc[:, : hi - lo, : self.w], wrow, out=torch.from_numpy(self.views[name][:, lo:hi]))
        keep = self.cap - n
        # torch ops, which release the interpreter lock (a viewer's main thread keeps running);
        # the kept rows are cloned first, as source and destination may overlap.
        for acc in [*self.sums.values(), self.wsum[None]]:
            if keep > 0:
                acc[:, :keep] = acc[:, n : self.cap].clone()
            acc[:, max(keep, 0) :].zero_()
        self.y0 = upto


def _weighted_batch(
    src: TileSource,
    forward: Forward,
    batch: list[tuple[int, int]],
    tile: int,
    weights: dict[torch.device, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Run ``forward`` on a batch of tiles (padded at the image's border) and weight its
    outputs: ``{name: (B, K, tile, tile)}`` float32 CPU tensors. ``weights`` holds the
    ``(tile, tile)`` weight per device (the CPU's given; others added when first needed)."""
    _, h, w = src.shape
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
            if t.device not in weights:
                weights[t.device] = weights[torch.device("cpu")].to(t.device)
            weighted[name] = (t.float() * weights[t.device]).cpu()
    return weighted


def iter_sliding_window(
    image: np.ndarray | TileSource,
    forward: Forward,
    outputs: dict[str, np.ndarray] | None = None,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    sigma_scale: float = SIGMA_SCALE,
) -> Iterator[Progress]:
    """Generator form of :func:`sliding_window` (the same arguments).

    Yields ``Progress("tiles", done_tiles, total_tiles)`` after each batch and *returns* the
    outputs dict (``result = yield from iter_sliding_window(...)``).
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
    # Rows [y0, y0 + cap) are held; a batch needs [first y, last y + tile). The band holds at
    # least BAND_BYTES per channel (all of a 1024-wide image of up to 8192 rows), so it is
    # shifted (an overlapping copy of the held rows) rarely or never.
    cap = min(hp, max(max(b[-1][0] + tile - b[0][0] for b in batches), BAND_BYTES // (4 * wp)))
    cpu = torch.device("cpu")
    weights = {cpu: torch.from_numpy(gaussian_importance_map((tile, tile), sigma_scale))}
    outputs = {} if outputs is None else outputs
    band = _Band(h, w, cap, wp)
    log.debug("sliding window: %dx%d, %d tiles, band of %d rows", h, w, total, cap)
    done = 0
    for batch in batches:
        if batch[-1][0] + tile > band.y0 + cap:
            band.flush(batch[0][0])
        weighted = _weighted_batch(src, forward, batch, tile, weights)
        if not band.sums:  # first batch
            band.allocate(weighted, outputs)
        band.add(batch, weighted, weights[cpu])
        done += len(batch)
        yield Progress("tiles", done, total)
    band.flush(hp)
    return outputs


def sliding_window(
    image: np.ndarray | TileSource,
    forward: Forward,
    outputs: dict[str, np.ndarray] | None = None,
    tile: int = 256,
    overlap: float = 0.25,
    batch_size: int = 8,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[Progress], None] | None = None,
    sigma_scale: float = SIGMA_SCALE,
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
        should_stop: asked before the first and after every batch; when it returns True
            :class:`~napari_lazylabels.core.jobs.Cancelled` is raised.
        progress: called with ``Progress("tiles", done_tiles, total_tiles)`` after every
            batch.
        sigma_scale: Gaussian sigma as a fraction of ``tile``.

    Returns:
        ``{name: (K, H, W) float32}``, the weighted average of the patch outputs (the
        ``outputs`` dict, completed).
    """
    if should_stop is not None and should_stop():
        raise Cancelled("Prediction cancelled.")
    gen = iter_sliding_window(image, forward, outputs, tile, overlap, batch_size, sigma_scale)
    return drive(gen, progress, should_stop)


# --------------------------------------------------------------------------- whole-image maps
def resize_maps(src: np.ndarray, dst: np.ndarray, rows: int = 256) -> np.ndarray:
    """Bilinearly resize float maps ``src`` ``(K, h, w)`` into ``dst`` ``(K, H, W)`` (e.g. a
    model's working-scale output back to the image's size), band by band, so that ``dst`` may
    be a memory-mapped array and the temporaries stay small.

    Pixel centres are aligned as in ``cv2.resize`` (``align_corners=False``); borders are
    replicated. Returns ``dst``.
    """
    return drive(iter_resize_maps(src, dst, rows))


def iter_resize_maps(src: np.ndarray, dst: np.ndarray, rows: int = 256) -> Iterator[Progress]:
    """Generator form of :func:`resize_maps`: yields ``Progress("resizing", band, bands)``
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
        yield Progress("resizing", y0 // rows + 1, bands)
    return dst


def argmax_rows(probs: np.ndarray, rows: int = 512) -> np.ndarray:
    """``argmax`` over the class axis of ``(K, H, W)`` maps band by band (bounded for memmaps):
    ``(H, W)`` uint8 (uint16 for more than 256 classes)."""
    return drive(iter_argmax_rows(probs, rows))


def iter_argmax_rows(probs: np.ndarray, rows: int = 512) -> Iterator[Progress]:
    """Generator form of :func:`argmax_rows`: yields ``Progress("classes", band, bands)``
    after each band of ``rows`` rows and returns the ``(H, W)`` class map."""
    k, h, w = probs.shape
    dtype = np.uint8 if k <= 256 else np.uint16
    out = np.empty((h, w), dtype)
    bands = max(1, -(-h // rows))
    for i, y in enumerate(range(0, h, rows)):
        out[y : y + rows] = np.argmax(probs[:, y : y + rows], axis=0)
        yield Progress("classes", i + 1, bands)
    return out
