"""Images that need not fit in memory: lazy reading (zarr, OME-Zarr, large TIFFs) and OME-Zarr
prediction outputs.

:func:`open_lazy_image` opens a zarr array, an OME-Zarr image (NGFF 0.4 or 0.5) or a TIFF
without reading its pixels: a :class:`LazyImage` whose :attr:`LazyImage.data` reads only the
region it is sliced with, in the axis order the rest of the package uses (``(*stack, H, W[,
C])``), with the physical pixel size the file gives.

:class:`OmeZarrWriter` writes a prediction as an OME-Zarr image (NGFF 0.4, zarr format 2, which
napari-ome-zarr, Fiji's MoBIE/BigDataViewer, QuPath and ``ome-zarr-py`` open): the input image
at the root and the label images under ``labels/`` (``classes`` and ``instances``), each a
pyramid of halved resolutions for viewers (written with every block: no second pass), with
the pixel size as the ``scale`` of every level. It writes into a hidden ``.NAME.partial``
folder, which replaces ``NAME`` only when complete.

Why zarr (and tifffile) rather than a reader framework: zarr is the reference implementation
of the format OME-Zarr builds on, reads and writes chunk by chunk with bounded memory, and
tifffile (already used for TIFF) exposes a TIFF as a zarr store; bioio would add a plugin
system and a dozen packages for the same two formats.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import MAX_CHANNELS, MIN_IMAGE_SIDE, is_zarr
from .jobs import Progress
from .pixelsize import OME_DEFAULT_UNIT, PixelSize, read_pixel_size

log = logging.getLogger(__name__)

NGFF_VERSION = "0.4"
"""The OME-NGFF version :class:`OmeZarrWriter` writes (zarr format 2; the version every
OME-Zarr viewer reads)."""

CHUNK = 1024
"""Side of the Y/X chunks written (and of the blocks the pyramid is built in)."""

PYRAMID_MIN_SIDE = 1024
"""The pyramid halves the resolution until the longer side is at most this."""

MAPS_GROUP = "lazylabels"
"""The group of an OME-Zarr prediction that holds maps other tools need not read
(:class:`OmeZarrWriter` ``maps``: the quantised interface probability)."""

_NGFF_UNITS = {"µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "m": "meter", "cm": "centimeter",
               "Å": "angstrom", "pm": "picometer"}
_UNITS_BACK = {v: k for k, v in _NGFF_UNITS.items()} | {"micron": "µm"}


# --------------------------------------------------------------------------- lazy views
class AxesView:
    """A lazy array seen with other axes: the axes of ``array`` named by ``axes`` (one letter
    each), shown in the order ``order`` (a subset), the others held at the index ``fixed``
    gives them (0 by default). Slicing reads only the region asked for and returns a NumPy
    array in ``order``; assigning writes it (label maps written plane by plane).

    ``AxesView(zarr_array, "CYX", "YXC")`` reads a channel-first OME-Zarr channels-last;
    ``AxesView(stack, "ZYX", "YX", {"Z": 3})`` is the fourth plane of a stack;
    ``AxesView(rgba, "YXS", "YXS", colours=3)`` reads the colours of an RGBA image, not its
    alpha (``colours``: the first entries of the last axis of ``order`` kept when reading).
    """

    def __init__(self, array, axes: str, order: str, fixed: dict[str, int] | None = None,
                 colours: int | None = None) -> None:
        if len(axes) != len(array.shape) or len(set(axes)) != len(axes) or not set(order) <= set(axes):
            raise ValueError(f"Cannot view axes {axes!r} of shape {tuple(array.shape)} as {order!r}.")
        self.array, self.axes, self.order, self.colours = array, axes, order, colours
        self.fixed = {a: int((fixed or {}).get(a, 0)) for a in axes if a not in order}
        self.shape = tuple(int(array.shape[axes.index(a)]) for a in order)
        if colours is not None:
            self.shape = self.shape[:-1] + (min(colours, self.shape[-1]),)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(order)

    def __len__(self) -> int:
        return self.shape[0]

    def _key(self, key) -> tuple[tuple, str]:
        """The key into ``array`` for ``key`` (over ``order``) and the axes the result keeps."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"Too many indices for a view of shape {self.shape}.")
        by_axis = dict(zip(self.order, key, strict=True))
        src = tuple(self.fixed[a] if a in self.fixed else by_axis[a] for a in self.axes)
        kept = "".join(a for a in self.axes if a not in self.fixed and not isinstance(by_axis[a], (int, np.integer)))
        return src, kept

    def __getitem__(self, key) -> np.ndarray:
        src, kept = self._key(key)
        out = np.asarray(self.array[src])
        want = [a for a in self.order if a in kept]
        out = out.transpose([kept.index(a) for a in want]) if list(kept) != want else out
        return out[..., : self.colours] if self.colours is not None and self.order[-1] in kept else out

    def plane(self, i: int) -> AxesView:
        """The view of index ``i`` of its first axis (a stack's plane), same colours."""
        return AxesView(self.array, self.axes, self.order[1:], {**self.fixed, self.order[0]: i}, self.colours)

    def __setitem__(self, key, value) -> None:
        src, kept = self._key(key)
        value = np.asarray(value)
        want = [a for a in self.order if a in kept]
        if list(kept) != want:
            value = value.transpose([want.index(a) for a in kept])
        self.array[src] = value

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype)


