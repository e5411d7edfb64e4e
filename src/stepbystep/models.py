"""Models built from params: the chapter 2 regression and the chapter 3-4 binary classifiers.

Layers get the names the book gives them (``hidden0``, ``activation0``, ...,
``output``), so state dict keys, gradient statistics and figures refer to
layers by those names.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
}


def build_regression_model(n_features: int, seed: int) -> nn.Sequential:
    """Return ``Sequential(linear=Linear(n_features, 1))``, created right after ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    return nn.Sequential(OrderedDict(linear=nn.Linear(n_features, 1)))


def build_classifier(
    n_inputs: int,
    hidden_sizes: list[int],
    activation: str,
    bias: bool,
    output: str,
    seed: int,
    flatten: bool = False,
) -> nn.Sequential:
    """Return a binary classifier, its weights initialized right after ``torch.manual_seed(seed)``.

    The layers are ``[flatten] → (hidden_i → activation_i)* → output → [sigmoid]``.
    ``output="sigmoid"`` ends in ``nn.Sigmoid`` (train with ``BCELoss``);
    ``output="logits"`` returns logits (train with ``BCEWithLogitsLoss``).
    ``activation="none"`` stacks the hidden layers without nonlinearity, which
    makes the model equivalent to a single linear layer.
    """
    torch.manual_seed(seed)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if flatten:
        layers["flatten"] = nn.Flatten()
    width = n_inputs
    for index, size in enumerate(hidden_sizes):
        layers[f"hidden{index}"] = nn.Linear(width, size, bias=bias)
        if activation != "none":
            layers[f"activation{index}"] = ACTIVATIONS[activation]()
        width = size
    layers["output"] = nn.Linear(width, 1, bias=bias)
    if output == "sigmoid":
        layers["sigmoid"] = nn.Sigmoid()
    return nn.Sequential(layers)


def binary_loss_fn(output: str) -> nn.Module:
    """Return ``BCELoss`` for sigmoid outputs and ``BCEWithLogitsLoss`` for logits."""
    return nn.BCELoss() if output == "sigmoid" else nn.BCEWithLogitsLoss()


def probabilities(model_output: torch.Tensor, output: str) -> torch.Tensor:
    """Turn a classifier's output into probabilities of the positive class."""
    return model_output if output == "sigmoid" else torch.sigmoid(model_output)
