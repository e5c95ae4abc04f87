"""Bundled sample data: real nuclei images with ready lazy labels.

* ``dataset/``: the StarDist example nuclei image (BSD-3-Clause; from the 2018 Data Science
  Bowl, CC0) and four gray DSB 2018 nuclei images (CC0) with lazy labels simulated from their
  ground truth (``tools/make_sample_data.py``, seed 0): detection marks and background
  scribbles on all, interface scribbles where nuclei touch, an exact mask on one image.
* ``test/``: two held-out DSB 2018 images with their instance masks, to score the demo.

See ``NOTICE.md`` for the licences.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent


def sample_paths() -> dict[str, Path]:
    """Paths of the bundled sample: ``dataset`` (a dataset folder), ``test_images`` and
    ``test_masks`` (held-out images and their instance masks)."""
    return {
        "dataset": ROOT / "dataset",
        "test_images": ROOT / "test" / "images",
        "test_masks": ROOT / "test" / "masks",
    }
