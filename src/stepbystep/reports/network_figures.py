"""PNG figures that look inside small image classifiers.

Hidden-layer weights as images, the equivalent weight of a deep linear model,
activation functions with their derivatives, and gradient magnitudes per layer
and epoch. Drawing follows :mod:`stepbystep.reports.figures`: lazy matplotlib,
Agg canvas, default style, fixed size and dpi, atomic writes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stepbystep.evaluation.network import (
    ACTIVATIONS,
    DEFAULT_NEGATIVE_SLOPE,
    DEFAULT_PRELU_WEIGHT,
    activation,
)
from stepbystep.reports.figures import default_style, new_figure, save_png


def _as_square_image(weights: Any, name: str) -> np.ndarray:
    """Reshape a weight vector of length S*S, or an (S, S) array, into an (S, S) image."""
    array = np.asarray(weights, dtype=np.float64)
    if array.ndim == 2 and array.shape[0] == array.shape[1]:
        return array
    flat = array.reshape(-1)
    side = math.isqrt(flat.size)
    if side == 0 or side * side != flat.size:
        raise ValueError(
            f"{name} has {flat.size} weights, which is not a square image; "
            "pass one weight per pixel, e.g. 25 for a 5x5 image"
        )
    return flat.reshape(side, side)


def _color_limit(image: np.ndarray) -> float:
    return float(np.abs(image).max()) or 1.0


def _plot_weight_images(
    images: Sequence[tuple[str, np.ndarray]],
    path: str | os.PathLike[str],
    title: str,
    shared_scale: bool = True,
) -> Path:
    """Draw images side by side on symmetric color scales centred on zero.

    With ``shared_scale`` one scale and one color bar serve all images, so
    sizes compare across panels; otherwise each panel gets its own.
    """
    shared_limit = max(_color_limit(image) for _, image in images)
    with default_style():
        figure = new_figure(n_columns=len(images), panel_size=(2.6, 2.9))
        axes = figure.subplots(1, len(images), squeeze=False)[0]
        for ax, (name, image) in zip(axes, images, strict=True):
            limit = shared_limit if shared_scale else _color_limit(image)
            shown = ax.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(name)
            ax.set_xticks([])
            ax.set_yticks([])
            if not shared_scale:
                figure.colorbar(shown, ax=ax, shrink=0.8)
        if shared_scale:
            figure.colorbar(shown, ax=list(axes), shrink=0.8, label="weight")
        figure.suptitle(title)
        return save_png(figure, path)


def plot_filters(
    weight: Any,
    path: str | os.PathLike[str],
    *,
    title: str = "Hidden layer weights as filters",
) -> Path:
    """Draw each row of a hidden layer's weight as a square image.

    ``weight`` is an ``nn.Linear`` weight of shape ``(out_features, S*S)`` that
    reads flattened S x S images, e.g. ``(5, 25)`` for a hidden layer of 5 units
    that reads 5x5 images. Returns the PNG path.
    """
    rows = np.asarray(weight, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"weight must have shape (out_features, in_features), got {rows.shape}")
    images = []
    for index, row in enumerate(rows):
        images.append((f"unit {index}", _as_square_image(row, f"row {index}")))
    return _plot_weight_images(images, path, title)


def plot_weight_images(
    weights: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    title: str = "Weights as images",
    shared_scale: bool = True,
) -> Path:
    """Draw single-output weights of several models as square images side by side.

    ``weights`` maps a model name to a weight of shape ``(1, S*S)``, ``(S*S,)``
    or ``(S, S)``: the logistic model's ``Linear(25, 1)`` weight next to
    :func:`stepbystep.evaluation.network.equivalent_linear_weight` of the deep
    linear model, for instance. ``shared_scale=False`` gives each image its own
    color scale, which shows the pattern of a weight much smaller than the
    others. Returns the PNG path.
    """
    if not weights:
        raise ValueError("weights is empty; pass at least one model")
    images = []
    for name, weight in weights.items():
        images.append((name, _as_square_image(weight, f"weight of {name!r}")))
    return _plot_weight_images(images, path, title, shared_scale)


def plot_activation_functions(
    path: str | os.PathLike[str],
    *,
    z_limits: tuple[float, float] = (-5.0, 5.0),
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE,
    prelu_weight: float = DEFAULT_PRELU_WEIGHT,
) -> Path:
    """Draw sigmoid, tanh, ReLU, leaky ReLU and PReLU with their derivatives, one panel each.

    Returns the PNG path.
    """
    z = np.linspace(z_limits[0], z_limits[1], 401)
    with default_style():
        figure = new_figure(n_columns=len(ACTIVATIONS), panel_size=(3.2, 3.0))
        # Each panel keeps its own y range, because ReLU grows with z while sigmoid stays below 1.
        axes = figure.subplots(1, len(ACTIVATIONS))
        for ax, name in zip(axes, ACTIVATIONS, strict=True):
            values, derivatives = activation(
                name, z, negative_slope=negative_slope, prelu_weight=prelu_weight
            )
            ax.plot(z, values, label="activation")
            ax.plot(z, derivatives, linestyle="--", label="derivative")
            ax.axhline(0, color="gray", linewidth=0.5)
            ax.axvline(0, color="gray", linewidth=0.5)
            ax.set_title(name)
            ax.set_xlabel("z")
        axes[0].legend(loc="upper left")
        return save_png(figure, path)


def _gradient_scale(values: np.ndarray) -> tuple[str, dict[str, float]]:
    """Pick a log scale when every value is positive, else symlog, else linear.

    A dead ReLU layer has gradients of exactly zero, which a log scale would hide.
    """
    positive = values[values > 0]
    if positive.size == values.size and values.size:
        return "log", {}
    if positive.size:
        return "symlog", {"linthresh": float(positive.min())}
    return "linear", {}


def plot_gradient_magnitudes(
    gradients: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "Gradient magnitude per layer",
) -> Path:
    """Draw each layer's gradient magnitude per epoch, one panel per model variant.

    ``gradients`` maps a model name to ``{layer_name: [one value per epoch]}``,
    e.g. the mean absolute gradient of each layer's weight. The panels share the
    y axis, which is logarithmic when every value is positive. Returns the PNG path.
    """
    if not gradients:
        raise ValueError("gradients is empty; pass at least one model")
    collected = [np.empty(0)]
    for layers in gradients.values():
        for series in layers.values():
            collected.append(np.asarray(series, dtype=np.float64).reshape(-1))
    every_value = np.concatenate(collected)
    if not np.all(np.isfinite(every_value)):
        raise ValueError("gradients contain NaN or infinite values")
    scale, scale_options = _gradient_scale(every_value)

    with default_style():
        figure = new_figure(n_columns=len(gradients), panel_size=(4.0, 3.5))
        axes = figure.subplots(1, len(gradients), sharey=True, squeeze=False)[0]
        for ax, (model, layers) in zip(axes, gradients.items(), strict=True):
            for layer, series in layers.items():
                values = np.asarray(series, dtype=np.float64)
                ax.plot(np.arange(1, values.size + 1), values, label=layer)
            ax.set_yscale(scale, **scale_options)
            ax.set_title(model)
            ax.set_xlabel("epoch")
            if layers:
                ax.legend(fontsize="small")
        axes[0].set_ylabel("gradient magnitude")
        figure.suptitle(title)
        return save_png(figure, path)
