"""Run ids and table labels of benchmarks/accuracy.py: a change of product default must give
new run ids instead of colliding with the records made under the old one."""


import accuracy
from napari_lazylabels.core.train import TrainConfig


def _record(run, smoothing=None):
    tc = {} if smoothing is None else {"balance_smoothing": smoothing}
    return {"run_id": run.run_id, "train": {"train_config": tc},
            "config": {"method": run.method, "patch_size": 128, "device": "cpu", "min_object_size": 16,
                       "interface_threshold": 0.5, "tta": 4}}


def test_balance_smoothing_in_run_ids_and_labels():
    Run = accuracy.Run
    plain = Run("glas", "multitask-ignore", 0.094, 0, "tiny", 1700, "cpu", balance_smoothing=0.0)
    smooth = Run("glas", "multitask-ignore", 0.094, 0, "tiny", 1700, "cpu", balance_smoothing=0.001)
    assert "bsm" not in plain.run_id and plain.run_id.endswith("_p128_cpu")
    assert smooth.run_id.endswith("_p128_bsm0.001_cpu")
    default = TrainConfig().balance_smoothing
    assert accuracy.run_balance_smoothing(None) == default and accuracy.run_balance_smoothing(0) == 0.0
    # labels name the departure from the product default; records without the field had 0
    assert accuracy.variant(_record(smooth, 0.001)) == ("" if default == 0.001 else "bsm0.001")
    assert accuracy.variant(_record(plain)) == ("" if default == 0.0 else "bsm0")
    # single-task U-nets have no balanced task: no smoothing in their run ids
    args = accuracy.argparse.Namespace(
        dataset=["glas"], method=["unet-strong", "multitask-ignore"], fraction=[0.094], seed=[0], size=None,
        device=None, iterations=None, mask_share=None, scale=None, augment=None, balance=None,
        marks_seg=None, balance_power=None, task_weight=None, sep_feedback=None, balance_smoothing=0.002)
    ids = {r.method: r.run_id for r in accuracy.runs_for("full", args)}
    assert "bsm" not in ids["unet-strong"] and "_bsm0.002_" in ids["multitask-ignore"]


def test_experiment_variants_reach_training_as_a_loss_and_a_model_factory():
    """The method tables' knobs that are not product settings: the product's runs pass nothing,
    an experiment passes its loss or network, and the record names what was trained."""
    import torch

    from napari_lazylabels.core.model import ModelConfig, MultiTaskUNet

    Run, cfg = accuracy.Run, TrainConfig(balance_smoothing=0.0)
    product = Run("glas", "multitask-ignore", 0.094, 0, "tiny", 1700, "cpu")
    variants, recorded = accuracy.training_variants(product, cfg)
    assert variants == {} and recorded == {"balance_classes": ["separation"], "balance_power": 1.0}
    run = Run("glas", "multitask-ignore", 0.094, 0, "tiny", 1700, "cpu", balance=("segmentation",),
              balance_power=0.5, sep_feedback=0.25)
    variants, recorded = accuracy.training_variants(run, cfg)
    assert recorded == {"balance_classes": ["segmentation"], "balance_power": 0.5}
    net = variants["model_factory"](ModelConfig(widths=(4, 8)))
    assert isinstance(net, MultiTaskUNet) and net.separation_feedback == 0.25
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[0, 0], [0, 1]]])
    loss, parts = variants["loss"]({"segmentation": logits}, {"segmentation": target})
    assert parts == {"segmentation": float(loss)} and abs(float(loss) - torch.log(torch.tensor(2.0))) < 1e-6
