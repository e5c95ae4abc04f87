"""Does the Predict widget freeze the viewer? And how many orientations do large images need?

``gaps``: opens a napari viewer (run it under Xvfb), docks the Predict widget (the plugin's
load: its warm-up happens here), adds a SIDE x SIDE image made of real images (ISBI 2012
slices from ``../shared/data``, mirrored into a mosaic; or ``--synthetic``), then starts a
10 ms ``QTimer`` on the main thread and presses Predict (the first one of the session).
It records the gap between consecutive ticks and the widget's status at each tick, until
the worker has finished and 2 s more (the layers drawn). Prints one JSON line: longest gap,
the status before and after it, p99, median, seconds to predict, the process's peak memory
(VmHWM), the final status. ``--stop-after S`` presses Stop S seconds after Predict and
reports how long the worker took to end. ``--repeat`` presses Predict a second time (layers
updated in place) and reports that run's gaps too.

    xvfb-run -a python benchmarks/viewer_freezes_predict.py gaps runs/isbi-model --side 2048
    xvfb-run -a python benchmarks/viewer_freezes_predict.py gaps runs/isbi-model --side 4096 --stop-after 20

The script drives only what the widget had before this benchmark existed (``run``, ``stop``,
``is_running``, ``status``, ``tta``, ``model_dir``, ``set_chosen``), so it also measures an
older checkout: ``PYTHONPATH=/tmp/old/src xvfb-run -a python benchmarks/viewer_freezes_predict.py ...``.

``floor``: napari alone, without the plugin (no widget of it imported): the same viewer and
image, then the same 10 ms timer while napari adds the four kinds of layer a first Predict
adds (two Labels, two Image), one every 0.5 s, each as one pixel and then as SIDE x SIDE,
and opens a PNG through ``viewer.open`` (File > Open's path). Prints the gap each of them
causes: what a new layer costs napari itself on this machine, the floor under the
first Predict's gaps.

    xvfb-run -a python benchmarks/viewer_freezes_predict.py floor --side 2048 --rounds 3

``orientations``: predicts a large mosaic of held-out real images (ISBI slices the model was
not trained on, or any ``--images`` folder with ``masks/``) in 1, 2 and 4 orientations and
prints foreground dice, object F1 and seconds for each (headless, no viewer):

    python benchmarks/viewer_freezes_predict.py orientations runs/isbi-model --first 12
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from _common import FOLDERS, shared_data
from napari_lazylabels.core.options import TTA_CHOICES

SHARED = shared_data(required=False)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mosaic(folder: Path, side: int, first: int = 0, masks: bool = False) -> np.ndarray:
    """A ``side x side`` mosaic of the images (or masks, relabelled per tile) of ``folder``
    from the ``first``-th on, every other tile mirrored, so that no seam is a straight copy."""
    from napari_lazylabels.core.io import read_image

    sub = "masks" if masks else "images"
    paths = sorted((folder / sub).glob("*.png"))[first:]
    if not paths:
        raise SystemExit(f"No images in {folder / sub}: give --images FOLDER or --synthetic.")
    tiles = [np.asarray(read_image(p)) for p in paths]
    th, tw = tiles[0].shape[:2]
    out = np.zeros((side, side), np.int32 if masks else tiles[0].dtype)
    k = offset = 0
    for y in range(0, side, th):
        for x in range(0, side, tw):
            t = tiles[k % len(tiles)]
            if (k // len(tiles)) % 2:
                t = t[:, ::-1]
            t = t[: side - y, : side - x]
            if masks:
                t = np.where(t > 0, t.astype(np.int32) + offset, 0)
                offset = int(t.max(initial=offset))
            out[y : y + t.shape[0], x : x + t.shape[1]] = t
            k += 1
    return out


def idle_gaps(app, seconds: float) -> dict:
    """Gaps between 10 ms ticks of a QTimer for ``seconds`` with the viewer idle."""
    from qtpy.QtCore import QTimer

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)
    timer.stop()
    gaps = np.diff(ticks) * 1000
    return {"seconds": seconds, "longest_gap_ms": round(float(gaps.max()), 1), "p99_ms": round(float(np.percentile(gaps, 99)), 1),
            "gaps_over_100ms": int((gaps > 100).sum()), "ticks": len(ticks)}


def cmd_gaps(a: argparse.Namespace) -> dict:
    import napari
    from napari.qt import get_qapp
    from qtpy.QtCore import QTimer

    from napari_lazylabels._widgets.predict import PredictWidget

    app = get_qapp()
    if a.synthetic:
        rng = np.random.default_rng(0)
        image = (rng.random((a.side, a.side)) * 255).astype(np.uint8)
    else:
        image = mosaic(Path(a.images), a.side, a.first)
    viewer = napari.Viewer(show=True)
    t0 = time.perf_counter()
    pw = PredictWidget(viewer)  # the plugin's load
    viewer.window.add_dock_widget(pw, name="Predict", area="right")
    load_s = time.perf_counter() - t0
    viewer.add_image(image, name="big")
    pw.model_dir.setText(str(a.model))
    if a.tta is not None:
        pw.tta.setCurrentIndex([pw.tta.itemText(i).split()[0] for i in range(pw.tta.count())].index(str(a.tta)))
    pw.set_chosen(["big"])
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)

    def one_run(stop_after: float | None) -> dict:
        ticks: list[tuple[float, str]] = []
        collections: list[tuple[int, float]] = []  # (generation, seconds) of each garbage collection
        gc_start = [0.0]

        def on_gc(phase, info):
            if phase == "start":
                gc_start[0] = time.perf_counter()
            else:
                collections.append((info["generation"], time.perf_counter() - gc_start[0]))

        gc.callbacks.append(on_gc)
        timer = QTimer()
        timer.setInterval(10)
        timer.timeout.connect(lambda: ticks.append((time.perf_counter(), pw.status.text())))
        timer.start()
        start = time.perf_counter()
        pw.run()
        stopped_at = ended = None
        while pw.is_running() or (ended is not None and time.perf_counter() - ended < 2.0):
            app.processEvents()
            time.sleep(0.002)
            now = time.perf_counter()
            if stop_after is not None and stopped_at is None and now - start >= stop_after:
                stopped_at = now
                pw.stop()
            if ended is None and not pw.is_running():
                ended = now
            if now - start > a.timeout:
                raise SystemExit("timed out")
        if ended is None:
            ended = time.perf_counter()
        timer.stop()
        gc.callbacks.remove(on_gc)
        full = [d for g, d in collections if g == 2]
        t = np.array([x[0] for x in ticks])
        gaps = np.diff(t) * 1000
        i = int(np.argmax(gaps)) if len(gaps) else 0
        row = {
            "seconds": round(ended - start, 1),
            "longest_gap_ms": round(float(gaps.max()), 1) if len(gaps) else None,
            "before_gap": ticks[i][1] if ticks else None,
            "after_gap": ticks[i + 1][1] if len(ticks) > i + 1 else None,
            "p99_ms": round(float(np.percentile(gaps, 99)), 1) if len(gaps) else None,
            "median_ms": round(float(np.median(gaps)), 1) if len(gaps) else None,
            "ticks": len(ticks),
            "gaps_over_100ms": int((gaps > 100).sum()),
            "status": pw.status.text(),
            "gc_full_collections": len(full),
            "gc_full_max_ms": round(1000 * max(full, default=0.0), 1),
        }
        worst = sorted(range(len(gaps)), key=lambda j: -gaps[j])[:5]
        row["worst"] = [(round(float(gaps[j]), 1), ticks[j][1]) for j in sorted(worst)]
        if stopped_at is not None:
            row["stop_to_end_s"] = round(ended - stopped_at, 2)
        return row

    out = {"side": a.side, "model": str(a.model), "cpus": os.cpu_count(), "plugin_load_s": round(load_s, 2),
           "load_average": os.getloadavg()[0]}
    if a.idle:  # the same timer with nothing running: what the machine's load alone gives
        out["idle"] = idle_gaps(app, a.idle)
    out["first"] = one_run(a.stop_after)
    if a.repeat:
        layers = {ly.name: ly for ly in viewer.layers}
        out["second"] = one_run(None)
        out["second"]["same_layer_objects"] = all(viewer.layers[n] is ly for n, ly in layers.items() if n in viewer.layers)
    out["peak_rss_mb"] = round(peak_rss_mb())
    out["layers"] = [ly.name for ly in viewer.layers]
    viewer.close()
    return out


def cmd_floor(a: argparse.Namespace) -> dict:
    import tempfile

    import napari
    from napari.layers import Layer
    from napari.qt import get_qapp
    from qtpy.QtCore import QTimer
    from skimage.io import imsave

    widgets = "napari_lazylabels._widgets"
    assert not any(m.startswith(widgets) for m in sys.modules), "the floor is napari's alone"
    app = get_qapp()
    image = mosaic(Path(a.images), a.side, a.first) if not a.synthetic else np.zeros((a.side, a.side), np.uint8)
    viewer = napari.Viewer(show=True)
    viewer.add_image(image, name="big")
    viewer.add_labels(np.zeros((1, 1), np.int32), name="warm-up")  # the first Labels layer's one-off cost
    png = Path(tempfile.mkdtemp()) / "slice.png"
    imsave(png, image[:512, :512], check_contrast=False)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))

    def spin(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)

    def gap_of(action) -> float:
        """The longest tick gap around ``action`` (run from a zero-delay timer, as the widget's
        pushes are), ms."""
        spin(0.3)
        start = len(ticks)
        QTimer.singleShot(0, action)
        spin(0.5)
        return round(float(np.diff(ticks[max(0, start - 1):]).max() * 1000), 1)

    def add(shape, dtype, name: str, kind: str) -> None:
        """What the widget's push does for a new layer: the layer model, then napari adds it."""
        viewer.add_layer(Layer.create(np.zeros(shape, dtype), {"name": name, "opacity": 0.5}, kind))

    kinds = [("labels", np.int32), ("labels", np.int32), ("image", np.float32), ("image", np.float32)]
    rows = []
    timer.start()
    spin(1.0)
    for r in range(a.rounds):
        for full in (False, True):
            for k, (kind, dtype) in enumerate(kinds):
                shape = (a.side, a.side) if full else (1, 1)
                name = f"r{r} {'full' if full else 'pixel'} {kind} {k}"
                gap = gap_of(partial(add, shape, dtype, name, kind))
                rows.append({"round": r, "what": f"new {kind} layer, {shape[0]}x{shape[1]}", "gap_ms": gap})
        rows.append({"round": r, "what": "viewer.open(512x512 PNG)", "gap_ms": gap_of(lambda: viewer.open(png))})
    timer.stop()
    assert not any(m.startswith(widgets) for m in sys.modules), "the floor is napari's alone"
    viewer.close()
    by: dict[str, list[float]] = {}
    for row in rows:
        by.setdefault(row["what"], []).append(row["gap_ms"])
    summary = {w: {"min_ms": min(g), "median_ms": float(np.median(g)), "max_ms": max(g), "n": len(g),
                   "over_100ms": sum(x > 100 for x in g)} for w, g in by.items()}
    return {"side": a.side, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "napari": napari.__version__,
            "summary": summary, "rows": rows}


