"""Exact task-3 masks from task-1 detection marks with GrabCut (Ke et al., section 3.3).

Each *object* is one 8-connected component of the marks of one foreground class (values
``>= 2`` of a detection map, see :mod:`napari_lazylabels.core.labels`). GrabCut (Rother et al.
2004, OpenCV's :func:`cv2.grabCut`) runs once per object in a local window around its mark,
so the cost grows with the number and size of the objects, not with the image size.

GrabCut's initial mask in an object's window (the window is the mark's bounding box grown by
``max(margin, margin_fraction * mark extent)`` pixels, clipped to the image):

* the object's own mark: sure foreground (``GC_FGD``);
* a band of ``max(probable_radius, probable_fraction * mark extent)`` pixels around the mark:
  probable foreground (``GC_PR_FGD``);
* marks of other objects (any class) and background scribbles (value 1): sure background
  (``GC_BGD``);
* window edges that lie inside the image (not on the image border): sure background, except
  where the mark or its band reaches them;
* everything else: probable background (``GC_PR_BGD``).

GrabCut's foreground is reduced to the part 8-connected to the mark (an unmarked neighbour of
the same colour in the window is not taken), its holes are filled, and the mark is always part
of it. Where the foregrounds of several objects overlap, a pixel goes to the object whose mark
is nearest; every mark stays its own object's.

As the paper notes, GrabCut works well on isolated objects and less well on touching objects
with inhomogeneous boundaries; the result is meant to be corrected by hand.

Typical use::

    seg = refine(image, detection)                          # whole image
    seg = refine(image, detection, region=(rows, cols),     # objects in the current view
                 existing=seg)

For a cancellable background job (e.g. a napari ``thread_worker``), iterate
:func:`refine_iter`: it yields ``(done, total)`` progress tuples and *returns* the map (the
generator's ``StopIteration.value``, which napari emits as the worker's ``returned`` signal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi

from .io import as_image
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
        border_background: window edges inside the image are sure background (the object is
            assumed to fit in the window).
        keep_connected: keep only the foreground 8-connected to the mark.
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
    keep_connected: bool = True
    fill_holes: bool = True
    percentiles: tuple[float, float] = (1.0, 99.8)
    seed: int | None = 0

    def __post_init__(self) -> None:
        if self.margin < 1:
            raise ValueError(f"margin must be >= 1 pixel, got {self.margin}.")
        if self.margin_fraction < 0:
            raise ValueError(f"margin_fraction must be >= 0, got {self.margin_fraction}.")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}.")
        if self.probable_radius < 0 or self.probable_fraction < 0:
            raise ValueError("probable_radius and probable_fraction must be >= 0.")
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
def to_uint8_rgb(image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8)) -> np.ndarray:
    """Convert an image to the 8-bit 3-channel array GrabCut needs.

    ``uint8`` images are kept as they are; other dtypes are scaled so that the ``percentiles``
    of all channels together map to 0 and 255 (robust to hot pixels). Gray is replicated.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` array of any integer or float dtype.
        percentiles: low and high percentile.

    Returns:
        ``(H, W, 3)`` ``uint8`` C-contiguous array.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        flat = image.reshape(-1)
        step = max(1, flat.size // 2_000_000)  # percentiles from a subsample on huge images
        lo, hi = np.percentile(flat[::step].astype(np.float64), percentiles)
        if not hi > lo:
            lo, hi = float(flat.min()), float(flat.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        image = np.clip((image.astype(np.float32) - np.float32(lo)) * np.float32(scale), 0, 255)
        image = (image + 0.5).astype(np.uint8)
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


def _grabcut_object(
    rgb: np.ndarray,
    mark: np.ndarray,
    sure_bg: np.ndarray,
    obj: MarkObject,
    window: tuple[slice, slice],
    image_shape: tuple[int, int],
    config: GrabCutConfig,
) -> np.ndarray:
    """Run GrabCut for one object in its window.

    Args:
        rgb: ``(h, w, 3)`` ``uint8`` window of the image.
        mark: ``(h, w)`` bool, the object's mark.
        sure_bg: ``(h, w)`` bool, background scribbles and other objects' marks.
        obj: the object.
        window: the window's ``(rows, cols)`` slices in the image.
        image_shape: the image's ``(H, W)``.
        config: settings.

    Returns:
        ``(h, w)`` bool foreground of the object (always contains ``mark``).
    """
    h, w = mark.shape
    radius = config.band_radius(obj.extent)
    mask = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
    if config.border_background:
        rows, cols = window
        edge = np.zeros((h, w), bool)
        if rows.start > 0:
            edge[0, :] = True
        if rows.stop < image_shape[0]:
            edge[-1, :] = True
        if cols.start > 0:
            edge[:, 0] = True
        if cols.stop < image_shape[1]:
            edge[:, -1] = True
        mask[edge] = cv2.GC_BGD
    if radius > 0:
        band = cv2.dilate(mark.astype(np.uint8), _disk(radius)).astype(bool)
        mask[band] = cv2.GC_PR_FGD
    mask[sure_bg] = cv2.GC_BGD
    mask[mark] = cv2.GC_FGD

    is_fg = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
    n_fg = int(is_fg.sum())
    n_bg = mask.size - n_fg
    if n_fg < _GMM_COMPONENTS or n_bg < _GMM_COMPONENTS:
        log.debug(
            "Object %d (value %d): too few foreground (%d) or background (%d) samples for "
            "GrabCut; keeping its mark.",
            obj.index,
            obj.value,
            n_fg,
            n_bg,
        )
        return mark.copy()
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
        return mark.copy()
    fg = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)) & ~sure_bg
    fg |= mark
    if config.keep_connected:
        _, comp = cv2.connectedComponents(fg.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        keep = np.unique(comp[mark])
        fg = np.isin(comp, keep[keep > 0])
    if config.fill_holes:
        fg = ndi.binary_fill_holes(fg) & ~sure_bg
        fg |= mark
    return fg


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
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Refine detection marks into a task-3 segmentation map, step by step.

    A generator: yields ``(0, total)`` first, then ``(done, total)`` after each object, and
    returns the map (``StopIteration.value``; napari's ``thread_worker`` emits it as
    ``returned``). Closing the generator (``worker.quit()``) abandons the job; returning early
    through ``should_stop`` gives the map of the objects done so far.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)`` image, 8/16-bit integer or float.
        detection: ``(H, W)`` task-1 map: 0 = not annotated, 1 = background scribble,
            ``c + 1`` = mark of class ``c``.
        config: settings, see :class:`GrabCutConfig`.
        objects: refine only these object ids (indices into :func:`find_objects`).
        region: refine only objects whose mark has a pixel in this ``(rows, cols)`` window.
        existing: ``(H, W)`` segmentation map to start from (not modified; a copy is returned).
        should_stop: called before each object; when it returns True the map is returned
            with only the windows of the objects done so far written (the objects not done
            count as untouched; without ``existing`` the rest of the map is 0, not annotated).
        label_value: refine only marks of this label value (class ``label_value - 1``).

    Returns:
        ``(H, W)`` ``uint8`` (``uint16`` if values need it) task-3 map: 1 = background,
        ``c + 1`` = class ``c``. Unrestricted (no ``objects``, ``region``, ``label_value``):
        every object's window is written (foreground and background) and pixels outside
        all windows are background, or keep ``existing``'s values when it is given.
        Restricted: the map starts from ``existing`` (or all 0 = not annotated) and only the
        chosen objects' windows are written; there, a pixel nearer to an untouched object's
        mark than to a chosen one keeps its value, unless it was 0 or 1 and a chosen object's
        foreground covers it. Stale pixels of a chosen object's earlier result (nearer to its
        mark) are overwritten.

    Raises:
        ValueError: shapes of ``image``, ``detection`` and ``existing`` disagree, bad dtypes
            or values, unknown object ids, or a malformed ``region``.
    """
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
        out = existing.astype(dtype, copy=True)
    elif restricted:
        out = np.full(shape, UNLABELLED, dtype)
    else:
        out = np.full(shape, BACKGROUND, dtype)

    log.info(
        "GrabCut refinement of %d of %d objects on a %dx%d image.", total, len(all_objects), *shape
    )
    yield (0, total)
    if total == 0:
        return out

    rgb = to_uint8_rgb(image, config.percentiles)
    values = np.zeros(len(all_objects) + 1, dtype)
    for o in all_objects:
        values[o.index + 1] = o.value

    fg_owner = np.zeros(shape, np.int32)  # object index + 1 owning a foreground pixel
    fg_dist = np.full(shape, np.inf, np.float32)  # distance to that owner's mark
    ref_dist = np.full(shape, np.inf, np.float32)  # distance to the nearest chosen mark
    windows: list[tuple[slice, slice]] = []
    processed = np.zeros(len(all_objects) + 1, bool)  # by object index + 1

    for done, obj in enumerate(chosen, start=1):
        if should_stop is not None and should_stop():
            log.info("GrabCut refinement stopped after %d of %d objects.", done - 1, total)
            if existing is None and not restricted:
                # Objects not done must not come out as background: only the windows of the
                # objects done are annotated.
                out[:] = UNLABELLED
            break
        r0, c0, r1, c1 = obj.bbox
        m = config.window_margin(obj.extent)
        win = (
            slice(max(0, r0 - m), min(shape[0], r1 + m)),
            slice(max(0, c0 - m), min(shape[1], c1 + m)),
        )
        ids_w = ids[win]
        mark = ids_w == obj.index + 1
        sure_bg = ((ids_w > 0) & ~mark) | (detection[win] == BACKGROUND)
        fg = _grabcut_object(rgb[win], mark, sure_bg, obj, win, shape, config)

        dist = cv2.distanceTransform((~mark).astype(np.uint8), cv2.DIST_L2, 3)
        fd, fo = fg_dist[win], fg_owner[win]
        take = fg & (dist < fd)
        fo[take] = obj.index + 1
        fd[take] = dist[take]
        np.minimum(ref_dist[win], dist, out=ref_dist[win])
        windows.append(win)
        processed[obj.index + 1] = True
        yield (done, total)

    # Write the processed windows into the map.
    for win in windows:
        ids_w = ids[win]
        untouched = (ids_w > 0) & ~processed[ids_w]
        if untouched.any():
            d_untouched = cv2.distanceTransform((~untouched).astype(np.uint8), cv2.DIST_L2, 3)
        else:
            d_untouched = np.full(ids_w.shape, np.inf, np.float32)
        near = ref_dist[win] <= d_untouched
        owner = fg_owner[win]
        is_fg = owner > 0
        cls = values[owner]
        cur = out[win]
        claim = is_fg & (near | (cur <= BACKGROUND))
        cur[near & ~is_fg] = BACKGROUND
        cur[claim] = cls[claim]
    return out


def refine(
    image: np.ndarray,
    detection: np.ndarray,
    config: GrabCutConfig = GrabCutConfig(),
    objects: Sequence[int] | None = None,
    region: tuple[slice, slice] | None = None,
    existing: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
    label_value: int | None = None,
) -> np.ndarray:
    """Refine detection marks into a task-3 segmentation map with GrabCut.

    See :func:`refine_iter` for the arguments and the result; ``progress(done, total)`` is
    called with ``done = 0`` first and after each object.

    Returns:
        ``(H, W)`` ``uint8`` or ``uint16`` task-3 map: 1 = background, ``c + 1`` = class ``c``.
    """
    gen = refine_iter(
        image,
        detection,
        config,
        objects=objects,
        region=region,
        existing=existing,
        should_stop=should_stop,
        label_value=label_value,
    )
    while True:
        try:
            done, total = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(done, total)
