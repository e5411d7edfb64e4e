"""Evaluate every trained model of the pipeline and write the reports.

The evaluate stage calls :func:`evaluate`, which

1. rebuilds each model of params.yaml from ``models/<name>/model.pt`` with the
   preprocessing stored in its checkpoint, and scores the validation split;
2. writes ``reports/metrics.json``: one entry per model, see
   :func:`stepbystep.evaluation.metrics.classification_metrics` and
   :func:`stepbystep.evaluation.metrics.regression_metrics`;
3. writes the data of the DVC plots under ``reports/plots/``: loss curves,
   confusion rows, and ROC and precision-recall points per dataset;
4. draws the PNG figures under ``reports/figures/``;
5. writes ``reports/comparison.md`` and the self-contained ``reports/report.html``;
6. adds each model's metrics and figures to its MLflow training run, and
   records one comparison run (see :mod:`stepbystep.tracking.evaluation_logging`).

Models are grouped by dataset: a dataset is a task of the report, and the
models of one dataset share its ROC and precision-recall charts. Figures are
chosen by rules on each model's checkpoint metadata, never by model name, so a
model added to or removed from params.yaml changes the reports accordingly.
Paths are relative to the current folder, the project root under DVC.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from stepbystep import files
from stepbystep.data.layout import MODELS_DIR, REPORTS_DIR, dataset_dir, split_path
from stepbystep.data.loading import SplitData, load_split_data
from stepbystep.data.preprocessing import Preprocessing
from stepbystep.errors import DataError, UserError
from stepbystep.evaluation import metrics as metric_fns
from stepbystep.evaluation import plot_data, writers
from stepbystep.evaluation.network import equivalent_linear_weight
from stepbystep.params import Params
from stepbystep.reports import comparison, figures, network_figures
from stepbystep.training.checkpoint import CheckpointError, check_model_state_dict, load_checkpoint
from stepbystep.workflows.training import MODEL_FILE, RUN_FILE, build_model

logger = logging.getLogger(__name__)

# The name train_regression gives its model (ModelSpec.name in the training workflow).
REGRESSION_MODEL = "linear_regression"

METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
FIGURES_DIR = "figures"
COMPARISON_FILE = "comparison.md"
REPORT_FILE = "report.html"
DVC_FILE = "dvc.yaml"

# Report section of the figures that belong to no single dataset.
ACTIVATIONS_SECTION = "activation functions"

# Gradient statistic drawn per layer, as recorded by the trainer in the checkpoint history.
GRADIENT_STATISTIC = "grad_mean_abs"


@dataclass
class EvaluatedModel:
    """One trained model, rebuilt from its checkpoint, with its scores on the validation split."""

    name: str
    metadata: dict[str, Any]
    history: dict[str, list[Any]]
    model: nn.Module
    preprocessing: Preprocessing
    data: SplitData
    run: dict[str, Any]
    scores: np.ndarray  # probabilities of class 1 for a classifier, predictions for a regression, shape (N,)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.metadata["dataset"]["name"]

    @property
    def is_classifier(self) -> bool:
        return self.metadata["task"] == "binary"

    @property
    def config(self) -> dict[str, Any]:
        return self.metadata["config"]

    @property
    def has_hidden_layers(self) -> bool:
        return bool(self.config.get("hidden_sizes"))

    @property
    def is_image_classifier(self) -> bool:
        return self.is_classifier and self.metadata["kind"] == "images"

    @property
    def run_id(self) -> str | None:
        return self.run.get("run_id") or None

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Return scores for raw features: the model's preprocessing, forward pass and, for a classifier, probabilities."""
        from stepbystep.models import probabilities

        self.model.eval()
        with torch.no_grad(), forward_threads(self.model, len(features)):
            outputs = self.model(self.preprocessing.transform(features))
            if self.is_classifier:
                outputs = probabilities(outputs, self.config["output"])
        return outputs.numpy().reshape(-1).astype(np.float64)

    def linear_layers(self) -> list[tuple[str, nn.Linear]]:
        """Return the model's ``nn.Linear`` layers in forward order, by module name (``hidden0``, ..., ``output``)."""
        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, nn.Linear)]


