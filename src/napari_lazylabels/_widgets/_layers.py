"""The one place where napari layers meet the core's arrays.

Conventions shared by the reader, the writer, the sample data and every widget:

* An *image layer* holds one 2D image (``(H, W)`` gray or ``(H, W, 3)`` RGB) or a stack of
  them (``(N, H, W)`` / ``(N, H, W, 3)``). Each 2D plane is one core :class:`Sample`; its
  name comes from ``layer.metadata["lazylabels"]["names"]`` when present (a project opened
  from a dataset folder), otherwise from the layer name (``"<layer>_<i:03d>"`` for stacks).
* A *multi-channel* image layer has a channel axis (:func:`channel_axis`): ``(C, Y, X)`` as
  napari shows it (a slider over the channels; a stack is ``(N, C, Y, X)``), or ``(Y, X, C)``
  with fewer than :data:`~napari_lazylabels.core.io.MIN_IMAGE_SIDE` channels. Its labels are
  ``(Y, X)`` (``(N, Y, X)``) and its planes ``(Y, X, C)`` samples. The axis is
  ``metadata["lazylabels"]["channel_axis"]`` when set (a project's layers, the Lazy annotation
  widget's choice), else the ``C`` axis of the TIFF the layer was opened from.
* The project's classes live in ``layer.metadata["lazylabels"]["classes"]`` (a
  :meth:`ClassSpec.to_dict`) of the image layer and of its label layers.
* Each task has one Labels layer of the image's ``(N,) H, W`` shape, named after the task
  (``"detection"``, ``"separation"``, ``"segmentation"``; or ``"<task> [<image>]"`` when a
  viewer holds several projects' images) and tagged with ``metadata["lazylabels"]["task"]``
  and ``["image"]`` (the image layer's name).
* Predictions are ``"<image> classes"``, ``"<image> instances"``, ``"<image> interfaces"``
  and ``"<image> probabilities"`` layers (:func:`prediction_layer_name`), updated in place on
  re-runs; the training preview is ``"<image> preview"``.
* Every layer made for an image carries the image layer's ``scale``, ``translate`` and
  ``units`` (:func:`geometry_kwargs`), so label pixel ``(r, c)`` covers image pixel ``(r, c)``
  and brush sizes count image pixels. A dataset folder keeps them per image
  (``Sample.geometry``); images of different sizes opened together are laid out side by side.

Nothing here reads or changes the viewer, starts threads or shows widgets: the functions
take layers (or layer data tuples ``(data, kwargs, layer_type)``) and return core arrays,
samples and datasets, or the other way round, so they are easy to test and the reader and
writer share them. Colours come from :mod:`._colors`; :mod:`._viewer` adds the layer data to
a viewer and knows what it shows.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

import numpy as np

from ..core.io import (
    MAX_CHANNELS,
    MIN_IMAGE_SIDE,
    LazyDataset,
    Sample,
    is_multichannel,
    normalize_geometry,
    tiff_channels,
)
from ..core.labels import (
    DETECTION,
    SEGMENTATION,
    SEPARATION,
    TASKS,
    ClassSpec,
    n_task_classes,
)
from ._colors import (
    background_color,
    class_features,
    prediction_colormap,
    preview_display,
    task_colormap,
)

META = "lazylabels"
TASK_LAYER_NAMES: dict[str, str] = {DETECTION: "detection", SEPARATION: "separation", SEGMENTATION: "segmentation"}
PREDICTION_SUFFIXES = ("classes", "instances", "interfaces", "probabilities")
"""The layers a prediction of an image is shown in; ``"preview"`` is the training preview's."""


# --------------------------------------------------------------------------- classes
def classes_of(*layers) -> ClassSpec | None:
    """The first class list found in the layers' metadata, else ``None``."""
    for layer in layers:
        if layer is None:
            continue
        d = layer.metadata.get(META, {}).get("classes")
        if d:
            return ClassSpec.from_dict(d)
    return None


# --------------------------------------------------------------------------- images
def _is_rgb(layer_or_data, rgb: bool | None = None) -> bool:
    if rgb is not None:
        return bool(rgb)
    return bool(getattr(layer_or_data, "rgb", False))


@functools.lru_cache(maxsize=64)
def _file_channels(path: str, mtime: float) -> tuple[int | None, list[str] | None]:
    """:func:`~napari_lazylabels.core.io.tiff_channels` of a file, cached per version."""
    return tiff_channels(path)


