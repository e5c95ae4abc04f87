"""GrabCut refinement quality on real data with marks drawn in several ways (not a test).

    OMP_NUM_THREADS=1 python benchmarks/grabcut_quality.py [--shared ../shared/data]
        [--sets isbi dsb glas] [--images 10] [--module path/to/grabcut.py] [--json out.json]

For each data set (ISBI 2012 EM slices, DSB 2018 touching nuclei, GlaS glands) and each way of
drawing the task-1 marks from the ground-truth instances:

* ``sim0``, ``sim1``: :func:`napari_lazylabels.core.simulate.simulate_sample` at seeds 0 and 1
  (blobs and medial-axis scribbles, ~10% of the objects missed, a few background strokes);
* ``sparse10``: the marks of ``sim0`` on 10 random objects only and no background stroke (a
  person marking 10 cells in a dense image);
* ``dots10``: a disc of radius 3 px at the deepest point of 10 random objects (clicks);
* ``shrunk``: every object shrunk by 30% of its largest inner distance, no background stroke;

runs ``refine`` on the whole image ("all objects") and with ``region`` set to the whole image
and an empty ``existing`` map ("objects in view"), and prints per set, scheme and scope:

* object IoU: each marked ground-truth object against the written pixels of its mark's class
  in its territory (see :func:`evaluate`; mean, median and 10th percentile);
* background written: pixels GrabCut set to 1 that are not the user's background strokes, per
  image and as a share of the image, and the share of them that lie on ground-truth objects
  (wrong), all of it and more than 2.5 px inside an object (not a matter of where a membrane
  or a blurred outline ends);
* unlabelled: share of the image left 0.

``--module`` loads another ``grabcut.py`` (e.g. ``git show REV:src/.../grabcut.py``) to measure
an older version with the same marks.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from _common import FOLDERS, shared_data
from napari_lazylabels.core.io import read_image, read_label
from napari_lazylabels.core.simulate import simulate_sample

SCHEMES = ("sim0", "sim1", "sparse10", "dots10", "shrunk")
SCOPES = ("all", "view")


def shrunk_marks(gt: np.ndarray, shrink: float = 0.3) -> np.ndarray:
    """Every object's part deeper than ``shrink`` of its largest inner distance, value 2."""
    det = np.zeros(gt.shape, np.uint8)
    for i, sl in enumerate(ndimage.find_objects(gt), start=1):
        if sl is None:
            continue
        obj = np.pad(gt[sl] == i, 1)
        dist = ndimage.distance_transform_edt(obj)[1:-1, 1:-1]
        det[sl][dist > shrink * dist.max()] = 2
    return det


def dot_marks(gt: np.ndarray, n: int, rng: np.random.Generator, radius: int = 3) -> np.ndarray:
    """A disc of ``radius`` px at the deepest point of ``n`` random objects, value 2."""
    det = np.zeros(gt.shape, np.uint8)
    ids = np.unique(gt)
    ids = ids[ids > 0]
    for i in rng.choice(ids, min(n, len(ids)), replace=False):
        sl = ndimage.find_objects((gt == i).astype(np.uint8))[0]
        obj = np.pad(gt[sl] == i, 1)
        dist = ndimage.distance_transform_edt(obj)[1:-1, 1:-1]
        y, x = np.unravel_index(int(dist.argmax()), dist.shape)
        r = int(min(radius, max(0, dist.max() - 2)))
        disc = np.zeros(gt.shape, np.uint8)
        cv2.circle(disc, (int(x) + sl[1].start, int(y) + sl[0].start), r, 1, -1)
        det[(disc > 0) & (gt == i)] = 2
    return det


def marks(gt: np.ndarray, scheme: str, stem: str) -> np.ndarray:
    """``(H, W)`` uint8 detection map of one scheme (see the module docstring)."""
    if scheme == "shrunk":
        return shrunk_marks(gt)
    if scheme == "dots10":
        return dot_marks(gt, 10, np.random.default_rng(sum(map(ord, stem))))
    seed = 1 if scheme == "sim1" else 0
    det = simulate_sample(gt, np.random.default_rng([seed, sum(map(ord, stem))]))["detection"]
    if scheme == "sparse10":
        ids = np.unique(gt[det >= 2])
        ids = ids[ids > 0]
        keep = np.random.default_rng(sum(map(ord, stem))).choice(ids, min(10, len(ids)), replace=False)
        det = np.where((det >= 2) & np.isin(gt, keep), det, 0).astype(np.uint8)
    return det


