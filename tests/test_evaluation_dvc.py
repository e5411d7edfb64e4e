"""The evaluate stage under `dvc repro` in a temporary git repository: reports, DVC plots and metrics, MLflow.

The tests work on one copy of the session's shared project of
``reproduced_pipeline``, in which `dvc repro` ran every stage with short
training and MLflow in the project's SQLite file. They run in file order,
and the last one changes a param.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import copy_project, run, set_param

pytestmark = pytest.mark.slow

CURVE_PLOTS = ("roc_moons", "pr_moons", "roc_images", "pr_images")


def ran(output: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in output


@pytest.fixture(scope="module")
def pipeline(reproduced_pipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a project in which `dvc repro` ran every stage, the evaluate stage last."""
    reproduced, result = reproduced_pipeline
    assert ran(result.stdout, "evaluate"), result.stdout
    assert "is not plotted" not in result.stderr
    assert "did not write" not in result.stderr
    return copy_project(reproduced, tmp_path_factory.mktemp("evaluate") / "project")


def model_names(project: Path) -> list[str]:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    return ["linear_regression", *params["train_classifier"]]


def mlflow_client(project: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def comparison_runs(project: Path) -> list:
    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("stepbystep")
    return client.search_runs([experiment.experiment_id], filter_string="tags.run_type = 'comparison'")


def test_repro_writes_reports(pipeline: Path) -> None:
    metrics = json.loads((pipeline / "reports/metrics.json").read_text())

    assert sorted(metrics) == sorted(model_names(pipeline))
    assert (pipeline / "reports/comparison.md").is_file()
    assert (pipeline / "reports/report.html").stat().st_size > 10_000
    assert len(list((pipeline / "reports/figures").glob("*.png"))) >= 10


def test_plots_show_renders_without_errors(pipeline: Path) -> None:
    plots = json.loads(run(["dvc", "plots", "show", "--json"], pipeline).stdout)

    assert plots.get("errors") in (None, [])
    for plot_id in CURVE_PLOTS:
        assert plot_id in plots["data"], plot_id
        assert plots["data"][plot_id][0]["type"] == "vega"
    for name in model_names(pipeline):
        assert f"reports/plots/losses/{name}.csv" in plots["data"], name
    assert "reports/plots/confusion/moons_logistic.csv" in plots["data"]
    assert "reports/plots/confusion/linear_regression.csv" not in plots["data"]


def test_plots_show_writes_html(pipeline: Path, tmp_path: Path) -> None:
    result = run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], pipeline)

    assert "failed" not in (result.stdout + result.stderr).lower()
    html = (tmp_path / "plots/index.html").read_text()
    assert "ROC curves on moons (validation)" in html
    assert "moons_mapped.csv" in html


def test_metrics_show_lists_every_model(pipeline: Path) -> None:
    metrics_output = json.loads(run(["dvc", "metrics", "show", "--json"], pipeline).stdout)

    (workspace,) = metrics_output.values()
    metrics = workspace["data"]["reports/metrics.json"]["data"]
    assert sorted(metrics) == sorted(model_names(pipeline))
    assert metrics["linear_regression"]["coefficients"]["w"]["true"] == 2.0


def test_unchanged_pipeline_skips_evaluate(pipeline: Path) -> None:
    result = run(["dvc", "repro"], pipeline)

    assert not ran(result.stdout, "evaluate")
    assert "Data and pipelines are up to date" in result.stdout


def test_forced_evaluate_repeats_files_and_logs_once(pipeline: Path) -> None:
    before = (pipeline / "reports/metrics.json").read_bytes()
    run_id = json.loads((pipeline / "models/moons_logistic/run.json").read_text())["run_id"]

    result = run(["dvc", "repro", "--force", "--single-item", "evaluate"], pipeline)

    assert ran(result.stdout, "evaluate")
    assert (pipeline / "reports/metrics.json").read_bytes() == before
    client = mlflow_client(pipeline)
    assert len(client.get_metric_history(run_id, "eval/roc_auc")) == 1
    assert len(comparison_runs(pipeline)) == 1


def test_threshold_change_reruns_evaluate_only(pipeline: Path) -> None:
    run(["git", "add", "dvc.lock", "reports/metrics.json", "reports/plots", "reports/comparison.md"], pipeline)
    run(["git", "commit", "-q", "-m", "Evaluate at threshold 0.5"], pipeline)
    set_param(pipeline / "params.yaml", "evaluate.threshold", 0.7)

    result = run(["dvc", "repro"], pipeline)

    assert ran(result.stdout, "evaluate")
    assert not any(ran(result.stdout, f"train_classifier@{name}") for name in model_names(pipeline))
    changes = json.loads(run(["dvc", "metrics", "diff", "--json"], pipeline).stdout)
    changed = changes["reports/metrics.json"]
    assert changed["moons_logistic.threshold"] == {"old": 0.5, "new": 0.7, "diff": pytest.approx(0.2)}
    assert "moons_logistic.roc_auc" not in changed
    diff = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], pipeline).stdout)
    assert diff.get("errors") in (None, [])
    confusion = diff["data"]["reports/plots/confusion/moons_logistic.csv"][0]
    assert set(confusion["revisions"]) == {"HEAD", "workspace"}
    assert len(comparison_runs(pipeline)) == 2
