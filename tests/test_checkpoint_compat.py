"""Checkpoints written before issue 27 (ModelConfig with ``separation_feedback`` and ``extra``,
TrainConfig with ``balance_classes`` and ``balance_power``) still load, predict the same maps
and continue training.

``tests/data/checkpoint_1fae382.pt`` was written by commit 1fae382's ``fit`` (a 2-level
multi-task net, 80 iterations on two synthetic images, ``separation_feedback=0.5``,
``extra={"experiment": "old-format"}``, ``balance_classes=("separation", "segmentation")``,
``balance_power=0.5``, ``interface_threshold=0.7`` as if tuned);
``checkpoint_1fae382_expected.npz`` holds that commit's prediction of one of the images
(``PredictConfig(device="cpu", amp=False)``).
"""

from pathlib import Path

import numpy as np
import pytest

from napari_lazylabels.core import checkpoint as ck
from napari_lazylabels.core.io import LazyDataset, Sample
from napari_lazylabels.core.predict import PredictConfig, Predictor
from napari_lazylabels.core.train import TrainConfig, fit

DATA = Path(__file__).parent / "data"
OLD = DATA / "checkpoint_1fae382.pt"


@pytest.fixture
def expected():
    with np.load(DATA / "checkpoint_1fae382_expected.npz") as f:
        return dict(f)


def test_old_checkpoint_loads_keeping_what_it_still_means():
    c = ck.load_checkpoint(OLD)
    mc = c.model_config
    assert mc.widths == (4, 8) and mc.size == "custom" and mc.tasks == ("detection", "separation", "segmentation")
    assert mc.interface_threshold == 0.7 and mc.object_diameter == 14.0 and mc.scale == 1.0
    # training-only experiment settings: not part of the model any more
    assert not hasattr(mc, "separation_feedback") and not hasattr(mc, "extra")
    assert "separation_feedback" not in mc.to_dict()
    assert c.iteration == 80 and c.classes.names == ("background", "blob")
    # the saved training settings stay readable as a record; a TrainConfig made from them
    # ignores the experiment keys
    assert c.train_config["balance_power"] == 0.5
    tc = TrainConfig.from_dict(c.train_config)
    assert tc.iterations == 80 and tc.batch_size == 2 and not hasattr(tc, "balance_power")


def test_old_checkpoint_predicts_what_it_predicted(expected):
    model, c = ck.load_model(OLD)
    predictor = Predictor(model, c.model_config, PredictConfig(device="cpu", amp=False))
    assert predictor.interface_threshold == 0.7  # the tuned threshold it was saved with
    p = predictor.predict(expected["image"])
    np.testing.assert_allclose(p.probabilities, expected["probabilities"], atol=1e-5)
    np.testing.assert_allclose(p.interfaces, expected["interfaces"], atol=1e-5)
    np.testing.assert_array_equal(p.classes, expected["classes"])
    np.testing.assert_array_equal(p.instances, expected["instances"])


def test_cli_predict_uses_the_old_checkpoints_threshold(tmp_path, expected):
    import json

    from napari_lazylabels.cli import main
    from napari_lazylabels.core.io import write_image

    write_image(tmp_path / "in" / "b1.png", expected["image"])
    assert main(["predict", str(OLD), str(tmp_path / "in"), "--out", str(tmp_path / "pred"), "--device", "cpu",
                 "--no-probabilities"]) == 0
    settings = json.loads((tmp_path / "pred" / "lazylabels-predict.json").read_text())
    assert settings["interface_threshold"] == settings["auto_interface_threshold"] == 0.7
    assert any(p.name.startswith("b1_instances") for p in (tmp_path / "pred").iterdir())


def test_old_checkpoint_continues_training(tmp_path, expected):
    image = expected["image"]
    det = np.zeros(image.shape, np.uint8)
    det[:3] = 1
    det[14:19, 14:19] = 2
    ds = LazyDataset(ck.load_checkpoint(OLD).classes, [Sample("b1", image, detection=det)])
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "latest.pt").write_bytes(OLD.read_bytes())
    res = fit(ds, model_dir, train_config=TrainConfig(iterations=2, batch_size=2, val_every=0, device="cpu",
                                                      augment={"patch_size": 32}), resume=model_dir)
    assert res.iteration == 82
    again = ck.load_checkpoint(model_dir / "latest.pt")
    assert again.model_config.widths == (4, 8) and again.optimizer["state"]
