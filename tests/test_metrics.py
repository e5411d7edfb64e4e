"""Check the NumPy metrics against scikit-learn and the metric files for stability."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from stepbystep.evaluation import metrics as m
from stepbystep.evaluation import plot_data, writers


def _random_case(seed: int, n: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_true[:2] = [0, 1]  # both classes, whatever the draw
    y_prob = rng.random(n)
    if decimals is not None:
        y_prob = np.round(y_prob, decimals)  # many tied scores
    return y_true, y_prob


# Labels and probabilities with both classes, named by what makes them hard.
CASES = {
    "random_50": _random_case(0, 50),
    "random_200": _random_case(1, 200),
    "ties_one_decimal": _random_case(2, 60, decimals=1),
    "ties_exact_grid": _random_case(3, 40, decimals=0),
    "all_scores_equal": (np.array([0, 1, 1, 0, 1]), np.full(5, 0.5)),
    "all_predicted_positive": (np.array([0, 1, 0, 1, 1]), np.array([0.6, 0.9, 0.7, 0.8, 0.95])),
    "no_positive_prediction": (np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.4, 0.2, 0.3, 0.45])),
    "perfect_separation": (np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])),
    "inverted_ranking": (np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])),
    "two_samples": (np.array([1, 0]), np.array([0.5, 0.5])),
    "scores_at_threshold": (np.array([0, 1, 0, 1]), np.array([0.3, 0.5, 0.5, 0.7])),
    "column_shaped": (np.array([[0], [1], [1], [0]]), np.array([[0.2], [0.7], [0.4], [0.6]])),
    "bool_labels": (np.array([False, True, True, False]), np.array([0.2, 0.7, 0.4, 0.6])),
}
THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0)


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    return CASES[request.param]


def _flat(y_true: np.ndarray, y_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).reshape(-1).astype(int), np.asarray(y_prob).reshape(-1)


# --- metrics at a threshold -------------------------------------------------


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_confusion_matrix_matches_sklearn(case, threshold):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)
    expected = skm.confusion_matrix(flat_true, flat_prob >= threshold, labels=[0, 1])

    result = m.confusion_matrix(y_true, y_prob, threshold)

    assert result.tolist() == expected.tolist()
    assert result.dtype == np.int64


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_threshold_metrics_match_sklearn(case, threshold):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)
    predicted = (flat_prob >= threshold).astype(int)
    (tn, fp), (fn, tp) = skm.confusion_matrix(flat_true, predicted, labels=[0, 1]).tolist()

    result = m.threshold_metrics(y_true, y_prob, threshold)

    assert result["accuracy"] == pytest.approx(skm.accuracy_score(flat_true, predicted), abs=1e-12)
    assert result["precision"] == pytest.approx(
        skm.precision_score(flat_true, predicted, zero_division=0), abs=1e-12
    )
    assert result["recall"] == pytest.approx(
        skm.recall_score(flat_true, predicted, zero_division=0), abs=1e-12
    )
    assert result["f1"] == pytest.approx(skm.f1_score(flat_true, predicted, zero_division=0), abs=1e-12)
    assert result["tpr"] == result["recall"]
    # scikit-learn has no fpr score; the specificity is the recall of class 0.
    specificity = skm.recall_score(flat_true, predicted, pos_label=0, zero_division=0)
    assert result["fpr"] == pytest.approx(1.0 - specificity if fp + tn else 0.0, abs=1e-12)
    assert result["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert result["threshold"] == threshold


def test_threshold_metrics_values_are_plain_python(case):
    y_true, y_prob = case

    result = m.threshold_metrics(y_true, y_prob)

    for key in ("accuracy", "precision", "recall", "f1", "tpr", "fpr", "threshold"):
        assert type(result[key]) is float, key
    for row in result["confusion_matrix"]:
        assert all(type(count) is int for count in row)


def test_no_positive_prediction_gives_zero_precision_silently():
    y_true, y_prob = CASES["no_positive_prediction"]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = m.threshold_metrics(y_true, y_prob, 0.5)
        metrics = m.classification_metrics(y_true, y_prob, val_loss=0.7, n_parameters=3)

    assert result["precision"] == 0.0
    assert result["f1"] == 0.0
    assert result["confusion_matrix"] == [[2, 0], [3, 0]]
    assert metrics["precision"] == 0.0


def test_confusion_matrix_allows_one_class():
    result = m.confusion_matrix([1, 1, 1], [0.2, 0.6, 0.9])

    assert result.tolist() == [[0, 0], [1, 2]]


# --- curves and areas -------------------------------------------------------


def test_roc_curve_matches_sklearn(case):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)
    expected_fpr, expected_tpr, expected_thresholds = skm.roc_curve(
        flat_true, flat_prob, drop_intermediate=False
    )

    fpr, tpr, thresholds = m.roc_curve(y_true, y_prob)

    np.testing.assert_allclose(fpr, expected_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, expected_tpr, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thresholds, expected_thresholds)


def test_roc_auc_matches_sklearn(case):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)

    assert m.roc_auc(y_true, y_prob) == pytest.approx(skm.roc_auc_score(flat_true, flat_prob), abs=1e-12)


def test_roc_auc_accepts_logits():
    y_true, y_prob = CASES["random_50"]
    logits = np.log(y_prob / (1 - y_prob)) * 3.0

    assert m.roc_auc(y_true, logits) == pytest.approx(skm.roc_auc_score(y_true, logits), abs=1e-12)


def test_precision_recall_curve_matches_sklearn(case):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)
    expected_precision, expected_recall, expected_thresholds = skm.precision_recall_curve(
        flat_true, flat_prob
    )

    precision, recall, thresholds = m.precision_recall_curve(y_true, y_prob)

    np.testing.assert_allclose(precision, expected_precision, rtol=0, atol=1e-12)
    np.testing.assert_allclose(recall, expected_recall, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(thresholds, expected_thresholds)


def test_pr_auc_matches_sklearn_trapezoid(case):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)
    precision, recall, _ = skm.precision_recall_curve(flat_true, flat_prob)

    assert m.pr_auc(y_true, y_prob) == pytest.approx(skm.auc(recall, precision), abs=1e-12)


def test_average_precision_matches_sklearn(case):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)

    expected = skm.average_precision_score(flat_true, flat_prob)

    assert m.average_precision(y_true, y_prob) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([0.0, 0.5, 1.0], [0.0, 1.0, 1.0]),
        ([1.0, 0.5, 0.0], [0.5, 0.75, 1.0]),
        ([0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.2]),
        ([2.0, 3.0], [4.0, 4.0]),
    ],
)
def test_auc_matches_sklearn(x, y):
    assert m.auc(x, y) == pytest.approx(skm.auc(x, y), abs=1e-12)


def test_auc_rejects_non_monotonic_x():
    with pytest.raises(ValueError, match="monotonic"):
        m.auc([0.0, 1.0, 0.5], [0.0, 1.0, 1.0])


def test_known_probabilities_give_known_areas():
    # Four samples small enough to work out by hand: of the four
    # (positive, negative) pairs, three rank the positive higher.
    y_true = [0, 0, 1, 1]
    y_prob = [0.1, 0.4, 0.35, 0.8]

    assert m.roc_auc(y_true, y_prob) == pytest.approx(0.75)
    # Precision 1 at recall 0.5, then 2/3 at recall 1: 0.5 * 1 + 0.5 * 2/3.
    assert m.average_precision(y_true, y_prob) == pytest.approx(5 / 6)
    assert m.confusion_matrix(y_true, y_prob, 0.5).tolist() == [[2, 0], [1, 1]]
    assert m.confusion_matrix(y_true, y_prob, 0.3).tolist() == [[1, 1], [0, 2]]


# --- threshold selection ----------------------------------------------------


@pytest.mark.parametrize("criterion", ["f1", "youden"])
def test_best_threshold_matches_brute_force(case, criterion):
    y_true, y_prob = case
    flat_true, flat_prob = _flat(y_true, y_prob)

    def score(threshold: float) -> float:
        predicted = flat_prob >= threshold
        if criterion == "f1":
            return skm.f1_score(flat_true, predicted, zero_division=0)
        tpr = skm.recall_score(flat_true, predicted, zero_division=0)
        fpr = 1.0 - skm.recall_score(flat_true, predicted, pos_label=0, zero_division=0)
        return tpr - fpr

    candidates = np.unique(flat_prob)
    scores = np.array([score(t) for t in candidates])
    best_score = scores.max()
    tied = candidates[np.isclose(scores, best_score, rtol=0, atol=1e-12)]

    result = m.best_threshold(y_true, y_prob, criterion)

    assert result["criterion"] == criterion
    assert result["value"] == pytest.approx(best_score, abs=1e-12)
    assert result["threshold"] == tied.max()
    assert score(result["threshold"]) == pytest.approx(result["value"], abs=1e-12)


def test_best_threshold_rejects_unknown_criterion():
    y_true, y_prob = CASES["random_50"]

    with pytest.raises(ValueError, match="criterion must be one of f1, youden"):
        m.best_threshold(y_true, y_prob, "accuracy")


# --- input checks -----------------------------------------------------------


@pytest.mark.parametrize(
    "function",
    [m.roc_curve, m.roc_auc, m.best_threshold],
    ids=["roc_curve", "roc_auc", "best_threshold"],
)
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_raises_value_error(function, label):
    with pytest.raises(ValueError, match="only one class") as error:
        function([label] * 4, [0.1, 0.4, 0.6, 0.9])

    assert f"label {label}" in str(error.value)


@pytest.mark.parametrize("label", [0, 1])
def test_classification_metrics_one_class_raises(label):
    with pytest.raises(ValueError, match="only one class"):
        m.classification_metrics([label] * 4, [0.1, 0.4, 0.6, 0.9], val_loss=0.5, n_parameters=3)


def test_pr_curve_without_positives_raises():
    for function in (m.precision_recall_curve, m.pr_auc, m.average_precision):
        with pytest.raises(ValueError, match="no positive samples"):
            function([0, 0, 0], [0.1, 0.5, 0.9])


def test_pr_curve_with_only_positives_is_flat():
    precision, recall, _ = m.precision_recall_curve([1, 1, 1], [0.1, 0.5, 0.9])

    assert precision.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert m.average_precision([1, 1, 1], [0.1, 0.5, 0.9]) == pytest.approx(
        skm.average_precision_score([1, 1, 1], [0.1, 0.5, 0.9])
    )


@pytest.mark.parametrize(
    ("y_true", "y_prob", "message"),
    [
        ([0, 1, 2], [0.1, 0.5, 0.9], "only the labels 0 and 1"),
        ([0, 1, 1], [0.1, 0.5], "has 2 samples but y_true has 3"),
        ([0, 1, 1], [0.1, np.nan, 0.9], "NaN or infinite"),
        ([0, 1, 1], [0.1, 1.5, 0.9], r"probabilities in \[0, 1\]"),
        ([0, 1, 1], [-2.0, 0.5, 3.0], "apply the sigmoid"),
        ([], [], "empty"),
        ([[0, 1], [1, 0]], [[0.1, 0.2], [0.3, 0.4]], r"shape \(N,\) or \(N, 1\)"),
        (["a", "b"], [0.1, 0.2], "numeric"),
    ],
)
def test_confusion_matrix_rejects_invalid_input(y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        m.confusion_matrix(y_true, y_prob)


@pytest.mark.parametrize("threshold", [-0.1, 1.1, float("nan")])
def test_confusion_matrix_rejects_invalid_threshold(threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        m.confusion_matrix([0, 1], [0.2, 0.8], threshold)


# --- metric dictionaries ----------------------------------------------------


def test_classification_metrics_layout():
    y_true, y_prob = CASES["random_50"]

    result = m.classification_metrics(
        y_true, y_prob, val_loss=np.float32(0.42), n_parameters=np.int64(3), best_threshold_criterion="youden"
    )

    assert set(result) == {
        "threshold", "accuracy", "precision", "recall", "f1", "tpr", "fpr",
        "confusion_matrix", "confusion_matrices", "roc_auc", "pr_auc",
        "average_precision", "best_threshold", "val_loss", "n_parameters",
    }  # fmt: skip
    assert list(result["confusion_matrices"]) == ["threshold_0_3", "threshold_0_5", "threshold_0_7"]
    assert result["confusion_matrices"]["threshold_0_5"] == result["confusion_matrix"]
    assert result["confusion_matrices"]["threshold_0_3"] == m.confusion_matrix(y_true, y_prob, 0.3).tolist()
    assert result["best_threshold"]["criterion"] == "youden"
    assert type(result["val_loss"]) is float
    assert type(result["n_parameters"]) is int
    assert result["roc_auc"] == pytest.approx(skm.roc_auc_score(y_true, y_prob), abs=1e-12)


def test_classification_metrics_at_custom_threshold():
    y_true, y_prob = CASES["random_50"]

    result = m.classification_metrics(
        y_true, y_prob, val_loss=0.4, n_parameters=3, threshold=0.3, thresholds=(0.25,)
    )

    assert result["threshold"] == 0.3
    assert result["confusion_matrix"] == m.confusion_matrix(y_true, y_prob, 0.3).tolist()
    assert list(result["confusion_matrices"]) == ["threshold_0_25"]


def test_classification_metrics_rejects_duplicate_threshold_keys():
    y_true, y_prob = CASES["random_50"]

    with pytest.raises(ValueError, match="give each threshold once"):
        m.classification_metrics(
            y_true, y_prob, val_loss=0.4, n_parameters=3, thresholds=(0.3, 0.3000000001)
        )


@pytest.mark.parametrize("n_parameters", [-1, 2.5, True])
def test_classification_metrics_rejects_invalid_parameter_count(n_parameters):
    y_true, y_prob = CASES["random_50"]

    with pytest.raises(ValueError, match="n_parameters must be a non-negative int"):
        m.classification_metrics(y_true, y_prob, val_loss=0.4, n_parameters=n_parameters)


def test_threshold_key_has_no_dots():
    assert m.threshold_key(0.3) == "threshold_0_3"
    assert m.threshold_key(0.25) == "threshold_0_25"
    assert m.threshold_key(1) == "threshold_1"


REGRESSION_CASES = {
    "random": (np.random.default_rng(4).normal(size=30), np.random.default_rng(5).normal(size=30)),
    "perfect_fit": (np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])),
    "worse_than_mean": (np.array([1.0, 2.0, 3.0]), np.array([3.0, 1.0, 5.0])),
    "column_shaped": (np.array([[1.0], [2.5], [2.0]]), np.array([[1.1], [2.4], [2.2]])),
}


@pytest.mark.parametrize("name", list(REGRESSION_CASES))
def test_regression_metrics_match_sklearn(name):
    y_true, y_pred = REGRESSION_CASES[name]
    flat_true, flat_pred = y_true.reshape(-1), y_pred.reshape(-1)

    result = m.regression_metrics(y_true, y_pred, val_loss=0.1, n_parameters=2)

    assert result["mse"] == pytest.approx(skm.mean_squared_error(flat_true, flat_pred), abs=1e-12)
    assert result["rmse"] == pytest.approx(skm.root_mean_squared_error(flat_true, flat_pred), abs=1e-12)
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(flat_true, flat_pred), abs=1e-12)
    assert result["r2"] == pytest.approx(skm.r2_score(flat_true, flat_pred), abs=1e-12)
    assert result["val_loss"] == 0.1
    assert result["n_parameters"] == 2


def test_regression_metrics_coefficients():
    result = m.regression_metrics(
        [1.0, 2.0, 3.0],
        [1.1, 2.0, 2.9],
        val_loss=0.1,
        n_parameters=2,
        coefficients={"b": np.float32(1.0233), "w": 1.9414},
        true_coefficients={"b": 1, "w": 2},
    )

    assert result["coefficients"] == {
        "b": {"learned": pytest.approx(1.0233, abs=1e-6), "true": 1.0},
        "w": {"learned": 1.9414, "true": 2.0},
    }


def test_regression_metrics_rejects_unknown_true_coefficient():
    with pytest.raises(ValueError, match=r"names \['c'\] that are missing from coefficients"):
        m.regression_metrics(
            [1.0, 2.0], [1.0, 2.0], val_loss=0.0, n_parameters=2,
            coefficients={"b": 1.0}, true_coefficients={"c": 1.0},
        )  # fmt: skip


def test_regression_metrics_rejects_constant_targets():
    with pytest.raises(ValueError, match="y_true is constant"):
        m.regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], val_loss=0.1, n_parameters=2)


# --- metric files -----------------------------------------------------------


def _two_models() -> dict:
    y_true, y_prob = CASES["random_50"]
    return {
        "moons_logistic": m.classification_metrics(y_true, y_prob, val_loss=0.4321, n_parameters=3),
        "regression_linear": m.regression_metrics(
            [1.0, 2.0, 3.0], [1.1, 2.0, 2.9], val_loss=0.0067, n_parameters=2,
            coefficients={"b": 1.0233, "w": 1.9414}, true_coefficients={"b": 1.0, "w": 2.0},
        ),
    }  # fmt: skip


def test_metrics_json_is_byte_identical(tmp_path):
    first = writers.write_metrics_json(tmp_path / "first" / "metrics.json", _two_models())
    second = writers.write_metrics_json(tmp_path / "second" / "metrics.json", _two_models())

    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes().endswith(b"}\n")


def test_json_text_ignores_noise_below_rounding():
    noisy = {
        "b": {"roc_auc": 0.9479166666, "val_loss": np.float32(0.1)},
        "a": {"n_parameters": np.int64(3)},
    }
    clean = {"a": {"n_parameters": 3}, "b": {"val_loss": 0.1, "roc_auc": 0.9479166667}}

    assert writers.to_json_text(noisy) == writers.to_json_text(clean)


def test_json_text_layout():
    metrics = {"z": {"confusion_matrix": [[9, 1], [2, 8]], "f1": 2 / 3, "zero": -0.0}, "a": {}}

    text = writers.to_json_text(metrics)

    assert text == (
        "{\n"
        '  "a": {},\n'
        '  "z": {\n'
        '    "confusion_matrix": [[9, 1], [2, 8]],\n'
        '    "f1": 0.666667,\n'
        '    "zero": 0.0\n'
        "  }\n"
        "}\n"
    )
    assert json.loads(text)["z"]["f1"] == 0.666667


@pytest.mark.parametrize("value", [float("nan"), float("inf"), np.float64("-inf")])
def test_json_text_rejects_non_finite(value):
    with pytest.raises(ValueError, match=r"value\.model\.val_loss is"):
        writers.to_json_text({"model": {"val_loss": value}})


def test_json_text_rejects_unknown_type():
    with pytest.raises(ValueError, match="has type object"):
        writers.to_json_text({"model": object()})


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    writers.write_metrics_json(path, {"model": {"mse": 0.5}})

    assert os.listdir(tmp_path) == ["metrics.json"]
    assert json.loads(path.read_text()) == {"model": {"mse": 0.5}}


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")

    with pytest.raises(ValueError):
        writers.write_metrics_json(path, {"model": {"mse": float("nan")}})

    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_metrics_module_imports_numpy_only():
    code = (
        "import sys, stepbystep.evaluation\n"
        "heavy = ('torch', 'sklearn', 'matplotlib', 'pandas')\n"
        "print(sorted(name for name in heavy if name in sys.modules))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert output.stdout.strip() == "[]"


# --- plot data --------------------------------------------------------------


def test_loss_curve_rows():
    rows = plot_data.loss_curve_rows([0.9, 0.5, 0.3], np.array([1.0, 0.6, 0.4], dtype=np.float32))

    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [row["train_loss"] for row in rows] == [0.9, 0.5, 0.3]
    assert rows[2]["val_loss"] == pytest.approx(0.4)
    assert list(rows[0]) == list(plot_data.LOSS_COLUMNS)


def test_loss_curve_rows_rejects_length_mismatch():
    with pytest.raises(ValueError, match="train_loss has 2 epochs but val_loss has 1"):
        plot_data.loss_curve_rows([0.9, 0.5], [1.0])


def test_roc_curve_rows_cover_every_model():
    y_true, y_prob = CASES["random_50"]
    scores = {"logistic": (y_true, y_prob), "flipped": (y_true, 1 - y_prob)}
    fpr, tpr, thresholds = skm.roc_curve(y_true, 1 - y_prob, drop_intermediate=False)

    rows = plot_data.roc_curve_rows(scores)

    flipped = [row for row in rows if row["model"] == "flipped"]
    assert rows[0]["model"] == "logistic"
    assert len(rows) == len(flipped) + len(skm.roc_curve(y_true, y_prob, drop_intermediate=False)[0])
    np.testing.assert_allclose([row["fpr"] for row in flipped], fpr)
    np.testing.assert_allclose([row["tpr"] for row in flipped], tpr)
    assert flipped[0]["threshold"] is None
    np.testing.assert_allclose([row["threshold"] for row in flipped[1:]], thresholds[1:])
    assert set(rows[0]) == set(plot_data.ROC_COLUMNS)


def test_pr_curve_rows_end_without_threshold():
    y_true, y_prob = CASES["ties_one_decimal"]
    precision, recall, thresholds = skm.precision_recall_curve(y_true, y_prob)

    rows = plot_data.pr_curve_rows({"logistic": (y_true, y_prob)})

    np.testing.assert_allclose([row["precision"] for row in rows], precision)
    np.testing.assert_allclose([row["recall"] for row in rows], recall)
    np.testing.assert_allclose([row["threshold"] for row in rows[:-1]], thresholds)
    assert rows[-1] == {"model": "logistic", "recall": 0.0, "precision": 1.0, "threshold": None}


def test_confusion_rows_count_like_matrix(case):
    y_true, y_prob = case

    rows = plot_data.confusion_rows(y_true, y_prob, 0.5)

    counts = np.zeros((2, 2), dtype=int)
    for row in rows:
        counts[row["actual"], row["predicted"]] += 1
    assert counts.tolist() == m.confusion_matrix(y_true, y_prob, 0.5).tolist()
    assert len(rows) == np.asarray(y_true).size


def test_rows_csv_text():
    rows = [
        {"model": "a", "fpr": 0.0, "tpr": 0.0, "threshold": None},
        {"model": "a", "fpr": 1 / 3, "tpr": np.float32(0.5), "threshold": 0.8},
    ]

    text = writers.rows_to_csv_text(rows, columns=plot_data.ROC_COLUMNS)

    assert text == "model,fpr,tpr,threshold\na,0.0,0.0,\na,0.333333,0.5,0.8\n"


def test_rows_csv_rejects_mismatched_columns():
    with pytest.raises(ValueError, match="row 1 has columns"):
        writers.rows_to_csv_text([{"a": 1}, {"b": 2}])


def test_row_files_are_byte_identical(tmp_path):
    y_true, y_prob = CASES["random_200"]
    rows = plot_data.roc_curve_rows({"logistic": (y_true, y_prob)})

    csv_paths = [writers.write_rows_csv(tmp_path / f"roc_{i}.csv", rows) for i in range(2)]
    json_paths = [writers.write_rows_json(tmp_path / f"roc_{i}.json", rows) for i in range(2)]

    assert csv_paths[0].read_bytes() == csv_paths[1].read_bytes()
    assert json_paths[0].read_bytes() == json_paths[1].read_bytes()
    loaded = json.loads(json_paths[0].read_text())
    assert loaded[0]["threshold"] is None
    assert len(loaded) == len(rows)
