"""Metrics, plot data and stable metric files for the evaluation stage.

Importing this package loads NumPy only: no torch, scikit-learn or matplotlib.
"""

from stepbystep.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    auc,
    average_precision,
    best_threshold,
    classification_metrics,
    confusion_matrix,
    pr_auc,
    precision_recall_curve,
    regression_metrics,
    roc_auc,
    roc_curve,
    threshold_key,
    threshold_metrics,
)
from stepbystep.evaluation.network import activation, equivalent_linear_weight
from stepbystep.evaluation.plot_data import (
    confusion_rows,
    loss_curve_rows,
    pr_curve_rows,
    roc_curve_rows,
)
from stepbystep.evaluation.writers import (
    atomic_write_bytes,
    atomic_write_text,
    rows_to_csv_text,
    to_json_text,
    write_metrics_json,
    write_rows_csv,
    write_rows_json,
)

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_THRESHOLDS",
    "activation",
    "atomic_write_bytes",
    "atomic_write_text",
    "auc",
    "average_precision",
    "best_threshold",
    "classification_metrics",
    "confusion_matrix",
    "confusion_rows",
    "equivalent_linear_weight",
    "loss_curve_rows",
    "pr_auc",
    "pr_curve_rows",
    "precision_recall_curve",
    "regression_metrics",
    "roc_auc",
    "roc_curve",
    "roc_curve_rows",
    "rows_to_csv_text",
    "threshold_key",
    "threshold_metrics",
    "to_json_text",
    "write_metrics_json",
    "write_rows_csv",
    "write_rows_json",
]
