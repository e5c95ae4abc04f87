"""Prediction files: what ``lazylabels predict`` writes, and cutting the instances again.

:func:`predict_file` predicts one image into a folder (class map, instances, interface and
probability maps, each written atomically; float maps of large images through memory-mapped
temporary files into tiled TIFFs). :func:`save_prediction_settings` records how the folder's
instances were cut, so :func:`resplit_folder` can cut them again from the written maps
without the network.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from .instances import instances_from_prediction, recorded_instance_settings
from .io import (
    as_image,
    atomic_path,
    atomic_write_json,
    read_image,
    read_label,
    write_image,
    write_label,
)
from .jobs import Progress
from .labels import n_task_classes
from .pixelsize import PixelSize, read_pixel_size, write_ome_labels
from .predictor import (
    INTERFACES,
    LARGE_IMAGE_PIXELS,
    PROBABILITIES,
    PredictConfig,
    Prediction,
    Predictor,
)
from .runfolder import check_writable, folder_lock
from .stacks import StackIds, slice_groups, stack_name

log = logging.getLogger(__name__)

PREDICTION_SETTINGS = "lazylabels-predict.json"
"""The record of a prediction folder (see :func:`save_prediction_settings`)."""


def _atomic_tiff(path: Path, arr: np.ndarray, rows: int = 256) -> Path:
    """Stream ``(H, W)`` or ``(K, H, W)`` float array (e.g. a memmap) into a tiled, zlib
    compressed TIFF, reading ``rows`` rows at a time; written to a temporary file next to
    ``path`` that then replaces it."""
    import tifffile

    shape = tuple(arr.shape)
    pages = arr[None] if arr.ndim == 2 else arr
    k, h, w = pages.shape

    def tiles():
        for p in range(k):
            for y in range(0, h, rows):
                strip = np.ascontiguousarray(pages[p, y : y + rows])
                for x in range(0, w, rows):
                    yield strip[:, x : x + rows]

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp,
            tiles(),
            shape=shape,
            dtype=arr.dtype,
            tile=(rows, rows),
            compression="zlib",
            photometric="minisblack",
        )
    return path


def write_instances(out_dir: str | os.PathLike, stem: str, instances: np.ndarray) -> Path:
    """Write ``<stem>_instances.png`` (16-bit, under 65536 objects) or ``<stem>_instances.tif``
    (int32) atomically, removing the other one if an earlier run left it.

    Returns:
        the path written.
    """
    out_dir = Path(out_dir)
    png, tif = out_dir / f"{stem}_instances.png", out_dir / f"{stem}_instances.tif"
    if int(instances.max(initial=0)) < 65536:
        path, stale = write_image(png, instances.astype(np.uint16)), tif
    else:
        path, stale = write_image(tif, np.asarray(instances, np.int32)), png
    stale.unlink(missing_ok=True)
    return path


def save_prediction_settings(out_dir: str | os.PathLike, predictor: Predictor, model: str | None = None) -> Path:
    """Write ``out_dir/lazylabels-predict.json``: the model, its test-time orientations
    (``tta``; ``large_image_tta`` above ``large_image_pixels``) and how instances were cut
    (``interface_threshold`` and ``min_object_size`` used, the model's own
    ``auto_interface_threshold`` and ``auto_min_object_size``, ``neck_depth``,
    ``seed_probability``), so :func:`resplit_folder` can start from them."""
    return atomic_write_json(
        Path(out_dir) / PREDICTION_SETTINGS,
        {"model": None if model is None else str(model), "tta": predictor.predict_config.tta,
         "large_image_tta": predictor.predict_config.large_image_tta,
         "large_image_pixels": predictor.predict_config.large_image_pixels,
         **predictor.instance_settings()},
    )


# --------------------------------------------------------------------------- whole images
WHOLE_IMAGE_KINDS = ("classes", "instances")
"""The maps :func:`write_whole_image_outputs` writes as ``<stem>_<kind>.ome.tif``."""


def write_whole_image_outputs(
    out_dir: str | os.PathLike, stem: str, slice_stems: list[str], pixel_size: PixelSize | None
) -> list[Path]:
    """Write ``<stem>_classes.ome.tif`` and ``<stem>_instances.ome.tif``: the class and
    instance maps of one input file, a ``(Z, Y, X)`` stack for a stack's slices
    (``slice_stems`` in order) or ``(Y, X)``, with the file's physical pixel size.

    The per-slice files that :func:`predict_file` wrote stay the folder's working files
    (``lazylabels evaluate`` and ``instances`` read them); these are what a viewer opens at the
    image's scale. Built from those files one plane at a time (bounded memory), atomically.
    """
    out_dir = Path(out_dir)
    written = [_write_whole(out_dir, stem, slice_stems, kind, pixel_size) for kind in WHOLE_IMAGE_KINDS]
    return [p for p in written if p is not None]


def _write_whole(out_dir: Path, stem: str, slice_stems: list[str], kind: str, pixel_size: PixelSize | None) -> Path | None:
    """``<stem>_<kind>.ome.tif`` from the slices' ``<slice>_<kind>.png|.tif`` (``None``
    where a slice has none)."""
    files = [_slice_file(out_dir, s, kind) for s in slice_stems]
    if any(f is None for f in files):
        return None
    first = read_label(files[0])
    dtype = np.uint32 if any(f.suffix == ".tif" for f in files) else first.dtype
    shape = (len(files), *first.shape) if len(files) > 1 else first.shape
    planes = (np.asarray(read_label(f), dtype) for f in files)
    return write_ome_labels(out_dir / f"{stem}_{kind}.ome.tif", planes, pixel_size, shape, dtype)


def remove_whole_image_outputs(out_dir: str | os.PathLike, stem: str) -> None:
    """Remove ``<stem>_{classes,instances}.ome.tif`` that an earlier prediction left (this
    one writes none: they would show another prediction)."""
    for kind in WHOLE_IMAGE_KINDS:
        old = Path(out_dir) / f"{stem}_{kind}.ome.tif"
        if old.exists():
            old.unlink()
            log.info("Removed %s, left by an earlier prediction", old.name)


def _slice_file(out_dir: Path, stem: str, kind: str) -> Path | None:
    for suffix in (".png", ".tif"):
        if (out_dir / f"{stem}_{kind}{suffix}").exists():
            return out_dir / f"{stem}_{kind}{suffix}"
    return None


def _rewrite_whole_instances(out_dir: Path, group: list[str]) -> None:
    """After a re-cut: the group's ``<stem>_instances.ome.tif``, if one was written, again
    (with the pixel size it has)."""
    stem = stack_name(group[0]) if len(group) > 1 else group[0]
    path = out_dir / f"{stem}_instances.ome.tif"
    if path.exists():
        _write_whole(out_dir, stem, group, "instances", read_pixel_size(path))


# --------------------------------------------------------------------------- cut again
def resplit_folder(
    pred_dir: str | os.PathLike,
    interface_threshold: float | None = None,
    min_object_size: int | None = None,
    neck_depth: float = 0.0,
    stems: Iterable[str] | None = None,
    link_slices: bool | None = None,
) -> list[Path]:
    """Cut the instances of predictions already written by :func:`predict_file` again.

    For every ``<stem>_classes.png`` in ``pred_dir`` (or those of ``stems``), the instances
    are computed from it and ``<stem>_interfaces.tif`` (when there) with
    :func:`~napari_lazylabels.core.instances.instances_from_prediction`, and
    ``<stem>_instances.*`` is rewritten atomically. No network runs: changing how objects are
    cut takes seconds instead of a new prediction.

    Args:
        pred_dir: a folder written by ``lazylabels predict`` / :func:`predict_file`.
        interface_threshold: see :class:`~napari_lazylabels.core.predictor.PredictConfig`;
            ``None``: the model's own, read from ``lazylabels-predict.json`` (0.5 without that
            file).
        neck_depth: see :class:`~napari_lazylabels.core.predictor.PredictConfig`.
        min_object_size: smallest object in pixels; ``None``: the model's automatic size,
            read from ``lazylabels-predict.json`` (16 px without that file).
        stems: only these images (default: all). The slices of a stack (``x_z000``,
            ``x_z001``, ...) are cut together, in order, so that their ids stay unique across
            the stack (:class:`~napari_lazylabels.core.stacks.StackIds`); asking for one slice
            cuts its whole stack.
        link_slices: see :attr:`~napari_lazylabels.core.predictor.PredictConfig.link_slices`;
            ``None``: as recorded when the folder was predicted (off without a record).

    Returns:
        the instance files written.

    Raises:
        FileNotFoundError: no ``*_classes.png`` (or a requested stem's) in ``pred_dir``.
    """
    # the same checks and messages as a prediction's settings
    PredictConfig(interface_threshold=interface_threshold, min_object_size=min_object_size, neck_depth=neck_depth)
    pred_dir = Path(pred_dir)
    settings = _read_settings(pred_dir / PREDICTION_SETTINGS)
    interface_threshold, min_object_size = recorded_instance_settings(settings, interface_threshold, min_object_size)
    if link_slices is None:
        link_slices = bool(settings.get("link_slices", False))
    found = _class_maps(pred_dir, None)
    wanted = _class_maps(pred_dir, stems)
    groups = [g for g in slice_groups(found) if any(stem in wanted for stem in g)]
    written = []
    with folder_lock(pred_dir, "instances"):
        for group in groups:
            ids = StackIds(link_slices)
            for stem in group:
                classes = read_label(found[stem])
                itf_path = pred_dir / f"{stem}_interfaces.tif"
                interfaces = read_image(itf_path) if itf_path.exists() else None
                inst = instances_from_prediction(
                    classes, interfaces, interface_threshold, min_object_size, neck_depth=neck_depth
                )
                log.info("%s: %d instances", stem, int(inst.max(initial=0)))  # numbered 1..n here
                written.append(write_instances(pred_dir, stem, ids.add(inst) if len(group) > 1 else inst))
            _rewrite_whole_instances(pred_dir, group)
        settings.update(interface_threshold=interface_threshold, min_object_size=min_object_size,
                        neck_depth=neck_depth, seed_probability=None, link_slices=link_slices)
        atomic_write_json(pred_dir / PREDICTION_SETTINGS, settings)
    return written


def _read_settings(path: Path) -> dict:
    """A prediction folder's record (``{}`` without one); keys it does not know are kept and
    ignored.

    Raises:
        ValueError: the file is not a JSON object (the message says what to do).
    """
    try:
        settings = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); delete it to cut with the default settings, "
            "or predict again."
        ) from e
    if not isinstance(settings, dict):
        raise ValueError(f"{path} is not a lazylabels predict record; delete it or predict again.")
    return settings


def _class_maps(pred_dir: Path, stems: Iterable[str] | None) -> dict[str, Path]:
    """``{stem: <stem>_classes.png}`` of ``pred_dir``, of ``stems`` only when given.

    Raises:
        FileNotFoundError: none, or a stem of ``stems`` without one.
    """
    found = {p.name[: -len("_classes.png")]: p for p in sorted(pred_dir.glob("*_classes.png"))}
    if stems is not None:
        missing = [s for s in stems if s not in found]
        if missing:
            raise FileNotFoundError(f"No predictions of {missing} in {pred_dir}: run lazylabels predict first.")
        found = {s: found[s] for s in stems}
    if not found:
        if any(pred_dir.glob("*.ome.zarr")):
            raise FileNotFoundError(
                f"{pred_dir} holds only OME-Zarr predictions (images predicted block by block): cut them "
                "again with `lazylabels instances` or blocks.iter_resplit_ome_zarr."
            )
        raise FileNotFoundError(
            f"No *_classes.png in {pred_dir}: give the --out folder of lazylabels predict."
        )
    return found


# --------------------------------------------------------------------------- predict
def predict_file(
    predictor: Predictor,
    image_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    save_probabilities: bool | None = None,
    instances: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[Progress], None] | None = None,
    large_pixels: int = LARGE_IMAGE_PIXELS,
    image: np.ndarray | None = None,
    stem: str | None = None,
    stack_ids: StackIds | None = None,
) -> dict[str, Path]:
    """Predict an image file and write the results next to each other in ``out_dir``.

    ``image`` and ``stem`` override the pixels and the output name (used for the slices of a
    stack, see :func:`napari_lazylabels.core.io.read_images`); ``stack_ids``, the same
    :class:`~napari_lazylabels.core.stacks.StackIds` for every slice of a stack in order,
    numbers its instances uniquely across the stack.

    Files (``<stem>`` is the image's file stem), each written atomically:

    * ``<stem>_classes.png``: class map, 8-bit (16-bit for > 256 classes).
    * ``<stem>_instances.png`` 16-bit when there are fewer than 65536 instances, else
      ``<stem>_instances.tif`` (int32).
    * ``<stem>_interfaces.tif``: float32 interface probability (with a separation head).
    * ``<stem>_probabilities.tif``: ``(K, H, W)`` float32, if ``save_probabilities``
      (default: the predictor's ``PredictConfig.save_probabilities``).

    For images above ``large_pixels`` the float maps live in memory-mapped temporary files in
    ``out_dir`` (removed afterwards) and are streamed into tiled TIFFs, so the float maps
    never need to fit in RAM; the input image, class and instance maps do.

    ``out_dir`` is locked while the image is predicted
    (:func:`napari_lazylabels.core.runfolder.folder_lock`: another process predicting into it
    is refused, and temporary files that a killed run left there are removed first). An
    earlier prediction's ``<stem>_*`` file of a kind this one does not write (interfaces of a
    model without a separation head, probabilities when not saved) is removed, so the folder
    never mixes two models' outputs for one image.

    Returns:
        ``{"classes": path, "instances": path, "interfaces": path, "probabilities": path}``
        for the files written.
    """
    image_path, out_dir = Path(image_path), check_writable(out_dir)
    if save_probabilities is None:
        save_probabilities = predictor.predict_config.save_probabilities
    stem = stem or image_path.stem
    image = read_image(image_path) if image is None else as_image(image, what=f"image {stem}")
    h, w = image.shape[:2]
    temps: list[Path] = []
    outputs: dict[str, np.ndarray] = {}
    pred = None
    with folder_lock(out_dir, "predict"):
        try:
            if h * w > large_pixels:
                _add_memmaps(outputs, temps, predictor, out_dir, stem, (h, w))
                log.info("Large image %s (%dx%d): float maps memory-mapped in %s", image_path.name, h, w, out_dir)
            pred = predictor.predict(
                image, outputs, should_stop=should_stop, progress=progress, instances=instances
            )
            if stack_ids is not None and pred.instances is not None:
                pred.instances = stack_ids.add(pred.instances)
            # float maps that are memmaps are streamed
            written = _write_prediction(pred, out_dir, stem, bool(outputs), save_probabilities)
            _remove_stale_outputs(out_dir, stem, written)
        finally:
            outputs.clear()  # drop the memmaps before removing their files
            pred = None
            _remove_temps(temps)
    log.info("Wrote %s", ", ".join(str(p.name) for p in written.values()))
    return written


def _add_memmaps(
    outputs: dict[str, np.ndarray],
    temps: list[Path],
    predictor: Predictor,
    out_dir: Path,
    stem: str,
    shape: tuple[int, int],
) -> None:
    """Add memory-mapped float maps to ``outputs``: probabilities ``(K, H, W)`` and, with a
    separation head, interfaces ``(H, W)``; each file is listed in ``temps`` as soon as it
    exists, so the caller removes it whatever happens."""
    k = n_task_classes(predictor.main_task, predictor.config.n_classes)

    def memmap(name: str, shape) -> np.ndarray:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}_{name}.", suffix=".f32.tmp", dir=out_dir)
        temps.append(Path(tmp))
        os.close(fd)
        return np.memmap(tmp, dtype=np.float32, mode="w+", shape=shape)

    outputs[PROBABILITIES] = memmap(PROBABILITIES, (k, *shape))
    if predictor.has_interfaces:
        outputs[INTERFACES] = memmap(INTERFACES, shape)


def _write_prediction(
    pred: Prediction, out_dir: Path, stem: str, large: bool, save_probabilities: bool
) -> dict[str, Path]:
    """Write ``pred``'s files (see :func:`predict_file`); ``large``: its float maps are
    memmaps, streamed into tiled TIFFs. Returns ``{kind: path}`` of the files written."""
    written = {"classes": write_label(out_dir / f"{stem}_classes.png", pred.classes)}
    if pred.instances is not None:
        written["instances"] = write_instances(out_dir, stem, pred.instances)
    if pred.interfaces is not None:
        target = out_dir / f"{stem}_interfaces.tif"
        written["interfaces"] = (
            _atomic_tiff(target, pred.interfaces) if large else write_image(target, pred.interfaces)
        )
    if save_probabilities:
        # Own streaming writer: pages stay MINISBLACK (a 3-class stack is not RGB).
        written["probabilities"] = _atomic_tiff(out_dir / f"{stem}_probabilities.tif", pred.probabilities)
    return written


def _remove_temps(temps: list[Path]) -> None:
    """Remove the memory-mapped temporary files (a warning where the system refuses)."""
    for tmp in temps:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # e.g. still mapped on Windows
            log.warning("Could not remove temporary file %s: %s", tmp, e)


def _remove_stale_outputs(out_dir: Path, stem: str, written: dict[str, Path]) -> None:
    """Remove ``<stem>_{instances,interfaces,probabilities}.*`` files that this prediction did
    not write: an earlier run's, whose model they no longer match."""
    for kind in ("instances", INTERFACES, PROBABILITIES):
        if kind in written:
            continue
        for suffix in (".png", ".tif"):
            old = out_dir / f"{stem}_{kind}{suffix}"
            if old.exists():
                old.unlink()
                log.info("Removed %s, left by an earlier prediction", old.name)
