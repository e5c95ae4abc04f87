"""Simulate lazy labels from ground-truth instance masks (Ke et al., sections 3.3 and 4).

A human annotator of lazy labels (:mod:`napari_lazylabels.core.labels`):

* task 1 (detection): marks an inner part of most objects, either as a shrunken blob or as a
  thick scribble along the object's medial axis, always keeping off the boundary, and paints a
  few thick background strokes away from all objects (``ignore`` mode needs negatives);
* task 2 (separation): draws thin scribbles on most interfaces between touching objects;
* task 3 (segmentation): gives exact masks, for a few images only.

:func:`simulate_sample` does this for one instance mask, :func:`simulate_folder` for a folder
of masks and writes a dataset folder (:func:`napari_lazylabels.core.io.save_dataset`).

Touching: two instances *touch* when a pixel of one lies within Chebyshev distance
``touch_distance`` of a pixel of the other, i.e. at most ``touch_distance - 1`` background
pixels lie between them (``touch_distance=1``: 8-neighbours only).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from . import io, runfolder
from .labels import BACKGROUND, INTERFACE, ClassSpec

log = logging.getLogger(__name__)

__all__ = [
    "SimulationConfig",
    "interface_mask",
    "simulate_folder",
    "simulate_sample",
    "touching_pairs",
]


@dataclass(frozen=True)
class SimulationConfig:
    """How lazy labels are drawn from ground truth. Ranges ``(lo, hi)`` are sampled uniformly.

    Attributes:
        shrink: fraction of an object's largest inner distance removed by a blob mark, drawn
            per object (0.3-0.7: the mark covers the core, the rim is left out).
        blob_jitter: relative amplitude of a smooth random field that makes blob outlines
            irregular (0 = exact shrunken shape).
        miss_rate: probability that an object gets no detection mark.
        scribble_fraction: share of (marked) objects marked with a scribble along their medial
            axis instead of a blob.
        stroke_width: width in px of object scribbles, drawn per object (integers, inclusive).
        boundary_gap: object marks keep at least this Euclidean distance (px) from every pixel
            on the object's boundary (objects too thin for it get a mark at their centre).
        background_fraction: share of the background pixels covered by background strokes,
            drawn per image.
        background_width: width in px of background strokes (integers, inclusive).
        background_margin: background strokes stay farther than this (px) from every object
            (lowered where the background is too thin for it).
        touch_distance: objects within this Chebyshev distance (px) touch.
        interface_width: width in px of interface scribbles, drawn per pair (inclusive).
        interface_fraction: probability that the interface of a touching pair is scribbled.
        strong_fraction: share of images with exact masks, used by :func:`simulate_folder`
            when it gets no ``strong_fraction``.
    """

    shrink: tuple[float, float] = (0.3, 0.7)
    blob_jitter: float = 0.2
    miss_rate: float = 0.1
    scribble_fraction: float = 0.5
    stroke_width: tuple[int, int] = (2, 7)
    boundary_gap: float = 2.0
    background_fraction: tuple[float, float] = (0.01, 0.03)
    background_width: tuple[int, int] = (3, 9)
    background_margin: float = 4.0
    touch_distance: int = 2
    interface_width: tuple[int, int] = (1, 3)
    interface_fraction: float = 0.9
    strong_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("shrink", "background_fraction"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(f"{name} must satisfy 0 <= lo <= hi <= 1, got {(lo, hi)}.")
        for name in ("stroke_width", "background_width", "interface_width"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"{name} must satisfy 1 <= lo <= hi (px), got {(lo, hi)}.")
        for name in ("miss_rate", "scribble_fraction", "interface_fraction", "strong_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}.")
        if self.touch_distance < 1:
            raise ValueError(f"touch_distance must be >= 1 px, got {self.touch_distance}.")
        if self.boundary_gap < 1 or self.background_margin < 0 or self.blob_jitter < 0:
            raise ValueError("boundary_gap must be >= 1; background_margin, blob_jitter >= 0.")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- geometry helpers
def _as_instances(instances: np.ndarray) -> np.ndarray:
    inst = np.asarray(instances)
    if inst.ndim != 2 or inst.dtype.kind not in "iub":
        raise ValueError(
            f"Instance masks are 2D integer arrays (0 = background, 1..N = objects); got "
            f"{inst.dtype} {inst.shape}."
        )
    if inst.size and inst.min() < 0:
        raise ValueError("Instance masks must not hold negative values.")
    return inst.astype(np.int32, copy=False)


def _offsets(r: int) -> list[tuple[int, int]]:
    """Half of the (2r+1)^2 window's offsets: each unordered neighbour relation once."""
    return [(0, dx) for dx in range(1, r + 1)] + [
        (dy, dx) for dy in range(1, r + 1) for dx in range(-r, r + 1)
    ]


