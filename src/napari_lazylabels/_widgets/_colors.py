"""Colours and names of label values: what the layers of a project look like.

Every Labels layer of a project colours its values the same way: a task layer shows class
``i`` as value ``i + 1`` in the project's colour (else a palette), background marks in a
colour that stands out on the image (cyan on dark to mid-gray images, navy on bright ones),
interfaces in yellow; a predicted class map shows class ``i`` as value ``i`` with the
background transparent. The same colours make the widgets' legends, and the same names the
layers' ``features`` (napari's status bar names the class under the cursor).

The functions take a :class:`ClassSpec` and arrays only, so that the converter
(:mod:`._layers`) builds coloured layer data from them and nothing here reads a layer;
:mod:`._viewer` gives the colour of an image layer as the viewer shows it.
"""

from __future__ import annotations

import numpy as np

from ..core.labels import (
    BACKGROUND,
    INTERFACE,
    SEGMENTATION,
    SEPARATION,
    SEPARATION_CLASSES,
    TASKS,
    ClassSpec,
)

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


# --------------------------------------------------------------------------- classes
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


def prediction_colormap(classes: ClassSpec) -> dict:
    """``{class index: colour}`` for a predicted class map (0 = background, transparent)."""
    cmap: dict = {None: "transparent", 0: "transparent"}
    for i, c in enumerate(class_colors(classes)[1:], start=1):
        cmap[i] = c
    return cmap


def preview_display(classes: ClassSpec | None) -> dict:
    """Image-layer kwargs that show a class map ``(..., H, W)`` of ``classes`` in the class
    colours, background transparent: a stepwise colormap with class ``k`` at the centre of
    its step (``contrast_limits (-0.5, n - 0.5)``), safe from rounding at the steps' edges.

    The training preview is an Image layer, not a Labels layer: adding one costs the event
    loop a third of a Labels layer's (no paint overlays)."""
    from napari.utils.colormaps import Colormap
    from napari.utils.colormaps.standardize_color import transform_color

    colors = class_colors(classes or ClassSpec())
    n = len(colors)
    rgba = [[0.0, 0.0, 0.0, 0.0]] + [list(map(float, transform_color(c)[0])) for c in colors[1:]]
    cmap = Colormap(
        colors=rgba, controls=np.linspace(0.0, 1.0, n + 1), interpolation="zero",
        name="lazylabels preview " + " ".join(colors[1:]),
    )
    return {"colormap": cmap, "contrast_limits": (-0.5, n - 0.5), "blending": "translucent"}


def task_class_names(task: str, classes: ClassSpec) -> tuple[str, ...]:
    """Class names of a task, in label-value order (value ``i + 1`` = name ``i``)."""
    return SEPARATION_CLASSES if task == SEPARATION else classes.names


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


# --------------------------------------------------------------------------- contrast
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
    """Mean colour ``(3,)`` in 0..1 of a 2D image as the viewer shows it.

    Args:
        image: a ``(H, W)`` or ``(H, W, 3)`` array (:func:`._viewer.image_display_color` gives
            an Image layer's).
        rgb: whether the last axis holds colours (default: a last axis of 3).
        contrast_limits: the displayed range (default: the image's min and max, as napari
            shows an image by default).
        colormap: a napari colormap of a gray image (default: gray).
    """
    plane = np.asarray(image)
    rgb = plane.ndim == 3 and plane.shape[-1] == 3 if rgb is None else bool(rgb)
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
    """The background-mark colour for a 2D image: the first of :data:`BACKGROUND_CHOICES` with
    a contrast ratio of at least :data:`MIN_CONTRAST` against the image's mean displayed
    colour (:func:`mean_display_color`; ``display`` passes its ``rgb``, ``contrast_limits``
    and ``colormap``), else the best of them."""
    mean = mean_display_color(image, **display)
    ratios = [contrast_ratio(c, mean) for c in BACKGROUND_CHOICES]
    for c, r in zip(BACKGROUND_CHOICES, ratios, strict=True):
        if r >= MIN_CONTRAST:
            return c
    return BACKGROUND_CHOICES[int(np.argmax(ratios))]
