"""npe2 sample data: File > Open Sample > Lazy labels (nuclei images with ready lazy labels)."""

from __future__ import annotations

from dataclasses import replace

from .core.io import load_dataset


def sample_dataset_path() -> str:
    """Path of the bundled sample dataset folder."""
    from .sample_data import sample_paths

    return str(sample_paths()["dataset"])


def make_sample_data() -> list[tuple]:
    """The bundled sample: per image size one image layer (2D, or a stack of the equally sized
    images) with its detection, separation and segmentation layers, the groups side by side.

    The sample's stored background colour (black) is dropped, so background marks take the
    colour that stands out on its dark fluorescence images (``_colors.background_color``).
    """
    from ._widgets._layers import dataset_to_layer_data

    dataset = load_dataset(sample_dataset_path())
    if dataset.classes.colors:
        dataset.classes = replace(dataset.classes, colors=("",) + tuple(dataset.classes.colors[1:]))
    # no "source": saving must not default to the installed package's folder
    return dataset_to_layer_data(dataset, source=None)
