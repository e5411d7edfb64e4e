"""Row lists for DVC plots: loss curves, ROC and PR points, confusion rows.

Each function returns a list of dicts with the same keys, ready for
:func:`stepbystep.evaluation.writers.write_rows_csv` or ``write_rows_json``.
Curve rows carry a ``model`` column so that all classifiers of a task share one
file and one chart. A curve point without a threshold (the ROC start at
(0, 0), the PR end at recall 0) has ``threshold`` ``None``, which the writers
turn into an empty CSV cell or a JSON ``null``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stepbystep.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    confusion_matrix,
    precision_recall_curve,
    roc_curve,
)

LOSS_COLUMNS = ("epoch", "train_loss", "val_loss")
ROC_COLUMNS = ("model", "fpr", "tpr", "threshold")
PR_COLUMNS = ("model", "recall", "precision", "threshold")
CONFUSION_COLUMNS = ("actual", "predicted")

# Labels and scores of one model on one split: (y_true, y_score).
ScoredLabels = tuple[Any, Any]


def loss_curve_rows(
    train_loss: Sequence[float], val_loss: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Build one row per epoch: ``epoch`` (from 1), ``train_loss`` and ``val_loss``.

    ``val_loss`` is ``None`` in every row when no validation losses are given.
    """
    if val_loss is not None and len(val_loss) != len(train_loss):
        raise ValueError(
            f"train_loss has {len(train_loss)} epochs but val_loss has {len(val_loss)}"
        )
    rows = []
    for index, train_value in enumerate(train_loss):
        rows.append(
            {
                "epoch": index + 1,
                "train_loss": float(train_value),
                "val_loss": None if val_loss is None else float(val_loss[index]),
            }
        )
    return rows


def _threshold_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def roc_curve_rows(scores: Mapping[str, ScoredLabels]) -> list[dict[str, Any]]:
    """Build ROC points of several models: ``model``, ``fpr``, ``tpr``, ``threshold``.

    ``scores`` maps each model name to ``(y_true, y_score)``. Models keep the
    mapping's order and points keep the curve's order (thresholds decreasing).
    """
    rows = []
    for model, (y_true, y_score) in scores.items():
        fpr, tpr, thresholds = roc_curve(y_true, y_score)
        for x, y, threshold in zip(fpr, tpr, thresholds, strict=True):
            rows.append(
                {
                    "model": model,
                    "fpr": float(x),
                    "tpr": float(y),
                    "threshold": _threshold_or_none(threshold),
                }
            )
    return rows


def pr_curve_rows(scores: Mapping[str, ScoredLabels]) -> list[dict[str, Any]]:
    """Build precision-recall points of several models.

    Each row has ``model``, ``recall``, ``precision`` and ``threshold``.

    ``scores`` maps each model name to ``(y_true, y_score)``. Points keep the
    curve's order (thresholds increasing), ending at recall 0 without a threshold.
    """
    rows = []
    for model, (y_true, y_score) in scores.items():
        precision, recall, thresholds = precision_recall_curve(y_true, y_score)
        padded = np.append(thresholds, np.nan)
        for r, p, threshold in zip(recall, precision, padded, strict=True):
            rows.append(
                {
                    "model": model,
                    "recall": float(r),
                    "precision": float(p),
                    "threshold": _threshold_or_none(threshold),
                }
            )
    return rows


def confusion_rows(
    y_true: Any, y_prob: Any, threshold: float = DEFAULT_THRESHOLD
) -> list[dict[str, int]]:
    """Build one row per sample, ``actual`` and ``predicted`` class, for DVC's confusion template.

    A sample is predicted positive when ``y_prob >= threshold``. The rows are
    in sample order, so their counts equal :func:`confusion_matrix`.
    """
    # confusion_matrix validates the labels, the probabilities and the threshold.
    confusion_matrix(y_true, y_prob, threshold)
    actual = np.asarray(y_true).reshape(-1).astype(np.int64)
    predicted = (np.asarray(y_prob, dtype=np.float64).reshape(-1) >= threshold).astype(np.int64)
    return [
        {"actual": int(a), "predicted": int(p)} for a, p in zip(actual, predicted, strict=True)
    ]
