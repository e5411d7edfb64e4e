"""The data stages reproduce the book's datasets and write files that read back exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_moons

from conftest import PROJECT_ROOT
from stepbystep.data.images import build_images, draw_line, make_line_images, read_image_folder
from stepbystep.data.splits import read_split, split_datasets, split_indices
from stepbystep.data.synthetic import generate_data
from stepbystep.data.tables import read_table
from stepbystep.params import BuildImagesParams, SplitParams, load_params

PARAMS = load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate_data(PARAMS.generate_data.regression, PARAMS.generate_data.moons, root / "regression", root / "moons")
    build_images(PARAMS.build_images, root / "images")
    split_datasets(PARAMS.split, root, root / "splits")
    return root


def test_regression_data_matches_recipe(data_dir: Path) -> None:
    np.random.seed(42)
    x = np.random.rand(100, 1)
    y = 1 + 2 * x + 0.1 * np.random.randn(100, 1)

    features, targets, info = read_table(data_dir / "regression")

    np.testing.assert_array_equal(features, x)
    np.testing.assert_array_equal(targets, y[:, 0])
    assert info["true_coefficients"] == {"w": [2.0], "b": 1.0}


def test_moons_data_matches_recipe(data_dir: Path) -> None:
    expected_features, expected_labels = make_moons(n_samples=100, noise=0.3, random_state=0)

    features, labels, info = read_table(data_dir / "moons")

    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(labels, expected_labels)
    assert info["features"] == ["x1", "x2"]


def test_regression_split_matches_random_split(data_dir: Path) -> None:
    import torch
    from torch.utils.data import TensorDataset, random_split

    torch.manual_seed(13)
    dataset = TensorDataset(torch.arange(100))
    train, val = random_split(dataset, [80, 20])

    split = read_split(data_dir / "splits" / "regression.json")

    assert split["train"] == list(train.indices)
    assert split["val"] == list(val.indices)


def test_moons_split_matches_train_test_split(data_dir: Path) -> None:
    from sklearn.model_selection import train_test_split

    features, labels = make_moons(n_samples=100, noise=0.3, random_state=0)
    x_train, x_val, _, _ = train_test_split(features, labels, test_size=0.2, random_state=13)

    split = read_split(data_dir / "splits" / "moons.json")

    np.testing.assert_array_equal(features[split["train"]], x_train)
    np.testing.assert_array_equal(features[split["val"]], x_val)


def test_image_split_class_counts(data_dir: Path) -> None:
    images, labels, info = read_image_folder(data_dir / "images")
    split = read_split(data_dir / "splits" / "images.json")

    assert images.shape == (300, 1, 5, 5)
    assert len(split["train"]) == 240
    assert len(split["val"]) == 60
    assert np.bincount(labels[split["train"]]).tolist() == [80, 160]


def test_png_round_trip_is_exact(data_dir: Path) -> None:
    generated, generated_labels, _ = make_line_images(PARAMS.build_images)

    images, labels, info = read_image_folder(data_dir / "images")

    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, generated)
    np.testing.assert_array_equal(labels, generated_labels)
    assert (info["channels"], info["height"], info["width"]) == (1, 5, 5)


def test_image_files_in_class_folders(data_dir: Path) -> None:
    straight = sorted(path.name for path in (data_dir / "images" / "straight").glob("*.png"))
    diagonal = sorted(path.name for path in (data_dir / "images" / "diagonal").glob("*.png"))

    assert len(straight) + len(diagonal) == 300
    assert "000.png" in straight
    assert "001.png" in diagonal


@pytest.mark.parametrize(
    ("start", "target", "cells"),
    [
        (2, 0, [(2, c) for c in range(5)]),
        (-3, 0, [(r, 3) for r in range(5)]),
        (0, 0, [(r, 0) for r in range(5)]),
        (2, 1, [(2, 0), (1, 1), (0, 2)]),
        (-2, 1, [(4, 2), (3, 3), (2, 4)]),
        (0, 1, [(4, 1), (3, 2), (2, 3), (1, 4)]),
        (3, 2, [(3, 0), (4, 1)]),
        (-1, 2, [(0, 1), (1, 2), (2, 3), (3, 4)]),
        (0, 2, [(0, 1), (1, 2), (2, 3), (3, 4)]),
    ],
)
def test_draw_line_cells(start: int, target: int, cells: list[tuple[int, int]]) -> None:
    expected = np.zeros((5, 5), dtype=np.uint8)
    for row, column in cells:
        expected[row, column] = 255

    np.testing.assert_array_equal(draw_line(start, target, 5), expected)


def test_images_reproducible_and_seed_sensitive() -> None:
    params = BuildImagesParams(n_images=50, img_size=7, seed=3)
    first, _, _ = make_line_images(params)
    second, _, _ = make_line_images(params)
    other, _, _ = make_line_images(BuildImagesParams(n_images=50, img_size=7, seed=4))

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_stratified_split_keeps_class_ratio() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    params = SplitParams(method="train_test_split", train_fraction=0.75, val_fraction=0.25, seed=1, stratify=True)

    train, val = split_indices(100, params, labels, "toy")

    assert np.bincount(labels[val]).tolist() == [20, 5]
    assert sorted(train + val) == list(range(100))
