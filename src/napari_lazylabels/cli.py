"""The ``lazylabels`` command line: simulate, train, predict, evaluate, grabcut, demo.

It imports only :mod:`napari_lazylabels.core`, so it runs where napari is not installed
(a GPU server). Results are written to stdout; diagnostics go through :mod:`logging`.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import signal
import sys
from pathlib import Path

log = logging.getLogger("napari_lazylabels")

EPILOG_SIMULATE = """examples:
  lazylabels simulate ground_truth/ --out runs/isbi-lazy --strong-fraction 0.1 --seed 0   # images/ + masks/
  lazylabels simulate masks/ --images images/ --out runs/lazy --strong-fraction 0.05
"""
EPILOG_TRAIN = """examples:
  lazylabels train runs/isbi-lazy --out runs/isbi-model --minutes 5
  lazylabels train runs/isbi-lazy --out runs/isbi-model --iterations 2000 --size paper --device cuda
  lazylabels train runs/isbi-lazy --out runs/isbi-model --resume runs/isbi-model --iterations 500
  lazylabels train runs/fluo-lazy --out runs/fluo-model --channels 0,2   # channels 0 and 2 of each image
"""
EPILOG_PREDICT = """examples:
  lazylabels predict runs/isbi-model image1.png image2.tif --out runs/pred
  lazylabels predict runs/isbi-model/best.pt my_images/ --out runs/pred --no-probabilities
  lazylabels predict runs/isbi-model huge_slide.tif --out runs/pred --tta 1   # 4x faster, a little less accurate
  lazylabels predict runs/em-model zstack.tif --out runs/pred --link-slices   # one id per cell through Z
writes per image: STEM_classes.png (0 = background, c = class c), STEM_instances.png/.tif,
STEM_interfaces.tif (interface probability) and STEM_probabilities.tif (per class), and
lazylabels-predict.json (the model and how instances were cut). The slices of a stack
(Z or T) are written as STEM_z000_*, STEM_z001_*, ..., their instance ids unique across the stack.
A stack, or a TIFF with a physical pixel size (OME or ImageJ), also gets STEM_classes.ome.tif and
STEM_instances.ome.tif: the whole (Z, Y, X) maps at the image's pixel size, for viewers.
Zarr and OME-Zarr inputs, TIFFs with planes above 10000x10000 px (and any TIFF with --ome-zarr)
are predicted block by block in bounded memory into STEM.ome.zarr: the image, and the class and
instance maps under labels/ (OME-NGFF 0.4, with pyramids and the image's pixel size); a stopped
or killed run goes on where it stopped when the same command is run again.
"""
EPILOG_INSTANCES = """Cuts the objects of a lazylabels predict --out folder again from its STEM_classes.png
and STEM_interfaces.tif, rewriting STEM_instances.png/.tif: seconds, no network. A STEM.ome.zarr
predicted block by block is cut again block by block from the class and interface maps it
keeps, its labels/instances replaced when complete. examples:
  lazylabels instances runs/pred --interface-threshold 0.8     # single objects were cut in pieces
  lazylabels instances runs/pred --interface-threshold 0.3     # touching objects stayed merged
  lazylabels instances runs/pred --split-necks 1.5 --images im0 im1
"""
EPILOG_EVALUATE = """examples:
  lazylabels evaluate runs/pred ground_truth/masks
  lazylabels evaluate runs/pred gt_masks/ --json runs/scores.json
GT_DIR holds instance masks (0 = background, 1..N = objects) named like the images;
PRED_DIR the STEM_classes / STEM_instances maps of `lazylabels predict`, or the STEM.ome.zarr
folders it writes block by block.
"""
EPILOG_DEMO = """Trains on the bundled sample (StarDist/DSB 2018 nuclei with simulated lazy labels),
predicts the held-out sample images and prints their dice. Example:
  lazylabels demo --out demo-run --minutes 3
"""


def _int_at_least(minimum: int, note: str = ""):
    """An argparse type: a whole number >= ``minimum`` (``note`` says what the minimum means)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}{note}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0, " (0 = off)")


def _patch_size(text: str) -> int:
    value = _positive_int(text)
    if value < 32 or value % 16:
        raise argparse.ArgumentTypeError(
            f"expected a multiple of 16, at least 32 (e.g. 64, 128, 256), got {value}"
        )
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _device(text: str):
    """``resolve_device`` with a one-line error for names torch does not know."""
    from .core.model import resolve_device

    try:
        return resolve_device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a device: use auto, cpu, cuda, cuda:1 or mps.") from None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` cleans up (temporary files)."""