def _source_channels(layer) -> tuple[int | None, list[str] | None]:
    """The channel axis and channel names the TIFF a layer was opened from gives (``(None,
    None)``: no such file, or none given)."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or not str(path).lower().endswith((".tif", ".tiff")):
        return None, None
    try:
        return _file_channels(str(path), os.stat(path).st_mtime)
    except OSError:
        return None, None


def _source_channel_axis(layer) -> int | None:
    """The channel axis the TIFF a layer was opened from names (``None``: no such file)."""
    return _source_channels(layer)[0]


def _channel_axis(shape: tuple[int, ...], rgb: bool, meta: dict, source_axis: int | None = None) -> int | None:
    """The channel axis of image data of ``shape`` (non-negative), or ``None``: see
    :func:`channel_axis`; ``source_axis`` is the one its file names."""
    if rgb:
        return None
    if "channel_axis" in meta:
        axis = meta["channel_axis"]
    elif len(shape) in (3, 4) and shape[-1] < MIN_IMAGE_SIDE:
        axis = len(shape) - 1
    else:
        axis = source_axis
    if axis is None or not -len(shape) <= int(axis) < len(shape):
        return None
    axis = int(axis) % len(shape)
    if shape[axis] > MAX_CHANNELS:  # more than an image may have: a stack, as before
        return None
    return axis if axis < len(shape) - 2 or axis == len(shape) - 1 else None


def channel_axis(image_layer) -> int | None:
    """The axis of an Image layer's data that holds channels, or ``None`` (gray, RGB, stacks).

    In order: ``metadata["lazylabels"]["channel_axis"]`` when the key is there (``None`` in it
    says "no channels"), a last axis too short to be a width (``(Y, X, C)``, ``C <
    MIN_IMAGE_SIDE``), else the ``C`` axis of the TIFF the layer was opened from (napari's
    own reader opens an ImageJ or OME ``(C, Y, X)`` file as a plain 3D layer).
    """
    data = image_layer.data
    return _channel_axis(tuple(data.shape), _is_rgb(image_layer), image_layer.metadata.get(META, {}),
                         _source_channel_axis(image_layer))


def channel_count(image_layer) -> int:
    """Channels per pixel of an Image layer: ``C`` of a multi-channel layer, 3 for RGB(A), 1."""
    axis = channel_axis(image_layer)
    if axis is not None:
        return int(image_layer.data.shape[axis])
    return 3 if _is_rgb(image_layer) else 1


def may_hold_channels(image_layer) -> bool:
    """Whether an Image layer's first axis could be channels rather than a stack: ``(C, Y,
    X)`` with ``2 <= C <= MAX_CHANNELS`` (napari shows both alike, with a slider)."""
    shape = tuple(image_layer.data.shape)
    return not _is_rgb(image_layer) and len(shape) == 3 and 2 <= shape[0] <= MAX_CHANNELS and shape[-1] >= MIN_IMAGE_SIDE


def channel_names(image_layer) -> list[str]:
    """Names of a multi-channel layer's channels: ``metadata["lazylabels"]["channel_names"]``
    (e.g. the layers :func:`channels_layer_data` stacked), else those of the TIFF it was
    opened from (OME channel names, ImageJ labels) when they name the layer's channel axis,
    else ``["0", "1", ...]``."""
    n = channel_count(image_layer)
    names = image_layer.metadata.get(META, {}).get("channel_names")
    if not names:
        axis, file_names = _source_channels(image_layer)
        names = file_names if axis is not None and axis == channel_axis(image_layer) else None
    return [str(v) for v in names] if names and len(names) == n else [str(c) for c in range(n)]


def channels_layer_data(layers: Sequence) -> tuple:
    """One ``(C, Y, X)`` Image layer data tuple of 2D image layers that are the channels of
    one image (e.g. those napari makes of a file or an array with ``channel_axis``: one
    layer per channel), in the order given; it takes the first layer's geometry.

    Raises:
        ValueError: fewer than 2 or more than :data:`MAX_CHANNELS` layers, or layers that are
            not 2D gray images of one shape.
    """
    layers = [ly for ly in layers if ly.__class__.__name__ == "Image"]
    shapes = {tuple(ly.data.shape) for ly in layers}
    if not 2 <= len(layers) <= MAX_CHANNELS or len(shapes) != 1 or len(shapes.pop()) != 2 or any(_is_rgb(ly) for ly in layers):
        raise ValueError(
            f"Select 2 to {MAX_CHANNELS} image layers of one 2D shape, one per channel (gray, not RGB), "
            "to combine them into one multi-channel image."
        )
    names = [ly.name for ly in layers]
    data = np.stack([np.asarray(ly.data) for ly in layers])
    meta = {META: {"channel_axis": 0, "channel_names": names}}
    kwargs = {"name": _common_name(names), "metadata": meta, **geometry_kwargs(layers[0], ndim=3)}
    return data, kwargs, "image"


def _common_name(names: Sequence[str]) -> str:
    """A layer name for channels named ``names``: their common beginning, else the first's,
    with ``" channels"`` after it."""
    prefix = os.path.commonprefix(list(names)).strip(" _-[(")
    return f"{prefix or names[0]} channels"


def plane_shape(data: np.ndarray, rgb: bool, channel_axis: int | None = None) -> tuple[int, ...]:
    """Shape of the label maps of an image array: ``(H, W)`` or ``(N, H, W)``.

    Args:
        channel_axis: the axis of ``data`` that holds channels (:func:`channel_axis`), if any.

    Raises:
        ValueError: not a 2D image or a stack of 2D images (with or without channels).
    """
    shape = tuple(data.shape[:-1] if rgb else data.shape)
    if channel_axis is not None:
        shape = shape[:channel_axis] + shape[channel_axis + 1:]
    if len(shape) not in (2, 3) or (channel_axis is None and len(shape) == 3 and shape[-1] < MIN_IMAGE_SIDE):
        raise ValueError(
            f"The image has shape {tuple(data.shape)}; the plugin works on 2D images (H, W), "
            "RGB images (H, W, 3), multi-channel images (C, H, W) and stacks of them (N, H, W[, 3]). "
            "Split other data first."
        )
    return shape


def label_shape(image_layer) -> tuple[int, ...]:
    """Shape the Labels layers of ``image_layer`` must have."""
    return plane_shape(image_layer.data, _is_rgb(image_layer), channel_axis(image_layer))


def n_planes(image_layer) -> int:
    """Number of 2D images in the layer (1 for a 2D image)."""
    shape = label_shape(image_layer)
    return shape[0] if len(shape) == 3 else 1


def _plane(data, index: int, stacked: bool, rgb: bool, axis: int | None) -> np.ndarray:
    """The ``index``-th 2D image of image data as a core image: ``(H, W)``, ``(H, W, 3)``
    (RGBA without alpha) or ``(H, W, C)`` (channels last, a C-contiguous copy)."""
    if axis is not None:
        if stacked:  # the stack axis comes first: the channel axis of one plane is one less
            data, axis = data[index], axis - 1
        return np.ascontiguousarray(np.moveaxis(np.asarray(data), axis, -1))
    plane = np.asarray(data[index] if stacked else data)
    return plane[..., :3] if rgb and plane.shape[-1] == 4 else plane


def full_resolution(layer):
    """A layer's data at full resolution: the first level of a multiscale layer (an OME-Zarr
    pyramid; napari's ``np.asarray`` of it would give the level on screen)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_plane(image_layer, index: int = 0) -> np.ndarray:
    """The ``index``-th 2D image of a layer, as a numpy array (:func:`_plane`)."""
    stacked = len(label_shape(image_layer)) == 3
    return _plane(full_resolution(image_layer), index, stacked, _is_rgb(image_layer), channel_axis(image_layer))


