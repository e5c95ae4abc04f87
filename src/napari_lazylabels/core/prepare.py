"""One way to turn an image into the network's input, for training and prediction alike.

:func:`prepare_image` is the whole recipe: the model's channels (:func:`to_channels`; gray
or RGB is decided once, by :func:`image_channels`; a multi-channel model takes its chosen
channels, :func:`select_channels`), the intensity range from the image *at its own
resolution* (:func:`intensity_range`, a bounded strided subsample; one range per channel for a
multi-channel model, :func:`channel_ranges`), the resize to the model's working scale
(:func:`resize_image`), and the normalisation with that range (:func:`normalize`), at once or,
for prediction above a memory bound, tile by tile (:class:`NormalizedSource`). Training (:class:`~napari_lazylabels.core.data.PreparedSample`)
and prediction (:meth:`~napari_lazylabels.core.predictor.Predictor.prepare`) both call it, so a
model sees its images prepared the same way in both.

Imports numpy, OpenCV and :mod:`~napari_lazylabels.core.io` only (no torch): the widgets use
:func:`image_channels` on the GUI thread.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .io import as_image, channel_count

RANGE_PIXELS = 1_000_000
"""About this many pixels (a strided 2-D subsample of larger images) give an image's intensity
range (:func:`intensity_range`)."""

GRAY_RGB_MESSAGE = (
    "This model was trained on grayscale images but got an RGB image whose channels differ. "
    "Convert the image to grayscale first, or use a model trained on RGB images (in_channels=3)."
)


# --------------------------------------------------------------------------- channels
def equal_channels(image: np.ndarray) -> bool:
    """Whether an ``(H, W, 3)`` image's three channels are equal (a gray image stored as RGB)."""
    return bool(np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]))