def _on_sigterm(signum, frame):
    raise Terminated()


OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write to another folder",
    errno.EDQUOT: "the disk quota is used up: free some space or write to another folder",
    errno.EROFS: "the file system is read-only: write to another folder (--out)",
    errno.EACCES: "no permission to write there: choose a folder you can write (--out)",
    errno.EPERM: "no permission to write there: choose a folder you can write (--out)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "that is a folder where a file was expected: give a file name",
    errno.EEXIST: "it already exists: choose another name",
}


def describe_os_error(e: OSError) -> str:
    """One line for a filesystem error: the path, what went wrong and what to do."""
    if e.strerror is None:  # raised by our code with a whole message
        return str(e)
    where = f"{e.filename}: " if e.filename else ""
    hint = OS_ERROR_HINTS.get(e.errno)
    if e.errno is None or e.strerror != os.strerror(e.errno) or hint is None:
        return f"{where}{e.strerror}."  # our own message, already with the fix
    return f"{where}{e.strerror} ({hint})."


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose < 0 else logging.INFO if verbose == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _tqdm(**kw):
    from tqdm import tqdm

    return tqdm(**kw, file=sys.stderr, dynamic_ncols=True)


def _run_job(job, desc: str, unit: str = "it", postfix=None):
    """Drive a core job (:mod:`napari_lazylabels.core.jobs`) to its result with a tqdm bar
    on stderr: the bar shows each event's ``phase`` and its ``done`` of ``total`` (counted
    again from 0 when the total changes, i.e. a new phase); ``postfix(event)`` (optional)
    gives the bar's postfix dict or ``None``."""
    from .core.jobs import drive

    with _tqdm(desc=desc, unit=unit) as bar:

        def show(event) -> None:
            if event.total != bar.total:
                bar.reset(total=event.total)
            bar.set_description(f"{desc} ({event.phase})", refresh=False)
            extra = postfix(event) if postfix is not None else None
            if extra:
                bar.set_postfix(extra, refresh=False)
            bar.update(event.done - bar.n)

        return drive(job, show)


def _train_postfix(event) -> dict | None:
    """A training step's loss, a validation's score."""
    if event.kind == "step":
        return {"loss": f"{event.loss:.4f}"}
    if event.kind == "validation" and event.metrics:
        return {"val_dice": f"{event.metrics['dice']:.3f}"}
    return None


# --------------------------------------------------------------------------- simulate
def cmd_simulate(a: argparse.Namespace) -> int:
    from .core.runfolder import DATASET_PARTS, check_writable, folder_lock
    from .core.simulate import SimulationConfig, simulate_folder

    with folder_lock(check_writable(a.out), "simulate", DATASET_PARTS):
        ds = simulate_folder(
            a.gt_dir, a.out, strong_fraction=a.strong_fraction, seed=a.seed,
            config=SimulationConfig(), images_dir=a.images, overwrite=a.overwrite,
        )
    _out(f"wrote {len(ds)} images to {a.out}: images labelled per task {ds.summary()}")
    return 0


# --------------------------------------------------------------------------- train
def _train_config(a: argparse.Namespace):
    from .core.train import TrainConfig

    weights = {}
    for item in a.task_weights or []:
        k, _, v = item.partition("=")
        try:
            weights[k] = float(v)
        except ValueError:
            raise ValueError(
                f"--task-weights takes TASK=W pairs such as separation=0.5 (tasks: detection, "
                f"separation, segmentation), got {item!r}."
            ) from None
    base = TrainConfig()
    return TrainConfig(
        iterations=a.iterations,
        time_budget=a.minutes * 60 if a.minutes else None,
        batch_size=a.batch_size,
        learning_rate=a.lr,
        lr_schedule=a.lr_schedule,
        task_weights={**base.task_weights, **weights},
        label_mode=a.label_mode, marks_to_segmentation=a.marks_teach_segmentation,
        device=a.device,
        amp=not a.no_amp,
        val_every=a.val_every,
        augment={**base.augment.__dict__, "patch_size": a.patch_size, "mask_share": base.augment.mask_share if a.mask_share is None else a.mask_share},
        seed=a.seed,
        num_threads=a.threads,
        reuse_cpu_memory=False if a.lean_memory else None,
        save_every=a.save_every,
    )


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SystemExit(f"--scale takes 'auto' or a number such as 0.5, got {text!r}.") from None
    if not 0.0625 <= value <= 4:
        raise SystemExit(f"--scale must be between 0.0625 and 4 (1 = as the images are), got {value}.")
    return value


