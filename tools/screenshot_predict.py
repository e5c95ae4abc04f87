"""Make ``docs/images/predict.png``: the bundled sample, predicted with the Predict widget.

Trains a default ("auto": ``tiny`` on a CPU) model on the bundled sample's lazy labels for
``--seconds``, opens the sample in napari with the Predict widget docked, predicts, and saves
a screenshot of the whole window. Needs a display: run it under Xvfb.

    xvfb-run -s "-screen 0 1600x1000x24" python tools/screenshot_predict.py --seconds 45
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("screenshot")


def _wait(app, busy, timeout: float) -> None:
    t0 = time.monotonic()
    while busy():
        app.processEvents()
        time.sleep(0.05)
        if time.monotonic() - t0 > timeout:
            raise TimeoutError("the widget did not finish in time")
    for _ in range(20):  # let the layers draw
        app.processEvents()
        time.sleep(0.05)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=45.0, help="training time")
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "predict.png"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import napari
    from napari.qt import get_qapp

    from napari_lazylabels._widgets.predict import PredictWidget
    from napari_lazylabels.core.io import load_dataset
    from napari_lazylabels.core.model import resolve_device
    from napari_lazylabels.core.train import TrainConfig, fit, infer_model_config
    from napari_lazylabels.sample_data import sample_paths

    dataset_dir = sample_paths()["dataset"]
    ds = load_dataset(dataset_dir)
    model_dir = Path(tempfile.mkdtemp(prefix="lazylabels-shot-")) / "model"
    cfg = infer_model_config(ds, resolve_device("auto"))
    fit(ds, model_dir, cfg, TrainConfig(iterations=None, time_budget=args.seconds))

    app = get_qapp()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 950)
    viewer.open(str(dataset_dir), plugin="napari-lazylabels")
    pw = PredictWidget(viewer)
    viewer.window.add_dock_widget(pw, name="Predict", area="right")
    pw.model_dir.setText(str(model_dir))
    image = "images 256x256"  # the DSB stack of the sample
    pw.set_chosen([image])
    pw.run()
    _wait(app, pw.is_running, 600)
    log.info("layers: %s; status: %s", [ly.name for ly in viewer.layers], pw.status.text())
    for layer in viewer.layers:  # the image and its instances
        layer.visible = layer.name in (image, f"{image} instances")
    viewer.layers.selection.active = viewer.layers[f"{image} instances"]
    _wait(app, lambda: False, 5)
    viewer.screenshot(args.out, canvas_only=False)
    log.info("wrote %s", args.out)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