def image_channels(image: np.ndarray) -> int:
    """The channels a model for this image takes: 3 for colour (RGB whose channels differ),
    1 for gray (``(H, W)``, ``(H, W, 1)``, or RGB with equal channels), ``C`` for a
    multi-channel ``(H, W, C)`` image (``C`` not 3 or 4).

    The one gray-or-RGB rule: a dataset trains a colour model when any of its images has
    colour (:func:`model_channels`), a gray model takes RGB images with equal channels
    (:func:`to_channels`), and the widgets warn with it. A 4th channel counts as alpha here.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return 1 if equal_channels(image[..., :3]) else 3
    return channel_count(image) if image.ndim == 3 else 1


def _channel_list(channels) -> str:
    return ", ".join(str(c) for c in channels)


def mismatch_message(n: int, channels, source_channels: int | None, in_channels: int, what: str = "the image") -> str:
    """The one-line refusal of an image with ``n`` channels by a model, saying what to do."""
    if channels is None:
        kind = "gray (1-channel)" if in_channels == 1 else "RGB (3-channel)"
        return (
            f"This model was trained on {kind} images, but {what} has {n} channels. Train a model on "
            "these images (the Train widget or `lazylabels train` use their channels), or predict "
            f"{'gray' if in_channels == 1 else 'RGB'} images with it."
        )
    return (
        f"This model was trained on {source_channels}-channel images (it reads channels "
        f"{_channel_list(channels)}), but {what} has {n} channel{'s' if n != 1 else ''}. Predict images "
        f"with the same {source_channels} channels in the same order, or train a model on these images."
    )


def model_channels(images, chosen=None) -> tuple[int, tuple[int, ...] | None, int | None]:
    """The channels of a model for some images: ``(in_channels, channels, source_channels)``
    (the fields of :class:`~napari_lazylabels.core.model.ModelConfig`).

    Gray and RGB images (``C`` of 1 and 3 only, nothing ``chosen``) give a gray model, or a
    colour model when any image has colour (:func:`image_channels`). Multi-channel images
    give a model of all their channels, or of the ``chosen`` ones (each channel then has its
    own intensity range; choosing channels of RGB images does that too).

    Args:
        images: ``(H, W[, C])`` arrays.
        chosen: channel indices to use, in order; ``None``: all.

    Raises:
        ValueError: images with different numbers of channels, or a chosen channel they lack.
    """
    counts = sorted({channel_count(im) for im in images})
    if chosen is None and set(counts) <= {1, 3}:
        return (3 if any(image_channels(im) == 3 for im in images) else 1), None, None
    if len(counts) != 1:
        raise ValueError(
            f"The images have different numbers of channels ({', '.join(map(str, counts))}): a model "
            "takes one kind. Train on images with the same channels."
        )
    n = counts[0]
    channels = tuple(range(n)) if chosen is None else tuple(int(c) for c in chosen)
    if not channels or len(set(channels)) != len(channels) or not all(0 <= c < n for c in channels):
        raise ValueError(
            f"Channels {_channel_list(channels)} do not fit images with {n} channel{'s' if n != 1 else ''}: "
            f"choose distinct channels from 0 to {n - 1}."
        )
    return len(channels), channels, n


def check_channels(image: np.ndarray, in_channels: int, channels=None, source_channels=None, what: str = "the image") -> None:
    """Refuse an image a model cannot take, with :func:`mismatch_message` (one line).

    A gray model takes gray images and RGB ones with equal channels, an RGB model gray and
    RGB images (:func:`to_channels`), a multi-channel model images with ``source_channels``.
    An RGB image with colour for a gray model is refused later, by :func:`to_channels`.

    Raises:
        ValueError: the image's channels do not fit the model.
    """
    n = channel_count(image)
    fits = n == source_channels if channels is not None else n in (1, 3, 4)
    if not fits:
        raise ValueError(mismatch_message(n, channels, source_channels, in_channels, what))


def select_channels(image: np.ndarray, channels, source_channels: int) -> np.ndarray:
    """The ``channels`` of an ``(H, W, C)`` image as ``(H, W, len(channels))`` (a view when
    they are all of them, in order).

    Raises:
        ValueError: the image does not have ``source_channels`` channels (:func:`check_channels`).
    """
    image = as_image(image)
    check_channels(image, len(channels), channels, source_channels)
    if image.ndim == 2:
        return image[..., None]
    if tuple(channels) == tuple(range(image.shape[-1])):
        return image
    return image[..., list(channels)]


def to_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Return ``(H, W, in_channels)``: gray is repeated for RGB models; an RGB image whose
    channels are equal (:func:`image_channels`) becomes gray for gray models.

    Raises:
        ValueError: a colour image for a gray model (says what to do).
    """
    image = as_image(image)
    if image.ndim == 2:
        image = image[..., None]
    c = image.shape[-1]
    if c == in_channels:
        return image
    if in_channels == 3 and c == 1:
        return np.repeat(image, 3, axis=-1)
    if in_channels == 3 and c == 4:  # RGBA: the colours
        return image[..., :3]
    if in_channels == 1 and c in (3, 4):
        if image_channels(image) == 1:
            return image[..., :1]
        raise ValueError(GRAY_RGB_MESSAGE)
    raise ValueError(mismatch_message(c, None, None, in_channels))


def _model_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """The image with the channels it keeps for the model, not yet repeated: ``(H, W)`` for
    gray models (an RGB image with equal channels gives its first), ``(H, W[, 3])`` as it is
    for RGB models (gray is repeated later, at the working scale, by :func:`normalize`)."""
    img = as_image(image)
    check_channels(img, in_channels)
    if img.ndim == 3 and img.shape[-1] == 4:  # RGBA: the colours
        img = img[..., :3]
    if in_channels == 1 and img.ndim == 3:
        if image_channels(img) != 1:
            raise ValueError(GRAY_RGB_MESSAGE)
        img = img[..., 0]
    return img


