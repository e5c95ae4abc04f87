"""Baselines for lazy-label segmentation (Ke et al., section 4): what the multi-task U-net is
compared with.

* :func:`pseudo_label_dataset`: the paper's pseudo-label (PL) approach. Every image gets a
  full segmentation map: its exact mask where it has one, otherwise GrabCut
  (:func:`napari_lazylabels.core.grabcut.refine`) seeded by its task-1 marks. Detection and
  separation labels are dropped, so a single-task U-net is trained on segmentation only.
* :func:`weak_only`: the detection marks only (a single-task U-net on weak labels, "U-net on
  WL" in the paper).
* :func:`strong_only`: the images with exact masks only ("U-net on SL").
* :class:`RandomForestSegmenter`: a classical pixel classifier (ilastik-like): scikit-image's
  multi-scale intensity/edge/texture features and a random forest, trained on the same
  scribbles (detection marks including the background strokes) plus the exact masks where
  present. Needs scikit-learn (``pip install scikit-learn``, or the ``bench`` extra).

All functions return new :class:`~napari_lazylabels.core.io.LazyDataset` objects; label maps
are shared with the input, not copied, and never modified.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from napari_lazylabels.core.grabcut import GrabCutConfig, refine
from napari_lazylabels.core.io import LazyDataset, Sample
from napari_lazylabels.core.labels import BACKGROUND, UNLABELLED
from napari_lazylabels.core.prepare import image_channels, normalize

log = logging.getLogger(__name__)

__all__ = [
    "RandomForestSegmenter",
    "dataset_channels",
    "pseudo_label_dataset",
    "strong_only",
    "training_scribbles",
    "weak_only",
]


def _has(label: np.ndarray | None) -> bool:
    return label is not None and bool(np.any(label))


def pseudo_label_dataset(
    dataset: LazyDataset,
    config: GrabCutConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: dict[str, np.ndarray] | None = None,
) -> LazyDataset:
    """The paper's pseudo-label training set: one segmentation map per image.

    Each image's segmentation is its exact mask when it has one, otherwise GrabCut run from
    its detection marks (object marks are sure foreground, background strokes sure
    background; pixels outside every object's window are background). Images without any
    detection mark and without an exact mask are left out. Detection and separation maps are
    dropped.

    Args:
        dataset: lazy labels.
        config: GrabCut settings (default :class:`GrabCutConfig`).
        progress: called with ``(done, total)`` images.
        cache: optional ``{image name: pseudo map}``; maps found there are used as they are,
            maps computed are added (lets a caller reuse GrabCut results across runs).

    Returns:
        a new dataset with the same classes, segmentation maps only.
    """
    config = config or GrabCutConfig()
    samples = []
    total = len(dataset)
    for i, s in enumerate(dataset):
        if _has(s.segmentation):
            seg = s.segmentation
        elif _has(s.detection):
            if cache is not None and s.name in cache:
                seg = cache[s.name]
            else:
                seg = refine(s.image, s.detection, config)
                if cache is not None:
                    cache[s.name] = seg
        else:
            seg = None
        if seg is not None:
            samples.append(Sample(name=s.name, image=s.image, segmentation=seg))
        if progress is not None:
            progress(i + 1, total)
    if not samples:
        raise ValueError("No image has detection marks or an exact mask to make pseudo labels from.")
    log.info("Pseudo labels for %d images (%d exact masks)", len(samples), sum(_has(s.segmentation) for s in dataset))
    return LazyDataset(classes=dataset.classes, samples=samples)


def weak_only(dataset: LazyDataset) -> LazyDataset:
    """The images with detection marks, their detection maps only (no interfaces, no masks)."""
    samples = [Sample(name=s.name, image=s.image, detection=s.detection) for s in dataset if _has(s.detection)]
    if not samples:
        raise ValueError("No image has detection marks (task 1).")
    return LazyDataset(classes=dataset.classes, samples=samples)


def strong_only(dataset: LazyDataset) -> LazyDataset:
    """The images with exact masks, their segmentation maps only."""
    samples = [
        Sample(name=s.name, image=s.image, segmentation=s.segmentation) for s in dataset if _has(s.segmentation)
    ]
    if not samples:
        raise ValueError("No image has an exact mask (task 3).")
    return LazyDataset(classes=dataset.classes, samples=samples)


def training_scribbles(sample: Sample) -> np.ndarray | None:
    """The pixel labels a pixel classifier learns from: the exact mask where the image has one,
    else its detection marks (1 = background stroke, ``c + 1`` = class ``c``, 0 = unlabelled).
    ``None`` when the image has neither."""
    if _has(sample.segmentation):
        return sample.segmentation
    if _has(sample.detection):
        return sample.detection
    return None


def dataset_channels(dataset: LazyDataset) -> int:
    """3 when any image has colour, else 1 (the product's rule,
    :func:`~napari_lazylabels.core.prepare.image_channels`)."""
    return 3 if any(image_channels(s.image) == 3 for s in dataset) else 1


@dataclass
class RandomForestSegmenter:
    """A random-forest pixel classifier on multi-scale features (like ilastik's).

    Features: :func:`skimage.feature.multiscale_basic_features` (Gaussian-smoothed intensity,
    gradient magnitude and Hessian eigenvalues per scale and channel) of the image normalised
    like the network's input (percentiles 1 and 99.8 to 0 and 1). Training pixels: every
    image's :func:`training_scribbles`, subsampled to at most ``max_pixels`` in all (an equal
    share per image and, within an image, per class), fitted with
    :func:`skimage.future.fit_segmenter`.

    Args:
        n_estimators: trees (100).
        max_depth: tree depth limit (``None``: unlimited).
        max_pixels: most training pixels in all.
        sigma_min, sigma_max: feature scales in pixels.
        n_jobs: scikit-learn's parallel jobs (``None``: 1).
        seed: seeds the subsampling and the forest.
    """

    n_estimators: int = 100
    max_depth: int | None = 20
    max_pixels: int = 150_000
    sigma_min: float = 1.0
    sigma_max: float = 16.0
    n_jobs: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.classifier = None
        self.in_channels: int | None = None
        self.n_classes: int | None = None
        self.n_training_pixels = 0

    def features(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, F)`` float32 features of an image."""
        from skimage.feature import multiscale_basic_features

        if self.in_channels is None:
            raise RuntimeError("Call fit() first (it fixes the number of image channels).")
        img = np.moveaxis(normalize(image, self.in_channels), 0, -1)
        feats = multiscale_basic_features(
            img,
            sigma_min=self.sigma_min,
            sigma_max=self.sigma_max,
            channel_axis=-1,
        )
        return feats.astype(np.float32, copy=False)

    def fit(self, dataset: LazyDataset) -> RandomForestSegmenter:
        """Fit the forest on the dataset's scribbles and exact masks.

        Raises:
            ImportError: scikit-learn is missing.
            ValueError: no labelled pixels, or a single class only.
        """
        try:
            from sklearn.ensemble import RandomForestClassifier
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "The random-forest baseline needs scikit-learn: pip install scikit-learn "
                "(or pip install 'napari-lazylabels[bench]')."
            ) from e
        from skimage.future import fit_segmenter

        self.in_channels = dataset_channels(dataset)
        self.n_classes = dataset.classes.n_classes
        labelled = [(s, lab) for s in dataset if (lab := training_scribbles(s)) is not None]
        if not labelled:
            raise ValueError("No image has detection marks or an exact mask to train on.")
        rng = np.random.default_rng(self.seed)
        per_image = max(1, self.max_pixels // len(labelled))
        xs, ys = [], []
        for s, lab in labelled:
            values = [v for v in np.unique(lab) if v != UNLABELLED]
            per_class = max(1, per_image // max(1, len(values)))
            picks = []
            flat = lab.reshape(-1)
            for v in values:
                idx = np.flatnonzero(flat == v)
                if idx.size > per_class:
                    idx = rng.choice(idx, per_class, replace=False)
                picks.append(idx)
            idx = np.sort(np.concatenate(picks))
            feats = self.features(s.image)
            feats = feats.reshape(-1, feats.shape[-1])
            xs.append(feats[idx])
            ys.append(flat[idx].astype(np.int64))
        x = np.concatenate(xs)
        y = np.concatenate(ys)
        if np.unique(y).size < 2:
            raise ValueError(
                "The scribbles hold a single class; mark objects and background "
                f"(value {BACKGROUND}) for the random forest."
            )
        self.classifier = RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            n_jobs=self.n_jobs,
            random_state=self.seed,
        )
        fit_segmenter(y, x, self.classifier)
        self.n_training_pixels = int(y.size)
        log.info(
            "Random forest fitted on %d pixels of %d images, %d features",
            y.size, len(labelled), x.shape[1],
        )
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """``(K, H, W)`` float32 class probabilities (classes the forest never saw get 0)."""
        if self.classifier is None:
            raise RuntimeError("Call fit() before predict().")
        feats = self.features(image)
        h, w, f = feats.shape
        proba = self.classifier.predict_proba(feats.reshape(-1, f))
        out = np.zeros((self.n_classes, h * w), np.float32)
        for j, value in enumerate(self.classifier.classes_):
            out[int(value) - 1] = proba[:, j]
        return out.reshape(self.n_classes, h, w)

    def predict(self, image: np.ndarray) -> np.ndarray:
        """``(H, W)`` uint8 class indices (0 = background), via
        :func:`skimage.future.predict_segmenter`."""
        from skimage.future import predict_segmenter

        if self.classifier is None:
            raise RuntimeError("Call fit() before predict().")
        values = predict_segmenter(self.features(image), self.classifier)
        return (values.astype(np.int64) - 1).clip(0).astype(np.uint8)
