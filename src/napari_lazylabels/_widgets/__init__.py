"""napari dock widgets of napari-lazylabels (Qt side; the engine is in ``core``)."""