class Planes(Sequence):
    """The 2D images of an Image layer, read one at a time when asked for (:func:`_plane`).

    Made on the main thread (it reads the layer's data, rgb flag and channel axis once) and
    read in a worker: a lazy (dask, zarr) stack is not loaded whole before a prediction
    starts, and reading it does not hold the viewer.
    """

    def __init__(self, image_layer) -> None:
        self._data = full_resolution(image_layer)
        self._stacked = len(label_shape(image_layer)) == 3
        self._rgb = _is_rgb(image_layer)
        self._axis = channel_axis(image_layer)
        self._n = n_planes(image_layer)
        self._pixels = int(np.prod(label_shape(image_layer)[-2:]))

    def __len__(self) -> int:
        return self._n

    @property
    def plane_pixels(self) -> int:
        """Pixels of one plane (``H * W``)."""
        return self._pixels

    def lazy_image(self, name: str = "image"):
        """The layer as a :class:`~napari_lazylabels.core.zarrio.LazyImage` (its
        full-resolution level for a multiscale layer): slicing it reads that region only, for
        prediction block by block."""
        from ..core.zarrio import AxesView, LazyImage

        nd = len(self._data.shape)
        axes = ["?"] * nd
        if self._stacked:
            axes[0] = "Z"
        if self._axis is not None:
            axes[self._axis % nd] = "C"
        elif self._rgb:
            axes[-1] = "S"
        rest = [i for i, a in enumerate(axes) if a == "?"]
        axes[rest[-2]], axes[rest[-1]] = "Y", "X"
        letters = "".join(axes)
        chan = "C" if "C" in letters else "S" if "S" in letters else ""
        order = ("Z" if self._stacked else "") + "YX" + chan
        colours = 3 if self._rgb and self._data.shape[-1] == 4 else None  # RGBA: the colours
        data = AxesView(self._data, letters, order, colours=colours)
        return LazyImage(data, int(self._stacked), bool(chan), None, name)

    def lazy(self, index: int):
        """Plane ``index`` as a lazy ``(H, W[, C])`` array (:meth:`lazy_image`)."""
        return self.lazy_image().plane(index)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if not -self._n <= index < self._n:
            raise IndexError(f"plane {index} of {self._n}")
        return _plane(self._data, index % self._n, self._stacked, self._rgb, self._axis)


def label_plane(labels_layer, index: int = 0) -> np.ndarray:
    """The ``index``-th 2D map of a Labels layer (a view for numpy data)."""
    data = labels_layer.data
    return np.asarray(data) if data.ndim == 2 else np.asarray(data[index])


def _stem(name: str) -> str:
    """A file stem made of a layer name (characters a file name may hold)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return stem or "image"


def _plane_names(layer_name: str, n: int, stacked: bool) -> list[str]:
    """Sample names of the ``n`` planes of a layer without stored names: the layer name's
    stem, numbered ``_000``, ``_001``, ... when ``stacked``."""
    stem = _stem(layer_name)
    return [f"{stem}_{i:03d}" for i in range(n)] if stacked else [stem]


def sample_names(image_layer) -> list[str]:
    """File stems of the layer's 2D images (from metadata when it fits, else the layer name)."""
    n = n_planes(image_layer)
    names = image_layer.metadata.get(META, {}).get("names")
    if names and len(names) == n and len(set(names)) == n:
        return list(names)
    return _plane_names(image_layer.name, n, stacked=len(label_shape(image_layer)) == 3)


# --------------------------------------------------------------------------- geometry
def layer_geometry(layer, axis: int | None = None) -> dict:
    """``{"scale", "translate"[, "units"]}`` of a layer or of a layer-data ``attributes`` dict,
    one entry per data axis (``units`` as strings; absent where napari has no units), but
    none for the channel axis of a multi-channel image (``axis``; found for an Image layer,
    :func:`channel_axis`), so that they are the axes of its labels."""
    get = layer.get if isinstance(layer, dict) else lambda k, d=None: getattr(layer, k, d)
    if axis is None and not isinstance(layer, dict) and layer.__class__.__name__ == "Image":
        axis = channel_axis(layer)
    out = {}
    for key in ("scale", "translate"):
        v = get(key)
        if v is not None:
            out[key] = tuple(float(x) for x in np.ravel(v))
    units = get("units")
    if units is not None:
        out["units"] = tuple(str(u) for u in units)
    if axis is None:
        return out
    return {k: v[:axis] + v[axis + 1:] if len(v) > axis else v for k, v in out.items()}


