"""Does the width of a predicted interface band lower the interface precision? (not a test)

A diagnostic of the separation metric on the DSB validation images: with perfect instances
(the ground truth itself) and the ground-truth interfaces dilated by 0..N px as the predicted
interface map, the product's :func:`~napari_lazylabels.core.predict.separating_interfaces` and
:func:`~napari_lazylabels.core.metrics.interface_scores` (2 px tolerance) give the precision a
band of that width can reach at best. If it stays near 1, low precision of a trained net comes
from interface pixels where the ground truth has no touching pair, not from thick bands.

    python benchmarks/interface_width.py --max-dilation 3
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
from scipy import ndimage

import accuracy  # the splits
from _common import FOLDERS, shared_data
from napari_lazylabels.core import io
from napari_lazylabels.core.metrics import interface_scores
from napari_lazylabels.core.predict import separating_interfaces
from napari_lazylabels.core.simulate import interface_mask

log = logging.getLogger("interface_width")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=accuracy.DATASETS, default="dsb")
    ap.add_argument("--max-dilation", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = shared_data()
    _, val = accuracy.split(args.dataset, root)
    masks = root / FOLDERS[args.dataset] / "masks"
    gts = [io.read_label(next(masks.glob(f"{stem}.*"))) for stem in val]
    for r in range(args.max_dilation + 1):
        precisions = []
        for gt in gts:
            band = interface_mask(gt, 2)
            if r:
                band = ndimage.binary_dilation(band, iterations=r)
            s = interface_scores(separating_interfaces(band.astype(float), gt, 0.5), gt, gt)
            if not np.isnan(s["precision"]):
                precisions.append(s["precision"])
        log.info("%s: ground-truth interfaces dilated %d px (band ~%d px): precision %.3f over %d images",
                 args.dataset, r, 2 * r + 2, float(np.mean(precisions)), len(precisions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
