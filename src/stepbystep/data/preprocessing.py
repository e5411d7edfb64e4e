"""Preprocessing that is fitted on the training split and saved with the model.

A :class:`Preprocessing` turns raw features (table rows or uint8 images) into
the float32 tensors a model consumes. Its state is a dict of plain Python
values, stored in the model checkpoint, so evaluation and prediction rebuild
exactly the transformation the model was trained with.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stepbystep.params import NormalizationParams


def polynomial_exponents(n_features: int, degree: int) -> list[list[int]]:
    """Return the exponents of every monomial of degree 1 to ``degree``, lowest degree first.

    For two features and degree 3 that is x1, x2, x1², x1·x2, x2², x1³, x1²·x2,
    x1·x2², x2³: the order of scikit-learn's ``PolynomialFeatures`` without bias.
    """
    exponents = []
    for total in range(1, degree + 1):
        for combination in itertools.combinations_with_replacement(range(n_features), total):
            powers = [0] * n_features
            for feature in combination:
                powers[feature] += 1
            exponents.append(powers)
    return exponents


def apply_polynomial(features: np.ndarray, exponents: list[list[int]]) -> np.ndarray:
    """Map features of shape (N, F) to the monomials given by ``exponents``: shape (N, len(exponents))."""
    powers = np.asarray(exponents, dtype=np.int64)
    return np.prod(features[:, None, :] ** powers[None, :, :], axis=2)


@dataclass
class Preprocessing:
    """Feature preparation of one model: scaling of images, normalization, polynomial map."""

    kind: str  # "table" or "images"
    normalization: str  # "none", "fixed" or "standardize"
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    exponents: list[list[int]] = field(default_factory=list)

    @classmethod
    def fit(
        cls, kind: str, train_features: np.ndarray, normalization: NormalizationParams, polynomial_degree: int = 1
    ) -> Preprocessing:
        """Fit on the training split only: the statistics never see validation rows."""
        exponents: list[list[int]] = []
        if kind == "table" and polynomial_degree > 1:
            exponents = polynomial_exponents(train_features.shape[1], polynomial_degree)
        preprocessing = cls(kind=kind, normalization=normalization.method, exponents=exponents)

        if normalization.method == "fixed":
            preprocessing.mean = [float(normalization.mean)]
            preprocessing.std = [float(normalization.std)]
        elif normalization.method == "standardize":
            values = preprocessing._scale(train_features)
            # One statistic per column of a table, per channel of images; the
            # population standard deviation, as scikit-learn's StandardScaler.
            axes = 0 if kind == "table" else (0, 2, 3)
            mean = values.mean(axis=axes)
            std = values.std(axis=axes)
            std = np.where(std == 0, 1.0, std)
            preprocessing.mean = [float(value) for value in np.atleast_1d(mean)]
            preprocessing.std = [float(value) for value in np.atleast_1d(std)]
        return preprocessing

    def _scale(self, features: np.ndarray) -> np.ndarray:
        if self.kind == "images":
            return features.astype(np.float64) / 255.0
        return features.astype(np.float64)

    @property
    def n_features(self) -> int | None:
        """Number of table columns after the polynomial map, or ``None`` for images."""
        return len(self.exponents) if self.exponents else None

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Apply the fitted normalization to already scaled values."""
        if self.normalization == "none":
            return values
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.asarray(self.std, dtype=np.float64)
        if self.kind == "images":
            mean = mean.reshape(1, -1, 1, 1)
            std = std.reshape(1, -1, 1, 1)
        return (values - mean) / std

    def transform(self, features: np.ndarray) -> torch.Tensor:
        """Return the float32 tensor a model consumes, for raw features of any split.

        Table columns are standardized first and mapped to polynomial terms
        after, so every term is a product of centred, unit-scale inputs.
        """
        values = self.normalize(self._scale(features))
        if self.exponents:
            values = apply_polynomial(values, self.exponents)
        return torch.as_tensor(values).float()

    def state_dict(self) -> dict[str, Any]:
        """Return the preprocessing as plain Python values, for checkpoints and MLflow."""
        return {
            "kind": self.kind,
            "normalization": self.normalization,
            "mean": list(self.mean),
            "std": list(self.std),
            "exponents": [list(powers) for powers in self.exponents],
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Preprocessing:
        """Rebuild a preprocessing from :meth:`state_dict` output."""
        return cls(
            kind=state["kind"],
            normalization=state["normalization"],
            mean=list(state["mean"]),
            std=list(state["std"]),
            exponents=[list(powers) for powers in state["exponents"]],
        )