def geometry_kwargs(image_layer, ndim: int | None = None, offset: Sequence[float] | None = None) -> dict:
    """Layer kwargs ``{"scale", "translate"[, "units"]}`` that put a new layer exactly over an
    image layer: element ``(r, c)`` of the new layer covers image pixel ``(r, c)``.

    Every layer made for an image (task labels, predictions, previews) takes these, so that
    an image added with ``scale=(0.5, 0.5)`` and a translate gets labels at the same place
    and brush sizes count image pixels.

    Args:
        image_layer: the napari Image layer, or a dict as returned by :func:`layer_geometry`.
        ndim: axes of the new layer (default: the image's, the RGB or channel axis excluded). Extra
            leading axes get scale 1 and translate 0; fewer keep the image's last axes.
        offset: data index of the new layer's first element inside the image data, one value
            per new axis (e.g. ``(index, row0, col0)`` for a crop of plane ``index``); it
            shifts ``translate`` by ``offset * scale``.
    """
    g = image_layer if isinstance(image_layer, dict) else layer_geometry(image_layer)
    scale = list(g.get("scale", ()))
    translate = list(g.get("translate", ()))
    units = list(g["units"]) if g.get("units") is not None else None
    n_img = len(scale) or len(translate) or 2
    ndim = n_img if ndim is None else int(ndim)
    scale = scale or [1.0] * n_img
    translate = translate or [0.0] * n_img

    def fit(values, fill):
        return ([fill] * (ndim - len(values)) + values)[-ndim:] if ndim else []

    scale, translate = fit(scale, 1.0), fit(translate, 0.0)
    if offset is not None:
        translate = [t + float(o) * sc for t, o, sc in zip(translate, offset, scale, strict=True)]
    out = {"scale": tuple(scale), "translate": tuple(translate)}
    if units is not None:
        out["units"] = tuple(fit(units, "pixel"))
    return out


def image_geometry(image_layer, axis: int | None = None) -> dict | None:
    """The geometry a dataset folder keeps for each 2D image of a layer (its last two axes;
    see :func:`napari_lazylabels.core.io.normalize_geometry`), ``None`` for plain pixels.

    ``image_layer`` may be a layer or a layer-data ``attributes`` dict (then ``axis`` is
    its data's channel axis, if any: :func:`layer_geometry`).
    """
    g = geometry_kwargs(layer_geometry(image_layer, axis), ndim=2)
    return normalize_geometry({k: list(v) for k, v in g.items()}, "image geometry")


# --------------------------------------------------------------------------- labels layers
def empty_labels(image_layer) -> np.ndarray:
    """An all-zero (not annotated) ``uint8`` map for ``image_layer``."""
    return np.zeros(label_shape(image_layer), np.uint8)


def task_layer_name(task: str, image_name: str | None = None) -> str:
    """Default Labels layer name of a task (``"<task> [<image>]"`` when disambiguated)."""
    base = TASK_LAYER_NAMES[task]
    return base if image_name is None else f"{base} [{image_name}]"


def find_task_layers(layers: Sequence, image_layer) -> dict:
    """``{task: Labels layer or None}`` belonging to ``image_layer``.

    A layer belongs when its metadata names the task and the image, or else when its name is
    the task's default name (``"detection"``) or ``"<task> [<image>]"`` and its shape fits.
    """
    want = label_shape(image_layer)
    out = {t: None for t in TASKS}
    labels = [ly for ly in layers if ly.__class__.__name__ == "Labels" and tuple(ly.data.shape) == want]
    for task in TASKS:
        tagged = [
            ly for ly in labels
            if ly.metadata.get(META, {}).get("task") == task
            and ly.metadata.get(META, {}).get("image") in (None, image_layer.name)
        ]
        exact = [ly for ly in tagged if ly.metadata.get(META, {}).get("image") == image_layer.name]
        named = [ly for ly in labels if ly.name in (task_layer_name(task, image_layer.name), task_layer_name(task))]
        for cand in (exact, named, tagged):
            if cand:
                out[task] = cand[0]
                break
    return out


def labels_layer_kwargs(
    task: str,
    image_name: str,
    classes: ClassSpec,
    name: str | None = None,
    *,
    geometry=None,
    background: str | None = None,
) -> dict:
    """Layer kwargs for a task's Labels layer (name, colours, class names, metadata, opacity).

    Args:
        geometry: the image layer, or its :func:`geometry_kwargs` (scale, translate, units),
            so the labels lie over the image; ``None`` leaves napari's defaults.
        background: colour of background marks (:func:`._viewer.image_background_color`) when
            the project sets none.
    """
    out = {
        "name": name or task_layer_name(task),
        "colormap": task_colormap(task, classes, background),
        "features": class_features(task, classes),
        "opacity": 0.6 if task != SEGMENTATION else 0.45,
        "metadata": {META: {"task": task, "image": image_name, "classes": classes.to_dict()}},
    }
    if geometry is not None:
        out.update(geometry if isinstance(geometry, dict) else geometry_kwargs(geometry))
    return out


