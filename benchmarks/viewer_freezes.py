"""Viewer freezes on the training path: the first Start and the event loop while training.

A 10 ms ``QTimer`` on the Qt main thread records the time of every tick; a gap between two
ticks longer than 10 ms is time the event loop could not run (a frozen viewer). The script
opens a project in a shown viewer (under Xvfb when there is no display), docks the Train (or
one-click) widget the way the Plugins menu does, waits ``--settle`` seconds as a user would
before clicking, then presses Start from the event loop and reports:

* ``dock``: the time docking the widget took and the longest gap from docking to the click
  (the widget's background warm-up runs then);
* ``start``: the longest gap from the click until the first training step (it contains the
  click handler itself: dataset assembly, imports, worker creation);
* ``start_call``: the time the Start slot itself took on the main thread;
* ``training``: median, p99 and longest gap, and gaps over 100 ms, during ``--seconds`` of
  training after the first step.

Run it in a fresh process (the first Start is only first once)::

    python benchmarks/viewer_freezes.py --widget train --seconds 20
    python benchmarks/viewer_freezes.py --widget oneclick --seconds 20 --data synthetic

Data: ``isbi`` simulates lazy labels on three ISBI 2012 slices from ``../shared/data`` (one
with an exact mask) in a temporary folder (nothing is copied into the repository); without
the shared data, or with ``--data synthetic``, a 512 x 512 synthetic image with disks.
Figures go to docs/benchmarks.md ("Viewer freezes while training").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import FOLDERS, shared_data

SHARED = shared_data(required=False)


def _synthetic(n: int = 2, size: int = 512):
    from napari_lazylabels.core.io import Sample

    out = []
    for k in range(n):
        rng = np.random.default_rng(k)
        img = rng.normal(40, 8, (size, size))
        det = np.zeros((size, size), np.uint8)
        seg = np.ones((size, size), np.uint8)
        yy, xx = np.mgrid[:size, :size]
        for cy, cx in rng.integers(30, size - 30, (40, 2)):
            disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= 15**2
            img[disk] += 120
            seg[disk] = 2
            det[(yy - cy) ** 2 + (xx - cx) ** 2 <= 4**2] = 2
        det[5:9, 5:300] = 1
        img = np.clip(img, 0, 255).astype(np.uint8)
        out.append(Sample(name=f"syn_{k}", image=img, detection=det, segmentation=seg if k == 0 else None))
    return out


def _isbi(n: int = 3):
    from skimage.io import imread

    from napari_lazylabels.core.io import Sample
    from napari_lazylabels.core.simulate import simulate_sample

    src = SHARED / FOLDERS["isbi"]
    stems = sorted(p.stem for p in (src / "images").glob("*.png"))[:n]
    out = []
    for k, stem in enumerate(stems):
        image = imread(src / "images" / f"{stem}.png")
        labels = simulate_sample(imread(src / "masks" / f"{stem}.png"), np.random.default_rng(k), strong=k == 0)
        out.append(Sample(name=stem, image=image, **labels))
    return out


def make_project(folder: Path, data: str) -> tuple[Path, str]:
    from napari_lazylabels.core.io import LazyDataset, save_dataset
    from napari_lazylabels.core.labels import ClassSpec

    if data == "isbi" and not (SHARED / FOLDERS["isbi"]).is_dir():
        data = "synthetic"
    samples = _isbi() if data == "isbi" else _synthetic()
    ds = LazyDataset(classes=ClassSpec(names=("background", "cell")), samples=samples)
    return save_dataset(ds, folder / "project"), data


class GapRecorder:
    """Times of the ticks of a 10 ms QTimer on the main thread."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.clear()
        self.timer.start()

    def gaps_between(self, t0: float, t1: float) -> np.ndarray:
        t = np.array([x for x in self.ticks if t0 <= x <= t1])
        return np.diff(t) * 1000 if len(t) > 1 else np.zeros(0)


