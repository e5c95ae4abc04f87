"""Lazy label conventions: the three label maps, their values and the two label modes.

Every label map is a 2D integer array of the image's height and width.

* ``0`` means *not annotated*, in every map. Unannotated pixels never enter the loss in
  ``ignore`` mode (the default).
* Values ``v >= 1`` name class ``v - 1`` of the task's class list. Class 0 is always the
  background, which is therefore an explicit class the user paints (value ``1``).

Tasks (the paper's numbering):

* :data:`DETECTION` (task 1): rough inner marks of objects, per class, boundaries left out;
  plus background scribbles (value 1).
* :data:`SEPARATION` (task 2): scribbles on interfaces between touching objects. Its classes
  are fixed: ``("background", "interface")``, so interface scribbles have value ``2``. Value
  ``1`` marks pixels the user asserts are *not* interfaces.
* :data:`SEGMENTATION` (task 3): exact masks, usually for a few images only.

Label modes:

* ``"ignore"``: pixels left at 0 are ignored by the loss. For separation, pixels that other
  maps show not to be interfaces count as separation background, on every image: detection
  marks (inner parts of objects, background scribbles), the inside of exact masks (more
  than 2 px from any change of label) and the outline of exact-mask objects where they meet
  open background (:func:`mask_outline`; of these, a band of 3 px around interface
  scribbles is left out). Without these implied negatives the separation head only ever sees interface
  positives next to object borders and learns "every border is an interface".
* ``"paper"``: as in Ke et al., every pixel not marked in an image's detection (or separation)
  map counts as background for that task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DETECTION = "detection"
SEPARATION = "separation"
SEGMENTATION = "segmentation"
TASKS: tuple[str, str, str] = (DETECTION, SEPARATION, SEGMENTATION)
"""The three tasks, in the paper's order (task 1, 2, 3)."""

DEFAULT_TASK_WEIGHTS: dict[str, float] = {DETECTION: 1.0, SEPARATION: 1.0, SEGMENTATION: 1.0}
"""The product's alpha_k of eq. (5) (``TrainConfig.task_weights``, the Train widget's fields).
Every task weighs 1: a smaller separation weight helps on glands that rarely touch but hurts
on touching nuclei (docs/benchmarks.md, "The separation term slows the multi-task net on
GlaS")."""

UNLABELLED = 0
BACKGROUND = 1
INTERFACE = 2
SEPARATION_CLASSES: tuple[str, str] = ("background", "interface")

LABEL_MODES = ("ignore", "paper")


@dataclass(frozen=True)
class ClassSpec:
    """The classes of a project: class 0 is the background.

    Args:
        names: class names, background first, e.g. ``("background", "nucleus")``.
        colors: optional ``#rrggbb`` colour per class, for the viewer.
    """

    names: tuple[str, ...] = ("background", "object")
    colors: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        if len(names) < 2:
            raise ValueError(
                f"A project needs the background and at least one object class, got {names!r}. "
                "Add a class name, e.g. ('background', 'nucleus')."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"Class names must be unique, got {names!r}.")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "colors", tuple(str(c) for c in self.colors))

    @property
    def n_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.names)

    def value_of(self, name: str) -> int:
        """Label value painted for class ``name`` (class index + 1)."""
        return self.names.index(name) + 1

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colors": list(self.colors)}

    @classmethod
    def from_dict(cls, d: dict) -> ClassSpec:
        return cls(names=tuple(d["names"]), colors=tuple(d.get("colors", ())))


def n_task_classes(task: str, n_classes: int) -> int:
    """Number of output classes of ``task`` for a project with ``n_classes`` classes."""
    if task == SEPARATION:
        return len(SEPARATION_CLASSES)
    if task in (DETECTION, SEGMENTATION):
        return n_classes
    raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")


def validate_label_map(label: np.ndarray, shape: tuple[int, int], n_values: int, what: str) -> np.ndarray:
    """Check a label map and return it as ``uint8`` or ``uint16``.

    Args:
        label: ``(H, W)`` integer array.
        shape: the image's ``(H, W)``.
        n_values: largest allowed value (number of classes of the task).
        what: name used in error messages, e.g. ``"detection map of img_01"``.

    Raises:
        ValueError: wrong shape, non-integer dtype, negative or too large values.
    """
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] in (3, 4) and label.shape[:2] == tuple(shape):
        raise ValueError(
            f"The {what} is an RGB image {label.shape}; label maps must be single-channel "
            "integer images where 0 = not annotated and v >= 1 = class v - 1."
        )
    if label.shape != tuple(shape):
        raise ValueError(
            f"The {what} has shape {label.shape} but its image is {tuple(shape)} (H, W); "
            "label maps must match their image's height and width."
        )
    if label.dtype.kind == "b":
        label = label.astype(np.uint8)
    if label.dtype.kind == "f":
        if not np.all(np.isfinite(label)) or not np.all(label == np.round(label)):
            raise ValueError(f"The {what} has non-integer values; label maps hold integers.")
        label = label.astype(np.int64)
    if label.dtype.kind not in "iu":
        raise ValueError(f"The {what} has dtype {label.dtype}; label maps hold integers.")
    if label.size and label.min() < 0:
        raise ValueError(f"The {what} has negative values; 0 = not annotated, v >= 1 = class v - 1.")
    if label.size and label.max() > n_values:
        raise ValueError(
            f"The {what} has value {int(label.max())} but the task has only {n_values} classes "
            f"(values 1..{n_values}; 0 = not annotated). Add the class to the project or repaint."
        )
    return label.astype(np.uint8 if n_values < 256 else np.uint16, copy=False)