def set_labels_plane(layer, index: int, new: np.ndarray, region: tuple[slice, slice] | None = None) -> int:
    """Write a 2D map into plane ``index`` of a Labels layer as ONE undoable edit.

    Only changed pixels are written, through :meth:`Labels.data_setitem`, so ``layer.undo()``
    restores the previous map.

    Args:
        layer: a napari Labels layer ``(H, W)`` or ``(N, H, W)``.
        index: stack index (ignored for 2D layers).
        new: ``(H, W)`` map (or the ``region``'s shape).
        region: optional ``(rows, cols)`` part of the plane that ``new`` covers.

    Returns:
        the number of pixels changed.
    """
    cur = label_plane(layer, index)
    rows, cols = region or (slice(0, cur.shape[0]), slice(0, cur.shape[1]))
    new = np.asarray(new)
    changed = np.nonzero(cur[rows, cols] != new)
    if changed[0].size == 0:
        return 0
    rr = changed[0] + (rows.start or 0)
    cc = changed[1] + (cols.start or 0)
    values = new[changed].astype(layer.data.dtype, copy=False)
    if layer.data.dtype.kind in "iu" and int(new.max(initial=0)) > np.iinfo(layer.data.dtype).max:
        raise ValueError(f"Label values up to {int(new.max())} do not fit the layer's {layer.data.dtype}.")
    indices = (rr, cc) if layer.data.ndim == 2 else (np.full_like(rr, index), rr, cc)
    layer.data_setitem(indices, values)
    return int(rr.size)


# --------------------------------------------------------------------------- layers <-> dataset
def layers_to_samples(image_layer, task_layers: dict, indices: Sequence[int] | None = None) -> list[Sample]:
    """Core samples of an image layer and its task Labels layers.

    Args:
        image_layer: napari Image layer (2D, RGB or a stack).
        task_layers: ``{task: Labels layer or None}``; missing tasks are not annotated.
        indices: only these stack planes (default: all).

    Raises:
        ValueError: a Labels layer whose shape does not match the image.
    """
    shape = label_shape(image_layer)
    for task, ly in task_layers.items():
        if ly is not None and tuple(ly.data.shape) != shape:
            raise ValueError(
                f"The {task} layer '{ly.name}' has shape {tuple(ly.data.shape)} but the image "
                f"'{image_layer.name}' needs {shape}. Create the label layers from the "
                "Lazy annotation widget for this image."
            )
    names = sample_names(image_layer)
    geometry = image_geometry(image_layer)
    out = []
    for i in indices if indices is not None else range(len(names)):
        maps = {}
        for task in TASKS:
            ly = task_layers.get(task)
            maps[task] = None if ly is None else np.array(label_plane(ly, i))
        out.append(Sample(name=names[i], image=image_plane(image_layer, i), geometry=geometry, **maps))
    return out


def layers_to_dataset(image_layer, task_layers: dict, classes: ClassSpec | None = None) -> LazyDataset:
    """A core :class:`LazyDataset` of every plane of ``image_layer`` (annotated or not)."""
    classes = classes or classes_of(image_layer, *task_layers.values()) or ClassSpec()
    return LazyDataset(classes=classes, samples=layers_to_samples(image_layer, task_layers))


def annotated_dataset(layers: Sequence) -> tuple[LazyDataset, list]:
    """Every image layer among ``layers`` that has lazy labels, as one core dataset: the
    planes with at least one task's labels, of every such image.

    A plane whose name another image already gave gets the image layer's stem in front
    (``"<image>_<name>"``).

    Returns:
        ``(LazyDataset, [image layers used])``.

    Raises:
        ValueError: nothing annotated, or image layers with different class lists.
    """
    samples, used, classes = [], [], None
    for layer in list(layers):
        if layer.__class__.__name__ != "Image" or layer.metadata.get(META, {}).get("prediction"):
            continue
        try:
            tasks = find_task_layers(layers, layer)
        except ValueError:
            continue
        if not any(tasks.values()):
            continue
        layer_classes = classes_of(layer, *tasks.values())
        if classes is not None and layer_classes is not None and layer_classes.names != classes.names:
            raise ValueError(
                f"Image '{layer.name}' uses classes {layer_classes.names} but another image uses "
                f"{classes.names}. Use one class list per project (Lazy annotation widget)."
            )
        classes = classes or layer_classes
        names = set(s.name for s in samples)
        for s in layers_to_samples(layer, tasks):
            if s.tasks():
                if s.name in names:
                    s.name = f"{_stem(layer.name)}_{s.name}"
                samples.append(s)
        used.append(layer)
    if not samples:
        raise ValueError(
            "No image has lazy labels yet. Open the Lazy annotation widget, create the label "
            "layers and paint a few detection marks (and some background with label 1)."
        )
    return LazyDataset(classes=classes or ClassSpec(), samples=samples), used


def annotation_table(image_layer, task_layers: dict) -> list[tuple[str, dict[str, bool]]]:
    """``[(sample name, {task: annotated?})]`` for every plane of the image."""
    names = sample_names(image_layer)
    rows = []
    for i, name in enumerate(names):
        status = {}
        for task in TASKS:
            ly = task_layers.get(task)
            status[task] = ly is not None and bool(np.any(label_plane(ly, i)))
        rows.append((name, status))
    return rows


