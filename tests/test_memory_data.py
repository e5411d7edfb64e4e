"""Large datasets are read, preprocessed and fed in chunks, with the same values as reading them whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_cached_image_folder
from stepbystep.data import preprocessing as preprocessing_module
from stepbystep.data import splits as splits_module
from stepbystep.data import tables as tables_module
from stepbystep.data.loading import PreprocessedRows, load_split_data, make_loaders
from stepbystep.data.preprocessing import Preprocessing
from stepbystep.data.splits import read_split, read_split_indices, write_split
from stepbystep.data.tables import TableInfo, read_table, write_table
from stepbystep.errors import DataError
from stepbystep.params import NormalizationParams, SplitParams
from stepbystep.data.samplers import make_balanced_sampler
from stepbystep.training.feeding import BatchedLoader, RandomHorizontalFlip, TransformedTensorDataset

REGRESSION_INFO = TableInfo(name="t", task="regression", features=["x"], target="y")
SPLIT_PARAMS = SplitParams(method="random_split", train_fraction=0.8, val_fraction=0.2, seed=3, stratify=False)


def write_image_cache(folder: Path, n_images: int, channels: int = 1, side: int = 6) -> np.ndarray:
    """Write an imported image folder with random pixels and return the pixels."""
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(n_images, channels, side, side), dtype=np.uint8)
    labels = (rng.random(n_images) < 0.3).astype(np.int64)
    write_cached_image_folder(folder, pixels, labels)
    return pixels


# --- tables ------------------------------------------------------------------


def test_table_floats_exact_across_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "_CHUNK_ROWS", 1000)
    rng = np.random.default_rng(0)
    n = 4500
    x1 = np.concatenate(
        [rng.random(n // 3), rng.standard_normal(n // 3) * 1e-300, rng.standard_normal(n // 3) * 1e300]
    )
    x2 = rng.standard_normal(n)
    labels = np.where(rng.random(n) < 0.4, "yes", "no")
    info = TableInfo(
        name="t", task="binary", features=["x1", "x2"], target="answer", classes=["no", "yes"], positive_class="yes"
    )
    write_table(tmp_path / "t", {"x1": x1, "answer": labels, "x2": x2}, info)

    features, targets, _ = read_table(tmp_path / "t")

    np.testing.assert_array_equal(features, np.stack([x1, x2], axis=1))
    np.testing.assert_array_equal(targets, (labels == "yes").astype(np.int64))
    assert features.dtype == np.float64
    assert targets.dtype == np.int64


def test_table_without_final_newline(tmp_path: Path) -> None:
    write_table(tmp_path / "t", {"x": np.array([1.5, 2.5]), "y": np.array([3.0, 4.0])}, REGRESSION_INFO)
    path = tmp_path / "t" / "data.csv"
    path.write_text(path.read_text().rstrip("\n"))

    features, targets, _ = read_table(tmp_path / "t")

    assert features[:, 0].tolist() == [1.5, 2.5]
    assert targets.tolist() == [3.0, 4.0]


def test_table_text_in_number_column(tmp_path: Path) -> None:
    write_table(tmp_path / "t", {"x": np.array([1.5, 2.5]), "y": np.array([3.0, 4.0])}, REGRESSION_INFO)
    path = tmp_path / "t" / "data.csv"
    path.write_text(path.read_text().replace("2.5", "two"))

    with pytest.raises(DataError, match=r"data\.csv: a value of the columns x, y is not a number"):
        read_table(tmp_path / "t")


# --- split files ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", [8, 64, 1 << 20])
def test_split_indices_any_chunk_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(splits_module, "_PARSE_CHUNK", chunk)
    order = np.random.default_rng(1).permutation(1234)
    write_split(tmp_path / "s.json", "s", SPLIT_PARAMS, order[:1000].tolist(), order[1000:].tolist())

    train, val = read_split_indices(tmp_path / "s.json")
    expected = read_split(tmp_path / "s.json")

    assert train.dtype == np.int64
    assert val.dtype == np.int64
    assert train.tolist() == expected["train"]
    assert val.tolist() == expected["val"]


@pytest.mark.parametrize(
    ("text", "train", "val"),
    [
        ('{"n_samples": 3, "train": [2, 0], "val": [1]}', [2, 0], [1]),
        ('{"n_samples": 1, "train": [0], "val": []}', [0], []),
        ('{"val": [1], "train": [0]}', [0], [1]),
        ('{"train": [0], "val": [1]}', [0], [1]),
    ],
    ids=["compact", "empty-val", "val-first", "no-sample-count"],
)
def test_split_indices_other_layouts(tmp_path: Path, text: str, train: list[int], val: list[int]) -> None:
    (tmp_path / "s.json").write_text(text)

    got_train, got_val = read_split_indices(tmp_path / "s.json")

    assert got_train.tolist() == train
    assert got_val.tolist() == val


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"n_samples": 3, "train": [0, 1,], "val": [2]}', "not valid JSON"),
        ('{"n_samples": 3, "train": [0, 1', "not valid JSON"),
        ('{"n_samples": 2, "train": [0.5], "val": [1]}', "lists of row indices"),
        ('{"n_samples": 2, "train": [true], "val": [1]}', "lists of row indices"),
        ('{"n_samples": 2, "train": "0", "val": [1]}', "lists of row indices"),
        ('{"n_samples": 2, "val": [1]}', "lists of row indices"),
        ("", "not valid JSON"),
    ],
    ids=["trailing-comma", "truncated", "float", "bool", "string", "no-train", "empty"],
)
def test_split_indices_reject_broken_files(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "s.json").write_text(text)

    with pytest.raises(DataError, match=message):
        read_split_indices(tmp_path / "s.json")


def test_split_rows_outside_data(tmp_path: Path) -> None:
    write_table(tmp_path / "t", {"x": np.arange(4.0), "y": np.arange(4.0)}, REGRESSION_INFO)
    write_split(tmp_path / "s.json", "t", SPLIT_PARAMS, [0, 1, 7], [2])

    with pytest.raises(DataError, match=r"train rows run from 0 to 7, but .* has 4 rows"):
        load_split_data(tmp_path / "t", tmp_path / "s.json")


# --- preprocessing -------------------------------------------------------------


@pytest.mark.parametrize("normalization", ["none", "fixed", "standardize"])
def test_image_transform_chunked(monkeypatch: pytest.MonkeyPatch, normalization: str) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, size=(50, 3, 4, 4), dtype=np.uint8)
    rows = np.random.default_rng(3).permutation(50)[:37]
    if normalization == "fixed":
        params = NormalizationParams(method="fixed", mean=0.5, std=0.25)
    else:
        params = NormalizationParams(method=normalization)
    whole = Preprocessing.fit("images", pixels[rows], params)
    expected = whole.transform(pixels[rows])

    monkeypatch.setattr(preprocessing_module, "CHUNK_VALUES", 48 * 5)  # five images per chunk
    chunked = Preprocessing.fit("images", pixels, params, rows=rows)

    assert chunked.mean == pytest.approx(whole.mean, rel=1e-12)
    assert chunked.std == pytest.approx(whole.std, rel=1e-12)
    rebuilt = Preprocessing.from_state_dict(chunked.state_dict())
    assert torch.equal(chunked.transform(pixels, rows), rebuilt.transform(pixels[rows]))
    assert torch.equal(whole.transform(pixels, rows), expected)


def test_polynomial_transform_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    features = np.random.default_rng(4).standard_normal((300, 2))
    rows = np.arange(299, -1, -2)
    fitted = Preprocessing.fit("table", features[rows], NormalizationParams(method="standardize"), polynomial_degree=3)
    expected = fitted.transform(features[rows])

    monkeypatch.setattr(preprocessing_module, "CHUNK_VALUES", 90)

    assert fitted.transform(features, rows).shape == (150, 9)
    assert torch.equal(fitted.transform(features, rows), expected)


# --- feeding -------------------------------------------------------------------


def test_lazy_image_batches_equal_eager(tmp_path: Path) -> None:
    pixels = write_image_cache(tmp_path / "images", 120)
    write_split(tmp_path / "s.json", "images", SPLIT_PARAMS, list(range(119, 23, -1)), list(range(24)))
    data = load_split_data(tmp_path / "images", tmp_path / "s.json")
    normalization = NormalizationParams(method="standardize")
    preprocessing = Preprocessing.fit("images", data.features, normalization, rows=data.train_index)

    torch.manual_seed(9)
    train_loader, val_loader = make_loaders(data, preprocessing, 16, sampler="balanced", horizontal_flip=0.5)
    lazy_batches = [batch for _ in range(2) for batch in train_loader] + list(val_loader)

    # The same loaders over tensors preprocessed up front, the way tables are fed.
    assert isinstance(data.features, np.memmap)
    assert isinstance(train_loader.dataset, PreprocessedRows)
    assert np.shares_memory(train_loader.dataset.features, data.features)
    x_train = preprocessing.transform(pixels[data.train_index])
    x_val = preprocessing.transform(pixels[data.val_index])
    y_train, y_val = train_loader.dataset.targets, val_loader.dataset.targets
    torch.manual_seed(9)
    eager_train = BatchedLoader(
        TransformedTensorDataset(x_train, y_train, transform=RandomHorizontalFlip(0.5)),
        batch_size=16,
        sampler=make_balanced_sampler(y_train),
    )
    eager_val = BatchedLoader(TransformedTensorDataset(x_val, y_val), batch_size=16)
    eager_batches = [batch for _ in range(2) for batch in eager_train] + list(eager_val)

    assert len(lazy_batches) == len(eager_batches) == 2 * 6 + 2
    for (lazy_x, lazy_y), (eager_x, eager_y) in zip(lazy_batches, eager_batches):
        assert torch.equal(lazy_x, eager_x)
        assert torch.equal(lazy_y, eager_y)


def test_preprocessed_rows_single_sample() -> None:
    pixels = np.arange(5 * 1 * 2 * 2, dtype=np.uint8).reshape(5, 1, 2, 2)
    preprocessing = Preprocessing(kind="images", normalization="fixed", mean=[0.5], std=[0.5])
    dataset = PreprocessedRows(pixels, np.array([4, 2, 0]), torch.tensor([[1.0], [0.0], [1.0]]), preprocessing)

    x, y = dataset[1]

    assert len(dataset) == 3
    assert torch.equal(x, preprocessing.transform(pixels[[2]])[0])
    assert y.tolist() == [0.0]
    assert dataset.get_batch(torch.empty(0, dtype=torch.int64))[0].shape == (0, 1, 2, 2)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_lookup_equals_float64_arithmetic(channels: int) -> None:
    pixels = np.random.default_rng(6).integers(0, 256, size=(40, channels, 3, 3), dtype=np.uint8)
    pixels[0] = 0
    pixels[1] = 255
    mean = np.array([0.25, 0.5, 0.75][:channels]).reshape(1, -1, 1, 1)
    std = np.array([0.5, 0.125, 0.3][:channels]).reshape(1, -1, 1, 1)
    preprocessing = Preprocessing(
        kind="images", normalization="standardize", mean=mean.ravel().tolist(), std=std.ravel().tolist()
    )

    expected = ((pixels.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)

    assert np.array_equal(preprocessing.transform(pixels).numpy(), expected)
