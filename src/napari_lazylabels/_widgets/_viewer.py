"""What the viewer shows, and putting layers into it.

* :func:`image_display_color` / :func:`image_background_color`: an image layer's colour as
  displayed (its first plane through its contrast limits and colormap), and the colour of
  background marks that stands out on it (:mod:`._colors`).
* :func:`current_index` and :func:`view_region`: the stack plane shown and the part of it
  visible in the canvas (GrabCut's "objects in view", the training preview).
* :func:`upsert_layers`: add the converter's layer data tuples (:mod:`._layers`), or update
  the layers of the same names in place, over the image they belong to
  (:func:`needs_new_layer` and :func:`placeholder` let a new large layer arrive in two
  steps); :func:`restyle_labels`: a task layer takes new classes, colours and geometry, keeping its
  labels.

Only public napari API is used (the viewer model's dims, camera and canvas size, layer
transforms), so a widget holding napari's plugin viewer proxy triggers no private-attribute
warning.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _colors
from ._layers import META, geometry_kwargs, image_plane, label_shape


# --------------------------------------------------------------------------- displayed colour
def image_display_color(image_layer) -> np.ndarray:
    """Mean colour ``(3,)`` in 0..1 of an Image layer's first plane as the viewer shows it
    (its contrast limits and colormap; :func:`._colors.mean_display_color`).

    Raises:
        ValueError: an image the plugin cannot label (:func:`._layers.label_shape`).
    """
    return _colors.mean_display_color(image_plane(image_layer, 0), **_display(image_layer))


def image_background_color(image_layer) -> str:
    """The colour of background marks that stands out on an Image layer as shown
    (:func:`._colors.background_color`).

    Raises:
        ValueError: an image the plugin cannot label (:func:`._layers.label_shape`).
    """
    return _colors.background_color(image_plane(image_layer, 0), **_display(image_layer))


def _display(image_layer) -> dict:
    return {
        "rgb": bool(getattr(image_layer, "rgb", False)),
        "contrast_limits": getattr(image_layer, "contrast_limits", None),
        "colormap": getattr(image_layer, "colormap", None),
    }


# --------------------------------------------------------------------------- visible part
def current_index(viewer, layer) -> int:
    """The stack index of ``layer`` shown in the viewer (0 for 2D layers)."""
    shape = label_shape(layer) if layer.__class__.__name__ == "Image" else tuple(layer.data.shape)
    if len(shape) == 2:
        return 0
    point = layer.world_to_data(viewer.dims.point[-layer.ndim :] if viewer.dims.ndim >= layer.ndim else viewer.dims.point)
    return int(np.clip(round(float(point[0])), 0, shape[0] - 1))


def view_region(viewer, layer) -> tuple[slice, slice]:
    """The ``(rows, cols)`` part of ``layer``'s 2D planes visible in the canvas; empty slices
    when the layer is out of view.

    Computed from the viewer model (camera centre and zoom, ``viewer.canvas.size``), so it
    is right as soon as the camera moves, in a hidden viewer too. ``Layer.corner_pixels``
    gives the same region only after the canvas has drawn (never in a hidden viewer), one
    pixel longer (inclusive ends), and as the layer's edge pixels when the layer is out of
    view; tests/test_layers_geometry.py checks this region.
    """
    shape = tuple(layer.data.shape[-2:]) if layer.__class__.__name__ != "Image" else label_shape(layer)[-2:]
    # napari >= 0.9 keeps the camera in viewer.scene (viewer.camera is deprecated there)
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


# --------------------------------------------------------------------------- adding layers
def _with_image_geometry(viewer, data, kwargs: dict, layer_type: str) -> dict:
    """``kwargs`` plus the geometry of the image layer named in its metadata, when it sets no
    ``scale`` or ``translate`` of its own (layer data made by image name only, as the
    prediction worker makes it)."""
    if "scale" in kwargs or "translate" in kwargs:
        return kwargs
    image_name = (kwargs.get("metadata") or {}).get(META, {}).get("image")
    if not image_name or image_name not in viewer.layers:
        return kwargs
    image = viewer.layers[image_name]
    if image.__class__.__name__ != "Image":
        return kwargs
    ndim = _ndim(data, kwargs) - (1 if layer_type == "image" and kwargs.get("rgb") else 0)
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


def restyle_labels(layer, kwargs: dict) -> None:
    """Give an existing Labels layer the colours, class names, geometry and metadata of
    ``kwargs`` (:func:`._layers.labels_layer_kwargs`), keeping its name, opacity and labels:
    the project's classes changed, or its image moved or was rescaled."""
    from napari.utils.colormaps import DirectLabelColormap

    layer.colormap = DirectLabelColormap(color_dict=kwargs["colormap"])
    layer.features = kwargs["features"]
    for key in ("scale", "translate", "units"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    layer.metadata.setdefault(META, {}).update(kwargs["metadata"][META])


def _ndim(data, kwargs: dict) -> int:
    """Dimensions of layer data: of its first level for a multiscale list (never converted
    to an array: its levels may be larger than memory)."""
    return len(data[0].shape) if kwargs.get("multiscale") else np.ndim(data)


def _updatable(existing, data, kwargs: dict, layer_type: str) -> bool:
    """Whether layer ``existing`` (or ``None``) can take ``data`` in place: same type and
    dimensions, neither multiscale (napari fixes that when it creates a layer)."""
    return (
        existing is not None and existing.__class__.__name__.lower() == layer_type
        and not kwargs.get("multiscale") and not getattr(existing, "multiscale", False)
        and existing.ndim == _ndim(data, kwargs) - (1 if kwargs.get("rgb") else 0)
    )


def needs_new_layer(viewer, layer_data: tuple) -> bool:
    """Whether :func:`upsert_layers` would create a layer for ``layer_data`` (none of its
    name, or one of another type or dimensions) instead of updating one in place."""
    data, kwargs, layer_type = layer_data
    name = kwargs.get("name")
    return not _updatable(viewer.layers[name] if name in viewer.layers else None, data, kwargs, layer_type)


def placeholder(layer_data: tuple) -> tuple:
    """``layer_data`` with its data replaced by zeros of one pixel per plane (same dtype,
    leading axes and RGB channels): adding it costs napari the layer itself (its visual
    and controls, about 0.1 s here) without the texture, so a new large layer can be added
    in one turn of the event loop and filled (:func:`upsert_layers`, in place) in the next,
    two short pauses instead of one long one (docs/benchmarks.md, "Prediction in the viewer")."""
    data, kwargs, layer_type = layer_data
    data = np.asarray(data)
    rgb = 1 if kwargs.get("rgb") else 0
    shape = data.shape[: data.ndim - 2 - rgb] + (1, 1) + data.shape[data.ndim - rgb:]
    return (np.zeros(shape, data.dtype), dict(kwargs), layer_type)


def upsert_layers(viewer, layer_data: Sequence[tuple]) -> list:
    """Add layers, or update the existing layer of the same name and type in place.

    A layer whose kwargs set no ``scale`` / ``translate`` takes those of the image layer its
    metadata names (``metadata["lazylabels"]["image"]``), so predictions lie over their image.
    An updated layer takes its geometry first and only where it differs, then its data: each
    change redraws the layer.

    Returns:
        the layers, in ``layer_data`` order.
    """
    from napari.layers import Layer

    out = []
    for data, kwargs, layer_type in layer_data:
        kwargs = _with_image_geometry(viewer, data, kwargs, layer_type)
        name = kwargs.get("name")
        existing = viewer.layers[name] if name in viewer.layers else None
        if _updatable(existing, data, kwargs, layer_type):
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
