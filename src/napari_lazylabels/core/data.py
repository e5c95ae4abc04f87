"""From images and lazy labels to training batches: the working scale, sampling, augmentation.

Images are prepared for the network by :func:`napari_lazylabels.core.prepare.prepare_image`,
the recipe prediction uses too.

Patches are cut straight from the whole image with one affine warp (random rescale, rotation
and flips, as in the paper), centred with high probability on annotated pixels so that sparse
scribbles are seen often. The image is interpolated bilinearly with mirrored borders; label
maps use nearest-neighbour and pad with -1 (ignored by the loss).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from .io import Sample
from .labels import SEGMENTATION, SEPARATION, TASKS, training_targets
from .prepare import prepare_image, scaled_shape

log = logging.getLogger(__name__)

IGNORE = -1


# --------------------------------------------------------------------------- working scale
def resize_targets(target: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a training target (class indices, ``-1`` = ignore) to ``shape`` ``(H, W)``.

    Each output pixel takes the class that covers most of its area among the *labelled*
    pixels under it, and is ignored only where no pixel under it is labelled, so thin
    scribbles (1-2 px strokes, interface lines) survive shrinking.
    """
    h, w = shape
    if target.shape == (h, w):
        return target
    if h >= target.shape[0] and w >= target.shape[1]:
        return cv2.resize(target.astype(np.int16), (w, h), interpolation=cv2.INTER_NEAREST).astype(target.dtype)
    best = np.zeros((h, w), np.float32)
    out = np.full((h, w), IGNORE, target.dtype)
    for c in np.unique(target):
        if c < 0:
            continue
        cover = cv2.resize((target == c).astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        win = cover > best
        out[win] = c
        best[win] = cover[win]
    return out


def object_size(samples) -> float | None:
    """Typical object diameter in pixels (median equivalent diameter) of a set of samples.

    Uses the objects of the exact masks (task 3) where there are any, otherwise the length
    (major axis) of the detection marks (task 1), which underestimates objects a little.
    ``None`` when no image has objects.
    """
    from skimage.measure import regionprops

    def sizes(maps, prop):
        out = []
        for lab in maps:
            for part in _occupied_parts((lab >= 2).view(np.uint8)):
                n, comp = cv2.connectedComponents(part, connectivity=8)
                out += [getattr(r, prop) for r in regionprops(comp) if r.area >= 9]
        return out

    masks = [s.segmentation for s in samples if s.segmentation is not None]
    d = sizes(masks, "equivalent_diameter_area")
    if not d:
        d = sizes([s.detection for s in samples if s.detection is not None], "axis_major_length")
    return float(np.median(d)) if d else None


def _occupied_parts(mask: np.ndarray) -> list[np.ndarray]:
    """The parts of a 2D ``mask`` between its empty rows, then between their empty columns:
    no 8-connected component crosses an empty row or column, so labelling the parts gives the
    components of the whole, in memory for the parts only (marks in a few places of a large
    image)."""
    def runs(flags: np.ndarray) -> list[tuple[int, int]]:
        idx = np.flatnonzero(flags)
        if not idx.size:
            return []
        cuts = np.flatnonzero(np.diff(idx) > 1)
        starts, stops = np.r_[idx[0], idx[cuts + 1]], np.r_[idx[cuts], idx[-1]] + 1
        return list(zip(starts.tolist(), stops.tolist(), strict=True))

    parts = []
    for r0, r1 in runs(mask.any(1)):
        band = mask[r0:r1]
        parts += [np.ascontiguousarray(band[:, c0:c1]) for c0, c1 in runs(band.any(0))]
    return parts


#: automatic working scale: a typical object spans at most this share of a training patch
OBJECT_SHARE = 0.5
#: automatic working scale: the image's shorter side keeps at least this many patches
MIN_PATCHES_ACROSS = 2.0


def auto_scale(samples, patch_size: int) -> float:
    """The working scale for a dataset (:func:`scale_for_diameter`) from its typical object
    (:func:`object_size`) and the median shorter side of its images."""
    sides = [min(s.shape) for s in samples if getattr(s, "image", None) is not None]
    return scale_for_diameter(object_size(samples), patch_size, float(np.median(sides)) if sides else None)


def scale_for_diameter(d: float | None, patch_size: int, image_side: float | None = None) -> float:
    """The working scale for objects ``d`` pixels across: ``OBJECT_SHARE * patch_size / d``,
    so the network sees a typical object whole with context around it, but never enlarging
    (at most 1) and never shrinking an image of ``image_side`` pixels (its shorter side) below
    :data:`MIN_PATCHES_ACROSS` patches, where most of a rotated patch would be mirrored
    border and the texture inside objects is lost; at least 1/4. Continuous (two decimals),
    so objects a little larger in one draw of labelled images than in another get a working
    scale a little smaller, not half of it. ``d`` of ``None`` (no objects): 1."""
    if d is None or d <= 0:
        return 1.0
    scale = min(1.0, OBJECT_SHARE * patch_size / d)
    if image_side:
        scale = max(scale, min(1.0, MIN_PATCHES_ACROSS * patch_size / image_side))
    return float(max(0.25, math.floor(scale * 100) / 100))


# --------------------------------------------------------------------------- augmentation
@dataclass(frozen=True)
class AugmentConfig:
    """Random patch augmentation.

    Args:
        patch_size: side of the square training patch; ``None`` picks by device
            (:func:`napari_lazylabels.core.train.device_defaults`: the paper's 256 on a GPU,
            128 on a CPU).
        scale_range: random rescale factor range (zoom of the patch).
        rotate: rotate by a uniform random angle.
        flip: random horizontal/vertical flips.
        intensity: random contrast/brightness jitter amplitude (0 disables).
        color: per-channel gain and offset jitter amplitude for colour (3-channel) images, on
            top of ``intensity``: stain and white-balance differences between slides, patients
            and microscopes (0 disables; gray images are unaffected; its effect on held-out
            GlaS patients is in docs/benchmarks.md).
        labelled_fraction: probability that a patch is centred on an annotated pixel.
        interface_fraction: of those, the share centred on an interface scribble (task 2) in
            images that have some: interface scribbles are a few percent of the annotated
            pixels. Off by default: on DSB (seed 0, 700 steps) 0.3 gave object F1 0.672 and
            pairs separated 0.06 against 0.704 and 0.10 without it.
        mask_share: share of each batch drawn from the images that have exact masks (task 3)
            when only some images have them, so the few exact masks are seen in every batch
            (drawing by image size alone gives them ~ their share of the images, e.g. 1.5
            patches of 16 with 9% exact masks). 0 draws every image by size only.
    """

    patch_size: int | None = None
    scale_range: tuple[float, float] = (0.75, 1.33)
    rotate: bool = True
    flip: bool = True
    intensity: float = 0.1
    color: float = 0.1
    labelled_fraction: float = 0.8
    interface_fraction: float = 0.0
    mask_share: float = 0.5

    def __post_init__(self) -> None:
        if not 0 <= self.mask_share <= 1:
            raise ValueError(f"mask_share is a share of the batch in [0, 1], got {self.mask_share}.")
        if not 0 <= self.interface_fraction <= 1:
            raise ValueError(f"interface_fraction is a probability in [0, 1], got {self.interface_fraction}.")
        if self.intensity < 0 or self.color < 0:
            raise ValueError("intensity and color are jitter amplitudes >= 0.")
        if not 0 <= self.labelled_fraction <= 1:
            raise ValueError(f"labelled_fraction is a probability in [0, 1], got {self.labelled_fraction}.")


class PreparedSample:
    """A sample normalised once for training: image ``(H, W, C)`` float32, targets per task
    ``(H, W)`` int16 with -1 = ignore (``None`` = task not labelled), and annotated pixel
    coordinates for patch sampling; all at the working ``scale`` (see
    :func:`~napari_lazylabels.core.prepare.prepare_image`, :func:`resize_targets`). A
    multi-channel model passes its ``channels`` and ``source_channels``."""

    def __init__(self, sample: Sample, in_channels: int, norm_percentiles, mode: str, tasks, scale: float = 1.0,
                 marks_to_segmentation: bool = False, channels=None, source_channels: int | None = None) -> None:
        self.name = sample.name
        # (H, W, C) for cv2's warps; prepared as prediction prepares it (core.prepare)
        self.image = prepare_image(
            sample.image, in_channels, norm_percentiles, scale, channels_first=False,
            channels=channels, source_channels=source_channels, value_range=getattr(sample, "value_range", None),
        )
        shape = scaled_shape(sample.shape, scale)
        targets = training_targets(sample.detection, sample.separation, sample.segmentation, mode,
                                   marks_to_segmentation=marks_to_segmentation)
        self.targets = {
            t: (None if (v is None or t not in tasks or not np.any(v >= 0)) else resize_targets(v.astype(np.int16), shape))
            for t, v in targets.items()
        }
        labelled = np.zeros(sample.shape, bool)
        for t, v in self.targets.items():
            # In paper mode every pixel of a labelled map counts; sample from the real marks.
            lab = sample.label(t)
            if v is not None and lab is not None:
                labelled |= lab > 0
        if scale != 1:
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
            labelled = cv2.resize(labelled.astype(np.float32), shape[::-1], interpolation=interp) > 0
        ys, xs = np.nonzero(labelled)
        step = max(1, ys.size // 200_000)
        self.labelled_yx = np.stack([ys[::step], xs[::step]], 1).astype(np.int32)
        sep = self.targets.get(SEPARATION)
        iy, ix = np.nonzero(sep == 1) if sep is not None else (np.zeros(0, int), np.zeros(0, int))
        step = max(1, iy.size // 50_000)
        self.interface_yx = np.stack([iy[::step], ix[::step]], 1).astype(np.int32)

        #: has an exact mask (task 3) for the model: the patch sampler's "strong" images
        self.exact = sample.segmentation is not None and SEGMENTATION in tasks
        #: how often the patch sampler draws from it: sqrt of its area (at the working
        #: scale), or a crop's share of its whole image's (core.crops)
        whole = getattr(sample, "weight", None)
        self.weight = whole * scale if whole is not None else math.sqrt(self.shape[0] * self.shape[1])

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if self.targets[t] is not None)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape[:2]


def _affine(center_yx, size: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """2x3 matrix mapping patch pixel (x, y) to image (x, y) for cv2.WARP_INVERSE_MAP."""
    scale = math.exp(rng.uniform(math.log(cfg.scale_range[0]), math.log(cfg.scale_range[1])))
    angle = rng.uniform(0, 2 * math.pi) if cfg.rotate else 0.0
    sx = scale * (-1 if cfg.flip and rng.random() < 0.5 else 1)
    sy = scale * (-1 if cfg.flip and rng.random() < 0.5 else 1)
    c, s = math.cos(angle), math.sin(angle)
    a = np.array([[c * sx, -s * sy], [s * sx, c * sy]])
    half = (size - 1) / 2
    cy, cx = center_yx
    t = np.array([cx, cy]) - a @ np.array([half, half])
    return np.hstack([a, t[:, None]])


def sample_patch(ps: PreparedSample, rng: np.random.Generator, cfg: AugmentConfig):
    """One augmented patch: image ``(C, P, P)`` float32 and ``{task: (P, P) int64 or None}``."""
    h, w = ps.shape
    p = cfg.patch_size
    if ps.labelled_yx.size and rng.random() < cfg.labelled_fraction:
        centres = ps.labelled_yx
        if ps.interface_yx.size and rng.random() < cfg.interface_fraction:
            centres = ps.interface_yx
        cy, cx = centres[rng.integers(len(centres))]
        cy += rng.integers(-p // 4, p // 4 + 1)
        cx += rng.integers(-p // 4, p // 4 + 1)
    else:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    m = _affine((float(cy), float(cx)), p, rng, cfg)
    flags = cv2.WARP_INVERSE_MAP
    img = cv2.warpAffine(ps.image, m, (p, p), flags=flags | cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if img.ndim == 2:
        img = img[..., None]
    if cfg.intensity > 0:
        a = cfg.intensity
        gain = 1 + rng.uniform(-a, a)
        bias = rng.uniform(-a, a)
        img = img * np.float32(gain) + np.float32(bias)
    if cfg.color > 0 and img.shape[-1] == 3:
        a = cfg.color
        gain = (1 + rng.uniform(-a, a, 3)).astype(np.float32)
        bias = rng.uniform(-a, a, 3).astype(np.float32)
        img = img * gain + bias
    targets = {}
    for t, v in ps.targets.items():
        if v is None:
            targets[t] = None
            continue
        warped = cv2.warpAffine(
            v, m, (p, p), flags=flags | cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE
        )
        targets[t] = warped
    return np.ascontiguousarray(np.moveaxis(img, -1, 0)), targets


class PatchSampler:
    """Endless random batches from prepared samples.

    Images are drawn with probability proportional to the square root of their area
    (:attr:`PreparedSample.weight`; the crops of a large image share its weight), so large
    images are seen more often without drowning out small ones; when only some images have
    exact masks, ``cfg.mask_share`` of each batch comes from those (by the same weights).
    """

    def __init__(self, samples: list[PreparedSample], cfg: AugmentConfig, seed: int = 0) -> None:
        if not samples:
            raise ValueError("No labelled images to train on: annotate at least one image.")
        self.samples = samples
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        areas = np.array([s.weight for s in samples], float)
        self.weights = areas / areas.sum()
        strong = np.array([s.exact for s in samples])
        self.strong_weights = None
        if strong.any() and not strong.all() and cfg.mask_share > 0:
            w = np.where(strong, areas, 0.0)
            self.strong_weights = w / w.sum()

    def draw(self, batch_size: int) -> np.ndarray:
        """Indices of the samples of one batch."""
        n_strong = 0 if self.strong_weights is None else int(round(batch_size * self.cfg.mask_share))
        idx = self.rng.choice(len(self.samples), size=batch_size - n_strong, p=self.weights)
        if n_strong:
            idx = np.concatenate([self.rng.choice(len(self.samples), size=n_strong, p=self.strong_weights), idx])
        return idx

    def batch(self, batch_size: int, tasks: tuple[str, ...]):
        """Return ``image (B, C, P, P)`` float32 tensor and ``{task: (B, P, P) int64 tensor}``
        with ``-1`` at ignored pixels and for images not labelled for a task."""
        idx = self.draw(batch_size)
        imgs, tgts = [], {t: [] for t in tasks}
        p = self.cfg.patch_size
        for i in idx:
            img, targets = sample_patch(self.samples[i], self.rng, self.cfg)
            imgs.append(img)
            for t in tasks:
                v = targets.get(t)
                tgts[t].append(np.full((p, p), IGNORE, np.int16) if v is None else v)
        image = torch.from_numpy(np.stack(imgs))
        return image, {t: torch.from_numpy(np.stack(v).astype(np.int64)) for t, v in tgts.items()}
