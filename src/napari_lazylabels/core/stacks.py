"""Instance ids across the slices of a stack.

Each slice of a ``(Z or T, Y, X)`` stack is predicted on its own, so its objects are
numbered 1, 2, ... again. :class:`StackIds` renumbers them, slice after slice, so that an id
names one object in the whole stack: either every object of every slice gets its own id, or
(``link=True``) an object that overlaps an object of the slice before by more than
``min_iou`` (intersection over union) keeps that object's id, so one cell through a Z stack
or one nucleus over time is one label.

It holds only the previous slice, so a stack of any length is renumbered while its slices are
written one by one (``lazylabels predict`` on a stack TIFF, the Predict widget on a stack
layer, and both of their re-splits). Slices too large to hold (predicted block by block) are
linked tile by tile on disk: :func:`iter_link_table`, then :func:`iter_apply_link`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np

from .jobs import Progress

MIN_IOU = 0.5
"""Overlap (intersection over union) above which two objects of adjacent slices are one
object: above 0.5 an object can match at most one object of the other slice."""

_SLICE = re.compile(r"^(?P<stack>.+)_z(?P<index>\d{3,})$")


class StackIds:
    """Renumbers the instance maps of a stack's slices, in order, to ids unique in the stack.

    Args:
        link: give an object the id of the object of the previous slice it overlaps with
            intersection over union above ``min_iou`` (one-to-one); otherwise every object of
            every slice gets a new id.
        min_iou: see ``link``; in ``[0.5, 1)`` so that matches are one-to-one.

    Example::

        ids = StackIds(link=True)
        stack = [ids.add(plane) for plane in per_slice_instances]
    """

    def __init__(self, link: bool = False, min_iou: float = MIN_IOU) -> None:
        if not 0.5 <= min_iou < 1:
            raise ValueError(f"min_iou must be in [0.5, 1) (one-to-one matches), got {min_iou}.")
        self.link = bool(link)
        self.min_iou = float(min_iou)
        self.next_id = 1
        self._previous: np.ndarray | None = None

    def add(self, instances: np.ndarray) -> np.ndarray:
        """The next slice's instances with stack-wide ids.

        Args:
            instances: ``(H, W)`` integer ids of this slice, 0 = no object (any numbering).

        Returns:
            ``(H, W)`` int32 (int64 past 2**31 - 1 ids): 0 stays 0; each object gets the id of
            the previous slice's object it continues (``link``) or the next unused id, new
            objects numbered in the order of their ids in ``instances``.
        """
        instances = np.asarray(instances)
        if instances.ndim != 2:
            raise ValueError(f"A slice's instances are (H, W), got shape {instances.shape}.")
        if self._previous is not None and self._previous.shape != instances.shape:
            raise ValueError(
                f"Slices of one stack have one shape: {instances.shape} after {self._previous.shape}."
            )
        if instances.size and instances.min() < 0:
            raise ValueError("Instance ids are >= 0 (0 = no object).")
        dense = _dense(instances)
        present = np.flatnonzero(np.bincount(dense.ravel())[1:]) + 1
        lut = np.zeros(int(present[-1]) + 1 if len(present) else 1, dtype=np.int64)
        matched = self._matches(dense) if self.link and self._previous is not None else {}
        if matched:
            lut[np.fromiter(matched, np.int64)] = np.fromiter(matched.values(), np.int64)
        new = present[lut[present] == 0]
        lut[new] = np.arange(self.next_id, self.next_id + len(new))
        self.next_id += len(new)
        dtype = np.int32 if self.next_id <= np.iinfo(np.int32).max else np.int64
        out = lut.astype(dtype)[dense]
        self._previous = out
        return out

    def _matches(self, dense: np.ndarray) -> dict[int, int]:
        """``{id in dense: previous slice's id}`` for pairs above ``min_iou``, one-to-one."""
        prev = self._previous
        both = (dense != 0) & (prev != 0)
        if not both.any():
            return {}
        base = int(prev.max()) + 1
        keys, inter = np.unique(dense[both].astype(np.int64) * base + prev[both], return_counts=True)
        ids, prev_ids = keys // base, keys % base
        area = np.bincount(dense.ravel())[ids]
        prev_area = _areas(prev, prev_ids)
        return _one_to_one(ids, prev_ids, inter / (area + prev_area - inter), self.min_iou)


def _one_to_one(ids: np.ndarray, prev_ids: np.ndarray, iou: np.ndarray, min_iou: float) -> dict[int, int]:
    """``{id: previous slice's id}`` of the overlapping pairs ``(ids[k], prev_ids[k])`` whose
    ``iou[k]`` is above ``min_iou``, best first, each object in at most one pair."""
    keep = iou > min_iou  # above 0.5 an object has at most one partner either way
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for k in np.flatnonzero(keep)[np.argsort(-iou[keep], kind="stable")]:
        i, p = int(ids[k]), int(prev_ids[k])
        if i not in matched and p not in taken:
            matched[i] = p
            taken.add(p)
    return matched


def _tiles(shape: tuple[int, ...], tile: int) -> list[tuple[slice, slice]]:
    h, w = shape[-2:]
    return [(slice(y, min(y + tile, h)), slice(x, min(x + tile, w))) for y in range(0, h, tile) for x in range(0, w, tile)]


def iter_link_table(
    previous, current, first_id: int, next_id: int, min_iou: float = MIN_IOU, tile: int = 2048
) -> Iterator[Progress]:
    """Job (``Progress("linking", tile, tiles)``): how to link a slice written with its own
    ids to the slice before, for slices too large to hold (read tile by tile: zarr arrays, the
    planes of an OME-Zarr being written).

    Args:
        previous: ``(H, W)`` array-like, the slice before: ids below ``first_id`` (0 = none).
        current: ``(H, W)`` array-like, this slice: ids ``first_id .. next_id - 1`` (0 = none).
        min_iou: as in :class:`StackIds`.

    Returns:
        ``(next_id - first_id,)`` int64: for each id of ``current`` (from ``first_id`` on) the
        id of the previous slice's object it continues (intersection over union above
        ``min_iou``, one to one), else its own id. :func:`iter_apply_link` writes it.
    """
    n = next_id - first_id
    table = np.arange(first_id, next_id, dtype=np.int64)
    if n <= 0 or first_id <= 1:
        return table
    area, prev_area = np.zeros(n, np.int64), np.zeros(first_id, np.int64)
    keys, counts = [], []
    regions = _tiles(current.shape, tile)
    for i, region in enumerate(regions):
        yield Progress("linking", i, len(regions))
        cur = np.asarray(current[region]).astype(np.int64)
        prev = np.asarray(previous[region]).astype(np.int64)
        if cur.max(initial=0) >= next_id or prev.max(initial=0) >= first_id:
            raise ValueError(f"iter_link_table: ids out of range (this slice {first_id}..{next_id - 1}, "
                             "the one before below it).")
        area += np.bincount((cur[cur > 0] - first_id), minlength=n)
        prev_area += np.bincount(prev[prev > 0], minlength=first_id)
        both = (cur > 0) & (prev > 0)
        k, c = np.unique((cur[both] - first_id) * first_id + prev[both], return_counts=True)
        keys.append(k)
        counts.append(c)
    pairs, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    inter = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    ids, prev_ids = pairs // first_id, pairs % first_id
    matched = _one_to_one(ids, prev_ids, inter / (area[ids] + prev_area[prev_ids] - inter), min_iou)
    if matched:
        table[np.fromiter(matched, np.int64)] = np.fromiter(matched.values(), np.int64)
    return table


def iter_apply_link(current, table: np.ndarray, first_id: int, tile: int = 2048) -> Iterator[Progress]:
    """Job (``Progress("linking", tile, tiles)``): write :func:`iter_link_table`'s ``table``
    into ``current`` tile by tile (in place): an object that continues one of the slice
    before takes its id, the others keep theirs, so ids skip
    the numbers of the linked ones. Running it again changes nothing (the linked ids are below
    ``first_id``), so a run killed while it writes is finished by running it again.

    Returns:
        how many objects were linked.
    """
    regions = _tiles(current.shape, tile)
    for i, region in enumerate(regions):
        yield Progress("linking", i, len(regions))
        cur = np.asarray(current[region])
        own = cur >= first_id
        if own.any():
            out = cur.copy()
            out[own] = table[cur[own].astype(np.int64) - first_id].astype(cur.dtype)
            current[region] = out
    yield Progress("linking", len(regions), len(regions))
    return int((table < first_id).sum())


def _dense(instances: np.ndarray) -> np.ndarray:
    """``instances`` with ids small enough for lookup tables: as they are when the largest id
    is of the order of the pixels (ids 1..n, as the instance step numbers them), else
    renumbered 1..n in the order of the ids (0 stays 0)."""
    top = int(instances.max(initial=0))
    if top <= 4 * instances.size + 1024:
        return instances.astype(np.int64, copy=False)
    ids = np.unique(instances)
    if ids[0] != 0:
        ids = np.concatenate([[0], ids])
    return np.searchsorted(ids, instances).astype(np.int64)


def _areas(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Pixel counts of ``ids`` in ``labels``."""
    found, counts = np.unique(labels, return_counts=True)
    return counts[np.searchsorted(found, ids)]


def stack_instances(slices: Iterable[np.ndarray], link: bool = False, min_iou: float = MIN_IOU) -> np.ndarray:
    """``(N, H, W)`` instance ids unique across a stack (see :class:`StackIds`) from the
    slices' own ``(H, W)`` instance maps."""
    ids = StackIds(link, min_iou)
    return np.stack([ids.add(s) for s in slices])


def stack_name(stem: str) -> str:
    """The stem of the stack file a slice's output stem (``x_z003``) comes from (``x``); any
    other stem as it is."""
    m = _SLICE.match(stem)
    return m["stack"] if m else stem


def slice_groups(stems: Iterable[str]) -> list[list[str]]:
    """Output stems grouped by the stack they are slices of, in the order first seen.

    ``lazylabels predict`` writes the slices of a stack file ``x.tif`` as ``x_z000``,
    ``x_z001``, ...; those stems form one group, in slice order. Every other stem is a group
    of its own.
    """
    groups: dict[tuple[bool, str], list[tuple[int, str]]] = {}
    for stem in stems:
        m = _SLICE.match(stem)
        key, index = ((True, m["stack"]), int(m["index"])) if m else ((False, stem), -1)
        groups.setdefault(key, []).append((index, stem))
    return [[s for _, s in sorted(v)] for v in groups.values()]