def dataset_to_layer_data(dataset: LazyDataset, source: str | None = None) -> list[tuple]:
    """Layer data tuples for a dataset: per group of equally shaped images, one Image layer
    (2D, or a stack; multi-channel images as ``([N,] C, H, W)`` with their ``channel_axis`` in
    the metadata) and the three task Labels layers.

    With one group the layers are named ``"images"`` (or the image's name) and
    ``"detection"``, ``"separation"``, ``"segmentation"``; with several, the label layers get
    ``" [<image layer>]"`` appended.

    Every layer of a group gets the group's geometry: the first stored ``Sample.geometry``
    of its images, else (several groups) a place in a row left to right, so that images of
    different sizes do not lie on top of each other.
    """
    groups: dict[tuple, list[Sample]] = {}
    for s in dataset.samples:
        groups.setdefault((tuple(s.image.shape), s.image.dtype.str), []).append(s)
    out = []
    single = len(groups) == 1
    layout = _row_layout(groups)
    for (shape, dtype), samples in groups.items():
        channels = is_multichannel(samples[0].image)
        rgb = len(shape) == 3 and not channels
        stack = len(samples) > 1
        if single:
            img_name = samples[0].name if not stack else "images"
        else:
            img_name = samples[0].name if not stack else f"images {shape[0]}x{shape[1]}"
        image = np.stack([s.image for s in samples]) if stack else samples[0].image
        meta = {META: {"names": [s.name for s in samples], "classes": dataset.classes.to_dict(), "source": source}}
        if channels:  # (N, C, H, W): napari shows one channel with a slider
            image = np.moveaxis(image, -1, -3)
            meta[META]["channel_axis"] = image.ndim - 3
        geometry = layout[(shape, dtype)]
        img_kwargs = {"name": img_name, "rgb": rgb, "metadata": meta}
        if geometry:
            img_kwargs.update(geometry_kwargs(geometry, ndim=image.ndim - (1 if rgb else 0)))
        out.append((image, img_kwargs, "image"))
        background = background_color(samples[0].image[..., 0] if channels else samples[0].image, rgb=rgb)
        for task in TASKS:
            n = n_task_classes(task, dataset.classes.n_classes)
            dtype = np.uint8 if n < 256 else np.uint16
            planes = [
                (s.label(task).astype(dtype) if s.label(task) is not None else np.zeros(shape[:2], dtype))
                for s in samples
            ]
            data = np.stack(planes) if stack else planes[0]
            name = task_layer_name(task) if single else task_layer_name(task, img_name)
            geo = geometry_kwargs(geometry, ndim=data.ndim) if geometry else None
            kwargs = labels_layer_kwargs(task, img_name, dataset.classes, name, geometry=geo, background=background)
            out.append((data, kwargs, "labels"))
    return out


LAYOUT_GAP = 0.05  # gap between images laid out in a row, as a fraction of the widest


def _row_layout(groups: dict) -> dict:
    """``{group key: geometry dict or None}``: a group's stored geometry (its first sample's),
    else, when there are several groups, a translate that puts it right of the previous ones
    (pixels, a gap of :data:`LAYOUT_GAP` of the widest image between them)."""
    out: dict = {}
    for key, samples in groups.items():
        out[key] = next((s.geometry for s in samples if s.geometry), None)
    if len(groups) < 2:
        return out
    widths = {key: key[0][1] * abs(out[key]["scale"][1]) if out[key] else key[0][1] for key in groups}
    gap = LAYOUT_GAP * max(widths.values())
    x = max((out[k]["translate"][1] + widths[k] for k in groups if out[k]), default=-gap) + gap
    for key in groups:
        if out[key] is None:
            out[key] = {"scale": (1.0, 1.0), "translate": (0.0, float(x))}
            x += widths[key] + gap
    return out


def layer_data_to_dataset(layer_data: Sequence[tuple], classes: ClassSpec | None = None) -> LazyDataset:
    """The inverse of :func:`dataset_to_layer_data`, for the writer: full layer data tuples
    ``(data, attributes, layer_type)`` of Image and Labels layers to a dataset.

    Labels layers are matched to image layers by their metadata, else by task name and shape.

    Raises:
        ValueError: no image layer, or a label layer that fits no image.
    """
    images = [(d, m) for d, m, t in layer_data if t == "image"]
    labels = [(d, m) for d, m, t in layer_data if t == "labels"]
    if not images:
        raise ValueError(
            "Saving a lazy-label project needs an image layer: select the image and its "
            "detection/separation/segmentation layers, then File > Save Selected Layers."
        )
    found_classes = classes
    samples: list[Sample] = []
    for data, attrs in images:
        meta = (attrs.get("metadata") or {}).get(META, {})
        rgb = bool(attrs.get("rgb", False))
        axis = _channel_axis(tuple(np.shape(data)), rgb, meta)
        shape = plane_shape(np.asarray(data), rgb, axis)
        if found_classes is None and meta.get("classes"):
            found_classes = ClassSpec.from_dict(meta["classes"])
        name = attrs.get("name", "image")
        task_data: dict = {}
        for ldata, lattrs in labels:
            lmeta = (lattrs.get("metadata") or {}).get(META, {})
            task = lmeta.get("task")
            lname = lattrs.get("name", "")
            if task is None:
                task = next((t for t in TASKS if lname == t or lname.startswith(f"{t} [")), None)
            if task is None or tuple(np.shape(ldata)) != shape:
                continue
            if lmeta.get("image") not in (None, name) and len(images) > 1:
                continue
            if task in task_data:
                continue
            task_data[task] = np.asarray(ldata)
            if found_classes is None and lmeta.get("classes"):
                found_classes = ClassSpec.from_dict(lmeta["classes"])
        stems = meta.get("names")
        n = shape[0] if len(shape) == 3 else 1
        if not stems or len(stems) != n:
            stems = _plane_names(name, n, stacked=n > 1)
        arr = np.asarray(data)
        geometry = image_geometry(attrs, axis)
        for i in range(n):
            maps = {t: (task_data[t] if n == 1 else task_data[t][i]) if t in task_data else None for t in TASKS}
            samples.append(Sample(name=stems[i], image=_plane(arr, i, len(shape) == 3, rgb, axis), geometry=geometry, **maps))
    return LazyDataset(classes=found_classes or ClassSpec(), samples=samples)


