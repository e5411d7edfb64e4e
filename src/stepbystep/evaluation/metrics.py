"""Classification and regression metrics in plain NumPy.

The functions follow the definitions of scikit-learn (``sklearn.metrics``) so
that the tests can check one against the other, but they import neither
scikit-learn nor matplotlib, because the evaluation stage imports this module
on every run. A sample counts as positive when ``probability >= threshold``,
the rule that "Deep Learning with PyTorch Step-by-Step" (Daniel Voigt Godoy)
applies to sigmoid outputs. That book calls the trapezoidal area under the
precision-recall points its PR AUC, see :func:`pr_auc`.

Labels are binary (0 or 1) and may come shaped ``(N,)`` or ``(N, 1)``, the
shape of the book's label tensors. Every public function returns plain Python
numbers or NumPy arrays. The metric dictionaries hold only ``float``, ``int``,
``str`` and nested lists or dictionaries of them, ready for
:func:`stepbystep.evaluation.writers.to_json_text`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
THRESHOLD_CRITERIA = ("f1", "youden")

ThresholdCriterion = Literal["f1", "youden"]


# --- input checks --------------------------------------------------------


def _as_vector(values: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """Convert an array of shape (N,) or (N, 1) into a 1-D array of length N >= 1."""
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must have shape (N,) or (N, 1), got shape {np.shape(values)}")
    if array.size == 0:
        raise ValueError(f"{name} is empty; at least one sample is required")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(dtype)
    if dtype is np.float64 and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _as_labels(y_true: Any) -> np.ndarray:
    """Return binary labels as an int64 vector, rejecting any value other than 0 and 1."""
    labels = _as_vector(y_true, "y_true")
    if not np.all((labels == 0) | (labels == 1)):
        found = np.unique(labels)[:10].tolist()
        raise ValueError(f"y_true must contain only the labels 0 and 1, found {found}")
    return labels.astype(np.int64)


def _as_scores(y_score: Any, n_samples: int, name: str = "y_score") -> np.ndarray:
    scores = _as_vector(y_score, name)
    if scores.size != n_samples:
        raise ValueError(f"{name} has {scores.size} samples but y_true has {n_samples}")
    return scores


def _as_probabilities(y_prob: Any, n_samples: int) -> np.ndarray:
    probabilities = _as_scores(y_prob, n_samples, name="y_prob")
    if probabilities.min() < 0.0 or probabilities.max() > 1.0:
        raise ValueError(
            "y_prob must contain probabilities in [0, 1], got values from "
            f"{probabilities.min():g} to {probabilities.max():g}; "
            "apply the sigmoid to logits before thresholding"
        )
    return probabilities


def _check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return value


def _require_both_classes(labels: np.ndarray, metric: str) -> None:
    n_positive = int(labels.sum())
    if n_positive == 0 or n_positive == labels.size:
        only = "1 (positive)" if n_positive else "0 (negative)"
        raise ValueError(
            f"{metric} is undefined because y_true contains only one class, "
            f"label {only}, in all {labels.size} samples; "
            "evaluate on a split that holds both classes"
        )


def _require_positives(labels: np.ndarray, metric: str) -> None:
    if labels.sum() == 0:
        raise ValueError(
            f"{metric} is undefined because y_true contains no positive samples "
            f"(label 1) among {labels.size}; evaluate on a split that holds both classes"
        )


def _ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, or 0.0 when the denominator is zero.

    Zero is what scikit-learn returns with ``zero_division=0``, without its warning.
    """
    return float(numerator / denominator) if denominator else 0.0


# --- metrics at one threshold ---------------------------------------------


