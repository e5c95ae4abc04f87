"""npe2 reader: File > Open a lazy-label project (its folder or its ``lazylabels.json``) or an
OME-Zarr image with its label images (``lazylabels predict`` writes ``STEM.ome.zarr``).

The manifest claims only folders and the files named ``lazylabels.json``, ``zarr.json`` and
``.zattrs`` (and ``*.ome.zarr``, which npe2 never matches against a folder: it only lists this
reader in napari's Preferences for that pattern), so napari opens plain images (PNG, TIFF,
...) with its own reader and never asks which plugin to use for them. :func:`get_reader`
declines every folder or file that is neither a project nor an OME-Zarr image group (NGFF 0.4,
zarr format 2, metadata in ``.zattrs``; NGFF 0.5, zarr format 3, metadata under ``"ome"`` in
``zarr.json``): plain zarr arrays and groups stay with napari's own zarr reader.

An OME-Zarr image opens as napari's ``napari-ome-zarr`` opens it, without reading a pixel: one
Image layer (a multiscale list of dask arrays when the pyramid has several levels; a channel
axis longer than 1 as ``channel_axis``, one layer per channel named after
``omero.channels[].label``), then one Labels layer per label image listed in ``labels/``,
all with the ``scale`` (and ``translate``, ``units``) of their full-resolution level.

napari offers a folder to every reader that accepts folders (its own too), so opening the
``.ome.zarr`` folder itself asks "Choose reader" until a preference says which (Preferences >
Plugins, e.g. ``*.ome.zarr/`` -> napari-lazylabels); opening its ``zarr.json`` or ``.zattrs``
file does not ask (no other reader claims those names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .core.io import DATASET_FILE, is_dataset, load_dataset
from .core.zarrio import image_stem, ome_multiscale, ome_transform

OME_METADATA_FILES = (".zattrs", "zarr.json")
"""The files holding a zarr group's attributes: zarr format 2 (NGFF 0.4) and 3 (NGFF 0.5)."""


def _single_path(path) -> Path | None:
    """``path`` (or the only element of a one-element list) as a ``Path``, else ``None``."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    return Path(path)


def _project_root(path) -> Path | None:
    """The project folder that ``path`` names (the folder itself or its ``lazylabels.json``),
    or ``None`` when ``path`` is not a lazy-label project."""
    p = _single_path(path)
    if p is None:
        return None
    if p.name == DATASET_FILE and p.is_file():
        p = p.parent
    return p if is_dataset(p) else None


# --------------------------------------------------------------------------- OME-Zarr metadata
def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _ome_attrs(folder: Path) -> dict | None:
    """The OME attributes of the zarr group ``folder``: the whole ``.zattrs`` (NGFF 0.4, zarr
    format 2) or the ``"ome"`` attributes of its ``zarr.json`` (NGFF 0.5, zarr format 3);
    ``None`` when it is no zarr group or has neither."""
    attrs = _read_json(folder / ".zattrs")
    if isinstance(attrs, dict):
        return attrs
    meta = _read_json(folder / "zarr.json")
    if isinstance(meta, dict) and meta.get("node_type") == "group":
        attrs = meta.get("attributes")
        if isinstance(attrs, dict) and isinstance(attrs.get("ome"), dict):
            return attrs["ome"]
    return None


def _ome_root(path) -> Path | None:
    """The OME-Zarr image group that ``path`` names (the folder, or its ``.zattrs`` or
    ``zarr.json``), or ``None`` when it is none (zarr arrays, plain groups, other files)."""
    p = _single_path(path)
    if p is None:
        return None
    if p.name in OME_METADATA_FILES and p.is_file():
        p = p.parent
    if not p.is_dir():
        return None
    return p if ome_multiscale(_ome_attrs(p)) is not None else None


def _axes(ms: dict, ndim: int) -> list[dict]:
    """The multiscale's axes as ``{"name", "type"[, "unit"]}`` (NGFF 0.3 names them by string,
    older versions not at all: ``tczyx`` then)."""
    axes = ms.get("axes")
    if not isinstance(axes, list) or len(axes) != ndim:
        axes = list("tczyx"[-ndim:]) if ndim <= 5 else [f"d{i}" for i in range(ndim)]
    out = []
    for a in axes:
        a = dict(a) if isinstance(a, dict) else {"name": str(a)}
        a["name"] = str(a.get("name", ""))
        if "type" not in a:
            a["type"] = {"c": "channel", "t": "time"}.get(a["name"].lower(), "space")
        out.append(a)
    return out


def _known_unit(unit) -> str | None:
    """``unit`` when napari (pint) knows it, else ``None``."""
    if not isinstance(unit, str) or not unit:
        return None
    try:
        import pint

        pint.get_application_registry().Unit(unit)
    except Exception:  # pint raises several kinds for names it does not know
        return None
    return unit


def _open_multiscale(folder: Path, ms: dict, what: str) -> tuple[list, dict]:
    """The levels of ``ms`` as dask arrays (nothing read) and their geometry: ``{"axes",
    "scale", "translate", "unit"}`` of the full-resolution level (``scale``/``translate``
    ``None`` when not given)."""
    import dask.array as da
    import zarr

    try:
        group = zarr.open_group(str(folder), mode="r")
        levels = [da.from_zarr(group[str(d["path"])]) for d in ms["datasets"]]
    except Exception as e:  # zarr raises several kinds for missing or foreign arrays
        raise ValueError(f"Could not read {what} at {folder}: {type(e).__name__}: {e}") from e
    ndim = levels[0].ndim
    if any(a.ndim != ndim for a in levels):
        raise ValueError(f"{what} at {folder} has levels of different dimensions.")
    axes = _axes(ms, ndim)
    transforms = ms["datasets"][0].get("coordinateTransformations")
    scale, translate = ome_transform(transforms, "scale"), ome_transform(transforms, "translation")
    # the multiscale's own transforms apply after each level's (NGFF): scale, then translation
    outer = ms.get("coordinateTransformations")
    outer_scale, outer_translate = ome_transform(outer, "scale"), ome_transform(outer, "translation")
    if outer_scale is not None and len(outer_scale) == ndim:
        scale = [a * b for a, b in zip(scale or [1.0] * ndim, outer_scale, strict=False)]
        if translate is not None:
            translate = [a * b for a, b in zip(translate, outer_scale, strict=False)]
    if outer_translate is not None and len(outer_translate) == ndim:
        translate = [a + b for a, b in zip(translate or [0.0] * ndim, outer_translate, strict=False)]
    units = [a.get("unit") for a in axes if a["type"] == "space" and a.get("unit")]
    geometry = {
        "axes": axes,
        "scale": scale if scale is not None and len(scale) == ndim else None,
        "translate": translate if translate is not None and len(translate) == ndim else None,
        "unit": units[0] if units and len(set(units)) == 1 else None,
    }
    return levels, geometry


def _drop_axes(levels: list, geometry: dict, drop: list[int]) -> tuple[list, dict]:
    """``levels`` without the (length-1) axes ``drop``, read lazily at index 0."""
    if not drop:
        return levels, geometry
    key = tuple(0 if i in drop else slice(None) for i in range(levels[0].ndim))
    keep = [i for i in range(levels[0].ndim) if i not in drop]
    geometry = {**geometry, "axes": [geometry["axes"][i] for i in keep]}
    for k in ("scale", "translate"):
        if geometry[k] is not None:
            geometry[k] = [geometry[k][i] for i in keep]
    return [a[key] for a in levels], geometry


def _layer_kwargs(levels: list, geometry: dict, name: str) -> dict:
    """Layer kwargs over ``levels``: ``name``, ``multiscale`` (several levels), ``scale``,
    ``translate`` (when not 0), ``units`` (when napari knows them all) and ``metadata``
    (``{"unit": ...}`` when the space axes have one)."""
    kwargs: dict = {"name": name}
    if len(levels) > 1:
        kwargs["multiscale"] = True
    if geometry["scale"] is not None:
        kwargs["scale"] = tuple(geometry["scale"])
    if geometry["translate"] is not None and any(geometry["translate"]):
        kwargs["translate"] = tuple(geometry["translate"])
    units = [_known_unit(a.get("unit")) for a in geometry["axes"]]
    if any(units) and all(u or not a.get("unit") for u, a in zip(units, geometry["axes"], strict=True)):
        kwargs["units"] = tuple(u or "pixel" for u in units)
    kwargs["metadata"] = {"unit": geometry["unit"]} if geometry["unit"] else {}
    return kwargs


def _data(levels: list):
    return levels if len(levels) > 1 else levels[0]


def _label_colors(attrs: dict) -> dict | None:
    """``{value: (r, g, b, a)}`` in 0..1 from an ``image-label``'s ``colors``, else ``None``."""
    colors = (attrs.get("image-label") or {}).get("colors") if isinstance(attrs.get("image-label"), dict) else None
    out: dict = {}
    for c in colors if isinstance(colors, list) else []:
        try:
            rgba = [float(v) / 255 for v in c["rgba"]]
            out[int(c["label-value"])] = tuple(rgba) if len(rgba) == 4 else (*rgba[:3], 1.0)
        except (KeyError, TypeError, ValueError):
            continue
    if not out:
        return None
    out.setdefault(0, (0.0, 0.0, 0.0, 0.0))
    out[None] = (0.0, 0.0, 0.0, 0.0)  # values the metadata gives no colour are not drawn
    return out


def _label_layer(folder: Path, attrs: dict, name: str, fallback: dict | None) -> tuple:
    """The Labels layer data tuple of the label image group ``folder`` (``attrs``: its OME
    attributes); ``fallback``: the image's geometry, used where the label gives none."""
    levels, geometry = _open_multiscale(folder, ome_multiscale(attrs), f"the label image {folder.name}")
    drop = [i for i, a in enumerate(geometry["axes"]) if a["type"] == "channel" and levels[0].shape[i] == 1]
    levels, geometry = _drop_axes(levels, geometry, drop)
    if fallback is not None and len(fallback["axes"]) >= levels[0].ndim:
        n = levels[0].ndim
        for k in ("scale", "translate"):
            if geometry[k] is None and fallback[k] is not None:
                geometry[k] = fallback[k][-n:]
        if geometry["unit"] is None and fallback["unit"] is not None:
            geometry = {**geometry, "unit": fallback["unit"],
                        "axes": [{**a, "unit": a.get("unit") or b.get("unit")}
                                 for a, b in zip(geometry["axes"], fallback["axes"][-n:], strict=True)]}
    kwargs = _layer_kwargs(levels, geometry, name)
    colors = _label_colors(attrs)
    if colors is not None:
        kwargs["colormap"] = colors
    return _data(levels), kwargs, "labels"


def read_ome_zarr(path: str | list[str]) -> list[tuple]:
    """Read an OME-Zarr image and its label images, lazily.

    Args:
        path: the OME-Zarr image folder (``STEM.ome.zarr``), its ``.zattrs`` or ``zarr.json``
            (or a one-element list of either).

    Returns:
        layer data tuples ``(data, kwargs, layer_type)``: the image (an ``"image"`` tuple whose
        data is a list of dask arrays, full resolution first, with ``multiscale=True`` when
        the pyramid has several levels; a channel axis longer than 1 as ``channel_axis``, one
        of length 1 dropped), then one ``"labels"`` tuple per label image listed in
        ``labels/`` (named ``"STEM NAME"``). ``scale``/``translate`` are the full-resolution
        level's (without the channel axis), ``units`` the axes' (when napari knows them) and
        ``metadata["unit"]`` the space axes' unit. A group that is itself a label image
        (``labels/NAME``) opens as one Labels layer.
    """
    root = _ome_root(path)
    if root is None:
        raise FileNotFoundError(f"{path} is not an OME-Zarr image (a zarr group with multiscales metadata).")
    attrs = _ome_attrs(root)
    stem = image_stem(root.resolve())
    if "image-label" in attrs:  # one label image of an OME-Zarr, opened on its own
        return [_label_layer(root, attrs, stem, None)]
    ms = ome_multiscale(attrs)
    levels, geometry = _open_multiscale(root, ms, "the image")
    chan = [i for i, a in enumerate(geometry["axes"]) if a["type"] == "channel"]
    drop = [i for i in chan if levels[0].shape[i] == 1]
    levels, geometry = _drop_axes(levels, geometry, drop)
    chan = [i for i, a in enumerate(geometry["axes"]) if a["type"] == "channel"]
    if not chan:
        kwargs = _layer_kwargs(levels, geometry, stem)
        space_geometry = geometry
    else:  # napari splits the channels into layers: give each its name, geometry and metadata
        c, n = chan[0], int(levels[0].shape[chan[0]])
        space_geometry = {**geometry, "axes": [a for i, a in enumerate(geometry["axes"]) if i != c]}
        for k in ("scale", "translate"):
            if geometry[k] is not None:
                space_geometry[k] = [v for i, v in enumerate(geometry[k]) if i != c]
        kwargs = _layer_kwargs(levels, space_geometry, stem)
        for k in ("scale", "translate", "units", "metadata"):
            if k in kwargs:
                kwargs[k] = [dict(kwargs[k]) if k == "metadata" else kwargs[k] for _ in range(n)]
        omero = attrs.get("omero") if isinstance(attrs.get("omero"), dict) else {}
        labels = [ch.get("label") if isinstance(ch, dict) else None for ch in omero.get("channels") or []]
        if len(labels) != n or not all(isinstance(s, str) and s for s in labels):
            labels = [f"channel {i}" for i in range(n)]
        kwargs.update(channel_axis=c, name=[f"{stem} {s}" for s in labels])
    kwargs["rgb"] = False  # OME-Zarr keeps colours on the channel axis, never last
    out = [(_data(levels), kwargs, "image")]
    labels_dir = root / "labels"
    names = (_ome_attrs(labels_dir) or {}).get("labels") if labels_dir.is_dir() else None
    predicted = attrs.get("lazylabels") if isinstance(attrs.get("lazylabels"), dict) else None
    for name in names if isinstance(names, list) else []:
        folder = labels_dir / str(name)
        label_attrs = _ome_attrs(folder) if folder.is_dir() else None
        if ome_multiscale(label_attrs) is None:
            continue  # listed but absent or not a multiscale: skip it, as viewers do
        layer = _label_layer(folder, label_attrs, f"{stem} {name}", space_geometry)
        if predicted is not None and name in ("classes", "instances"):
            from ._widgets._layers import META

            layer[1]["metadata"][META] = _prediction_meta(root, stem, str(name), predicted)
        out.append(layer)
    return out


def _prediction_meta(root: Path, stem: str, name: str, predicted: dict) -> dict:
    """What the Predict widget records on the layers of a block-by-block prediction it made
    (``_layers.lazy_prediction_layer_data``), for one opened from its OME-Zarr: so that
    Re-split cuts it again (``_layers.blockwise_store``) after the viewer was closed."""
    meta = {"image": stem, "blockwise": True, "store": str(root.resolve()), "prediction": name}
    if name == "instances" and isinstance(predicted.get("settings"), dict):
        meta["settings"] = dict(predicted["settings"])
    return meta


# --------------------------------------------------------------------------- the npe2 hook
def get_reader(path: str | list[str]):
    """Return :func:`read_dataset` if ``path`` is a project folder or its ``lazylabels.json``,
    :func:`read_ome_zarr` if it is an OME-Zarr image group (or its ``.zattrs``/``zarr.json``),
    else ``None`` (napari then tries other readers)."""
    if _project_root(path) is not None:
        return read_dataset
    if _ome_root(path) is not None:
        return read_ome_zarr
    return None


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Read a project into an Image layer and three task Labels layers.

    Args:
        path: the project folder or its ``lazylabels.json`` (or a one-element list of either).

    Returns:
        layer data tuples ``(data, kwargs, layer_type)``, per group of equally sized images
        one image ``(H, W)`` or stack ``(N, H, W)`` (RGB adds a trailing 3) and the three task
        label maps of the same plane shape.
    """
    from ._widgets._layers import dataset_to_layer_data

    root = _project_root(path)
    if root is None:
        raise FileNotFoundError(
            f"{path} is not a lazy-label project: open a folder with {DATASET_FILE} or images/."
        )
    return dataset_to_layer_data(load_dataset(root), source=str(root))
