"""The evaluation workflow in-process: stable files, figures, the report, missing models and MLflow logging.

Every model of the default params.yaml trains for two epochs in a temporary
project, which is enough for every file and figure the evaluation writes.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import PROJECT_ROOT, set_param
from stepbystep.data.images import build_images
from stepbystep.data.splits import split_datasets
from stepbystep.data.synthetic import generate_data
from stepbystep.errors import UserError
from stepbystep.params import Params, load_params
from stepbystep.tracking.evaluation_logging import flatten_metrics, metrics_to_log
from stepbystep.workflows import evaluation
from stepbystep.workflows.evaluation import EvaluationResult, check_plot_definitions, evaluate, model_names
from stepbystep.workflows.training import train_classifier, train_regression

EPOCHS = 2


def write_params(root: Path, drop: tuple[str, ...] = ()) -> Params:
    """Copy the default params.yaml into ``root`` with short training, TensorBoard off and classifiers ``drop`` removed."""
    document = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for name in drop:
        del document["train_classifier"][name]
    root.mkdir(parents=True, exist_ok=True)
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(document, sort_keys=False))
    set_param(params_file, "tracking.tensorboard", False)
    set_param(params_file, "train_regression.epochs", EPOCHS)
    for name in document["train_classifier"]:
        set_param(params_file, f"train_classifier.{name}.epochs", EPOCHS)
    return load_params(params_file)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with data, every model trained without tracking, and the pipeline's dvc.yaml."""
    root = tmp_path_factory.mktemp("evaluation")
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    params = write_params(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DVC_ROOT", raising=False)
        data = Path("data")
        generate_data(params.generate_data.regression, params.generate_data.moons, data / "regression", data / "moons")
        build_images(params.build_images, data / "images")
        split_datasets(params.split, data, data / "splits")
        train_regression(params, Path("models/linear_regression"), track=False)
        for name in params.train_classifier:
            train_classifier(params, name, Path("models") / name, track=False)
    return root


@pytest.fixture
def in_project(project: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(project)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    return project


@pytest.fixture(scope="module")
def full_run(project: Path) -> tuple[EvaluationResult, EvaluationResult]:
    """Two evaluations of every model with the same inputs, into reports/ and reports_second/."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)
        patch.delenv("DVC_ROOT", raising=False)
        params = load_params("params.yaml")
        first = evaluate(params, reports_dir=Path("reports"), track=False)
        second = evaluate(params, reports_dir=Path("reports_second"), track=False)
    return first, second


@pytest.fixture
def result(full_run: tuple[EvaluationResult, EvaluationResult], in_project: Path) -> EvaluationResult:
    return full_run[0]


def read_tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- files ------------------------------------------------------------------------


def test_two_evaluations_write_identical_files(full_run: tuple, in_project: Path) -> None:
    first = read_tree(in_project / "reports")
    second = read_tree(in_project / "reports_second")

    assert sorted(first) == sorted(second)
    assert first["metrics.json"] == second["metrics.json"]
    differing = [name for name in first if first[name] != second[name]]
    assert differing == []


def test_metrics_cover_every_model(result: EvaluationResult, in_project: Path) -> None:
    params = load_params("params.yaml")

    metrics = json.loads((in_project / "reports/metrics.json").read_text())

    assert sorted(metrics) == sorted(model_names(params))
    assert metrics == json.loads(json.dumps(metrics))
    for name, entry in metrics.items():
        assert entry["n_parameters"] > 0, name
        assert "val_loss" in entry, name
    assert result.metrics_path == Path("reports/metrics.json")


def test_classifier_metrics_hold_all_thresholds(result: EvaluationResult) -> None:
    params = load_params("params.yaml")

    entry = result.metrics["images_deep_relu"]

    assert set(entry["confusion_matrices"]) == {"threshold_0_3", "threshold_0_5", "threshold_0_7"}
    assert entry["confusion_matrix"] == entry["confusion_matrices"]["threshold_0_5"]
    for key in ("accuracy", "precision", "recall", "f1", "tpr", "fpr", "roc_auc", "pr_auc", "average_precision"):
        assert 0.0 <= entry[key] <= 1.0, key
    assert entry["best_threshold"]["criterion"] == params.evaluate.best_threshold_criterion
    assert entry["n_parameters"] == 5 * 25 + 3 * 5 + 1 * 3


def test_regression_reports_true_coefficients(result: EvaluationResult) -> None:
    entry = result.metrics["linear_regression"]

    assert entry["coefficients"]["w"]["true"] == 2.0
    assert entry["coefficients"]["b"]["true"] == 1.0
    assert set(entry["coefficients"]["w"]) == {"learned", "true"}
    assert entry["rmse"] == pytest.approx(entry["mse"] ** 0.5)
    assert entry["n_parameters"] == 2
    assert set(result.figures["regression"]) >= {Path("reports/figures/regression_fit_linear_regression.png")}


def test_figures_follow_model_rules(result: EvaluationResult, in_project: Path) -> None:
    params = load_params("params.yaml")

    names = {path.name for paths in result.figures.values() for path in paths}

    assert {"roc_moons.png", "pr_moons.png", "roc_images.png", "pr_images.png"} <= names
    assert {"decision_boundary_moons_logistic.png", "decision_boundary_moons_mapped.png"} <= names
    assert "regression_fit_linear_regression.png" in names
    variants = [name for name, config in params.train_classifier.items() if config.hidden_sizes]
    assert {f"filters_{name}.png" for name in variants} <= names
    assert {"equivalent_weights_images.png", "gradients_images.png", "activation_losses_images.png"} <= names
    assert "activation_functions.png" in names
    assert not any(name.startswith(("filters_moons", "decision_boundary_images")) for name in names)
    on_disk = {path.name for path in (in_project / "reports/figures").iterdir()}
    assert on_disk == names


def test_model_figures_name_their_models(result: EvaluationResult) -> None:
    figures = {name: {path.name for path in paths} for name, paths in result.model_figures.items()}

    assert "decision_boundary_moons_mapped.png" in figures["moons_mapped"]
    assert "decision_boundary_moons_mapped.png" not in figures["moons_logistic"]
    assert {"roc_moons.png", "pr_moons.png"} <= figures["moons_logistic"]


def test_report_html_embeds_every_figure(result: EvaluationResult) -> None:
    html = result.report_path.read_text()
    figures = [path for paths in result.figures.values() for path in paths]

    assert len(figures) >= 10
    for path in figures:
        assert base64.b64encode(path.read_bytes()).decode("ascii") in html, path.name
    assert html.count('src="data:image/png;base64,') == len(figures)
    assert re.findall(r'(?:src|href)="(?!data:)', html) == []


def test_comparison_markdown_links_existing_figures(result: EvaluationResult) -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", result.comparison_path.read_text())

    assert links
    for link in links:
        assert (result.comparison_path.parent / link).is_file(), link


def test_plot_files_cover_classifiers(result: EvaluationResult, in_project: Path) -> None:
    params = load_params("params.yaml")

    written = {str(path.relative_to("reports/plots")) for path in result.plot_files}

    for name, config in params.train_classifier.items():
        assert f"roc/{config.dataset}/{name}.csv" in written
        assert f"pr/{config.dataset}/{name}.csv" in written
        assert f"confusion/{name}.csv" in written
    assert "losses/linear_regression.csv" in written
    assert not any(path.startswith(("roc/regression", "confusion/linear_regression")) for path in written)
    header = (in_project / "reports/plots/losses/moons_logistic.csv").read_text().splitlines()
    assert header[0] == "epoch,train_loss,val_loss"
    assert len(header) == 1 + EPOCHS


def test_dvc_yaml_plots_name_every_curve_file(result: EvaluationResult) -> None:
    assert check_plot_definitions(Path("dvc.yaml"), Path("reports/plots"), result.plot_files) == []


# --- missing models -----------------------------------------------------------------


def test_removed_classifier_leaves_reports(
    result: EvaluationResult,
    project: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("data", "models", "reports"):
        shutil.copytree(project / name, tmp_path / name)
    shutil.copy(project / "dvc.yaml", tmp_path / "dvc.yaml")
    reduced = write_params(tmp_path, drop=("moons_mapped",))
    monkeypatch.chdir(tmp_path)

    with caplog.at_level("WARNING"):
        reduced_result = evaluate(reduced, track=False)

    assert "moons_mapped" not in reduced_result.metrics
    assert "moons_logistic" in reduced_result.metrics
    assert "moons_mapped" not in json.loads(Path("reports/metrics.json").read_text())
    assert not Path("reports/plots/roc/moons/moons_mapped.csv").exists()
    assert not Path("reports/figures/decision_boundary_moons_mapped.png").exists()
    assert "moons_mapped" not in Path("reports/comparison.md").read_text()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 2
    assert all("moons/moons_mapped.csv" in message for message in warnings)


def test_evaluation_reads_dataset_once(in_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    load_split_data = evaluation.load_split_data

    def counting_load(folder: Path, split_file: Path) -> object:
        reads.append(Path(folder).name)
        return load_split_data(folder, split_file)

    monkeypatch.setattr(evaluation, "load_split_data", counting_load)
    names = ["linear_regression", "moons_logistic", "moons_mapped"]

    result = evaluate(load_params("params.yaml"), reports_dir=tmp_path / "reports", names=names, track=False)

    assert sorted(reads) == ["moons", "regression"]
    assert result.models["moons_logistic"].data is result.models["moons_mapped"].data


def test_small_models_predict_on_one_thread(result: EvaluationResult, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    evaluated = result.models["images_deep_relu"]
    seen = []
    hook = evaluated.model.register_forward_pre_hook(lambda module, inputs: seen.append(torch.get_num_threads()))
    original = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        scores = evaluated.predict(evaluated.data.val_features)
        evaluation.validation_loss(evaluated)
        after = torch.get_num_threads()
    finally:
        hook.remove()
        torch.set_num_threads(original)

    assert seen == [1, 1]
    assert after == 2
    assert np.array_equal(scores, evaluated.scores)


def test_untrained_model_is_user_error(in_project: Path, tmp_path: Path) -> None:
    params = load_params("params.yaml")

    with pytest.raises(UserError, match="has no checkpoint"):
        evaluate(params, reports_dir=tmp_path / "reports", models_dir=tmp_path / "models", track=False)


def test_unknown_model_name_is_user_error(in_project: Path, tmp_path: Path) -> None:
    params = load_params("params.yaml")

    with pytest.raises(UserError, match="unknown model moons_cubic"):
        evaluate(params, reports_dir=tmp_path / "reports", names=["moons_cubic"], track=False)


def test_plot_definition_check_names_both_sides(tmp_path: Path) -> None:
    dvc_file = tmp_path / "dvc.yaml"
    dvc_file.write_text(
        yaml.safe_dump(
            {
                "plots": [
                    {"roc_moons": {"x": "fpr", "y": {"reports/plots/roc/moons/a.csv": "tpr", "other.csv": "tpr"}}},
                    {"reports/plots/losses": {"x": "epoch", "y": ["train_loss"]}},
                ]
            }
        )
    )
    written = [Path("reports/plots/roc/moons/b.csv"), Path("reports/plots/losses/a.csv")]

    messages = check_plot_definitions(dvc_file, Path("reports/plots"), written)

    assert len(messages) == 2
    assert "reports/plots/roc/moons/a.csv" in messages[0]
    assert "reports/plots/roc/moons/b.csv is not plotted" in messages[1]


# --- MLflow ---------------------------------------------------------------------------


def test_flatten_metrics_names() -> None:
    entry = {
        "roc_auc": 0.97979797,
        "n_parameters": 3,
        "confusion_matrix": [[7, 2], [1, 10]],
        "confusion_matrices": {"threshold_0_3": [[6, 3], [0, 11]]},
        "best_threshold": {"criterion": "f1", "threshold": 0.6767831, "value": 0.952381},
        "coefficients": {"w": {"learned": 1.94161, "true": 2.0}},
    }

    flat = flatten_metrics(entry)

    assert flat["eval/roc_auc"] == 0.979798
    assert flat["eval/n_parameters"] == 3.0
    assert (flat["eval/confusion_matrix/tn"], flat["eval/confusion_matrix/fp"]) == (7.0, 2.0)
    assert (flat["eval/confusion_matrix/fn"], flat["eval/confusion_matrix/tp"]) == (1.0, 10.0)
    assert flat["eval/confusion_matrices/threshold_0_3/tp"] == 11.0
    assert flat["eval/best_threshold/threshold"] == 0.676783
    assert "eval/best_threshold/criterion" not in flat
    assert flat["eval/coefficients/w/true"] == 2.0


def test_metrics_to_log_skips_equal_values() -> None:
    existing = {"eval/roc_auc": 0.979798, "eval/f1": 0.5, "val_loss": 0.3}

    new = metrics_to_log(existing, {"eval/roc_auc": 0.979798, "eval/f1": 0.6, "eval/mse": 0.1})

    assert new == {"eval/f1": 0.6, "eval/mse": 0.1}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with its schema created; copying it spares each test the migrations (seconds)."""
    import mlflow

    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def tracked_models(
    in_project: Path, empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, object, dict]:
    """Copies of two trained models whose run.json names real runs of a temporary SQLite store, and one without."""
    import mlflow

    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("stepbystep", artifact_location=(tmp_path / "mlartifacts").as_uri())

    models_dir = tmp_path / "models"
    run_ids = {}
    for name in ("linear_regression", "moons_logistic", "moons_mapped"):
        shutil.copytree(in_project / "models" / name, models_dir / name)
        if name == "moons_mapped":
            continue
        run = client.create_run(experiment_id, run_name=name, tags={"model_name": name, "run_type": "training"})
        client.log_metric(run.info.run_id, "val_loss", 0.5, step=1)
        client.set_terminated(run.info.run_id)
        run_ids[name] = run.info.run_id
        info = {"model": name, "experiment_name": "stepbystep", "run_id": run.info.run_id, "experiment_id": experiment_id}
        (models_dir / name / "run.json").write_text(json.dumps(info))
    return models_dir, client, run_ids


def comparison_runs(client: object) -> list:
    experiment = client.get_experiment_by_name("stepbystep")
    return client.search_runs([experiment.experiment_id], filter_string="tags.run_type = 'comparison'")


def test_evaluation_logs_into_training_runs(in_project: Path, tmp_path: Path, tracked_models: tuple) -> None:
    models_dir, client, run_ids = tracked_models
    params = load_params("params.yaml")
    names = ["linear_regression", "moons_logistic", "moons_mapped"]

    result = evaluate(params, reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)

    logged = client.get_run(run_ids["moons_logistic"]).data.metrics
    file_entry = json.loads((tmp_path / "reports/metrics.json").read_text())["moons_logistic"]
    assert logged["eval/roc_auc"] == file_entry["roc_auc"]
    assert logged["eval/confusion_matrix/tp"] == file_entry["confusion_matrix"][1][1]
    assert logged["val_loss"] == 0.5
    regression = client.get_run(run_ids["linear_regression"]).data.metrics
    assert regression["eval/coefficients/w/true"] == 2.0
    artifacts = {Path(item.path).name for item in client.list_artifacts(run_ids["moons_logistic"], "evaluation")}
    assert artifacts == {path.name for path in result.model_figures["moons_logistic"]}
    assert "decision_boundary_moons_mapped.png" not in artifacts


def test_comparison_run_links_model_runs(in_project: Path, tmp_path: Path, tracked_models: tuple) -> None:
    models_dir, client, run_ids = tracked_models
    params = load_params("params.yaml")
    names = ["linear_regression", "moons_logistic", "moons_mapped"]

    evaluate(params, reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)

    (run,) = comparison_runs(client)
    assert run.data.tags["compared_run.moons_logistic"] == run_ids["moons_logistic"]
    assert run.data.tags["compared_run.linear_regression"] == run_ids["linear_regression"]
    assert "compared_run.moons_mapped" not in run.data.tags
    assert run.data.params["evaluate.threshold"] == "0.5"
    assert "moons_logistic/roc_auc" in run.data.metrics
    artifacts = {Path(item.path).name for item in client.list_artifacts(run.info.run_id, "comparison")}
    assert artifacts == {"comparison.md", "report.html", "metrics.json"}


def test_repeated_evaluation_logs_nothing_twice(in_project: Path, tmp_path: Path, tracked_models: tuple) -> None:
    models_dir, client, run_ids = tracked_models
    params = load_params("params.yaml")
    names = ["linear_regression", "moons_logistic", "moons_mapped"]

    evaluate(params, reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)
    evaluate(params, reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)

    history = client.get_metric_history(run_ids["moons_logistic"], "eval/roc_auc")
    assert len(history) == 1
    assert len(comparison_runs(client)) == 1


def test_changed_threshold_logs_new_values(in_project: Path, tmp_path: Path, tracked_models: tuple) -> None:
    models_dir, client, run_ids = tracked_models
    params = load_params("params.yaml")
    names = ["moons_logistic"]
    evaluate(params, reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)
    params_file = tmp_path / "params.yaml"
    shutil.copy("params.yaml", params_file)
    set_param(params_file, "evaluate.threshold", 0.7)

    evaluate(load_params(params_file), reports_dir=tmp_path / "reports", models_dir=models_dir, names=names)

    run = client.get_run(run_ids["moons_logistic"])
    assert run.data.metrics["eval/threshold"] == 0.7
    assert len(client.get_metric_history(run_ids["moons_logistic"], "eval/threshold")) == 2
    assert len(client.get_metric_history(run_ids["moons_logistic"], "eval/roc_auc")) == 1
    assert len(comparison_runs(client)) == 2


def test_evaluation_reads_run_once(
    in_project: Path, tmp_path: Path, tracked_models: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    models_dir, client, run_ids = tracked_models
    reads = []
    get_run = MlflowClient.get_run

    def counting_get_run(self: MlflowClient, run_id: str) -> object:
        reads.append(run_id)
        return get_run(self, run_id)

    monkeypatch.setattr(MlflowClient, "get_run", counting_get_run)

    evaluate(load_params("params.yaml"), reports_dir=tmp_path / "reports", models_dir=models_dir, names=["moons_logistic"])

    assert reads.count(run_ids["moons_logistic"]) == 1
    assert "eval/roc_auc" in client.get_run(run_ids["moons_logistic"]).data.metrics
