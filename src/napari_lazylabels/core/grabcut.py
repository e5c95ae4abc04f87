"""Exact task-3 masks from task-1 detection marks with GrabCut (Ke et al., section 3.3).

Each *object* is one 8-connected component of the marks of one foreground class (values
``>= 2`` of a detection map, see :mod:`napari_lazylabels.core.labels`). GrabCut (Rother et al.
2004, OpenCV's :func:`cv2.grabCut`) runs once per object in a local window around its mark,
so the cost grows with the number and size of the objects, not with the image size.

Each object's window is the mark's bounding box grown by ``max(margin, margin_fraction * mark
extent)`` pixels, clipped to the image. In a dense image (EM, crowded nuclei) that window is
full of *other* objects of the object's own colour, so it cannot serve as GrabCut's background
sample; instead each object first gets its *region*: the window pixels whose smoothed colour is
like its mark's (:class:`GrabCutConfig` ``like_mark``) and that are connected to the mark once
bridges narrower than the neck are cut. The region is *enclosed* when it stays off the
window's edges (a cell within its membranes, a nucleus on dark background); if it is not, the
window grows (``grow_window`` times, doubling its margin) in case it was too small for the
object (a click in a large cell). GrabCut's initial mask:

* the object's own mark: sure foreground (``GC_FGD``);
* a band of ``max(probable_radius, probable_fraction * mark extent)`` pixels around the mark,
  and an enclosed region: probable foreground (``GC_PR_FGD``);
* marks of other objects (any class) and background scribbles (value 1): sure background
  (``GC_BGD``);
* when the region is not enclosed (an object among similar colours, e.g. a gland in stroma):
  window edges inside the image are sure background, as in the classic setting;
* everything else: probable background (``GC_PR_BGD``), which then holds what separates
  objects (membranes, dark background, stroma).

An enclosed object's foreground is GrabCut's, kept within 2 px of the region, plus the region
(GrabCut alone shrinks towards a small mark). The foreground is then reduced to the part
8-connected to the mark past the neck cut, its holes are filled, and the mark is always part
of it. Where the foregrounds of several objects overlap, a pixel goes to the object whose mark
is nearest; every mark stays its own object's.

Background (value 1) is written only where GrabCut is *confident*: a pixel that a refined
window leaves out, whose colour is unlike that window's mark and far likelier under GrabCut's
background model than under its foreground model (in a *dense* window, one filled with other
objects of the mark's colour, only in a ring around the object); and only where no refined
window's object
may cover it (its foreground, or a colour like its mark), on no object's mark, and in no
window of an object not refined in this run. Everything else that is not an object stays 0
(not annotated), so an unmarked neighbouring cell of the objects' colour does not become
background; the user's background scribbles are always background.

As the paper notes, GrabCut works well on isolated objects and less well on touching objects
with inhomogeneous boundaries; the result is meant to be corrected by hand.

Typical use::

    seg = refine(image, detection)                          # whole image
    seg = refine(image, detection, region=(rows, cols),     # objects in the current view
                 existing=seg)

For a cancellable background job (e.g. a napari ``thread_worker``), iterate
:func:`refine_iter`, a job (:mod:`~napari_lazylabels.core.jobs`): it yields
``Progress("objects", done, total)`` events and *returns* the map (the generator's
``StopIteration.value``, which napari emits as the worker's ``returned`` signal); a stop
returns the map of the objects done so far.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from .io import as_image
from .jobs import Cancelled, Progress, drive, stoppable
from .labels import BACKGROUND, UNLABELLED, validate_label_map

log = logging.getLogger(__name__)

_MAX_VALUE = int(np.iinfo(np.uint16).max)
_GMM_COMPONENTS = 5  # OpenCV's GrabCut fits 5-component GMMs; k-means needs >= 5 samples.

__all__ = [
    "GrabCutConfig",
    "MarkObject",
    "find_objects",
    "refine",
    "refine_iter",
    "to_uint8_rgb",
]


@dataclass(frozen=True)
class GrabCutConfig:
    """Settings of the mark-seeded GrabCut refinement.

    Args:
        margin: least number of pixels the window grows around a mark's bounding box.
        margin_fraction: the window grows by at least this fraction of the mark's extent
            (the larger side of its bounding box); the larger of the two margins is used.
        iterations: GrabCut iterations per object.
        probable_radius: least width in pixels of the probable-foreground band around a mark.
        probable_fraction: the band is at least this fraction of the mark's extent wide.
        like_mark: a window pixel whose smoothed colour lies within this many standard
            deviations (Mahalanobis distance) of its mark's colours is *like* the mark; the
            like pixels connected to the mark form the object's region (module docstring).
            The spread of a mark of at most 100 pixels counts as at least half the window's
            (a click shows little of its object's texture).
        enclosed_edge: the region is enclosed when at most this share of the window's inner
            edge pixels belong to it (and it covers under 70% of the window).
        grow_window: how many times the window's margin doubles while the region is not
            enclosed.
        fill_region: an enclosed object's foreground includes its whole region (else only
            GrabCut's foreground within 2 px of it).
        border_background: window edges inside the image are sure background when the
            region is not enclosed (the object is assumed to fit in the window).
        smooth: Gaussian sigma in pixels of the smoothing before the colour test (texture).
        keep_connected: keep only the foreground 8-connected to the mark, after cutting
            bridges narrower than ``2 neck + 1`` pixels (leaks through gaps in a membrane or
            into a touching neighbour).
        neck: half-width in pixels of the bridges cut (0 = none).
        neck_fraction: the region's bridges are cut with a half-width of at least this
            fraction of the mark's extent (``neck`` at least).
        background_ratio: a pixel is confident background when GrabCut leaves it out, its
            colour is unlike the mark's (twice ``like_mark``) and at least this many times
            likelier under GrabCut's background model than under its foreground model
            (5 x 5 mean of the log ratio).
        dense_share: a window is *dense* when more than this share of its pixels outside
            the object's foreground are coloured like the mark (twice ``like_mark``): other
            objects fill it.
        dense_ring: in a dense window, confident background only within this many pixels
            of the object's foreground (its membrane or outline).
        fill_holes: fill holes of an object's foreground (never over background scribbles
            or other objects' marks).
        percentiles: low and high intensity percentiles mapped to 0 and 255 when the image
            is not 8-bit.
        seed: seed of OpenCV's random generator (GrabCut's k-means initialisation), set
            before each object so results are reproducible and independent of the order and
            selection of objects; ``None`` leaves OpenCV's generator alone.
    """

    margin: int = 15
    margin_fraction: float = 0.75
    iterations: int = 5
    probable_radius: int = 2
    probable_fraction: float = 0.25
    border_background: bool = True
    like_mark: float = 2.0
    enclosed_edge: float = 0.05
    grow_window: int = 2
    fill_region: bool = True
    smooth: float = 1.5
    keep_connected: bool = True
    neck: int = 2
    neck_fraction: float = 0.15
    fill_holes: bool = True
    percentiles: tuple[float, float] = (1.0, 99.8)
    seed: int | None = 0
    background_ratio: float = 20.0
    dense_share: float = 0.25
    dense_ring: int = 6

    def __post_init__(self) -> None:
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1 pixel, got {self.margin}.")
        if self.margin_fraction < 0:
            raise ValueError(f"margin_fraction must be >= 0, got {self.margin_fraction}.")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}.")
        if self.probable_radius < 0 or self.probable_fraction < 0:
            raise ValueError("probable_radius and probable_fraction must be >= 0.")
        if self.like_mark <= 0 or self.smooth < 0 or self.neck < 0 or self.neck_fraction < 0:
            raise ValueError("like_mark must be > 0; smooth, neck and neck_fraction >= 0.")
        if not 0 <= self.dense_share <= 1 or self.dense_ring < 1:
            raise ValueError("dense_share must lie in [0, 1] and dense_ring be >= 1 pixel.")
        if not 0 <= self.enclosed_edge <= 1 or self.grow_window < 0:
            raise ValueError("enclosed_edge must lie in [0, 1] and grow_window be >= 0.")
        if self.background_ratio < 1:
            raise ValueError(f"background_ratio must be >= 1, got {self.background_ratio}.")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(
                f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}."
            )

    def window_margin(self, extent: int) -> int:
        """Margin in pixels for a mark whose bounding box's larger side is ``extent``."""
        return max(int(self.margin), int(np.ceil(self.margin_fraction * extent)))

    def band_radius(self, extent: int) -> int:
        """Width in pixels of the probable-foreground band for a mark of ``extent``."""
        return max(int(self.probable_radius), int(round(self.probable_fraction * extent)))