def _channels(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated channel indices such as ``0,2``."""
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected channel numbers such as 0,2 (from 0), got {text!r}") from None
    if min(channels) < 0 or len(set(channels)) != len(channels):
        raise argparse.ArgumentTypeError(f"expected distinct channel numbers from 0, such as 0,2, got {text!r}")
    return channels


def _describe_channels(mc) -> str:
    """``"channels 0, 2 of 3 (each its own range)"``, ``"gray"`` or ``"RGB"``: what a model reads."""
    if mc.channels is None:
        return "gray" if mc.in_channels == 1 else "RGB"
    return f"channels {', '.join(map(str, mc.channels))} of {mc.source_channels} (each its own range)"


def _check_resume_options(a: argparse.Namespace, scale: float | None) -> None:
    """Refuse model options that differ from the checkpoint being resumed: resuming continues
    the saved network, so they would be silently ignored."""
    from .core.checkpoint import load_checkpoint, resolve_resume_path

    mc = load_checkpoint(resolve_resume_path(a.resume)).model_config
    asked = {
        "--size": (a.size, mc.size),
        "--architecture": (a.architecture, mc.architecture),
        "--tasks": (tuple(a.tasks.split(",")) if a.tasks else None, tuple(mc.tasks)),
        "--scale": (scale, mc.scale),
        "--channels": (a.channels, mc.channels),
    }
    for option, (want, have) in asked.items():
        if want is not None and want != have:
            show = ",".join(map(str, want)) if isinstance(want, tuple) else want
            saved = ",".join(map(str, have)) if isinstance(have, tuple) else have
            raise ValueError(
                f"{option} {show} differs from the resumed model's {saved}: resuming continues that "
                f"network, so drop {option}, or train a new model into another --out."
            )


def cmd_train(a: argparse.Namespace) -> int:
    from .core.io import load_dataset
    from .core.runfolder import check_writable
    from .core.train import plan_training, train_iter

    if a.iterations is None and a.minutes is None:
        a.iterations = 1000
    scale = None if a.scale == "auto" else _scale(a.scale)
    cfg = _train_config(a)
    _device(a.device)
    check_writable(a.out)  # before any work: a read-only or full folder fails now
    if a.resume is not None:
        _check_resume_options(a, scale)
    ds = load_dataset(a.dataset)
    validation = list(load_dataset(a.validation)) if a.validation else None
    model_config = None
    if a.resume is None:
        kw = {"architecture": a.architecture or "multitask"}
        if a.tasks:
            kw["tasks"] = tuple(a.tasks.split(","))
        if scale is not None:
            kw["scale"] = scale
        if a.channels is not None:
            kw["channels"] = a.channels
        model_config = plan_training(ds, cfg, size=a.size, **kw).model_config
        _out(f"model: {model_config.architecture} {model_config.size}, tasks {','.join(model_config.tasks)}, "
             f"working scale {model_config.scale:g}, {_describe_channels(model_config)}")
    job = train_iter(ds, a.out, model_config, cfg, resume=a.resume, validation=validation, overwrite=a.overwrite)
    res = _run_job(job, "train", postfix=_train_postfix)
    from .core.quality import describe_score

    score = describe_score({**res.best_metrics, "best_metric": res.best_metric}, best=True)
    cut = "" if res.interface_threshold is None else f"; objects cut at interface probability {res.interface_threshold:g} (tuned on the exact masks)"
    _out(f"trained {res.iteration} iterations; {score}{cut}; model in {res.model_dir}")
    for w in res.warnings:
        _out(f"warning: {w}")
    return 0


# --------------------------------------------------------------------------- predict
def _report_model(ck) -> None:
    """Say how good the model is (its stored validation score) and repeat its warnings."""
    from .core.quality import describe_score, warnings_for

    _out(f"model: {ck.iteration} iterations, {describe_score(ck.metrics, best=True)}, "
         f"reads {_describe_channels(ck.model_config)}")
    for w in warnings_for(ck.metrics, ck.iteration):
        _out(f"warning: {w}")


def cmd_predict(a: argparse.Namespace) -> int:
    from .core.checkpoint import load_model
    from .core.io import list_images, read_images
    from .core.predict import PredictConfig, Predictor, predict_file, save_prediction_settings
    from .core.runfolder import check_writable, folder_lock
    from .core.stacks import StackIds

    device = _device(a.device)
    check_writable(a.out)
    model, ck = load_model(a.model, device)
    _report_model(ck)
    pcfg = PredictConfig(
        tile=a.tile, overlap=a.overlap, batch_size=a.batch_size, device=str(device),
        save_probabilities=not a.no_probabilities, seed_probability=a.split_uncertain,
        neck_depth=a.split_necks, min_object_size=a.min_size,
        interface_threshold=a.interface_threshold, link_slices=a.link_slices, **({} if a.tta is None else {"tta": a.tta, "large_image_tta": None}),
    )
    predictor = Predictor(model, ck.model_config, pcfg)
    files = list_images(a.images)
    _refuse_same_stems(files)
    out = Path(a.out)
    _warn_other_models_outputs(out, a.model, files)
    n, failed, written = 0, [], {}
    with folder_lock(out, "predict"):
        for f in _tqdm(iterable=files, desc="predict", unit="file"):
            try:
                lazy = _lazy_image(f, a.ome_zarr)
            except (ValueError, OSError) as e:  # one unreadable image does not stop the batch
                log.error("skipped %s: %s", f, e)
                failed.append(f)
                continue
            if lazy is not None:
                n += _predict_blockwise(predictor, lazy, out, pcfg, f, a.model)
                written[f.stem] = f
                continue
            try:
                images = read_images(f)  # a stack TIFF gives one image per slice
            except (ValueError, OSError) as e:  # one unreadable image does not stop the batch
                log.error("skipped %s: %s", f, e)
                failed.append(f)
                continue
            predictor.check(images[0][1], what=f.name)  # a model refuses images of other channels
            ids = StackIds(pcfg.link_slices) if len(images) > 1 else None  # ids unique across a stack
            done = []
            for name, image in images:
                if name in written:
                    log.error("skipped %s (%s): its outputs %s_* were already written for %s", f, name, name, written[name])
                    failed.append(f)
                    continue
                predict_file(predictor, f, out, image=image, stem=name, stack_ids=ids)
                written[name] = f
                done.append(name)
                n += 1
            _whole_image_outputs(out, f, images, done)
        if n:
            save_prediction_settings(out, predictor, a.model)
    _out(f"predicted {n} images from {len(files)} files into {out}")
    if failed:
        log.error("%d of %d files could not be predicted (see above): %s", len(failed), len(files),
                  ", ".join(str(f) for f in failed[:5]) + (" ..." if len(failed) > 5 else ""))
        return 1
    return 0


def _lazy_image(f: Path, always: bool):
    """The file opened lazily when it is predicted block by block into an OME-Zarr: a zarr
    or OME-Zarr folder, a TIFF whose planes exceed ``BLOCKWISE_PIXELS``, any TIFF with
    ``--ome-zarr``; else ``None`` (read whole). A file that cannot be opened lazily is read
    whole (its error is reported there)."""
    from .core.io import is_zarr
    from .core.options import BLOCKWISE_PIXELS
    from .core.zarrio import open_lazy_image

    if not (is_zarr(f) or f.suffix.lower() in (".tif", ".tiff")):
        return None
    try:
        lazy = open_lazy_image(f)
    except ValueError:
        if is_zarr(f):
            raise
        return None
    h, w = lazy.plane_shape
    return lazy if is_zarr(f) or always or h * w > BLOCKWISE_PIXELS else None


def _predict_blockwise(predictor, lazy, out: Path, pcfg, f: Path, model: str) -> int:
    """Predict a lazy image block by block into ``OUT/STEM.ome.zarr``; returns its planes.
    A run that was stopped or killed goes on where it stopped when run again with the same
    input, model and settings (the partial folder records its blocks)."""
    import dataclasses

    from .core.blocks import iter_predict_ome_zarr, ome_zarr_path

    key = {"input": str(f.resolve()), "input_mtime": f.stat().st_mtime_ns, "model": str(Path(model).resolve()),
           "model_mtime": Path(model).stat().st_mtime_ns, "predict": dataclasses.asdict(pcfg)}

    h, w = lazy.plane_shape
    path = ome_zarr_path(out, lazy.name)
    log.info("%s: %dx%d%s, predicted block by block into %s", lazy.name, h, w,
             f" x {lazy.n_planes} planes" if lazy.n_stack else "", path)
    _run_job(iter_predict_ome_zarr(predictor, lazy, path, resume_key=key), desc=lazy.name, unit="tile")
    return lazy.n_planes


def _whole_image_outputs(out: Path, f: Path, images: list, done: list[str]) -> None:
    """A stack, or an image with a physical pixel size: its class and instance maps also as
    ``STEM_classes.ome.tif`` / ``STEM_instances.ome.tif`` at the image's pixel size (a
    ``(Z, Y, X)`` stack for a stack), which viewers open at the image's scale."""
    from .core.outputs import remove_whole_image_outputs, write_whole_image_outputs
    from .core.pixelsize import read_pixel_size

    pixel_size = read_pixel_size(f)
    if len(done) == len(images) and (len(images) > 1 or pixel_size is not None):
        for path in write_whole_image_outputs(out, f.stem, done, pixel_size):
            log.info("Wrote %s%s", path.name, f" ({pixel_size.x:g} {pixel_size.unit} pixels)" if pixel_size else "")
    else:
        remove_whole_image_outputs(out, f.stem)


