import torch

from napari_lazylabels.core.losses import masked_cross_entropy, multitask_loss


def test_unlabelled_pixels_do_not_count():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), -1)
    target[0, 0, 0] = 2
    loss, n = masked_cross_entropy(logits, target)
    assert n == 1
    expected = -torch.log_softmax(logits[0, :, 0, 0], 0)[2]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    grad = logits.grad[0].abs().sum(0)
    assert grad[0, 0] > 0 and grad.sum() == grad[0, 0]  # only the labelled pixel has a gradient


def test_changing_ignored_pixels_changes_nothing():
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    target[:, :4] = -1
    a, _ = masked_cross_entropy(logits, target)
    logits2 = logits.clone()
    logits2[:, :, :4] = 100 * torch.randn(2, 2, 4, 8)
    b, _ = masked_cross_entropy(logits2, target)
    torch.testing.assert_close(a, b)


def test_untasked_images_and_weights():
    torch.manual_seed(0)
    out = {"detection": torch.randn(2, 2, 4, 4), "segmentation": torch.randn(2, 2, 4, 4)}
    tgt = {"detection": torch.randint(0, 2, (2, 4, 4)), "segmentation": torch.randint(0, 2, (2, 4, 4))}
    tgt["segmentation"][1] = -1  # image 1 is not labelled for segmentation
    total, parts = multitask_loss(out, tgt, {"detection": 1.0, "segmentation": 0.5})
    det = torch.nn.functional.cross_entropy(out["detection"], tgt["detection"])
    seg = torch.nn.functional.cross_entropy(out["segmentation"][:1], tgt["segmentation"][:1])
    torch.testing.assert_close(total, det + 0.5 * seg)
    assert set(parts) == {"detection", "segmentation"}


def test_task_without_any_label_is_zero_but_differentiable():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    total, parts = multitask_loss({"separation": logits}, {"separation": torch.full((1, 4, 4), -1)})
    assert float(total) == 0.0 and parts == {}
    total.backward()


def test_balanced_cross_entropy_weighs_each_class_equally():
    """With ``balance`` a rare class's pixels weigh as much in total as a common class's: the
    loss is the mean of the per-class means; without it, the mean over pixels."""
    from napari_lazylabels.core.losses import masked_cross_entropy

    logits = torch.zeros(1, 2, 1, 10)
    logits[0, 1, 0, :] = 2.0  # every pixel predicts class 1 with p = sigmoid(2)
    target = torch.tensor([[[0] * 9 + [1]]])
    target_ignored = target.clone()
    target_ignored[0, 0, 0] = -1
    ce0 = float(torch.nn.functional.softplus(torch.tensor(2.0)))  # -log p(class 0)
    ce1 = float(torch.nn.functional.softplus(torch.tensor(-2.0)))  # -log p(class 1)
    plain, n = masked_cross_entropy(logits, target)
    assert n == 10 and abs(float(plain) - (9 * ce0 + ce1) / 10) < 1e-6
    bal, n = masked_cross_entropy(logits, target, balance=True)
    assert n == 10 and abs(float(bal) - (ce0 + ce1) / 2) < 1e-6
    bal_ignored, n = masked_cross_entropy(logits, target_ignored, balance=True)
    assert n == 9 and abs(float(bal_ignored) - (ce0 + ce1) / 2) < 1e-6
    only0, _ = masked_cross_entropy(logits, torch.zeros(1, 1, 10, dtype=torch.long), balance=True)
    assert abs(float(only0) - ce0) < 1e-6  # absent classes do not count
    # power 0.5: class c's pixels weigh n_c ** -0.5 -> (9 ce0 / 3 + ce1 / 1) / (9 / 3 + 1 / 1)
    half, _ = masked_cross_entropy(logits, target, balance=True, power=0.5)
    assert abs(float(half) - (3 * ce0 + ce1) / 4) < 1e-6
    zero, _ = masked_cross_entropy(logits, target, balance=True, power=0.0)
    assert abs(float(zero) - float(plain)) < 1e-6  # power 0 is the plain mean
    # smoothing 0.1 adds 0.1 * 10 = 1 pixel to each class's count: weights 1/10 and 1/2
    smooth, _ = masked_cross_entropy(logits, target, balance=True, smoothing=0.1)
    assert abs(float(smooth) - (9 * ce0 / 10 + ce1 / 2) / (9 / 10 + 1 / 2)) < 1e-6
    assert abs(float(masked_cross_entropy(logits, target, balance=True, smoothing=0.0)[0]) - float(bal)) < 1e-7
    logits.requires_grad_(True)
    loss, _ = masked_cross_entropy(logits, target_ignored, balance=True)
    loss.backward()
    assert logits.grad[0, :, 0, 0].abs().sum() == 0  # ignored pixel: no gradient
