"""Fault injection: random kills during train, simulate, predict and dataset saves (issue 24).

Each round picks one writing operation, starts it as a real ``lazylabels`` process, waits until
it holds its output folder's lock (it is working, not importing), kills it after a random
delay (SIGKILL, or SIGTERM one time in four; a training only once it has written its first
``latest.pt``, so that kills land among its per-step saves) and then checks:

* no annotation lost: every file of a dataset with hand annotations (other class names, a
  hand-drawn detection map) is byte-identical, except the one map the killed save was asked
  to rewrite, which is either the old or the new file and reads as a label map; a
  ``simulate`` onto that dataset without ``--overwrite`` is refused;
* no model lost: ``best.pt`` and ``latest.pt`` load (weights checksum included), ``latest.pt``
  never goes back in iterations, ``history.json`` repeats no step;
* no stale file: a SIGTERM leaves no temporary or lock file at once; after a SIGKILL the
  same operation runs again to its end (in this process) and then no ``*.tmp`` file and no
  lock file is left in any folder.

    python benchmarks/fault_injection.py --rounds 20 --seed 0

Writes ``benchmarks/results/fault_injection/<date>.json``; exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import RESULTS
from napari_lazylabels.cli import main
from napari_lazylabels.core.checkpoint import load_checkpoint, read_history
from napari_lazylabels.core.io import load_dataset, read_label, write_image, write_label
from napari_lazylabels.core.runfolder import LOCK_NAME

TINY = ["--size", "tiny", "--batch-size", "2", "--patch-size", "64", "--threads", "1", "--device", "cpu"]
CHILD = (
    "import functools, sys\n"
    "from napari_lazylabels.core import outputs, predict as P\n"
    "P.predict_file = outputs.predict_file = functools.partial(outputs.predict_file, large_pixels=1)  # memory-mapped maps\n"
    "from napari_lazylabels.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def make_data(root: Path, n: int = 4, size=(128, 128)) -> Path:
    from skimage.draw import disk

    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.normal(30, 5, size)
        gt = np.zeros(size, np.uint16)
        for k in range(6):
            rr, cc = disk((rng.integers(14, size[0] - 14), rng.integers(14, size[1] - 14)), 10, shape=size)
            img[rr, cc] += 120
            gt[rr, cc] = k + 1
        write_image(root / "gt" / "images" / f"im{i}.png", np.clip(img, 0, 255).astype(np.uint8))
        write_label(root / "gt" / "masks" / f"im{i}.png", gt)
    write_image(root / "big.png", rng.integers(0, 255, (768, 768), dtype=np.uint8))
    return root / "gt"


def digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file (of JSON files, of their content: a rewrite may indent them)."""
    def content(p: Path) -> bytes:
        if p.suffix == ".json":
            return json.dumps(json.loads(p.read_text()), sort_keys=True).encode()
        return p.read_bytes()

    return {
        str(p.relative_to(folder)): hashlib.sha256(content(p)).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")
    }


def quiet_main(args: list[str]) -> int:
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        return main(args)


def stale(folder: Path) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name == LOCK_NAME]


def run_killed(args: list[str], lock_dir: Path, rng: np.random.Generator, max_delay: float,
               ready=None) -> dict:
    """Start the CLI, wait for its lock (and ``ready()``), kill it after a random delay; what
    happened."""
    p = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while p.poll() is None and time.monotonic() - t0 < 120 and not (
        (lock_dir / LOCK_NAME).exists() and (ready is None or ready())
    ):
        time.sleep(0.01)
    delay = float(rng.uniform(0, max_delay))
    time.sleep(delay)
    sig = signal.SIGTERM if rng.random() < 0.25 else signal.SIGKILL
    alive = p.poll() is None
    if alive:
        p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    return {"signal": sig.name, "delay_s": round(delay, 2), "killed_while_working": alive,
            "rc": p.returncode, "traceback": "Traceback" in err}


