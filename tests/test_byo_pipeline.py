"""scikit-learn's breast cancer, diabetes and digits data through the pipeline, as a user brings their own data.

The examples are exported by examples/export_sklearn_datasets.py and merged
into params.yaml by examples/apply_params.py, the commands the README documents.
The quality tests train in-process over five split seeds, so that no lucky
split decides; the end-to-end test runs `dvc repro` with MLflow tracking.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from conftest import PROJECT_ROOT, make_project, run, set_param
from stepbystep.data.importing import import_dataset
from stepbystep.data.loading import load_split_data, read_dataset
from stepbystep.data.preprocessing import Preprocessing
from stepbystep.data.splits import split_datasets
from stepbystep.evaluation.metrics import regression_metrics, threshold_metrics
from stepbystep.models import probabilities
from stepbystep.params import Params, load_params
from stepbystep.training import load_model_weights
from stepbystep.workflows.training import build_model, train_classifier, train_regression

pytestmark = pytest.mark.slow

SPLIT_SEEDS = range(5)

# (example params file, dataset, model, validation metric, minimum mean over SPLIT_SEEDS)
EXAMPLES = [
    ("breast_cancer", "breast_cancer", "breast_cancer_logistic", "accuracy", 0.95),
    ("digits", "digits", "digits_mlp", "accuracy", 0.97),
    ("diabetes", "diabetes", "linear_regression", "r2", 0.40),
]


def copy_examples(root: Path) -> None:
    """Copy examples/ into a project and export the scikit-learn datasets there, with the documented command."""
    shutil.copytree(
        PROJECT_ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("data", "__pycache__")
    )
    run(["python", "examples/export_sklearn_datasets.py"], root)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder with examples/ and the exported data under examples/data/."""
    root = make_project(tmp_path_factory.mktemp("exported") / "project", git=False)
    copy_examples(root)
    return root


def validation_score(params: Params, metadata: dict[str, Any], model_file: Path, dataset: str) -> float:
    """Return the validation accuracy (threshold 0.5) of a classifier or the validation R² of a regression."""
    model = build_model(metadata)
    load_model_weights(model_file, model)
    model.eval()
    preprocessing = Preprocessing.from_state_dict(metadata["preprocessing"])
    data = load_split_data(Path("data") / dataset, Path("data/splits") / f"{dataset}.json")
    with torch.no_grad():
        outputs = model(preprocessing.transform(data.val_features)).reshape(-1)

    if metadata["task"] == "regression":
        predictions = outputs.numpy()
        metrics = regression_metrics(data.val_targets, predictions, val_loss=0.0, n_parameters=1)
        return metrics["r2"]
    output = metadata["config"]["output"]
    return threshold_metrics(data.val_targets, probabilities(outputs, output).numpy(), 0.5)["accuracy"]


