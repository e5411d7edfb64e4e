"""Print the MLflow training runs of the last N DVC experiments as a plain-text table.

Run it from the project root::

    python -m stepbystep.tracking.compare --last 3
    stepbystep-compare --last 3 --model images_deep_relu --metrics val_loss,eval/roc_auc

    stepbystep-compare --rev glued-keep --rev main

Every training stage tags its run with ``dvc_exp_name`` under ``dvc exp run``.
With ``--last`` the table has one row per such run: the experiment, the model,
the run id, the status, key params and key metrics. The experiments are
ordered by their latest run, newest first. Runs of a plain ``dvc repro`` carry
no experiment name and are left out, and so is a model that an experiment
restored from DVC's run cache instead of training it, because its run belongs
to the experiment that trained it.

With ``--rev`` (a DVC experiment name, a branch or a commit) the rows are the
runs that ``models/<model>/run.json`` names at that revision, one per model,
whichever experiment trained them. The column ``trained_in`` names that
experiment.

The output has no colours or box characters, so it reads the same on a
terminal and in CI logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stepbystep.errors import UserError, run_stage
from stepbystep.tracking.mlflow_store import (
    DEFAULT_EXPERIMENT_NAME,
    import_mlflow,
    project_root,
    sqlite_database_path,
    tracking_uri,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_LAST = 5
DEFAULT_PARAMS = ("lr", "epochs", "batch_size")
# Training logs val_loss at every epoch, and the table shows the last value.
# The evaluate stage adds the eval/ metrics to the same run.
DEFAULT_METRICS = ("val_loss", "eval/accuracy", "eval/roc_auc", "eval/mse")
MISSING = "-"

EXPERIMENT_TAG = "tags.dvc_exp_name"
MODEL_TAG = "tags.model_name"
RUN_FILES = "models/*/run.json"


def experiment_name_from_params(path: str = "params.yaml") -> str:
    """Return ``tracking.experiment_name`` of the params file, or the default name when the file or key is missing."""
    from stepbystep.params import read_params_file

    try:
        data = read_params_file(path)
    except UserError:
        return DEFAULT_EXPERIMENT_NAME
    tracking = data.get("tracking")
    name = tracking.get("experiment_name") if isinstance(tracking, dict) else None
    return name if isinstance(name, str) and name else DEFAULT_EXPERIMENT_NAME


def _open_store(uri: str) -> None:
    """Make ``uri`` MLflow's tracking URI, raising :class:`UserError` when its local SQLite file does not exist.

    The check keeps MLflow from creating an empty store in the wrong folder.
    """
    database = sqlite_database_path(uri)
    if database is not None and not database.is_file():
        raise UserError(
            f"no MLflow store at {database}. Fix: run this command in the project root, "
            "after `dvc exp run` has logged runs there"
        )
    import_mlflow().set_tracking_uri(uri)


def search_training_runs(experiment_name: str, uri: str) -> pd.DataFrame:
    """Return the training runs of the MLflow experiment ``experiment_name`` that carry a DVC experiment name.

    Raises :class:`UserError` when the local store file or the experiment does not exist.
    """
    _open_store(uri)
    mlflow = import_mlflow()
    if mlflow.MlflowClient(uri).get_experiment_by_name(experiment_name) is None:
        raise UserError(
            f"MLflow experiment {experiment_name!r} not found in {uri}. "
            "Fix: pass the name of tracking.experiment_name with --experiment"
        )

    runs = mlflow.search_runs(
        experiment_names=[experiment_name], filter_string="tags.run_type = 'training'", output_format="pandas"
    )
    if EXPERIMENT_TAG not in runs.columns:
        return runs.iloc[0:0]
    return runs[runs[EXPERIMENT_TAG].notna() & (runs[EXPERIMENT_TAG] != "")]


def last_experiments(runs: pd.DataFrame, count: int) -> list[str]:
    """Return the names of the ``count`` DVC experiments with the latest runs, newest first."""
    if runs.empty:
        return []
    latest = runs.groupby(EXPERIMENT_TAG)["start_time"].max().sort_values(ascending=False)
    return list(latest.index[:count])


def read_run_files(rev: str, root: str | None = None) -> dict[str, dict]:
    """Return the ``run.json`` content of every model at the git revision or DVC experiment ``rev``, by model name.

    The files are DVC outputs, read from the DVC cache of the project at
    ``root`` (default: :func:`project_root`). Raises :class:`UserError` when the
    revision is unknown or a file is not in the cache.
    """
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    fs = DVCFileSystem(str(root or project_root()), rev=rev)
    try:
        paths = sorted(fs.glob(RUN_FILES))
        files = {path.split("/")[1]: json.loads(fs.read_text(path)) for path in paths}
    except DvcException as error:
        raise UserError(
            f"cannot read {RUN_FILES} at revision {rev!r}: {error}. Fix: name a commit, branch or DVC experiment"
        ) from None
    except (OSError, ValueError) as error:
        raise UserError(
            f"cannot read {RUN_FILES} at revision {rev!r}: {error}. Fix: `dvc pull` the models of that revision"
        ) from None
    if not files:
        raise UserError(f"no {RUN_FILES} at revision {rev!r}. Fix: name a revision whose pipeline ran")
    return files


def search_revision_runs(revs: Sequence[str], uri: str) -> pd.DataFrame:
    """Return one row per model and revision: the run that the model's ``run.json`` names at that revision.

    The column ``revision`` contains the revision, ``trained_in`` the DVC
    experiment that logged the run (``-`` for ``dvc repro``), and a run missing
    from the store gets the status ``NOT_FOUND``.
    """
    import pandas as pd

    run_files = {rev: read_run_files(rev) for rev in revs}
    _open_store(uri)
    mlflow = import_mlflow()

    requested = {
        info["run_id"]: info for files in run_files.values() for info in files.values() if info.get("run_id")
    }
    experiment_ids = sorted({str(info["experiment_id"]) for info in requested.values() if info.get("experiment_id")})
    found = pd.DataFrame()
    if requested and experiment_ids:
        quoted = ", ".join(f"'{run_id}'" for run_id in sorted(requested))
        found = mlflow.search_runs(
            experiment_ids=experiment_ids, filter_string=f"attributes.run_id IN ({quoted})", output_format="pandas"
        )
    by_id = {row["run_id"]: row for _, row in found.iterrows()}

    rows = []
    for rev, files in run_files.items():
        for model, info in files.items():
            run_id = info.get("run_id")
            if not run_id:
                logger.warning("models/%s/run.json at %s names no MLflow run (tracking was off)", model, rev)
                continue
            row = by_id.get(run_id)
            if row is None:
                rows.append({"run_id": run_id, "status": "NOT_FOUND", MODEL_TAG: model})
            else:
                rows.append(row.to_dict())
            trained_in = rows[-1].get(EXPERIMENT_TAG)
            rows[-1]["revision"] = rev
            rows[-1]["trained_in"] = trained_in if isinstance(trained_in, str) and trained_in else MISSING
    return pd.DataFrame(rows)


def changed_params(runs: pd.DataFrame) -> list[str]:
    """Return the params whose value differs between two runs of the same model, sorted by name."""
    changed = set()
    param_columns = [column for column in runs.columns if column.startswith("params.")]
    for _, group in runs.groupby(MODEL_TAG):
        for column in param_columns:
            if group[column].nunique(dropna=False) > 1:
                changed.add(column.removeprefix("params."))
    return sorted(changed)


def _has_values(runs: pd.DataFrame, column: str) -> bool:
    return column in runs.columns and bool(runs[column].notna().any())


def _format_metric(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{float(value):.4g}"


def _format_param(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return str(value)


def comparison_rows(
    runs: pd.DataFrame,
    group_column: str,
    groups: Sequence[str],
    params: Sequence[str],
    metrics: Sequence[str],
    extra_columns: Sequence[str] = (),
) -> list[list[str]]:
    """Return the table cells: one row per run whose ``group_column`` is in ``groups``, in their order, by model."""
    rows = []
    for group in groups:
        selected = runs[runs[group_column] == group].sort_values(MODEL_TAG, kind="stable")
        for _, run in selected.iterrows():
            row = [group, _format_param(run.get(MODEL_TAG)), run["run_id"], run["status"]]
            row += [_format_param(run.get(name)) for name in extra_columns]
            row += [_format_param(run.get(f"params.{name}")) for name in params]
            row += [_format_metric(run.get(f"metrics.{name}")) for name in metrics]
            rows.append(row)
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    """Lay out ``rows`` under ``header`` in aligned columns.

    Columns before index ``numeric_from`` are left-aligned and the others right-aligned.
    """
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if index >= numeric_from else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), line(["-" * width for width in widths]), *(line(row) for row in rows)])


def compare(
    last: int = DEFAULT_LAST,
    experiment_name: str | None = None,
    models: Sequence[str] = (),
    params: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    uri: str | None = None,
    revs: Sequence[str] = (),
) -> str:
    """Return the comparison table with a heading line: the runs of the last ``last`` DVC experiments, or of ``revs``.

    ``revs`` replaces the search by experiment name with the runs that the
    ``run.json`` files name at those revisions (see :func:`search_revision_runs`),
    and then ``last`` and ``experiment_name`` are unused. ``params`` defaults to
    lr, epochs and batch_size plus every param that differs between runs of
    the same model. ``metrics`` defaults to val_loss and the evaluation's
    accuracy, ROC AUC and MSE, without the columns that no run has. Raises
    :class:`UserError` when no run matches.
    """
    if last < 1:
        raise UserError(f"invalid --last {last}: must be 1 or more")
    uri = uri or tracking_uri()
    model_filter = f" of models {', '.join(models)}" if models else ""

    if revs:
        groups = list(dict.fromkeys(revs))
        runs = search_revision_runs(groups, uri)
        group_column, extra_columns = "revision", ["trained_in"]
    else:
        experiment_name = experiment_name or experiment_name_from_params()
        runs = search_training_runs(experiment_name, uri)
        group_column, extra_columns = EXPERIMENT_TAG, []
    if models:
        runs = runs[runs[MODEL_TAG].isin(models)] if MODEL_TAG in runs.columns else runs.iloc[0:0]

    if revs:
        groups = [group for group in groups if not runs.empty and (runs[group_column] == group).any()]
        heading = f"MLflow store {uri}: runs{model_filter} named by {RUN_FILES} at {', '.join(revs)}"
    else:
        groups = last_experiments(runs, last)
        heading = (
            f"MLflow store {uri}: training runs{model_filter} of the last {len(groups)} DVC experiments "
            f"in MLflow experiment {experiment_name!r}"
        )
    if not groups:
        if revs:
            raise UserError(f"no runs{model_filter} named by {RUN_FILES} at {', '.join(revs)}")
        raise UserError(
            f"no training runs{model_filter} tagged with a DVC experiment name in MLflow experiment "
            f"{experiment_name!r} at {uri}. Runs of `dvc repro` have no experiment name. "
            "Fix: run `dvc exp run` first"
        )
    runs = runs[runs[group_column].isin(groups)]

    if params is None:
        params = list(DEFAULT_PARAMS) + [name for name in changed_params(runs) if name not in DEFAULT_PARAMS]
    if metrics is None:
        metrics = [name for name in DEFAULT_METRICS if _has_values(runs, f"metrics.{name}")]

    header = ["revision" if revs else "experiment", "model", "run_id", "status", *extra_columns, *params, *metrics]
    rows = comparison_rows(runs, group_column, groups, params, metrics, extra_columns)
    return heading + "\n\n" + format_table(header, rows, numeric_from=len(header) - len(metrics))


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="stepbystep-compare",
        description=(
            "Print the MLflow training runs of the last N DVC experiments as a table. "
            "The store is MLFLOW_TRACKING_URI when set, else mlflow.db in the project root "
            "(DVC_ROOT or the current directory)."
        ),
    )
    selection = parser.add_mutually_exclusive_group()
    selection.add_argument(
        "--last", type=int, default=DEFAULT_LAST, help=f"number of DVC experiments (default {DEFAULT_LAST})"
    )
    selection.add_argument(
        "--rev",
        action="append",
        default=[],
        help="a DVC experiment name, branch or commit: show the runs of every model at that revision, "
        "including runs restored from DVC's run cache; repeat for several",
    )
    parser.add_argument(
        "--experiment",
        default=None,
        help="MLflow experiment name for --last (default: tracking.experiment_name of params.yaml)",
    )
    parser.add_argument(
        "--model", action="append", default=[], help="show only this model; repeat for several (default: all)"
    )
    parser.add_argument(
        "--params",
        type=_names,
        default=None,
        help="comma-separated param columns (default: lr,epochs,batch_size and the params that differ)",
    )
    parser.add_argument(
        "--metrics",
        type=_names,
        default=None,
        help="comma-separated metric columns; a per-epoch metric shows its last value "
        "(default: val_loss,eval/accuracy,eval/roc_auc,eval/mse where present)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line: print the table to stdout, or an error to stderr with exit status 1."""
    args = parse_args(argv)

    def print_table() -> None:
        print(compare(args.last, args.experiment, args.model, args.params, args.metrics, revs=args.rev))

    run_stage(print_table)


if __name__ == "__main__":
    main(sys.argv[1:])
