import pytest
import torch

from napari_lazylabels.core.model import (
    MODEL_SIZES,
    ModelConfig,
    MultiTaskUNet,
    autocast_dtype,
    build_model,
    count_parameters,
    cpu_bf16_supported,
    default_size,
)


@pytest.mark.parametrize("hw", [(64, 64), (67, 131), (1, 1), (31, 250)])
@pytest.mark.parametrize("arch", ["multitask", "unet"])
def test_output_shapes_for_any_input_size(hw, arch):
    tasks = ("segmentation",) if arch == "unet" else ("detection", "separation", "segmentation")
    cfg = ModelConfig(in_channels=3, n_classes=4, widths=(4, 8, 16), architecture=arch, tasks=tasks)
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert set(out) == set(tasks)
    for task, logits in out.items():
        k = 2 if task == "separation" else 4
        assert logits.shape == (2, k, *hw)
        assert torch.isfinite(logits).all()


def test_multitask_block_follows_eq6():
    """Detection and segmentation share F's weights; segmentation adds a residual R.

    With R's last layer zeroed, z_{l+1} = z_{l+1/2} + R(z_{l+1/2}) reduces to F alone, so the
    two paths, starting from the same bottleneck, must produce identical features and thus,
    with identical heads, identical logits.
    """
    cfg = ModelConfig(in_channels=1, n_classes=3, widths=(4, 8, 16))
    model = build_model(cfg).eval()
    with torch.no_grad():
        for block in model.blocks:
            last_bn = block.residual[1][1]
            last_bn.weight.zero_()
            last_bn.bias.zero_()
        model.heads["segmentation"].load_state_dict(model.heads["detection"].state_dict())
        out = model(torch.randn(1, 1, 32, 32))
    torch.testing.assert_close(out["detection"], out["segmentation"])
    # ... and the residual really changes the segmentation path when it is not zero
    model2 = build_model(cfg).eval()
    model2.heads["segmentation"].load_state_dict(model2.heads["detection"].state_dict())
    with torch.no_grad():
        out2 = model2(torch.randn(1, 1, 32, 32))
    assert not torch.allclose(out2["detection"], out2["segmentation"])


def test_paper_architecture_layers():
    cfg = ModelConfig.named("paper", in_channels=3, n_classes=2)
    model = build_model(cfg)
    assert cfg.depth == 6 and cfg.widths[-1] == 1024
    assert len(model.blocks) == 5
    acts = [m for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert acts and all(a.negative_slope == 0.01 for a in acts)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    # a plain U-net of the same widths has ~31 M parameters (the paper's size)
    unet = build_model(ModelConfig.named("paper", in_channels=3, architecture="unet", tasks=("segmentation",)))
    assert 30e6 < count_parameters(unet) < 33e6


def test_sizes_and_defaults():
    assert default_size("cpu") in MODEL_SIZES and default_size("cuda") == "paper"
    with pytest.raises(ValueError, match="Unknown model size"):
        ModelConfig.named("huge")
    with pytest.raises(ValueError, match="in_channels"):
        ModelConfig(in_channels=2)
    with pytest.raises(ValueError, match="exactly one task"):
        ModelConfig(architecture="unet")


def test_config_round_trip():
    cfg = ModelConfig.named("tiny", in_channels=3, n_classes=5, tasks=("detection", "segmentation"), scale=0.5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    # configs saved before the working scale existed load at scale 1
    old = {k: v for k, v in cfg.to_dict().items() if k != "scale"}
    assert ModelConfig.from_dict(old).scale == 1.0
    with pytest.raises(ValueError, match="working scale"):
        ModelConfig(scale=0)


def _grad_norms(model, loss):
    model.zero_grad()
    loss.backward()
    def total(params):
        return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))
    return (total(model.encoder.parameters()),
            total(p for b in model.blocks for p in b.separation.parameters()))