@dataclass
class EvaluationResult:
    """The scored models and the files of one evaluation, for the stage's log, the tests and MLflow."""

    models: dict[str, EvaluatedModel]
    metrics: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, dict[str, Any]]]
    metrics_path: Path
    plot_files: list[Path]
    figures: dict[str, list[Path]]  # report section -> PNG files
    model_figures: dict[str, list[Path]]  # model name -> the PNG files that show it
    comparison_path: Path
    report_path: Path


# --- loading and scoring ----------------------------------------------------


@contextlib.contextmanager
def forward_threads(model: nn.Module, n_rows: int) -> Iterator[None]:
    """Run the block with the intra-op thread count that training chooses for a batch of ``n_rows``, then restore it.

    Evaluation passes every validation row, or every point of a decision
    boundary grid, through the model at once. For the small models of the
    pipeline that is below the size where a second thread pays off
    (:func:`stepbystep.training.threads.choose_num_threads`). When another
    process occupies the second core, each operation on two threads waits for it.
    """
    from stepbystep.training.threads import choose_num_threads

    previous = torch.get_num_threads()
    chosen = choose_num_threads(model, n_rows)
    if chosen == previous:
        yield
        return
    torch.set_num_threads(chosen)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def model_names(params: Params) -> list[str]:
    """Return the names of every model that params.yaml trains: the regression first, then the classifiers."""
    return [REGRESSION_MODEL, *params.train_classifier]