def train_statistics(params: Params, metadata: dict[str, Any], dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the per-column (table) or per-channel (images) mean of the training split, and of all rows."""
    data = load_split_data(Path("data") / dataset, Path("data/splits") / f"{dataset}.json")
    features, _, _ = read_dataset(Path("data") / dataset)
    if metadata["kind"] == "images":
        return data.train_features.mean(axis=(0, 2, 3)) / 255, np.asarray(features).mean(axis=(0, 2, 3)) / 255
    return data.train_features.mean(axis=0), features.mean(axis=0)


@pytest.mark.parametrize(
    ("example", "dataset", "model_name", "metric", "minimum"), EXAMPLES, ids=[case[0] for case in EXAMPLES]
)
def test_example_quality_over_split_seeds(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example, dataset, model_name, metric, minimum
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(exported / "examples")
    shutil.copy(exported / "params.yaml", tmp_path / "params.yaml")
    run(["python", "examples/apply_params.py", f"examples/{example}.yaml"], tmp_path)
    set_param(tmp_path / "params.yaml", "tracking.tensorboard", False)
    params = load_params(tmp_path / "params.yaml")
    import_dataset(dataset, params.import_data[dataset], Path("data") / dataset)

    scores = []
    for seed in SPLIT_SEEDS:
        set_param(tmp_path / "params.yaml", f"split.{dataset}.seed", seed)
        params = load_params(tmp_path / "params.yaml")
        split_datasets({dataset: params.split[dataset]}, Path("data"), Path("data/splits"))
        output_dir = Path("models") / f"{model_name}_seed{seed}"
        if model_name == "linear_regression":
            metadata = train_regression(params, output_dir, track=False)
        else:
            metadata = train_classifier(params, model_name, output_dir, track=False)

        train_mean, all_mean = train_statistics(params, metadata, dataset)
        np.testing.assert_allclose(metadata["preprocessing"]["mean"], train_mean, rtol=1e-9)
        assert not np.allclose(metadata["preprocessing"]["mean"], all_mean, rtol=1e-9, atol=0)
        scores.append(validation_score(params, metadata, output_dir / "model.pt", dataset))

    mean = float(np.mean(scores))
    print(f"{example}: validation {metric} per split seed {[round(score, 4) for score in scores]}, mean {mean:.4f}")
    assert mean >= minimum, f"mean validation {metric} {mean:.4f} < {minimum} (per seed: {scores})"


# --- end to end --------------------------------------------------------------


def ran(output: str, stage: str) -> bool:
    return f"Running stage '{stage}'" in output


@pytest.fixture(scope="module")
def examples_repro(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, dict[str, str]]:
    """A git repository with a table and an image example merged into params.yaml, after one `dvc repro`.

    The diabetes table replaces the book's regression and the digits folder
    feeds the only classifier, because the book's models and a third example
    would double the run time without testing another path.
    """
    base = tmp_path_factory.mktemp("examples_repro")
    root = make_project(base / "project", git=False)
    copy_examples(root)
    for example in ("diabetes", "digits"):
        run(["python", "examples/apply_params.py", f"examples/{example}.yaml"], root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_classifier"] = {"digits_mlp": params["train_classifier"]["digits_mlp"]}
    params["tracking"]["tensorboard"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "tests@example.com"], root)
    run(["git", "config", "user.name", "Tests"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "Add the scikit-learn examples"], root)

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{base / 'mlflow.db'}"}
    result = run(["dvc", "repro"], root, **env)
    return root, result, env


def test_dvc_repro_runs_imported_datasets(examples_repro) -> None:
    root, result, _ = examples_repro

    for stage in (
        "import_data@diabetes", "import_data@digits", "split_imported@diabetes", "split_imported@digits",
        "train_regression", "train_classifier@digits_mlp", "evaluate",
    ):
        assert ran(result.stdout, stage), f"{stage} did not run:\n{result.stdout}"
    assert json.loads((root / "data/splits/digits.json").read_text())["n_samples"] == 357
    assert sorted(path.name for path in (root / "data/digits").iterdir()) == ["dataset.json", "images.npy", "manifest.csv"]
    assert (root / "data/diabetes/data.csv").read_text().splitlines()[0] == "age,sex,bmi,bp,s1,s2,s3,s4,s5,s6,progression"


def test_dvc_repro_reports_imported_models(examples_repro) -> None:
    root, _, _ = examples_repro

    metrics = json.loads((root / "reports/metrics.json").read_text())
    comparison = (root / "reports/comparison.md").read_text()

    assert metrics["digits_mlp"]["accuracy"] >= 0.9
    assert metrics["linear_regression"]["r2"] >= 0.3
    for model in ("digits\\_mlp", "linear\\_regression"):
        assert model in comparison


def test_dvc_repro_logs_mlflow_runs(examples_repro) -> None:
    import mlflow

    root, _, env = examples_repro
    client = mlflow.MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])

    for model in ("digits_mlp", "linear_regression"):
        run_id = json.loads((root / "models" / model / "run.json").read_text())["run_id"]
        logged = client.get_run(run_id)
        assert logged.info.run_name == model
        assert "val_loss" in logged.data.metrics


def test_changed_source_reruns_import(examples_repro) -> None:
    root, _, env = examples_repro

    unchanged = run(["dvc", "repro"], root, **env)
    assert "Running stage" not in unchanged.stdout

    source = root / "examples/data/diabetes.csv"
    lines = source.read_text().splitlines(keepends=True)
    source.write_text("".join(lines[:-1]))
    status = run(["dvc", "status", "import_data@diabetes", "import_data@digits"], root, **env)

    assert "import_data@diabetes" in status.stdout
    assert "examples/data/diabetes.csv" in status.stdout
    assert "import_data@digits" not in status.stdout
