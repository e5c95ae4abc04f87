"""One training step of a network: forward pass under autocast, loss, backward, Adam.

:class:`TrainStep` is what :func:`napari_lazylabels.core.train.train_iter` runs at every
iteration and what ``benchmarks/speed.py`` times, so the benchmark measures the product's
step rather than a copy of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .losses import LossFn
from .model import autocast


@dataclass
class TrainStep:
    """A network, its optimiser and its loss, stepping on one batch per call.

    Attributes:
        model: the network, in training mode, on ``device``, in ``memory_format``.
        optimizer: Adam over the model's parameters.
        loss: ``(outputs, targets) -> (loss, {task: float loss})``
            (:func:`napari_lazylabels.core.losses.training_loss` in the product).
        device: where each batch is moved before the forward pass.
        autocast_context: a factory of the forward pass's autocast context
            (:func:`napari_lazylabels.core.model.autocast`).
        memory_format: the layout of the input batch (that of the model's weights).
        forward: what runs the network: ``model`` itself, or e.g. ``torch.compile(model)``.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: LossFn
    device: torch.device
    autocast_context: Callable = autocast("cpu", None)
    memory_format: torch.memory_format = torch.channels_last
    forward: Callable | None = None

    @classmethod
    def new(
        cls,
        model: nn.Module,
        loss: LossFn,
        device: torch.device,
        learning_rate: float,
        amp_dtype: torch.dtype | None = None,
        channels_last: bool = True,
        optimizer_state: dict | None = None,
    ) -> TrainStep:
        """Move ``model`` to ``device`` (channels-last if asked), put it in training mode and
        give it a new Adam (or continue ``optimizer_state`` at ``learning_rate``)."""
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(device)
        model = model.to(memory_format=memory_format)
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            for g in optimizer.param_groups:
                g["lr"] = learning_rate
        return cls(model, optimizer, loss, device, autocast(device, amp_dtype), memory_format)

    def set_learning_rate(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def __call__(self, image: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimiser step on a batch.

        Args:
            image: ``(B, C, H, W)`` float.
            targets: ``{task: (B, H, W)}`` int64 class indices, ``-1`` = ignored.

        Returns:
            ``(loss, {task: float loss})``; the loss is a detached scalar tensor (reading it
            waits for the step to finish on an accelerator).
        """
        image = image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        targets = {t: v.to(self.device, non_blocking=True) for t, v in targets.items()}
        with self.autocast_context():
            outputs = (self.forward or self.model)(image)
        loss, parts = self.loss(outputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), parts


def scheduled_learning_rate(base: float, schedule: str, progress: float) -> float:
    """The learning rate at ``progress`` (0 to 1) through the budget: ``base`` for
    ``"constant"``; for ``"cosine"``, a cosine from ``base`` down to 5% of it."""
    if schedule == "cosine":
        return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))
    return base
