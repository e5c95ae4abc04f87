"""The values a user may choose, in one place that imports nothing heavy (no torch, no numpy).

The engine checks its settings against these (:class:`~napari_lazylabels.core.model.ModelConfig`,
:class:`~napari_lazylabels.core.train.TrainConfig`,
:class:`~napari_lazylabels.core.predictor.PredictConfig`), and the CLI's argument choices and
the widgets' menus list them, so ``lazylabels --help`` and a widget's form are built without
importing torch. Label modes are :data:`napari_lazylabels.core.labels.LABEL_MODES` (a module
without torch too).
"""

from __future__ import annotations

MODEL_SIZES: dict[str, tuple[int, ...]] = {
    "tiny": (8, 16, 32, 64),
    "small": (16, 32, 64, 128, 256),
    "medium": (32, 64, 128, 256, 512),
    "paper": (32, 64, 128, 256, 512, 1024),
}
"""Named model sizes: the channel widths per level (the depth is their number)."""

# "tiny" on a CPU: it runs more than twice the steps of "small" in the same time, which suits
# the short budgets of the widgets, and in equal budgets it is as accurate (docs/benchmarks.md).
CPU_DEFAULT_SIZE = "tiny"
"""The model size trained by default on a CPU."""
GPU_DEFAULT_SIZE = "paper"
"""The model size trained by default on a GPU."""

ARCHITECTURES = ("multitask", "unet")
"""Networks: the paper's multi-task U-net, or a plain single-task U-net."""

LR_SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules: constant (the paper's), or a cosine decay to 5% over the budget."""

DEVICES = ("auto", "cuda", "mps", "cpu")
"""Devices offered by name (``"auto"``: CUDA, then MPS, then the CPU); the engine also takes
torch device strings such as ``"cuda:1"``."""

TTA_CHOICES = (1, 2, 4, 8)
"""Numbers of orientations each tile may be predicted in (test-time augmentation)."""

DEFAULT_TTA = 4
"""Orientations by default."""

LARGE_TTA_PIXELS = 2048 * 2048
"""Images with more pixels (at the working scale) than this are large: predicted in
:data:`LARGE_IMAGE_TTA` orientations by default."""

LARGE_IMAGE_TTA = 2
"""Orientations for large images by default (docs/benchmarks.md, "Orientations for large
images")."""

BLOCKWISE_PIXELS = 100_000_000
"""Planes with more pixels than this (10000 x 10000) are predicted block by block from the
file into an OME-Zarr (:mod:`~napari_lazylabels.core.blocks`), in bounded memory; smaller
ones whole, into PNG/TIFF files (whole-image prediction holds ~20 bytes per pixel: 2 GB at
this size)."""
