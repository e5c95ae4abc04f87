"""Rebuild the bundled sample data from ../shared/data (CC0/BSD images only).

    python tools/make_sample_data.py [--shared ../shared/data]

Writes src/napari_lazylabels/sample_data/{dataset,test}: the StarDist nuclei image and a few
gray DSB 2018 nuclei images with lazy labels simulated from their ground truth (seed 0, one
exact mask), and two held-out DSB images with their instance masks for the demo's scores.
"""

import argparse
import shutil
from pathlib import Path

import numpy as np

from napari_lazylabels.core.io import (
    LazyDataset,
    Sample,
    read_image,
    read_label,
    save_dataset,
    write_image,
    write_label,
)
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.simulate import SimulationConfig, simulate_sample

TRAIN_DSB = ["0287e7ee5b", "04acab7636", "12f89395ad", "06c779330d"]
TEST_DSB = ["1023509cf8", "0bda515e37"]
STRONG = "0287e7ee5b"


def _gray(img):
    return img[..., 0] if img.ndim == 3 and np.array_equal(img[..., 0], img[..., 2]) else img


def _find(folder, prefix):
    (p,) = sorted((folder / "images").glob(prefix + "*.png"))
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    a = ap.parse_args()
    shared = Path(a.shared)
    out = Path(__file__).resolve().parents[1] / "src" / "napari_lazylabels" / "sample_data"
    for sub in ("dataset", "test"):
        shutil.rmtree(out / sub, ignore_errors=True)
    rng = np.random.default_rng(0)
    cfg = SimulationConfig()
    samples = []
    sd = shared / "stardist-nuclei"
    items = [("stardist_nuclei", sd / "images" / "img2d.png", sd / "masks" / "img2d.png")]
    if not items[0][1].exists():
        (img_p,) = sorted((sd / "images").glob("*.png"))
        items = [("stardist_nuclei", img_p, sd / "masks" / img_p.name)]
    dsb = shared / "dsb2018-touching-dev"
    for pre in TRAIN_DSB:
        p = _find(dsb, pre)
        items.append((f"dsb_{pre}", p, dsb / "masks" / p.name))
    for name, ip, mp in items:
        inst = read_label(mp)
        labels = simulate_sample(inst, rng, cfg, strong=name.endswith(STRONG))
        samples.append(Sample(name, _gray(read_image(ip)), **labels))
    save_dataset(LazyDataset(ClassSpec(("background", "nucleus"), ("#000000", "#ff00ff")), samples), out / "dataset")
    for pre in TEST_DSB:
        p = _find(dsb, pre)
        write_image(out / "test" / "images" / f"dsb_{pre}.png", _gray(read_image(p)))
        write_label(out / "test" / "masks" / f"dsb_{pre}.png", read_label(dsb / "masks" / p.name))


if __name__ == "__main__":
    main()
