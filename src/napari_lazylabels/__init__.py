"""napari-lazylabels: segment microscopy images from lazy labels with a multi-task U-net.

The engine lives in :mod:`napari_lazylabels.core` (no Qt, no napari); the napari widgets in
:mod:`napari_lazylabels._widgets`; the command line in :mod:`napari_lazylabels.cli`.
"""

__version__ = "0.1.0"
