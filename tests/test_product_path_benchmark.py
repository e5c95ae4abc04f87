"""benchmarks/product_path.py runs what a user runs (the console script, defaults, a time
budget) and reports the mean and the worst draw; experiments are marked as such."""

import json

import numpy as np
import pytest
from skimage.draw import disk

import product_path as product
from napari_lazylabels.core.io import write_image, write_label


def _fake_dsb(root, n=10, size=64):
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (root / "dsb2018-touching-dev" / sub).mkdir(parents=True)
    for i in range(n):
        img = rng.normal(30, 5, (size, size))
        gt = np.zeros((size, size), np.uint16)
        for k in range(5):
            rr, cc = disk((rng.integers(8, size - 8), rng.integers(8, size - 8)), 6, shape=(size, size))
            img[rr, cc] += 120
            gt[rr, cc] = k + 1
        write_image(root / "dsb2018-touching-dev" / "images" / f"im{i:02d}.png", np.clip(img, 0, 255).astype(np.uint8))
        write_label(root / "dsb2018-touching-dev" / "masks" / f"im{i:02d}.png", gt)


def test_run_ids_mark_experiments():
    assert product.run_id("glas", 1, 10.0, []) == "glas_f0.094_s1_10min"
    exp = product.run_id("glas", 1, 10.0, ["--scale=1"])
    assert exp.startswith("glas_f0.094_s1_10min_exp-") and exp != product.run_id("glas", 1, 10.0, ["--scale=0.5"])


@pytest.mark.slow
def test_one_product_run_end_to_end(tmp_path, monkeypatch):
    _fake_dsb(tmp_path / "data")
    monkeypatch.setattr(product, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(product, "WORK", tmp_path / "work")
    rec = product.execute("dsb", 0, 0.05, [], tmp_path / "data")
    assert not rec["experiment"] and rec["iterations"] and rec["iterations"] > 0
    assert rec["commands"]["train"].startswith("lazylabels train") and "--minutes 0.05" in rec["commands"]["train"]
    assert 0.0 <= rec["summary"]["dice"] <= 1.0 and len(rec["per_image"]) == 2  # every 5th image validates
    saved = json.loads((tmp_path / "results" / "dsb" / "dsb_f0.094_s0_0.05min.json").read_text())
    assert saved["run_id"] == rec["run_id"] and saved["machine"]["cpu"]
    # a second draw, worse on purpose, must show as the worst
    worse = dict(saved, seed=1, run_id="dsb_f0.094_s1_0.05min", summary=dict(saved["summary"], dice=-1.0))
    (tmp_path / "results" / "dsb" / "dsb_f0.094_s1_0.05min.json").write_text(json.dumps(worse))
    table = product.write_table(tmp_path / "table.md")
    row = next(ln for ln in table.splitlines() if ln.startswith("| dsb | 0.05 min | 2"))
    cells = [c.strip() for c in row.split("|")]
    assert float(cells[5]) == -1.0 and float(cells[4]) == pytest.approx((rec["summary"]["dice"] - 1) / 2, abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("baseline", ["strong-only", "random-forest"])
def test_a_baseline_runs_on_the_same_path_and_gets_its_own_table_rows(tmp_path, monkeypatch, baseline):
    """A baseline uses the same draw, budget and held-out images: the U-net baseline trains the
    console script on its own folder (the exact-mask images alone), the forest writes class maps
    that `lazylabels evaluate` scores; the table lists them apart from the product's rows."""
    pytest.importorskip("sklearn")
    _fake_dsb(tmp_path / "data")
    monkeypatch.setattr(product, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(product, "WORK", tmp_path / "work")
    rec = product.execute("dsb", 0, 0.05, [], tmp_path / "data", baseline)
    assert rec["baseline"] == baseline and rec["run_id"] == f"dsb_f0.094_s0_0.05min_baseline-{baseline}"
    assert len(rec["per_image"]) == 2 and 0.0 <= rec["summary"]["dice"] <= 1.0
    if baseline == "strong-only":
        assert "ds-baseline" in rec["commands"]["train"] and rec["iterations"] > 0
        trained_on = json.loads((tmp_path / "work" / rec["run_id"] / "model" / "config.json").read_text())
        assert trained_on["model_config"]["tasks"] == ["segmentation"]
    else:
        assert rec["iterations"] is None and rec["train_stdout"][0].startswith("random forest fitted")
        assert rec["summary"]["dice"] > 0.5  # bright discs on a dark background: easy for the forest
    table = product.write_table(tmp_path / "table.md")
    baselines_part = table.split("## Baselines on the same path")[1].split("## Every run")[0]
    assert f"| dsb {baseline} | 0.05 min | 1 (seeds 0)" in baselines_part
    assert "| dsb | 0.05 min" not in table.split("## Baselines on the same path")[0]
