"""Figures and the comparison report of the evaluation stage.

Importing this package does not import matplotlib. The figure functions
import it when they draw.
"""

from stepbystep.reports.comparison import (
    merge_task_metrics,
    rank_models,
    render_comparison_markdown,
    render_report_html,
    task_kind,
    write_comparison_markdown,
    write_report_html,
)
from stepbystep.reports.figures import (
    plot_decision_boundary,
    plot_loss_curves,
    plot_pr_curves,
    plot_regression_fit,
    plot_roc_curves,
)
from stepbystep.reports.network_figures import (
    plot_activation_functions,
    plot_filters,
    plot_gradient_magnitudes,
    plot_weight_images,
)

__all__ = [
    "merge_task_metrics",
    "plot_activation_functions",
    "plot_decision_boundary",
    "plot_filters",
    "plot_gradient_magnitudes",
    "plot_loss_curves",
    "plot_pr_curves",
    "plot_regression_fit",
    "plot_roc_curves",
    "plot_weight_images",
    "rank_models",
    "render_comparison_markdown",
    "render_report_html",
    "task_kind",
    "write_comparison_markdown",
    "write_report_html",
]
