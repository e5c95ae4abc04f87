"""Instances from predicted maps: objects cut at predicted interfaces (the separation task).

:func:`instances_from_prediction` turns a class map (and the separation head's interface map)
into numbered objects; :func:`iter_instances_from_prediction` is its job form (see
:mod:`~napari_lazylabels.core.jobs`). The defaults of the cut, :func:`auto_min_object_size`
and :func:`auto_interface_threshold`, come from the model's :class:`ModelConfig`;
:func:`recorded_instance_settings` reads them back from a prediction folder's record.

Memory: besides the ``(H, W)`` int32 result, about 6 bytes per pixel of temporaries; the
watershed runs on one connected component at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .jobs import PHASE_SECONDS, Progress, drive

if TYPE_CHECKING:
    from .model import ModelConfig

MIN_OBJECT_FRACTION = 0.1
"""Default smallest instance, as a share of the area of the model's typical object."""

DEFAULT_INTERFACE_THRESHOLD = 0.5
"""Interface threshold of a model that was not tuned."""


def instances_from_prediction(
    classes: np.ndarray,
    interfaces: np.ndarray | None,
    interface_threshold: float = 0.5,
    min_size: int = 16,
    min_seed_size: int | None = None,
    seed_erosion: int = 0,
    probabilities: np.ndarray | None = None,
    seed_probability: float = 0.9,
    neck_depth: float = 0.0,
) -> np.ndarray:
    """Instances from a class map, split at predicted interfaces (the separation task).

    Per object class ``c >= 1`` (objects of different classes are never merged): each
    connected component of ``classes == c`` is one object, unless it holds two or more
    *seeds*, the connected parts of the component where ``interfaces < interface_threshold``
    (optionally eroded by ``seed_erosion`` pixels; seeds below ``min_seed_size`` pixels are
    dropped). Then a watershed on the interface probability, started from the seeds and
    masked to the component, gives the interface pixels back to the neighbouring objects.
    Without ``interfaces``, plain connected components (4-connectivity).

    Args:
        classes: ``(H, W)`` class indices, 0 = background.
        interfaces: ``(H, W)`` interface probability or ``None``.
        interface_threshold: pixels at or above it separate objects.
        min_size: objects smaller than this (pixels) are removed (set to 0).
        min_seed_size: smallest seed; default ``max(1, min_size // 4)``.
        seed_erosion: erode the seeds by this many pixels first.
        probabilities: optional ``(K, H, W)`` class probabilities. Then a pixel also
            separates objects where its class probability is below ``seed_probability``, so
            objects split by a thin, uncertain background line (membranes, the gaps between
            nuclei the class map merges) get one seed each; the watershed then grows the
            seeds back over the uncertain pixels of the component.
        seed_probability: class probability a seed pixel needs (with ``probabilities``).
        neck_depth: when > 0, objects are also split at necks: every seed is cut further
            into the basins of the distance to its edge whose peak rises at least this many
            pixels above the neck joining it to another (h-maxima), and a watershed on that
            distance gives each part its pixels. Touching round objects that the class map
            merges and the interface map does not cut come apart; a value of about a tenth
            of the objects' radius splits pairs of nuclei without cutting single ones.

    Returns:
        ``(H, W)`` int32, 0 = no object, objects numbered ``1..N`` (class by class).
    """
    return drive(
        iter_instances_from_prediction(
            classes, interfaces, interface_threshold, min_size, min_seed_size, seed_erosion,
            probabilities, seed_probability, neck_depth,
        )
    )


@dataclass(frozen=True)
class _Cut:
    """How components are cut (see :func:`instances_from_prediction`)."""

    min_size: int
    min_seed_size: int
    seed_erosion: int
    neck_depth: float


