"""PNG figures of training and evaluation: loss curves, ROC and PR curves, fits.

matplotlib is imported inside the functions, so importing this module stays
cheap for code that only builds tables. Figures render on the Agg canvas
(``matplotlib.backends.backend_agg``) without pyplot, so drawing never
changes the process-wide backend and no figure stays registered in pyplot.
Each figure uses matplotlib's default style regardless of the local
matplotlibrc, a fixed size and dpi, and a PNG without the Software tag that
records the matplotlib version. Drawing the same inputs twice with the same
matplotlib version gives identical bytes. Files are written atomically.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stepbystep.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    average_precision,
    pr_auc,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)
from stepbystep.evaluation.writers import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
PANEL_SIZE = (4.5, 3.5)  # inches, width and height of one subplot

# Per-model losses: {"train_loss": [...], "val_loss": [...]}, one value per epoch.
LossHistory = Mapping[str, Sequence[float]]
# Labels and scores of one model on one split: (y_true, y_score).
ScoredLabels = tuple[Any, Any]


# --- drawing and saving ----------------------------------------------------


@contextlib.contextmanager
def default_style() -> Iterator[None]:
    """Apply matplotlib's default rcParams inside the block, restoring the old ones after."""
    import matplotlib.style

    with matplotlib.style.context("default"):
        yield


def new_figure(
    n_columns: int = 1, n_rows: int = 1, panel_size: tuple[float, float] = PANEL_SIZE
) -> Figure:
    """Create a figure sized for a grid of panels, attached to an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = panel_size
    figure = Figure(figsize=(width * n_columns, height * n_rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Render ``figure`` as PNG and write it atomically to ``path``.

    ``Figure.savefig`` draws a figure that has a layout engine twice: a draw
    with rendering switched off, which runs the layout, then the draw that
    renders the pixels. Here the layout runs alone and the engine is removed
    before ``savefig``, so the artists are drawn once. The PNG has the same
    bytes, because the rendering draw never runs the layout in either case.
    The shortcut needs the figure at the saving dpi, which :func:`new_figure`
    gives it, and the rc settings of :func:`default_style`, under which
    ``set_layout_engine(None)`` removes the engine. Other figures take the
    plain ``savefig`` path.
    """
    import matplotlib

    engine = figure.get_layout_engine()
    rc = matplotlib.rcParams
    if (
        engine is not None
        and figure.axes
        and figure.dpi == DPI
        and not rc["figure.autolayout"]
        and not rc["figure.constrained_layout.use"]
    ):
        # Figure.draw ignores a ValueError of the layout engine in the same way.
        with contextlib.suppress(ValueError):
            engine.execute(figure)
        figure.set_layout_engine(None)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return atomic_write_bytes(path, buffer.getvalue())


def _check_not_empty(mapping: Mapping[str, Any], name: str) -> None:
    if not mapping:
        raise ValueError(f"{name} is empty; pass at least one model")


# --- loss curves -----------------------------------------------------------


def plot_loss_curves(
    losses: Mapping[str, LossHistory],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    log_scale: bool = False,
) -> Path:
    """Draw training and validation loss per epoch, one panel per model, side by side.

    ``losses`` maps a model name to ``{"train_loss": [...], "val_loss": [...]}``
    with one value per epoch; ``val_loss`` may be missing. The panels share the
    y axis so that the models compare at a glance. Returns the PNG path.
    """
    _check_not_empty(losses, "losses")
    with default_style():
        figure = new_figure(n_columns=len(losses))
        axes = figure.subplots(1, len(losses), sharey=True, squeeze=False)[0]
        for ax, (model, history) in zip(axes, losses.items(), strict=True):
            train_loss = np.asarray(history["train_loss"], dtype=np.float64)
            epochs = np.arange(1, train_loss.size + 1)
            ax.plot(epochs, train_loss, label="train_loss")
            val_loss = history.get("val_loss")
            if val_loss is not None:
                if len(val_loss) != train_loss.size:
                    raise ValueError(
                        f"model {model!r} has {train_loss.size} train_loss values "
                        f"but {len(val_loss)} val_loss values"
                    )
                ax.plot(epochs, np.asarray(val_loss, dtype=np.float64), label="val_loss")
            if log_scale:
                ax.set_yscale("log")
            ax.set_title(model)
            ax.set_xlabel("epoch")
            ax.legend()
        axes[0].set_ylabel("loss")
        if title:
            figure.suptitle(title)
        return save_png(figure, path)


# --- ROC and precision-recall ----------------------------------------------