def run(args) -> dict:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    tmp = Path(tempfile.mkdtemp(prefix="freeze-bench-"))
    project, data = make_project(tmp, args.data)
    viewer = napari.Viewer(show=True)
    viewer.open(str(project), plugin="napari-lazylabels")
    app = QApplication.instance()
    for _ in range(50):  # let the viewer draw before measuring
        app.processEvents()
        time.sleep(0.01)
    rec = GapRecorder()
    rec.start()
    marks: dict[str, float] = {}
    QTimer.singleShot(50, lambda: marks.setdefault("dock", time.perf_counter()))
    while "dock" not in marks:
        app.processEvents()
        time.sleep(0.002)
    name = "Train & predict (one click)" if args.widget == "oneclick" else "Train"
    _, widget = viewer.window.add_plugin_dock_widget("napari-lazylabels", name)
    marks["docked"] = time.perf_counter()
    trainer = widget.trainer if args.widget == "oneclick" else widget
    trainer.device.setCurrentText("cpu")
    trainer.budget_kind.setCurrentText("seconds")
    trainer.budget.setValue(int(args.seconds) + 30)  # Stop ends it, the budget never does
    trainer.preview.setChecked(args.preview and args.widget == "train")
    trainer.model_dir.setText(str(tmp / "model"))
    if args.widget == "oneclick":
        trainer.predict_after = False  # prediction is the Predict widget's benchmark

    t_end = time.perf_counter() + args.settle
    while time.perf_counter() < t_end:
        app.processEvents()
        time.sleep(0.002)

    def click():
        marks["click"] = time.perf_counter()
        (widget.run if args.widget == "oneclick" else trainer.start)()
        marks["click_done"] = time.perf_counter()

    QTimer.singleShot(0, click)

    def wait(cond, timeout):
        end = time.perf_counter() + timeout
        while not cond() and time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.002)
        return cond()

    if not wait(lambda: trainer.last_event is not None and trainer.last_event.kind == "step", 300):
        raise RuntimeError(f"no training step: {trainer.status.text()}")
    marks["first_step"] = time.perf_counter()
    # a brush dab every 0.5 s: the time of Labels.paint on the main thread while training
    det = viewer.layers["detection"]
    shape = det.data.shape
    dabs: list[float] = []
    end = time.perf_counter() + args.seconds
    k = 0
    while time.perf_counter() < end:
        wait(lambda: False, 0.5)
        k += 1
        coord = (0,) * (len(shape) - 2) + (20 + (7 * k) % (shape[-2] - 40), 20 + (13 * k) % (shape[-1] - 40))
        t = time.perf_counter()
        det.paint(coord, 2, refresh=True)
        dabs.append(time.perf_counter() - t)
    marks["stop"] = time.perf_counter()
    steps = trainer.last_event.iteration  # a new model: its iteration is the steps done
    trainer.stop()
    wait(lambda: not trainer.is_running(), 300)
    marks["idle"] = time.perf_counter()
    rec.timer.stop()
    idle_dabs = []
    for k in range(6):
        wait(lambda: False, 0.2)
        t = time.perf_counter()
        det.paint((0,) * (len(shape) - 2) + (30 + 5 * k, 30), 2, refresh=True)
        idle_dabs.append(time.perf_counter() - t)

    dock_gaps = rec.gaps_between(marks["dock"] - 0.05, marks["click"])
    start_gaps = rec.gaps_between(marks["click"] - 0.05, marks["first_step"])
    train_gaps = rec.gaps_between(marks["first_step"], marks["stop"])
    stop_gaps = rec.gaps_between(marks["stop"], marks["idle"])
    cfg = trainer.train_config()
    out = {
        "widget": args.widget,
        "data": data,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": cfg.num_threads,
        "dock_call_ms": round((marks["docked"] - marks["dock"]) * 1000, 1),
        "dock_to_click_longest_gap_ms": round(float(dock_gaps.max(initial=0)), 1),
        "settle_s": args.settle,
        "start_call_ms": round((marks["click_done"] - marks["click"]) * 1000, 1),
        "start_longest_gap_ms": round(float(start_gaps.max(initial=0)), 1),
        "click_to_first_step_s": round(marks["first_step"] - marks["click"], 2),
        "training_s": args.seconds,
        "steps": steps,
        "training_median_gap_ms": round(float(np.median(train_gaps)), 1) if len(train_gaps) else None,
        "training_p99_gap_ms": round(float(np.percentile(train_gaps, 99)), 1) if len(train_gaps) else None,
        "training_longest_gap_ms": round(float(train_gaps.max(initial=0)), 1),
        "training_gaps_over_100ms": int((train_gaps > 100).sum()),
        "brush_dab_median_ms": round(float(np.median(dabs)) * 1000, 1) if dabs else None,
        "brush_dab_idle_median_ms": round(float(np.median(idle_dabs)) * 1000, 1),
        "preview": bool(trainer.preview.isChecked()),
        "stop_longest_gap_ms": round(float(stop_gaps.max(initial=0)), 1),
        "status": trainer.status.text()[:160],
    }
    viewer.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widget", choices=("train", "oneclick"), default="train")
    p.add_argument("--seconds", type=float, default=20.0, help="training time measured after the first step")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between docking the widget and Start")
    p.add_argument("--data", choices=("isbi", "synthetic"), default="isbi")
    p.add_argument("--preview", action="store_true", help="the Train widget's preview at each new best model")
    p.add_argument("--out", help="append the JSON line to this file")
    args = p.parse_args(argv)
    if not os.environ.get("DISPLAY") and sys.platform.startswith("linux"):
        from pyvirtualdisplay import Display  # pytest-xvfb's dependency

        Display(visible=False, size=(1280, 1024)).start()
    result = run(args)
    line = json.dumps(result)
    sys.stdout.write(line + "\n")
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