class _InstanceMap:
    """An ``(H, W)`` int32 instance map being filled; objects are numbered from 1 in the order
    they are added."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.array = np.zeros(shape, np.int32)
        self.next_id = 1

    def add(
        self,
        labels: np.ndarray,
        keep: np.ndarray,
        where: np.ndarray,
        at: tuple[slice, ...] | None = None,
    ) -> None:
        """Number the labels for which ``keep`` (bool per label value) is True with the next
        ids, in label order, and write them where ``where`` (in the window ``at`` of the map,
        whose shape ``labels`` has; the whole map by default)."""
        count = int(keep.sum())
        lut = np.zeros(len(keep), np.int32)
        lut[keep] = np.arange(self.next_id, self.next_id + count, dtype=np.int32)
        self.next_id += count
        np.copyto(self.array if at is None else self.array[at], lut[labels], where=where)

    def add_one(self, at: tuple[slice, ...], mask: np.ndarray) -> None:
        """One object: the ``mask`` pixels of the window ``at``."""
        self.array[at][mask] = self.next_id
        self.next_id += 1


def _at_least(labels: np.ndarray, n: int, min_size: int) -> np.ndarray:
    """Bool per label value ``0..n`` of ``labels``: the labels with at least ``min_size``
    pixels (never 0, the background)."""
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size
    keep[0] = False
    return keep


def iter_instances_from_prediction(
    classes: np.ndarray,
    interfaces: np.ndarray | None,
    interface_threshold: float = 0.5,
    min_size: int = 16,
    min_seed_size: int | None = None,
    seed_erosion: int = 0,
    probabilities: np.ndarray | None = None,
    seed_probability: float = 0.9,
    neck_depth: float = 0.0,
) -> Iterator[Progress]:
    """Generator form of :func:`instances_from_prediction` (the same arguments).

    Yields ``Progress("instances", done, total)`` after each class's labelling and then at
    least every :data:`~napari_lazylabels.core.jobs.PHASE_SECONDS` of the per-component loop
    (``done`` components of the ``total`` found so far), and *returns* the ``(H, W)`` int32
    instance map (``result = yield from ...``), so a worker shows the step's progress and can
    stop inside it.
    """
    classes, interfaces = _checked_maps(classes, interfaces)
    if min_seed_size is None:
        min_seed_size = max(1, min_size // 4)
    cut = _Cut(min_size, min_seed_size, seed_erosion, neck_depth)
    inst = _InstanceMap(classes.shape)
    n_classes = int(classes.max()) + 1 if classes.size else 0
    done = found = 0
    for c in range(1, n_classes):
        fg = classes == c
        comp, n = ndimage.label(fg)
        found += n
        yield Progress("instances", done, found)
        if n == 0:
            continue
        split, threshold = _separation(c, interfaces, interface_threshold, probabilities, seed_probability)
        big = _at_least(comp, n, min_size)
        if split is None and neck_depth <= 0:  # plain connected components
            inst.add(comp, big, where=fg)
            done += n
            continue
        todo = _add_uncut(inst, comp, fg, big, split, threshold, neck_depth)
        del fg
        done += n - int(todo.sum())
        done = yield from _iter_cut_components(inst, comp, todo, split, threshold, cut, done, found)
    yield Progress("instances", found, found)
    return inst.array


def _checked_maps(
    classes: np.ndarray, interfaces: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``classes`` ``(H, W)`` and ``interfaces`` ``(H, W)`` (or ``None``; ``(1, H, W)`` is
    accepted) as arrays, checked to match."""
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise ValueError(f"classes must be (H, W), got {classes.shape}.")
    if interfaces is not None:
        interfaces = np.asarray(interfaces)
        if interfaces.ndim == 3 and interfaces.shape[0] == 1:
            interfaces = interfaces[0]
        if interfaces.shape != classes.shape:
            raise ValueError(
                f"interfaces {interfaces.shape} and classes {classes.shape} differ in shape."
            )
    return classes, interfaces


def _separation(
    c: int,
    interfaces: np.ndarray | None,
    interface_threshold: float,
    probabilities: np.ndarray | None,
    seed_probability: float,
) -> tuple[np.ndarray | None, float]:
    """``(map, threshold)``: pixels of class ``c`` where ``map >= threshold`` separate objects.

    The interface map and its threshold; with ``probabilities``, one map scaled so that 1
    separates: interfaces at their threshold, or the class probability below
    ``seed_probability``. ``None`` when nothing separates.
    """
    if probabilities is None or c >= len(probabilities):
        return interfaces, interface_threshold
    doubt = (1.0 - np.asarray(probabilities[c], np.float32)) / max(1e-6, 1.0 - seed_probability)
    if interfaces is None:
        return doubt, 1.0
    return np.maximum(doubt, np.asarray(interfaces, np.float32) / interface_threshold), 1.0


def _add_uncut(
    inst: _InstanceMap,
    comp: np.ndarray,
    fg: np.ndarray,
    big: np.ndarray,
    split: np.ndarray | None,
    threshold: float,
    neck_depth: float,
) -> np.ndarray:
    """Add the components (of ``big`` ones) that nothing can split, each one object at once,
    and return the bool per label of those left to cut: the ones holding a separating pixel,
    or all with ``neck_depth`` (any component may have a neck)."""
    crossed = np.zeros(len(big), bool)
    if neck_depth > 0:
        crossed[:] = True
    elif split is not None:
        crossed[comp[fg & (np.asarray(split) >= threshold)]] = True
    simple = big & ~crossed
    inst.add(comp, simple, where=simple[comp])
    return big & crossed


def _iter_cut_components(
    inst: _InstanceMap,
    comp: np.ndarray,
    todo: np.ndarray,
    split: np.ndarray | None,
    threshold: float,
    cut: _Cut,
    done: int,
    found: int,
) -> Iterator[Progress]:
    """Cut the components of ``comp`` marked in ``todo`` one by one (:func:`_cut_component`),
    yielding a phase event at least every ``PHASE_SECONDS``; returns ``done`` plus their
    count."""
    last = time.perf_counter()
    for i, sl in enumerate(ndimage.find_objects(comp), start=1):
        if sl is None or not todo[i]:
            continue
        done += 1
        if time.perf_counter() - last >= PHASE_SECONDS:
            yield Progress("instances", done, found)
            last = time.perf_counter()
        _cut_component(inst, sl, comp[sl] == i, split, threshold, cut)
    return done


