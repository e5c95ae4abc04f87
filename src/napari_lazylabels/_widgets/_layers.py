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

Nothing here starts threads or shows widgets; the functions only take and return arrays and
layer data tuples (``(data, kwargs, layer_type)``) so they are easy to test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..core.io import LazyDataset, Sample
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

BACKGROUND_COLOR = "#8c8c8c"
INTERFACE_COLOR = "#ffd400"
PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
    "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324",
)


# --------------------------------------------------------------------------- classes, colours
def class_colors(classes: ClassSpec) -> list[str]:
    """One ``#rrggbb`` colour per class (background first): the project's, else a palette."""
    out = []
    for i in range(classes.n_classes):
        if i < len(classes.colors) and classes.colors[i]:
            out.append(classes.colors[i])
        else:
            out.append(BACKGROUND_COLOR if i == 0 else PALETTE[(i - 1) % len(PALETTE)])
    return out


def task_colormap(task: str, classes: ClassSpec) -> dict:
    """``{label value: colour}`` for a task's Labels layer (0 stays transparent)."""
    if task == SEPARATION:
        return {None: "transparent", 0: "transparent", BACKGROUND: BACKGROUND_COLOR, INTERFACE: INTERFACE_COLOR}
    cmap: dict = {None: "transparent", 0: "transparent"}
    for i, c in enumerate(class_colors(classes)):
        cmap[i + 1] = c
    if task == SEGMENTATION and not (classes.colors and classes.colors[0]):
        cmap[BACKGROUND] = BACKGROUND_COLOR + "40"  # exact masks: a faint background
    return cmap


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
        ValueError: not a 2D image or a stack of 2D images.
    """
    shape = tuple(data.shape[:-1] if rgb else data.shape)
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
    """The ``(rows, cols)`` part of ``layer``'s 2D planes visible in the canvas."""
    shape = tuple(layer.data.shape[-2:]) if layer.__class__.__name__ != "Image" else label_shape(layer)[-2:]
    # napari 0.9 moved the camera to viewer.scene (viewer.camera is deprecated there).
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    cy, cx = camera.center[-2:]
    zoom = float(camera.zoom) or 1.0
    try:
        cw, ch = _canvas_hw(viewer)
    except Exception:  # no window: the whole image
        return slice(0, shape[0]), slice(0, shape[1])
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


def _canvas_hw(viewer) -> tuple[int, int]:
    canvas = viewer.window._qt_viewer.canvas
    size = getattr(canvas, "size", None)
    if size is None:
        raise RuntimeError("no canvas")
    w, h = size[1], size[0]  # napari's VispyCanvas.size is (height, width)
    return int(w), int(h)


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


def labels_layer_kwargs(task: str, image_name: str, classes: ClassSpec, name: str | None = None) -> dict:
    """Layer kwargs for a task's Labels layer (name, colours, metadata, opacity)."""
    return {
        "name": name or task_layer_name(task),
        "colormap": task_colormap(task, classes),
        "opacity": 0.6 if task != SEGMENTATION else 0.45,
        "metadata": {META: {"task": task, "image": image_name, "classes": classes.to_dict()}},
    }


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
    out = []
    for i in indices if indices is not None else range(len(names)):
        maps = {}
        for task in TASKS:
            ly = task_layers.get(task)
            maps[task] = None if ly is None else np.array(label_plane(ly, i))
        out.append(Sample(name=names[i], image=image_plane(image_layer, i), **maps))
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
    """
    groups: dict[tuple, list[Sample]] = {}
    for s in dataset.samples:
        groups.setdefault((tuple(s.image.shape), s.image.dtype.str), []).append(s)
    out = []
    single = len(groups) == 1
    for (shape, _), samples in groups.items():
        rgb = len(shape) == 3
        stack = len(samples) > 1
        if single:
            img_name = samples[0].name if not stack else "images"
        else:
            img_name = samples[0].name if not stack else f"images {shape[0]}x{shape[1]}"
        image = np.stack([s.image for s in samples]) if stack else samples[0].image
        meta = {META: {"names": [s.name for s in samples], "classes": dataset.classes.to_dict(), "source": source}}
        out.append((image, {"name": img_name, "rgb": rgb, "metadata": meta}, "image"))
        for task in TASKS:
            n = len(SEPARATION_CLASSES) if task == SEPARATION else dataset.classes.n_classes
            dtype = np.uint8 if n < 256 else np.uint16
            planes = [
                (s.label(task).astype(dtype) if s.label(task) is not None else np.zeros(shape[:2], dtype))
                for s in samples
            ]
            data = np.stack(planes) if stack else planes[0]
            name = task_layer_name(task) if single else task_layer_name(task, img_name)
            out.append((data, labels_layer_kwargs(task, img_name, dataset.classes, name), "labels"))
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
        for i in range(n):
            maps = {t: (task_data[t] if n == 1 else task_data[t][i]) if t in task_data else None for t in TASKS}
            samples.append(Sample(name=stems[i], image=arr if n == 1 else arr[i], **maps))
    return LazyDataset(classes=found_classes or ClassSpec(), samples=samples)


# --------------------------------------------------------------------------- predictions
def instances_layer_data(image_name: str, instances: np.ndarray, settings: dict | None = None) -> tuple:
    """The ``"<image> instances"`` Labels layer data tuple.

    Args:
        image_name: the image layer's name.
        instances: ``(H, W)`` or ``(N, H, W)`` int32 object ids, 0 = none.
        settings: how they were cut (interface threshold, smallest object, ...), kept in the
            layer's metadata so that a re-split knows the model's automatic smallest object.
    """
    meta = {"prediction": "instances", "image": image_name}
    if settings is not None:
        meta["settings"] = dict(settings)
    return (np.asarray(instances, dtype=np.int32),
            {"name": f"{image_name} instances", "opacity": 0.5, "visible": True, "metadata": {META: meta}}, "labels")


def prediction_layer_data(
    image_name: str, predictions: Sequence, classes: ClassSpec | None = None, settings: dict | None = None
) -> list[tuple]:
    """Layer data tuples for the predictions of the planes of one image layer.

    Args:
        image_name: the image layer's name; layers are called ``"<image> classes"`` etc.
        predictions: one core :class:`Prediction` per plane (one for a 2D image).
        classes: the model's classes (for colours and names).
        settings: the instance settings used (see :func:`instances_layer_data`).

    Returns:
        ``"<image> classes"`` (Labels, uint8 class index, 0 = background),
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
    return out


def upsert_layers(viewer, layer_data: Sequence[tuple]) -> list:
    """Add layers, or update the existing layer of the same name and type in place.

    Returns:
        the layers, in ``layer_data`` order.
    """
    from napari.layers import Layer

    out = []
    for data, kwargs, layer_type in layer_data:
        name = kwargs.get("name")
        existing = viewer.layers[name] if name in viewer.layers else None
        if existing is not None and existing.__class__.__name__.lower() == layer_type and existing.ndim == np.ndim(data) - (1 if kwargs.get("rgb") else 0):
            existing.data = data
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