def evaluate(seg: np.ndarray, det: np.ndarray, gt: np.ndarray) -> dict:
    """Figures of one written class map against the ground-truth instances.

    Object IoU of a marked ground-truth object ``g``: the written pixels of its mark's class
    against ``g``, counted within ``g``'s territory (the pixels nearer to ``g`` than to any
    other object), so a mask that runs over a membrane or into the background loses, while
    an unmarked neighbour written with the right class (a correct label in a class map) does
    not count against ``g``.
    """
    _, (iy, ix) = ndimage.distance_transform_edt(gt == 0, return_indices=True)
    territory = gt[iy, ix]
    marked = det >= 2
    ious = []
    for g in np.unique(gt[marked]):
        if g == 0:
            continue
        truth = gt == g
        value = int(np.bincount(det[truth & marked]).argmax())
        pred = (seg == value) & (territory == g)
        ious.append((truth & pred).sum() / max(1, (truth | pred).sum()))
    written = (seg == 1) & (det != 1)
    deep = cv2.distanceTransform((gt > 0).astype(np.uint8), cv2.DIST_L2, 5) > 2.5
    return {
        "iou": ious,
        "bg": int(written.sum()),
        "bg_on_objects": int((written & (gt > 0)).sum()),
        "bg_deep": int((written & deep).sum()),
        "unlabelled": int((seg == 0).sum()),
        "pixels": int(seg.size),
    }


def summarise(rows: list[dict]) -> str:
    iou = np.concatenate([r["iou"] for r in rows]) if rows else np.zeros(0)
    bg = sum(r["bg"] for r in rows)
    on = sum(r["bg_on_objects"] for r in rows)
    deep = sum(r.get("bg_deep", 0) for r in rows)
    px = sum(r["pixels"] for r in rows)
    unl = sum(r["unlabelled"] for r in rows)
    return (
        f"objects {len(iou):5d}  IoU mean {iou.mean():.3f} median {np.median(iou):.3f} "
        f"p10 {np.percentile(iou, 10):.3f}  bg written {bg / max(1, len(rows)):6.0f} px/image "
        f"({bg / px:5.1%}), "
        f"{on / max(1, bg):6.1%} on objects ({deep / max(1, bg):5.1%} > 2.5 px inside)  "
        f"unlabelled {unl / px:6.1%}"
    )


def load_refine(module: str | None):
    if module is None:
        from napari_lazylabels.core.grabcut import refine

        return refine
    spec = importlib.util.spec_from_file_location("grabcut_alt", module)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["grabcut_alt"] = mod
    spec.loader.exec_module(mod)
    return mod.refine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", help="the development data folder (default: $LAZYLABELS_SHARED_DATA or "
                    "../shared/data)")
    ap.add_argument("--sets", nargs="+", default=["isbi", "dsb"], choices=sorted(FOLDERS))
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=SCOPES)
    ap.add_argument("--images", type=int, default=10, help="first N images of each set (0 = all)")
    ap.add_argument("--module", default=None, help="another grabcut.py to measure")
    ap.add_argument("--json", default=None, help="write the per-image figures here")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    refine = load_refine(a.module)
    record: dict = {}
    for name in a.sets:
        folder = Path(a.shared or shared_data()) / FOLDERS[name]
        paths = sorted((folder / "images").glob("*.png"))
        if a.images:
            paths = paths[: a.images]
        if not paths:
            sys.exit(f"no images in {folder / 'images'}: pass --shared DIR")
        for scheme in a.schemes:
            rows: dict[str, list[dict]] = {s: [] for s in a.scopes}
            secs = 0.0
            for p in paths:
                img, gt = read_image(p), read_label(folder / "masks" / p.name).astype(np.int32)
                det = marks(gt, scheme, p.stem)
                for scope in a.scopes:
                    t = time.perf_counter()
                    if scope == "all":
                        seg = refine(img, det)
                    else:
                        whole = (slice(0, gt.shape[0]), slice(0, gt.shape[1]))
                        seg = refine(img, det, region=whole, existing=np.zeros(gt.shape, np.uint8))
                    secs += time.perf_counter() - t
                    rows[scope].append(evaluate(seg, det, gt) | {"image": p.stem})
            for scope in a.scopes:
                print(f"{name:4s} {scheme:8s} {scope:4s} {summarise(rows[scope])}", flush=True)
            print(f"{name:4s} {scheme:8s} {len(paths)} images, {secs:.1f} s", flush=True)
            record[f"{name}/{scheme}"] = {
                s: [r | {"iou": [float(x) for x in r["iou"]]} for r in rows[s]] for s in a.scopes
            }
    if a.json:
        Path(a.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