@dataclass
class LazyImage:
    """An image read region by region.

    Attributes:
        data: ``(H, W)``, ``(H, W, C)``, ``(N, H, W)`` or ``(N, H, W, C)`` array-like: slicing
            it reads that region only and returns a NumPy array (an :class:`AxesView`).
        n_stack: leading stack axes (0 or 1: Z or T).
        channels: whether the last axis holds channels (or RGB colours).
        pixel_size: the physical pixel size the file gives, else ``None``.
        name: the file's name without its suffixes (``cells`` for ``cells.ome.zarr``).
    """

    data: AxesView
    n_stack: int
    channels: bool
    pixel_size: PixelSize | None
    name: str

    @property
    def plane_shape(self) -> tuple[int, int]:
        """``(H, W)`` of each plane."""
        return tuple(self.data.shape[self.n_stack : self.n_stack + 2])

    @property
    def n_planes(self) -> int:
        return int(self.data.shape[0]) if self.n_stack else 1

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[-1]) if self.channels else 1

    def plane(self, i: int = 0) -> AxesView:
        """Plane ``i`` as a lazy ``(H, W[, C])`` array."""
        if not self.n_stack:
            if i != 0:
                raise IndexError(f"{self.name} is one plane; asked for plane {i}.")
            return self.data
        return self.data.plane(i)


