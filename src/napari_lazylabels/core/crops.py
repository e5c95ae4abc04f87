"""Training on large images: only the parts around their labels.

Lazy labels on an SEM montage or a slide scan cover a few places of a 20000 x 20000 image.
Training reads patches around labelled pixels only, yet preparing the whole image for it
(a float copy, a target map per task, the patch sampler's coordinates) costs about 12 bytes
per pixel: 5 GB for 20000^2. :func:`labelled_crops` cuts such an image into the rectangles
its labels need (their tiles, grown by a patch's reach) and gives each crop:

* the intensity range of the **whole** image (:func:`~napari_lazylabels.core.prepare.image_value_range`
  through the caller's ``value_range``), so a crop is normalised exactly as the whole image
  is, in training and in prediction;
* its share of the whole image's patch-sampling weight, so cutting an image does not change
  how often training draws from it.

Only the ``"ignore"`` label mode is cut (unlabelled pixels teach nothing), and never an image
with an exact mask (every pixel of it is labelled).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .io import Sample

log = logging.getLogger(__name__)

CROP_PIXELS = 4096 * 4096
"""Images above this many pixels are cut into the parts around their labels."""

CROP_TILE = 1024
"""Side of the tiles whose labels decide what is kept."""

WORTH_IT = 0.7
"""An image is kept whole when its crops would cover more than this share of it."""


@dataclass
class Crop(Sample):
    """A part of a larger sample (:class:`~napari_lazylabels.core.io.Sample`).

    Attributes:
        value_range: the whole image's intensity range, to normalise with.
        weight: the crop's patch-sampling weight at scale 1 (its share of the whole image's
            ``sqrt(H * W)``).
        origin: ``(y, x)`` of the crop's top-left pixel in the whole image.
    """

    value_range: Any = None
    weight: float | None = None
    origin: tuple[int, int] = (0, 0)


def labelled_crops(
    sample: Sample,
    margin: int,
    value_range: Callable[[np.ndarray], Any],
    tile: int = CROP_TILE,
    max_pixels: int = CROP_PIXELS,
) -> list[Sample]:
    """The parts of ``sample`` that training needs: ``[sample]`` itself when it is small,
    has an exact mask, has no labels or its labels spread over most of it; else one
    :class:`Crop` per group of touching labelled tiles, its bounding box grown by ``margin``.

    Args:
        sample: one image with its label maps.
        margin: pixels of context around the labelled tiles (a patch's reach around a
            labelled pixel at full resolution).
        value_range: the intensity range of a whole ``(H, W[, C])`` image as prediction
            computes it (called once, on ``sample.image``).
        tile, max_pixels: see :data:`CROP_TILE`, :data:`CROP_PIXELS`.
    """
    h, w = sample.shape
    if h * w <= max_pixels or (sample.segmentation is not None and np.any(sample.segmentation)):
        return [sample]
    boxes = _boxes(_labelled_tiles(sample, tile), tile, margin, (h, w))
    area = sum((y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in boxes)
    if not boxes or area > WORTH_IT * h * w:
        return [sample]
    whole_range = value_range(sample.image)
    whole_weight = math.sqrt(h * w)
    crops = []
    for y0, y1, x0, x1 in boxes:
        part = (slice(y0, y1), slice(x0, x1))
        maps = {t: None if getattr(sample, t) is None else np.ascontiguousarray(getattr(sample, t)[part])
                for t in ("detection", "separation", "segmentation")}  # segmentation: empty, as drawn
        crops.append(Crop(
            name=f"{sample.name}@{y0},{x0}", image=np.ascontiguousarray(sample.image[part]), **maps,
            value_range=whole_range, weight=whole_weight * (y1 - y0) * (x1 - x0) / area, origin=(y0, x0),
        ))
    log.info("%s: %dx%d px, trained on the %d part(s) around its labels (%.0f%% of it)", sample.name, h, w,
             len(crops), 100 * area / (h * w))
    return crops


def _labelled_tiles(sample: Sample, tile: int) -> np.ndarray:
    """``(ny, nx)`` bool: the tiles holding a labelled pixel of any task, read a band of
    tile rows at a time."""
    h, w = sample.shape
    ny, nx = -(-h // tile), -(-w // tile)
    out = np.zeros((ny, nx), bool)
    for lab in (sample.detection, sample.separation):
        if lab is None:
            continue
        for i in range(ny):
            band = np.asarray(lab[i * tile : (i + 1) * tile]) > 0
            cols = np.add.reduceat(band.any(0), np.arange(0, w, tile))
            out[i] |= cols > 0
    return out


def _boxes(tiles: np.ndarray, tile: int, margin: int, shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """``(y0, y1, x0, x1)`` pixel boxes of the groups of touching labelled tiles (8
    neighbours), grown by ``margin`` and clipped to ``shape``; boxes that then overlap are
    merged into their bounding box (until none overlap)."""
    from scipy import ndimage

    groups, _ = ndimage.label(tiles, np.ones((3, 3), int))
    boxes = [(max(0, f[0].start * tile - margin), min(shape[0], f[0].stop * tile + margin),
              max(0, f[1].start * tile - margin), min(shape[1], f[1].stop * tile + margin))
             for f in ndimage.find_objects(groups) if f is not None]
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[1] and b[0] < a[1] and a[2] < b[3] and b[2] < a[3]:
                    boxes[i] = (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes
