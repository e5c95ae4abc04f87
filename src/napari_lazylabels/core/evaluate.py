"""Scores of a folder of predictions (``lazylabels predict --out``) against instance masks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from skimage.measure import label

from .instances import separating_interfaces
from .io import IMAGE_SUFFIXES, read_image, read_label
from .metrics import evaluate_image, summarize

__all__ = ["evaluate_folder"]


def _find_prediction(pred_dir: Path, stem: str, kind: str) -> Path | None:
    """``<stem>_<kind>`` with the first suffix present (.png, .tif, .tiff), else None."""
    for suf in (".png", ".tif", ".tiff"):
        p = pred_dir / f"{stem}_{kind}{suf}"
        if p.exists():
            return p
    return None


def _read_prediction(pred_dir: Path, stem: str) -> tuple | None:
    """``(classes, instances, separating interfaces or None)`` of image ``stem``: from its
    ``STEM_classes`` (``_instances``, ``_interfaces``) files, else from a ``STEM.ome.zarr``
    written block by block (its ``labels/classes`` and ``labels/instances``, no interfaces);
    ``None`` when there is neither."""
    cls_p = _find_prediction(pred_dir, stem, "classes")
    if cls_p is not None:
        classes = read_label(cls_p)
        inst_p = _find_prediction(pred_dir, stem, "instances")
        itf_p = _find_prediction(pred_dir, stem, "interfaces")
        instances = read_label(inst_p) if inst_p else label(classes > 0)
        return classes, instances, separating_interfaces(read_image(itf_p), instances) if itf_p else None
    store = pred_dir / f"{stem}.ome.zarr"
    if not store.is_dir():
        return None
    from .zarrio import ome_label

    classes = np.asarray(ome_label(store, "classes")[...])
    try:
        instances = np.asarray(ome_label(store, "instances")[...])
    except ValueError:  # predicted without instances
        instances = label(classes > 0)
    return classes, instances, None


def evaluate_folder(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike) -> dict:
    """Score predictions written by ``lazylabels predict`` against instance masks.

    ``gt_dir`` holds instance masks (0 = background, 1..N = objects) named like the images,
    or a ``masks/`` folder that does. Each mask with a ``<stem>_classes`` prediction (or a
    ``<stem>.ome.zarr`` predicted block by block) is scored by
    :func:`~napari_lazylabels.core.metrics.evaluate_image`; the instances are
    ``<stem>_instances`` (else the connected components of the class map). Interface
    precision is that of the predicted interface pixels that separate two predicted objects
    (:func:`napari_lazylabels.core.predict.separating_interfaces`).

    Returns:
        ``{"summary": summarize(...), "images": {stem: scores}}``.

    Raises:
        FileNotFoundError: no prediction matches a mask.
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if (gt_dir / "masks").is_dir():
        gt_dir = gt_dir / "masks"
    gts = sorted(p for p in gt_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    per_image = {}
    for g in gts:
        found = _read_prediction(pred_dir, g.stem)
        if found is None:
            continue
        classes, instances, interfaces = found
        gt = read_label(g)
        if interfaces is None:
            interfaces = np.zeros(gt.shape, bool)
        per_image[g.stem] = evaluate_image(classes, instances, interfaces, gt)
    if not per_image:
        raise FileNotFoundError(
            f"No prediction in {pred_dir} matches a mask in {gt_dir} (expected STEM_classes.png "
            "files or STEM.ome.zarr folders from `lazylabels predict` named like the masks)."
        )
    return {"summary": summarize(list(per_image.values())), "images": per_image}