def confusion_matrix(y_true: Any, y_prob: Any, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Count outcomes at ``threshold`` as ``[[tn, fp], [fn, tp]]`` (int64, shape (2, 2)).

    Rows are the actual class and columns the predicted class, as in
    ``sklearn.metrics.confusion_matrix(y_true, y_prob >= threshold, labels=[0, 1])``.
    A y_true with a single class is allowed here because every count stays defined.
    """
    labels = _as_labels(y_true)
    probabilities = _as_probabilities(y_prob, labels.size)
    predicted = (probabilities >= _check_threshold(threshold)).astype(np.int64)

    # Each sample lands in cell 2 * actual + predicted of the flattened matrix.
    counts = np.bincount(2 * labels + predicted, minlength=4)
    return counts.reshape(2, 2)


def threshold_metrics(
    y_true: Any, y_prob: Any, threshold: float = DEFAULT_THRESHOLD
) -> dict[str, Any]:
    """Compute the metrics that depend on a decision threshold.

    Returns a dictionary with ``threshold``, ``accuracy``, ``precision``,
    ``recall``, ``f1``, ``tpr``, ``fpr`` (floats) and ``confusion_matrix``
    (nested lists ``[[tn, fp], [fn, tp]]`` of ints). A ratio whose
    denominator is zero is 0.0: precision with no positive prediction,
    recall and tpr with no positive sample, fpr with no negative sample.
    """
    matrix = confusion_matrix(y_true, y_prob, threshold)
    (tn, fp), (fn, tp) = matrix.tolist()
    recall = _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "precision": _ratio(tp, tp + fp),
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tpr": recall,
        "fpr": _ratio(fp, fp + tn),
        "confusion_matrix": matrix.tolist(),
    }


# --- curves and areas ------------------------------------------------------


def _cumulative_counts(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count false and true positives at each distinct score, highest score first.

    Returns ``(fps, tps, thresholds)`` where entry i counts the samples whose
    score is ``>= thresholds[i]``. Tied scores share one entry, because no
    threshold can separate them.
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    # The last index of each run of equal scores closes one threshold.
    run_ends = np.flatnonzero(np.diff(sorted_scores))
    run_ends = np.append(run_ends, sorted_scores.size - 1)

    tps = np.cumsum(sorted_labels)[run_ends]
    fps = run_ends + 1 - tps
    return fps, tps, sorted_scores[run_ends]


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the ROC curve points ``(fpr, tpr, thresholds)``, one per distinct score.

    The points run from (0, 0) to (1, 1) with thresholds decreasing. The first
    threshold is ``inf`` because no sample reaches it, as in scikit-learn 1.3+.
    All points are kept, so the output equals ``sklearn.metrics.roc_curve``
    with ``drop_intermediate=False``. ``y_score`` may be probabilities or logits.

    Raises:
        ValueError: y_true contains a single class, which leaves tpr or fpr undefined.
    """
    labels = _as_labels(y_true)
    scores = _as_scores(y_score, labels.size)
    _require_both_classes(labels, "ROC curve")

    fps, tps, thresholds = _cumulative_counts(labels, scores)
    fpr = np.concatenate(([0.0], fps / fps[-1]))
    tpr = np.concatenate(([0.0], tps / tps[-1]))
    return fpr, tpr, np.concatenate(([np.inf], thresholds))


def precision_recall_curve(
    y_true: Any, y_score: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the precision-recall curve ``(precision, recall, thresholds)``.

    The layout matches ``sklearn.metrics.precision_recall_curve``: thresholds
    increase, recall decreases, and a final point (recall 0, precision 1)
    without a threshold closes the curve, so ``precision`` and ``recall`` are
    one entry longer than ``thresholds``.

    Raises:
        ValueError: y_true contains no positive sample, which leaves recall undefined.
    """
    labels = _as_labels(y_true)
    scores = _as_scores(y_score, labels.size)
    _require_positives(labels, "precision-recall curve")

    fps, tps, thresholds = _cumulative_counts(labels, scores)
    # tps + fps >= 1 at every threshold, because the highest score is always predicted positive.
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return (
        np.concatenate((precision[::-1], [1.0])),
        np.concatenate((recall[::-1], [0.0])),
        thresholds[::-1],
    )


def auc(x: Any, y: Any) -> float:
    """Compute the area under the points (x, y) with the trapezoidal rule.

    ``x`` must be monotonic, either increasing or decreasing, so the area is
    positive for a curve such as (recall, precision) whose x decreases. This is
    the definition of ``sklearn.metrics.auc``.
    """
    xs = _as_vector(x, "x")
    ys = _as_vector(y, "y")
    if xs.size != ys.size:
        raise ValueError(f"x has {xs.size} points but y has {ys.size}")
    if xs.size < 2:
        raise ValueError(f"at least 2 points are required to compute an area, got {xs.size}")

    steps = np.diff(xs)
    if np.all(steps >= 0):
        direction = 1.0
    elif np.all(steps <= 0):
        direction = -1.0
    else:
        raise ValueError("x must be monotonic increasing or decreasing to compute an area")
    return float(direction * np.sum(steps * (ys[1:] + ys[:-1]) / 2.0))


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Compute the area under the ROC curve, as ``sklearn.metrics.roc_auc_score``."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    return auc(fpr, tpr)


def pr_auc(y_true: Any, y_score: Any) -> float:
    """Compute the trapezoidal area under the precision-recall points.

    This is ``sklearn.metrics.auc(recall, precision)`` on the output of
    ``precision_recall_curve``. Linear interpolation between
    PR points can overstate the area, so :func:`average_precision` is the
    conservative summary of the same curve.
    """
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    return auc(recall, precision)


def average_precision(y_true: Any, y_score: Any) -> float:
    """Compute average precision: the sum of ``(R_n - R_{n-1}) * P_n`` over thresholds.

    Each precision is weighted by the recall gained at its threshold, with no
    interpolation, as in ``sklearn.metrics.average_precision_score``.
    """
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    # Recall decreases along the curve, so the steps are negated.
    return float(-np.sum(np.diff(recall) * precision[:-1]))


# --- threshold selection ---------------------------------------------------


def best_threshold(
    y_true: Any, y_prob: Any, criterion: ThresholdCriterion = "f1"
) -> dict[str, Any]:
    """Find the threshold that maximizes ``criterion`` over the distinct probabilities.

    ``criterion`` is ``"f1"`` (F1 score) or ``"youden"`` (Youden's J statistic,
    ``tpr - fpr``). Every candidate threshold is one of the probabilities, so
    predicting ``y_prob >= threshold`` reproduces the reported value. When
    several thresholds tie, the highest wins. Compute it on the validation
    split. It is a report: no other metric here uses it.

    Returns:
        ``{"criterion": criterion, "threshold": float, "value": float}``.
    """
    if criterion not in THRESHOLD_CRITERIA:
        raise ValueError(
            f"criterion must be one of {', '.join(THRESHOLD_CRITERIA)}, got {criterion!r}"
        )
    labels = _as_labels(y_true)
    probabilities = _as_probabilities(y_prob, labels.size)
    _require_both_classes(labels, f"best threshold by {criterion}")

    fps, tps, thresholds = _cumulative_counts(labels, probabilities)
    n_positive = int(labels.sum())
    n_negative = labels.size - n_positive
    if criterion == "f1":
        # 2 tp / (2 tp + fp + fn), where fn = n_positive - tp; the denominator is never zero.
        values = 2 * tps / (tps + fps + n_positive)
    else:
        values = tps / n_positive - fps / n_negative

    # Thresholds decrease along the arrays, so argmax picks the highest among ties.
    best = int(np.argmax(values))
    return {
        "criterion": criterion,
        "threshold": float(thresholds[best]),
        "value": float(values[best]),
    }


# --- metric dictionaries ---------------------------------------------------


def threshold_key(threshold: float) -> str:
    """Name a threshold without dots, e.g. 0.3 -> ``"threshold_0_3"``.

    DVC joins nested metric keys with dots, so a key such as ``"0.3"`` would
    read as two levels in ``dvc exp show``.
    """
    return "threshold_" + format(_check_threshold(threshold), ".6g").replace(".", "_")


def _check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str) -> float:
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return number


def classification_metrics(
    y_true: Any,
    y_prob: Any,
    *,
    val_loss: float,
    n_parameters: int,
    threshold: float = DEFAULT_THRESHOLD,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    best_threshold_criterion: ThresholdCriterion = "f1",
) -> dict[str, Any]:
    """Compute the metrics.json entry of a binary classifier on one split.

    Args:
        y_true: labels 0 or 1, shape (N,) or (N, 1).
        y_prob: predicted probabilities of class 1 (sigmoid outputs), same shape.
        val_loss: the validation loss, computed by the caller with the model's loss.
        n_parameters: the number of trainable parameters of the model.
        threshold: the threshold of the headline metrics and ``confusion_matrix``.
        thresholds: extra thresholds, each with its own confusion matrix under
            ``confusion_matrices[threshold_key(t)]``.
        best_threshold_criterion: ``"f1"`` or ``"youden"``, see :func:`best_threshold`.

    Returns:
        A flat dictionary with the keys of :func:`threshold_metrics` plus
        ``roc_auc``, ``pr_auc``, ``average_precision``, ``confusion_matrices``,
        ``best_threshold``, ``val_loss`` and ``n_parameters``.

    Raises:
        ValueError: y_true contains a single class, probabilities fall outside
            [0, 1], or two thresholds share a key.
    """
    labels = _as_labels(y_true)
    probabilities = _as_probabilities(y_prob, labels.size)
    _require_both_classes(labels, "classification metrics")

    metrics = threshold_metrics(labels, probabilities, threshold)
    metrics["roc_auc"] = roc_auc(labels, probabilities)
    metrics["pr_auc"] = pr_auc(labels, probabilities)
    metrics["average_precision"] = average_precision(labels, probabilities)

    matrices: dict[str, list[list[int]]] = {}
    for value in thresholds:
        key = threshold_key(value)
        if key in matrices:
            raise ValueError(
                f"thresholds {list(thresholds)} contain two values written as {key!r}; "
                "give each threshold once"
            )
        matrices[key] = confusion_matrix(labels, probabilities, value).tolist()
    metrics["confusion_matrices"] = matrices

    metrics["best_threshold"] = best_threshold(labels, probabilities, best_threshold_criterion)
    metrics["val_loss"] = _check_float(val_loss, "val_loss")
    metrics["n_parameters"] = _check_count(n_parameters, "n_parameters")
    return metrics


def regression_metrics(
    y_true: Any,
    y_pred: Any,
    *,
    val_loss: float,
    n_parameters: int,
    coefficients: Mapping[str, float] | None = None,
    true_coefficients: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Compute the metrics.json entry of a regression model on one split.

    Args:
        y_true: targets, shape (N,) or (N, 1), with N >= 2 and not all equal.
        y_pred: predictions, same shape.
        val_loss: the validation loss, computed by the caller with the model's loss.
        n_parameters: the number of trainable parameters of the model.
        coefficients: learned scalars by name, e.g. ``{"b": 1.0233, "w": 1.9414}``.
        true_coefficients: the values that generated the data, by the same names.

    Returns:
        ``mse``, ``rmse``, ``mae``, ``r2``, ``val_loss``, ``n_parameters`` and,
        when coefficients are given, ``coefficients: {name: {"learned": x, "true": y}}``
        (``"true"`` only for names in ``true_coefficients``).

    Raises:
        ValueError: y_true is constant, which leaves r2 undefined (scikit-learn
            returns 0.0 or 1.0 there instead), or a true coefficient has no learned one.
    """
    targets = _as_vector(y_true, "y_true")
    predictions = _as_scores(y_pred, targets.size, name="y_pred")
    if targets.size < 2 or np.all(targets == targets[0]):
        raise ValueError(
            f"r2 is undefined because y_true is constant over its {targets.size} samples; "
            "evaluate on a split with at least two different targets"
        )

    errors = predictions - targets
    mse = float(np.mean(errors**2))
    total = float(np.sum((targets - targets.mean()) ** 2))
    metrics: dict[str, Any] = {
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(np.mean(np.abs(errors))),
        "r2": 1.0 - float(np.sum(errors**2)) / total,
        "val_loss": _check_float(val_loss, "val_loss"),
        "n_parameters": _check_count(n_parameters, "n_parameters"),
    }

    if coefficients is None and true_coefficients is not None:
        raise ValueError("true_coefficients requires coefficients; pass the learned values too")
    if coefficients is not None:
        truths = dict(true_coefficients or {})
        unknown = sorted(set(truths) - set(coefficients))
        if unknown:
            raise ValueError(
                f"true_coefficients has names {unknown} that are missing from coefficients"
            )
        table: dict[str, dict[str, float]] = {}
        for name, value in coefficients.items():
            table[name] = {"learned": _check_float(value, f"coefficient {name}")}
            if name in truths:
                table[name]["true"] = _check_float(truths[name], f"true coefficient {name}")
        metrics["coefficients"] = table
    return metrics
