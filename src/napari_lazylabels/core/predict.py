"""Whole-image prediction: the public entry point, one name for the modules that do the work.

Each concern lives in its own module; import from it inside the package, and from here
outside it (``from napari_lazylabels.core.predict import Predictor`` keeps working):

* :mod:`~napari_lazylabels.core.jobs`: long jobs as generators of :class:`Progress` events,
  :func:`~napari_lazylabels.core.jobs.drive`, :class:`Cancelled` (also named
  ``PredictionCancelled``; ``PredictPhase`` is :class:`Progress`);
* :mod:`~napari_lazylabels.core.tiling`: Gaussian-blended sliding windows in a bounded row
  band, lazy tile sources, band-wise resizing and argmax of whole-image maps;
* :mod:`~napari_lazylabels.core.instances`: objects from class and interface maps, and the
  defaults of the cut;
* :mod:`~napari_lazylabels.core.calibrate`: the interface threshold tuned on the exact masks
  when training ends;
* :mod:`~napari_lazylabels.core.predictor`: :class:`PredictConfig`, :class:`Predictor`
  (normalisation, working scale, test-time orientations), :class:`Prediction`;
* :mod:`~napari_lazylabels.core.outputs`: the files of a prediction folder, and re-cutting
  their instances without the network.

Dependencies point one way: jobs, tiling <- instances <- predictor <- outputs; calibrate uses
instances (and a predictor it is given).
"""

from __future__ import annotations

from .calibrate import TUNE_THRESHOLDS, exact_instances, tune_interface_threshold
from .instances import (
    DEFAULT_INTERFACE_THRESHOLD,
    MIN_OBJECT_FRACTION,
    auto_interface_threshold,
    auto_min_object_size,
    instances_from_prediction,
    iter_instances_from_prediction,
    recorded_instance_settings,
    separating_interfaces,
)
from .jobs import PHASE_SECONDS, Cancelled, PredictionCancelled, PredictPhase, Progress, drive
from .outputs import (
    PREDICTION_SETTINGS,
    predict_file,
    resplit_folder,
    save_prediction_settings,
    write_instances,
)
from .predictor import (
    DETECTION_OUT,
    EAGER_NORMALIZE_BYTES,
    INTERFACES,
    LARGE_IMAGE_PIXELS,
    LARGE_IMAGE_TTA,
    LARGE_TTA_PIXELS,
    PROBABILITIES,
    TTA_CHOICES,
    PredictConfig,
    Prediction,
    Predictor,
    dihedral,
)
from .prepare import NormalizedSource
from .tiling import (
    BAND_BYTES,
    SIGMA_SCALE,
    ArraySource,
    Forward,
    TileSource,
    argmax_rows,
    gaussian_importance_map,
    iter_argmax_rows,
    iter_resize_maps,
    iter_sliding_window,
    resize_maps,
    sliding_window,
    tile_starts,
)

__all__ = [
    # jobs
    "PHASE_SECONDS",
    "Cancelled",
    "PredictPhase",
    "PredictionCancelled",
    "Progress",
    "drive",
    # tiling
    "BAND_BYTES",
    "SIGMA_SCALE",
    "ArraySource",
    "Forward",
    "NormalizedSource",
    "TileSource",
    "argmax_rows",
    "gaussian_importance_map",
    "iter_argmax_rows",
    "iter_resize_maps",
    "iter_sliding_window",
    "resize_maps",
    "sliding_window",
    "tile_starts",
    # instances
    "DEFAULT_INTERFACE_THRESHOLD",
    "MIN_OBJECT_FRACTION",
    "auto_interface_threshold",
    "auto_min_object_size",
    "instances_from_prediction",
    "iter_instances_from_prediction",
    "recorded_instance_settings",
    "separating_interfaces",
    # calibrate
    "TUNE_THRESHOLDS",
    "exact_instances",
    "tune_interface_threshold",
    # predictor
    "DETECTION_OUT",
    "EAGER_NORMALIZE_BYTES",
    "INTERFACES",
    "LARGE_IMAGE_PIXELS",
    "LARGE_IMAGE_TTA",
    "LARGE_TTA_PIXELS",
    "PROBABILITIES",
    "TTA_CHOICES",
    "PredictConfig",
    "Prediction",
    "Predictor",
    "dihedral",
    # outputs
    "PREDICTION_SETTINGS",
    "predict_file",
    "resplit_folder",
    "save_prediction_settings",
    "write_instances",
]
