"""The chapter 3 evaluation reproduces the numbers printed in Deep Learning with PyTorch Step-by-Step.

Chapter03.ipynb of the book's companion repository (github.com/dvgodoy/PyTorchStepByStep)
evaluates the logistic regression on the validation split of the two moons.
It prints the confusion matrices at thresholds 0.3, 0.5 and 0.7, and the areas
under the ROC and precision-recall curves as scikit-learn's ``auc(fpr, tpr)``
and ``auc(rec, prec)``. Counts and areas must match exactly. The weights were
printed from a GPU run, so they agree to about 2e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, set_param
from stepbystep.data.images import build_images
from stepbystep.data.splits import split_datasets
from stepbystep.data.synthetic import generate_data
from stepbystep.evaluation.metrics import threshold_key
from stepbystep.evaluation.writers import round_significant
from stepbystep.params import load_params
from stepbystep.training.checkpoint import load_checkpoint
from stepbystep.workflows.evaluation import EvaluationResult, evaluate
from stepbystep.workflows.training import train_classifier

BOOK_CONFUSION_MATRICES = {
    0.3: [[6, 3], [0, 11]],
    0.5: [[7, 2], [1, 10]],
    0.7: [[9, 0], [2, 9]],
}
BOOK_ROC_AUC = 0.9797979797979798
BOOK_PR_AUC = 0.9854312354312356
BOOK_WEIGHT = [1.1822, -1.8684]
BOOK_BIAS = -0.0587
WEIGHT_TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def chapter3(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, EvaluationResult]:
    """Generate the data, train moons_logistic with the default params and evaluate it, in a temporary project."""
    root = tmp_path_factory.mktemp("chapter3")
    params_file = root / "params.yaml"
    params_file.write_text((PROJECT_ROOT / "params.yaml").read_text())
    set_param(params_file, "tracking.tensorboard", False)
    params = load_params(params_file)

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("DVC_ROOT", raising=False)
        data = Path("data")
        generate_data(params.generate_data.regression, params.generate_data.moons, data / "regression", data / "moons")
        build_images(params.build_images, data / "images")
        split_datasets(params.split, data, data / "splits")
        train_classifier(params, "moons_logistic", Path("models/moons_logistic"), track=False)
        result = evaluate(params, names=["moons_logistic"], track=False)
    return root, result


def test_default_thresholds_are_the_books() -> None:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())

    assert params["evaluate"]["threshold"] == 0.5
    assert params["evaluate"]["thresholds"] == [0.3, 0.5, 0.7]


@pytest.mark.parametrize("threshold", sorted(BOOK_CONFUSION_MATRICES))
def test_confusion_matrix_matches_book(chapter3: tuple[Path, EvaluationResult], threshold: float) -> None:
    _, result = chapter3
    matrices = result.metrics["moons_logistic"]["confusion_matrices"]

    assert matrices[threshold_key(threshold)] == BOOK_CONFUSION_MATRICES[threshold]


def test_roc_and_pr_areas_match_book(chapter3: tuple[Path, EvaluationResult]) -> None:
    _, result = chapter3
    metrics = result.metrics["moons_logistic"]

    assert metrics["roc_auc"] == pytest.approx(BOOK_ROC_AUC, abs=1e-12)
    assert metrics["pr_auc"] == pytest.approx(BOOK_PR_AUC, abs=1e-12)


def test_metrics_file_has_book_values(chapter3: tuple[Path, EvaluationResult]) -> None:
    root, _ = chapter3
    metrics = json.loads((root / "reports/metrics.json").read_text())["moons_logistic"]

    assert metrics["confusion_matrix"] == BOOK_CONFUSION_MATRICES[0.5]
    assert metrics["roc_auc"] == round_significant(BOOK_ROC_AUC)
    assert metrics["pr_auc"] == round_significant(BOOK_PR_AUC)


def test_best_threshold_is_reported_not_applied(chapter3: tuple[Path, EvaluationResult]) -> None:
    _, result = chapter3
    metrics = result.metrics["moons_logistic"]

    assert metrics["best_threshold"]["criterion"] == "f1"
    assert metrics["best_threshold"]["threshold"] != pytest.approx(0.5)
    assert metrics["threshold"] == 0.5
    assert metrics["confusion_matrix"] == BOOK_CONFUSION_MATRICES[0.5]


def test_weights_close_to_book(chapter3: tuple[Path, EvaluationResult]) -> None:
    root, _ = chapter3
    state = load_checkpoint(root / "models/moons_logistic/model.pt")["model_state_dict"]

    assert state["output.weight"][0].tolist() == pytest.approx(BOOK_WEIGHT, abs=WEIGHT_TOLERANCE)
    assert float(state["output.bias"][0]) == pytest.approx(BOOK_BIAS, abs=WEIGHT_TOLERANCE)
