"""A trained network over whole images: :class:`Predictor` and its :class:`PredictConfig`.

:meth:`Predictor.predict_iter` normalises the image (at the model's working scale), runs the
network tile by tile (:mod:`~napari_lazylabels.core.tiling`), each tile in up to 8 orientations
(test-time augmentation, :func:`dihedral`), resizes the maps back to the image, takes the
class map and cuts instances (:mod:`~napari_lazylabels.core.instances`). It is a job
(:mod:`~napari_lazylabels.core.jobs`): a generator of progress events that returns the
:class:`Prediction`.

What memory is not bounded: the input image itself, the class map (1-2 bytes per pixel), the
instance map (4 bytes per pixel) and the instance step's temporaries. The float maps may be
memory-mapped arrays the caller preallocates (:func:`~napari_lazylabels.core.outputs.predict_file`
does for large images). Images larger than memory are predicted block by block from lazy arrays
(:mod:`~napari_lazylabels.core.blocks`), each block through this predictor.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import model as model_lib
from .instances import (
    auto_interface_threshold,
    auto_min_object_size,
    iter_instances_from_prediction,
)
from .io import MAX_CHANNELS, as_image
from .jobs import Cancelled, Progress, drive, stoppable
from .labels import DETECTION, SEGMENTATION, SEPARATION, n_task_classes
from .model import ModelConfig
from .options import DEFAULT_TTA, LARGE_IMAGE_TTA, LARGE_TTA_PIXELS, TTA_CHOICES
from .prepare import NormalizedSource, check_channels, image_value_range, prepare_image
from .stacks import StackIds
from .tiling import (
    Forward,
    TileSource,
    iter_argmax_rows,
    iter_resize_maps,
    iter_sliding_window,
)

log = logging.getLogger(__name__)

PROBABILITIES = "probabilities"
"""Name of the class probabilities ``(K, H, W)`` among the float maps (and output files)."""
INTERFACES = "interfaces"
"""Name of the interface probability ``(1, H, W)`` among the float maps (and output files)."""
DETECTION_OUT = "detection"
"""Name of the detection head's probabilities ``(K, H, W)`` among the float maps."""

EAGER_NORMALIZE_BYTES = 256 * 2**20
"""Images whose normalised float32 copy is at most this big are normalised once up front;
larger ones are normalised tile by tile while windowing."""

LARGE_IMAGE_PIXELS = 50_000_000
"""Above this many pixels the float maps are kept in memory-mapped files (the working-scale
maps of :class:`Predictor`, the maps :func:`~napari_lazylabels.core.outputs.predict_file`
writes)."""

def dihedral(x: torch.Tensor, k: int, inverse: bool = False) -> torch.Tensor:
    """The ``k``-th of the 8 flips/transpositions of the last two axes (``k = 0`` identity;
    1 mirror left-right, 2 up-down, 3 both, 4-7 the same after a transposition), or its
    inverse. ``(..., H, W)`` -> ``(..., H, W)`` (``(..., W, H)`` for ``k >= 4``)."""
    if not 0 <= k < 8:
        raise ValueError(f"k must be in 0..7, got {k}.")
    dims = [d for bit, d in ((1, -1), (2, -2)) if k & bit]
    transpose = k >= 4
    if inverse and transpose:
        x = x.transpose(-1, -2)
    if dims:
        x = torch.flip(x, dims)
    if not inverse and transpose:
        x = x.transpose(-1, -2)
    return x


