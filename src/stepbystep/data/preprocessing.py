"""Preprocessing that is fitted on the training split and saved with the model.

A :class:`Preprocessing` turns raw features (table rows or uint8 images) into
the float32 tensors a model consumes. Its state is a dict of plain Python
values, stored in the model checkpoint, so evaluation and prediction rebuild
exactly the transformation the model was trained with.

The arithmetic runs in float64 on chunks of rows and only the float32 result
is kept, so the float64 temporaries stay a few MiB however large the data is.
Every step is elementwise or per row, so the result does not depend on the
chunk size.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from stepbystep.params import NormalizationParams

# Float64 values per chunk (8 MiB): small enough to keep temporaries out of
# the peak memory, large enough that the per-chunk overhead does not show.
CHUNK_VALUES = 2**20


def chunk_rows(features: np.ndarray) -> int:
    """Return how many rows of ``features`` make one chunk of about :data:`CHUNK_VALUES` values."""
    # math.prod, because np.prod costs microseconds on every fetched batch.
    values_per_row = math.prod(features.shape[1:]) or 1
    return max(1, CHUNK_VALUES // values_per_row)


def select_rows(features: np.ndarray, rows: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Return rows ``start:stop`` of ``features``, or of ``features[rows]`` when ``rows`` is given."""
    if rows is None:
        return features[start:stop]
    return features[rows[start:stop]]


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
        cls,
        kind: str,
        train_features: np.ndarray,
        normalization: NormalizationParams,
        polynomial_degree: int = 1,
        rows: np.ndarray | None = None,
    ) -> Preprocessing:
        """Fit on the training split only: the statistics never see validation rows.

        With ``rows``, the training rows are ``train_features[rows]``, read a
        chunk at a time, so a memory-mapped array is never copied whole.
        """
        exponents: list[list[int]] = []
        if kind == "table" and polynomial_degree > 1:
            exponents = polynomial_exponents(train_features.shape[1], polynomial_degree)
        preprocessing = cls(kind=kind, normalization=normalization.method, exponents=exponents)

        if normalization.method == "fixed":
            preprocessing.mean = [float(normalization.mean)]
            preprocessing.std = [float(normalization.std)]
        elif normalization.method == "standardize":
            mean, std = preprocessing._statistics(train_features, rows)
            std = np.where(std == 0, 1.0, std)
            preprocessing.mean = [float(value) for value in np.atleast_1d(mean)]
            preprocessing.std = [float(value) for value in np.atleast_1d(std)]
        return preprocessing

    def _statistics(self, features: np.ndarray, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Return the mean and the population standard deviation of the scaled features, as StandardScaler's.

        One statistic per column of a table, per channel of images. Data of
        one chunk gets NumPy's ``mean`` and ``std`` on all of it at once.
        Larger data takes two passes over chunks, the sum first and the
        squared deviations from the mean second, which agrees with the
        one-pass result to rounding.
        """
        axes: int | tuple[int, ...] = 0 if self.kind == "table" else (0, 2, 3)
        n_rows = len(features) if rows is None else len(rows)
        step = chunk_rows(features)
        if n_rows <= step:
            values = self._scale(select_rows(features, rows, 0, n_rows))
            return values.mean(axis=axes), values.std(axis=axes)

        values_per_statistic = n_rows * (1 if self.kind == "table" else features.shape[2] * features.shape[3])
        total = 0.0
        for start in range(0, n_rows, step):
            total = total + self._scale(select_rows(features, rows, start, start + step)).sum(axis=axes)
        mean = total / values_per_statistic
        shape = (1, -1) if self.kind == "table" else (1, -1, 1, 1)
        squares = 0.0
        for start in range(0, n_rows, step):
            deviations = self._scale(select_rows(features, rows, start, start + step)) - mean.reshape(shape)
            squares = squares + np.square(deviations).sum(axis=axes)
        return mean, np.sqrt(squares / values_per_statistic)

    def _scale(self, features: np.ndarray) -> np.ndarray:
        # Row-major whatever the input's layout, so NumPy's sums add in the same order.
        if self.kind == "images":
            return features.astype(np.float64, order="C") / 255.0
        return np.asarray(features, dtype=np.float64, order="C")

    @property
    def n_features(self) -> int | None:
        """Number of table columns after the polynomial map, or ``None`` for images."""
        return len(self.exponents) if self.exponents else None

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Apply the fitted normalization to already scaled values."""
        if self.normalization == "none":
            return values
        mean, std = self._normalization_arrays()
        return (values - mean) / std

    def _normalization_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        # Built once per mean and std, since a batch of images calls this each time it is fetched.
        key = (tuple(self.mean), tuple(self.std))
        cached = self.__dict__.get("_arrays")
        if cached is None or cached[0] != key:
            shape = (1, -1, 1, 1) if self.kind == "images" else (-1,)
            mean = np.asarray(self.mean, dtype=np.float64).reshape(shape)
            std = np.asarray(self.std, dtype=np.float64).reshape(shape)
            cached = self.__dict__["_arrays"] = (key, mean, std)
        return cached[1], cached[2]

    def transform(self, features: np.ndarray, rows: np.ndarray | None = None) -> torch.Tensor:
        """Return the float32 tensor a model consumes, for raw features of any split.

        Table columns are standardized first and mapped to polynomial terms
        after, so every term is a product of centred, unit-scale inputs. With
        ``rows``, the result is that of ``features[rows]``, gathered a chunk at
        a time.
        """
        n_rows = len(features) if rows is None else len(rows)
        # The polynomial map multiplies the values of a row by its number of terms.
        step = max(1, chunk_rows(features) // max(1, len(self.exponents)))
        if n_rows <= step:
            return self._transform_chunk(select_rows(features, rows, 0, n_rows))
        first = self._transform_chunk(select_rows(features, rows, 0, step))
        result = torch.empty((n_rows, *first.shape[1:]), dtype=torch.float32)
        result[:step] = first
        for start in range(step, n_rows, step):
            result[start : start + step] = self._transform_chunk(select_rows(features, rows, start, start + step))
        return result

    def _transform_chunk(self, features: np.ndarray) -> torch.Tensor:
        if self.kind == "images" and features.dtype == np.uint8:
            return self._look_up(features)
        values = self.normalize(self._scale(features))
        if self.exponents:
            values = apply_polynomial(values, self.exponents)
        # A copy in float32: ``values`` may be the caller's own array, or a read-only one.
        return torch.tensor(values, dtype=torch.float32)

    def _look_up(self, images: np.ndarray) -> torch.Tensor:
        """Return the transform of uint8 images of shape (N, C, H, W) through a table of the 256 values per channel.

        Scaling and normalizing act on each pixel alone, so a table containing
        the float64 arithmetic of each value, rounded to float32, gives the
        same numbers as running the arithmetic on the images, in one gather.
        """
        table = self._lookup_table(images.shape[1])
        # np.take gathers faster than indexing with a uint8 array.
        if images.shape[1] == 1:
            return torch.from_numpy(np.take(table[0], images))
        result = np.empty(images.shape, dtype=np.float32)
        for channel in range(images.shape[1]):
            result[:, channel] = np.take(table[channel], images[:, channel])
        return torch.from_numpy(result)

    def _lookup_table(self, channels: int) -> np.ndarray:
        key = (channels, tuple(self.mean), tuple(self.std), self.normalization)
        cached = self.__dict__.get("_table")
        if cached is None or cached[0] != key:
            values = np.broadcast_to(np.arange(256, dtype=np.uint8), (1, channels, 1, 256))
            table = torch.tensor(self.normalize(self._scale(values)), dtype=torch.float32).numpy()[0, :, 0, :]
            cached = self.__dict__["_table"] = (key, np.ascontiguousarray(table))
        return cached[1]

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
