"""Models trained by the workflow with the default params reproduce the book."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PROJECT_ROOT
from stepbystep.data.images import build_images
from stepbystep.data.loading import load_split_data
from stepbystep.data.preprocessing import Preprocessing
from stepbystep.data.splits import split_datasets
from stepbystep.data.synthetic import generate_data
from stepbystep.models import build_classifier
from stepbystep.params import load_params
from stepbystep.training.checkpoint import load_checkpoint
from stepbystep.workflows.training import build_model, train_classifier, train_regression

PARAMS = load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the default data and splits, as the data stages write them."""
    root = tmp_path_factory.mktemp("workspace")
    data = root / "data"
    generate_data(PARAMS.generate_data.regression, PARAMS.generate_data.moons, data / "regression", data / "moons")
    build_images(PARAMS.build_images, data / "images")
    split_datasets(PARAMS.split, data, data / "splits")
    return root


@pytest.fixture(scope="module")
def params_without_tensorboard():
    tracking = PARAMS.tracking.model_copy(update={"tensorboard": False})
    return PARAMS.model_copy(update={"tracking": tracking})


@pytest.fixture(scope="module")
def trained(workspace: Path, params_without_tensorboard) -> dict[str, dict]:
    """Checkpoints of the regression and the book's classifiers, trained in ``workspace``."""
    previous = Path.cwd()
    try:
        import os

        os.chdir(workspace)
        checkpoints = {}
        train_regression(params_without_tensorboard, workspace / "models" / "linear_regression", track=False)
        checkpoints["linear_regression"] = load_checkpoint(workspace / "models/linear_regression/model.pt")
        for name in ("moons_logistic", "moons_mapped", "images_logistic", "images_deep_linear"):
            train_classifier(params_without_tensorboard, name, workspace / "models" / name, track=False)
            checkpoints[name] = load_checkpoint(workspace / "models" / name / "model.pt")
        return checkpoints
    finally:
        os.chdir(previous)


def test_regression_matches_book(trained) -> None:
    state = trained["linear_regression"]["model_state_dict"]

    assert state["linear.weight"].item() == pytest.approx(1.9414, abs=2e-3)
    assert state["linear.bias"].item() == pytest.approx(1.0233, abs=2e-3)
    assert trained["linear_regression"]["epoch"] == 200


def test_moons_logistic_matches_book(trained) -> None:
    state = trained["moons_logistic"]["model_state_dict"]

    np.testing.assert_allclose(state["output.weight"].numpy(), [[1.1822, -1.8684]], atol=2e-3)
    assert state["output.bias"].item() == pytest.approx(-0.0587, abs=2e-3)


def test_image_model_parameter_counts(trained) -> None:
    assert trained["images_logistic"]["metadata"]["n_parameters"] == 25
    assert trained["images_deep_linear"]["metadata"]["n_parameters"] == 143


def training_accuracy(checkpoint: dict, workspace: Path) -> float:
    metadata = checkpoint["metadata"]
    dataset = metadata["config"]["dataset"]
    data = load_split_data(workspace / "data" / dataset, workspace / "data" / "splits" / f"{dataset}.json")
    preprocessing = Preprocessing.from_state_dict(metadata["preprocessing"])
    model = build_model(metadata)
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval()
    with torch.no_grad():
        logits = model(preprocessing.transform(data.train_features))
    return float(((logits.numpy()[:, 0] > 0) == data.train_targets).mean())


def test_mapped_moons_separate_better(trained, workspace: Path) -> None:
    logistic = training_accuracy(trained["moons_logistic"], workspace)
    mapped = training_accuracy(trained["moons_mapped"], workspace)

    assert logistic == pytest.approx(0.85, abs=0.02)
    assert mapped >= 0.95
    assert mapped - logistic >= 0.08


def test_outputs_written(trained, workspace: Path) -> None:
    folder = workspace / "models" / "images_logistic"
    with open(folder / "losses.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))

    assert len(rows) == 100
    assert rows[0]["epoch"] == "1"
    assert float(rows[-1]["val_loss"]) == pytest.approx(trained["images_logistic"]["history"]["val_loss"][-1])
    assert (folder / "run.json").exists()
    assert not (workspace / ".resume" / "images_logistic").exists() or not any(
        (workspace / ".resume" / "images_logistic").iterdir()
    )


def test_preprocessing_rebuilt_from_checkpoint(trained) -> None:
    state = trained["moons_mapped"]["metadata"]["preprocessing"]
    preprocessing = Preprocessing.from_state_dict(state)

    assert preprocessing.normalization == "standardize"
    assert len(preprocessing.mean) == 2
    assert preprocessing.n_features == 9


def test_deep_linear_has_no_activations() -> None:
    model = build_classifier(25, [5, 3], "none", bias=False, output="sigmoid", seed=17, flatten=True)

    names = [name for name, _ in model.named_children()]
    assert names == ["flatten", "hidden0", "hidden1", "output", "sigmoid"]


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu", "prelu"])
def test_activation_variants_build(activation: str) -> None:
    model = build_classifier(25, [5, 3], activation, bias=False, output="sigmoid", seed=17, flatten=True)

    assert [name for name, _ in model.named_children()] == [
        "flatten", "hidden0", "activation0", "hidden1", "activation1", "output", "sigmoid",
    ]
    assert model(torch.zeros(2, 1, 5, 5)).shape == (2, 1)
