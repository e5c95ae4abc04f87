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
