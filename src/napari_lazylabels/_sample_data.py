"""npe2 sample data: File > Open Sample > Lazy labels (a small image with ready lazy labels)."""

from __future__ import annotations

from .core.io import load_dataset


def sample_dataset_path() -> str:
    """Path of the bundled sample dataset folder."""
    from .sample_data import sample_paths

    return str(sample_paths()["dataset"])


def make_sample_data() -> list[tuple]:
    """The bundled sample: the image plus detection, separation and segmentation layers."""
    from ._widgets._layers import dataset_to_layer_data

    # no "source": saving must not default to the installed package's folder
    return dataset_to_layer_data(load_dataset(sample_dataset_path()), source=None)