@dataclass(frozen=True)
class MarkObject:
    """One object: an 8-connected component of one class's detection marks.

    Attributes:
        index: position in :func:`find_objects`'s list (the id used by ``objects=``).
        value: its label value (class ``value - 1``), ``>= 2``.
        bbox: ``(row0, col0, row1, col1)``, half-open bounding box of the mark.
        area: number of mark pixels.
    """

    index: int
    value: int
    bbox: tuple[int, int, int, int]
    area: int

    @property
    def extent(self) -> int:
        """Larger side of the mark's bounding box, in pixels."""
        return max(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1])


# --------------------------------------------------------------------------- helpers
def _to_uint8(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``image`` scaled to ``uint8``: its ``percentiles`` (of all values) map to 0 and 255."""
    flat = image.reshape(-1)
    step = max(1, flat.size // 2_000_000)  # percentiles from a subsample on huge images
    lo, hi = np.percentile(flat[::step].astype(np.float64), percentiles)
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    image = np.clip((image.astype(np.float32) - np.float32(lo)) * np.float32(scale), 0, 255)
    return (image + 0.5).astype(np.uint8)


def _three_channels(image: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    """``(H, W, 3)`` ``uint8`` of a multi-channel ``(H, W, C)`` image for GrabCut's colour
    model: each channel scaled on its own (:func:`_to_uint8`); 2 channels get a third of
    zeros, more than 3 are projected on their 3 principal components (each scaled again)."""
    chans = np.stack([_to_uint8(image[..., c], percentiles) for c in range(image.shape[-1])], -1)
    if chans.shape[-1] < 3:
        chans = np.concatenate([chans, np.zeros(chans.shape[:2] + (3 - chans.shape[-1],), np.uint8)], -1)
    elif chans.shape[-1] > 3:
        flat = chans.reshape(-1, chans.shape[-1]).astype(np.float32)
        sub = flat[:: max(1, len(flat) // 200_000)]
        _, vectors = np.linalg.eigh(np.cov(sub - sub.mean(0), rowvar=False))
        projected = (flat @ vectors[:, ::-1][:, :3].astype(np.float32)).reshape(chans.shape[:2] + (3,))
        chans = np.stack([_to_uint8(projected[..., c], (0.0, 100.0)) for c in range(3)], -1)
    return np.ascontiguousarray(chans)


def to_uint8_rgb(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Convert an image to the 8-bit 3-channel array GrabCut needs.

    ``uint8`` gray and RGB images are kept as they are; other dtypes are scaled so that the
    ``percentiles`` of all channels together map to 0 and 255 (robust to hot pixels). Gray is
    replicated. A multi-channel image (``C`` not 1 or 3) becomes three channels
    (:func:`_three_channels`).

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, C)`` array of any integer or float dtype.
        percentiles: low and high percentile.

    Returns:
        ``(H, W, 3)`` ``uint8`` C-contiguous array.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] != 3:
        return _three_channels(image, percentiles)
    if image.dtype != np.uint8:
        image = _to_uint8(image, percentiles)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image)


def _components(detection: np.ndarray) -> tuple[np.ndarray, list[MarkObject]]:
    """Label the objects of a detection map.

    Returns:
        ``(H, W)`` ``int32`` map of object index + 1 (0 = no object mark), and the objects.
    """
    ids = np.zeros(detection.shape, np.int32)
    objects: list[MarkObject] = []
    for value in np.unique(detection):
        value = int(value)
        if value <= BACKGROUND:
            continue
        n, comp, stats, _ = cv2.connectedComponentsWithStats(
            (detection == value).astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
        )
        offset = len(objects)
        for k in range(1, n):
            x, y, w, h, area = (int(v) for v in stats[k])
            objects.append(MarkObject(offset + k - 1, value, (y, x, y + h, x + w), area))
        sel = comp > 0
        ids[sel] = comp[sel] + offset
    return ids, objects


def find_objects(detection: np.ndarray) -> list[MarkObject]:
    """List the objects of a detection map, in the order :func:`refine`'s ``objects`` uses.

    Objects are sorted by label value, then by OpenCV's component order (row-major by first
    pixel) within a value.

    Args:
        detection: ``(H, W)`` task-1 map (0 = not annotated, 1 = background, ``c + 1`` = class c).
    """
    detection = np.asarray(detection)
    if detection.ndim != 2:
        raise ValueError(f"The detection map must be 2D (H, W), got shape {detection.shape}.")
    return _components(validate_label_map(detection, detection.shape, _MAX_VALUE, "detection map"))[
        1
    ]


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _log_likelihood(model: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Log-density of ``(N, 3)`` float pixels under one of GrabCut's 5-component GMMs.

    ``model`` is OpenCV's ``(1, 65)`` layout: 5 weights, 5 means (3 each), 5 covariances
    (3 x 3 each). Components with no weight are skipped.
    """
    k = _GMM_COMPONENTS
    weights = model[0, :k]
    means = model[0, k : 4 * k].reshape(k, 3)
    covs = model[0, 4 * k :].reshape(k, 3, 3)
    out = np.full(len(pixels), -np.inf)
    for w, mu, cov in zip(weights, means, covs, strict=True):
        if w <= 0:
            continue
        cov = cov + np.eye(3) * 0.01  # OpenCV regularises singular covariances the same way
        inv = np.linalg.inv(cov)
        d = pixels - mu
        m2 = np.einsum("ni,ij,nj->n", d, inv, d)
        logp = np.log(w) - 0.5 * (m2 + np.log(np.linalg.det(cov)) + 3 * np.log(2 * np.pi))
        out = np.logaddexp(out, logp)
    return out


