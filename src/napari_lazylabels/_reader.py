"""npe2 reader: File > Open a lazy-label project (its folder or its ``lazylabels.json``).

The manifest claims only folders and files named ``lazylabels.json``, so napari opens plain
images (PNG, TIFF, ...) with its own reader and never asks which plugin to use for them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core.io import DATASET_FILE, is_dataset, load_dataset


def _project_root(path) -> Path | None:
    """The project folder that ``path`` names (the folder itself or its ``lazylabels.json``),
    or ``None`` when ``path`` is not a lazy-label project."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    p = Path(path)
    if p.name == DATASET_FILE and p.is_file():
        p = p.parent
    return p if is_dataset(p) else None


def get_reader(path: str | list[str]):
    """Return :func:`read_dataset` if ``path`` is a project folder or its ``lazylabels.json``,
    else ``None`` (napari then tries other readers)."""
    return read_dataset if _project_root(path) is not None else None


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Read a project into an Image layer and three task Labels layers.

    Args:
        path: the project folder or its ``lazylabels.json`` (or a one-element list of either).

    Returns:
        layer data tuples ``(data, kwargs, layer_type)``, per group of equally sized images
        one image ``(H, W)`` or stack ``(N, H, W)`` (RGB adds a trailing 3) and the three task
        label maps of the same plane shape.
    """
    from ._widgets._layers import dataset_to_layer_data

    root = _project_root(path)
    if root is None:
        raise FileNotFoundError(
            f"{path} is not a lazy-label project: open a folder with {DATASET_FILE} or images/."
        )
    return dataset_to_layer_data(load_dataset(root), source=str(root))
