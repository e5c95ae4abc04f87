"""Physical pixel sizes of image files, and label maps written with them as OME-TIFF.

A microscope's TIFF says how large a pixel is: OME-TIFF in its OME-XML (``PhysicalSizeX``,
``PhysicalSizeY``, ``PhysicalSizeZ`` and their units), ImageJ in its resolution tags, unit and
slice spacing. :func:`read_pixel_size` reads that; :func:`write_ome_labels` writes a class or
instance map, 2D or a ``(Z, Y, X)`` stack, as an OME-TIFF that carries it, so that napari
(with an OME reader), Fiji or QuPath show the prediction at the image's scale.

The resolution tags of a plain TIFF (dots per inch of a scanner or screen, 72 by default) are
not a microscope's pixel size and are ignored.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import atomic_path, ome_pixels

log = logging.getLogger(__name__)

OME_DEFAULT_UNIT = "µm"
"""The unit of an OME ``PhysicalSize*`` without a ``PhysicalSize*Unit`` (the OME schema's)."""

_UNIT_NAMES = {"micron": "µm", "microns": "µm", "um": "µm", "\\u00B5m": "µm", "μm": "µm", "nanometer": "nm",
               "nanometers": "nm", "millimeter": "mm", "mm": "mm", "nm": "nm", "µm": "µm"}


@dataclass(frozen=True)
class PixelSize:
    """How large a pixel is.

    Attributes:
        y, x: size of a pixel along Y and X, in ``unit``.
        unit: e.g. ``"µm"`` or ``"nm"``.
        z: spacing of the slices of a stack in ``unit`` (``None``: not known or not a stack).
    """

    y: float
    x: float
    unit: str = OME_DEFAULT_UNIT
    z: float | None = None

    def __post_init__(self) -> None:
        for name in ("y", "x") + (("z",) if self.z is not None else ()):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"A pixel size is a positive number; {name} = {getattr(self, name)!r}.")
            object.__setattr__(self, name, value)

    def ome_metadata(self, stack: bool) -> dict:
        """tifffile's OME metadata keys for an image of axes ``ZYX`` (``stack``) or ``YX``."""
        meta = {"axes": "ZYX" if stack else "YX", "PhysicalSizeX": self.x, "PhysicalSizeXUnit": self.unit,
                "PhysicalSizeY": self.y, "PhysicalSizeYUnit": self.unit}
        if stack and self.z is not None:
            meta.update(PhysicalSizeZ=self.z, PhysicalSizeZUnit=self.unit)
        return meta


def read_pixel_size(path: str | os.PathLike) -> PixelSize | None:
    """The physical pixel size a TIFF's OME or ImageJ metadata gives, else ``None`` (other
    formats, plain TIFFs, unreadable files: a prediction is then written without one)."""
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                return _from_ome(tif.ome_metadata)
            if tif.is_imagej and tif.imagej_metadata:
                page = tif.pages.first
                return _from_imagej(tif.imagej_metadata, page.tags.get("XResolution"), page.tags.get("YResolution"))
    except Exception as e:  # noqa: BLE001 - metadata is optional; the pixels are read elsewhere
        log.debug("no pixel size read from %s: %s", path, e)
    return None


def _from_ome(xml: str) -> PixelSize | None:
    """The first image's ``Pixels`` sizes of an OME-XML document (Y and X must be given)."""
    pixels = ome_pixels(xml)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib or "PhysicalSizeY" not in pixels.attrib:
        return None
    unit = pixels.get("PhysicalSizeXUnit", OME_DEFAULT_UNIT)
    z = pixels.get("PhysicalSizeZ")
    if z is not None and pixels.get("PhysicalSizeZUnit", OME_DEFAULT_UNIT) != unit:
        z = None  # another unit along Z: not converted here
    return PixelSize(float(pixels.get("PhysicalSizeY")), float(pixels.get("PhysicalSizeX")), unit,
                     None if z is None else float(z))


def _from_imagej(meta: dict, xres, yres) -> PixelSize | None:
    """ImageJ keeps pixels per ``unit`` in the resolution tags and the slice spacing in
    ``spacing``; without a unit the tags are a scanner's dots per inch, not a pixel size."""
    unit = _UNIT_NAMES.get(str(meta.get("unit", "")).strip(), str(meta.get("unit", "")).strip())
    if not unit or unit in ("pixel", "pixels", "inch") or xres is None or yres is None:
        return None

    def size(tag) -> float:
        num, den = tag.value
        return den / num

    spacing = meta.get("spacing")
    return PixelSize(size(yres), size(xres), unit, None if spacing is None else float(spacing))


def write_ome_labels(
    path: str | os.PathLike,
    planes: np.ndarray | Iterable[np.ndarray],
    pixel_size: PixelSize | None,
    shape: tuple[int, ...] | None = None,
    dtype=None,
) -> Path:
    """Write a label map as an OME-TIFF with the image's pixel size, atomically.

    Args:
        path: the file, ``<stem>_classes.ome.tif`` or ``<stem>_instances.ome.tif``.
        planes: the ``(H, W)`` map, the ``(Z, H, W)`` stack, or an iterable of its ``(H, W)``
            planes (then ``shape`` and ``dtype`` are required, and only one plane is in memory
            at a time).
        pixel_size: written as the OME ``PhysicalSize*``; ``None``: none (pixels).
        shape, dtype: of the whole map, for an iterable of planes.

    Returns:
        ``path``.
    """
    import tifffile

    if isinstance(planes, np.ndarray):
        shape, dtype = planes.shape, planes.dtype
    elif shape is None or dtype is None:
        raise ValueError("write_ome_labels needs shape and dtype for an iterable of planes.")
    stack = len(shape) == 3
    meta = pixel_size.ome_metadata(stack) if pixel_size is not None else {"axes": "ZYX" if stack else "YX"}
    path = Path(path)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, planes, shape=shape, dtype=dtype, ome=True, metadata=meta, compression="zlib",
                         photometric="minisblack")
    return path