def _read_run_info(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read {path}: {error}. Fix: train the model again") from None
    return info if isinstance(info, dict) else {}


def load_model(
    name: str, models_dir: Path = MODELS_DIR, datasets: dict[str, SplitData] | None = None
) -> EvaluatedModel:
    """Rebuild model ``name`` from ``models_dir/<name>/model.pt`` and score its validation split.

    ``datasets`` maps dataset names to the data already loaded: a model of a
    dataset found there shares that data, and a dataset loaded here is added,
    so the models of one evaluation read each dataset once. Raises
    :class:`UserError` when the model has not been trained or its checkpoint
    cannot be read.
    """
    folder = models_dir / name
    checkpoint_path = folder / MODEL_FILE
    if not checkpoint_path.is_file():
        raise UserError(
            f"model {name!r} has no checkpoint at {checkpoint_path}. "
            "Fix: train it first, for example with `dvc repro`"
        )
    try:
        checkpoint = load_checkpoint(checkpoint_path)
        metadata = checkpoint["metadata"]
        model = build_model(metadata)
        check_model_state_dict(checkpoint_path, model, checkpoint["model_state_dict"])
    except (CheckpointError, KeyError) as error:
        raise UserError(f"cannot evaluate model {name!r}: {error}. Fix: train it again") from None
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()

    dataset = metadata["dataset"]["name"]
    data = datasets.get(dataset) if datasets is not None else None
    if data is None:
        data = load_split_data(dataset_dir(dataset), split_path(dataset))
        if datasets is not None:
            datasets[dataset] = data
    evaluated = EvaluatedModel(
        name=name,
        metadata=metadata,
        history={key: list(values) for key, values in checkpoint["history"].items()},
        model=model,
        preprocessing=Preprocessing.from_state_dict(metadata["preprocessing"]),
        data=data,
        run=_read_run_info(folder / RUN_FILE),
        scores=np.empty(0),
    )
    evaluated.scores = evaluated.predict(data.val_features)
    return evaluated


def validation_loss(evaluated: EvaluatedModel) -> float:
    """Return the model's training loss over the whole validation split, averaged over samples.

    The trainer averages the losses of validation mini-batches instead, so the
    last ``val_loss`` of training differs from this value when the last batch
    is smaller than the others.
    """
    from stepbystep.data.loading import target_tensor
    from stepbystep.models import binary_loss_fn

    loss_fn = binary_loss_fn(evaluated.config["output"]) if evaluated.is_classifier else nn.MSELoss()
    features = evaluated.data.val_features
    with torch.no_grad(), forward_threads(evaluated.model, len(features)):
        outputs = evaluated.model(evaluated.preprocessing.transform(features))
        loss = loss_fn(outputs, target_tensor(evaluated.data.val_targets))
    return float(loss)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def regression_coefficients(
    evaluated: EvaluatedModel,
) -> tuple[dict[str, float], dict[str, float] | None]:
    """Return the learned ``b`` and ``w`` of a one-layer regression and the true ones from the dataset description.

    One feature gives ``w``; several give ``w_0``, ``w_1``, ... in feature
    order. The true values are ``None`` when the dataset does not record them.
    """
    (_, layer), *others = evaluated.linear_layers()
    if others or layer.out_features != 1:
        raise UserError(f"model {evaluated.name!r} is not a single Linear(n, 1) layer, so it has no b and w")
    weights = layer.weight.detach().reshape(-1).tolist()
    learned = {"b": float(layer.bias.detach()[0]) if layer.bias is not None else 0.0}
    learned.update(_name_weights(weights))

    truth = evaluated.metadata["dataset"].get("true_coefficients")
    if not truth:
        return learned, None
    true_w = truth.get("w", [])
    true_w = true_w if isinstance(true_w, list) else [true_w]
    if len(true_w) != len(weights):
        logger.warning(
            "%s: the dataset records %d true weights for %d features; reporting learned values only",
            evaluated.name,
            len(true_w),
            len(weights),
        )
        return learned, None
    true = {"b": float(truth["b"]), **_name_weights(true_w)}
    return learned, true


def _name_weights(weights: Sequence[float]) -> dict[str, float]:
    if len(weights) == 1:
        return {"w": float(weights[0])}
    return {f"w_{index}": float(value) for index, value in enumerate(weights)}


def check_validation_split(evaluated: EvaluatedModel) -> None:
    """Raise :class:`UserError` when the validation split is too small for the model's metrics.

    ROC AUC and precision need both classes among the validation labels, and
    r2 needs two different targets. The message names the split params to change.
    """
    labels = evaluated.data.val_targets
    values = np.unique(labels)
    if values.size >= 2:
        return
    key = f"split.{evaluated.dataset}"
    if evaluated.is_classifier:
        found = ", ".join(str(int(value)) for value in values) or "none"
        problem = f"only the class labels [{found}], but ROC AUC and precision need both classes"
        fix = (
            f"raise {key}.val_fraction or add samples, or set {key}.stratify to true "
            "(with method train_test_split), so that both classes reach the validation split"
        )
    else:
        problem = f"{values.size} distinct targets, but r2 needs at least two"
        fix = f"raise {key}.val_fraction or add samples"
    samples = f"{labels.size} sample" if labels.size == 1 else f"{labels.size} samples"
    raise UserError(
        f"cannot evaluate model {evaluated.name!r}: the validation split of dataset {evaluated.dataset!r} "
        f"has {samples} and {problem}. Fix: {fix}"
    )


def score_model(evaluated: EvaluatedModel, params: Params) -> dict[str, Any]:
    """Compute the metrics.json entry of one model on its validation split."""
    check_validation_split(evaluated)
    labels = evaluated.data.val_targets
    common = {"val_loss": validation_loss(evaluated), "n_parameters": count_parameters(evaluated.model)}
    try:
        if evaluated.is_classifier:
            settings = params.evaluate
            return metric_fns.classification_metrics(
                labels,
                evaluated.scores,
                threshold=settings.threshold,
                thresholds=settings.thresholds,
                best_threshold_criterion=settings.best_threshold_criterion,
                **common,
            )
        learned, true = regression_coefficients(evaluated)
        return metric_fns.regression_metrics(
            labels, evaluated.scores, coefficients=learned, true_coefficients=true, **common
        )
    except ValueError as error:
        raise UserError(f"cannot evaluate model {evaluated.name!r}: {error}") from None


# --- DVC plot data -----------------------------------------------------------


def write_plot_data(models: Mapping[str, EvaluatedModel], folder: Path, threshold: float) -> list[Path]:
    """Write the files of the DVC plots into ``folder`` and return their paths.

    - ``losses/<model>.csv``: ``epoch``, ``train_loss``, ``val_loss`` per epoch;
    - ``confusion/<model>.csv``: ``actual`` and ``predicted`` per validation
      sample at ``threshold``, for DVC's ``confusion`` template;
    - ``roc/<dataset>/<model>.csv`` and ``pr/<dataset>/<model>.csv``: the
      curve points of each classifier, one file per model so that dvc.yaml
      can draw the models of a dataset on one chart.
    """
    written = []
    for name, evaluated in models.items():
        train_loss = evaluated.history.get("train_loss", [])
        val_loss = evaluated.history.get("val_loss")
        if val_loss is not None and any(value is None for value in val_loss):
            val_loss = None
        rows = plot_data.loss_curve_rows(train_loss, val_loss)
        written.append(writers.write_rows_csv(folder / "losses" / f"{name}.csv", rows, plot_data.LOSS_COLUMNS))

        if not evaluated.is_classifier:
            continue
        labels = evaluated.data.val_targets
        rows = plot_data.confusion_rows(labels, evaluated.scores, threshold)
        written.append(writers.write_rows_csv(folder / "confusion" / f"{name}.csv", rows, plot_data.CONFUSION_COLUMNS))
        scored = {name: (labels, evaluated.scores)}
        roc_rows = plot_data.roc_curve_rows(scored)
        pr_rows = plot_data.pr_curve_rows(scored)
        dataset = evaluated.dataset
        written.append(writers.write_rows_csv(folder / "roc" / dataset / f"{name}.csv", roc_rows, plot_data.ROC_COLUMNS))
        written.append(writers.write_rows_csv(folder / "pr" / dataset / f"{name}.csv", pr_rows, plot_data.PR_COLUMNS))
    return written


def check_plot_definitions(dvc_file: Path, plots_dir: Path, written: Iterable[Path]) -> list[str]:
    """Compare the files that top-level plots of ``dvc_file`` name under ``plots_dir`` with the files written.

    A chart that draws several files names each one in dvc.yaml, so adding or
    removing a classifier in params.yaml needs a matching edit there. Returns
    one message per file named but not written, or written under
    ``plots_dir/roc`` or ``plots_dir/pr`` but not named. ``dvc plots show``
    reports a file of the first kind as an error. It leaves out a file of the
    second kind without a message.
    """
    try:
        document = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        return [f"cannot read the plot definitions of {dvc_file}: {error}"]

    named: set[str] = set()
    for definition in document.get("plots") or []:
        if not isinstance(definition, dict):
            continue
        for props in definition.values():
            y_axis = props.get("y") if isinstance(props, dict) else None
            if isinstance(y_axis, dict):
                named.update(os.path.normpath(path) for path in y_axis)

    prefix = os.path.normpath(plots_dir) + os.sep
    produced = {os.path.normpath(path) for path in written}
    messages = [
        f"{dvc_file} plots {path}, which the evaluation did not write. "
        "Fix: remove it from the chart, or add its model back to params.yaml"
        for path in sorted(named)
        if path.startswith(prefix) and path not in produced
    ]
    curve_folders = tuple(os.path.join(os.path.normpath(plots_dir), kind) + os.sep for kind in ("roc", "pr"))
    messages += [
        f"{path} is not plotted. Fix: add it to the y files of its chart in {dvc_file}"
        for path in sorted(produced)
        if path.startswith(curve_folders) and path not in named
    ]
    return messages


# --- figures -----------------------------------------------------------------


class FigureSet:
    """PNG files drawn so far, by report section and by the models each one shows."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sections: dict[str, list[Path]] = {}
        self.by_model: dict[str, list[Path]] = {}

    def draw(self, section: str, file_name: str, models: Iterable[str], draw: Callable[[Path], Path]) -> None:
        path = draw(self.folder / file_name)
        self.sections.setdefault(section, []).append(path)
        for name in models:
            self.by_model.setdefault(name, []).append(path)


def _losses(evaluated: EvaluatedModel) -> dict[str, list[float]]:
    losses = {"train_loss": [float(value) for value in evaluated.history.get("train_loss", [])]}
    val_loss = evaluated.history.get("val_loss") or []
    if val_loss and all(value is not None for value in val_loss):
        losses["val_loss"] = [float(value) for value in val_loss]
    return losses


def _weight(layer: nn.Linear) -> np.ndarray:
    return layer.weight.detach().cpu().numpy().astype(np.float64)


def _is_square_image(evaluated: EvaluatedModel) -> bool:
    shape = evaluated.metadata.get("input_shape", [])
    return len(shape) == 3 and shape[0] == 1 and shape[1] == shape[2]


def _gradient_series(evaluated: EvaluatedModel) -> dict[str, list[float]]:
    """Return the mean absolute weight gradient per epoch of each linear layer, keyed by layer name."""
    series = {}
    for layer_name, _ in evaluated.linear_layers():
        values = evaluated.history.get(f"{GRADIENT_STATISTIC}/{layer_name}.weight")
        if values:
            series[layer_name] = [float(value) for value in values]
    return series


def _draw_dataset_figures(
    figure_set: FigureSet, dataset: str, group: dict[str, EvaluatedModel], threshold: float
) -> None:
    """Draw the figures of one dataset: losses, curves, fits, filters and the activation comparisons."""
    names = list(group)
    figure_set.draw(
        dataset,
        f"losses_{dataset}.png",
        names,
        lambda path: figures.plot_loss_curves(
            {name: _losses(evaluated) for name, evaluated in group.items()}, path, title=f"Losses on {dataset}"
        ),
    )

    classifiers = {name: evaluated for name, evaluated in group.items() if evaluated.is_classifier}
    if classifiers:
        scored = {name: (evaluated.data.val_targets, evaluated.scores) for name, evaluated in classifiers.items()}
        figure_set.draw(
            dataset,
            f"roc_{dataset}.png",
            classifiers,
            lambda path: figures.plot_roc_curves(scored, path, title=f"ROC curves on {dataset} (validation)"),
        )
        figure_set.draw(
            dataset,
            f"pr_{dataset}.png",
            classifiers,
            lambda path: figures.plot_pr_curves(
                scored, path, title=f"Precision-recall curves on {dataset} (validation)"
            ),
        )

    for name, evaluated in group.items():
        _draw_model_figures(figure_set, dataset, name, evaluated, threshold)

    _draw_network_figures(figure_set, dataset, group)


def _draw_model_figures(
    figure_set: FigureSet, dataset: str, name: str, evaluated: EvaluatedModel, threshold: float
) -> None:
    data = evaluated.data
    is_table = evaluated.metadata["kind"] == "table" and data.val_features.ndim == 2
    if evaluated.is_classifier and is_table and data.val_features.shape[1] == 2:
        # Points stay in the raw feature space; the callable applies the
        # model's scaling and polynomial map, as prediction does.
        figure_set.draw(
            dataset,
            f"decision_boundary_{name}.png",
            [name],
            lambda path: figures.plot_decision_boundary(
                evaluated.predict,
                data.val_features,
                data.val_targets,
                path,
                threshold=threshold,
                title=f"{name}: decision boundary at {threshold:g} (validation points)",
            ),
        )

    if not evaluated.is_classifier and is_table and data.val_features.shape[1] == 1:
        learned, true = regression_coefficients(evaluated)
        features = np.concatenate([data.train_features, data.val_features])[:, 0]
        targets = np.concatenate([data.train_targets, data.val_targets])
        figure_set.draw(
            dataset,
            f"regression_fit_{name}.png",
            [name],
            lambda path: figures.plot_regression_fit(
                features,
                targets,
                path,
                learned=(learned["b"], learned["w"]),
                true=(true["b"], true["w"]) if true else None,
                title=f"{name}: fit over all {targets.size} points",
            ),
        )

    if evaluated.is_image_classifier and evaluated.has_hidden_layers and _is_square_image(evaluated):
        (first_name, first_layer), *_ = evaluated.linear_layers()
        figure_set.draw(
            dataset,
            f"filters_{name}.png",
            [name],
            lambda path: network_figures.plot_filters(
                _weight(first_layer), path, title=f"{name}: {first_name} weights as filters"
            ),
        )


def _draw_network_figures(figure_set: FigureSet, dataset: str, group: dict[str, EvaluatedModel]) -> None:
    """Draw the comparisons of image classifiers: equivalent linear weights, and gradients and losses by activation."""
    image_models = {
        name: evaluated for name, evaluated in group.items() if evaluated.is_image_classifier and _is_square_image(evaluated)
    }

    # A linear model has one layer, or stacked layers without activation whose
    # weight product is one equivalent weight of shape (1, pixels).
    linear = {name: evaluated for name, evaluated in image_models.items() if evaluated.config["activation"] == "none"}
    if any(evaluated.has_hidden_layers for evaluated in linear.values()):
        weights = {
            name: equivalent_linear_weight([_weight(layer) for _, layer in evaluated.linear_layers()])
            for name, evaluated in linear.items()
        }
        figure_set.draw(
            dataset,
            f"equivalent_weights_{dataset}.png",
            linear,
            lambda path: network_figures.plot_weight_images(
                weights,
                path,
                title="Equivalent single-layer weights",
            ),
        )

    variants = {name: evaluated for name, evaluated in image_models.items() if evaluated.has_hidden_layers}
    if not variants:
        return
    gradients = {name: _gradient_series(evaluated) for name, evaluated in variants.items()}
    without = sorted(name for name, series in gradients.items() if not series)
    if without:
        logger.warning("no gradient statistics in the checkpoint history of %s; train them again to draw them", without)
    gradients = {name: series for name, series in gradients.items() if series}
    if gradients:
        figure_set.draw(
            dataset,
            f"gradients_{dataset}.png",
            gradients,
            lambda path: network_figures.plot_gradient_magnitudes(
                gradients, path, title="Mean absolute weight gradient per layer and epoch"
            ),
        )
    figure_set.draw(
        dataset,
        f"activation_losses_{dataset}.png",
        variants,
        lambda path: figures.plot_loss_curves(
            {name: _losses(evaluated) for name, evaluated in variants.items()},
            path,
            title="Losses of the deep models by activation",
        ),
    )


def draw_figures(models: Mapping[str, EvaluatedModel], folder: Path, threshold: float) -> FigureSet:
    """Draw every figure into ``folder`` and return them by report section and by model.

    Per dataset: the loss curves of its models and, for classifiers, their ROC
    and precision-recall curves. Per model: the decision boundary of a
    classifier of two table features, the fit of a regression on one feature,
    and the first hidden layer's weights as filters of an image classifier
    with hidden layers. Per image dataset: the equivalent weights of its linear
    models when one of them stacks layers, and the gradients and losses of its
    classifiers with hidden layers, one panel per activation variant. Once:
    the activation functions, when such a variant exists.
    """
    figure_set = FigureSet(folder)
    for dataset, group in group_by_dataset(models).items():
        _draw_dataset_figures(figure_set, dataset, group, threshold)

    if any(evaluated.is_image_classifier and evaluated.has_hidden_layers for evaluated in models.values()):
        figure_set.draw(
            ACTIVATIONS_SECTION,
            "activation_functions.png",
            [],
            lambda path: network_figures.plot_activation_functions(path),
        )
    return figure_set


def group_by_dataset(models: Mapping[str, EvaluatedModel]) -> dict[str, dict[str, EvaluatedModel]]:
    """Group models by the dataset they were trained on, keeping the order of ``models``."""
    groups: dict[str, dict[str, EvaluatedModel]] = {}
    for name, evaluated in models.items():
        groups.setdefault(evaluated.dataset, {})[name] = evaluated
    return groups


# --- the stage ----------------------------------------------------------------


def _relocate(paths: Iterable[Path], source: Path, target: Path) -> list[Path]:
    return [target / path.relative_to(source) for path in paths]


def evaluate(
    params: Params,
    reports_dir: Path = REPORTS_DIR,
    models_dir: Path = MODELS_DIR,
    names: Sequence[str] | None = None,
    track: bool = True,
) -> EvaluationResult:
    """Evaluate the models ``names`` (default: every model of params.yaml) and write all reports.

    ``reports/plots`` and ``reports/figures`` are replaced as a whole, so files
    of models no longer in params.yaml disappear. With ``track`` the results go
    to MLflow as well, for the models whose ``run.json`` has a run id.
    Returns what was written; raises :class:`UserError` for a model that is
    missing, unreadable or not evaluable on its validation split.
    """
    names = list(names) if names is not None else model_names(params)
    known = set(model_names(params))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(
            f"unknown model {', '.join(unknown)}: params.yaml trains {', '.join(sorted(known))}. "
            "Fix: name one of those models"
        )
    settings = params.evaluate

    # Load and score every model, reading each dataset once.
    models: dict[str, EvaluatedModel] = {}
    datasets: dict[str, SplitData] = {}
    for name in names:
        evaluated = load_model(name, models_dir, datasets)
        evaluated.metrics = score_model(evaluated, params)
        models[name] = evaluated
        logger.info("%s: %s", name, _summary(evaluated.metrics))

    # Metrics, grouped by dataset for the report.
    tasks = {
        dataset: {name: evaluated.metrics for name, evaluated in group.items()}
        for dataset, group in group_by_dataset(models).items()
    }
    metrics = comparison.merge_task_metrics(tasks)
    with files.os_errors_as_output_error(reports_dir / METRICS_FILE):
        metrics_path = writers.write_metrics_json(reports_dir / METRICS_FILE, metrics)

    # Plot data and figures, each folder replaced in one move.
    plots_dir = reports_dir / PLOTS_DIR
    with files.atomic_directory(plots_dir) as staging:
        plot_files = _relocate(write_plot_data(models, staging, settings.threshold), staging, plots_dir)
    figures_dir = reports_dir / FIGURES_DIR
    with files.atomic_directory(figures_dir) as staging:
        drawn = draw_figures(models, staging, settings.threshold)
    sections = {section: _relocate(paths, staging, figures_dir) for section, paths in drawn.sections.items()}
    model_figures = {name: _relocate(paths, staging, figures_dir) for name, paths in drawn.by_model.items()}

    # The comparison report links or embeds the figures at their final place.
    with files.os_errors_as_output_error(reports_dir / COMPARISON_FILE):
        comparison_path = comparison.write_comparison_markdown(reports_dir / COMPARISON_FILE, tasks, sections)
    with files.os_errors_as_output_error(reports_dir / REPORT_FILE):
        report_path = comparison.write_report_html(reports_dir / REPORT_FILE, tasks, sections)
    logger.info(
        "wrote %s, %d plot files, %d figures, %s and %s",
        metrics_path,
        len(plot_files),
        sum(len(paths) for paths in sections.values()),
        comparison_path,
        report_path,
    )

    if Path(DVC_FILE).is_file():
        for message in check_plot_definitions(Path(DVC_FILE), plots_dir, plot_files):
            logger.warning("%s", message)

    result = EvaluationResult(
        models=models,
        metrics=metrics,
        tasks=tasks,
        metrics_path=metrics_path,
        plot_files=plot_files,
        figures=sections,
        model_figures=model_figures,
        comparison_path=comparison_path,
        report_path=report_path,
    )
    if track:
        log_to_mlflow(result, params)
    return result


def _summary(entry: Mapping[str, Any]) -> str:
    keys = ("roc_auc", "pr_auc", "accuracy", "f1") if "roc_auc" in entry else ("mse", "r2")
    values = [f"{key}={entry[key]:.6g}" for key in keys]
    values.append(f"val_loss={entry['val_loss']:.6g}")
    if "best_threshold" in entry:
        best = entry["best_threshold"]
        values.append(f"best {best['criterion']} threshold={best['threshold']:.6g} (not applied)")
    return " ".join(values)


def log_to_mlflow(result: EvaluationResult, params: Params) -> None:
    """Log each model's evaluation into its training run and record the comparison run.

    Models trained with tracking off have no run id in ``run.json`` and are
    skipped; without any run id nothing is logged.
    """
    run_ids = {name: evaluated.run_id for name, evaluated in result.models.items() if evaluated.run_id}
    untracked = sorted(set(result.models) - set(run_ids))
    if untracked:
        logger.info("no MLflow run recorded for %s; not logging their evaluation", ", ".join(untracked))
    if not run_ids:
        return

    from stepbystep.tracking import evaluation_logging

    for name, run_id in run_ids.items():
        evaluation_logging.log_model_evaluation(run_id, result.metrics[name], result.model_figures.get(name, []))
    evaluation_logging.log_comparison(
        params.tracking.experiment_name,
        run_ids,
        metrics=result.metrics,
        artifacts=[result.comparison_path, result.report_path, result.metrics_path],
        evaluate_params=params.evaluate.model_dump(),
    )
