"""npe2 writer: File > Save an image layer and its lazy-label layers as a dataset folder."""

from __future__ import annotations

from pathlib import Path

from .core.io import save_dataset


def write_dataset(path: str, layer_data: list[tuple]) -> list[str]:
    """Write Image + Labels layers as a dataset folder (atomic writes, see core.io).

    Args:
        path: the dataset folder (created if needed).
        layer_data: full layer data tuples ``(data, attributes, layer_type)``.

    Returns:
        ``[path]`` of the folder written.
    """
    from ._widgets._layers import layer_data_to_dataset

    dataset = layer_data_to_dataset(layer_data)
    root = Path(path)
    if root.suffix:  # napari may append an extension to a "file name"
        root = root.with_suffix("")
    save_dataset(dataset, root)
    from ._widgets._common import project_changed

    project_changed(None, root)  # the current viewer's model moves into <root>/models
    return [str(root)]
