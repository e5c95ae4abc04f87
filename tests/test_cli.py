"""The `lazylabels` command line, end to end on synthetic data (no napari needed)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_lazylabels.cli import main
from napari_lazylabels.core.io import read_label


@pytest.mark.parametrize("verb", ["simulate", "train", "predict", "instances", "evaluate", "grabcut", "demo"])
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_simulate_train_predict_evaluate(tmp_path, capsys, caplog, monkeypatch, gt_folder):
    gt = gt_folder(tmp_path / "gt")
    ds = tmp_path / "lazy"
    assert main(["simulate", str(gt), "--out", str(ds), "--strong-fraction", "0.34", "--seed", "1"]) == 0
    assert len(list((ds / "segmentation").glob("*.png"))) == 1
    model = tmp_path / "model"
    capsys.readouterr()
    assert main(["train", str(ds), "--out", str(model), "--iterations", "3", "--size", "tiny",
                 "--batch-size", "2", "--device", "cpu", "--val-every", "0", "--scale", "0.5"]) == 0
    assert "working scale 0.5" in capsys.readouterr().out
    assert (model / "best.pt").exists() and (model / "latest.pt").exists()
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["model_config"]["size"] == "tiny" and cfg["classes"]["names"] == ["background", "object"]
    assert cfg["model_config"]["scale"] == 0.5  # predictions below still come back at full size
    # a 2-slice stack is predicted slice by slice
    stack = np.stack([read_label(gt / "images" / "im0.png")] * 2).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    pred = tmp_path / "pred"
    assert main(["predict", str(model), str(gt / "images"), str(tmp_path / "stack.tif"), "--out", str(pred), "--device", "cpu"]) == 0
    classes = read_label(pred / "im0_classes.png")
    assert classes.shape == (96, 112) and classes.dtype == np.uint8
    assert (pred / "stack_z001_classes.png").exists()
    assert tifffile.imread(pred / "im0_probabilities.tif").shape == (2, 96, 112)
    settings = json.loads((pred / "lazylabels-predict.json").read_text())
    assert settings["interface_threshold"] == settings["auto_interface_threshold"]  # the model's own
    assert settings["auto_min_object_size"] >= 16
    assert settings["tta"] == 4  # test-time augmentation is on by default
    # cut again without the network: every instance file rewritten, the settings recorded
    before = {p.name: p.stat().st_mtime_ns for p in pred.glob("*_instances.*")}
    assert main(["instances", str(pred), "--interface-threshold", "0.9", "--min-size", "100000"]) == 0
    assert {p.name for p in pred.glob("*_instances.*")} == set(before)
    assert "stack_instances.ome.tif" in before  # the stack's whole (Z, Y, X) map, rewritten too
    assert all(read_label(pred / n).max() == 0 for n in before if not n.endswith(".ome.tif"))  # all specks
    assert tifffile.imread(pred / "stack_instances.ome.tif").shape == (2, 96, 112)
    assert tifffile.imread(pred / "stack_instances.ome.tif").max() == 0
    assert json.loads((pred / "lazylabels-predict.json").read_text())["interface_threshold"] == 0.9
    assert main(["instances", str(tmp_path / "nowhere")]) == 2
    assert "give the --out folder of lazylabels predict" in caplog.text
    # post-processing options reach the predictor; a threshold out of range is refused
    from napari_lazylabels.core import predictor as predict_mod

    seen = []
    init = predict_mod.Predictor.__init__

    def spy(self, model, config, predict_config):
        seen.append(predict_config)
        init(self, model, config, predict_config)

    monkeypatch.setattr(predict_mod.Predictor, "__init__", spy)
    assert main(["predict", str(model), str(gt / "images" / "im0.png"), "--out", str(tmp_path / "p2"),
                 "--device", "cpu", "--interface-threshold", "0.8", "--min-size", "5"]) == 0
    assert seen[-1].interface_threshold == 0.8 and seen[-1].min_object_size == 5
    assert seen[-1].tta == 4
    assert main(["predict", str(model), str(gt / "images" / "im0.png"), "--out", str(tmp_path / "p4"),
                 "--device", "cpu", "--tta", "1"]) == 0
    assert seen[-1].tta == 1 and json.loads((tmp_path / "p4" / "lazylabels-predict.json").read_text())["tta"] == 1
    assert main(["predict", str(model), str(gt / "images" / "im0.png"), "--out", str(tmp_path / "p3"),
                 "--interface-threshold", "1.5"]) == 2
    assert "interface_threshold is a probability" in caplog.text
    capsys.readouterr()
    assert main(["evaluate", str(pred), str(gt), "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "dice" in out and "object_f1" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["summary"]["n"] == 3 and 0.0 <= scores["summary"]["dice"] <= 1.0


def test_grabcut_verb_makes_masks(tmp_path, gt_folder):
    gt = gt_folder(tmp_path / "gt", n=2)
    ds = tmp_path / "lazy"
    main(["simulate", str(gt), "--out", str(ds), "--strong-fraction", "0", "--seed", "0"])
    assert not (ds / "segmentation").exists() or not list((ds / "segmentation").iterdir())
    assert main(["grabcut", str(ds), "--images", "im0"]) == 0
    seg = read_label(ds / "segmentation" / "im0.png")
    truth = read_label(gt / "masks" / "im0.png") > 0
    fg = seg == 2
    assert 2 * (fg & truth).sum() / (fg.sum() + truth.sum()) > 0.8


def test_bad_inputs_exit_2_with_a_message(tmp_path, caplog):
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    assert main(["predict", str(tmp_path / "bad.pt"), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "corrupt or incomplete" in caplog.text
    assert main(["train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "m")]) == 2
    assert "No dataset folder" in caplog.text
    with pytest.raises(SystemExit, match="--scale takes 'auto' or a number"):
        main(["train", str(tmp_path), "--out", str(tmp_path / "m"), "--scale", "half"])


def test_cli_runs_without_napari(tmp_path):
    """The CLI imports only the core: it must start where napari and Qt are absent."""
    code = (
        "import sys; sys.modules['napari'] = None; sys.modules['qtpy'] = None; "
        "sys.modules['PyQt6'] = None; from napari_lazylabels.cli import main; "
        "import napari_lazylabels.core.train, napari_lazylabels.core.predict, "
        "napari_lazylabels.core.grabcut, napari_lazylabels.core.simulate; "
        "sys.exit(main(['simulate', '--help']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_train_options_reach_the_train_config():
    import argparse

    from napari_lazylabels.cli import _train_config, build_parser

    a = build_parser().parse_args(["train", "ds", "--out", "m", "--iterations", "5", "--marks-teach-segmentation"])
    assert isinstance(a, argparse.Namespace) and _train_config(a).marks_to_segmentation
    assert not _train_config(build_parser().parse_args(["train", "ds", "--out", "m", "--iterations", "5"])).marks_to_segmentation


def test_train_task_weights_are_checked(caplog):
    from napari_lazylabels.cli import _train_config, build_parser

    a = build_parser().parse_args(["train", "ds", "--out", "m", "--iterations", "5", "--task-weights", "separation=0.5"])
    assert _train_config(a).task_weights["separation"] == 0.5
    for bad, says in (("sep=0.5", "unknown tasks"), ("separation=half", "TASK=W pairs"), ("separation", "TASK=W pairs")):
        with pytest.raises(ValueError, match=says):
            _train_config(build_parser().parse_args(["train", "ds", "--out", "m", "--iterations", "5", "--task-weights", bad]))
    assert main(["train", "ds", "--out", "m", "--iterations", "5", "--task-weights", "sep=0.5"]) == 2
    assert "unknown tasks ['sep']" in caplog.text


def test_demo_runs_end_to_end(tmp_path, capsys):
    """The README's main job, with a budget of a few seconds: trains on the bundled sample,
    predicts its held-out images with every predict default, and scores them."""
    assert main(["demo", "--out", str(tmp_path / "demo"), "--minutes", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "held-out sample images: dice" in out
    assert json.loads((tmp_path / "demo" / "predictions" / "lazylabels-predict.json").read_text())["tta"] == 4
    assert len(list((tmp_path / "demo" / "predictions").glob("*_classes.png"))) == 2
