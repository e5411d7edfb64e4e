"""Per-parameter gradient statistics, averaged over the mini-batches of an epoch.

The statistics show how gradients shrink or grow from layer to layer, which is
how activation functions are compared. They are accumulated on the model's
device, so tracking them adds no synchronization per step.
"""

from __future__ import annotations

import torch
from torch import nn


class GradientStats:
    """Running sums of the mean absolute value and the L2 norm of every parameter's gradient.

    Call ``update`` after ``backward`` on every training step and
    ``pop_epoch_stats`` once per epoch. Parameters are named as in
    ``model.named_parameters()``. A parameter without a gradient on some step,
    because the loss does not depend on it, counts as zero for that step.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        self.names = [name for name, _ in named]
        self._parameters = [parameter for _, parameter in named]
        self._sums: torch.Tensor | None = None
        self._steps = 0

    @torch.no_grad()
    def update(self) -> None:
        """Add the current gradients to the running sums."""
        rows = []
        for parameter in self._parameters:
            grad = parameter.grad
            if grad is None:
                rows.append(torch.zeros(2, device=parameter.device))
            else:
                rows.append(torch.stack([grad.abs().mean(), torch.linalg.vector_norm(grad)]).float())
        stats = torch.stack(rows)
        self._sums = stats if self._sums is None else self._sums + stats
        self._steps += 1

    def reset(self) -> None:
        """Discard the running sums."""
        self._sums = None
        self._steps = 0

    def pop_epoch_stats(self) -> dict[str, float]:
        """Return the per-step averages since the last call, keyed ``grad_mean_abs/<name>`` and ``grad_norm/<name>``, and reset.

        Returns an empty dict when no step ran since the last call.
        """
        if self._sums is None:
            return {}
        means = (self._sums / self._steps).tolist()
        self.reset()

        stats: dict[str, float] = {}
        for name, (mean_abs, norm) in zip(self.names, means, strict=True):
            stats[f"grad_mean_abs/{name}"] = mean_abs
            stats[f"grad_norm/{name}"] = norm
        return stats
