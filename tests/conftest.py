"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data folder (``$LAZYLABELS_SHARED_DATA`` or ``../shared/data``).

    Tests using it are skipped when it is absent.
    """
    path = Path(
        os.environ.get("LAZYLABELS_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data")
    )
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set LAZYLABELS_SHARED_DATA)")
    return path


def _write_gt_folder(root: Path, n: int = 3, size=(96, 112)) -> Path:
    """A ground-truth folder for ``lazylabels simulate``: ``images/im{i}.png`` (noise with five
    bright disks) and ``masks/im{i}.png`` (the disks as instances 1..5)."""
    import numpy as np
    from skimage.draw import disk

    from napari_lazylabels.core.io import write_image, write_label

    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.normal(30, 5, size)
        gt = np.zeros(size, np.uint16)
        for k in range(5):
            rr, cc = disk((rng.integers(14, size[0] - 14), rng.integers(14, size[1] - 14)), 9, shape=size)
            img[rr, cc] += 120
            gt[rr, cc] = k + 1
        write_image(root / "images" / f"im{i}.png", np.clip(img, 0, 255).astype(np.uint8))
        write_label(root / "masks" / f"im{i}.png", gt)
    return root


@pytest.fixture(scope="session")
def gt_folder():
    """Writes a small ground-truth folder: ``gt_folder(root, n=3, size=(96, 112))``."""
    return _write_gt_folder


@pytest.fixture
def one_object_model(tmp_path) -> Path:
    """A saved model (its ``best.pt``) that sees one object everywhere and no interface, so
    what prediction gives is known: every pixel class 1, one instance per image (per block)."""
    import torch

    from napari_lazylabels.core.checkpoint import save_checkpoint
    from napari_lazylabels.core.labels import ClassSpec
    from napari_lazylabels.core.model import ModelConfig, build_model

    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8), size="custom")
    model = build_model(cfg)
    with torch.no_grad():
        model.heads["segmentation"].bias.copy_(torch.tensor([-20.0, 20.0]))
        model.heads["separation"].bias.copy_(torch.tensor([20.0, -20.0]))
    return save_checkpoint(tmp_path / "model" / "best.pt", model, cfg, ClassSpec(names=("background", "cell")))