def _warn_other_models_outputs(out: Path, model: str, files: list[Path]) -> None:
    """Say when ``out`` keeps another model's predictions of images this run does not redo:
    ``lazylabels instances`` would cut them with this model's settings."""
    import json

    from .core.predict import PREDICTION_SETTINGS

    try:
        before = json.loads((out / PREDICTION_SETTINGS).read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return
    if before is None or Path(before).resolve() == Path(model).resolve():
        return
    redone = {f.stem for f in files}
    names = (p.name[: -len("_classes.png")] for p in out.glob("*_classes.png"))
    others = sorted(n for n in names if n not in redone and not any(n.startswith(f"{s}_z") for s in redone))
    if others:
        log.warning(
            "%s also holds predictions of %d other images by another model (%s), e.g. %s: predict "
            "them again with this model, or use another --out, before `lazylabels instances`.",
            out, len(others), before, others[0],
        )


def _refuse_same_stems(files: list[Path]) -> None:
    """Two inputs with one file stem (a/x.png, b/x.png) would write the same x_* outputs."""
    seen: dict[str, Path] = {}
    for f in files:
        if f.stem in seen:
            raise ValueError(
                f"{seen[f.stem]} and {f} would both write {f.stem}_* into --out: predict them "
                "into separate --out folders, or rename one."
            )
        seen[f.stem] = f


def cmd_instances(a: argparse.Namespace) -> int:
    from .core.blocks import iter_resplit_ome_zarr
    from .core.predict import resplit_folder
    from .core.zarrio import image_stem

    pred = Path(a.predictions)
    zarrs = {image_stem(p): p for p in sorted(pred.glob("*.ome.zarr")) if p.is_dir()}
    others = None if a.images is None else [s for s in a.images if s not in zarrs]
    chosen = [p for s, p in zarrs.items() if a.images is None or s in a.images]
    n = 0
    if others or not chosen or (others is None and any(pred.glob("*_classes.png"))):
        n += len(resplit_folder(pred, a.interface_threshold, a.min_size, a.split_necks, others, a.link_slices))
    for p in chosen:
        _run_job(iter_resplit_ome_zarr(p, a.interface_threshold, a.min_size, a.split_necks, a.link_slices),
                 desc=p.name, unit="block")
        n += 1
    _out(f"cut the instances of {n} images again in {a.predictions}")
    return 0


# --------------------------------------------------------------------------- evaluate
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cmd_evaluate(a: argparse.Namespace) -> int:
    from .core.evaluate import evaluate_folder

    res = evaluate_folder(a.pred_dir, a.gt_dir)
    for k, v in _flat(res["summary"]).items():
        _out(f"{k:32s} {v:.4f}" if isinstance(v, float) else f"{k:32s} {v}")
    if a.json:
        from .core.io import atomic_write_json

        atomic_write_json(a.json, res)
    return 0


# --------------------------------------------------------------------------- grabcut
def cmd_grabcut(a: argparse.Namespace) -> int:
    from .core.grabcut import refine_iter
    from .core.io import load_dataset, save_dataset
    from .core.runfolder import DATASET_PARTS, check_writable, folder_lock

    ds = load_dataset(a.dataset)
    unknown = sorted(set(a.images or ()) - set(ds.names()))
    if unknown:
        raise ValueError(
            f"--images names {unknown}, which {a.dataset} does not have; its images are "
            f"{', '.join(ds.names()[:10])}{' ...' if len(ds) > 10 else ''}."
        )
    target = check_writable(a.out or a.dataset)
    n = 0
    for s in ds:
        if s.detection is None or (s.segmentation is not None and not a.overwrite):
            if a.images and s.name in a.images:
                log.warning("%s: %s", s.name, "no detection marks to start from" if s.detection is None
                            else "has an exact mask already; --overwrite redoes it")
            continue
        if a.images and s.name not in a.images:
            continue
        s.segmentation = _run_job(refine_iter(s.image, s.detection), f"grabcut {s.name}", unit="object")
        n += 1
    with folder_lock(target, "grabcut", DATASET_PARTS):
        save_dataset(ds, target)
    _out(f"refined {n} images into segmentation masks in {a.out or a.dataset}")
    return 0


# --------------------------------------------------------------------------- demo
def cmd_demo(a: argparse.Namespace) -> int:
    from .core.evaluate import evaluate_folder
    from .core.io import load_dataset
    from .core.train import TrainConfig, train_iter
    from .sample_data import sample_paths

    paths = sample_paths()
    out = Path(a.out)
    ds = load_dataset(paths["dataset"])
    _out(f"sample dataset: {len(ds)} images, labelled per task {ds.summary()}")
    cfg = TrainConfig(iterations=None, time_budget=a.minutes * 60, seed=0, val_every=100)
    res = _run_job(train_iter(ds, out / "model", train_config=cfg), "train", postfix=_train_postfix)
    _out(f"trained {res.iteration} iterations in {a.minutes} min budget")
    # through the parser, so that every predict option has its default
    ns = build_parser().parse_args([
        "predict", str(out / "model"), str(paths["test_images"]), "--out", str(out / "predictions"),
        "--batch-size", "4", "--no-probabilities",
    ])
    cmd_predict(ns)
    res = evaluate_folder(out / "predictions", paths["test_masks"])
    s = res["summary"]
    _out(f"held-out sample images: dice {s['dice']:.3f}, object F1 {s['object_f1']:.3f}, interface precision {s['interface_precision']:.3f}, touching pairs separated {s['pairs_separated']:.3f} (n={s['n']})")
    return 0


# --------------------------------------------------------------------------- parser
def _instance_options(
    parser: argparse.ArgumentParser, threshold_default: str, size_default: str, link_default: bool | None = False
) -> None:
    """How instances are cut: the options ``predict`` and ``instances`` share."""
    parser.add_argument("--interface-threshold", type=float, metavar="T",
                        help=f"interface probability that splits objects (default: {threshold_default}): "
                        "raise it when single objects come out cut in pieces, lower it when touching "
                        "ones stay merged")
    parser.add_argument("--min-size", type=int, metavar="PIXELS",
                        help=f"drop instances smaller than this (default: {size_default})")
    parser.add_argument("--split-necks", type=float, metavar="H", default=0.0,
                        help="also split instances at necks at least H pixels shallower than the "
                        "objects' centres (round touching objects such as nuclei: about a tenth of "
                        "their radius); off by default, as it cuts irregular objects apart")
    parser.add_argument("--link-slices", action=argparse.BooleanOptionalAction, default=link_default,
                        help="in a stack (Z or T), give an object the id of the object of the slice "
                        "before that it overlaps (intersection over union above 0.5), so one object "
                        "through the stack is one id; ids are unique across the stack either way "
                        f"(default: {'as recorded by lazylabels predict' if link_default is None else 'off'})")


def build_parser() -> argparse.ArgumentParser:
    """The ``lazylabels`` parser: one sub-command per job, its options declared by one helper
    each. Builds without importing torch (the choices come from :mod:`.core.options`)."""
    p = argparse.ArgumentParser(
        prog="lazylabels",
        description="Segment microscopy images from lazy labels with a multi-task U-net.",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbose")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter
    for add in (_add_simulate, _add_train, _add_predict, _add_other_commands):
        add(sub, fmt)
    return p


def _add_simulate(sub, fmt) -> None:
    s = sub.add_parser("simulate", help="derive lazy labels from ground-truth instance masks",
                       epilog=EPILOG_SIMULATE, formatter_class=fmt)
    s.add_argument("gt_dir", help="folder with images/ and masks/, or a folder of masks (with --images)")
    s.add_argument("--out", required=True, help="dataset folder to write")
    s.add_argument("--images", help="folder of images when GT_DIR holds only masks")
    s.add_argument("--strong-fraction", type=float, default=0.1, help="share of images given exact masks")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--overwrite", action="store_true",
                   help="replace the annotations of a dataset already in --out (refused without it)")
    s.set_defaults(func=cmd_simulate)



def _add_train(sub, fmt) -> None:
    from .core.labels import LABEL_MODES
    from .core.options import ARCHITECTURES, LR_SCHEDULES, MODEL_SIZES

    t = sub.add_parser("train", help="train a model on a dataset folder", epilog=EPILOG_TRAIN, formatter_class=fmt)
    t.add_argument("dataset", help="dataset folder (images/, detection/, separation/, segmentation/)")
    t.add_argument("--out", required=True, help="model folder to write (best.pt, latest.pt, config.json)")
    t.add_argument("--iterations", type=_positive_int, help="optimiser steps (default 1000 when no --minutes)")
    t.add_argument("--minutes", type=float, help="wall-clock budget")
    t.add_argument("--size", choices=list(MODEL_SIZES),
                   help="model size (default: paper on a GPU, tiny on a CPU)")
    t.add_argument("--architecture", choices=ARCHITECTURES, help="network (default: multitask)")
    t.add_argument("--scale", default="auto",
                   help="working scale: resize images by this factor for the network (0.5 = half size); "
                        "'auto' (default) makes a typical object span about half a training patch "
                        "(between 1/4 and 1, keeping images at least two patches across)")
    t.add_argument("--tasks", help="comma-separated tasks to train, e.g. segmentation")
    t.add_argument("--channels", type=_channels, metavar="C,C",
                   help="multi-channel images: the channels to train on, e.g. 0,2 (default: all; each "
                   "channel gets its own intensity range; on RGB images this treats the colours as channels)")
    t.add_argument("--label-mode", choices=LABEL_MODES, default="ignore")
    t.add_argument("--marks-teach-segmentation", action="store_true",
                   help="ignore mode: the detection marks of images without exact masks also train the "
                   "segmentation head; helped with an exact mask on one image of five, unproven with "
                   "4-6 (docs/benchmarks.md)")
    t.add_argument("--task-weights", nargs="*", metavar="TASK=W", help="alpha_k, e.g. separation=0.5")
    t.add_argument("--batch-size", type=_positive_int, help="patches per step (default 16)")
    t.add_argument("--patch-size", type=_patch_size,
                   help="side of the square training patches (default: 256 on a GPU, 128 on a CPU)")
    t.add_argument("--mask-share", type=float,
                   help="share of each batch drawn from the images with exact masks, when only some "
                        "have them (default 0.5)")
    t.add_argument("--lr", type=float, help="Adam's learning rate (default: 1e-3 on a CPU, 2e-4 on a GPU)")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="default: cosine decay over the budget on a CPU, constant on a GPU")
    t.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    t.add_argument("--no-amp", action="store_true",
                   help="train in float32 (no bf16 autocast; autocast is used on CUDA and on CPUs with native bf16)")
    t.add_argument("--val-every", type=_non_negative_int, default=200,
                   help="validate every this many iterations (default 200; 0 = never, best.pt is then the last model)")
    t.add_argument("--validation", help="a dataset folder with exact masks to choose the best model")
    t.add_argument("--resume", help="checkpoint or model folder to continue from (a folder continues "
                   "from its latest.pt)")
    t.add_argument("--overwrite", action="store_true",
                   help="replace a model already in --out (refused without it, unless --resume is that folder)")
    t.add_argument("--save-every", type=_seconds, default=60.0, metavar="SECONDS",
                   help="write latest.pt after this many seconds of training (default 60): a killed "
                   "run loses at most this much; 0 = after every step")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    t.add_argument("--lean-memory", action="store_true",
                   help="CPU: hand freed memory back to the system at every step (6-31%% less peak "
                   "memory, 1.1-1.7x slower steps; by default it is kept for reuse until training ends)")
    t.set_defaults(func=cmd_train)



