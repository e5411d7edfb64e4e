"""Log evaluation results to MLflow once: metrics into training runs, and one comparison run.

This module builds on :mod:`stepbystep.tracking.mlflow_tracking` and adds what
a rerun of the evaluate stage needs to log nothing twice:

- :func:`flatten_metrics` turns a metrics.json entry into MLflow metrics named
  ``eval/<metric>``, apart from the ``train_loss`` and ``val_loss`` curves that
  training logs per epoch in the same run;
- :func:`log_model_evaluation` logs only the metrics that the run does not
  hold yet with the same value, and figures that are missing or belong to
  changed metrics;
- :func:`log_comparison` tags the comparison run with a hash of the
  evaluation and records no second run for an identical evaluation.

Values are rounded as in metrics.json, so the run and the file agree and an
unchanged value compares equal. MLflow is imported on first use.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stepbystep.errors import UserError
from stepbystep.evaluation.writers import round_significant, to_plain
from stepbystep.tracking import mlflow_tracking
from stepbystep.tracking.mlflow_store import call_with_retries, connect, import_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

METRIC_PREFIX = "eval/"
EVALUATION_HASH_TAG = "evaluation_sha256"
CONFUSION_CELLS = (("tn", "fp"), ("fn", "tp"))

# The comparison run gets each model's ranking metric, named <model>/<metric>.
PRIMARY_METRICS = ("roc_auc", "mse")


def _is_confusion_matrix(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(row, list) and len(row) == 2 for row in value)
        and all(isinstance(cell, int) and not isinstance(cell, bool) for row in value for cell in row)
    )


def flatten_metrics(entry: Mapping[str, Any], prefix: str = METRIC_PREFIX) -> dict[str, float]:
    """Flatten one metrics.json entry into MLflow metrics with ``/``-joined keys.

    Numbers keep their key (``eval/roc_auc``), nested mappings add a level
    (``eval/best_threshold/threshold``, ``eval/coefficients/w/learned``), and a
    2 x 2 confusion matrix becomes four counts (``eval/confusion_matrix/tn``).
    Strings and other lists have no metric form and are left out.
    """
    flat: dict[str, float] = {}
    for key, value in entry.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            flat[name] = round_significant(float(value))
        elif isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif _is_confusion_matrix(value):
            for row_names, row in zip(CONFUSION_CELLS, value, strict=True):
                for cell_name, count in zip(row_names, row, strict=True):
                    flat[f"{name}/{cell_name}"] = float(count)
    return flat


def metrics_to_log(existing: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
    """Return the entries of ``metrics`` that are missing from ``existing`` (a run's latest values) or differ there."""
    return {key: value for key, value in metrics.items() if existing.get(key) != value}


def log_model_evaluation(
    run_id: str,
    entry: Mapping[str, Any],
    figures: Sequence[str | os.PathLike[str]] = (),
    project_root: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Add a model's metrics.json entry and figures to its training run, skipping what the run already contains.

    When every metric is already there with the same value, only figures
    missing from the run's ``evaluation/`` artifacts are logged. Returns the
    metrics that were logged. Raises :class:`UserError` when the store has no
    run ``run_id``.
    """
    mlflow = import_mlflow()
    uri = connect(project_root)
    client = mlflow.MlflowClient(uri)
    run = mlflow_tracking.get_run(client, run_id, uri)

    new_metrics = metrics_to_log(run.data.metrics, flatten_metrics(entry))
    if new_metrics:
        artifacts = list(figures)
    else:
        logged = call_with_retries(
            lambda: client.list_artifacts(run_id, mlflow_tracking.EVALUATION_ARTIFACT_DIR),
            f"listing the artifacts of run {run_id}",
        )
        logged_names = {Path(item.path).name for item in logged}
        artifacts = [path for path in figures if Path(path).name not in logged_names]
    if not new_metrics and not artifacts:
        logger.info("MLflow run %s already contains this evaluation; nothing logged", run_id)
        return {}

    mlflow_tracking.add_to_run(client, run_id, new_metrics, artifacts)
    logger.info("MLflow run %s: logged %d evaluation metrics and %d figures", run_id, len(new_metrics), len(artifacts))
    return new_metrics


def evaluation_hash(
    model_run_ids: Mapping[str, str], metrics: Mapping[str, Any], evaluate_params: Mapping[str, Any]
) -> str:
    """Return a SHA-256 of the compared runs, the rounded metrics and the evaluate params."""
    content = {"runs": dict(model_run_ids), "metrics": to_plain(metrics), "params": to_plain(evaluate_params)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _primary_metrics(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    result = {}
    for model, entry in metrics.items():
        for key in PRIMARY_METRICS:
            if isinstance(entry.get(key), (int, float)):
                result[f"{model}/{key}"] = round_significant(float(entry[key]))
    return result


def find_comparison_run(client: MlflowClient, experiment_name: str, digest: str) -> str | None:
    """Return the id of a comparison run in ``experiment_name`` tagged with ``digest``, or ``None``."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = call_with_retries(
        lambda: client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.run_type = 'comparison' and tags.{EVALUATION_HASH_TAG} = '{digest}'",
            max_results=1,
        ),
        f"searching comparison runs in experiment {experiment_name!r}",
    )
    return runs[0].info.run_id if runs else None


def log_comparison(
    experiment_name: str,
    model_run_ids: Mapping[str, str],
    metrics: Mapping[str, Mapping[str, Any]],
    artifacts: Sequence[str | os.PathLike[str]],
    evaluate_params: Mapping[str, Any],
    project_root: str | os.PathLike[str] | None = None,
) -> str:
    """Record the comparison run of this evaluation, or find the one an identical evaluation recorded; return its id.

    The run links the models' training runs (``compared_run.<model>`` tags).
    It contains ``artifacts`` (the comparison table, the HTML report and
    metrics.json), the ranking metric of each model and the evaluate params.
    """
    from mlflow.entities import Param

    mlflow = import_mlflow()
    uri = connect(project_root)
    client = mlflow.MlflowClient(uri)

    digest = evaluation_hash(model_run_ids, metrics, evaluate_params)
    existing = find_comparison_run(client, experiment_name, digest)
    if existing is not None:
        logger.info("comparison run %s already records this evaluation; no new run", existing)
        return existing

    params = mlflow_tracking.flatten_params(evaluate_params, prefix="evaluate.")
    with mlflow_tracking.start_comparison_run(
        experiment_name,
        model_run_ids,
        artifacts=artifacts,
        metrics=_primary_metrics(metrics),
        project_root=project_root,
    ) as run:
        run_id = run.info.run_id
        client.set_tag(run_id, EVALUATION_HASH_TAG, digest)
        entries = [Param(key, value) for key, value in params.items()]
        call_with_retries(lambda: client.log_batch(run_id, params=entries), f"logging params to run {run_id}")
    logger.info("comparison run %s compares %s", run_id, ", ".join(model_run_ids))
    return run_id
