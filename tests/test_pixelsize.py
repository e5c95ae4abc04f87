"""Physical pixel sizes in, OME-TIFF label maps out (issue 26, item 1)."""

import numpy as np
import pytest
import tifffile

from napari_lazylabels.cli import main
from napari_lazylabels.core.io import write_image
from napari_lazylabels.core.pixelsize import PixelSize, read_pixel_size, write_ome_labels


def test_pixel_sizes_come_from_ome_and_imagej_metadata_only(tmp_path):
    stack = np.zeros((3, 40, 50), np.uint16)
    tifffile.imwrite(tmp_path / "ome.ome.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5,
        "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm", "PhysicalSizeZUnit": "nm"})
    assert read_pixel_size(tmp_path / "ome.ome.tif") == PixelSize(0.3, 0.2, "nm", 1.5)
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"axes": "ZYX", "spacing": 2.0, "unit": "micron"})
    assert read_pixel_size(tmp_path / "ij.tif") == PixelSize(0.5, 0.25, "µm", 2.0)
    tifffile.imwrite(tmp_path / "scan.tif", stack[0], resolution=(72, 72))  # dots per inch: no pixel size
    assert read_pixel_size(tmp_path / "scan.tif") is None
    write_image(tmp_path / "plain.png", stack[0].astype(np.uint8))
    assert read_pixel_size(tmp_path / "plain.png") is None
    assert read_pixel_size(tmp_path / "missing.tif") is None
    with pytest.raises(ValueError, match="positive"):
        PixelSize(0.0, 1.0)


def test_label_maps_are_written_plane_by_plane_with_the_pixel_size(tmp_path):
    size = PixelSize(0.5, 0.25, "µm", 2.0)
    planes = (np.full((20, 30), i, np.uint32) for i in range(4))
    path = write_ome_labels(tmp_path / "x_instances.ome.tif", planes, size, shape=(4, 20, 30), dtype=np.uint32)
    data = tifffile.imread(path)
    assert data.shape == (4, 20, 30) and data.dtype == np.uint32 and list(data[:, 0, 0]) == [0, 1, 2, 3]
    assert read_pixel_size(path) == size
    flat = write_ome_labels(tmp_path / "y_classes.ome.tif", np.ones((20, 30), np.uint8), size)
    assert tifffile.imread(flat).shape == (20, 30) and read_pixel_size(flat) == PixelSize(0.5, 0.25, "µm")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # atomic: no temporary left


def test_predicting_a_stack_writes_whole_maps_at_its_pixel_size(tmp_path, one_object_model):
    stack = (np.random.default_rng(0).random((3, 48, 56)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "zs.tif", stack, imagej=True, resolution=(1 / 0.1, 1 / 0.1),
                     metadata={"axes": "ZYX", "spacing": 0.5, "unit": "um"})
    write_image(tmp_path / "flat.png", stack[0])
    out = tmp_path / "pred"
    args = ["predict", str(one_object_model), str(tmp_path / "zs.tif"), str(tmp_path / "flat.png"),
            "--out", str(out), "--device", "cpu", "--tta", "1", "--tile", "64"]
    assert main(args) == 0
    classes = tifffile.imread(out / "zs_classes.ome.tif")
    instances = tifffile.imread(out / "zs_instances.ome.tif")
    assert classes.shape == instances.shape == (3, 48, 56)
    assert [sorted(set(np.unique(p)) - {0}) for p in instances] == [[1], [2], [3]]  # unique across the stack
    assert read_pixel_size(out / "zs_instances.ome.tif") == PixelSize(0.1, 0.1, "µm", 0.5)
    assert not (out / "flat_classes.ome.tif").exists()  # a PNG has no pixel size: PNG outputs only
    # cut again, linked: the whole map follows, at the same pixel size
    assert main(["instances", str(out), "--link-slices"]) == 0
    linked = tifffile.imread(out / "zs_instances.ome.tif")
    assert [sorted(set(np.unique(p)) - {0}) for p in linked] == [[1], [1], [1]]
    assert read_pixel_size(out / "zs_instances.ome.tif") == PixelSize(0.1, 0.1, "µm", 0.5)
    # the same stem predicted from a file without pixel size and one slice: the old maps go
    (tmp_path / "again").mkdir()
    tifffile.imwrite(tmp_path / "again" / "zs.tif", stack[0], resolution=(72, 72))
    assert main(args[:2] + [str(tmp_path / "again" / "zs.tif")] + args[4:]) == 0
    assert not (out / "zs_classes.ome.tif").exists() and not (out / "zs_instances.ome.tif").exists()
