"""Synthetic tabular data of chapters 1-3: a noisy line and two moons."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stepbystep.data.tables import TableInfo, write_table
from stepbystep.params import MoonsDataParams, RegressionDataParams


def make_regression(params: RegressionDataParams) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``x ~ U[0, 1)`` and ``y = true_b + true_w * x + noise * N(0, 1)``, both of shape (N, 1).

    NumPy's legacy global generator is seeded and drawn from in the book's
    order (all of ``x``, then all of the noise), so the default params give the
    book's data exactly.
    """
    np.random.seed(params.seed)
    x = np.random.rand(params.n_samples, 1)
    y = params.true_b + params.true_w * x + params.noise * np.random.randn(params.n_samples, 1)
    return x, y


def make_moons(params: MoonsDataParams) -> tuple[np.ndarray, np.ndarray]:
    """Return scikit-learn's two moons: features of shape (N, 2) and integer labels of shape (N,)."""
    from sklearn.datasets import make_moons as sklearn_make_moons

    features, labels = sklearn_make_moons(
        n_samples=params.n_samples, noise=params.noise, random_state=params.seed
    )
    return features, labels.astype(np.int64)


def generate_data(
    regression: RegressionDataParams, moons: MoonsDataParams, regression_dir: Path, moons_dir: Path
) -> None:
    """Write the regression and moons datasets as CSV tables with their descriptions."""
    x, y = make_regression(regression)
    write_table(
        regression_dir,
        {"x": x[:, 0], "y": y[:, 0]},
        TableInfo(
            name=regression_dir.name,
            task="regression",
            features=["x"],
            target="y",
            true_coefficients={"w": [regression.true_w], "b": regression.true_b},
        ),
    )

    features, labels = make_moons(moons)
    write_table(
        moons_dir,
        {"x1": features[:, 0], "x2": features[:, 1], "y": labels},
        TableInfo(
            name=moons_dir.name,
            task="binary",
            features=["x1", "x2"],
            target="y",
            classes=["0", "1"],
            positive_class="1",
        ),
    )
