"""core/options.py: the values a user may choose, without torch (CLI --help, widget forms)."""

import subprocess
import sys

import pytest


def _imports(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; the heavy modules it imported."""
    code += "; print(' '.join(m for m in ('torch', 'numpy') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_options_import_nothing_heavy():
    assert _imports("import napari_lazylabels.core.options") == []


def test_the_cli_builds_its_parser_without_torch():
    """``lazylabels --help`` and the commands that need no network start without torch."""
    loaded = _imports(
        "from napari_lazylabels.cli import build_parser; p = build_parser(); "
        "p.parse_args(['predict', 'm', 'x', '--out', 'o', '--tta', '2']); "
        "p.parse_args(['train', 'd', '--out', 'm', '--size', 'tiny', '--lr-schedule', 'cosine'])"
    )
    assert "torch" not in loaded


def test_the_widget_modules_import_no_torch():
    """Creating a dock widget must not import torch on the GUI thread."""
    pytest.importorskip("qtpy")
    loaded = _imports(
        "import napari_lazylabels._widgets.predict, napari_lazylabels._widgets.train, "
        "napari_lazylabels._widgets.annotate, napari_lazylabels._widgets.grabcut"
    )
    assert "torch" not in loaded


def test_the_engine_checks_against_the_options():
    from napari_lazylabels.core import options
    from napari_lazylabels.core.model import ModelConfig
    from napari_lazylabels.core.predictor import PredictConfig
    from napari_lazylabels.core.train import TrainConfig

    pc = PredictConfig()
    assert (pc.tta, pc.large_image_tta, pc.large_image_pixels) == (
        options.DEFAULT_TTA, options.LARGE_IMAGE_TTA, options.LARGE_TTA_PIXELS)
    for n in options.TTA_CHOICES:
        PredictConfig(tta=n, large_image_tta=n)
    with pytest.raises(ValueError, match="tta"):
        PredictConfig(tta=3)
    for schedule in options.LR_SCHEDULES:
        TrainConfig(lr_schedule=schedule)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    for arch in options.ARCHITECTURES:
        ModelConfig(architecture=arch, tasks=("segmentation",))
    for size, widths in options.MODEL_SIZES.items():
        assert ModelConfig.named(size).widths == widths