def main_(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "fault_injection")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    rng = np.random.default_rng(a.seed)
    work = Path(tempfile.mkdtemp(prefix="lazylabels-faults-"))
    gt = make_data(work)
    ds, sim, model, pred = work / "ds", work / "sim", work / "model", work / "pred"
    assert quiet_main(["simulate", str(gt), "--out", str(ds), "--strong-fraction", "0.25"]) == 0
    # hand annotations: other class names and a drawn detection map
    meta = json.loads((ds / "lazylabels.json").read_text())
    meta["classes"]["names"] = ["background", "nucleus"]
    (ds / "lazylabels.json").write_text(json.dumps(meta))
    hand = read_label(ds / "detection" / "im0.png").copy()
    hand[10:30, 10:30] = 2
    write_label(ds / "detection" / "im0.png", hand)
    assert quiet_main(["train", str(ds), "--out", str(model), "--iterations", "3", "--val-every", "2", *TINY]) == 0
    annotations = digests(ds)
    latest_it = load_checkpoint(model / "latest.pt").iteration

    rounds, failures = [], []
    ops = ["train", "simulate", "predict", "save"]
    order: list[str] = []
    for r in range(a.rounds):
        if not order:  # every operation once per block of four, in random order
            order = [ops[i] for i in rng.permutation(len(ops))]
        op = order.pop()
        t0 = time.perf_counter()
        problems: list[str] = []
        if op == "train":
            before = (model / "latest.pt").stat().st_mtime_ns
            info = run_killed(["train", str(ds), "--out", str(model), "--resume", str(model), "--iterations",
                               "100000", "--val-every", "5", "--save-every", "0", *TINY], model, rng, 3.0,
                              ready=lambda b=before: (model / "latest.pt").stat().st_mtime_ns != b)
            for name in ("best.pt", "latest.pt"):
                try:
                    load_checkpoint(model / name)
                except Exception as e:  # noqa: BLE001 - any failure is a lost model
                    problems.append(f"{name} lost: {e}")
            it = load_checkpoint(model / "latest.pt").iteration
            if it < latest_it:
                problems.append(f"latest.pt went back from {latest_it} to {it}")
            recover = ["train", str(ds), "--out", str(model), "--resume", str(model), "--iterations", "1",
                       "--val-every", "0", *TINY]
        elif op == "simulate":
            info = run_killed(["simulate", str(gt), "--out", str(sim), "--overwrite"], sim, rng, 1.0)
            if quiet_main(["simulate", str(gt), "--out", str(ds)]) != 2:
                problems.append("simulate onto the annotated dataset was not refused")
            recover = ["simulate", str(gt), "--out", str(sim), "--overwrite"]
        elif op == "predict":
            info = run_killed(["predict", str(model), str(work / "big.png"), str(gt / "images"), "--out",
                               str(pred), "--tta", "8"], pred, rng, 3.0)
            recover = ["predict", str(model), str(gt / "images"), "--out", str(pred), "--tta", "1"]
        else:  # save: GrabCut rewrites one exact mask of the annotated dataset in place
            info = run_killed(["grabcut", str(ds), "--images", "im1", "--overwrite"], ds, rng, 1.5)
            recover = ["grabcut", str(ds), "--images", "im1", "--overwrite"]
        info["stale_after_kill"] = len(stale(work))
        if info["signal"] == "SIGTERM" and info["killed_while_working"] and info["stale_after_kill"]:
            problems.append(f"SIGTERM left {stale(work)}")
        now = digests(ds)
        changed = {k for k in set(now) | set(annotations) if now.get(k) != annotations.get(k)}
        allowed = {"segmentation/im1.png"} if op == "save" else set()
        if changed - allowed:
            problems.append(f"annotations changed: {sorted(changed - allowed)}")
        try:
            load_dataset(ds)
        except Exception as e:  # noqa: BLE001
            problems.append(f"dataset unreadable: {e}")
        rc = quiet_main([*recover])
        if rc != 0:
            problems.append(f"the next run failed (exit {rc})")
        if op == "save":
            annotations = digests(ds)  # the rewrite of im1's mask was asked for
        latest_it = load_checkpoint(model / "latest.pt").iteration
        steps = [s[0] for s in read_history(model).get("steps", [])]
        if steps != sorted(set(steps)):
            problems.append("history.json repeats steps")
        left = stale(work)
        if left:
            problems.append(f"stale files: {left}")
        if info["traceback"]:
            problems.append("a traceback on stderr")
        rounds.append({"round": r, "op": op, **info, "seconds": round(time.perf_counter() - t0, 1),
                       "latest_iteration": latest_it, "problems": problems})
        failures += problems
        print(f"round {r:2d} {op:8s} {info['signal']:7s} after {info['delay_s']:.2f}s "
              f"(working: {info['killed_while_working']}, rc {info['rc']}): "
              f"{'ok' if not problems else '; '.join(problems)}", flush=True)
    summary = {
        "rounds": len(rounds),
        "by_op": {op: sum(r["op"] == op for r in rounds) for op in ops},
        "killed_while_working": sum(r["killed_while_working"] for r in rounds),
        "sigkill": sum(r["signal"] == "SIGKILL" for r in rounds),
        "sigterm_exit_143": sum(r["signal"] == "SIGTERM" and r["rc"] == 143 for r in rounds),
        "rounds_with_leftovers_after_kill": sum(r["stale_after_kill"] > 0 for r in rounds),
        "leftover_files_after_kills": sum(r["stale_after_kill"] for r in rounds),
        "problems": len(failures),
        "seconds": round(sum(r["seconds"] for r in rounds), 1),
    }
    print(json.dumps(summary))
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    (a.out / f"{stamp}.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_())