@dataclass(frozen=True)
class PredictConfig:
    """How to predict.

    Args:
        tile: patch side (paper: 256).
        overlap: overlap of neighbouring patches, fraction of ``tile``.
        batch_size: patches per forward pass.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        amp: autocast (bf16 where supported, see :func:`model.autocast_dtype`).
        channels_last: use the channels-last memory format.
        fuse_batchnorm: predict with a copy of the network whose BatchNorm layers are folded
            into their convolutions (:func:`model.fuse_batchnorm`: same maps up to rounding,
            one pass over every feature map less).
        interface_threshold: interface probability that separates objects, in (0, 1]; ``None``
            (default): the model's own (:attr:`ModelConfig.interface_threshold`, chosen on its
            exact masks when training ended), else 0.5. Raise it when single objects come out
            cut in pieces, lower it when touching objects stay merged; the best value depends
            on the model (docs/benchmarks.md).
        min_object_size: instances smaller than this (pixels) are removed; ``None``
            (default): a tenth of the area of the model's typical object
            (:attr:`ModelConfig.object_diameter`, measured on its training labels), at least
            16 px, or 16 px when the model does not know its objects' size. Specks far smaller
            than the objects are noise, not objects (docs/benchmarks.md).
        save_probabilities: :func:`~napari_lazylabels.core.outputs.predict_file` also writes
            the probability maps.
        keep_interfaces: compute the separation head's interface map (models with one).
            ``False`` skips the separation decoder when only the class map is wanted
            (training's validation does); instances are then plain connected components.
        seed_probability: instances also split where the class probability drops below
            this (see :func:`~napari_lazylabels.core.instances.instances_from_prediction`);
            ``None`` (default) splits at predicted interfaces only, as the paper does.
        neck_depth: instances also split at necks this many pixels (at the image's
            resolution) shallower than the objects' centres (see
            :func:`~napari_lazylabels.core.instances.instances_from_prediction`); 0 (default)
            turns it off. For round touching objects (nuclei) about a tenth of their radius.
        tta: test-time augmentation: every tile is predicted in this many orientations
            (1 = as is, 2 = + mirrored left-right, 4 (default) = + mirrored up-down and both,
            8 = + the four transposed ones) and the class (and detection) probabilities,
            mapped back, are averaged; prediction takes ``tta`` times as long. The network is
            trained on flipped and rotated patches, so each orientation is an equally good
            guess and their mean a better one (docs/benchmarks.md). The interface map stays
            that of the image as is: interfaces are lines a pixel or two wide that shift
            between orientations, so their mean blurs them below the threshold tuned for the
            model.
        large_image_tta: orientations for images above ``large_image_pixels`` (at most
            ``tta``); ``None``: ``tta`` whatever the size. Prediction time grows with the
            pixels times the orientations, while the accuracy more orientations add does not
            grow with the image (docs/benchmarks.md, "Orientations for large images"); a
            caller that sets ``tta`` explicitly for every image (the CLI's ``--tta``) sets
            this to ``None``.
        large_image_pixels: images with more pixels (at the working scale) than this are
            predicted in ``large_image_tta`` orientations.
        link_slices: in a stack (:meth:`Predictor.iter_stack`), an object that overlaps an
            object of the slice before (intersection over union above 0.5) keeps its id, so
            one cell through a Z stack or one nucleus over time is one label; otherwise
            (default) every object of every slice gets its own id. Either way ids are unique
            across the stack (:class:`~napari_lazylabels.core.stacks.StackIds`).

    The Gaussian blending width is not a setting: it is
    :data:`~napari_lazylabels.core.tiling.SIGMA_SCALE` (experiments vary it through
    :func:`~napari_lazylabels.core.tiling.sliding_window`).
    """

    tile: int = 256
    overlap: float = 0.25
    batch_size: int = 8
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    fuse_batchnorm: bool = True
    interface_threshold: float | None = None
    min_object_size: int | None = None
    save_probabilities: bool = True
    keep_interfaces: bool = True
    seed_probability: float | None = None
    neck_depth: float = 0.0
    tta: int = DEFAULT_TTA
    large_image_tta: int | None = LARGE_IMAGE_TTA
    large_image_pixels: int = LARGE_TTA_PIXELS
    link_slices: bool = False

    def __post_init__(self) -> None:
        if self.tta not in TTA_CHOICES:
            raise ValueError(f"tta is a number of orientations, one of {TTA_CHOICES}; got {self.tta}.")
        if self.large_image_tta is not None and self.large_image_tta not in TTA_CHOICES:
            raise ValueError(
                f"large_image_tta is a number of orientations, one of {TTA_CHOICES} (or None); "
                f"got {self.large_image_tta}."
            )
        if self.large_image_pixels < 0:
            raise ValueError(f"large_image_pixels is a number of pixels >= 0, got {self.large_image_pixels}.")
        if self.interface_threshold is not None and not 0 < self.interface_threshold <= 1:
            raise ValueError(
                f"interface_threshold is a probability in (0, 1], got {self.interface_threshold}."
            )
        if self.min_object_size is not None and self.min_object_size < 0:
            raise ValueError(f"min_object_size is a number of pixels >= 0, got {self.min_object_size}.")
        if self.neck_depth < 0:
            raise ValueError(f"neck_depth is a depth in pixels >= 0, got {self.neck_depth}.")
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}.")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap is a fraction of the tile in [0, 1), got {self.overlap}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")


