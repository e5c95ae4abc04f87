"""npe2 reader: File > Open a lazy-label dataset folder (``lazylabels.json`` or ``images/``)."""

from __future__ import annotations

import os

from .core.io import is_dataset, load_dataset


def get_reader(path: str | list[str]):
    """Return :func:`read_dataset` if ``path`` is a dataset folder, else ``None``."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)) or not is_dataset(path):
        return None
    return read_dataset


def read_dataset(path: str | list[str]) -> list[tuple]:
    """Read a dataset folder into an Image layer and three task Labels layers.

    Returns:
        layer data tuples ``(data, kwargs, layer_type)``.
    """
    from ._widgets._layers import dataset_to_layer_data

    if isinstance(path, (list, tuple)):
        path = path[0]
    dataset = load_dataset(path)
    return dataset_to_layer_data(dataset, source=str(path))
