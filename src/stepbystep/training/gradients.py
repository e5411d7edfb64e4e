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

    Each step adds the L1 and L2 norms of all gradients with four ``torch._foreach_*``
    calls, whatever the number of parameters. The mean absolute value is the L1
    sum divided by the parameter's element count when the epoch's statistics are read.
    """

    def __init__(self, model: nn.Module) -> None:
        named = [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
        self.names = [name for name, _ in named]
        self._parameters = [parameter for _, parameter in named]
        self._l1_sums: list[torch.Tensor] = []
        self._l2_sums: list[torch.Tensor] = []
        self._steps = 0

    @torch.no_grad()
    def update(self) -> None:
        """Add the current gradients' norms to the running sums."""
        if self._steps == 0:
            self._l1_sums = [torch.zeros((), device=parameter.device) for parameter in self._parameters]
            self._l2_sums = [torch.zeros((), device=parameter.device) for parameter in self._parameters]

        grads = [parameter.grad for parameter in self._parameters]
        l1_sums, l2_sums = self._l1_sums, self._l2_sums
        if any(grad is None for grad in grads):
            present = [i for i, grad in enumerate(grads) if grad is not None]
            grads = [grads[i] for i in present]
            l1_sums = [l1_sums[i] for i in present]
            l2_sums = [l2_sums[i] for i in present]
        if grads:
            # The norms are computed in float32 whatever the gradients' dtype, as the sums are.
            torch._foreach_add_(l1_sums, torch._foreach_norm(grads, 1, dtype=torch.float32))
            torch._foreach_add_(l2_sums, torch._foreach_norm(grads, 2, dtype=torch.float32))
        self._steps += 1

    def reset(self) -> None:
        """Discard the running sums."""
        self._l1_sums = []
        self._l2_sums = []
        self._steps = 0

    def pop_epoch_stats(self) -> dict[str, float]:
        """Return the per-step averages since the last call, keyed ``grad_mean_abs/<name>`` and ``grad_norm/<name>``, and reset.

        Returns an empty dict when no step ran since the last call.
        """
        if self._steps == 0 or not self._parameters:
            self.reset()
            return {}
        sizes = torch.tensor([parameter.numel() for parameter in self._parameters], dtype=torch.float64)
        l1 = torch.stack([value.cpu() for value in self._l1_sums]).double()
        l2 = torch.stack([value.cpu() for value in self._l2_sums]).double()
        mean_abs = (l1 / sizes / self._steps).tolist()
        norms = (l2 / self._steps).tolist()
        self.reset()

        stats: dict[str, float] = {}
        for name, mean_abs_value, norm in zip(self.names, mean_abs, norms, strict=True):
            stats[f"grad_mean_abs/{name}"] = mean_abs_value
            stats[f"grad_norm/{name}"] = norm
        return stats
