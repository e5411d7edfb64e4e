"""Build the functions that train or validate on one mini-batch.

Each step is made by a higher-order function: ``make_train_step_fn`` receives the
model, the loss function and the optimizer, and returns a function that takes one
mini-batch ``(x, y)``, performs one update and returns the loss. The returned
function closes over those three objects, so the training loop only needs to
call it with data. ``make_val_step_fn`` does the same for validation, without
gradients and without an update.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
TrainStepFn = Callable[[torch.Tensor, torch.Tensor], float]
ValStepFn = Callable[[torch.Tensor, torch.Tensor], float]
ValStepWithOutputsFn = Callable[[torch.Tensor, torch.Tensor], tuple[float, torch.Tensor]]


def make_train_step_fn(
    model: nn.Module,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    *,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    after_backward: Callable[[], None] | None = None,
) -> TrainStepFn:
    """Return a function that trains ``model`` on one mini-batch and returns its loss as a float.

    ``clip_grad_norm`` rescales the gradients so that their total L2 norm is at most
    this value (``torch.nn.utils.clip_grad_norm_``); ``clip_grad_value`` clamps each
    gradient element to ``[-value, value]`` (``torch.nn.utils.clip_grad_value_``).
    At most one of them may be set. ``after_backward`` is called once the gradients
    exist and before clipping, so it reads the unclipped gradients.
    """
    if clip_grad_norm is not None and clip_grad_value is not None:
        raise ValueError("set at most one of clip_grad_norm and clip_grad_value")

    def train_step_fn(x: torch.Tensor, y: torch.Tensor) -> float:
        # Checking the flag costs less than calling model.train() on every step.
        if not model.training:
            model.train()

        # Step 1: forward pass, the model's predictions.
        yhat = model(x)
        # Step 2: the loss of this mini-batch.
        loss = loss_fn(yhat, y)
        # Step 3: gradients of the loss for every parameter.
        loss.backward()

        if after_backward is not None:
            after_backward()
        if clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        elif clip_grad_value is not None:
            nn.utils.clip_grad_value_(model.parameters(), clip_grad_value)

        # Step 4: update the parameters, then clear the gradients for the next step.
        optimizer.step()
        optimizer.zero_grad()

        return loss.item()

    return train_step_fn


def make_val_step_fn(model: nn.Module, loss_fn: LossFn) -> ValStepFn:
    """Return a function that computes the loss of ``model`` on one mini-batch, in eval mode and without gradients."""

    def val_step_fn(x: torch.Tensor, y: torch.Tensor) -> float:
        # Eval mode switches dropout off and makes batch norm use its running statistics.
        if model.training:
            model.eval()

        with torch.no_grad():
            yhat = model(x)
            loss = loss_fn(yhat, y)

        return loss.item()

    return val_step_fn


def make_val_step_with_outputs_fn(model: nn.Module, loss_fn: LossFn) -> ValStepWithOutputsFn:
    """Return a validation step like ``make_val_step_fn``'s that also returns the model's outputs.

    Metrics that need the whole validation set, such as ROC AUC, are computed from
    these outputs.
    """

    def val_step_fn(x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        if model.training:
            model.eval()

        with torch.no_grad():
            yhat = model(x)
            loss = loss_fn(yhat, y)

        return loss.item(), yhat

    return val_step_fn
