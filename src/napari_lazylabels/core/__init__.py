"""The headless engine: labels, model, losses, data, train, predict, grabcut, metrics, io.

Nothing here imports Qt or napari (enforced by an import-linter contract), so it runs on a
GPU server with only torch, numpy, scikit-image and opencv.
"""