def _pair_keys(inst: np.ndarray, touch_distance: int) -> np.ndarray:
    """Sorted unique keys ``a * (M + 1) + b`` (a < b, M = max label) of touching pairs."""
    h, w = inst.shape
    m = int(inst.max()) + 1 if inst.size else 1
    keys = []
    for dy, dx in _offsets(int(touch_distance)):
        if dy >= h or abs(dx) >= w:
            continue
        a = inst[: h - dy, max(0, -dx) : w - max(0, dx)]
        b = inst[dy:, max(0, dx) : w - max(0, -dx)]
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            a, b = a[sel].astype(np.int64), b[sel].astype(np.int64)
            keys.append(np.unique(np.minimum(a, b) * m + np.maximum(a, b)))
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def touching_pairs(instances: np.ndarray, touch_distance: int = 2) -> set[tuple[int, int]]:
    """Pairs of instances that touch (see module docstring).

    Args:
        instances: ``(H, W)`` integer instance mask, 0 = background.
        touch_distance: largest Chebyshev distance (px) between pixels of touching objects.

    Returns:
        Set of ``(a, b)`` instance ids with ``a < b``.
    """
    inst = _as_instances(instances)
    m = int(inst.max()) + 1 if inst.size else 1
    keys = _pair_keys(inst, touch_distance)
    return {(int(k // m), int(k % m)) for k in keys}


def _interface_keys(inst: np.ndarray, touch_distance: int) -> tuple[np.ndarray, np.ndarray]:
    """Interface pixels and, per pixel, the key of the touching pair it lies between.

    A pixel is on an interface when two different touching instances lie within Chebyshev
    distance ``ceil(touch_distance / 2)`` of it. Where 3+ instances meet, the pixel is
    attributed to the pair (smallest, largest id) near it.

    Returns:
        ``(mask (H, W) bool, keys (H, W) int64)``, keys 0 off the interface.
    """
    r = max(1, math.ceil(touch_distance / 2))
    size = 2 * r + 1
    m = int(inst.max()) + 1 if inst.size else 1
    hi = ndimage.maximum_filter(inst, size=size, mode="constant", cval=0)
    lo_src = np.where(inst > 0, inst, m)
    lo = ndimage.minimum_filter(lo_src, size=size, mode="constant", cval=m)
    mask = (lo < hi) & (lo < m)
    keys = np.zeros(inst.shape, np.int64)
    keys[mask] = lo[mask].astype(np.int64) * m + hi[mask]
    if 2 * r > touch_distance and mask.any():
        # Two labels within r of one pixel may lie 2r > touch_distance apart: keep touching pairs.
        ok = np.isin(keys[mask], _pair_keys(inst, touch_distance))
        idx = np.flatnonzero(mask)
        mask.flat[idx[~ok]] = False
        keys.flat[idx[~ok]] = 0
    return mask, keys


def interface_mask(instances: np.ndarray, touch_distance: int = 2) -> np.ndarray:
    """Pixels lying between two touching instances.

    A pixel belongs to the interface when two different instances that touch lie within
    Chebyshev distance ``ceil(touch_distance / 2)`` of it: for ``touch_distance=2``, the
    boundary pixels of both objects where they are 8-adjacent, or the background pixels of a
    1-px gap. The mask is exactly empty when no two objects touch.

    Args:
        instances: ``(H, W)`` integer instance mask, 0 = background.
        touch_distance: largest Chebyshev distance (px) between pixels of touching objects.

    Returns:
        ``(H, W)`` bool array.
    """
    return _interface_keys(_as_instances(instances), touch_distance)[0]


def _distance(mask: np.ndarray) -> np.ndarray:
    """Exact Euclidean distance of each ``mask`` pixel to the nearest pixel outside it."""
    return cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _smooth_noise(shape: tuple[int, int], rng: np.random.Generator, cell: int = 24) -> np.ndarray:
    """Smooth random field in about [-1, 1], correlated over ``cell`` px."""
    h, w = shape
    coarse = rng.uniform(-1.0, 1.0, (h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


# --------------------------------------------------------------------------- task 1
def _object_marks(inst: np.ndarray, rng: np.random.Generator, cfg: SimulationConfig) -> np.ndarray:
    """Inner marks of the detected objects, ``(H, W)`` bool."""
    n = int(inst.max())
    # Per-object draws for every id 1..n, so each object's draws do not depend on the others.
    missed = rng.random(n + 1) < cfg.miss_rate
    scribble = rng.random(n + 1) < cfg.scribble_fraction
    shrink = rng.uniform(*cfg.shrink, n + 1)
    width = rng.integers(cfg.stroke_width[0], cfg.stroke_width[1] + 1, n + 1)
    noise = _smooth_noise(inst.shape, rng) if cfg.blob_jitter > 0 else None

    # Interior: the 3x3 neighbourhood holds one label only (boundary pixels, pixels next to
    # another object and the image border are left out). dist: distance to the boundary.
    lo = ndimage.minimum_filter(inst, size=3, mode="constant", cval=0)
    hi = ndimage.maximum_filter(inst, size=3, mode="constant", cval=0)
    interior = (lo == hi) & (inst > 0)
    dist = _distance(interior)
    ids = inst[interior]
    maxd = np.zeros(n + 1, np.float32)
    np.maximum.at(maxd, ids, dist[interior])
    gap = np.minimum(np.float32(cfg.boundary_gap), maxd)  # thin objects: mark the centre only
    marked = ~missed & (maxd > 0)
    marked[0] = False

    # Blobs: the part deeper than a random share of the object's largest depth.
    thr = np.clip(shrink * maxd, gap, maxd).astype(np.float32)
    d = dist[interior]
    t = thr[ids]
    if noise is not None:
        t = np.clip(t * (1 + cfg.blob_jitter * noise[interior]), gap[ids], maxd[ids])
    blob = np.zeros(inst.shape, bool)
    blob[interior] = d >= t

    # Scribbles: a stroke of the object's width along its medial axis, off the boundary.
    use_scribble = scribble & marked
    strokes = np.zeros(inst.shape, bool)
    if use_scribble.any():
        # Spurs of the medial axis run into corners: keep its deeper part only.
        deep = np.clip(0.5 * shrink * maxd, gap, maxd).astype(np.float32)
        skel = skeletonize(interior & use_scribble[inst]) & (dist >= deep[inst])
        if skel.any():
            d_sk, (iy, ix) = ndimage.distance_transform_edt(~skel, return_indices=True)
            strokes = (
                interior
                & use_scribble[inst]
                & (d_sk <= width[inst] / 2.0)
                & (inst[iy, ix] == inst)
                & (dist >= gap[inst])
            )
        # Objects whose stroke came out empty get a blob instead.
        got = np.bincount(inst[strokes], minlength=n + 1) > 0
        use_scribble &= got
    return (blob & marked[inst] & ~use_scribble[inst]) | strokes


def _background_strokes(
    inst: np.ndarray, rng: np.random.Generator, cfg: SimulationConfig
) -> np.ndarray:
    """Thick random-walk strokes in the background, away from every object, ``(H, W)`` bool."""
    h, w = inst.shape
    bg = inst == 0
    n_bg = int(np.count_nonzero(bg))
    target = rng.uniform(*cfg.background_fraction) * n_bg
    out = np.zeros((h, w), np.uint8)
    if n_bg == 0 or target < 1:
        return out.astype(bool)
    if n_bg == bg.size:
        allowed = bg
    else:
        d_obj = _distance(bg)
        margin = float(cfg.background_margin)
        allowed = d_obj > margin
        # Thin background (e.g. membranes): lower the margin until enough pixels are left.
        while margin > 0 and np.count_nonzero(allowed) < 0.05 * n_bg:
            margin = margin // 2 if margin >= 2 else 0.0
            allowed = d_obj > margin
    ys, xs = np.nonzero(allowed)
    if len(ys) == 0:
        return out.astype(bool)
    step_lo, step_hi = 0.02 * min(h, w), 0.06 * min(h, w)
    covered = 0
    for _ in range(200):
        if covered >= target:
            break
        i = int(rng.integers(len(ys)))
        y, x = float(ys[i]), float(xs[i])
        angle = rng.uniform(0, 2 * np.pi)
        pts = [(x, y)]
        for _ in range(int(rng.integers(3, 12))):
            for _try in range(4):
                a = angle + rng.normal(0, 0.5 + _try)
                step = rng.uniform(step_lo, step_hi)
                nx, ny = x + step * np.cos(a), y + step * np.sin(a)
                if 0 <= nx < w and 0 <= ny < h and allowed[int(ny), int(nx)]:
                    x, y, angle = nx, ny, a
                    pts.append((x, y))
                    break
            else:
                break
        width = int(rng.integers(cfg.background_width[0], cfg.background_width[1] + 1))
        poly = np.round(np.array(pts)).astype(np.int32)
        x0, y0 = np.maximum(poly.min(0) - width, 0)
        x1, y1 = poly.max(0) + width + 1
        before = np.count_nonzero(out[y0:y1, x0:x1])
        cv2.polylines(out, [poly.reshape(-1, 1, 2)], False, 1, thickness=width)
        if len(pts) == 1:
            cv2.circle(out, (int(poly[0, 0]), int(poly[0, 1])), max(1, width // 2), 1, -1)
        out[y0:y1, x0:x1] &= allowed[y0:y1, x0:x1]
        covered += np.count_nonzero(out[y0:y1, x0:x1]) - before
    return out.astype(bool)


# --------------------------------------------------------------------------- task 2
def _interface_scribbles(
    inst: np.ndarray, rng: np.random.Generator, cfg: SimulationConfig
) -> np.ndarray:
    """Thin scribbles along the interfaces of a random share of touching pairs, bool."""
    mask, keys = _interface_keys(inst, cfg.touch_distance)
    if not mask.any():
        return mask
    pairs = _pair_keys(inst, cfg.touch_distance)
    drawn = rng.random(len(pairs)) < cfg.interface_fraction
    widths = rng.integers(cfg.interface_width[0], cfg.interface_width[1] + 1, len(pairs))
    idx = np.searchsorted(pairs, keys[mask])
    pick = drawn[idx]
    line = np.zeros(inst.shape, bool)
    line[mask] = pick
    if not line.any():
        return line
    line = skeletonize(line)  # the centre line of the band
    pix_w = np.zeros(inst.shape, np.int8)
    pix_w[mask] = widths[idx]
    out = np.zeros(inst.shape, np.uint8)
    for wd in np.unique(pix_w[line]):
        sel = (line & (pix_w == wd)).astype(np.uint8)
        out |= cv2.dilate(sel, np.ones((int(wd), int(wd)), np.uint8)) if wd > 1 else sel
    return out.astype(bool)


# --------------------------------------------------------------------------- public API
def _value_lut(n: int, classes: Mapping[int, int] | None) -> np.ndarray:
    lut = np.full(n + 1, 2, np.int64)
    lut[0] = BACKGROUND
    if classes:
        for k, c in classes.items():
            if int(c) < 1:
                raise ValueError(f"Class of instance {k} is {c}; object classes are >= 1.")
            if 0 < int(k) <= n:
                lut[int(k)] = int(c) + 1
    if lut.max() > 255:
        raise ValueError("At most 254 object classes are supported.")
    return lut.astype(np.uint8)


def simulate_sample(
    instances: np.ndarray,
    rng: np.random.Generator,
    config: SimulationConfig | None = None,
    strong: bool = False,
    classes: Mapping[int, int] | None = None,
) -> dict[str, np.ndarray | None]:
    """Lazy labels of one image from its instance mask.

    Args:
        instances: ``(H, W)`` integer instance mask, 0 = background, 1..N = objects.
        rng: random generator; the same generator state gives the same labels.
        config: how labels are drawn (default :class:`SimulationConfig`).
        strong: also return the exact mask (task 3).
        classes: instance id -> class index (>= 1); unlisted instances are class 1.

    Returns:
        ``{"detection": (H, W) uint8, "separation": (H, W) uint8 or None,
        "segmentation": (H, W) uint8 or None}``; values follow
        :mod:`napari_lazylabels.core.labels`: detection 0 unlabelled, 1 background stroke,
        class + 1 on object marks; separation 2 on interface scribbles, 0 elsewhere (``None``
        without scribbles); segmentation 1 background, class + 1 on objects (``None`` unless
        ``strong``).
    """
    cfg = config or SimulationConfig()
    inst = _as_instances(instances)
    lut = _value_lut(int(inst.max()) if inst.size else 0, classes)

    detection = np.zeros(inst.shape, np.uint8)
    marks = _object_marks(inst, rng, cfg)
    detection[marks] = lut[inst[marks]]
    detection[_background_strokes(inst, rng, cfg)] = BACKGROUND

    scribbles = _interface_scribbles(inst, rng, cfg)
    separation = None
    if scribbles.any():
        separation = np.where(scribbles, INTERFACE, 0).astype(np.uint8)
    segmentation = lut[inst] if strong else None
    return {"detection": detection, "separation": separation, "segmentation": segmentation}


def _stem_seed(seed: int, stem: str) -> np.random.Generator:
    h = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, h])


def simulate_folder(
    gt_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    strong_fraction: float | None = None,
    seed: int = 0,
    config: SimulationConfig | None = None,
    images_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> io.LazyDataset:
    """Simulate lazy labels for a folder of instance masks and write a dataset folder.

    Args:
        gt_dir: a data set folder holding ``images/`` and ``masks/`` (instance masks, uint16
            PNG, 0 = background), or a folder of masks when ``images_dir`` is given. Images
            and masks pair by file stem.
        out_dir: dataset folder to write (:func:`napari_lazylabels.core.io.save_dataset`,
            classes ``("background", "object")``) plus ``simulation.json``.
        strong_fraction: share of images given exact masks: ``round(fraction * n)`` images,
            at least one when the fraction is > 0 (default ``config.strong_fraction``).
        seed: random seed; the same seed gives the same labels, each image's labels depend
            only on the seed and its stem.
        config: how labels are drawn (default :class:`SimulationConfig`).
        images_dir: folder of the images when ``gt_dir`` holds the masks themselves.
        overwrite: replace the annotations of a dataset already in ``out_dir``; without it
            such a folder is refused before anything is read or written (its labels may be
            hand-drawn).

    Returns:
        The written dataset.

    Raises:
        napari_lazylabels.core.runfolder.OutputExistsError: ``out_dir`` holds a dataset and
            ``overwrite`` is false.
    """
    runfolder.refuse_existing_dataset(out_dir, overwrite)
    cfg = config or SimulationConfig()
    frac = cfg.strong_fraction if strong_fraction is None else float(strong_fraction)
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"strong_fraction must lie in [0, 1], got {frac}.")
    mask_dir, img_dir, masks, stems = _paired_stems(Path(gt_dir), images_dir)
    n = len(stems)
    n_strong = min(n, max(1, round(frac * n))) if frac > 0 else 0
    order = np.random.default_rng(int(seed)).permutation(n)
    strong = {stems[i] for i in order[:n_strong]}

    out = Path(out_dir)
    samples = [_simulated_sample(stem, img_dir, masks[stem], out, seed, cfg, stem in strong) for stem in stems]
    dataset = io.LazyDataset(classes=ClassSpec(("background", "object")), samples=samples)
    io.save_dataset(dataset, out)
    io.atomic_write_json(
        out / "simulation.json",
        {
            "gt_dir": str(gt_dir),
            "images_dir": str(img_dir),
            "seed": int(seed),
            "strong_fraction": frac,
            "n_images": n,
            "strong": sorted(strong),
            "config": cfg.to_dict(),
        },
    )
    log.info("Simulated lazy labels for %d images (%d strong) into %s", n, n_strong, out)
    return dataset

def _paired_stems(gt_dir: Path, images_dir) -> tuple[Path, Path, dict[str, Path], list[str]]:
    """The mask and image folders, the masks by stem, and the sorted stems that have an image."""
    if images_dir is None:
        if not (gt_dir / "masks").is_dir() or not (gt_dir / "images").is_dir():
            raise FileNotFoundError(
                f"{gt_dir} needs images/ and masks/ folders, or pass images_dir= with "
                "gt_dir pointing at the masks."
            )
        mask_dir, img_dir = gt_dir / "masks", gt_dir / "images"
    else:
        mask_dir, img_dir = gt_dir, Path(images_dir)
    masks = {
        p.stem: p
        for p in sorted(mask_dir.iterdir())
        if p.suffix.lower() in io.LABEL_SUFFIXES and not p.name.startswith(".")
    }
    stems = [s for s in sorted(masks) if io._find(img_dir, s, io.IMAGE_SUFFIXES) is not None]
    if len(stems) < len(masks):
        log.warning("%d masks in %s have no image in %s; skipped.", len(masks) - len(stems), mask_dir, img_dir)
    if not stems:
        raise FileNotFoundError(f"No mask in {mask_dir} has an image with the same stem in {img_dir}.")
    return mask_dir, img_dir, masks, stems


def _simulated_sample(
    stem: str, img_dir: Path, mask_path: Path, out: Path, seed: int, cfg: SimulationConfig, strong: bool
) -> io.Sample:
    """One image's simulated labels; its image file is copied into ``out/images``."""
    img_path = io._find(img_dir, stem, io.IMAGE_SUFFIXES)
    image = io.read_image(img_path)
    inst = io.read_label(mask_path)
    if inst.shape != image.shape[:2]:
        raise ValueError(
            f"Mask {mask_path.name} is {inst.shape} but image {img_path.name} is "
            f"{image.shape[:2]} (H, W); masks must match their images."
        )
    labels = simulate_sample(inst, _stem_seed(seed, stem), cfg, strong=strong)
    target = out / "images" / f"{stem}{img_path.suffix.lower()}"
    if target.resolve() != img_path.resolve():
        for old in (out / "images").glob(f"{stem}.*"):
            if old != target:
                old.unlink()
        io.atomic_write_bytes(target, img_path.read_bytes())
    return io.Sample(name=stem, image=image, **labels)