# --------------------------------------------------------------------------- predictions
def prediction_layer_name(image_name: str, kind: str) -> str:
    """Name of the layer that shows ``kind`` (one of :data:`PREDICTION_SUFFIXES`, or
    ``"preview"``) of the prediction of the image layer ``image_name``."""
    return f"{image_name} {kind}"


def instances_layer_data(
    image_name: str, instances: np.ndarray, settings: dict | None = None, geometry=None
) -> tuple:
    """The ``"<image> instances"`` Labels layer data tuple.

    Args:
        image_name: the image layer's name.
        instances: ``(H, W)`` or ``(N, H, W)`` int32 object ids, 0 = none.
        settings: how they were cut (interface threshold, smallest object, ...), kept in the
            layer's metadata so that a re-split knows the model's automatic smallest object.
        geometry: the image layer (or its :func:`layer_geometry`), whose scale, translate and
            units the layer takes; without it :func:`._viewer.upsert_layers` looks the image up
            by name.
    """
    meta = {"prediction": "instances", "image": image_name}
    if settings is not None:
        meta["settings"] = dict(settings)
    data = np.asarray(instances, dtype=np.int32)
    kwargs = {"name": prediction_layer_name(image_name, "instances"), "opacity": 0.5, "visible": True, "metadata": {META: meta}}
    if geometry is not None:
        kwargs.update(geometry_kwargs(geometry, ndim=data.ndim))
    return (data, kwargs, "labels")


def prediction_layer_data(
    image_name: str,
    predictions: Sequence,
    classes: ClassSpec | None = None,
    settings: dict | None = None,
    geometry=None,
) -> list[tuple]:
    """Layer data tuples for the predictions of the planes of one image layer.

    Args:
        image_name: the image layer's name; layers are called ``"<image> classes"`` etc.
        predictions: one core :class:`Prediction` per plane (one for a 2D image).
        classes: the model's classes (for colours and names).
        settings: the instance settings used (see :func:`instances_layer_data`).
        geometry: the image layer (or its :func:`layer_geometry`): every layer takes its
            scale, translate and units; without it :func:`._viewer.upsert_layers` looks the
            image up by name.

    Returns:
        ``"<image> classes"`` (Labels, uint8 class index, 0 = background; its ``features``
        name the classes, shown in the status bar under the cursor),
        ``"<image> instances"`` (Labels, int32), ``"<image> interfaces"`` (Image, float32
        interface probability; only with a separation head) and ``"<image> probabilities"``
        (Image, float32 probability of *any* object class, i.e. 1 - p(background)).
        Stacks get a leading ``N`` axis.
    """
    classes = classes or ClassSpec(names=tuple(["background"] + [f"class {i}" for i in range(1, predictions[0].probabilities.shape[0])]))
    stack = len(predictions) > 1

    def join(arrs):
        return np.stack(arrs) if stack else arrs[0]

    out = []
    cls = join([np.asarray(p.classes) for p in predictions])
    out.append((cls, {"name": prediction_layer_name(image_name, "classes"), "colormap": prediction_colormap(classes), "opacity": 0.5,
                      "features": class_features("prediction", classes),
                      "metadata": {META: {"prediction": "classes", "image": image_name, "classes": classes.to_dict()}}}, "labels"))
    if all(p.instances is not None for p in predictions):
        out.append(instances_layer_data(image_name, join([np.asarray(p.instances, dtype=np.int32) for p in predictions]), settings))
    if all(p.interfaces is not None for p in predictions):
        itf = join([np.asarray(p.interfaces, dtype=np.float32) for p in predictions])
        out.append((itf, {"name": prediction_layer_name(image_name, "interfaces"), "colormap": "magma", "contrast_limits": (0.0, 1.0),
                          "blending": "additive", "visible": False,
                          "metadata": {META: {"prediction": "interfaces", "image": image_name}}}, "image"))
    prob = join([(1.0 - np.asarray(p.probabilities[0], dtype=np.float32)) for p in predictions])
    out.append((prob, {"name": prediction_layer_name(image_name, "probabilities"), "colormap": "viridis", "contrast_limits": (0.0, 1.0),
                       "blending": "additive", "visible": False,
                       "metadata": {META: {"prediction": "probabilities", "image": image_name}}}, "image"))
    if geometry is not None:
        for data, kwargs, _ in out:
            kwargs.update(geometry_kwargs(geometry, ndim=np.ndim(data)))
    return out


