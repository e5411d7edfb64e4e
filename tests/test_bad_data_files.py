"""Malformed data files end in a DataError that names the file, never in another exception or a wrong result.

A stage turns a DataError into one line and exit status 1, while any other
exception prints a traceback. These files are the ones the training and
evaluation stages read: split files, tables and imported image folders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import write_cached_image_folder
from stepbystep.data.images import CACHE_FILE, MANIFEST_FILE, read_image_folder
from stepbystep.data.loading import load_split_data
from stepbystep.data.splits import read_split_indices
from stepbystep.data.tables import TableInfo, read_table, write_table
from stepbystep.errors import DataError

MOONS_INFO = TableInfo(
    name="t", task="binary", features=["x1", "x2"], target="y", classes=["0", "1"], positive_class="1"
)


def write_moons_like(folder: Path, n_rows: int = 10) -> None:
    rng = np.random.default_rng(0)
    columns = {"x1": rng.normal(size=n_rows), "x2": rng.normal(size=n_rows), "y": np.arange(n_rows) % 2}
    write_table(folder, columns, MOONS_INFO)


def write_split_file(path: Path, train: list[int], val: list[int], n_samples: int | None = None) -> None:
    split = {"dataset": "t", "method": "random_split", "seed": 0, "stratify": False}
    split["n_samples"] = len(train) + len(val) if n_samples is None else n_samples
    path.write_text(json.dumps({**split, "train": train, "val": val}, indent=2))


def write_image_cache(folder: Path, labels: list[int]) -> None:
    write_cached_image_folder(folder, np.zeros((len(labels), 1, 4, 4), dtype=np.uint8), labels)


# --- split files ---------------------------------------------------------------


def test_split_directory_path(tmp_path: Path) -> None:
    path = tmp_path / "moons.json"
    path.mkdir()
    with pytest.raises(DataError, match="moons.json"):
        read_split_indices(path)


@pytest.mark.parametrize("with_count", [True, False], ids=["streamed", "json"])
def test_split_index_over_int64(tmp_path: Path, with_count: bool) -> None:
    path = tmp_path / "moons.json"
    if with_count:
        write_split_file(path, [0, 99999999999999999999], [1])
    else:
        path.write_text(json.dumps({"train": [0, 99999999999999999999], "val": [1]}))
    with pytest.raises(DataError, match="moons.json"):
        read_split_indices(path)


def test_split_fifo_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "moons.json"
    os.mkfifo(path)
    with pytest.raises(DataError, match="not a regular file"):
        read_split_indices(path)


def test_split_huge_sample_count(tmp_path: Path) -> None:
    # A count larger than the file can contain is not trusted to size an array.
    path = tmp_path / "moons.json"
    write_split_file(path, [0, 1], [2], n_samples=10**14)

    train, val = read_split_indices(path)

    assert train.tolist() == [0, 1]
    assert val.tolist() == [2]


@pytest.mark.parametrize("empty", ["train", "val"])
def test_split_empty_set(tmp_path: Path, empty: str) -> None:
    write_moons_like(tmp_path / "t")
    path = tmp_path / "t.json"
    rows = list(range(10))
    write_split_file(path, [] if empty == "train" else rows, rows if empty == "train" else [])
    with pytest.raises(DataError, match=f"the {empty} list is empty"):
        load_split_data(tmp_path / "t", path)


@pytest.mark.parametrize(
    ("train", "val"),
    [([0, 1, 2, 3, 4, 5, 6, 7], [7, 9]), ([0, 1, 2, 3, 3, 5, 6, 8], [7, 9]), ([0, 1, 2], [7, 9, 9])],
    ids=["both-sets", "twice-in-train", "twice-in-val"],
)
def test_split_repeated_row(tmp_path: Path, train: list[int], val: list[int]) -> None:
    write_moons_like(tmp_path / "t")
    path = tmp_path / "t.json"
    write_split_file(path, train, val)
    with pytest.raises(DataError, match=r"t\.json: row \d appears more than once"):
        load_split_data(tmp_path / "t", path)


# --- tables ----------------------------------------------------------------------


def test_table_empty_file(tmp_path: Path) -> None:
    write_moons_like(tmp_path / "t")
    (tmp_path / "t" / "data.csv").write_text("")
    with pytest.raises(DataError, match="data.csv"):
        read_table(tmp_path / "t")


@pytest.mark.parametrize("ending", [b"\r", b"\r\n"], ids=["cr", "crlf"])
def test_table_carriage_return_endings(tmp_path: Path, ending: bytes) -> None:
    write_moons_like(tmp_path / "t")
    path = tmp_path / "t" / "data.csv"
    expected_features, expected_targets, _ = read_table(tmp_path / "t")
    path.write_bytes(path.read_bytes().replace(b"\n", ending))
    features, targets, _ = read_table(tmp_path / "t")
    np.testing.assert_array_equal(features, expected_features)
    np.testing.assert_array_equal(targets, expected_targets)


# --- imported image folders ---------------------------------------------------------


def test_image_cache_empty_file(tmp_path: Path) -> None:
    write_image_cache(tmp_path / "digits", [0, 1, 0])
    (tmp_path / "digits" / CACHE_FILE).write_bytes(b"")
    with pytest.raises(DataError, match="images.npy"):
        read_image_folder(tmp_path / "digits")


def test_manifest_directory_path(tmp_path: Path) -> None:
    write_image_cache(tmp_path / "digits", [0, 1, 0])
    os.remove(tmp_path / "digits" / MANIFEST_FILE)
    (tmp_path / "digits" / MANIFEST_FILE).mkdir()
    with pytest.raises(DataError, match="manifest.csv"):
        read_image_folder(tmp_path / "digits")


@pytest.mark.parametrize("label", [2, -1])
def test_manifest_label_not_binary(tmp_path: Path, label: int) -> None:
    write_image_cache(tmp_path / "digits", [0, 1, label])
    with pytest.raises(DataError, match="manifest.csv"):
        read_image_folder(tmp_path / "digits")


def test_image_cache_fifo_is_rejected(tmp_path: Path) -> None:
    write_image_cache(tmp_path / "digits", [0, 1, 0])
    os.remove(tmp_path / "digits" / CACHE_FILE)
    os.mkfifo(tmp_path / "digits" / CACHE_FILE)
    with pytest.raises(DataError, match="not a regular file"):
        read_image_folder(tmp_path / "digits")


@pytest.mark.parametrize("label", ["yes", ""])
def test_table_label_outside_classes(tmp_path: Path, label: str) -> None:
    write_moons_like(tmp_path / "t")
    path = tmp_path / "t" / "data.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + "," + label
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data\.csv: row 4 has the label"):
        read_table(tmp_path / "t")


@pytest.mark.parametrize("value", ["inf", "-Infinity", "1e400"])
def test_table_value_not_finite(tmp_path: Path, value: str) -> None:
    write_moons_like(tmp_path / "t")
    path = tmp_path / "t" / "data.csv"
    lines = path.read_text().splitlines()
    lines[5] = value + "," + lines[5].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data\.csv: row 6 has a value that is not finite"):
        read_table(tmp_path / "t")