@dataclass
class Prediction:
    """A model's prediction for one 2D image.

    Attributes:
        probabilities: ``(K, H, W)`` float32 softmax of the segmentation head (of the one
            head of a single-task U-net). May be an ``np.memmap``.
        classes: ``(H, W)`` uint8 (uint16 for > 256 classes) argmax; 0 = background.
        interfaces: ``(H, W)`` float32 interface probability, ``None`` without a
            separation head.
        instances: ``(H, W)`` int32 instance ids (0 = none), or ``None`` if not computed.
        detection: ``(K, H, W)`` float32 detection probabilities, or ``None``.
    """

    probabilities: np.ndarray
    classes: np.ndarray
    interfaces: np.ndarray | None = None
    instances: np.ndarray | None = None
    detection: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.classes.shape)


class Predictor:
    """Runs a trained network over whole images.

    Args:
        model: a network from :func:`model.build_model`; it is moved to the device and put
            in eval mode (call ``model.train()`` again before training it further).
        config: the model's :class:`ModelConfig`.
        predict_config: tiling, device and post-processing options.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        predict_config: PredictConfig = PredictConfig(),
        keep_detection: bool = False,
    ) -> None:
        """Args:
            keep_detection: also return the detection head's probabilities (multi-task);
                the benchmarks that compare the heads ask for it, the product never does.
        """
        self.config = config
        self.predict_config = predict_config
        self.device = model_lib.resolve_device(predict_config.device)
        self.amp_dtype = model_lib.autocast_dtype(self.device) if predict_config.amp else None
        self._autocast = model_lib.autocast(self.device, self.amp_dtype)
        self.model = model.to(self.device).eval()
        if predict_config.fuse_batchnorm:
            self.model = model_lib.fuse_batchnorm(self.model)
        if predict_config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        tasks = config.tasks
        self.main_task = (
            SEGMENTATION
            if SEGMENTATION in tasks
            else (DETECTION if DETECTION in tasks else tasks[0])
        )
        self.has_interfaces = predict_config.keep_interfaces and SEPARATION in tasks
        self.has_detection = (
            keep_detection and DETECTION in tasks and self.main_task != DETECTION
        )
        # Our networks compute only the heads asked for; any other module gets the plain call.
        self._selects_heads = "tasks" in inspect.signature(self.model.forward).parameters

    # ------------------------------------------------------------------ settings
    @property
    def min_object_size(self) -> int:
        """Smallest instance kept, in pixels (see :attr:`PredictConfig.min_object_size`)."""
        return auto_min_object_size(self.config, self.predict_config.min_object_size)

    @property
    def interface_threshold(self) -> float:
        """Interface probability that cuts objects (see :attr:`PredictConfig.interface_threshold`)."""
        return auto_interface_threshold(self.config, self.predict_config.interface_threshold)

    def instance_settings(self) -> dict:
        """How this predictor cuts instances, and the model's own values for "auto":
        ``interface_threshold``, ``auto_interface_threshold``, ``min_object_size``,
        ``auto_min_object_size``, ``neck_depth``, ``seed_probability``, ``link_slices`` (recorded with
        predictions so that
        :func:`~napari_lazylabels.core.instances.recorded_instance_settings` can re-cut them
        later)."""
        pc = self.predict_config
        return {
            "interface_threshold": self.interface_threshold,
            "auto_interface_threshold": auto_interface_threshold(self.config),
            "min_object_size": self.min_object_size,
            "auto_min_object_size": auto_min_object_size(self.config),
            "neck_depth": pc.neck_depth,
            "seed_probability": pc.seed_probability,
            "link_slices": pc.link_slices,
        }

    def orientations(self, shape: tuple[int, ...]) -> int:
        """Orientations each tile of an image of ``shape`` ``(H, W[, C])`` at the working scale
        is predicted in: :attr:`PredictConfig.tta`, or :attr:`PredictConfig.large_image_tta`
        (when fewer) above :attr:`PredictConfig.large_image_pixels`."""
        pc = self.predict_config
        if pc.large_image_tta is None or shape[0] * shape[1] <= pc.large_image_pixels:
            return pc.tta
        return min(pc.tta, pc.large_image_tta)

    # ------------------------------------------------------------------ network
    def _heads(self, first: bool) -> tuple[str, ...]:
        """The heads one orientation needs: the class map's, the detection head's if kept, and
        the separation head's in the first orientation only (interfaces are not averaged), so
        the network skips the paths of the others."""
        heads = [self.main_task]
        if self.has_detection:
            heads.append(DETECTION)
        if self.has_interfaces and first:
            heads.append(SEPARATION)
        return tuple(heads)

    def forward(
        self, x: torch.Tensor, should_stop: Callable[[], bool] | None = None, tta: int | None = None
    ) -> dict[str, torch.Tensor]:
        """Probabilities for a batch of normalised tiles.

        Args:
            x: ``(B, C, P, P)`` float32.
            should_stop: asked before each orientation's pass; raises
                :class:`~napari_lazylabels.core.jobs.Cancelled`, so a Stop waits for
                one pass, not the batch's ``tta`` passes.
            tta: orientations (default :attr:`PredictConfig.tta`).

        Returns:
            ``{"probabilities": (B, K, P, P), "interfaces": (B, 1, P, P) (with a separation
            head), "detection": (B, K, P, P) (if kept)}`` float32 on the model's device;
            class and detection probabilities are the mean over the orientations.
        """
        x = x.to(self.device, non_blocking=True)
        if self.predict_config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        n = self.predict_config.tta if tta is None else tta
        out: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for k in range(n):
                if should_stop is not None and should_stop():
                    raise Cancelled("Prediction cancelled.")
                for name, p in self._orientation(x, k).items():
                    p = dihedral(p, k, inverse=True)
                    out[name] = p if name not in out else out[name].add_(p)
            if n > 1:
                for name, p in out.items():
                    if name != INTERFACES:
                        p.div_(n)
        return out

    def _orientation(self, x: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Probabilities of the ``k``-th orientation of ``x`` (:func:`dihedral`), in that
        orientation: the class map's, the detection head's if kept, the interfaces for
        ``k == 0``."""
        xk = dihedral(x, k)
        if k and self.predict_config.channels_last:
            xk = xk.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            logits = self.model(xk, self._heads(first=k == 0)) if self._selects_heads else self.model(xk)
        probs = {PROBABILITIES: torch.softmax(logits[self.main_task].float(), 1)}
        if self.has_interfaces and k == 0:
            probs[INTERFACES] = torch.softmax(logits[SEPARATION].float(), 1)[:, 1:2]
        if self.has_detection:
            probs[DETECTION_OUT] = torch.softmax(logits[DETECTION].float(), 1)
        return probs

    # ------------------------------------------------------------------ input
    def check(self, image: np.ndarray, what: str = "the image") -> None:
        """Refuse, before any work, an image whose channels the model does not take: a
        ``ValueError`` of one line that says what to do
        (:func:`~napari_lazylabels.core.prepare.check_channels`)."""
        c = self.config
        check_channels(image, c.in_channels, c.channels, c.source_channels, what)

    def prepare(self, image: np.ndarray, value_range=None) -> np.ndarray | TileSource:
        """Validate and normalise an image for the network, as training does
        (:func:`~napari_lazylabels.core.prepare.prepare_image`): the intensity range from the
        image at its own resolution, then the working scale; images whose float32 copy is
        above :data:`EAGER_NORMALIZE_BYTES` are normalised tile by tile.

        Args:
            image: ``(H, W)`` or ``(H, W, C)``, any dtype.
            value_range: the intensity range to normalise with instead of the image's own
                (:meth:`value_range` of the whole image, for one block of it).

        Returns:
            ``(C, H, W)`` float32 array (at the model's working scale) or a lazy
            :class:`~napari_lazylabels.core.prepare.NormalizedSource`.

        Raises:
            ValueError: an image whose channels the model does not take (one line saying
                what to do; :meth:`check`), or an invalid image.
        """
        c = self.config
        src = prepare_image(
            image, c.in_channels, c.norm_percentiles, c.scale, eager_bytes=EAGER_NORMALIZE_BYTES,
            channels=c.channels, source_channels=c.source_channels, value_range=value_range,
        )
        if isinstance(src, NormalizedSource):
            log.info("Normalising a %dx%d image tile by tile (range %s)", *src.shape[1:], src.value_range)
        return src

    def value_range(self, image):
        """The intensity range :meth:`prepare` takes from ``image`` ``(H, W[, C])``, read from
        a subsample of a lazy array (zarr, dask, memory map) without loading it
        (:func:`~napari_lazylabels.core.prepare.image_value_range`)."""
        c = self.config
        return image_value_range(image, c.in_channels, c.norm_percentiles, c.channels, c.source_channels)

    # ------------------------------------------------------------------ prediction
    def predict_iter(
        self,
        image: np.ndarray,
        outputs: dict[str, np.ndarray] | None = None,
        instances: bool = True,
        should_stop: Callable[[], bool] | None = None,
        value_range=None,
    ) -> Iterator[Progress]:
        """Predict one image step by step: a job (:mod:`~napari_lazylabels.core.jobs`).

        Yields ``Progress("tiles", done_tiles, total_tiles)`` after every batch of tiles, then a
        :class:`~napari_lazylabels.core.jobs.Progress` for each step after the tiles
        (``"resizing"`` at a working scale, ``"classes"``, ``"instances"``; at least every
        :data:`~napari_lazylabels.core.jobs.PHASE_SECONDS` of work), and *returns* the
        :class:`Prediction` (a ``GeneratorWorker``'s ``returned`` signal carries it). A
        consumer can stop at any yield (``worker.quit()``, ``generator.close()``); nothing is
        left half-written except ``outputs``.

        Args:
            image: ``(H, W)`` or ``(H, W, C)``.
            outputs: optional preallocated float32 arrays (e.g. ``np.memmap``):
                ``"probabilities"`` ``(K, H, W)``, ``"interfaces"`` ``(H, W)``,
                ``"detection"`` ``(K, H, W)``.
            instances: also compute instances
                (:func:`~napari_lazylabels.core.instances.instances_from_prediction`).
            should_stop: asked at every event and between the orientations of a batch of
                tiles, for a Stop that does not wait for a whole batch; raises
                :class:`~napari_lazylabels.core.jobs.Cancelled` (nothing partial is returned).
            value_range: the intensity range to normalise with (:meth:`value_range` of the
                larger image ``image`` is part of: a crop, a block); default the image's own.

        Returns:
            the :class:`Prediction`.
        """
        return (yield from stoppable(self._predict(image, outputs, instances, should_stop, value_range), should_stop))

    def _predict(
        self,
        image: np.ndarray,
        outputs: dict[str, np.ndarray] | None,
        instances: bool,
        should_stop: Callable[[], bool] | None,
        value_range=None,
        orientations: int | None = None,
    ) -> Iterator[Progress]:
        """:meth:`predict_iter`'s job: prepare, tiles (and resizing), post-processing.

        ``value_range`` and ``orientations`` replace the image's own (those of the whole image
        when ``image`` is one block of it, :mod:`~napari_lazylabels.core.blocks`)."""
        full_shape = as_image(image).shape[:2]
        src = self.prepare(image, value_range)
        n = self.orientations(src.shape[1:]) if orientations is None else orientations
        forward = self._tile_forward(should_stop, n)
        maps = yield from self._iter_maps(src, forward, self._kept(outputs), full_shape)
        del src  # the normalised input (4 bytes per pixel) is not needed after the tiles
        return (yield from self._iter_post_process(maps, instances))

    def _tile_forward(self, should_stop: Callable[[], bool] | None, n: int) -> Forward:
        """The sliding window's ``forward``: :meth:`forward` in ``n`` orientations, checking
        ``should_stop`` between them."""

        def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
            if should_stop is None and n == self.predict_config.tta:  # the plain call (subclasses may override it)
                return self.forward(x)
            return self.forward(x, should_stop=should_stop, tta=n)

        return forward

    def _kept(self, outputs: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
        """A copy of ``outputs`` without the maps this predictor does not compute."""
        outputs = dict(outputs or {})
        for name in list(outputs):
            if (name == INTERFACES and not self.has_interfaces) or (
                name == DETECTION_OUT and not self.has_detection
            ):
                del outputs[name]
        return outputs

    def _iter_maps(
        self,
        src: np.ndarray | TileSource,
        forward: Forward,
        outputs: dict[str, np.ndarray],
        full_shape: tuple[int, int],
    ) -> Iterator[Progress]:
        """Job: the float maps ``{name: (K, H, W)}`` of the image (``outputs``, completed).

        At a working scale other than 1 the tiles fill temporary maps (memory-mapped for large
        images), which are then resized back to the image's ``full_shape``."""
        pc = self.predict_config
        if self.config.scale == 1:
            return (yield from iter_sliding_window(src, forward, outputs, pc.tile, pc.overlap, pc.batch_size))
        with tempfile.TemporaryDirectory(prefix="lazylabels-scaled-") as tmp:
            small = self._working_maps(src.shape[1:], Path(tmp))
            small = yield from iter_sliding_window(src, forward, small, pc.tile, pc.overlap, pc.batch_size)
            for name, arr in small.items():
                dst = outputs.get(name)
                if dst is None:
                    dst = np.empty((arr.shape[0], *full_shape), np.float32)
                outputs[name] = dst
                yield from iter_resize_maps(arr, dst if dst.ndim == 3 else dst[None])
            del small, arr  # release the memory-mapped files before their folder is removed
        return outputs

    def _working_maps(self, shape: tuple[int, int], folder: Path) -> dict[str, np.ndarray]:
        """Float maps at the working scale: plain arrays, or ``np.memmap`` files in ``folder``
        when an image is larger than :data:`LARGE_IMAGE_PIXELS`."""
        names = {PROBABILITIES: n_task_classes(self.main_task, self.config.n_classes)}
        if self.has_interfaces:
            names[INTERFACES] = 1
        if self.has_detection:
            names[DETECTION_OUT] = self.config.n_classes
        if shape[0] * shape[1] <= LARGE_IMAGE_PIXELS:
            return {n: np.empty((k, *shape), np.float32) for n, k in names.items()}
        return {n: np.memmap(folder / f"{n}.f32", np.float32, "w+", shape=(k, *shape)) for n, k in names.items()}

    def _iter_post_process(
        self, maps: dict[str, np.ndarray], instances: bool
    ) -> Iterator[Progress]:
        """Job: the :class:`Prediction` from the float maps: the class map, and the instances
        when asked for."""
        pc = self.predict_config
        probs = maps[PROBABILITIES]
        classes = yield from iter_argmax_rows(probs)
        interfaces = maps.get(INTERFACES)
        if interfaces is not None and interfaces.ndim == 3:
            interfaces = interfaces[0]
        detection = maps.get(DETECTION_OUT)
        if self.main_task == DETECTION:
            detection = probs
        inst = None
        if instances:
            inst = yield from iter_instances_from_prediction(
                classes, interfaces, self.interface_threshold, self.min_object_size,
                probabilities=None if pc.seed_probability is None else probs,
                seed_probability=pc.seed_probability or 0.9, neck_depth=pc.neck_depth,
            )
        return Prediction(probs, classes, interfaces, inst, detection)

    def predict(
        self,
        image: np.ndarray,
        outputs: dict[str, np.ndarray] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[Progress], None] | None = None,
        instances: bool = True,
        value_range=None,
    ) -> Prediction:
        """Predict one 2D image (see :meth:`predict_iter` for the arguments).

        Args:
            should_stop: asked before the work, at every event and between a batch's
                orientations; raises :class:`~napari_lazylabels.core.jobs.Cancelled`.
            progress: called with every :class:`~napari_lazylabels.core.jobs.Progress` event
                (tiles, then the steps after them).

        Returns:
            the :class:`Prediction`.
        """
        if should_stop is not None and should_stop():
            raise Cancelled("Prediction cancelled.")
        return drive(self.predict_iter(image, outputs, instances, should_stop, value_range), progress)

    def predict_stack(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        should_stop: Callable[[], bool] | None = None,
        progress: Callable[[Progress], None] | None = None,
        instances: bool = True,
    ) -> list[Prediction]:
        """Predict a stack of 2D images slice by slice.

        Args:
            images: ``(N, H, W)`` or ``(N, H, W, C)`` array, or a sequence of 2D images.
            should_stop: as :meth:`predict`'s; raises
                :class:`~napari_lazylabels.core.jobs.Cancelled`.
            progress: called with every event of every slice; ``"tiles"`` events count the
                tiles over the whole stack (assuming slices of equal size).
            instances: also compute instances, with ids unique across the stack (linked
                between slices with :attr:`PredictConfig.link_slices`).

        Returns:
            one :class:`Prediction` per slice.
        """
        return list(self.iter_stack(images, should_stop, progress, instances))

    def iter_stack(
        self, images, should_stop=None, progress=None, instances: bool = True
    ) -> Iterator[Prediction]:
        """Like :meth:`predict_stack` but yields each slice's :class:`Prediction` when done."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3 and images.shape[-1] <= MAX_CHANNELS:
                raise ValueError(
                    f"predict_stack got shape {images.shape}, which looks like one RGB image (or one with "
                    "channels); use predict() for a single image, or pass (N, H, W[, C])."
                )
            if images.ndim not in (3, 4):
                raise ValueError(
                    f"Expected a stack (N, H, W) or (N, H, W, C), got shape {images.shape}."
                )
        n = len(images)
        ids = StackIds(self.predict_config.link_slices)
        for i in range(n):
            slice_progress = None
            if progress is not None:

                def slice_progress(event: Progress, i=i) -> None:
                    if event.phase == "tiles":
                        event = Progress("tiles", i * event.total + event.done, n * event.total)
                    progress(event)

            pred = self.predict(images[i], should_stop=should_stop, progress=slice_progress, instances=instances)
            if pred.instances is not None:
                pred.instances = ids.add(pred.instances)
            yield pred