def image_stem(path: Path) -> str:
    """The name of an image without its suffixes: ``cells`` for ``cells.ome.zarr``,
    ``cells.zarr``, ``cells.ome.tif``."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return path.stem


def _arrange(array, axes: str, what: str) -> tuple[AxesView, int, bool]:
    """View ``array`` with axes ``axes`` (upper case; ``C``/``S`` channels, ``Y``, ``X``, any
    other letter a stack axis) as ``(*stack, Y, X[, C])``: axes of length 1 are dropped, at
    most one stack axis and one channel axis may be longer."""
    if len(axes) != len(array.shape):
        raise ValueError(f"{what} has shape {tuple(array.shape)} but its metadata names the axes {axes!r}.")
    shape = dict(zip(axes, (int(s) for s in array.shape), strict=True))
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{what} has axes {axes!r}: it needs Y and X.")
    chan = [a for a in axes if a in "CS" and shape[a] > 1]
    stack = [a for a in axes if a not in "CSYX" and shape[a] > 1]
    if len(chan) > 1:
        raise ValueError(f"{what} has both colour samples and channels ({axes}); keep one.")
    if len(stack) > 1:
        raise ValueError(
            f"{what} has shape {tuple(array.shape)} with axes {axes}: {len(stack)} stack axes "
            f"({', '.join(stack)}); keep one (save each time point as its own image)."
        )
    order = "".join(stack) + "YX" + "".join(chan)
    view = AxesView(array, axes, order)
    if chan and view.shape[-1] > MAX_CHANNELS:
        raise ValueError(f"{what} has {view.shape[-1]} channels; at most {MAX_CHANNELS} are supported.")
    if min(shape["Y"], shape["X"]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{what} is {shape['Y']}x{shape['X']} pixels; images must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}.")
    return view, len(stack), bool(chan)


def _guess_axes(shape: tuple[int, ...]) -> str:
    """Axes of a zarr array without metadata: ``YX``, ``YXC`` (a last axis too short to be a
    width), ``ZYX``, ``ZYXC``."""
    n = len(shape)
    if n == 2:
        return "YX"
    if n == 3:
        return "YXC" if shape[-1] < MIN_IMAGE_SIDE else "ZYX"
    if n == 4 and shape[-1] < MIN_IMAGE_SIDE:
        return "ZYXC"
    raise ValueError(f"a zarr array of shape {shape} without OME axes; expected (Y, X[, C]) or (Z, Y, X[, C]).")


def ome_multiscale(attrs: dict | None) -> dict | None:
    """The first ``multiscales`` entry of a group's attributes, NGFF 0.4 (top level) or 0.5
    (under ``ome``), when it names at least one dataset; else ``None`` (not an OME-Zarr image)."""
    attrs = attrs or {}
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    if not (isinstance(ms, list) and ms and isinstance(ms[0], dict)):
        return None
    datasets = ms[0].get("datasets")
    if not (isinstance(datasets, list) and datasets and all(isinstance(d, dict) and "path" in d for d in datasets)):
        return None
    return ms[0]


def ome_transform(transforms, kind: str = "scale") -> list[float] | None:
    """The ``scale`` (or ``translation``) of a list of NGFF coordinate transformations."""
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == kind and isinstance(t.get(kind), list):
            return [float(v) for v in t[kind]]
    return None


def _ome_pixel_size(ms: dict, axes: list[str]) -> PixelSize | None:
    """Pixel size from the first dataset's ``scale`` (times the multiscale's own) and the
    space axes' units (micrometer when none is given, as OME's default)."""
    scale = ome_transform(ms["datasets"][0].get("coordinateTransformations"))
    if scale is None or len(scale) != len(axes):
        return None
    outer = ome_transform(ms.get("coordinateTransformations"))
    if outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer, strict=True)]
    units = {}
    for ax in ms.get("axes", []):
        if isinstance(ax, dict) and ax.get("unit"):
            units[str(ax["name"]).upper()] = _UNITS_BACK.get(ax["unit"], ax["unit"])
    size = dict(zip(axes, scale, strict=True))
    unit = units.get("X", OME_DEFAULT_UNIT)
    if units.get("Y", unit) != unit or all(size[a] == 1 for a in "YX") and "X" not in units:
        return None  # no physical size: a scale of 1 without units is pixels
    z = size.get("Z") if units.get("Z", unit) == unit else None
    try:
        return PixelSize(size["Y"], size["X"], unit, z)
    except ValueError:
        return None


def _open_zarr(path: Path) -> LazyImage:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as e:  # zarr raises several kinds for foreign folders
        raise ValueError(f"Could not read {path}: not a zarr array or group ({type(e).__name__}).") from e
    what = f"The image {path.name}"
    if isinstance(node, zarr.Array):
        view, n_stack, chan = _arrange(node, _guess_axes(node.shape), what)
        return LazyImage(view, n_stack, chan, None, image_stem(path))
    ms = ome_multiscale(dict(node.attrs))
    if ms is None:
        raise ValueError(f"Could not read {path}: a zarr group without OME-Zarr multiscales metadata.")
    array = node[ms["datasets"][0]["path"]]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])] or list("tczyx"[-array.ndim :])
    axes = "".join(n.upper()[0] for n in names)
    view, n_stack, chan = _arrange(array, axes, what)
    return LazyImage(view, n_stack, chan, _ome_pixel_size(ms, list(axes)), image_stem(path))


def ome_label(path: str | os.PathLike, name: str):
    """Label image ``name`` of an OME-Zarr (``labels/NAME``) at full resolution, lazy (a zarr
    array: ``([Z,] Y, X)``), e.g. the ``classes`` and ``instances`` of a block-by-block
    prediction.

    Raises:
        ValueError: no such label image, or not an OME-Zarr.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")[f"labels/{name}"]
    except Exception as e:  # noqa: BLE001 - zarr raises several kinds for missing or foreign nodes
        raise ValueError(f"{path} has no label image {name!r} (labels/{name}).") from e
    ms = ome_multiscale(dict(group.attrs))
    if ms is None:
        raise ValueError(f"{path}: labels/{name} has no OME-Zarr multiscales metadata.")
    return group[ms["datasets"][0]["path"]]


