"""The multi-task loss of eq. (5): a sum over tasks of alpha_k times a masked cross entropy.

Targets hold class indices with ``-1`` at pixels the loss ignores (not annotated, or outside
the image after augmentation). An image not labelled for task k has only ``-1`` in its task-k
target, so it does not enter that task's term: the indicator of eq. (5).

:func:`training_loss` is the product's loss; experiments compose variants of
:func:`multitask_loss` with ``functools.partial`` and pass them to
:func:`napari_lazylabels.core.train.train_iter` (``loss=``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from .labels import SEPARATION

LossFn = Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
"""``(outputs, targets) -> (total loss, {task: float loss})``, as :func:`multitask_loss`."""

BALANCED_TASKS: tuple[str, ...] = (SEPARATION,)
"""Tasks whose term weighs each class equally in the product's loss: separation, whose
interface scribbles are a few percent of its labelled pixels (class balancing separated more
touching pairs on DSB; docs/benchmarks.md). The other tasks take the paper's plain mean."""


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, balance: bool = False, power: float = 1.0,
    smoothing: float = 0.0,
) -> tuple[torch.Tensor, int]:
    """Mean cross entropy over the pixels whose target is not ``-1``.

    Args:
        logits: ``(B, K, H, W)``.
        target: ``(B, H, W)`` int64 class indices, ``-1`` = ignore.
        balance: weigh every class present in the batch equally: the mean over those
            classes of each class's mean cross entropy (so thin interface scribbles weigh as
            much as the many "not an interface" pixels).
        power: with ``balance``, each pixel of class c weighs ``n_c ** -power`` (``n_c`` its
            pixels in the batch), normalised: 1 = every class equally (the default), 0.5
            = halfway in log scale (inverse square root of the frequency), 0 = plain mean.
        smoothing: with ``balance``, ``smoothing * n`` pixels (``n`` the batch's labelled
            pixels) are added to every present class's count before it is weighed: a class
            with many more pixels than that still weighs as much as the others, one with a
            handful of pixels weighs about as much as its pixels share of that count. Without
            it, 7 interface pixels in a batch of 127,000 labelled ones carry half the term;
            0 = no smoothing.

    Returns:
        ``(loss, n_pixels)``; the loss is ``0`` (with a gradient path) when no pixel counts.
    """
    n = int((target >= 0).sum())
    if n == 0:
        return logits.sum() * 0.0, 0
    if not balance:
        loss = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="sum") / n
        return loss, n
    ce = F.cross_entropy(logits.float(), target, ignore_index=-1, reduction="none")
    valid = target >= 0
    t, v = target[valid], ce[valid]
    k = logits.shape[1]
    counts = torch.bincount(t, minlength=k)
    sums = torch.zeros(k, dtype=v.dtype, device=v.device).index_add_(0, t, v)
    present = counts > 0
    # power 1 and no smoothing: every class's mean weighs the same
    w = (counts[present].to(v.dtype) + smoothing * n) ** -power
    return (w * sums[present]).sum() / (w * counts[present]).sum(), n


def multitask_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    balance: tuple[str, ...] = (),
    balance_smoothing: float = 0.0,
    cross_entropy: Callable[..., tuple[torch.Tensor, int]] = masked_cross_entropy,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. (5): ``sum_k alpha_k * CE_k`` over the tasks that have outputs and targets.

    Each task's cross entropy is averaged over that task's annotated pixels in the batch, so
    a task with sparse scribbles weighs as much as one with dense masks (the alpha_k then set
    the balance).

    Args:
        outputs: ``{task: (B, K_task, H, W)}`` logits.
        targets: ``{task: (B, H, W)}`` int64, ``-1`` = ignore.
        weights: ``{task: alpha_k}``; missing tasks weigh 1.
        balance: tasks whose term weighs each class equally (see :func:`masked_cross_entropy`).
        balance_smoothing: see ``smoothing`` of :func:`masked_cross_entropy`.
        cross_entropy: each task's term, called as :func:`masked_cross_entropy` (experiments
            pass e.g. ``functools.partial(masked_cross_entropy, power=0.5)``).

    Returns:
        ``(total loss, {task: float loss})`` - tasks without annotated pixels are left out
        of the dict.
    """
    weights = weights or {}
    total = None
    parts: dict[str, float] = {}
    for task, logits in outputs.items():
        target = targets.get(task)
        if target is None:
            continue
        loss, n = cross_entropy(logits, target, balance=task in balance, smoothing=balance_smoothing)
        term = weights.get(task, 1.0) * loss
        total = term if total is None else total + term
        if n:
            parts[task] = float(loss.detach())
    if total is None:
        raise ValueError(
            "None of the model's tasks has targets: "
            f"model predicts {sorted(outputs)}, labels exist for {sorted(targets)}."
        )
    return total, parts


def training_loss(task_weights: Mapping[str, float], balance_smoothing: float) -> LossFn:
    """The product's loss of eq. (5): ``task_weights`` are the alpha_k, the
    :data:`BALANCED_TASKS` are class-balanced with ``balance_smoothing`` (both from
    :class:`napari_lazylabels.core.train.TrainConfig`)."""
    return functools.partial(
        multitask_loss, weights=dict(task_weights), balance=BALANCED_TASKS, balance_smoothing=balance_smoothing
    )