def _add_predict(sub, fmt) -> None:
    from .core.options import LARGE_IMAGE_TTA, LARGE_TTA_PIXELS, TTA_CHOICES

    pr = sub.add_parser("predict", help="tiled prediction of images of any size",
                        epilog=EPILOG_PREDICT, formatter_class=fmt)
    pr.add_argument("model", help="model folder or checkpoint file")
    pr.add_argument("images", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True)
    pr.add_argument("--tile", type=int, default=256)
    pr.add_argument("--overlap", type=float, default=0.25)
    pr.add_argument("--batch-size", type=int, default=8)
    pr.add_argument("--tta", type=int, choices=TTA_CHOICES, metavar="N",
                    help="test-time augmentation: predict every tile in N orientations "
                    f"({', '.join(map(str, TTA_CHOICES[:-1]))} or {TTA_CHOICES[-1]}) "
                    "and average the class probabilities; 1 is fastest, the default 4 is more "
                    "accurate and takes 4 times as long (images above "
                    f"{math.isqrt(LARGE_TTA_PIXELS)}x{math.isqrt(LARGE_TTA_PIXELS)} px: {LARGE_IMAGE_TTA} by "
                    "default; --tta sets every image's)")
    pr.add_argument("--device", default="auto")
    pr.add_argument("--no-probabilities", action="store_true", help="skip STEM_probabilities.tif")
    pr.add_argument("--ome-zarr", action="store_true",
                    help="predict every TIFF block by block into STEM.ome.zarr (bounded memory); zarr and "
                    "OME-Zarr inputs, and TIFFs with planes above 10000x10000 px, always are")
    _instance_options(pr, "the model's own, tuned on its exact masks when training ended, else 0.5",
                      "a tenth of the area of the typical object the model was trained on, at least 16")
    pr.add_argument("--split-uncertain", type=float, metavar="P",
                    help="also split instances where the class probability is below P (e.g. 0.9), "
                    "for objects the class map merges across thin boundaries")
    pr.set_defaults(func=cmd_predict)