def cmd_orientations(a: argparse.Namespace) -> list[dict]:
    import torch

    from napari_lazylabels.core.checkpoint import load_model
    from napari_lazylabels.core.metrics import dice, object_f1
    from napari_lazylabels.core.predict import PredictConfig, Predictor

    torch.set_num_threads(a.threads)
    folder = Path(a.images)
    image = mosaic(folder, a.side, a.first)
    gt = mosaic(folder, a.side, a.first, masks=True)
    model, ck = load_model(a.model, "cpu")
    rows = []
    for tta in (int(t) for t in a.tta_list.split(",")):
        predictor = Predictor(model, ck.model_config, PredictConfig(device="cpu", tta=tta, large_image_tta=None))
        t0 = time.perf_counter()
        pred = predictor.predict(image)
        seconds = time.perf_counter() - t0
        row = {"side": a.side, "tta": tta, "seconds": round(seconds, 1),
               "mp_per_s": round(a.side * a.side / 1e6 / seconds, 3),
               "dice": round(dice(pred.classes > 0, gt > 0), 4),
               "object_f1": round(object_f1(pred.instances, gt)["f1"], 4)}
        print(json.dumps(row), flush=True)  # noqa: T201 - the benchmark's output
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gaps", help="main-thread gaps while the Predict widget predicts")
    o = sub.add_parser("orientations", help="accuracy and time of 1, 2, 4 orientations on a large mosaic")
    f = sub.add_parser("floor", help="the gaps napari itself causes adding new layers (no plugin)")
    f.add_argument("--side", type=int, default=2048)
    f.add_argument("--images", default=str(SHARED / FOLDERS["isbi"]), help="folder with images/")
    f.add_argument("--first", type=int, default=12)
    f.add_argument("--synthetic", action="store_true", help="a blank image instead of real ones")
    f.add_argument("--rounds", type=int, default=3)
    for p in (g, o):
        p.add_argument("model", type=Path, help="model folder (lazylabels train --out)")
        p.add_argument("--side", type=int, default=2048)
        p.add_argument("--images", default=str(SHARED / FOLDERS["isbi"]), help="folder with images/ (and masks/)")
        p.add_argument("--first", type=int, default=12, help="mosaic from the FIRST-th image on (held-out slices)")
    g.add_argument("--synthetic", action="store_true", help="a random uint8 image instead of real ones")
    g.add_argument("--tta", type=int, choices=TTA_CHOICES, help="orientations (default: the widget's)")
    g.add_argument("--stop-after", type=float, help="press Stop this many seconds after Predict")
    g.add_argument("--repeat", action="store_true", help="predict a second time (layers updated in place)")
    g.add_argument("--timeout", type=float, default=900.0)
    g.add_argument("--idle", type=float, default=0.0, help="first measure the gaps this many seconds idle")
    o.add_argument("--tta-list", default="1,2,4")
    o.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    a = ap.parse_args(argv)
    if a.cmd == "gaps":
        print(json.dumps(cmd_gaps(a)), flush=True)  # noqa: T201 - the benchmark's output
    elif a.cmd == "floor":
        print(json.dumps(cmd_floor(a)), flush=True)  # noqa: T201 - the benchmark's output
    else:
        cmd_orientations(a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