def plot_roc_curves(
    scores: Mapping[str, ScoredLabels],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw the ROC curves of several models on one chart, with ROC AUC in the legend.

    ``scores`` maps a model name to ``(y_true, y_score)``. Returns the PNG path.
    """
    _check_not_empty(scores, "scores")
    with default_style():
        figure = new_figure(panel_size=(5.0, 5.0))
        ax = figure.subplots()
        ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="chance")
        for model, (y_true, y_score) in scores.items():
            fpr, tpr, _ = roc_curve(y_true, y_score)
            label = f"{model} (ROC AUC {roc_auc(y_true, y_score):.4f})"
            ax.plot(fpr, tpr, marker=".", label=label)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(title or "ROC curve")
        ax.legend(loc="lower right")
        return save_png(figure, path)


def plot_pr_curves(
    scores: Mapping[str, ScoredLabels],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Draw the precision-recall curves of several models on one chart.

    The legend gives the trapezoidal PR AUC and the average precision of each
    model. ``scores`` maps a model name to ``(y_true, y_score)``. Returns the PNG path.
    """
    _check_not_empty(scores, "scores")
    with default_style():
        figure = new_figure(panel_size=(5.0, 5.0))
        ax = figure.subplots()
        for model, (y_true, y_score) in scores.items():
            precision, recall, _ = precision_recall_curve(y_true, y_score)
            area = pr_auc(y_true, y_score)
            ap = average_precision(y_true, y_score)
            label = f"{model} (PR AUC {area:.4f}, AP {ap:.4f})"
            ax.plot(recall, precision, marker=".", label=label)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(title or "Precision-recall curve")
        ax.legend(loc="lower left")
        return save_png(figure, path)


# --- data and model --------------------------------------------------------


def _check_points(points: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2 or xy.shape[0] == 0:
        raise ValueError(f"points must have shape (N, 2) with N >= 1, got {xy.shape}")
    classes = np.asarray(labels).reshape(-1)
    if classes.size != xy.shape[0]:
        raise ValueError(f"labels has {classes.size} values but points has {xy.shape[0]} rows")
    if not np.all((classes == 0) | (classes == 1)):
        raise ValueError("labels must contain only 0 and 1")
    return xy, classes.astype(np.int64)


def plot_decision_boundary(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    points: Any,
    labels: Any,
    path: str | os.PathLike[str],
    *,
    threshold: float = DEFAULT_THRESHOLD,
    resolution: int = 200,
    margin: float = 0.5,
    title: str | None = None,
) -> Path:
    """Draw a model's probability over the plane, its decision boundary and the data.

    Args:
        predict_proba: maps float64 points of shape (M, 2) to probabilities of
            class 1, shape (M,) or (M, 1). A feature map such as an added
            ``x1 * x2`` column belongs inside this callable.
        points: the 2-D inputs, shape (N, 2), in the space the model reads.
        labels: their classes, 0 or 1.
        threshold: the probability drawn as the boundary line.
        resolution: grid points per axis; the callable receives resolution**2 points.
        margin: how far the grid extends beyond the points, in input units.

    Returns the PNG path.
    """
    xy, classes = _check_points(points, labels)
    low = xy.min(axis=0) - margin
    high = xy.max(axis=0) + margin
    grid_x, grid_y = np.meshgrid(
        np.linspace(low[0], high[0], resolution), np.linspace(low[1], high[1], resolution)
    )
    grid = np.column_stack([grid_x.ravel(), grid_y.ravel()])

    probabilities = np.asarray(predict_proba(grid), dtype=np.float64)
    if probabilities.shape not in ((grid.shape[0],), (grid.shape[0], 1)):
        raise ValueError(
            f"predict_proba returned shape {probabilities.shape} for {grid.shape[0]} points; "
            f"expected ({grid.shape[0]},) or ({grid.shape[0]}, 1)"
        )
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("predict_proba must return finite probabilities in [0, 1]")
    surface = probabilities.reshape(grid_x.shape)

    with default_style():
        figure = new_figure(panel_size=(5.5, 4.5))
        ax = figure.subplots()
        levels = np.linspace(0, 1, 11)
        filled = ax.contourf(grid_x, grid_y, surface, levels=levels, cmap="RdBu", alpha=0.6)
        figure.colorbar(filled, ax=ax, label="probability of class 1")
        # A surface entirely on one side of the threshold has no boundary to draw.
        if surface.min() < threshold < surface.max():
            ax.contour(grid_x, grid_y, surface, levels=[threshold], colors="black", linewidths=1.5)
        for label, color, marker in ((0, "tab:red", "o"), (1, "tab:blue", "^")):
            selected = xy[classes == label]
            ax.scatter(
                selected[:, 0],
                selected[:, 1],
                c=color,
                marker=marker,
                edgecolors="black",
                label=f"class {label}",
            )
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_title(title or f"Decision boundary at threshold {threshold:g}")
        ax.legend(loc="upper right")
        return save_png(figure, path)


def plot_regression_fit(
    x: Any,
    y: Any,
    path: str | os.PathLike[str],
    *,
    learned: tuple[float, float],
    true: tuple[float, float] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the data points with the learned line and, if given, the true line.

    ``learned`` and ``true`` are ``(b, w)``: intercept and slope of
    ``y = b + w * x``. ``x`` and ``y`` have shape (N,) or (N, 1). Returns the PNG path.
    """
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.size != ys.size or xs.size == 0:
        raise ValueError(
            "x and y must contain the same number of points (>= 1), "
            f"got {xs.size} and {ys.size}"
        )
    line_x = np.array([xs.min(), xs.max()])

    with default_style():
        figure = new_figure(panel_size=(5.0, 4.0))
        ax = figure.subplots()
        ax.scatter(xs, ys, s=15, color="tab:blue", label="data")
        b, w = learned
        ax.plot(line_x, b + w * line_x, color="tab:red", label=f"learned: b={b:.4f}, w={w:.4f}")
        if true is not None:
            true_b, true_w = true
            ax.plot(
                line_x,
                true_b + true_w * line_x,
                color="black",
                linestyle="--",
                label=f"true: b={true_b:.4f}, w={true_w:.4f}",
            )
        ax.set_xlabel("x")
        ax.set_ylabel("y")
        ax.set_title(title or "Regression fit")
        ax.legend(loc="upper left")
        return save_png(figure, path)
