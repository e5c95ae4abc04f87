"""GrabCut refinement quality and speed on real nuclei (not a test).

    OMP_NUM_THREADS=1 python benchmarks/grabcut_quality.py [--shared ../shared/data] [--shrink 0.3]

For every DSB 2018 touching-nuclei image: detection marks = each nucleus shrunk by ``shrink``
of its largest inner distance (background left unmarked), refined with
``core.grabcut.refine``; prints the foreground dice of the marks and of the refined masks
against the ground truth, and the time per image.
"""

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from napari_lazylabels.core.grabcut import refine
from napari_lazylabels.core.io import read_image, read_label


def marks_from(gt: np.ndarray, shrink: float) -> np.ndarray:
    det = np.zeros(gt.shape, np.uint8)
    for i, sl in enumerate(ndimage.find_objects(gt), start=1):
        if sl is None:
            continue
        obj = gt[sl] == i
        dist = ndimage.distance_transform_edt(obj)
        det[sl][dist > shrink * dist.max()] = 2
    return det


def dice(a, b):
    return 2 * (a & b).sum() / max(1, a.sum() + b.sum())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--shrink", type=float, default=0.3)
    a = ap.parse_args()
    folder = Path(a.shared) / "dsb2018-touching-dev"
    d_marks, d_refined, secs, n_obj = [], [], [], 0
    for p in sorted((folder / "images").glob("*.png")):
        gt = read_label(folder / "masks" / p.name)
        det = marks_from(gt, a.shrink)
        t = time.perf_counter()
        seg = refine(read_image(p), det)
        secs.append(time.perf_counter() - t)
        n_obj += int(gt.max())
        truth = gt > 0
        d_marks.append(dice(det == 2, truth))
        d_refined.append(dice(seg == 2, truth))
    print(f"{len(secs)} DSB images, {n_obj} nuclei, marks shrunk by {a.shrink:.0%} of the inner distance")
    print(f"dice of the marks   {np.mean(d_marks):.3f}")
    print(f"dice after GrabCut  {np.mean(d_refined):.3f} (worst image {np.min(d_refined):.3f})")
    print(f"seconds per image   median {np.median(secs):.2f}, max {np.max(secs):.2f}, total {np.sum(secs):.1f}")


if __name__ == "__main__":
    main()