def _open_tiff(path: Path) -> LazyImage:
    import tifffile
    import zarr

    from .io import _tiff_error

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = str(series.axes).upper()
            rgb = series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB
            offset, byteorder = series.dataoffset, tif.byteorder
        node = zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    except Exception as e:  # tifffile raises many kinds for truncated or foreign files
        raise _tiff_error(path, e) from e
    if int(math.prod(node.chunks)) * node.dtype.itemsize > LARGE_CHUNK_BYTES:
        if offset is not None:  # uncompressed, in one piece: read the rows asked for from the file
            node = ContiguousFile(path, offset, tuple(node.shape), node.dtype.newbyteorder(byteorder))
        else:
            log.warning("%s is stored compressed in pieces of %.0f MB: each block decodes a whole piece "
                        "(save it tiled, e.g. tifffile.imwrite(..., tile=(512, 512)), for bounded memory)",
                        path.name, math.prod(node.chunks) * node.dtype.itemsize / 2**20)
    if len(axes) != node.ndim:
        axes = _guess_axes(tuple(node.shape))
    axes = axes.replace("Q", "Z").replace("I", "Z")
    if "S" in axes and not rgb:
        axes = axes.replace("S", "C")
    view, n_stack, chan = _arrange(node, axes, f"The image {path.name}")
    if "S" in axes and view.shape[-1] == 4:  # RGBA: the colours, as for PNG
        view = AxesView(view.array, view.axes, view.order, view.fixed, colours=3)
    return LazyImage(view, n_stack, chan, read_pixel_size(path), image_stem(path))


LARGE_CHUNK_BYTES = 64 * 2**20
"""A TIFF stored in pieces larger than this is read another way (:class:`ContiguousFile`)."""


