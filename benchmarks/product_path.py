"""Product-path accuracy: exactly what a user runs, as subprocesses of the console script.

For each dataset under the shared development data, each draw of which images carry exact
masks (``lazylabels simulate --seed``) and each time budget::

    lazylabels simulate <train split>/masks --images <train split>/images --out ds --strong-fraction 0.094 --seed S
    lazylabels train ds --out model --minutes M                  # defaults only
    lazylabels predict model <validation images> --out pred      # defaults
    lazylabels evaluate pred <validation masks> --json scores.json

The train/validation splits are those of ``accuracy.py`` (GlaS: held-out patients; ISBI:
slices 15-19; DSB: every 5th image), so no validation image is simulated, trained on or used
to choose a checkpoint. Each finished run writes one JSON record to
``benchmarks/results/product/<dataset>/<run-id>.json`` (commands, stdout lines of train and
predict, iterations reached, the score the product showed, its warnings, the scores, the
machine); a run that fails writes nothing and running again skips finished runs.

A run given ``--train-arg`` pins a setting the user does not pin: it is an *experiment*, its
run id says ``exp-...`` and the table marks it so; only runs without them are the product's
figures.

``--baseline`` runs a baseline on the same path, draw and budget (run id ``..._baseline-<name>``):
``strong-only`` and ``pseudo-labels`` turn the simulated folder into the baseline's training
set (:mod:`baselines`: the exact-mask images alone; every image's GrabCut pseudo-label map from
its marks, made before the clock starts) and train it with ``lazylabels train --minutes M``
(the product's defaults, a segmentation-only network); ``random-forest`` fits the pixel
classifier on the marks and masks in this process and writes ``<stem>_classes.png`` for
``lazylabels evaluate`` (its fitting time is recorded; it has no budget to spend).

    python benchmarks/product_path.py --list                           # what is missing
    python benchmarks/product_path.py --dataset dsb --budget 3         # seeds 0-2
    python benchmarks/product_path.py --baseline random-forest --budget 3
    python benchmarks/product_path.py --table                          # docs/benchmarks-product.md
    python benchmarks/accuracy.py --tier product ...                   # the same
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import _common
import accuracy
from _common import FOLDERS, machine, shared_data, versions
from napari_lazylabels.core.io import atomic_write_json

RESULTS = _common.RESULTS / "product"
WORK = _common.WORK / "product"
TABLE = _common.DOCS / "benchmarks-product.md"
RECORD_FORMAT = "napari-lazylabels product-path record"
DATASETS = ("glas", "isbi", "dsb")
SEEDS = (0, 1, 2)
#: the one-click default (the Train & predict widget's budget) and 10 minutes
BUDGETS = (3.0, 10.0)
STRONG_FRACTION = 0.094
BASELINES = ("strong-only", "pseudo-labels", "random-forest")
#: the baselines that are a U-net trained by ``lazylabels train`` on a folder of their own
UNET_BASELINES = ("strong-only", "pseudo-labels")


def lazylabels() -> str:
    """The installed console script beside this interpreter (the user's command)."""
    exe = Path(sys.executable).with_name("lazylabels")
    if exe.exists():
        return str(exe)
    found = shutil.which("lazylabels")
    if not found:
        raise SystemExit("The `lazylabels` console script is not installed: pip install -e . first.")
    return found


def run_id(dataset: str, seed: int, budget: float, train_args: list[str], baseline: str | None = None) -> str:
    base = f"{dataset}_f{STRONG_FRACTION:g}_s{seed}_{budget:g}min" + (f"_baseline-{baseline}" if baseline else "")
    if not train_args:
        return base
    tag = re.sub(r"[^A-Za-z0-9.=-]+", "", "_".join(a.lstrip("-") for a in train_args))[:40]
    digest = hashlib.sha1(" ".join(train_args).encode()).hexdigest()[:6]
    return f"{base}_exp-{tag}-{digest}"


def _link_split(src: Path, stems: list[str], dest: Path) -> None:
    for sub in ("images", "masks"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
        for stem in stems:
            f = next((src / sub).glob(f"{stem}.*"))
            link = dest / sub / f.name
            if not link.exists():
                link.symlink_to(f)


def _run(cmd: list[str], log_path: Path, timeout: float) -> list[str]:
    """Run a command, keep its output in ``log_path``, return its stdout lines; raise on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log_path.write_text(
        f"$ {' '.join(cmd)}\n# exit {proc.returncode} after {time.perf_counter() - t0:.1f} s\n"
        f"## stdout\n{proc.stdout}\n## stderr\n{proc.stderr[-20000:]}\n"
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed (exit {proc.returncode}); see {log_path}")
    return proc.stdout.splitlines()


def _baseline_dataset(name: str, ds: Path, out: Path) -> None:
    """Write the training folder of baseline ``name`` (a U-net's) made from the simulated ``ds``."""
    import baselines
    from napari_lazylabels.core.io import load_dataset, save_dataset

    lazy = load_dataset(ds)
    made = baselines.strong_only(lazy) if name == "strong-only" else baselines.pseudo_label_dataset(lazy)
    save_dataset(made, out)


def _random_forest(ds: Path, images: Path, pred: Path) -> list[str]:
    """Fit the random forest on ``ds`` and write ``<stem>_classes.png`` of every image in
    ``images`` to ``pred``; returns a line like the console script's."""
    import baselines
    from napari_lazylabels.core.io import IMAGE_SUFFIXES, load_dataset, read_image, write_label

    rf = baselines.RandomForestSegmenter(seed=0).fit(load_dataset(ds))
    pred.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for f in files:
        write_label(pred / f"{f.stem}_classes.png", rf.predict(read_image(f)))
    return [f"random forest fitted on {rf.n_training_pixels} pixels; predicted {len(files)} images"]


def execute(dataset: str, seed: int, budget: float, train_args: list[str], root: Path, baseline: str | None = None) -> dict:
    """One product-path run (or ``baseline``'s on the same path); returns its record (also
    written to RESULTS)."""
    rid = run_id(dataset, seed, budget, train_args, baseline)
    work = WORK / rid
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    train, val = accuracy.split(dataset, root)
    src = root / FOLDERS[dataset]
    _link_split(src, train, work / "train-gt")
    _link_split(src, val, work / "val")
    exe = lazylabels()
    cmds = {
        "simulate": [exe, "simulate", str(work / "train-gt" / "masks"), "--images", str(work / "train-gt" / "images"),
                     "--out", str(work / "ds"), "--strong-fraction", str(STRONG_FRACTION), "--seed", str(seed)],
        "train": [exe, "train", str(work / ("ds-baseline" if baseline in UNET_BASELINES else "ds")), "--out", str(work / "model"), "--minutes", f"{budget:g}", *train_args],
        "predict": [exe, "predict", str(work / "model"), str(work / "val" / "images"), "--out", str(work / "pred")],
        "evaluate": [exe, "evaluate", str(work / "pred"), str(work / "val" / "masks"), "--json", str(work / "scores.json")],
    }
    out, times = {}, {}
    for step, cmd in cmds.items():
        t0 = time.perf_counter()
        if baseline == "random-forest" and step in ("train", "predict"):
            out[step] = _random_forest(work / "ds", work / "val" / "images", work / "pred") if step == "train" else []
        else:
            out[step] = _run(cmd, work / f"{step}.log", timeout=budget * 60 * 3 + 1800)
        times[step] = round(time.perf_counter() - t0, 1)
        if step == "simulate" and baseline in UNET_BASELINES:
            _baseline_dataset(baseline, work / "ds", work / "ds-baseline")
            times["baseline labels"] = round(time.perf_counter() - t0 - times[step], 1)
    scores = json.loads((work / "scores.json").read_text())
    trained = next((ln for ln in out["train"] if ln.startswith("trained ")), "")
    m = re.match(r"trained (\d+) iterations", trained)
    record = {
        "format": RECORD_FORMAT,
        "run_id": rid,
        "dataset": dataset,
        "seed": seed,
        "strong_fraction": STRONG_FRACTION,
        "budget_minutes": budget,
        "experiment": bool(train_args),
        "baseline": baseline,
        "train_args": train_args,
        "commands": {k: " ".join(Path(c).name if i == 0 else c for i, c in enumerate(v)) for k, v in cmds.items()},
        "iterations": int(m.group(1)) if m else None,
        "train_stdout": out["train"],
        "predict_stdout": out["predict"][:5],
        "warnings": [ln for ln in out["train"] if ln.startswith("warning:")],
        "seconds": times,
        "summary": scores["summary"],
        "per_image": {k: {"dice": v.get("dice"), "object_f1": v.get("object_f1")} for k, v in scores["images"].items()},
        "machine": machine(),
        "versions": versions(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    path = RESULTS / dataset / f"{rid}.json"
    atomic_write_json(path, record)
    shutil.rmtree(work / "pred", ignore_errors=True)
    return record


def load_records() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*/*.json"))]


def _machine_tag(rec: dict) -> str:
    m = rec["machine"]
    return f"{m.get('cpu', '?')} ({'bf16' if m.get('cpu_native_bf16') else 'float32'})"


def _pairs(rs: list[dict]) -> str:
    """Touching pairs separated, mean / worst draw, where the held-out images have touching
    pairs (at least one per two images), else a dash."""
    sums = [r["summary"] for r in rs]
    if not all((s.get("n_pairs") or 0) >= 0.5 and s.get("pairs_separated") is not None for s in sums):
        return "–"
    p = [s["pairs_separated"] for s in sums]
    return f"{np.mean(p):.2f} / {min(p):.2f}"


def write_table(path: Path = TABLE) -> str:
    """docs/benchmarks-product.md: per dataset, budget and machine, mean and worst draw
    (product runs; the commits they ran at are listed: compare only rows whose training code
    is the same), then every run (experiments marked)."""
    recs = load_records()
    lines = [
        "# Product-path accuracy (generated by `python benchmarks/product_path.py --table`)",
        "",
        "What a user gets: `lazylabels simulate` (9.4% exact masks, seed = draw) -> `lazylabels train "
        "--minutes M` with defaults -> `lazylabels predict` -> `lazylabels evaluate` on the held-out "
        "validation images (see benchmarks/product_path.py). Dice = foreground dice per image, averaged; "
        "F1 = object F1 at IoU > 0.5; pairs = share of touching ground-truth pairs whose objects are "
        "predicted apart (mean / worst draw; datasets whose images have touching objects). Rows marked "
        "*experiment* pin a setting the user does not pin.",
        "",
        "## Product defaults: mean and worst draw",
        "",
        "| dataset | budget | draws | dice mean | dice worst | F1 mean | F1 worst | pairs | iterations | machine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows: dict = {"": lines, "baseline": []}
    groups: dict = {}
    for r in recs:
        if r["experiment"]:
            continue
        key = (r["dataset"], r["budget_minutes"], _machine_tag(r), r.get("baseline") or "")
        groups.setdefault(key, []).append(r)
    for (ds, budget, mach, baseline), rs in sorted(groups.items()):
        commit = ", ".join(sorted({r["versions"].get("git_commit", "")[:7] for r in rs}))
        d = [r["summary"]["dice"] for r in rs]
        f = [r["summary"].get("object_f1", float("nan")) for r in rs]
        its = [r["iterations"] or 0 for r in rs]
        rows["baseline" if baseline else ""].append(
            f"| {ds}{' ' + baseline if baseline else ''} | {budget:g} min | {len(rs)} (seeds {','.join(str(r['seed']) for r in rs)}) | {np.mean(d):.3f} | "
            f"{min(d):.3f} | {np.mean(f):.3f} | {min(f):.3f} | {_pairs(rs)} | {min(its)}-{max(its)} | {mach}, {commit} |"
        )
    if rows["baseline"]:
        lines += [
            "", "## Baselines on the same path", "",
            "The same draws, budgets and held-out images; `strong-only`: `lazylabels train` on the exact-mask "
            "images alone; `pseudo-labels`: on GrabCut maps from the marks (made before the clock starts); "
            "`random-forest`: a pixel classifier on the marks and masks (no budget to spend). "
            "Iterations are 0 for the forest.", "",
            "| dataset, baseline | budget | draws | dice mean | dice worst | F1 mean | F1 worst | pairs | iterations | machine |",
            "|---|---|---|---|---|---|---|---|---|---|", *rows["baseline"],
        ]
    lines += ["", "## Every run", "", "| run | dice | F1 | pairs | iterations | warnings | machine | commit |",
              "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        name = r["run_id"] + (" *experiment*" if r["experiment"] else "")
        lines.append(
            f"| {name} | {r['summary']['dice']:.3f} | {r['summary'].get('object_f1', float('nan')):.3f} | {_pairs([r])} | "
            f"{r['iterations']} | {len(r['warnings'])} | {_machine_tag(r)} | {r['versions'].get('git_commit', '')[:7]} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", nargs="*", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--seed", nargs="*", type=int, default=list(SEEDS))
    p.add_argument("--budget", nargs="*", type=float, default=list(BUDGETS), help="minutes of training")
    p.add_argument("--train-arg", action="append", default=[],
                   help="extra `lazylabels train` argument (makes the run an experiment), e.g. --train-arg=--scale=1")
    p.add_argument("--baseline", choices=BASELINES, help="run this baseline on the same path instead of the product")
    p.add_argument("--list", action="store_true", help="list the runs without a record and exit")
    p.add_argument("--table", action="store_true", help="write docs/benchmarks-product.md and exit")
    p.add_argument("--force", action="store_true", help="run again even where a record exists")
    a = p.parse_args(argv)
    if a.table:
        print(write_table())
        return 0
    root = shared_data()
    todo = [(d, s, b) for b in a.budget for d in a.dataset for s in a.seed
            if a.force or not (RESULTS / d / f"{run_id(d, s, b, a.train_arg, a.baseline)}.json").exists()]
    for d, s, b in todo:
        print(f"missing: {run_id(d, s, b, a.train_arg, a.baseline)}")
    if a.list:
        return 0
    failed = 0
    for d, s, b in todo:
        t0 = time.perf_counter()
        try:
            rec = execute(d, s, b, a.train_arg, root, a.baseline)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as e:
            print(f"FAILED {run_id(d, s, b, a.train_arg, a.baseline)}: {e}")
            failed += 1
            continue
        print(f"{rec['run_id']}: dice {rec['summary']['dice']:.3f} F1 {rec['summary'].get('object_f1', float('nan')):.3f} "
              f"({rec['iterations']} it, {time.perf_counter() - t0:.0f} s, {len(rec['warnings'])} warnings)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
