"""Invalid params stop a stage with one message naming key, value, rule and fix, and write nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT, make_project, run, set_param
from stepbystep.errors import ParamsError
from stepbystep.params import load_params

STAGE_OUTPUTS = {
    "generate_data": ["data/regression", "data/moons"],
    "build_images": ["data/images"],
    "split": ["data/splits"],
}

# (case id, stage to run, {key: value}, fragments the message must contain)
INVALID_PARAMS = [
    ("zero_samples", "generate_data", {"generate_data.regression.n_samples": 0},
     ["generate_data.regression.n_samples = 0", "greater than or equal to 2", "Fix:"]),
    ("negative_samples", "generate_data", {"generate_data.moons.n_samples": -5},
     ["generate_data.moons.n_samples = -5", "greater than or equal to 4"]),
    ("string_for_integer", "generate_data", {"generate_data.regression.n_samples": "100"},
     ["generate_data.regression.n_samples = '100'", "whole number"]),
    ("negative_noise", "generate_data", {"generate_data.moons.noise": -0.1},
     ["generate_data.moons.noise = -0.1", "greater than or equal to 0"]),
    ("misspelled_key", "generate_data", {"generate_data.regression.nsamples": 100},
     ["generate_data.regression.nsamples", "unknown key", "did you mean 'n_samples'"]),
    ("image_side_below_two", "build_images", {"build_images.img_size": 1},
     ["build_images.img_size = 1", "greater than or equal to 2"]),
    ("zero_images", "build_images", {"build_images.n_images": 0},
     ["build_images.n_images = 0", "greater than or equal to 2"]),
    ("negative_seed", "build_images", {"build_images.seed": -1},
     ["build_images.seed = -1", "greater than or equal to 0"]),
    ("fractions_not_summing_to_one", "split", {"split.images.train_fraction": 0.7},
     ["split.images", "must equal 1", "0.7 + 0.2", "set val_fraction to 0.3"]),
    ("fraction_above_one", "split", {"split.images.val_fraction": 1.5},
     ["split.images.val_fraction = 1.5", "less than 1"]),
    ("unknown_split_method", "split", {"split.moons.method": "kfold"},
     ["split.moons.method = 'kfold'", "must be one of", "'train_test_split'"]),
    ("string_for_boolean", "split", {"split.moons.stratify": "yes"},
     ["split.moons.stratify = 'yes'", "true or false"]),
    ("stratified_random_split", "split", {"split.images.stratify": True},
     ["split.images", "stratify: true needs method: train_test_split"]),
    ("negative_learning_rate", "generate_data", {"train_classifier.images_deep_relu.lr": -0.1},
     ["train_classifier.images_deep_relu.lr = -0.1", "greater than 0"]),
    ("activation_without_hidden_layers", "generate_data", {"train_classifier.images_logistic.activation": "relu"},
     ["train_classifier.images_logistic", "activation 'relu' needs hidden layers"]),
    ("zero_batch_size", "generate_data", {"train_regression.batch_size": 0},
     ["train_regression.batch_size = 0", "greater than 0"]),
    ("fractional_epochs", "generate_data", {"train_regression.epochs": 2.5},
     ["train_regression.epochs = 2.5", "whole number"]),
    ("threshold_above_one", "generate_data", {"evaluate.threshold": 1.5},
     ["evaluate.threshold = 1.5", "less than or equal to 1"]),
    ("unknown_dataset", "generate_data", {"train_classifier.moons_logistic.dataset": "cifar"},
     ["train_classifier.moons_logistic.dataset is 'cifar'", "no entry under split"]),
    ("fixed_normalization_without_std", "generate_data",
     {"train_classifier.images_logistic.normalization": {"method": "fixed", "mean": 0.5}},
     ["train_classifier.images_logistic.normalization", "needs both mean and std"]),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("template") / "project", git=False)


def copy_of(template: Path, destination: Path) -> Path:
    shutil.copytree(template, destination)
    return destination


def assert_clean_failure(result, fragments: list[str], outputs: list[str], root: Path) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") or "\nerror: " in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"
    for output in outputs:
        assert not (root / output).exists(), f"{output} was written"
    leftovers = list((root / "data").glob(".*.tmp")) if (root / "data").exists() else []
    assert leftovers == []


@pytest.mark.parametrize(
    ("stage", "changes", "fragments"),
    [case[1:] for case in INVALID_PARAMS],
    ids=[case[0] for case in INVALID_PARAMS],
)
def test_invalid_params_stop_stage(template: Path, tmp_path: Path, stage, changes, fragments) -> None:
    root = copy_of(template, tmp_path / "project")
    if stage == "split":
        run(["python", "stages/generate_data.py"], root)
        run(["python", "stages/build_images.py"], root)
    for key, value in changes.items():
        if key == "generate_data.regression.nsamples":
            data = yaml.safe_load((root / "params.yaml").read_text())
            data["generate_data"]["regression"]["nsamples"] = data["generate_data"]["regression"].pop("n_samples")
            (root / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        else:
            set_param(root / "params.yaml", key, value)

    result = run(["python", f"stages/{stage}.py"], root, check=False)

    assert_clean_failure(result, fragments, STAGE_OUTPUTS[stage], root)


def test_split_leaving_empty_set(template: Path, tmp_path: Path) -> None:
    root = copy_of(template, tmp_path / "project")
    set_param(root / "params.yaml", "build_images.n_images", 2)
    run(["python", "stages/generate_data.py"], root)
    run(["python", "stages/build_images.py"], root)

    result = run(["python", "stages/split.py"], root, check=False)

    assert_clean_failure(
        result, ["split.images.val_fraction = 0.2", "validation set of images empty", "2 rows"], ["data/splits"], root
    )


def test_stratified_regression_split(template: Path, tmp_path: Path) -> None:
    root = copy_of(template, tmp_path / "project")
    set_param(root / "params.yaml", "split.regression.method", "train_test_split")
    set_param(root / "params.yaml", "split.regression.stratify", True)
    run(["python", "stages/generate_data.py"], root)
    run(["python", "stages/build_images.py"], root)

    result = run(["python", "stages/split.py"], root, check=False)

    assert_clean_failure(result, ["split.regression.stratify = true", "regression dataset"], ["data/splits"], root)


def test_python_object_tag_rejected(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-yaml"
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f'seeds: !!python/object/apply:os.system ["touch {marker}"]\n')

    with pytest.raises(ParamsError, match="YAML tags that construct Python objects are not allowed"):
        load_params(params_file)
    assert not marker.exists()


def test_several_problems_reported_together(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    set_param(params_file, "build_images.img_size", 1)
    set_param(params_file, "evaluate.threshold", -1)

    with pytest.raises(ParamsError) as raised:
        load_params(params_file)

    message = str(raised.value)
    assert "2 problems" in message
    assert "build_images.img_size = 1" in message
    assert "evaluate.threshold = -1" in message


def test_default_params_are_valid() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")

    assert params.build_images.img_size == 5
    assert len(params.train_classifier) == 9