class ContiguousFile:
    """An uncompressed image stored in one piece in a file (tifffile writes plain TIFFs so),
    read region by region: each read maps the file, copies the region and unmaps it, so the
    pages read do not stay resident (a lasting memory map would keep the whole file in the
    process's memory by the end)."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, int(offset), tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self.chunks = (1,) + self.shape[1:]

    def __getitem__(self, key) -> np.ndarray:
        mapped = np.memmap(self.path, self.dtype, "r", self.offset, self.shape)
        try:
            return np.array(mapped[key], dtype=self.dtype.newbyteorder("="))
        finally:
            del mapped


def open_lazy_image(path: str | os.PathLike) -> LazyImage:
    """Open an image without reading its pixels.

    Args:
        path: a zarr array folder, an OME-Zarr image (its root group, NGFF 0.4 or 0.5: the
            full-resolution level is read), or a TIFF (tiled or striped, OME, ImageJ or plain:
            read through tifffile's zarr view, one chunk at a time).

    Returns:
        the :class:`LazyImage`.

    Raises:
        FileNotFoundError: no such file or folder.
        ValueError: not an image this reads, or one with axes it cannot take (one line).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file or folder: {path}")
    if is_zarr(path):
        return _open_zarr(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path)
    raise ValueError(f"Could not read {path} lazily: only zarr, OME-Zarr and TIFF images are read region by region.")


# --------------------------------------------------------------------------- writing
def _ngff_axes(letters: str, unit: str | None) -> list[dict]:
    kinds = {"C": "channel", "T": "time"}
    out = []
    for a in letters:
        ax = {"name": a.lower(), "type": kinds.get(a, "space")}
        if ax["type"] == "space" and unit is not None:
            ax["unit"] = _NGFF_UNITS.get(unit, unit)
        out.append(ax)
    return out


def pyramid_shapes(shape_yx: tuple[int, int], min_side: int = PYRAMID_MIN_SIDE) -> list[tuple[int, int]]:
    """``(H, W)`` of every level: the image, then halved (rounding up) until the longer side
    is at most ``min_side``."""
    shapes = [tuple(int(s) for s in shape_yx)]
    while max(shapes[-1]) > min_side:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


class PyramidView:
    """A writable ``(H, W[, C])`` view of one plane of an OME-Zarr array and its pyramid:
    reading gives full-resolution pixels; writing a region writes it at full resolution and
    into every lower level at once (the top-left pixel of each ``2^l`` square: ids stay ids;
    for the image, the mean of each square where the region starts on it), so the pyramid is
    complete when the last block is written, with no second pass over the image."""

    def __init__(self, levels: list, axes: str, order: str, z: int | None, mean: bool) -> None:
        fixed = {"Z": z or 0}
        self.levels = [AxesView(a, axes, order, fixed) for a in levels]
        self.shape, self.dtype, self.ndim = self.levels[0].shape, self.levels[0].dtype, self.levels[0].ndim
        self.mean = mean

    def __getitem__(self, key) -> np.ndarray:
        return self.levels[0][key]

    def __setitem__(self, key, value) -> None:
        ys, xs = key[:2]
        y0, x0 = ys.start or 0, xs.start or 0
        value = np.asarray(value)
        self.levels[0][ys, xs] = value
        half = value
        for level, view in enumerate(self.levels[1:], start=1):
            s = 2**level
            ty, tx = -(-y0 // s), -(-x0 // s)  # the first level pixels the region holds
            aligned = self.mean and y0 % s == 0 and x0 % s == 0
            if aligned:
                half = _halve_mean(half, channels_last=value.ndim == 3)
                part = half
            else:
                part = value[ty * s - y0 :: s, tx * s - x0 :: s]
            if part.shape[0] and part.shape[1]:
                h = min(part.shape[0], view.shape[0] - ty)
                w = min(part.shape[1], view.shape[1] - tx)
                view[ty : ty + h, tx : tx + w] = part[:h, :w]


class OmeZarrWriter:
    """Writes an OME-Zarr image with label images block by block, each with its pyramid, then
    the metadata; into ``.NAME.partial``, which replaces ``path`` when complete (``atomic``),
    or into ``path`` itself (a viewer shows it while it is written).

    Args:
        path: the OME-Zarr folder to write (``STEM.ome.zarr``).
        plane_shape: ``(H, W)``.
        n_planes: planes of a stack (``None``: one 2D image).
        image_dtype: dtype of the image copied to the root.
        n_channels: the image's channels (1: gray).
        labels: ``{name: dtype}`` of the label images (``labels/<name>``), in order.
        pixel_size: the image's, written as each level's ``scale`` with the unit.
        colors: ``{label name: {value: (r, g, b, a)}}`` for the labels' ``image-label`` colours.
        name: the image's name in the metadata.
        atomic: write into ``.NAME.partial`` and rename when complete.
        resume: keep the folder (``.NAME.partial``, or ``path`` itself when not ``atomic``) of
            the same shapes that a stopped or killed run left (:attr:`resumed`), to go on
            writing into it; else it is started over.
        maps: ``{name: dtype}`` of full-resolution maps that are not images or labels for
            other tools (``lazylabels/<name>``, one level, ``([Z,] Y, X)``): the quantised
            interface map a re-split cuts objects from.
        attrs: written under the root's ``"lazylabels"`` attribute (how it was predicted).

    :meth:`image_plane` and :meth:`label` give :class:`PyramidView` s of a plane to write
    into; :meth:`levels` the zarr arrays of every level (NGFF axis order: ``(C, [Z,] Y, X)``
    for the image, ``([Z,] Y, X)`` for labels).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        plane_shape: tuple[int, int],
        n_planes: int | None,
        image_dtype,
        n_channels: int,
        labels: dict[str, np.dtype],
        pixel_size: PixelSize | None = None,
        colors: dict[str, dict[int, tuple[int, int, int, int]]] | None = None,
        name: str | None = None,
        atomic: bool = True,
        resume: bool = False,
        maps: dict[str, np.dtype] | None = None,
        attrs: dict | None = None,
    ) -> None:
        self.path = Path(path)
        self.maps = dict(maps or {})
        self.attrs = dict(attrs or {})
        self.atomic = atomic
        self.tmp = self.path.parent / f".{self.path.name}.partial" if atomic else self.path
        self.plane_shape = tuple(int(s) for s in plane_shape)
        self.n_planes = n_planes
        self.n_channels = int(n_channels)
        self.pixel_size = pixel_size
        self.colors = colors or {}
        self.name = name or image_stem(self.path)
        self.shapes = pyramid_shapes(self.plane_shape)
        self._spec = (image_dtype, dict(labels))
        self.complete = False  # set by a caller that finds the folder already finished
        self.resumed = resume and self._open_existing()
        if not self.resumed:
            self.restart()

    def restart(self) -> None:
        """Start the folder over, empty (removing what an earlier run left)."""
        import zarr

        if self.tmp.exists():  # left by a run that was killed, or (not atomic) the one replaced
            shutil.rmtree(self.tmp)
        image_dtype, labels = self._spec
        self.root = zarr.open_group(str(self.tmp), mode="w", zarr_format=2)
        stack = () if self.n_planes is None else (int(self.n_planes),)
        self._image = self._pyramid(self.root, (self.n_channels, *stack), image_dtype)
        self.labels_group = self.root.create_group("labels")
        self._labels = {n: self._pyramid(self.labels_group.create_group(n), stack, dt) for n, dt in labels.items()}
        if self.maps:
            group = self.root.create_group(MAPS_GROUP)
            self._maps = {n: self._array(group, n, (*stack, *self.plane_shape), dt) for n, dt in self.maps.items()}
        else:
            self._maps = {}
        self.resumed = False

    def _open_existing(self) -> bool:
        """Open the arrays of a partial folder of exactly these shapes and dtypes."""
        import zarr

        if not self.tmp.is_dir():
            return False
        image_dtype, labels = self._spec
        stack = () if self.n_planes is None else (int(self.n_planes),)
        try:
            root = zarr.open_group(str(self.tmp), mode="r+", zarr_format=2)
            image = [root[str(i)] for i in range(len(self.shapes))]
            group = root["labels"]
            found = {n: [group[n][str(i)] for i in range(len(self.shapes))] for n in labels}
            maps = {n: root[f"{MAPS_GROUP}/{n}"] for n in self.maps}
        except Exception:  # noqa: BLE001 - anything unreadable is started over
            return False
        want = [(a, (self.n_channels, *stack, *s), image_dtype) for a, s in zip(image, self.shapes, strict=True)]
        for n, dt in labels.items():
            want += [(a, (*stack, *s), dt) for a, s in zip(found[n], self.shapes, strict=True)]
        want += [(maps[n], (*stack, *self.plane_shape), dt) for n, dt in self.maps.items()]
        if any(tuple(a.shape) != shape or a.dtype != np.dtype(dt) for a, shape, dt in want):
            return False
        self.root, self._image, self.labels_group, self._labels, self._maps = root, image, group, found, maps
        return True

    def _pyramid(self, group, lead: tuple[int, ...], dtype) -> list:
        return [self._array(group, str(level), (*lead, *shape), dtype) for level, shape in enumerate(self.shapes)]

    @staticmethod
    def _array(group, name: str, shape: tuple[int, ...], dtype):
        chunks = tuple(1 for _ in shape[:-2]) + tuple(min(CHUNK, s) for s in shape[-2:])
        return group.create_array(name, shape=shape, chunks=chunks, dtype=np.dtype(dtype), fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})

    def levels(self, name: str | None = None) -> list:
        """The zarr arrays of every level of label image ``name`` (``None``: the image)."""
        return self._image if name is None else self._labels[name]

    def image_plane(self, z: int | None = None) -> PyramidView:
        """The image's plane ``z`` as a writable ``(H, W, C)`` view."""
        return PyramidView(self._image, "CYX" if self.n_planes is None else "CZYX", "YXC", z, mean=True)

    def label(self, name: str, z: int | None = None) -> PyramidView:
        """Label image ``name``'s plane ``z`` as a readable, writable ``(H, W)`` view."""
        return PyramidView(self._labels[name], "YX" if self.n_planes is None else "ZYX", "YX", z, mean=False)

    def map(self, name: str, z: int | None = None) -> AxesView:
        """Map ``name``'s plane ``z`` as a readable, writable ``(H, W)`` view."""
        return AxesView(self._maps[name], "YX" if self.n_planes is None else "ZYX", "YX", {"Z": z or 0})

    # ------------------------------------------------------------------ finishing
    def iter_finish(self) -> Iterator[Progress]:
        """Job: the metadata, then (``atomic``) the replacement of :attr:`path`; returns the
        path."""
        yield Progress("saving", 0, 1)
        self._write_metadata(len(self.shapes))
        path = _replace_folder(self.tmp, self.path) if self.atomic else self.path
        yield Progress("saving", 1, 1)
        return path

    def finish(self) -> Path:
        """:meth:`iter_finish` without progress."""
        from .jobs import drive

        return drive(self.iter_finish())

    def abort(self) -> None:
        """Remove the partial folder (a stopped or failed prediction); a folder written in
        place (not ``atomic``) is kept, without its metadata, for what it shows."""
        if self.atomic:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _write_metadata(self, n_levels: int) -> None:
        ps = self.pixel_size
        unit = ps.unit if ps is not None else None
        yx = [ps.y, ps.x] if ps is not None else [1.0, 1.0]
        zs = [] if self.n_planes is None else [ps.z if ps is not None and ps.z is not None else 1.0]
        space = "" if self.n_planes is None else "Z"

        def multiscales(letters: str, lead: list[float], name: str) -> list[dict]:
            datasets = [
                {"path": str(level), "coordinateTransformations": [
                    {"type": "scale", "scale": lead + zs + [v * 2**level for v in yx]}]}
                for level in range(n_levels)
            ]
            return [{"version": NGFF_VERSION, "name": name, "axes": _ngff_axes(letters, unit), "datasets": datasets}]

        self.root.attrs.update({
            "multiscales": multiscales("C" + space + "YX", [1.0], self.name),
            "omero": {"channels": [{"label": f"channel {c}", "active": True} for c in range(self.n_channels)]},
        })
        if self.attrs:
            self.root.attrs.update({"lazylabels": self.attrs})
        self.labels_group.attrs.update({"labels": list(self._labels)})
        for n in self._labels:
            label = {"version": NGFF_VERSION, "source": {"image": "../../"}}
            if self.colors.get(n):
                label["colors"] = [{"label-value": int(v), "rgba": [int(c) for c in rgba]}
                                   for v, rgba in self.colors[n].items()]
            self.labels_group[n].attrs.update({"multiscales": multiscales(space + "YX", [], n), "image-label": label})


class LabelRewriter:
    """Writes label image ``name`` of a finished OME-Zarr again (a re-split's instances): into
    ``labels/.NAME.partial`` (same shapes, chunks and pyramid), which replaces ``labels/NAME``,
    with its metadata, only when :meth:`finish` is called; :meth:`abort` removes it. A swap
    that a kill interrupted is completed when the next rewriter opens the folder."""

    def __init__(self, path: str | os.PathLike, name: str) -> None:
        import zarr

        self.path, self.name = Path(path), name
        self._final = self.path / "labels" / name
        self._old = self.path / "labels" / f".{name}.old"
        self._tmp = self.path / "labels" / f".{name}.partial"
        if not self._final.exists() and self._old.exists():  # killed between the two renames
            os.replace(self._old, self._final)
        shutil.rmtree(self._old, ignore_errors=True)
        shutil.rmtree(self._tmp, ignore_errors=True)
        source = zarr.open_group(str(self._final), mode="r")
        ms = ome_multiscale(dict(source.attrs))
        if ms is None:
            raise ValueError(f"{self.path}: labels/{name} has no OME-Zarr multiscales metadata.")
        self._attrs = dict(source.attrs)
        group = zarr.open_group(str(self._tmp), mode="w", zarr_format=2)
        self.levels = []
        for d in ms["datasets"]:
            a = source[d["path"]]
            self.levels.append(group.create_array(d["path"], shape=a.shape, chunks=a.chunks, dtype=a.dtype, fill_value=0,
                                                  chunk_key_encoding={"name": "v2", "separator": "/"}))
        self.stacked = self.levels[0].ndim == 3

    def label(self, z: int | None = None) -> PyramidView:
        """Plane ``z`` as a readable, writable ``(H, W)`` view (pyramid written with it)."""
        return PyramidView(self.levels, "ZYX" if self.stacked else "YX", "YX", z, mean=False)

    def finish(self) -> None:
        import zarr

        zarr.open_group(str(self._tmp), mode="r+", zarr_format=2).attrs.update(self._attrs)
        _replace_folder(self._tmp, self._final)  # the old one moved aside to .NAME.old first

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _halve_mean(block: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """The mean of each 2x2 of the first two axes (``channels_last``: ``(H, W, C)``) or the
    last two (an odd edge keeps its last row/column), in the block's dtype."""
    if channels_last:
        return np.moveaxis(_halve_mean(np.moveaxis(block, -1, 0)), 0, -1)
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    b = np.pad(block, pad, mode="edge").astype(np.float32)
    out = (b[..., ::2, ::2] + b[..., 1::2, ::2] + b[..., ::2, 1::2] + b[..., 1::2, 1::2]) / 4
    if np.dtype(block.dtype).kind in "ui":
        out = np.rint(out)
    return out.astype(block.dtype)


def _replace_folder(tmp: Path, path: Path) -> Path:
    """Put the complete folder ``tmp`` at ``path``: an earlier ``path`` is moved aside first
    and removed only once ``tmp`` is in place."""
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path
