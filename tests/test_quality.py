"""What a validation score measures, and the warnings a weak model gets."""

import math

import numpy as np
import pytest

from napari_lazylabels.cli import main
from napari_lazylabels.core import quality
from napari_lazylabels.core.io import LazyDataset, Sample, save_dataset
from napari_lazylabels.core.labels import ClassSpec
from napari_lazylabels.core.model import ModelConfig
from napari_lazylabels.core.train import TrainConfig, fit
from test_train import FAST, TINY, blobs


def _sample(det=None, seg=None, shape=(20, 20)):
    return Sample("s", np.zeros(shape, np.uint8), detection=det, segmentation=seg)


def test_score_on_marks_says_so_and_gives_the_trivial_score():
    det = np.zeros((20, 20), np.uint8)
    det[2:6, 2:6] = 2  # 16 object pixels
    det[10:12, 10:12] = 1  # 4 background pixels
    everything_object = np.ones((20, 20), np.uint8)
    s = quality.score_sample(everything_object, _sample(det=det), 2)
    assert not s["exact"]
    # on marks every marked class counts, background too: "all object" scores
    # (0 + 2 * 16 / (16 + 20)) / 2, not the 0.89 of the object class alone
    assert s["dice"] == pytest.approx(16 / 36) and s["trivial"] == pytest.approx(16 / 36)
    good = np.zeros((20, 20), np.uint8)
    good[2:6, 2:6] = 1
    assert quality.score_sample(good, _sample(det=det), 2)["dice"] == pytest.approx(1.0)
    m = quality.summarize([s])
    assert m["measure"] == quality.MARKS
    text = quality.describe_score(m)
    assert "marks" in text and "not a dice" in text
    warnings = quality.warnings_for(m, iteration=500)
    assert any("no better" in w for w in warnings)
    assert any("exact mask" in w for w in warnings)


def test_score_on_exact_masks_and_a_good_model_gives_no_warning():
    seg = np.ones((20, 20), np.uint8)
    seg[5:15, 5:15] = 2
    pred = (seg == 2).astype(np.uint8)
    m = quality.summarize([quality.score_sample(pred, _sample(seg=seg), 2)])
    assert m["measure"] == quality.EXACT and m["dice"] == pytest.approx(1.0)
    assert m["trivial"] < 0.5
    assert "dice 1.000 on exact masks" in quality.describe_score(m)
    assert quality.warnings_for(m, iteration=500) == []


def test_weak_empty_and_short_models_are_named():
    weak = {"dice": 0.3, "n": 2, "measure": quality.EXACT, "trivial": 0.1, "foreground": 0.2}
    assert any("weak" in w for w in quality.warnings_for(weak, 500))
    empty = {"dice": 0.0, "n": 2, "measure": quality.EXACT, "trivial": 0.4, "foreground": 0.0}
    ws = quality.warnings_for(empty, 500)
    assert any("no object" in w for w in ws) and any("no better" in w for w in ws)
    assert any("only 8 iterations" in w for w in quality.warnings_for({}, 8))
    assert quality.describe_score({"dice": math.nan}) == "no validation score"


def test_a_weak_model_trained_long_is_not_told_to_train_longer():
    """GlaS at 30 minutes (4797 steps) scored no better than at 10 (1600): after a long run
    the advice is more labels, not more time."""
    weak = {"dice": 0.55, "n": 1, "measure": quality.EXACT, "trivial": 0.47, "foreground": 0.4}
    (short,) = quality.warnings_for(weak, 500)
    assert "or train longer" in short and "more images" in short
    (long,) = quality.warnings_for(weak, quality.LONG_ITERATIONS + 2797)
    assert "train longer" not in long.replace("training longer is unlikely", "")
    assert "after 4797 iterations, training longer is unlikely to help" in long and "more images" in long


def test_only_background_refuses_to_train_before_work(tmp_path):
    det = np.zeros((32, 32), np.uint8)
    det[:4] = 1
    ds = LazyDataset(ClassSpec(("background", "cell")), [Sample("a", np.zeros((32, 32), np.uint8), detection=det)])
    with pytest.raises(ValueError, match="Only background"):
        fit(ds, tmp_path / "m", ModelConfig(in_channels=1, n_classes=2, **TINY), TrainConfig(iterations=2, **FAST))
    assert not any((tmp_path / "m").glob("*.pt"))  # refused before any work


def test_a_dataset_built_to_fail_gets_a_warning_on_the_cli(tmp_path, capsys):
    """Images of pure noise whose marks say nothing about the pixels: the model cannot beat
    calling everything one class, and training says so (CLI line and TrainResult)."""
    rng = np.random.default_rng(0)
    samples = []
    for i in range(6):
        det = np.zeros((48, 48), np.uint8)
        det[rng.random((48, 48)) < 0.2] = 2
        det[rng.random((48, 48)) < 0.05] = 1
        seg = rng.integers(1, 3, (48, 48)).astype(np.uint8) if i < 3 else None
        samples.append(Sample(f"n{i}", rng.integers(0, 255, (48, 48)).astype(np.uint8), detection=det, segmentation=seg))
    ds = LazyDataset(ClassSpec(("background", "cell")), samples)
    save_dataset(ds, tmp_path / "ds")
    rc = main(["train", str(tmp_path / "ds"), "--out", str(tmp_path / "m"), "--iterations", "20",
               "--batch-size", "2", "--patch-size", "32", "--val-every", "10", "--size", "tiny", "--threads", "1"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "warning:" in out
    assert "only 20 iterations" in out and "no better" in out
    # predict repeats what the model is worth
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from napari_lazylabels.core.io import write_image

    write_image(img_dir / "x.png", samples[0].image)
    assert main(["predict", str(tmp_path / "m"), str(img_dir), "--out", str(tmp_path / "p"), "--tta", "1"]) == 0
    out = capsys.readouterr().out
    assert "model: 10 iterations" in out and "no better" in out  # best.pt: iteration 10


def test_training_result_carries_measure_and_warnings(tmp_path):
    ds = blobs(n=6)
    cfg = ModelConfig(in_channels=1, n_classes=2, **TINY)
    events = []
    res = fit(ds, tmp_path / "m", cfg, TrainConfig(iterations=6, **{**FAST, "val_every": 3}), progress=events.append)
    val = [e for e in events if e.kind == "validation"]
    assert val and all(e.metrics["measure"] in (quality.EXACT, quality.MARKS, quality.MIXED) for e in val)
    warn = [e for e in events if e.kind == "warning"]
    assert warn and res.warnings == [e.message for e in warn]
    assert any("only 6 iterations" in w for w in res.warnings)
    from napari_lazylabels.core.checkpoint import load_checkpoint

    stored = load_checkpoint(tmp_path / "m" / "best.pt").metrics
    assert stored["measure"] == res.best_metrics["measure"]
