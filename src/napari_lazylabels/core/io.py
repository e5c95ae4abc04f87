"""Reading and writing images, label maps and lazy-label dataset folders, atomically.

A dataset folder, read and written by the CLI and by the napari plugin::

    DATASET/
        lazylabels.json          {"format": "napari-lazylabels dataset", "version": 1,
                                  "classes": {"names": [...], "colors": [...]},
                                  "geometry": {"<stem>": {"scale": [sy, sx],
                                      "translate": [ty, tx], "units": ["um", "um"]}}}
        images/<stem>.<ext>      png, tif/tiff, jpg; 2D gray, RGB or multi-channel (TIFF),
                                 8/16-bit or float
        detection/<stem>.png     task 1 map (optional per image)
        separation/<stem>.png    task 2 map (optional per image)
        segmentation/<stem>.png  task 3 map (optional per image)

Label maps are 8- or 16-bit PNG (TIFF is read too); ``0`` = not annotated (see
:mod:`napari_lazylabels.core.labels`). An image without a map for task k is not in that task's
loss. ``geometry`` (optional; older folders have none) keeps the physical pixel size, position
and units that the viewer showed each image with, so a reopened project lines up as before.
Every write goes to a temporary file in the destination folder that then replaces the
target (:func:`atomic_write_bytes`), so a crash never leaves a half-written annotation. A
rewritten file keeps the permissions the old one had (a shared 0664 annotation stays readable
for the group); a new file gets those the umask allows, as ``open`` would give it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .labels import (
    DETECTION,
    SEGMENTATION,
    SEPARATION,
    TASKS,
    ClassSpec,
    n_task_classes,
    validate_label_map,
)

log = logging.getLogger(__name__)

DATASET_FILE = "lazylabels.json"
DATASET_FORMAT = "napari-lazylabels dataset"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (".png", ".tif", ".tiff")
MIN_IMAGE_SIDE = 8
MAX_CHANNELS = MIN_IMAGE_SIDE - 1
"""Most channels an ``(H, W, C)`` image may have: more would read as a stack of images ``C``
pixels wide, which no image is (:data:`MIN_IMAGE_SIDE`)."""
DATASET_VERSION = 1


# --------------------------------------------------------------------------- atomic writes
_umask_guard = threading.Lock()


def _umask() -> int:
    """The process umask (read from /proc where it can be, else set and restored)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _umask_guard:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    """Permissions for a file written at ``path``: the existing file's, else ``0666 & ~umask``."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds the temporary file
    replaces ``path`` (one rename), when it fails the temporary file is removed.

    For writers that need a file name (e.g. streaming TIFF writers). The parent folder is
    created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:  # from here on a failure or a signal (SIGTERM, Ctrl-C) removes the temporary file
        with contextlib.suppress(OSError, AttributeError):
            os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600 files
        os.close(fd)
        fd = -1
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + replace).

    The parent folder is created if needed. Readers see either the old or the new file,
    never a partial one.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def _json_safe(obj):
    """``obj`` with NaN and infinities as ``None`` (JSON has no such numbers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented, valid JSON (NaN and infinities as ``null``), atomically."""
    text = json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode())


def _tiff_error(path: Path, e: Exception) -> ValueError:
    """A one-line error naming the file (compressed TIFFs need imagecodecs)."""
    hint = (
        "install imagecodecs (`pip install imagecodecs`) to read its compression"
        if "imagecodecs" in str(e) else "the file is corrupt, truncated or not a TIFF"
    )
    return ValueError(f"Could not read {path}: {type(e).__name__}: {str(e)[:160]} ({hint}).")


def _read_tiff(path: Path) -> np.ndarray:
    """``tifffile.imread`` with errors that name the file (label maps: no axes needed)."""
    import tifffile

    try:
        return tifffile.imread(path)
    except Exception as e:  # tifffile raises many kinds for truncated or foreign files
        raise _tiff_error(path, e) from e


def _tiff_series(path: Path) -> tuple[np.ndarray, str, bool]:
    """The first series of a TIFF: ``(data, axes, rgb)``, ``axes`` as tifffile names them
    (``"CYX"`` for an ImageJ or OME file with channels, ``"YXS"`` for samples per pixel,
    ``"Q"`` for an axis it does not know), ``rgb`` when the samples are RGB(A) colour."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            rgb = series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB
            axes = str(series.axes).upper()
    except Exception as e:  # tifffile raises many kinds for truncated or foreign files
        raise _tiff_error(path, e) from e
    return np.asarray(data), axes if len(axes) == data.ndim else "Q" * data.ndim, bool(rgb)


def _channels_last(data: np.ndarray, axes: str, rgb: bool) -> tuple[np.ndarray, bool]:
    """``(data, has_channels)``: ``data`` as ``(..., Y, X)`` or ``(..., Y, X, C)``.

    A channel axis is one the file names (ImageJ/OME ``C``, samples ``S`` that are not RGB),
    or, in a file without axes, a last axis too short to be an image's width
    (``< MIN_IMAGE_SIDE``). RGB(A) samples give the three colours (alpha dropped, as for PNG);
    so does a last axis of 4 in a file without axes. A leading axis of a file without axes
    (``Q``) is a stack, as are Z and T.
    """
    if "S" in axes and "C" in axes:
        raise ValueError("an image with both colour samples and channels (ImageJ C and S axes) is not supported")
    if "S" in axes:
        return (data[..., :3] if rgb else data), True
    if "C" in axes:
        return np.moveaxis(data, axes.index("C"), -1), True
    if data.ndim >= 3 and data.shape[-1] < MIN_IMAGE_SIDE:
        return (data[..., :3] if data.shape[-1] == 4 else data), True
    return data, False


def read_tiff(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A TIFF with its channel axis last, read with its axes (ImageJ, OME and tifffile's
    own metadata; :func:`_channels_last` decides for files without).

    Returns:
        ``(data, n_stack)``: ``data`` ``(*stack, H, W[, C])`` with ``n_stack`` leading stack axes
        (Z, T, pages), the channels (or RGB colours) last; ``(C, Y, X)`` ImageJ/OME files give
        ``(Y, X, C)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file: {path}")
    data, axes, rgb = _tiff_series(path)
    try:
        data, channels = _channels_last(data, axes, rgb)
    except ValueError as e:
        raise ValueError(f"Could not read {path}: {e}.") from None
    n_stack = data.ndim - 2 - int(channels)
    if channels and data.shape[-1] == 1:
        data = data[..., 0]
    return data, n_stack


def tiff_channel_axis(path: str | os.PathLike) -> int | None:
    """The axis of a TIFF's first series that holds channels by its metadata (ImageJ or OME
    ``C``; e.g. ``0`` for ``(C, Y, X)``), read from the header only; ``None`` when it names no
    channel axis or the file cannot be read. napari's own reader opens such a file as a plain
    ``(C, Y, X)`` array; the plugin asks this to know the first axis is not a stack."""
    return tiff_channels(path)[0]


def tiff_channels(path: str | os.PathLike) -> tuple[int | None, list[str] | None]:
    """``(channel axis, channel names)`` of a TIFF's first series from its header:
    :func:`tiff_channel_axis`, and the names the file gives its channels (OME ``Channel
    Name``, or ImageJ's slice ``Labels`` of a ``(C, Y, X)`` file), ``None`` when it gives
    none, or not one per channel."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = str(series.axes).upper()
            if "C" not in axes:
                return None, None
            axis, n = axes.index("C"), int(series.shape[axes.index("C")])
            names = None
            if tif.is_ome and tif.ome_metadata:
                names = _ome_channel_names(tif.ome_metadata)
            elif tif.is_imagej and tif.imagej_metadata:
                names = tif.imagej_metadata.get("Labels")
    except Exception:  # any file napari opened; not ours to judge
        return None, None
    names = [str(v) for v in names] if isinstance(names, (list, tuple)) and len(names) == n else None
    return axis, names if names and all(names) else None


def ome_pixels(xml: str):
    """The ``Pixels`` element of an OME-XML document's first image (its sizes, channels and
    physical pixel sizes), or ``None``."""
    import xml.etree.ElementTree as ET

    return next((el for el in ET.fromstring(xml).iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def _ome_channel_names(xml: str) -> list[str] | None:
    """The ``Name`` of each ``Channel`` of an OME-XML document's first image."""
    pixels = ome_pixels(xml)
    if pixels is None:
        return None
    channels = [el for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]
    return [el.get("Name", "") for el in channels] or None


# --------------------------------------------------------------------------- images
def as_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate a 2D image and return it as ``(H, W)`` or ``(H, W, C)``.

    Accepts gray ``(H, W)``, RGB ``(H, W, 3)`` and multi-channel ``(H, W, C)`` with
    ``2 <= C <= MAX_CHANNELS`` (an RGBA image is 4 channels here: the readers drop alpha,
    and gray and RGB models take the first three), of integer or float dtype. ``(H, W, 1)``
    is squeezed.

    Raises:
        ValueError: with what to do, for stacks, channel-first arrays, tiny or empty images,
            complex or boolean data and non-finite values.
    """
    image = np.asarray(image)
    if image.dtype.kind not in "uif":
        raise ValueError(
            f"The {what} has dtype {image.dtype}; use an 8- or 16-bit integer or a float image."
        )
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3 and image.shape[0] <= MAX_CHANNELS and image.shape[-1] > MAX_CHANNELS:
        raise ValueError(
            f"The {what} has shape {image.shape}, which looks channel-first; pass (H, W) for "
            "gray or (H, W, C) for colour or channels, e.g. np.moveaxis(image, 0, -1)."
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] > MAX_CHANNELS):
        raise ValueError(
            f"The {what} has shape {image.shape}; expected a 2D image (H, W), (H, W, 3) or "
            f"(H, W, C) with up to {MAX_CHANNELS} channels. Split stacks into 2D images first."
        )
    h, w = image.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"The {what} is {h}x{w} pixels; images must be at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}."
        )
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise ValueError(f"The {what} contains NaN or infinite values; replace them first.")
    return image


def channel_count(image: np.ndarray) -> int:
    """Channels per pixel of a 2D image: 1 for ``(H, W)``, ``C`` for ``(H, W, C)``."""
    return 1 if np.ndim(image) == 2 else int(np.shape(image)[-1])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as ``(H, W)``, ``(H, W, 3)`` (RGB order) or, for a TIFF with
    channels (:func:`read_tiff`), ``(H, W, C)``, keeping its dtype."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file: {path}")
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = read_tiff(path)[0]
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if arr is None:
            raise ValueError(f"Could not read {path}: not an image, or a corrupt file.")
        if arr.ndim == 3 and arr.shape[-1] == 3:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
        elif arr.ndim == 3 and arr.shape[-1] == 4:
            arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
    return as_image(arr, what=f"image {path.name}")


def read_images(path: str | os.PathLike) -> list[tuple[str, np.ndarray]]:
    """Read an image file that may hold a stack of 2D images.

    Returns:
        ``[(name, image)]``: one item named by the file stem for a 2D image (gray, RGB or
        multi-channel, :func:`read_image`); for a TIFF stack ``(N, H, W[, C])`` (Z, T or
        pages; a ``(C, Y, X)`` ImageJ/OME file is one image with channels), one item per
        slice named ``<stem>_z000``...
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        arr, n_stack = read_tiff(path)
        if n_stack > 1:
            raise ValueError(
                f"The image {path.name} has shape {arr.shape}: {n_stack} stack axes (e.g. T and Z); "
                "keep one (save each time point as its own file)."
            )
        if n_stack == 1:
            return [(f"{path.stem}_z{i:03d}", as_image(a, what=f"slice {i} of {path.name}")) for i, a in enumerate(arr)]
    return [(path.stem, read_image(path))]


def is_multichannel(image: np.ndarray) -> bool:
    """Whether an ``(H, W, C)`` image holds channels rather than RGB colours (``C != 3``)."""
    return np.ndim(image) == 3 and np.shape(image)[-1] != 3


def _encode(arr: np.ndarray, suffix: str) -> bytes:
    if suffix in (".tif", ".tiff"):
        import io as _io

        import tifffile

        buf = _io.BytesIO()
        if is_multichannel(arr):  # an OME-TIFF (C, Y, X): Fiji and read_tiff see channels
            tifffile.imwrite(buf, np.ascontiguousarray(np.moveaxis(arr, -1, 0)), ome=True,
                             photometric="minisblack", metadata={"axes": "CYX"}, compression="zlib")
        else:
            tifffile.imwrite(buf, arr, compression="zlib")
        return buf.getvalue()
    if is_multichannel(arr):
        raise ValueError(f"A {arr.shape[-1]}-channel image cannot be stored as {suffix}; use a .tif path.")
    if arr.ndim == 3 and arr.shape[-1] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(suffix, arr)
    if not ok:
        raise ValueError(f"Could not encode an array of {arr.dtype} {arr.shape} as {suffix}.")
    return buf.tobytes()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an image atomically. PNG for 8/16-bit gray or RGB; float and multi-channel
    images go to ``.tif`` (multi-channel as an OME-TIFF ``(C, Y, X)``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if image.dtype.kind == "f" and suffix not in (".tif", ".tiff"):
        raise ValueError(f"Float images cannot be stored as {suffix}; use a .tif path.")
    if is_multichannel(image) and suffix not in (".tif", ".tiff"):
        raise ValueError(f"A {image.shape[-1]}-channel image cannot be stored as {suffix}; use a .tif path.")
    return atomic_write_bytes(path, _encode(np.ascontiguousarray(image), suffix))


def write_label(path: str | os.PathLike, label: np.ndarray) -> Path:
    """Write a label map as 8- or 16-bit PNG (or TIFF if ``path`` says so), atomically."""
    label = np.asarray(label)
    if label.size and label.max() > np.iinfo(np.uint16).max:
        raise ValueError("Label maps are limited to 65535 values.")
    dtype = np.uint8 if (label.size == 0 or label.max() < 256) else np.uint16
    return write_image(path, label.astype(dtype, copy=False))


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label map written by :func:`write_label` as a 2D integer array."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        arr = _read_tiff(path)
    else:
        arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ValueError(f"Could not read label map {path}: not an image, or a corrupt file.")
    if arr.ndim == 3:
        raise ValueError(
            f"Label map {path} has {arr.shape[-1]} channels; label maps are single-channel."
        )
    return arr


# --------------------------------------------------------------------------- datasets
@dataclass
class Sample:
    """One 2D image with any subset of the three lazy label maps.

    Attributes:
        name: file stem, unique within a dataset.
        image: ``(H, W)``, ``(H, W, 3)`` or ``(H, W, C)`` (channels) array.
        detection, separation, segmentation: ``(H, W)`` maps or ``None`` (task not labelled).
        geometry: how a viewer places the image, ``{"scale": [sy, sx], "translate": [ty, tx],
            "units": [uy, ux]}`` (see :func:`normalize_geometry`), or ``None`` for pixels at
            the origin. The engine ignores it; the dataset folder keeps it.
    """

    name: str
    image: np.ndarray
    detection: np.ndarray | None = None
    separation: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    geometry: dict | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    def label(self, task: str) -> np.ndarray | None:
        return getattr(self, task)

    def tasks(self) -> tuple[str, ...]:
        """Tasks this image is labelled for (a map with at least one non-zero pixel)."""
        return tuple(t for t in TASKS if self.label(t) is not None and np.any(self.label(t)))


@dataclass
class LazyDataset:
    """Images with lazy labels and the project's classes."""

    classes: ClassSpec = field(default_factory=ClassSpec)
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    def names(self) -> list[str]:
        return [s.name for s in self.samples]

    def summary(self) -> dict[str, int]:
        """Number of images labelled for each task."""
        return {t: sum(t in s.tasks() for s in self.samples) for t in TASKS}

    def validate(self) -> None:
        """Check every sample against the classes; raise ``ValueError`` saying what is wrong."""
        seen = set()
        for s in self.samples:
            if s.name in seen:
                raise ValueError(f"Two images are named {s.name!r}; names must be unique.")
            seen.add(s.name)
            s.image = as_image(s.image, what=f"image {s.name}")
            for task in TASKS:
                lab = s.label(task)
                if lab is None:
                    continue
                n = n_task_classes(task, self.classes.n_classes)
                setattr(s, task, validate_label_map(lab, s.shape, n, f"{task} map of {s.name}"))


def normalize_geometry(geometry: dict | None, what: str = "geometry") -> dict | None:
    """Check an image's viewer geometry and return it in the form stored in ``lazylabels.json``.

    Args:
        geometry: ``{"scale": [sy, sx], "translate": [ty, tx], "units": [uy, ux]}`` for the
            image's two axes (any key may be missing), or ``None``.

    Returns:
        the three keys with floats / strings, or ``None`` when it is the default (scale 1,
        translate 0, pixel units), so that plain projects keep a plain JSON file.

    Raises:
        ValueError: not two finite numbers per key, or a zero scale.
    """
    if not geometry:
        return None
    try:
        scale = [float(v) for v in geometry.get("scale", (1.0, 1.0))]
        translate = [float(v) for v in geometry.get("translate", (0.0, 0.0))]
        units = [str(u) for u in (geometry.get("units") or ("pixel", "pixel"))]
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(
            f"The {what} {geometry!r} is not {{scale: [sy, sx], translate: [ty, tx], units: [uy, ux]}}."
        ) from e
    if len(scale) != 2 or len(translate) != 2 or len(units) != 2:
        raise ValueError(f"The {what} {geometry!r} must give two values (Y, X) per key.")
    if not all(np.isfinite(scale + translate)) or 0.0 in scale:
        raise ValueError(f"The {what} {geometry!r} needs finite values and a non-zero scale.")
    if scale == [1.0, 1.0] and translate == [0.0, 0.0] and all(u in ("pixel", "px") for u in units):
        return None
    return {"scale": scale, "translate": translate, "units": units}


def read_geometry(path: str | os.PathLike) -> dict[str, dict]:
    """``{image stem: geometry}`` stored in a dataset folder's ``lazylabels.json`` (``{}`` when
    the folder or the field is missing: older folders). A malformed entry is skipped with a
    warning, so the images still open."""
    meta = Path(path) / DATASET_FILE
    if not meta.exists():
        return {}
    try:
        stored = json.loads(meta.read_text()).get("geometry") or {}
    except (ValueError, AttributeError):
        return {}
    out = {}
    for stem, g in stored.items() if isinstance(stored, dict) else ():
        try:
            g = normalize_geometry(g, f"geometry of {stem} in {meta}")
        except ValueError as e:
            log.warning("%s; the image opens without it.", e)
            continue
        if g is not None:
            out[str(stem)] = g
    return out


def _find(folder: Path, stem: str, suffixes: Iterable[str]) -> Path | None:
    for suf in suffixes:
        for cand in (folder / f"{stem}{suf}", folder / f"{stem}{suf.upper()}"):
            if cand.exists():
                return cand
    return None


def is_dataset(path: str | os.PathLike) -> bool:
    """True if ``path`` is a dataset folder (has ``lazylabels.json`` or an ``images/`` folder)."""
    p = Path(path)
    return p.is_dir() and ((p / DATASET_FILE).exists() or (p / "images").is_dir())


class NewerFormatError(ValueError):
    """A file written by a newer napari-lazylabels, in a format this one does not know."""


def read_classes(path: str | os.PathLike) -> ClassSpec:
    """Classes of a dataset folder; the default ``(background, object)`` if it has no JSON."""
    meta = Path(path) / DATASET_FILE
    if not meta.exists():
        return ClassSpec()
    try:
        d = json.loads(meta.read_text())
        version = d.get("version", DATASET_VERSION) if isinstance(d, dict) else DATASET_VERSION
        if not isinstance(version, int) or version > DATASET_VERSION:
            raise NewerFormatError(
                f"{meta} has format version {version!r}; this napari-lazylabels reads version "
                f"{DATASET_VERSION}: upgrade napari-lazylabels to open it."
            )
        return ClassSpec.from_dict(d["classes"])
    except NewerFormatError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"{meta} is not a valid dataset description ({e}). It should look like "
            '{"classes": {"names": ["background", "nucleus"]}}.'
        ) from e


def load_dataset(path: str | os.PathLike) -> LazyDataset:
    """Read a dataset folder (see module docstring).

    Raises:
        FileNotFoundError: no such folder or no ``images/`` in it.
        ValueError: a label map that does not fit its image or the classes.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"No dataset folder at {root}.")
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise FileNotFoundError(
            f"{root} has no images/ folder. A dataset folder holds images/ and any of "
            "detection/, separation/, segmentation/ with matching file names; "
            "`lazylabels simulate` makes one from ground-truth masks."
        )
    classes = read_classes(root)
    geometry = read_geometry(root)
    samples = []
    for img_path in sorted(img_dir.iterdir()):
        if img_path.suffix.lower() not in IMAGE_SUFFIXES or img_path.name.startswith("."):
            continue
        stem = img_path.stem
        labels = {}
        for task in TASKS:
            lp = _find(root / task, stem, LABEL_SUFFIXES)
            labels[task] = read_label(lp) if lp is not None else None
        samples.append(Sample(name=stem, image=read_image(img_path), geometry=geometry.get(stem), **labels))
    if not samples:
        raise FileNotFoundError(f"{img_dir} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    ds = LazyDataset(classes=classes, samples=samples)
    ds.validate()
    log.info("Loaded %d images from %s: %s", len(ds), root, ds.summary())
    return ds


def save_dataset(dataset: LazyDataset, path: str | os.PathLike, write_images: bool = True) -> Path:
    """Write a dataset folder atomically, file by file.

    Label maps that are ``None`` or all zero are removed from disk (the image is then not
    labelled for that task). Images are written as PNG (TIFF for float and multi-channel
    images) unless an image file with that stem is already there. The samples' ``geometry``
    replaces theirs in ``lazylabels.json``; other images' stored geometry stays.
    """
    root = Path(path)
    dataset.validate()
    root.mkdir(parents=True, exist_ok=True)
    geometry = read_geometry(root)
    for s in dataset.samples:
        g = normalize_geometry(s.geometry, f"geometry of {s.name}")
        if g is None:
            geometry.pop(s.name, None)
        else:
            geometry[s.name] = g
    meta = {"format": DATASET_FORMAT, "version": 1, "classes": dataset.classes.to_dict()}
    if geometry:
        meta["geometry"] = geometry
    atomic_write_json(root / DATASET_FILE, meta)
    for s in dataset.samples:
        if write_images and _find(root / "images", s.name, IMAGE_SUFFIXES) is None:
            suffix = ".tif" if s.image.dtype.kind == "f" or is_multichannel(s.image) else ".png"
            write_image(root / "images" / f"{s.name}{suffix}", s.image)
        for task in (DETECTION, SEPARATION, SEGMENTATION):
            lab = s.label(task)
            existing = _find(root / task, s.name, LABEL_SUFFIXES)
            if lab is None or not np.any(lab):
                if existing is not None:
                    existing.unlink()
                continue
            target = root / task / f"{s.name}.png"
            write_label(target, lab)
            if existing is not None and existing != target:
                existing.unlink()
    log.info("Saved %d images to %s", len(dataset), root)
    return root


ZARR_MARKERS = (".zarray", ".zgroup", ".zattrs", "zarr.json")
"""Files that make a folder a zarr array or group (format 2 or 3)."""


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr array or group folder, e.g. ``cells.ome.zarr``."""
    p = Path(path)
    return p.is_dir() and (p.suffix.lower() == ".zarr" or any((p / m).is_file() for m in ZARR_MARKERS))


def list_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (and dataset folders, via ``images/``) into image files; a
    zarr folder (``*.zarr``, an OME-Zarr) is one image."""
    out: list[Path] = []
    for p in map(Path, paths):
        if is_zarr(p):
            out.append(p)
        elif p.is_dir():
            d = p / "images" if (p / "images").is_dir() else p
            out += sorted(
                f for f in d.iterdir()
                if (f.suffix.lower() in IMAGE_SUFFIXES or f.suffix.lower() == ".zarr" and f.is_dir())
                and not f.name.startswith(".")
            )
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"No such image file or folder: {p}")
    if not out:
        raise FileNotFoundError("No images found in " + ", ".join(map(str, paths)))
    return out
