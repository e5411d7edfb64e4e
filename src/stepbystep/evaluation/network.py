"""NumPy views of small networks: equivalent linear weights and activation functions.

They feed :mod:`stepbystep.reports.network_figures`. They take weights as
NumPy arrays in PyTorch's ``nn.Linear`` layout, ``(out_features, in_features)``,
so callers pass ``layer.weight.detach().cpu().numpy()`` and this module needs
no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "prelu")

# PyTorch's defaults: nn.LeakyReLU(negative_slope=0.01), nn.PReLU(init=0.25).
DEFAULT_NEGATIVE_SLOPE = 0.01
DEFAULT_PRELU_WEIGHT = 0.25


def equivalent_linear_weight(weights: Sequence[np.ndarray]) -> np.ndarray:
    """Multiply the weights of stacked bias-free linear layers into one weight.

    Layers without activations between them compose into a single linear map:
    for weights ``[W1, W2, W3]`` in forward order the result is ``W3 @ W2 @ W1``,
    shape ``(out_features of the last, in_features of the first)``. The book's
    deep model with layers 25 -> 5 -> 3 -> 1 gives a ``(1, 25)`` weight, which
    is comparable with the logistic model's ``Linear(25, 1)`` weight.
    """
    if not weights:
        raise ValueError("weights is empty; pass the weight of at least one layer")
    product = np.asarray(weights[0], dtype=np.float64)
    for index, weight in enumerate(weights[1:], start=1):
        matrix = np.asarray(weight, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != product.shape[0]:
            raise ValueError(
                f"layer {index} has weight shape {matrix.shape}, which cannot follow "
                f"a layer with {product.shape[0]} outputs"
            )
        product = matrix @ product
    return product


def activation(
    name: str,
    z: np.ndarray,
    *,
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
    prelu_weight: float = DEFAULT_PRELU_WEIGHT,
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate an activation function and its derivative at ``z``.

    ``name`` is one of :data:`ACTIVATIONS`. At ``z == 0`` the piecewise
    functions take the derivative of their negative side (0 for ReLU, the
    slope for leaky ReLU and PReLU), which is the value PyTorch's autograd
    returns there. PReLU uses one fixed weight, its initial value in PyTorch.

    Returns:
        ``(values, derivatives)``, both shaped like ``z``.
    """
    z = np.asarray(z, dtype=np.float64)
    positive = z > 0
    if name == "sigmoid":
        # exp(-log(1 + exp(-z))) is 1 / (1 + exp(-z)) without overflow for large negative z.
        values = np.exp(-np.logaddexp(0.0, -z))
        return values, values * (1.0 - values)
    if name == "tanh":
        values = np.tanh(z)
        return values, 1.0 - values**2
    if name == "relu":
        return np.where(positive, z, 0.0), np.where(positive, 1.0, 0.0)
    if name == "leaky_relu":
        return np.where(positive, z, negative_slope * z), np.where(positive, 1.0, negative_slope)
    if name == "prelu":
        return np.where(positive, z, prelu_weight * z), np.where(positive, 1.0, prelu_weight)
    raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {name!r}")