def _like_mark(smooth: np.ndarray, mark: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels whose smoothed colour lies within ``threshold`` standard deviations of the mark's.

    Args:
        smooth: ``(h, w, 3)`` float32 smoothed window.
        mark: ``(h, w)`` bool, the object's mark.
        threshold: Mahalanobis distance in units of the mark's colour spread.

    Returns:
        ``(h, w)`` bool.
    """
    px = smooth[mark].astype(np.float64)
    mu = px.mean(axis=0)
    cov = np.cov(px, rowvar=False) if len(px) > 1 else np.zeros((3, 3))
    # A small mark (a click) shows little of its object's spread: up to half the window's
    # spread for marks of at most 100 pixels, less for larger marks; at least 6 gray levels.
    share = 0.25 * min(1.0, 100.0 / max(1, len(px)))
    floor = max(36.0, share * float(smooth.reshape(-1, 3).var(axis=0).mean()))
    cov = np.atleast_2d(cov) + np.eye(3) * floor
    d = smooth.reshape(-1, 3).astype(np.float64) - mu
    m2 = np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)
    return (m2 < threshold**2).reshape(mark.shape)


def _keep_with_mark(fg: np.ndarray, mark: np.ndarray, neck: int) -> np.ndarray:
    """The part of ``fg`` 8-connected to ``mark`` once bridges narrower than ``2 neck + 1`` px
    are cut (``fg`` and ``mark`` ``(h, w)`` bool; the mark is always kept)."""
    core = fg
    if neck > 0:
        core = cv2.erode(fg.astype(np.uint8), _disk(neck)).astype(bool) | mark
    _, comp = cv2.connectedComponents(core.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    keep = np.unique(comp[mark])
    core = np.isin(comp, keep[keep > 0])
    if neck > 0:
        core = (cv2.dilate(core.astype(np.uint8), _disk(neck)).astype(bool) & fg) | mark
        _, comp = cv2.connectedComponents(core.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        keep = np.unique(comp[mark])
        core = np.isin(comp, keep[keep > 0])
    return core


def _edges(window: tuple[slice, slice], image_shape: tuple[int, ...]) -> np.ndarray:
    """``(h, w)`` bool: the window's edges that lie inside the image (not on its border)."""
    rows, cols = window
    edge = np.zeros((rows.stop - rows.start, cols.stop - cols.start), bool)
    if rows.start > 0:
        edge[0, :] = True
    if rows.stop < image_shape[0]:
        edge[-1, :] = True
    if cols.start > 0:
        edge[:, 0] = True
    if cols.stop < image_shape[1]:
        edge[:, -1] = True
    return edge


def _object_region(
    smooth: np.ndarray,
    mark: np.ndarray,
    sure_bg: np.ndarray,
    edge: np.ndarray,
    obj: MarkObject,
    config: GrabCutConfig,
) -> tuple[np.ndarray, bool]:
    """The part of a window like the object's mark and connected to it, and whether it is
    *enclosed*: it stays off the window's inner edges (a cell within its membranes, a nucleus
    on dark background), unlike a region that spreads through the window (a gland in stroma
    of similar colours, or a window too small for the object).

    Returns:
        ``(h, w)`` bool region (contains ``mark``), and ``enclosed``.
    """
    neck = max(int(config.neck), int(config.neck_fraction * obj.extent))
    like = _like_mark(smooth, mark, config.like_mark) & ~sure_bg
    region = _keep_with_mark(like, mark, neck)
    enclosed = (
        int((region & edge).sum()) <= config.enclosed_edge * max(1, int(edge.sum()))
        and region.sum() < 0.7 * region.size
    )
    return region, bool(enclosed)


def _grabcut_object(
    rgb: np.ndarray,
    smooth: np.ndarray,
    mark: np.ndarray,
    sure_bg: np.ndarray,
    region: np.ndarray,
    enclosed: bool,
    edge: np.ndarray,
    obj: MarkObject,
    config: GrabCutConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Run GrabCut for one object in its window.

    Args:
        rgb: ``(h, w, 3)`` ``uint8`` window of the image.
        smooth: ``(h, w, 3)`` float32 window of the smoothed image.
        mark: ``(h, w)`` bool, the object's mark.
        sure_bg: ``(h, w)`` bool, background scribbles and other objects' marks.
        region, enclosed: from :func:`_object_region`.
        edge: ``(h, w)`` bool, the window's edges inside the image.
        obj: the object.
        config: settings.

    Returns:
        ``(fg, confident_bg, veto)``, ``(h, w)`` bool each: the object's foreground (always
        contains ``mark``), the pixels this window is confident are background, and the
        pixels its object may cover (its foreground and colours like its mark), where no
        other window may write background.
    """
    h, w = mark.shape
    radius = config.band_radius(obj.extent)
    band = cv2.dilate(mark.astype(np.uint8), _disk(radius)).astype(bool) if radius else mark
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    if enclosed:
        mask[region] = cv2.GC_PR_FGD
    elif config.border_background:
        mask[edge] = cv2.GC_BGD
    mask[band] = cv2.GC_PR_FGD
    mask[sure_bg] = cv2.GC_BGD
    mask[mark] = cv2.GC_FGD
    nothing = np.zeros((h, w), bool)

    is_fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    n_fg = int(is_fg.sum())
    n_bg = mask.size - n_fg
    if n_fg < _GMM_COMPONENTS or n_bg < _GMM_COMPONENTS:
        log.debug(
            "Object %d (value %d): too few foreground (%d) or background (%d) samples for "
            "GrabCut; keeping the part of its window like its mark.",
            obj.index,
            obj.value,
            n_fg,
            n_bg,
        )
        return (region if enclosed else mark.copy()), nothing, ~nothing
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    if config.seed is not None:
        cv2.setRNGSeed(int(config.seed))
    try:
        cv2.grabCut(
            rgb, mask, None, bgd_model, fgd_model, int(config.iterations), cv2.GC_INIT_WITH_MASK
        )
    except cv2.error as exc:  # degenerate samples: keep the mark
        log.debug(
            "GrabCut failed on object %d (value %d): %s; keeping its mark.",
            obj.index,
            obj.value,
            exc,
        )
        return mark.copy(), nothing, ~nothing
    cut = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    fg = (cut & ~sure_bg) | mark
    if enclosed:  # GrabCut does not run past the region's outline (a membrane, an edge)
        fg &= cv2.dilate((region | band).astype(np.uint8), _disk(2)).astype(bool)
        if config.fill_region:
            fg |= region
    if config.keep_connected:
        fg = _keep_with_mark(fg, mark, config.neck)
    if config.fill_holes:
        fg = ndi.binary_fill_holes(fg) & ~sure_bg
        fg |= mark
    # Confident background: GrabCut's background whose colour the background model explains
    # much better than the foreground model (averaged over a small neighbourhood, so that
    # dark specks inside other objects do not count).
    px = rgb.reshape(-1, 3).astype(np.float64)
    llr = (_log_likelihood(bgd_model, px) - _log_likelihood(fgd_model, px)).reshape(h, w)
    llr = cv2.blur(np.clip(llr, -50, 50).astype(np.float32), (5, 5))
    unlike = ~_like_mark(smooth, mark, 2 * config.like_mark)
    confident = ~cut & ~fg & unlike & (llr > np.log(config.background_ratio))
    # In a dense window (much of it coloured like the mark: other cells), what lies beyond the
    # object's own outline is other objects as likely as background; keep only the ring of
    # ``dense_ring`` px around the object's foreground (its membrane).
    if (~unlike & ~fg).sum() > config.dense_share * max(1, int((~fg).sum())):
        confident &= cv2.dilate(fg.astype(np.uint8), _disk(config.dense_ring)).astype(bool)
    return fg, confident, fg | ~unlike


def _window(
    obj: MarkObject, shape: tuple[int, ...], config: GrabCutConfig, margin: int | None = None
) -> tuple[slice, slice]:
    """``(rows, cols)`` slices of an object's window: its mark's bounding box grown by
    ``margin`` (default :meth:`GrabCutConfig.window_margin`), clipped to the image."""
    r0, c0, r1, c1 = obj.bbox
    m = config.window_margin(obj.extent) if margin is None else int(margin)
    return (
        slice(max(0, r0 - m), min(shape[0], r1 + m)),
        slice(max(0, c0 - m), min(shape[1], c1 + m)),
    )


def _select(
    objects: list[MarkObject],
    ids: np.ndarray,
    which: Sequence[int] | None,
    region: tuple[slice, slice] | None,
    label_value: int | None,
) -> list[MarkObject]:
    chosen = objects
    if which is not None:
        wanted = {int(i) for i in which}
        bad = sorted(i for i in wanted if not 0 <= i < len(objects))
        if bad:
            raise ValueError(
                f"Object ids {bad} do not exist; the detection map has {len(objects)} objects "
                "(ids 0..n-1 in find_objects order)."
            )
        chosen = [o for o in chosen if o.index in wanted]
    if label_value is not None:
        chosen = [o for o in chosen if o.value == int(label_value)]
    if region is not None:
        if len(region) != 2 or not all(isinstance(s, slice) for s in region):
            raise ValueError(f"region must be a (rows, cols) pair of slices, got {region!r}.")
        inside = set((np.unique(ids[region[0], region[1]]) - 1).tolist())
        chosen = [o for o in chosen if o.index in inside]
    return chosen


# --------------------------------------------------------------------------- public API
def refine_iter(
    image: np.ndarray,
    detection: np.ndarray,
    config: GrabCutConfig = GrabCutConfig(),
    objects: Sequence[int] | None = None,
    region: tuple[slice, slice] | None = None,
    existing: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    label_value: int | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """Refine detection marks into a task-3 segmentation map, step by step.

    A job (:mod:`~napari_lazylabels.core.jobs`): yields ``Progress("objects", 0, total)``
    first, then ``Progress("objects", done, total)`` after each object, and returns the map
    (``StopIteration.value``; napari's ``thread_worker`` emits it as ``returned``). Closing
    the generator (``worker.quit()``) abandons the job; a stop (``should_stop``, or
    :class:`~napari_lazylabels.core.jobs.Cancelled` thrown in at an event by
    :func:`~napari_lazylabels.core.jobs.drive`) returns the map of the objects done so far.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` image, 8/16-bit integer or float.
        detection: ``(H, W)`` task-1 map: 0 = not annotated, 1 = background scribble,
            ``c + 1`` = mark of class ``c``.
        config: settings, see :class:`GrabCutConfig`.
        objects: refine only these object ids (indices into :func:`find_objects`).
        region: refine only objects whose mark has a pixel in this ``(rows, cols)`` window.
        existing: ``(H, W)`` segmentation map to start from (not modified; a copy is returned).
        should_stop: asked at each event (before each object); when it returns True the map
            is returned with only the windows of the objects done so far written (the objects not done
            count as untouched; without ``existing`` the rest of the map is 0, not annotated).
        label_value: refine only marks of this label value (class ``label_value - 1``).

    Returns:
        ``(H, W)`` ``uint8`` (``uint16`` if values need it) task-3 map: 0 = not annotated
        (GrabCut is not sure), 1 = background (confident, see the module docstring, or a
        background scribble), ``c + 1`` = class ``c``. The map starts from ``existing`` (or
        all 0) and only the chosen objects' windows are written (unrestricted, i.e. no
        ``objects``, ``region``, ``label_value``: every object is chosen, and every
        background scribble is written too); there, a pixel nearer to an untouched object's
        mark than to a chosen one keeps its value, unless it was 0 or 1 and a chosen object's
        foreground covers it. Nearer to a chosen mark, a pixel becomes that object's class,
        or background where confident; an earlier object label there (a stale result) becomes
        0 and an earlier background stays.

    Raises:
        ValueError: shapes of ``image``, ``detection`` and ``existing`` disagree, bad dtypes
            or values, unknown object ids, or a malformed ``region``.
    """
    job = _refine(image, detection, config, objects, region, existing, label_value)
    return (yield from stoppable(job, should_stop))


def _refine(
    image: np.ndarray,
    detection: np.ndarray,
    config: GrabCutConfig,
    objects: Sequence[int] | None,
    region: tuple[slice, slice] | None,
    existing: np.ndarray | None,
    label_value: int | None,
) -> Generator[Progress, None, np.ndarray]:
    """:func:`refine_iter`'s job: check the maps, refine the chosen objects one by one until
    the last or a :class:`~napari_lazylabels.core.jobs.Cancelled` thrown in at an event, then
    write the refined windows into the map."""
    image = as_image(image)
    shape = tuple(image.shape[:2])
    detection = np.asarray(detection)
    if detection.shape != shape:
        raise ValueError(
            f"The detection map has shape {detection.shape} but the image is {shape} (H, W); "
            "the detection map must match the image's height and width."
        )
    detection = validate_label_map(detection, shape, _MAX_VALUE, "detection map")
    restricted = objects is not None or region is not None or label_value is not None
    ids, all_objects = _components(detection)
    chosen = _select(all_objects, ids, objects, region, label_value)
    total = len(chosen)
    out = _start_map(detection, existing, shape)
    log.info(
        "GrabCut refinement of %d of %d objects on a %dx%d image.", total, len(all_objects), *shape
    )
    scribbles = detection == BACKGROUND
    votes = _Votes(shape, len(all_objects))
    try:
        yield Progress("objects", 0, total)
        if total:
            rgb = to_uint8_rgb(image, config.percentiles)
            smooth = rgb.astype(np.float32)
            if config.smooth > 0:
                smooth = cv2.GaussianBlur(smooth, (0, 0), float(config.smooth))
        for done, obj in enumerate(chosen, start=1):
            votes.add(obj, *_refine_object(obj, ids, rgb, smooth, scribbles, config))
            yield Progress("objects", done, total)
    except Cancelled:
        log.info("GrabCut refinement stopped after %d of %d objects.", len(votes.windows), total)
    if votes.windows:
        votes.write(out, ids, all_objects, scribbles, config)
    if not restricted:
        out[scribbles & (votes.fg_owner == 0)] = BACKGROUND
    return out


def _start_map(detection: np.ndarray, existing: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """The ``(H, W)`` map to write into: a copy of ``existing`` (checked) or all 0, ``uint8``
    (``uint16`` when the values need it)."""
    needed = max(int(detection.max(initial=0)), BACKGROUND)
    if existing is not None:
        existing = np.asarray(existing)
        if existing.shape != shape:
            raise ValueError(
                f"The existing segmentation map has shape {existing.shape} but the image is "
                f"{shape} (H, W)."
            )
        existing = validate_label_map(existing, shape, _MAX_VALUE, "existing segmentation map")
        needed = max(needed, int(existing.max(initial=0)))
    dtype = np.uint8 if needed < 256 else np.uint16
    if existing is not None:
        return existing.astype(dtype, copy=True)
    return np.full(shape, UNLABELLED, dtype)


def _refine_object(
    obj: MarkObject,
    ids: np.ndarray,
    rgb: np.ndarray,
    smooth: np.ndarray,
    scribbles: np.ndarray,
    config: GrabCutConfig,
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GrabCut of one object: ``(window, mark, foreground, confident background, veto)``,
    the last four ``(h, w)`` bool in the window."""
    shape = ids.shape
    # The window grows (up to config.grow_window times) until the region like the mark
    # fits in it: a click in a large cell needs a window larger than the click.
    margin = config.window_margin(obj.extent)
    for attempt in range(int(config.grow_window) + 1):
        win = _window(obj, shape, config, margin)
        ids_w = ids[win]
        mark = ids_w == obj.index + 1
        sure_bg = ((ids_w > 0) & ~mark) | scribbles[win]
        edge = _edges(win, shape)
        region, enclosed = _object_region(smooth[win], mark, sure_bg, edge, obj, config)
        if enclosed or not edge.any() or attempt == config.grow_window:
            break
        margin *= 2
    fg, confident, veto = _grabcut_object(
        rgb[win], smooth[win], mark, sure_bg, region, enclosed, edge, obj, config
    )
    return win, mark, fg, confident, veto


class _Votes:
    """What the refined objects say about each pixel, gathered object by object."""

    def __init__(self, shape: tuple[int, int], n_objects: int) -> None:
        self.fg_owner = np.zeros(shape, np.int32)  # object index + 1 owning a foreground pixel
        self.fg_dist = np.full(shape, np.inf, np.float32)  # distance to that owner's mark
        self.ref_dist = np.full(shape, np.inf, np.float32)  # distance to the nearest chosen mark
        self.bg_vote = np.zeros(shape, bool)  # some window is confident the pixel is background
        self.bg_veto = np.zeros(shape, bool)  # some window's object may cover it
        self.windows: list[tuple[slice, slice]] = []
        self.processed = np.zeros(n_objects + 1, bool)  # by object index + 1

    def add(self, obj: MarkObject, win, mark, fg, confident, veto) -> None:
        """Record one refined object (:func:`_refine_object`'s result)."""
        dist = cv2.distanceTransform((~mark).astype(np.uint8), cv2.DIST_L2, 3)
        fd, fo = self.fg_dist[win], self.fg_owner[win]
        take = fg & (dist < fd)
        fo[take] = obj.index + 1
        fd[take] = dist[take]
        np.minimum(self.ref_dist[win], dist, out=self.ref_dist[win])
        self.bg_vote[win] |= confident
        self.bg_veto[win] |= veto
        self.windows.append(win)
        self.processed[obj.index + 1] = True

    def write(self, out, ids, all_objects, scribbles, config: GrabCutConfig) -> None:
        """Write the refined windows into ``out`` (see :func:`refine_iter`'s result)."""
        processed, fg_owner = self.processed, self.fg_owner
        values = np.zeros(len(all_objects) + 1, out.dtype)
        for o in all_objects:
            values[o.index + 1] = o.value
        # Background needs a confident window and no window whose object may cover the pixel
        # (its foreground, or a colour like its mark), and is never written on a mark
        # or inside the window of an object not refined now (its own run decides there).
        background = self.bg_vote & ~self.bg_veto & (ids == 0)
        for o in all_objects:
            if not processed[o.index + 1]:
                background[_window(o, ids.shape, config)] = False
        background |= scribbles
        for win in self.windows:
            ids_w = ids[win]
            untouched = (ids_w > 0) & ~processed[ids_w]
            if untouched.any():
                d_untouched = cv2.distanceTransform((~untouched).astype(np.uint8), cv2.DIST_L2, 3)
            else:
                d_untouched = np.full(ids_w.shape, np.inf, np.float32)
            near = self.ref_dist[win] <= d_untouched
            owner = fg_owner[win]
            is_fg = owner > 0
            cls = values[owner]
            cur = out[win]
            claim = is_fg & (near | (cur <= BACKGROUND))
            # A stale object label of an earlier run near a refined mark goes; earlier
            # background stays unless this run is confident it is part of an object.
            cur[near & ~is_fg & (cur > BACKGROUND)] = UNLABELLED
            cur[near & ~is_fg & background[win]] = BACKGROUND
            cur[claim] = cls[claim]


def refine(
    image: np.ndarray,
    detection: np.ndarray,
    config: GrabCutConfig = GrabCutConfig(),
    objects: Sequence[int] | None = None,
    region: tuple[slice, slice] | None = None,
    existing: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[Progress], None] | None = None,
    label_value: int | None = None,
) -> np.ndarray:
    """Refine detection marks into a task-3 segmentation map with GrabCut.

    See :func:`refine_iter` for the arguments and the result; ``progress`` is called with
    ``Progress("objects", 0, total)`` first and ``Progress("objects", done, total)`` after
    each object.

    Returns:
        ``(H, W)`` ``uint8`` or ``uint16`` task-3 map: 0 = not annotated, 1 = background,
        ``c + 1`` = class ``c``.
    """
    job = refine_iter(
        image, detection, config, objects=objects, region=region, existing=existing,
        should_stop=should_stop, label_value=label_value,
    )
    return drive(job, progress)