def _add_other_commands(sub, fmt) -> None:
    ins = sub.add_parser("instances", help="cut predicted objects again with other settings (no network)",
                         epilog=EPILOG_INSTANCES, formatter_class=fmt)
    ins.add_argument("predictions", help="the --out folder of lazylabels predict")
    ins.add_argument("--images", nargs="+", metavar="STEM", help="only these images (default: all)")
    _instance_options(ins, "the model's own, recorded by lazylabels predict",
                      "the model's automatic size, recorded by lazylabels predict", link_default=None)
    ins.set_defaults(func=cmd_instances)
    e = sub.add_parser("evaluate", help="dice, object F1 and interface scores against masks",
                       epilog=EPILOG_EVALUATE, formatter_class=fmt)
    e.add_argument("pred_dir")
    e.add_argument("gt_dir")
    e.add_argument("--json", help="also write all scores to this JSON file")
    e.set_defaults(func=cmd_evaluate)

    g = sub.add_parser("grabcut", help="turn detection marks into exact masks (task 3) with GrabCut",
                       formatter_class=fmt,
                       epilog="example:\n  lazylabels grabcut runs/lazy --images img_01 img_02\n")
    g.add_argument("dataset")
    g.add_argument("--images", nargs="*", help="only these image stems (default: all without masks)")
    g.add_argument("--overwrite", action="store_true", help="also redo images that have masks")
    g.add_argument("--out", help="write to another dataset folder instead of in place")
    g.set_defaults(func=cmd_grabcut)

    d = sub.add_parser("demo", help="train and predict on the bundled sample data",
                       epilog=EPILOG_DEMO, formatter_class=fmt)
    d.add_argument("--out", default="demo-run")
    d.add_argument("--minutes", type=float, default=3.0)
    d.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    _setup_logging(a.verbose)
    from .core.runfolder import FolderBusyError

    previous = None
    if hasattr(signal, "SIGTERM") and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        try:  # only the main thread may set handlers
            previous = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:
            previous = None
    try:
        return a.func(a)
    except (ValueError, FolderBusyError, FloatingPointError) as e:
        log.error("%s", e)
        return 2
    except OSError as e:  # full disk, read-only folder, --out that is a file, missing input
        log.error("%s", describe_os_error(e))
        return 2
    except Terminated:
        log.error("terminated; files written so far are kept, temporary files removed")
        return 143
    except KeyboardInterrupt:
        log.error("interrupted; checkpoints written so far are kept")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