def test_separation_feedback_scales_only_the_gradient_into_the_shared_layers():
    """An experiment's network (``benchmarks/accuracy.py --sep-feedback``): the same forward
    pass, less separation gradient into the shared layers."""
    torch.manual_seed(0)
    base = ModelConfig(in_channels=1, n_classes=2, widths=(4, 8, 16))
    image = torch.randn(2, 1, 32, 32)
    nets = {}
    for f in (1.0, 0.25, 0.0):
        net = MultiTaskUNet(base, separation_feedback=f)
        if nets:
            net.load_state_dict(nets[1.0].state_dict())
        nets[f] = net.train()
    outs = {f: net(image) for f, net in nets.items()}
    for f in (0.25, 0.0):  # the forward pass, and so prediction, does not change
        for task in outs[1.0]:
            assert torch.equal(outs[f][task], outs[1.0][task])
    grads = {f: _grad_norms(nets[f], outs[f]["separation"].square().mean()) for f in nets}
    assert grads[1.0][0] > 0 and grads[0.0][0] == 0.0  # 0: no separation gradient in the encoder
    assert grads[0.25][0] == pytest.approx(0.25 * grads[1.0][0], rel=1e-4)
    for f in nets:  # the separation decoder itself learns at the full rate
        assert grads[f][1] == pytest.approx(grads[1.0][1], rel=1e-5)
    # detection/segmentation gradients are untouched
    seg = {f: _grad_norms(nets[f], nets[f](image)["segmentation"].square().mean())[0] for f in nets}
    assert seg[0.0] == pytest.approx(seg[1.0], rel=1e-5)
    with pytest.raises(ValueError, match="separation_feedback"):
        MultiTaskUNet(base, separation_feedback=1.5)
    assert build_model(base).separation_feedback == 1.0  # the product's network is the paper's
    # configs saved when it was a model setting load as the same network (it changes no prediction)
    saved = {**base.to_dict(), "separation_feedback": 0.5, "extra": {"note": 1}}
    assert ModelConfig.from_dict(saved) == base


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [(False, False, None), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_cpu_autocasts_to_bf16_only_where_the_cpu_has_it(monkeypatch, amx, avx512_bf16, expected):
    """Emulated bf16 on an AVX2-only CPU trained 8x slower than float32: such CPUs stay float32."""
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert cpu_bf16_supported() is (expected is not None)
    assert autocast_dtype(torch.device("cpu")) is expected


def test_cpu_precision_probe_that_fails_means_float32(monkeypatch):
    def broken():
        raise RuntimeError("probe changed")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not cpu_bf16_supported()
    assert autocast_dtype(torch.device("cpu")) is None


def _count_convs(model, x, tasks=None):
    """Output and the feature maps that 3x3 convolution blocks computed (batch rows, summed;
    counted at their BatchNorm, as the shared decoder calls its first convolution itself)."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(o.shape[0])) for m in model.modules()
             if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            out = model(x) if tasks is None else model(x, tasks)
    finally:
        for h in hooks:
            h.remove()
    return out, sum(calls)


def test_forward_computes_only_the_heads_asked_for():
    """In eval mode a subset of heads gives the same logits as the full pass, and skips the
    paths the others need: without detection the shared decoder runs on one path, without
    separation its decoder does not run."""
    torch.manual_seed(0)
    cfg = ModelConfig(in_channels=1, n_classes=3, widths=(4, 8, 16))
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode is not identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(3, 1, 40, 56)
    full, n_full = _count_convs(model, x)
    for tasks in [("segmentation",), ("segmentation", "separation"), ("detection",), ("separation",),
                  ("detection", "segmentation")]:
        out, n = _count_convs(model, x, tasks)
        assert set(out) == set(tasks)
        for t in tasks:
            torch.testing.assert_close(out[t], full[t], rtol=1e-5, atol=1e-5)
        assert n < n_full or set(tasks) == set(cfg.tasks)
    # batch of 3: encoder 3 levels x 2 convs; decoder levels of F (2 convs, on both paths
    # but in the first block), R (2) and G (2)
    assert n_full == 3 * (6 + (2 + 2 + 2) + (4 + 2 + 2))
    assert _count_convs(model, x, ("segmentation", "separation"))[1] == 3 * (6 + 6 + 6)
    assert _count_convs(model, x, ("segmentation",))[1] == 3 * (6 + 4 + 4)
    assert _count_convs(model, x, ("detection",))[1] == 3 * (6 + 2 + 2)
    with pytest.raises(ValueError, match="asked for"):
        model(x, ("interfaces",))
    unet = build_model(ModelConfig(in_channels=1, n_classes=3, widths=(4, 8), architecture="unet",
                                   tasks=("segmentation",))).eval()
    assert set(unet(x, ("segmentation",))) == {"segmentation"}
    with pytest.raises(ValueError, match="asked for"):
        unet(x, ("separation",))


@pytest.mark.parametrize("channels", [8, 16])
def test_batchnorm_gives_pytorchs_results_and_runs_its_narrow_backward_on_one_thread(channels, monkeypatch):
    """Our BatchNorm2d trains like nn.BatchNorm2d (outputs, gradients, running statistics);
    for widths that are not a multiple of 16 on a multi-threaded CPU its backward runs on one
    thread (PyTorch's kernel shares cache lines between threads there) and restores the
    thread count afterwards."""
    from napari_lazylabels.core.model import BatchNorm2d

    old_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    calls = []
    real_set = torch.set_num_threads

    def spy(n):  # records the thread counts the layer sets
        calls.append(n)
        real_set(n)

    try:
        torch.manual_seed(0)
        x = (torch.randn(4, channels, 24, 20) * 2 + 1).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(4, channels, 24, 20).contiguous(memory_format=torch.channels_last)
        ours, ref = BatchNorm2d(channels), torch.nn.BatchNorm2d(channels)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
        ours.load_state_dict(ref.state_dict())
        results = []
        for m in (ref, ours):
            xi = x.clone().requires_grad_()
            if m is ours:
                monkeypatch.setattr(torch, "set_num_threads", spy)
            y = m(xi)
            backward_node = type(y.grad_fn).__name__
            y.backward(grad)
            results.append((y, xi.grad, m.weight.grad, m.bias.grad, m.running_mean, m.running_var))
        assert ours.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        assert calls == ([1, 2] if channels % 16 else [])
        assert ("Serial" in backward_node) == bool(channels % 16)
        assert torch.get_num_threads() == 2
        ours.eval()
        torch.testing.assert_close(ours(x), ref.eval()(x))
    finally:
        torch.set_num_threads(old_threads)


def test_conv_of_concat_equals_the_block_on_the_concatenation():
    """The decoder's blocks convolve the parts of a skip connection separately and sum: the
    same outputs and gradients as the block on torch.cat, with and without a fused bias, and
    channels-last parts get channels-last gradients (not strided channel slices)."""
    from napari_lazylabels.core.model import DoubleConv, conv_of_concat, fuse_batchnorm

    torch.manual_seed(0)
    block = DoubleConv(5, 4, 0.01).train()
    parts = [torch.randn(2, 3, 12, 10).contiguous(memory_format=torch.channels_last), torch.randn(2, 2, 12, 10)]
    for model in (block, fuse_batchnorm(block)):
        ours_in = [t.clone().requires_grad_() for t in parts]
        ref_in = [t.clone().requires_grad_() for t in parts]
        ours = conv_of_concat(model, ours_in)
        ref = model(torch.cat(ref_in, 1))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(ref)
        ours.backward(g)
        ref.backward(g)
        for a, b in zip(ours_in, ref_in, strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert ours_in[0].grad.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():  # prediction takes the concatenation
        torch.testing.assert_close(conv_of_concat(block.eval(), parts), block(torch.cat(parts, 1)))


def test_training_forward_traces_without_graph_breaks():
    """torch.compile sees the training forward as one graph: the CPU fast path of BatchNorm2d
    steps aside while compiling (a thread-count query in the forward broke the graph
    and inductor then failed on the dynamic shapes that followed)."""
    import torch._dynamo

    old_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model = build_model(ModelConfig(in_channels=1, n_classes=2, widths=(8, 16))).train()
        model = model.to(memory_format=torch.channels_last)
        x = torch.randn(2, 1, 32, 32).contiguous(memory_format=torch.channels_last)
        torch._dynamo.reset()
        explanation = torch._dynamo.explain(model)(x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(old_threads)


def test_shared_decoder_on_two_paths_equals_the_concatenated_form():
    """The shared block on stacked detection + segmentation paths computes the skip's share of
    its first convolution once; the result is F applied to [up, skip] for each path."""
    from napari_lazylabels.core.model import MultiTaskBlock, conv_of_concat

    torch.manual_seed(0)
    block = MultiTaskBlock(8, 4, 4, 0.01, separation=True)
    up, skip = torch.randn(6, 8, 12, 10), torch.randn(3, 4, 12, 10)
    for mode in ("train", "eval"):
        getattr(block, mode)()
        ours = conv_of_concat(block.shared, [up, skip])
        ref = block.shared(torch.cat([up, torch.cat([skip, skip], 0)], 1))
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # prediction's path: the concatenation, the skip repeated
            torch.testing.assert_close(conv_of_concat(block.shared, [up, skip]), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["multitask", "unet"])
def test_fused_batchnorm_copy_predicts_the_same_and_leaves_the_model_alone(arch):
    """Prediction's copy with BatchNorm folded into the convolutions gives the eval-mode
    logits of every head; the model it came from keeps its layers and weights."""
    from napari_lazylabels.core.model import fuse_batchnorm

    torch.manual_seed(0)
    tasks = ("segmentation",) if arch == "unet" else ("detection", "separation", "segmentation")
    model = build_model(ModelConfig(in_channels=1, n_classes=3, widths=(4, 8, 16), architecture=arch,
                                    tasks=tasks)).eval()
    with torch.no_grad():  # statistics far from 0 / 1, so folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.2, 3.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(2, 1, 40, 56)
    with torch.no_grad():
        ref, out = model(x), fused(x)
        for t in ref:
            torch.testing.assert_close(out[t], ref[t], rtol=1e-4, atol=1e-4)
        if arch == "multitask":
            seg = fused(x, ("segmentation",))["segmentation"]
            torch.testing.assert_close(seg, ref["segmentation"], rtol=1e-4, atol=1e-4)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
