"""Run-to-run comparison of benchmarks/speed.py records: slower figures are flagged."""

import json

import pytest

import speed


def record(date, cpu="Xeon", ours=10.0, per_flop=1.0, predict=2.0, over_mb=300.0):
    return {
        "machine": {"cpu": cpu, "cores": 2, "date": date},
        "training": [{"size": "tiny", "batch": 16, "best": {"ratio_tflops": per_flop},
                      "settings": [{"setting": "bf16 channels_last", "patches_per_s": {"ours": ours},
                                    "ratio_tflops": per_flop}]}],
        "prediction": {"side": 1024, "size": "small", "mp_per_s": {"ours_predict": predict},
                       "ratio_sliding_window": 1.0, "ratio_predict_vs_unfused": 1.1},
        "memory": [{"side": 4096, "ok": True, "over_mb": over_mb}],
    }


def test_slower_figures_are_flagged_and_noise_is_not():
    rows = {r["figure"]: r for r in speed.compare_records(
        record("b", ours=8.9, per_flop=0.7, predict=2.1, over_mb=420.0), record("a"))}
    assert not rows["train tiny bf16 channels_last: ours patches/s"]["flag"]  # 0.89: within noise
    assert rows["train tiny bf16 channels_last: per-FLOP ratio to the reference"]["flag"]  # 0.70
    assert rows["train tiny: per-FLOP best/best"]["flag"]
    assert not rows["predict: Predictor.predict MP/s"]["flag"]
    assert rows["memory 4096^2: MB beyond outputs"]["flag"]  # 1.4x the memory
    assert rows["memory 4096^2: MB beyond outputs"]["change"] == pytest.approx(1.4)


def test_the_previous_record_is_the_newest_from_the_same_kind_of_machine(tmp_path):
    for name, rec in {"20261201-a.json": record("1"), "20261202-b.json": record("2"),
                      "20261203-c.json": record("3", cpu="EPYC")}.items():
        (tmp_path / name).write_text(json.dumps(rec))
    (tmp_path / "20261204-broken.json").write_text("{")
    name, old = speed.previous_record(record("4"), tmp_path)
    assert name == "20261202-b.json" and old["machine"]["date"] == "2"
    assert speed.previous_record(record("4", cpu="M2"), tmp_path) is None