# --------------------------------------------------------------------------- intensities
def percentiles(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of ``values``; never an empty range (a constant
    image gets ``hi`` a little above ``lo``)."""
    lo, hi = (float(v) for v in np.percentile(values, (low, high)))
    if not hi > lo:  # a constant image; lo + 1 == lo for values above 2**53 (uint64)
        hi = lo + max(1.0, abs(lo) * 1e-6)
    return lo, hi


def intensity_range(
    image: np.ndarray, in_channels: int, norm_percentiles=(1.0, 99.8), max_pixels: int = RANGE_PIXELS
) -> tuple[float, float]:
    """The intensities ``(lo, hi)`` that map to 0 and 1: ``norm_percentiles`` of the image's
    values, over all its channels, in a subsample of about ``max_pixels`` pixels.

    The subsample takes every ``s``-th row and column (``s = floor(sqrt(H W / max_pixels))``),
    then every ``k``-th of those pixels (``k = pixels // max_pixels``); every channel of a
    chosen pixel counts.
    """
    h, w = image.shape[:2]
    s = max(1, int(math.sqrt(h * w / max_pixels)))
    sub = image[::s, ::s]
    if sub.ndim == 2:
        sub = sub[..., None]
    if sub.shape[-1] != in_channels:  # a subsample is not an image (it may be thin): no as_image
        sub = np.repeat(sub, 3, axis=-1) if in_channels == 3 else to_channels(image, in_channels)[::s, ::s]
    pixels = sub.reshape(-1, sub.shape[-1])
    k = max(1, len(pixels) // max_pixels)
    return percentiles(pixels[::k], *norm_percentiles)


def channel_ranges(
    image: np.ndarray, norm_percentiles=(1.0, 99.8), max_pixels: int = RANGE_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel intensity ranges of an ``(H, W, C)`` image: ``(lo, hi)``, each ``(C,)``
    float64, the ``norm_percentiles`` of each channel in the subsample
    :func:`intensity_range` takes (every channel of the same pixels)."""
    h, w = image.shape[:2]
    s = max(1, int(math.sqrt(h * w / max_pixels)))
    pixels = image[::s, ::s].reshape(-1, image.shape[-1])
    pixels = pixels[:: max(1, len(pixels) // max_pixels)]
    ranges = np.array([percentiles(pixels[:, c], *norm_percentiles) for c in range(pixels.shape[1])])
    return ranges[:, 0], ranges[:, 1]


def normalize(
    image: np.ndarray, in_channels: int, norm_percentiles=(1.0, 99.8), value_range=None, channels_first: bool = True
) -> np.ndarray:
    """Normalise an image for the network: ``(x - lo) / (hi - lo)`` in float32.

    Args:
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, in_channels)``, any dtype.
        in_channels: channels the model expects.
        norm_percentiles: these percentiles of the image's intensities map to 0 and 1
            (:func:`intensity_range`).
        value_range: ``(lo, hi)`` to use instead of the image's own (e.g. those of the whole
            image when normalising a tile, or of the image before it was resized); two
            ``(in_channels,)`` arrays give each channel its own (:func:`channel_ranges`).
        channels_first: ``(C, H, W)`` (the network's layout); ``False``: ``(H, W, C)``.

    Returns:
        float32 ``(in_channels, H, W)`` (``(H, W, in_channels)``), C-contiguous.
    """
    img = to_channels(image, in_channels)
    lo, hi = value_range if value_range is not None else intensity_range(img, in_channels, norm_percentiles)
    if np.ndim(lo):  # one range per channel
        span = np.asarray(hi, np.float64) - np.asarray(lo, np.float64)
        inv = (1.0 / np.where(span > 0, span, 1.0)).astype(np.float32)
        out = (img.astype(np.float32) - np.asarray(lo, np.float32)) * inv
    else:
        span = float(hi) - float(lo)
        out = (img.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / span if span > 0 else 1.0)
    return np.ascontiguousarray(np.moveaxis(out, -1, 0) if channels_first else out)


# --------------------------------------------------------------------------- working scale
def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` of an image resized by ``scale`` (at least 1 x 1)."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize an ``(H, W)`` or ``(H, W, C)`` image by ``scale`` (area averaging when shrinking,
    bilinear when enlarging), in its own dtype for uint8, uint16 and float32 (others in
    float32); ``scale == 1`` returns the image itself."""
    if scale == 1:
        return image
    h, w = scaled_shape(image.shape[:2], scale)
    src = image if image.dtype in (np.uint8, np.uint16, np.float32) else image.astype(np.float32)
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return out.reshape((h, w) + image.shape[2:])


# --------------------------------------------------------------------------- the recipe
class NormalizedSource:
    """A :class:`~napari_lazylabels.core.tiling.TileSource` that normalises a raw
    ``(H, W[, C])`` image tile by tile.

    Args:
        image: the raw image, any dtype (not copied), with the model's channels.
        in_channels: channels the model expects.
        value_range: ``(lo, hi)`` intensities mapped to 0 and 1 (from the whole image;
            ``(C,)`` arrays: one range per channel).
    """

    def __init__(self, image: np.ndarray, in_channels: int, value_range: tuple[float, float]) -> None:
        self.image = image
        self.in_channels = in_channels
        self.value_range = value_range
        self.shape = (in_channels, int(image.shape[0]), int(image.shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return normalize(self.image[y0:y1, x0:x1], self.in_channels, value_range=self.value_range)


def prepare_image(
    image: np.ndarray,
    in_channels: int,
    norm_percentiles=(1.0, 99.8),
    scale: float = 1.0,
    eager_bytes: int | None = None,
    channels_first: bool = True,
    channels=None,
    source_channels: int | None = None,
    value_range=None,
) -> np.ndarray | NormalizedSource:
    """An image as the network sees it, at the working scale.

    1. channels: gray models take gray images and RGB images with equal channels
       (:func:`image_channels`); RGB models take RGB, and gray repeated three times;
       multi-channel models (``channels``) take their channels of images with
       ``source_channels`` (:func:`select_channels`);
    2. the intensity range from the image at its own resolution (:func:`intensity_range`;
       one per channel for a multi-channel model, :func:`channel_ranges`);
    3. the resize to ``scale`` (:func:`resize_image`, in the image's dtype);
    4. the normalisation with that range (:func:`normalize`): at once, or tile by tile
       (a :class:`NormalizedSource`) when the float32 copy would exceed ``eager_bytes``.

    Args:
        image: ``(H, W)`` or ``(H, W, 3)``, any dtype.
        in_channels: channels the model expects (1 or 3).
        norm_percentiles: percentiles that map to 0 and 1.
        scale: the model's working scale.
        eager_bytes: ``None``: always at once (training); else the largest float32 copy
            made at once (prediction).
        channels_first: ``(C, H, W)``, the network's layout (``False``: ``(H, W, C)``, for
            training's patch warps; only for the eager result).
        value_range: the intensity range to use instead of the image's own: that of the
            whole image when ``image`` is one block of it (:func:`image_value_range`).

    Returns:
        float32 ``(C, h, w)`` (``(h, w, C)``) at the working scale, or a lazy
        :class:`NormalizedSource` of that shape.

    Raises:
        ValueError: an image whose channels the model does not take (:func:`check_channels`;
            an RGB image whose channels differ for a gray model), or an invalid image.
    """
    if channels is None:
        img = _model_channels(image, in_channels)
        if value_range is None:
            value_range = intensity_range(img, in_channels, norm_percentiles)
    else:
        img = select_channels(image, channels, source_channels)
        if value_range is None:
            value_range = channel_ranges(img, norm_percentiles)
    img = resize_image(img, scale)
    h, w = img.shape[:2]
    if eager_bytes is not None and in_channels * h * w * 4 > eager_bytes:
        return NormalizedSource(img, in_channels, value_range)
    return normalize(img, in_channels, value_range=value_range, channels_first=channels_first)


def image_value_range(
    image, in_channels: int, norm_percentiles=(1.0, 99.8), channels=None, source_channels: int | None = None,
    max_pixels: int = RANGE_PIXELS,
):
    """The intensity range :func:`prepare_image` takes from a whole image, read from a lazy
    one (a zarr, dask or memory-mapped ``(H, W[, C])`` array) without loading it: the same
    strided subsample of about ``max_pixels`` pixels (every ``s``-th row and column), then
    the same percentiles, so block by block prediction normalises every block as the whole
    image would be."""
    h, w = image.shape[:2]
    s = max(1, int(math.sqrt(h * w / max_pixels)))
    sub = np.asarray(image[::s, ::s])
    if channels is None:
        return intensity_range(_model_channels(sub, in_channels), in_channels, norm_percentiles, max_pixels)
    return channel_ranges(select_channels(sub, channels, source_channels), norm_percentiles, max_pixels)