def mask_interior(label: np.ndarray, margin: int) -> np.ndarray:
    """Annotated pixels whose label is the same within ``margin`` pixels (a square window):
    the inside of each labelled region, away from every change of label and from unannotated
    pixels."""
    from scipy import ndimage

    size = 2 * margin + 1
    lo = ndimage.minimum_filter(label, size=size, mode="nearest")
    hi = ndimage.maximum_filter(label, size=size, mode="nearest")
    return (lo == hi) & (label != UNLABELLED)


def _disk(radius: int) -> np.ndarray:
    import cv2

    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def mask_outline(segmentation: np.ndarray, margin: int = 2, gap: int = 3) -> np.ndarray:
    """Pixels of an exact mask within ``margin`` px of an object/background edge that cannot
    be interfaces: the edge where an object meets open background.

    Edges that face another object across a narrow strip of background (at most about
    ``2 * gap`` px wide, the gap GrabCut or a careful annotator leaves between touching
    objects) are left out, since that strip *is* an interface. Edges between two object
    classes are left out too.

    Args:
        segmentation: ``(H, W)`` task-3 map (0 unannotated, 1 background, >= 2 objects).

    Returns:
        ``(H, W)`` bool.
    """
    import cv2

    fg = (segmentation >= 2).astype(np.uint8)
    bg = (segmentation == BACKGROUND).astype(np.uint8)
    if not fg.any() or not bg.any():
        return np.zeros(segmentation.shape, bool)
    k = _disk(margin)
    edge = (cv2.dilate(fg, k).astype(bool) & bg.astype(bool)) | (cv2.dilate(bg, k).astype(bool) & fg.astype(bool))
    strips = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, _disk(gap)).astype(bool) & bg.astype(bool)
    if strips.any():
        edge &= ~cv2.dilate(strips.astype(np.uint8), _disk(gap + margin)).astype(bool)
    return edge


def training_targets(
    detection: np.ndarray | None,
    separation: np.ndarray | None,
    segmentation: np.ndarray | None,
    mode: str = "ignore",
    marks_to_segmentation: bool = False,
) -> dict[str, np.ndarray | None]:
    """Turn stored label maps into per-task training targets.

    Targets hold class indices (``label - 1``) and ``-1`` where the loss ignores the pixel;
    a task whose map is ``None`` gets ``None`` (the image is not in that task's loss). In
    ignore mode the separation target also holds the negatives other maps imply (detection
    marks, insides of exact masks), so an image with marks but no separation map still
    teaches the separation head where interfaces are *not*.

    Args:
        detection: ``(H, W)`` task-1 map or ``None``.
        separation: ``(H, W)`` task-2 map or ``None``.
        segmentation: ``(H, W)`` task-3 map or ``None``.
        mode: ``"ignore"`` or ``"paper"`` (see module docstring).
        marks_to_segmentation: ignore mode only: an image without an exact mask gets its
            detection marks (object marks and background strokes, unmarked pixels ignored)
            as a partial segmentation target, so the segmentation head learns from every
            image, not only from the few with exact masks.

    Returns:
        ``{task: (H, W) int64 array or None}``.
    """
    if marks_to_segmentation and mode != "ignore":
        raise ValueError("marks_to_segmentation needs label mode 'ignore'.")
    if mode not in LABEL_MODES:
        raise ValueError(f"Unknown label mode {mode!r}; use one of {LABEL_MODES}.")
    out: dict[str, np.ndarray | None] = {}
    seg_source = segmentation
    if marks_to_segmentation and segmentation is None and detection is not None:
        seg_source = detection
    for task, lab in ((DETECTION, detection), (SEGMENTATION, seg_source)):
        if lab is None:
            out[task] = None
            continue
        t = lab.astype(np.int64) - 1
        if mode == "paper" and task == DETECTION:
            t[lab == UNLABELLED] = BACKGROUND - 1
        out[task] = t
    if mode == "paper":
        if separation is None:
            out[SEPARATION] = None
        else:
            t = separation.astype(np.int64) - 1
            t[separation == UNLABELLED] = BACKGROUND - 1
            out[SEPARATION] = t
        return out
    # Ignore mode: besides the user's separation scribbles, pixels that other labels show not
    # to be interfaces count as separation background, also on images without a separation
    # map: detection marks (object insides, background strokes), the inside of exact masks
    # (more than 2 px from any change of label) and their outline against open background.
    maps = [m for m in (detection, separation, segmentation) if m is not None]
    if not maps:
        out[SEPARATION] = None
        return out
    known_not = np.zeros(maps[0].shape, bool)
    if segmentation is not None:
        known_not |= mask_interior(segmentation, 2) | mask_outline(segmentation)
        if separation is not None and np.any(separation == INTERFACE):
            # How wide an interface is, the exact mask does not say: leave a band around
            # interface scribbles out.
            import cv2

            near = cv2.dilate((separation == INTERFACE).astype(np.uint8), _disk(3)).astype(bool)
            known_not &= ~near
    if detection is not None:
        known_not |= detection != UNLABELLED
    if separation is None:
        if not known_not.any():
            out[SEPARATION] = None
            return out
        t = np.full(known_not.shape, -1, np.int64)
    else:
        t = separation.astype(np.int64) - 1
        known_not &= separation == UNLABELLED
    t[known_not] = BACKGROUND - 1
    out[SEPARATION] = t
    return out