def lazy_prediction_layer_data(
    image_name: str, levels: dict[str, list], classes: ClassSpec | None = None, settings: dict | None = None,
    store: str | None = None,
) -> list[tuple]:
    """Layer data tuples over an OME-Zarr being written block by block
    (:class:`~napari_lazylabels.core.zarrio.OmeZarrWriter`): ``"<image> classes"`` and
    ``"<image> instances"`` Labels layers whose data are the zarr arrays of every level
    (multiscale; read from disk when napari draws them, so refreshing the layers shows the
    blocks written so far).

    Args:
        image_name: the image layer's name.
        levels: ``{"classes": [arrays], "instances": [arrays]}``, full resolution first.
        classes: the model's classes (colours and names).
        settings: how instances are cut (kept in the layer's metadata).
        store: the OME-Zarr folder (kept in the metadata: a re-split cuts it again,
            :func:`blockwise_store`).
    """
    classes = classes or ClassSpec(names=("background", "object"))
    meta = {"image": image_name, "blockwise": True, **({"store": str(store)} if store is not None else {})}

    def data(arrays):
        return list(arrays) if len(arrays) > 1 else arrays[0]

    def multiscale(arrays) -> dict:
        return {"multiscale": True} if len(arrays) > 1 else {}

    out = [(data(levels["classes"]), {
        "name": prediction_layer_name(image_name, "classes"), "colormap": prediction_colormap(classes), "opacity": 0.5,
        "features": class_features("prediction", classes), **multiscale(levels["classes"]),
        "metadata": {META: {**meta, "prediction": "classes", "classes": classes.to_dict()}}}, "labels")]
    if "instances" in levels:
        inst_meta = {**meta, "prediction": "instances"}
        if settings is not None:
            inst_meta["settings"] = dict(settings)
        out.append((data(levels["instances"]), {
            "name": prediction_layer_name(image_name, "instances"), "opacity": 0.5, **multiscale(levels["instances"]),
            "metadata": {META: inst_meta}}, "labels"))
    return out


def compact_labels(layer_data: tuple) -> tuple:
    """A Labels layer data tuple with int32 data of fewer than 65536 objects as uint16.

    napari shows uint8 and uint16 labels as they are, but hashes wider integers into the
    texture's range on the main thread every time the layer is sliced (several times per
    update), which freezes the viewer while predictions are pushed (docs/benchmarks.md,
    "Prediction in the viewer")."""
    data, kwargs, layer_type = layer_data
    if layer_type == "labels" and data.dtype.itemsize > 2 and int(data.max(initial=0)) < 65536 and data.min(initial=0) >= 0:
        data = data.astype(np.uint16)
    return data, kwargs, layer_type


def blockwise_store(layers, image_name: str) -> str | None:
    """The OME-Zarr folder that the ``"<image> classes"`` layer of a block-by-block prediction
    shows (:func:`lazy_prediction_layer_data`), else ``None``."""
    name = prediction_layer_name(image_name, "classes")
    meta = layers[name].metadata.get(META, {}) if name in layers else {}
    return meta.get("store") if meta.get("blockwise") else None


def prediction_maps(layers, image_name: str) -> tuple[np.ndarray, np.ndarray | None, dict] | None:
    """The maps kept of the prediction of an image layer, for cutting its instances again
    without the network.

    Args:
        layers: the viewer's layers (``name in layers``, ``layers[name]``).
        image_name: the image layer's name.

    Returns:
        ``(classes, interfaces, recorded)``: the ``"<image> classes"`` map ``(N, H, W)`` (a
        2D image gets ``N = 1``), the ``"<image> interfaces"`` map of the same shape or
        ``None``, and the instance settings recorded on the ``"<image> instances"`` layer
        (:func:`instances_layer_data`; ``{}`` without one); ``None`` when the image has no
        classes layer.
    """
    cls_name, inst_name, itf_name = (prediction_layer_name(image_name, k) for k in ("classes", "instances", "interfaces"))
    if cls_name not in layers:
        return None
    if layers[cls_name].metadata.get(META, {}).get("blockwise"):
        raise ValueError(
            f"'{image_name}' was predicted block by block (a large image) by an earlier version, which kept no "
            "interface map: change the settings and press Predict."
        )
    classes = np.asarray(layers[cls_name].data)
    interfaces = np.asarray(layers[itf_name].data) if itf_name in layers else None
    if classes.ndim == 2:
        classes = classes[None]
        interfaces = None if interfaces is None else interfaces[None]
    recorded = {}
    if inst_name in layers:
        recorded = layers[inst_name].metadata.get(META, {}).get("settings", {})
    return classes, interfaces, recorded


def preview_layer_data(image_layer, classes: np.ndarray, index: int, rows: slice, cols: slice) -> tuple:
    """The ``"<image> preview"`` Image layer data tuple of a class map predicted for a crop.

    Args:
        image_layer: the image layer the crop was taken from (its name, classes, geometry).
        classes: ``(h, w)`` class indices of the crop ``[rows, cols]`` of plane ``index``.
        index: the stack plane (ignored for a 2D image).
        rows, cols: where the crop lies in the plane.

    Returns:
        ``(data, kwargs, "image")``: the map (``(1, h, w)`` for a stack, placed at plane
        ``index``), in the class colours (:func:`._colors.preview_display`), over the crop.
    """
    stacked = len(label_shape(image_layer)) == 3
    data = classes[None] if stacked else classes
    offset = (index, rows.start, cols.start) if stacked else (rows.start, cols.start)
    kwargs = {
        "name": prediction_layer_name(image_layer.name, "preview"),
        "opacity": 0.45,
        "metadata": {META: {"prediction": "preview", "image": image_layer.name}},
        **preview_display(classes_of(image_layer)),
        **geometry_kwargs(image_layer, ndim=data.ndim, offset=offset),
    }
    return (data, kwargs, "image")
