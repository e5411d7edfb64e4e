"""The training stages under `dvc repro`, tracked in the project's MLflow store.

The tests read the session's shared project of ``trained_pipeline``, in
which every model trained for a few epochs. The test that changes a param
works on a copy of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import SHARED_EPOCHS, copy_project, run, set_param

pytestmark = pytest.mark.slow

CLASSIFIERS = [
    "moons_logistic",
    "moons_mapped",
    "images_logistic",
    "images_deep_linear",
    "images_deep_relu",
    "images_deep_sigmoid",
    "images_deep_tanh",
    "images_deep_leaky_relu",
    "images_deep_prelu",
]
MODELS = ["linear_regression", *CLASSIFIERS]
EPOCHS = SHARED_EPOCHS


@pytest.fixture(scope="module")
def trained_project(trained_pipeline) -> Path:
    """A project whose training stages ran once under `dvc repro`, with few epochs to stay quick."""
    root, result = trained_pipeline
    for name in CLASSIFIERS:
        assert f"Running stage 'train_classifier@{name}'" in result.stdout
    return root


@pytest.fixture(scope="module")
def runs(trained_project: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{trained_project / 'mlflow.db'}")
    found = mlflow.search_runs(experiment_names=["stepbystep"])
    return found


def test_one_finished_run_per_model(runs) -> None:
    assert sorted(runs["tags.model_name"]) == sorted(MODELS)
    assert set(runs["status"]) == {"FINISHED"}


def test_runs_hold_params_and_tags(runs) -> None:
    row = runs[runs["tags.model_name"] == "images_deep_relu"].iloc[0]

    assert row["params.lr"] == "0.1"
    assert row["params.activation"] == "relu"
    assert row["params.hidden_sizes"] == "[5, 3]"
    assert row["params.normalization.method"] == "fixed"
    assert row["tags.dvc_stage"] == "train_classifier@images_deep_relu"
    assert row["tags.mlflow.runName"] == "images_deep_relu"


def test_per_epoch_metrics(runs, trained_project: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    run_id = runs[runs["tags.model_name"] == "moons_logistic"].iloc[0]["run_id"]

    train_loss = client.get_metric_history(run_id, "train_loss")
    val_loss = client.get_metric_history(run_id, "val_loss")

    assert [metric.step for metric in train_loss] == list(range(1, EPOCHS + 1))
    assert [metric.step for metric in val_loss] == list(range(1, EPOCHS + 1))
    losses = (trained_project / "models/moons_logistic/losses.csv").read_text().splitlines()
    assert float(losses[-1].split(",")[1]) == pytest.approx(train_loss[-1].value)


def test_artifacts_on_disk(runs, trained_project: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{trained_project / 'mlflow.db'}")
    run_id = runs[runs["tags.model_name"] == "images_logistic"].iloc[0]["run_id"]

    checkpoints = sorted(item.path for item in client.list_artifacts(run_id, "checkpoints"))
    code = sorted(item.path for item in client.list_artifacts(run_id, "code"))

    assert checkpoints == ["checkpoints/epoch_0002.pt", "checkpoints/epoch_0004.pt", "checkpoints/model.pt"]
    assert {"code/dvc.yaml", "code/params.yaml", "code/src", "code/stages"} <= set(code)
    artifact_root = Path(runs[runs["run_id"] == run_id].iloc[0]["artifact_uri"].removeprefix("file://"))
    assert artifact_root.is_relative_to(trained_project / "mlartifacts")
    assert (artifact_root / "checkpoints/epoch_0004.pt").stat().st_size > 0


def test_logged_model_predicts(runs, trained_project: Path) -> None:
    import mlflow
    import torch

    from stepbystep.training.checkpoint import load_checkpoint
    from stepbystep.workflows.training import build_model

    run_id = runs[runs["tags.model_name"] == "images_deep_relu"].iloc[0]["run_id"]
    logged = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")

    checkpoint = load_checkpoint(trained_project / "models/images_deep_relu/model.pt")
    model = build_model(checkpoint["metadata"])
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    images = np.random.default_rng(0).normal(size=(7, 1, 5, 5)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.as_tensor(images)).numpy()

    predicted = np.asarray(logged.predict(images))
    np.testing.assert_allclose(predicted.reshape(expected.shape), expected, rtol=1e-6)


def test_run_id_written_with_model(runs, trained_project: Path) -> None:
    for name in MODELS:
        info = json.loads((trained_project / "models" / name / "run.json").read_text())
        row = runs[runs["tags.model_name"] == name].iloc[0]
        assert info["run_id"] == row["run_id"], name


def test_changed_lr_reruns_only_that_model(trained_project: Path, tmp_path: Path) -> None:
    project = copy_project(trained_project, tmp_path / "project")
    set_param(project / "params.yaml", "train_classifier.images_deep_relu.lr", 0.05)

    result = run(["dvc", "repro", "train_regression", "train_classifier"], project)

    assert "Running stage 'train_classifier@images_deep_relu'" in result.stdout
    for name in CLASSIFIERS:
        if name != "images_deep_relu":
            assert f"Running stage 'train_classifier@{name}'" not in result.stdout, name
    assert "Running stage 'train_regression'" not in result.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train_classifier@images_deep_relu"]["params"]["params.yaml"][
        "train_classifier.images_deep_relu"
    ]["lr"] == 0.05