def _cut_component(
    inst: _InstanceMap,
    at: tuple[slice, ...],
    mask: np.ndarray,
    split: np.ndarray | None,
    threshold: float,
    cut: _Cut,
) -> None:
    """Add one component (``mask`` in the window ``at``): one object with fewer than two
    seeds, else the watershed's parts of at least ``cut.min_size`` pixels."""
    from skimage.segmentation import watershed

    interf = np.zeros(mask.shape, np.float32) if split is None else np.asarray(split[at], dtype=np.float32)
    seeds, ns, landscape = _seeds(mask, interf, threshold, cut)
    if ns <= 1:
        inst.add_one(at, mask)
        return
    parts = watershed(landscape, markers=seeds, mask=mask)
    inst.add(parts, _at_least(parts, ns, cut.min_size), where=mask, at=at)


def _seeds(
    mask: np.ndarray, interf: np.ndarray, threshold: float, cut: _Cut
) -> tuple[np.ndarray, int, np.ndarray]:
    """``(seeds, count, landscape)`` of one component: the labelled seeds (the component's
    pixels below ``threshold`` in ``interf``, eroded, cut at necks, small ones dropped) and the
    map the watershed floods (``interf``, or the negated distance to the seeds' edge)."""
    from skimage.morphology import h_maxima

    seed_mask = mask & (interf < threshold)
    if cut.seed_erosion > 0:
        seed_mask = ndimage.binary_erosion(seed_mask, iterations=cut.seed_erosion)
    landscape = interf
    if cut.neck_depth > 0:
        landscape = -ndimage.distance_transform_edt(np.pad(seed_mask, 1))[1:-1, 1:-1]
        seed_mask = h_maxima(-landscape, cut.neck_depth).astype(bool) & seed_mask
    seeds, ns = ndimage.label(seed_mask)
    if ns > 1 and cut.neck_depth <= 0:  # neck seeds are peaks: a pixel or a ridge
        small = np.bincount(seeds.ravel(), minlength=ns + 1) < cut.min_seed_size
        small[0] = False
        if small.any():
            seeds[small[seeds]] = 0
            seeds, ns = ndimage.label(seeds > 0)
    return seeds, ns, landscape


def separating_interfaces(
    interfaces: np.ndarray, instances: np.ndarray, threshold: float = 0.5, distance: int = 2
) -> np.ndarray:
    """The predicted interface pixels that separate two predicted objects.

    The separation head's probability map can also be high along an object's edge against
    open background, where there is nothing to separate; this keeps only the pixels at or
    above ``threshold`` that have two different objects within ``distance`` px (Chebyshev).

    Args:
        interfaces: ``(H, W)`` interface probability.
        instances: ``(H, W)`` instance ids (0 = none), e.g. from
            :func:`instances_from_prediction`.

    Returns:
        ``(H, W)`` bool.
    """
    interfaces = np.asarray(interfaces)
    inst = np.asarray(instances).astype(np.int32, copy=False)
    if interfaces.shape != inst.shape:
        raise ValueError(f"interfaces {interfaces.shape} and instances {inst.shape} differ in shape.")
    size = 2 * distance + 1
    top = int(inst.max(initial=0)) + 1  # stands for "no object" in the minimum
    hi = ndimage.maximum_filter(inst, size=size, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(inst > 0, inst, top), size=size, mode="constant", cval=top)
    return (interfaces >= threshold) & (hi > 0) & (lo != top) & (hi != lo)


# --------------------------------------------------------------------------- settings
def auto_min_object_size(config: ModelConfig, min_object_size: int | None = None) -> int:
    """``min_object_size`` if given, else a tenth (:data:`MIN_OBJECT_FRACTION`) of the area of
    a disc of the model's typical object diameter, at least 16 px (16 px without one)."""
    if min_object_size is not None:
        return int(min_object_size)
    d = config.object_diameter
    if d is None:
        return 16
    return max(16, int(MIN_OBJECT_FRACTION * math.pi / 4 * d * d))


def auto_interface_threshold(config: ModelConfig, interface_threshold: float | None = None) -> float:
    """``interface_threshold`` if given, else the model's tuned one, else 0.5."""
    if interface_threshold is not None:
        return float(interface_threshold)
    if config.interface_threshold is not None:
        return float(config.interface_threshold)
    return DEFAULT_INTERFACE_THRESHOLD


def recorded_instance_settings(
    recorded: dict, interface_threshold: float | None = None, min_object_size: int | None = None
) -> tuple[float, int]:
    """``(interface_threshold, min_object_size)`` for re-cutting recorded predictions: the
    values given, else the model's own as recorded
    (:meth:`~napari_lazylabels.core.predictor.Predictor.instance_settings`), else 0.5 and
    16 px."""
    if interface_threshold is None:
        interface_threshold = recorded.get("auto_interface_threshold", DEFAULT_INTERFACE_THRESHOLD)
    if min_object_size is None:
        min_object_size = recorded.get("auto_min_object_size", 16)
    return float(interface_threshold), int(min_object_size)
