"""The one place where napari layers meet the core's arrays.

Conventions shared by the reader, the writer, the sample data and every widget:

* An *image layer* holds one 2D image (``(H, W)`` gray or ``(H, W, 3)`` RGB) or a stack of
  them (``(N, H, W)`` / ``(N, H, W, 3)``). Each 2D plane is one core :class:`Sample`; its
  name comes from ``layer.metadata["lazylabels"]["names"]`` when present (a project opened
  from a dataset folder), otherwise from the layer name (``"<layer>_<i:03d>"`` for stacks).
* The project's classes live in ``layer.metadata["lazylabels"]["classes"]`` (a
  :meth:`ClassSpec.to_dict`) of the image layer and of its label layers.
* Each task has one Labels layer of the image's ``(N,) H, W`` shape, named after the task
  (``"detection"``, ``"separation"``, ``"segmentation"``; or ``"<task> [<image>]"`` when a
  viewer holds several projects' images) and tagged with ``metadata["lazylabels"]["task"]``
  and ``["image"]`` (the image layer's name).
* Predictions are pushed as ``"<image> classes"``, ``"<image> instances"``,
  ``"<image> interfaces"`` and ``"<image> probabilities"`` layers, updated in place on re-runs.
* Every layer made for an image carries the image layer's ``scale``, ``translate`` and
  ``units`` (:func:`geometry_kwargs`), so label pixel ``(r, c)`` covers image pixel ``(r, c)``
  and brush sizes count image pixels. A dataset folder keeps them per image
  (``Sample.geometry``); images of different sizes opened together are laid out side by side.

Nothing here starts threads or shows widgets; the functions only take and return arrays and
layer data tuples (``(data, kwargs, layer_type)``) so they are easy to test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..core.io import MIN_IMAGE_SIDE, LazyDataset, Sample, channels_message, normalize_geometry
from ..core.labels import (
    BACKGROUND,
    DETECTION,
    INTERFACE,
    SEGMENTATION,
    SEPARATION,
    SEPARATION_CLASSES,
    TASKS,
    ClassSpec,
)

META = "lazylabels"
TASK_LAYER_NAMES: dict[str, str] = {DETECTION: "detection", SEPARATION: "separation", SEGMENTATION: "segmentation"}
PREDICTION_SUFFIXES = ("classes", "instances", "interfaces", "probabilities")

# Background marks: cyan where it stands out (dark to mid-gray images), else navy (bright
# images); both reach a WCAG contrast ratio of 3 against the image's mean colour between them.
BACKGROUND_COLOR = "#00ffff"
BACKGROUND_CHOICES = ("#00ffff", "#000080")
MIN_CONTRAST = 3.0
INTERFACE_COLOR = "#ffd400"
PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
    "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324",
)


# --------------------------------------------------------------------------- classes, colours
def class_colors(classes: ClassSpec, background: str | None = None) -> list[str]:
    """One ``#rrggbb`` colour per class (background first): the project's, else ``background``
    (see :func:`background_color`) for class 0 and a palette for the objects."""
    out = []
    for i in range(classes.n_classes):
        if i < len(classes.colors) and classes.colors[i]:
            out.append(classes.colors[i])
        else:
            out.append((background or BACKGROUND_COLOR) if i == 0 else PALETTE[(i - 1) % len(PALETTE)])
    return out


def task_colormap(task: str, classes: ClassSpec, background: str | None = None) -> dict:
    """``{label value: colour}`` for a task's Labels layer (0 stays transparent).

    ``background`` is the colour of background marks when the project sets none (default
    :data:`BACKGROUND_COLOR`; :func:`background_color` picks one that stands out on an image).
    """
    background = background or BACKGROUND_COLOR
    if task == SEPARATION:
        return {None: "transparent", 0: "transparent", BACKGROUND: background, INTERFACE: INTERFACE_COLOR}
    cmap: dict = {None: "transparent", 0: "transparent"}
    for i, c in enumerate(class_colors(classes, background)):
        cmap[i + 1] = c
    if task == SEGMENTATION and not (classes.colors and classes.colors[0]):
        cmap[BACKGROUND] = background + "40"  # exact masks: a faint background
    return cmap


def _rgb01(color) -> np.ndarray:
    """``"#rrggbb[aa]"`` or an RGB(A) sequence in 0..1 -> ``(3,)`` float RGB in 0..1."""
    if isinstance(color, str):
        h = color.lstrip("#")
        return np.array([int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4)])
    return np.clip(np.asarray(color, dtype=float)[:3], 0.0, 1.0)


def relative_luminance(color) -> float:
    """WCAG 2 relative luminance (0 black .. 1 white) of an sRGB colour."""
    c = _rgb01(color)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return float(lin @ np.array([0.2126, 0.7152, 0.0722]))


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours (1 = same luminance .. 21 = black on white)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def mean_display_color(image, rgb: bool | None = None, contrast_limits=None, colormap=None) -> np.ndarray:
    """Mean colour ``(3,)`` in 0..1 of an image as the viewer shows it.

    Args:
        image: a napari Image layer (its first plane, contrast limits and colormap are used),
            or a ``(H, W)`` / ``(H, W, 3)`` array (shown in gray between its min and max, as
            napari does by default).
        rgb, contrast_limits, colormap: override the layer's (arrays: ``rgb`` defaults to a
            last axis of 3).
    """
    if not isinstance(image, np.ndarray) and hasattr(image, "contrast_limits"):  # a layer
        rgb = _is_rgb(image, rgb)
        contrast_limits = contrast_limits if contrast_limits is not None else getattr(image, "contrast_limits", None)
        colormap = colormap if colormap is not None else getattr(image, "colormap", None)
        plane = image_plane(image, 0)
    else:
        plane = np.asarray(image)
        rgb = plane.ndim == 3 and plane.shape[-1] == 3 if rgb is None else rgb
    step = max(1, int(max(plane.shape[:2]) // 256))
    sub = np.asarray(plane[::step, ::step], dtype=np.float64)
    if contrast_limits is None:
        lo, hi = float(sub.min()), float(sub.max())
    else:
        lo, hi = (float(v) for v in contrast_limits)
    norm = np.clip((sub - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    if rgb:
        return norm.reshape(-1, 3).mean(0)
    if colormap is not None and hasattr(colormap, "map"):
        return np.asarray(colormap.map(norm.ravel()))[:, :3].mean(0)
    return np.repeat(norm.mean(), 3)


def background_color(image, **display) -> str:
    """The background-mark colour for an image: the first of :data:`BACKGROUND_CHOICES` with a
    contrast ratio of at least :data:`MIN_CONTRAST` against the image's mean displayed colour
    (:func:`mean_display_color`; ``display`` passes its overrides), else the best of them."""
    mean = mean_display_color(image, **display)
    ratios = [contrast_ratio(c, mean) for c in BACKGROUND_CHOICES]
    for c, r in zip(BACKGROUND_CHOICES, ratios, strict=True):
        if r >= MIN_CONTRAST:
            return c
    return BACKGROUND_CHOICES[int(np.argmax(ratios))]


def class_features(task: str, classes: ClassSpec) -> dict:
    """Labels-layer ``features`` naming each label value, so napari's status bar shows the
    class under the cursor (the layer's legend): ``{"index": [...], "class": [...]}``.

    ``task`` is a task name (values are class index + 1) or ``"prediction"`` (values are the
    class index, 0 = background).
    """
    names = list(task_class_names(task, classes)) if task in TASKS else list(classes.names)
    start = 0 if task == "prediction" else 1
    return {"index": list(range(start, start + len(names))), "class": names}


def legend_html(task: str, classes: ClassSpec, background: str | None = None) -> str:
    """One line of coloured squares and names for a task's or a prediction's label values
    (``task="prediction"``: the predicted class map), for a widget's legend label."""
    if task == SEPARATION:
        pairs = [(BACKGROUND, "not an interface", background or BACKGROUND_COLOR), (INTERFACE, "interface", INTERFACE_COLOR)]
    else:
        start = 0 if task == "prediction" else 1
        colors = class_colors(classes, background)
        pairs = [(i + start, n, c) for i, (n, c) in enumerate(zip(classes.names, colors, strict=False))]
        if task == "prediction":
            pairs = pairs[1:]  # background stays transparent in a class map
    return ", ".join(f"<span style='color:{c}'>■</span> {v} = {n}" for v, n, c in pairs)


def prediction_colormap(classes: ClassSpec) -> dict:
    """``{class index: colour}`` for a predicted class map (0 = background, transparent)."""
    cmap: dict = {None: "transparent", 0: "transparent"}
    for i, c in enumerate(class_colors(classes)[1:], start=1):
        cmap[i] = c
    return cmap


def task_class_names(task: str, classes: ClassSpec) -> tuple[str, ...]:
    """Class names of a task, in label-value order (value ``i + 1`` = name ``i``)."""
    return SEPARATION_CLASSES if task == SEPARATION else classes.names


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


def plane_shape(data: np.ndarray, rgb: bool) -> tuple[int, ...]:
    """Shape of the label maps of an image array: ``(H, W)`` or ``(N, H, W)``.

    Raises:
        ValueError: not a 2D image or a stack of 2D images; or ``(Y, X, C)`` with a few
            channels, which would read as a stack of images ``C`` pixels wide.
    """
    shape = tuple(data.shape[:-1] if rgb else data.shape)
    if len(shape) == 3 and shape[-1] < MIN_IMAGE_SIDE:
        raise ValueError(channels_message(data.shape))
    if len(shape) not in (2, 3):
        raise ValueError(
            f"The image has shape {tuple(data.shape)}; the plugin works on 2D images (H, W), "
            "RGB images (H, W, 3) and stacks of them (N, H, W[, 3]). Split other data first."
        )
    return shape


def label_shape(image_layer) -> tuple[int, ...]:
    """Shape the Labels layers of ``image_layer`` must have."""
    return plane_shape(image_layer.data, _is_rgb(image_layer))


def n_planes(image_layer) -> int:
    """Number of 2D images in the layer (1 for a 2D image)."""
    shape = label_shape(image_layer)
    return shape[0] if len(shape) == 3 else 1


def image_plane(image_layer, index: int = 0) -> np.ndarray:
    """The ``index``-th 2D image of a layer, as a numpy array."""
    data = image_layer.data
    if len(label_shape(image_layer)) == 2:
        return np.asarray(data)
    return np.asarray(data[index])


def label_plane(labels_layer, index: int = 0) -> np.ndarray:
    """The ``index``-th 2D map of a Labels layer (a view for numpy data)."""
    data = labels_layer.data
    return np.asarray(data) if data.ndim == 2 else np.asarray(data[index])


def _stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    return stem or "image"


def sample_names(image_layer) -> list[str]:
    """File stems of the layer's 2D images (from metadata when it fits, else the layer name)."""
    n = n_planes(image_layer)
    names = image_layer.metadata.get(META, {}).get("names")
    if names and len(names) == n and len(set(names)) == n:
        return list(names)
    stem = _stem(image_layer.name)
    if len(label_shape(image_layer)) == 2:
        return [stem]
    return [f"{stem}_{i:03d}" for i in range(n)]


def current_index(viewer, layer) -> int:
    """The stack index of ``layer`` shown in the viewer (0 for 2D layers)."""
    shape = label_shape(layer) if layer.__class__.__name__ == "Image" else tuple(layer.data.shape)
    if len(shape) == 2:
        return 0
    point = layer.world_to_data(viewer.dims.point[-layer.ndim :] if viewer.dims.ndim >= layer.ndim else viewer.dims.point)
    return int(np.clip(round(float(point[0])), 0, shape[0] - 1))


def view_region(viewer, layer) -> tuple[slice, slice]:
    """The ``(rows, cols)`` part of ``layer``'s 2D planes visible in the canvas.

    Uses only public napari API (the camera and ``viewer.canvas.size``), so a widget holding
    napari's plugin viewer proxy triggers no private-attribute warning.
    """
    shape = tuple(layer.data.shape[-2:]) if layer.__class__.__name__ != "Image" else label_shape(layer)[-2:]
    # napari 0.9 moved the camera to viewer.scene (viewer.camera is deprecated there).
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cy, cx = camera.center[-2:]
    zoom = float(camera.zoom) or 1.0
    size = _canvas_hw(viewer)
    if size is None:  # napari without a canvas model: the whole image
        return slice(0, shape[0]), slice(0, shape[1])
    cw, ch = size
    half_h, half_w = ch / zoom / 2, cw / zoom / 2
    pts = []
    for y, x in ((cy - half_h, cx - half_w), (cy + half_h, cx + half_w)):
        world = list(viewer.dims.point)
        world[-2], world[-1] = y, x
        pts.append(layer.world_to_data(world[-layer.ndim :])[-2:])
    (y0, x0), (y1, x1) = np.min(pts, axis=0), np.max(pts, axis=0)
    r0, r1 = int(np.clip(np.floor(y0), 0, shape[0])), int(np.clip(np.ceil(y1), 0, shape[0]))
    c0, c1 = int(np.clip(np.floor(x0), 0, shape[1])), int(np.clip(np.ceil(x1), 0, shape[1]))
    if r1 <= r0 or c1 <= c0:
        return slice(0, 0), slice(0, 0)
    return slice(r0, r1), slice(c0, c1)


def _canvas_hw(viewer) -> tuple[int, int] | None:
    """``(width, height)`` of the canvas in screen pixels (``viewer.canvas.size``, napari >= 0.6,
    kept in sync with the window's canvas), or ``None`` without it."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None or len(size) != 2:
        return None
    h, w = size  # (height, width), numpy order
    return int(w), int(h)


# --------------------------------------------------------------------------- geometry
def layer_geometry(layer) -> dict:
    """``{"scale", "translate"[, "units"]}`` of a layer or of a layer-data ``attributes`` dict,
    one entry per data axis (``units`` as strings; absent where napari has no units)."""
    get = layer.get if isinstance(layer, dict) else lambda k, d=None: getattr(layer, k, d)
    out = {}
    for key in ("scale", "translate"):
        v = get(key)
        if v is not None:
            out[key] = tuple(float(x) for x in np.ravel(v))
    units = get("units")
    if units is not None:
        out["units"] = tuple(str(u) for u in units)
    return out


def geometry_kwargs(image_layer, ndim: int | None = None, offset: Sequence[float] | None = None) -> dict:
    """Layer kwargs ``{"scale", "translate"[, "units"]}`` that put a new layer exactly over an
    image layer: element ``(r, c)`` of the new layer covers image pixel ``(r, c)``.

    Every layer made for an image (task labels, predictions, previews) takes these, so that
    an image added with ``scale=(0.5, 0.5)`` and a translate gets labels at the same place
    and brush sizes count image pixels.

    Args:
        image_layer: the napari Image layer, or a dict as returned by :func:`layer_geometry`.
        ndim: axes of the new layer (default: the image's, the RGB axis excluded). Extra
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


def image_geometry(image_layer) -> dict | None:
    """The geometry a dataset folder keeps for each 2D image of a layer (its last two axes;
    see :func:`napari_lazylabels.core.io.normalize_geometry`), ``None`` for plain pixels.

    ``image_layer`` may be a layer or a layer-data ``attributes`` dict.
    """
    g = geometry_kwargs(layer_geometry(image_layer), ndim=2)
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
        background: colour of background marks (:func:`background_color` of the image) when
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
    (2D, or a stack) and the three task Labels layers.

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
        rgb = len(shape) == 3
        stack = len(samples) > 1
        if single:
            img_name = samples[0].name if not stack else "images"
        else:
            img_name = samples[0].name if not stack else f"images {shape[0]}x{shape[1]}"
        image = np.stack([s.image for s in samples]) if stack else samples[0].image
        meta = {META: {"names": [s.name for s in samples], "classes": dataset.classes.to_dict(), "source": source}}
        geometry = layout[(shape, dtype)]
        img_kwargs = {"name": img_name, "rgb": rgb, "metadata": meta}
        if geometry:
            img_kwargs.update(geometry_kwargs(geometry, ndim=image.ndim - (1 if rgb else 0)))
        out.append((image, img_kwargs, "image"))
        background = background_color(samples[0].image, rgb=rgb)
        for task in TASKS:
            n = len(SEPARATION_CLASSES) if task == SEPARATION else dataset.classes.n_classes
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
        shape = plane_shape(np.asarray(data), rgb)
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
            stems = [_stem(name)] if n == 1 else [f"{_stem(name)}_{i:03d}" for i in range(n)]
        arr = np.asarray(data)
        geometry = image_geometry(attrs)
        for i in range(n):
            maps = {t: (task_data[t] if n == 1 else task_data[t][i]) if t in task_data else None for t in TASKS}
            samples.append(Sample(name=stems[i], image=arr if n == 1 else arr[i], geometry=geometry, **maps))
    return LazyDataset(classes=found_classes or ClassSpec(), samples=samples)


# --------------------------------------------------------------------------- predictions
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
            units the layer takes; without it :func:`upsert_layers` looks the image up by name.
    """
    meta = {"prediction": "instances", "image": image_name}
    if settings is not None:
        meta["settings"] = dict(settings)
    data = np.asarray(instances, dtype=np.int32)
    kwargs = {"name": f"{image_name} instances", "opacity": 0.5, "visible": True, "metadata": {META: meta}}
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
            scale, translate and units; without it :func:`upsert_layers` looks the image up
            by name.

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
    out.append((cls, {"name": f"{image_name} classes", "colormap": prediction_colormap(classes), "opacity": 0.5,
                      "features": class_features("prediction", classes),
                      "metadata": {META: {"prediction": "classes", "image": image_name, "classes": classes.to_dict()}}}, "labels"))
    if all(p.instances is not None for p in predictions):
        out.append(instances_layer_data(image_name, join([np.asarray(p.instances, dtype=np.int32) for p in predictions]), settings))
    if all(p.interfaces is not None for p in predictions):
        itf = join([np.asarray(p.interfaces, dtype=np.float32) for p in predictions])
        out.append((itf, {"name": f"{image_name} interfaces", "colormap": "magma", "contrast_limits": (0.0, 1.0),
                          "blending": "additive", "visible": False,
                          "metadata": {META: {"prediction": "interfaces", "image": image_name}}}, "image"))
    prob = join([(1.0 - np.asarray(p.probabilities[0], dtype=np.float32)) for p in predictions])
    out.append((prob, {"name": f"{image_name} probabilities", "colormap": "viridis", "contrast_limits": (0.0, 1.0),
                       "blending": "additive", "visible": False,
                       "metadata": {META: {"prediction": "probabilities", "image": image_name}}}, "image"))
    if geometry is not None:
        for data, kwargs, _ in out:
            kwargs.update(geometry_kwargs(geometry, ndim=np.ndim(data)))
    return out


def _with_image_geometry(viewer, data, kwargs: dict, layer_type: str) -> dict:
    """``kwargs`` plus the geometry of the image layer named in its metadata, when it sets no
    ``scale`` or ``translate`` of its own (layers made before the image's geometry was known)."""
    if "scale" in kwargs or "translate" in kwargs:
        return kwargs
    image_name = (kwargs.get("metadata") or {}).get(META, {}).get("image")
    if not image_name or image_name not in viewer.layers:
        return kwargs
    image = viewer.layers[image_name]
    if image.__class__.__name__ != "Image":
        return kwargs
    ndim = np.ndim(data) - (1 if layer_type == "image" and kwargs.get("rgb") else 0)
    return {**kwargs, **geometry_kwargs(image, ndim=ndim)}


def _same(current, wanted) -> bool:
    """A layer property equals a wanted value (arrays element-wise, units by their names)."""
    try:
        if isinstance(wanted, (str, bytes)) or any(isinstance(v, str) for v in np.ravel(np.asarray(wanted, object))):
            return tuple(str(u) for u in np.ravel(np.asarray(current, object))) == tuple(
                str(u) for u in np.ravel(np.asarray(wanted, object)))
        return np.allclose(np.asarray(current, float), np.asarray(wanted, float))
    except (TypeError, ValueError):
        return False


def upsert_layers(viewer, layer_data: Sequence[tuple]) -> list:
    """Add layers, or update the existing layer of the same name and type in place.

    A layer whose kwargs set no ``scale`` / ``translate`` takes those of the image layer its
    metadata names (``metadata["lazylabels"]["image"]``), so predictions lie over their image.

    Returns:
        the layers, in ``layer_data`` order.
    """
    from napari.layers import Layer

    out = []
    for data, kwargs, layer_type in layer_data:
        kwargs = _with_image_geometry(viewer, data, kwargs, layer_type)
        name = kwargs.get("name")
        existing = viewer.layers[name] if name in viewer.layers else None
        if existing is not None and existing.__class__.__name__.lower() == layer_type and existing.ndim == np.ndim(data) - (1 if kwargs.get("rgb") else 0):
            # geometry first and only where it differs: each change redraws the layer
            for key in ("scale", "translate", "units"):
                if key in kwargs and hasattr(existing, key) and not _same(getattr(existing, key), kwargs[key]):
                    setattr(existing, key, kwargs[key])
            existing.data = data
            if "features" in kwargs and hasattr(existing, "features"):
                existing.features = kwargs["features"]
            if "metadata" in kwargs:
                existing.metadata.update(kwargs["metadata"])
            out.append(existing)
            continue
        if existing is not None:
            viewer.layers.remove(existing)
        layer = Layer.create(data, dict(kwargs), layer_type)
        viewer.add_layer(layer)
        out.append(layer)
    return out
