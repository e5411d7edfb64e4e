"""Importing your own CSV tables and image folders: the written datasets, bad data and invalid params."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import PROJECT_ROOT, make_project, run, set_param
from stepbystep.data.importing import import_dataset
from stepbystep.data.loading import read_dataset
from stepbystep.data.splits import split_datasets
from stepbystep.errors import DataError, ParamsError
from stepbystep.params import ImportDataParams, SplitParams, load_params

TABLE_CSV = "x1,x2,y\n0.5,1.0,a\n1.5,2.0,b\n2.5,3.0,a\n3.5,4.0,b\n"
TABLE_PARAMS = {
    "kind": "table",
    "path": "raw/table.csv",
    "task": "binary",
    "features": ["x1", "x2"],
    "target": "y",
    "positive_class": "b",
}
IMAGE_PARAMS = {
    "kind": "images",
    "path": "raw/pics",
    "task": "binary",
    "positive_class": "dog",
    "image_size": None,
    "channels": 1,
}
SPLIT_PARAMS = {"method": "random_split", "train_fraction": 0.5, "val_fraction": 0.5, "seed": 0, "stratify": False}


def image_bytes(height: int = 16, width: int = 16, mode: str = "L", fmt: str = "PNG", seed: int = 0) -> bytes:
    """Return an image file of random pixels, so that a truncated copy loses pixel data."""
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def two_classes(extra: dict[str, bytes | None] | None = None) -> dict[str, bytes | None]:
    """Return an image folder with two valid 16×16 images per class, plus ``extra`` files."""
    files: dict[str, bytes | None] = {
        "raw/pics/cat/0.png": image_bytes(seed=0),
        "raw/pics/cat/1.png": image_bytes(seed=1),
        "raw/pics/dog/0.png": image_bytes(seed=2),
        "raw/pics/dog/1.png": image_bytes(seed=3),
    }
    files.update(extra or {})
    return files


def write_files(root: Path, files: dict[str, bytes | str | None]) -> None:
    """Create ``files`` under ``root``: bytes or text become files, None an empty folder."""
    for relative, content in files.items():
        path = root / relative
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            path.write_bytes(content)


# --- bad data ----------------------------------------------------------------

# (case id, files under the project root, import_data params, fragments the message must contain)
BAD_DATA: list[tuple[str, dict[str, Any], dict[str, Any], list[str]]] = [
    ("table_file_missing", {}, {**TABLE_PARAMS, "path": "raw/missing.csv"},
     ["raw/missing.csv: file not found", "Fix: correct import_data.bad.path"]),
    ("table_path_is_folder", {"raw/table.csv": None}, TABLE_PARAMS,
     ["raw/table.csv is a folder", "needs a CSV file"]),
    ("table_file_empty", {"raw/table.csv": ""}, TABLE_PARAMS, ["raw/table.csv is empty"]),
    ("table_header_only", {"raw/table.csv": "x1,x2,y\n"}, TABLE_PARAMS, ["raw/table.csv has a header but no data rows"]),
    ("feature_column_misspelled", {"raw/table.csv": TABLE_CSV}, {**TABLE_PARAMS, "features": ["x1", "x_2"]},
     ["raw/table.csv: column 'x_2' of import_data.bad.features not found", "did you mean 'x2'?",
      "Columns in the file: 'x1', 'x2', 'y'"]),
    ("target_column_missing", {"raw/table.csv": TABLE_CSV}, {**TABLE_PARAMS, "target": "label"},
     ["raw/table.csv: column 'label' of import_data.bad.target not found"]),
    ("column_repeated_in_header", {"raw/table.csv": "x1,x2,x2,y\n1,2,3,a\n4,5,6,b\n"}, TABLE_PARAMS,
     ["raw/table.csv: column 'x2' of import_data.bad.features appears 2 times in the header"]),
    ("value_not_a_number", {"raw/table.csv": "x1,x2,y\n0.5,1.0,a\n1.5,abc,b\n2.5,3.0,a\n"}, TABLE_PARAMS,
     ["raw/table.csv: 1 invalid value", "line 3, column 'x2': 'abc' is not a number"]),
    ("value_missing", {"raw/table.csv": "x1,x2,y\n0.5,1.0,a\n1.5,2.0,b\n,3.0,a\n"}, TABLE_PARAMS,
     ["raw/table.csv: 1 invalid value", "line 4, column 'x1': missing value", "does not impute"]),
    ("value_marked_na", {"raw/table.csv": "x1,x2,y\n0.5,NA,a\n1.5,2.0,b\n"}, TABLE_PARAMS,
     ["line 2, column 'x2': missing value 'NA'"]),
    ("value_infinite", {"raw/table.csv": "x1,x2,y\n0.5,1.0,a\ninf,2.0,b\n"}, TABLE_PARAMS,
     ["line 3, column 'x1': 'inf' is not a finite number"]),
    ("several_invalid_values", {"raw/table.csv": "x1,x2,y\n?,1.0,a\n1.5,x,b\n2.5,,a\n"}, TABLE_PARAMS,
     ["raw/table.csv: 3 invalid values", "line 2, column 'x1': missing value '?'",
      "line 3, column 'x2': 'x' is not a number", "line 4, column 'x2': missing value"]),
    ("regression_target_not_a_number", {"raw/table.csv": "x1,x2,y\n0.5,1.0,2.0\n1.5,2.0,high\n"},
     {**TABLE_PARAMS, "task": "regression", "positive_class": None},
     ["line 3, column 'y': 'high' is not a number"]),
    ("class_label_missing", {"raw/table.csv": "x1,x2,y\n0.5,1.0,a\n1.5,2.0,\n2.5,3.0,b\n"}, TABLE_PARAMS,
     ["raw/table.csv: 1 invalid value", "line 3, column 'y': missing value"]),
    ("target_single_class", {"raw/table.csv": "x1,x2,y\n0.5,1.0,b\n1.5,2.0,b\n2.5,3.0,b\n"}, TABLE_PARAMS,
     ["raw/table.csv: target column 'y' has a single class 'b' in all 3 rows"]),
    ("positive_class_absent", {"raw/table.csv": TABLE_CSV}, {**TABLE_PARAMS, "positive_class": "c"},
     ["raw/table.csv: import_data.bad.positive_class 'c' never occurs in target column 'y'", "'a', 'b'"]),
    ("row_with_extra_field", {"raw/table.csv": "x1,x2,y\n0.5,1.0,a\n1.5,2.0,b,7\n"}, TABLE_PARAMS,
     ["raw/table.csv: line 3 has 4 fields, but the header has 3"]),
    ("image_folder_missing", {}, IMAGE_PARAMS, ["raw/pics: folder not found"]),
    ("image_folder_empty", {"raw/pics": None}, IMAGE_PARAMS, ["raw/pics contains no class subfolders"]),
    ("images_without_class_folders", {"raw/pics/0.png": image_bytes()}, IMAGE_PARAMS,
     ["raw/pics contains images but no class subfolders", "<folder>/<class>/<image>.png"]),
    ("class_folder_empty", two_classes({"raw/pics/bird": None}), IMAGE_PARAMS,
     ["class folder raw/pics/bird contains no PNG or JPEG images"]),
    ("class_folder_without_images", two_classes({"raw/pics/bird/notes.txt": b"text"}), IMAGE_PARAMS,
     ["class folder raw/pics/bird contains no PNG or JPEG images"]),
    ("single_class_folder", {"raw/pics/dog/0.png": image_bytes()}, IMAGE_PARAMS,
     ["raw/pics contains a single class folder 'dog'"]),
    ("positive_class_folder_absent", two_classes(), {**IMAGE_PARAMS, "positive_class": "bird"},
     ["raw/pics: import_data.bad.positive_class 'bird' is not a class folder here", "'cat', 'dog'"]),
    ("listed_class_folder_absent", two_classes(), {**IMAGE_PARAMS, "classes": ["bird", "dog"]},
     ["raw/pics: class folder 'bird' of import_data.bad.classes not found"]),
    ("image_unreadable", two_classes({"raw/pics/dog/2.png": b"this is not a PNG file"}), IMAGE_PARAMS,
     ["raw/pics/dog/2.png: cannot read image", "UnidentifiedImageError"]),
    ("png_truncated", two_classes({"raw/pics/dog/2.png": truncated(image_bytes(seed=4))}), IMAGE_PARAMS,
     ["raw/pics/dog/2.png: cannot read image", "truncated"]),
    ("jpeg_truncated", two_classes({"raw/pics/dog/2.jpg": truncated(image_bytes(fmt="JPEG", seed=5))}), IMAGE_PARAMS,
     ["raw/pics/dog/2.jpg: cannot read image"]),
    ("image_sizes_mixed", two_classes({"raw/pics/dog/2.png": image_bytes(height=12, width=16)}), IMAGE_PARAMS,
     ["raw/pics/dog/2.png: image of height 12 and width 16 differs from raw/pics/cat/0.png (height 16, width 16)",
      "Fix: set import_data.bad.image_size to [height, width]"]),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("template") / "project", git=False)


@pytest.mark.parametrize(
    ("files", "params", "fragments"), [case[1:] for case in BAD_DATA], ids=[case[0] for case in BAD_DATA]
)
def test_bad_data_stops_import(template: Path, tmp_path: Path, files, params, fragments) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)
    write_files(root, files)
    set_param(root / "params.yaml", "import_data.bad", {key: value for key, value in params.items() if value is not None})
    set_param(root / "params.yaml", "split.bad", SPLIT_PARAMS)

    result = run(["python", "stages/import_data.py", "bad"], root, check=False)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "\nerror: " in f"\n{result.stderr}"
    for fragment in fragments:
        assert fragment in result.stderr, f"{fragment!r} not in:\n{result.stderr}"
    assert not (root / "data" / "bad").exists()
    leftovers = list((root / "data").glob(".bad.*")) if (root / "data").exists() else []
    assert leftovers == []


def test_import_stage_rejects_unknown_name(template: Path, tmp_path: Path) -> None:
    root = tmp_path / "project"
    shutil.copytree(template, root)

    result = run(["python", "stages/import_data.py", "houses"], root, check=False)

    assert result.returncode == 1
    assert "no dataset named 'houses' in import_data (declared: none)" in result.stderr


def test_failed_import_keeps_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"raw/table.csv": TABLE_CSV})
    import_dataset("bad", ImportDataParams(**TABLE_PARAMS), Path("data/bad"))
    before = (tmp_path / "data/bad/data.csv").read_bytes()

    write_files(tmp_path, {"raw/table.csv": "x1,x2,y\n0.5,oops,a\n1.5,2.0,b\n"})
    with pytest.raises(DataError, match="'oops' is not a number"):
        import_dataset("bad", ImportDataParams(**TABLE_PARAMS), Path("data/bad"))

    assert (tmp_path / "data/bad/data.csv").read_bytes() == before
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["bad"]


# --- what an import writes ---------------------------------------------------


def test_table_import_keeps_declared_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = " id , x1 ,notes, x2 ,y\n7, 0.5 ,first,1e3, dog \n8,1.5,,2.0,cat\n9,2.5,last,-3,bird\n\n"
    write_files(tmp_path, {"raw/table.csv": text})
    params = ImportDataParams(**{**TABLE_PARAMS, "features": ["x2", "x1"], "positive_class": "dog"})

    import_dataset("animals", params, Path("data/animals"))
    features, targets, info = read_dataset(Path("data/animals"))

    assert (tmp_path / "data/animals/data.csv").read_text().splitlines()[0] == "x2,x1,y"
    np.testing.assert_array_equal(features, [[1000.0, 0.5], [2.0, 1.5], [-3.0, 2.5]])
    np.testing.assert_array_equal(targets, [1, 0, 0])
    assert info["classes"] == ["bird", "cat", "dog"]
    assert info["positive_class"] == "dog"
    assert info["source"] == "raw/table.csv"
    assert info["task"] == "binary"


def test_regression_table_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {"raw/table.csv": "x1,x2,y\n0.1,1,2.5\n0.2,2,-1e-3\n0.3,3,7\n"})
    params = ImportDataParams(**{**TABLE_PARAMS, "task": "regression", "positive_class": None})

    import_dataset("line", params, Path("data/line"))
    features, targets, info = read_dataset(Path("data/line"))

    np.testing.assert_array_equal(features, [[0.1, 1.0], [0.2, 2.0], [0.3, 3.0]])
    np.testing.assert_array_equal(targets, [2.5, -0.001, 7.0])
    assert "classes" not in info


def test_image_import_converts_and_resizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, {
        "raw/pics/cat/a.png": image_bytes(10, 12, "L"),
        "raw/pics/cat/b.JPG": image_bytes(20, 20, "RGB", "JPEG"),
        "raw/pics/dog/c.png": image_bytes(8, 8, "RGBA"),
        "raw/pics/dog/d.jpeg": image_bytes(16, 9, "RGB", "JPEG"),
        "raw/pics/dog/readme.txt": b"skipped, as torchvision's ImageFolder skips it",
        "raw/pics/.hidden/e.png": image_bytes(),
    })
    params = ImportDataParams(**{**IMAGE_PARAMS, "image_size": [6, 5], "channels": 3})

    import_dataset("pets", params, Path("data/pets"))
    images, labels, info = read_dataset(Path("data/pets"))

    assert isinstance(images, np.memmap)
    assert images.dtype == np.uint8
    assert images.shape == (4, 3, 6, 5)
    np.testing.assert_array_equal(labels, [0, 0, 1, 1])
    assert (info["channels"], info["height"], info["width"], info["n_images"]) == (3, 6, 5, 4)
    assert info["classes"] == ["cat", "dog"]
    manifest = (tmp_path / "data/pets/manifest.csv").read_text().splitlines()
    assert manifest == ["file,class,label", "cat/a.png,cat,0", "cat/b.JPG,cat,0", "dog/c.png,dog,1", "dog/d.jpeg,dog,1"]
    # A grayscale source has three equal channels after conversion to RGB.
    np.testing.assert_array_equal(images[0, 0], images[0, 1])
    np.testing.assert_array_equal(images[0, 0], images[0, 2])


def test_grayscale_import_matches_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, two_classes())

    import_dataset("pets", ImportDataParams(**IMAGE_PARAMS), Path("data/pets"))
    images, _, _ = read_dataset(Path("data/pets"))

    expected = np.asarray(Image.open(tmp_path / "raw/pics/dog/1.png"))
    assert images.shape == (4, 1, 16, 16)
    np.testing.assert_array_equal(images[3, 0], expected)


def test_sixteen_bit_png_keeps_high_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    deep = np.array([[0, 255, 256, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(deep).save(buffer, format="PNG")
    write_files(tmp_path, {"raw/pics/cat/a.png": buffer.getvalue(), "raw/pics/dog/b.png": buffer.getvalue()})

    import_dataset("deep", ImportDataParams(**IMAGE_PARAMS), Path("data/deep"))
    images, _, _ = read_dataset(Path("data/deep"))

    np.testing.assert_array_equal(images[0, 0], [[0, 0, 1, 255]])


def test_selected_classes_one_against_rest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, two_classes({"raw/pics/bird/0.png": image_bytes(seed=9), "raw/pics/fox/0.png": image_bytes()}))
    params = ImportDataParams(**{**IMAGE_PARAMS, "classes": ["dog", "bird", "cat"]})

    import_dataset("pets", params, Path("data/pets"))
    _, labels, info = read_dataset(Path("data/pets"))

    assert info["classes"] == ["bird", "cat", "dog"]
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1])


def test_training_reads_cache_without_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stepbystep.workflows.training import train_classifier

    monkeypatch.chdir(tmp_path)
    files = {f"raw/pics/{name}/{index}.png": image_bytes(8, 8, seed=index + 10 * label)
             for label, name in enumerate(["cat", "dog"]) for index in range(6)}
    write_files(tmp_path, files)
    import_dataset("pets", ImportDataParams(**IMAGE_PARAMS), Path("data/pets"))
    split_datasets({"pets": SplitParams(**SPLIT_PARAMS)}, Path("data"), Path("data/splits"))
    shutil.rmtree(tmp_path / "raw")

    data = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    data["tracking"]["tensorboard"] = False
    data["import_data"] = {"pets": IMAGE_PARAMS}
    data["split"]["pets"] = SPLIT_PARAMS
    data["train_classifier"]["pets_mlp"] = {
        **data["train_classifier"]["images_deep_relu"], "dataset": "pets", "horizontal_flip": 0.0, "epochs": 2,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    metadata = train_classifier(load_params(tmp_path / "params.yaml"), "pets_mlp", Path("models/pets_mlp"), track=False)

    assert metadata["input_shape"] == [1, 8, 8]
    assert (tmp_path / "models/pets_mlp/model.pt").is_file()


def test_damaged_cache_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_files(tmp_path, two_classes())
    import_dataset("pets", ImportDataParams(**IMAGE_PARAMS), Path("data/pets"))
    np.save(tmp_path / "data/pets/images.npy", np.zeros((3, 1, 16, 16), dtype=np.uint8))

    with pytest.raises(DataError, match=r"images of shape \(3, 1, 16, 16\), but .* \(4, 1, 16, 16\)"):
        read_dataset(Path("data/pets"))


# --- params ------------------------------------------------------------------

# (case id, import_data entry, fragments the message must contain)
INVALID_IMPORT_PARAMS = [
    ("kind_unknown", {**TABLE_PARAMS, "kind": "parquet"},
     ["import_data.bad.kind = 'parquet'", "must be one of 'table' or 'images'"]),
    ("table_without_features", {key: value for key, value in TABLE_PARAMS.items() if key != "features"},
     ["import_data.bad", "kind: table needs features", "Fix: add features and target"]),
    ("target_among_features", {**TABLE_PARAMS, "features": ["x1", "y"]},
     ["import_data.bad", "target column 'y' is also listed in features"]),
    ("binary_without_positive_class", {**TABLE_PARAMS, "positive_class": None},
     ["import_data.bad", "task: binary needs positive_class"]),
    ("regression_with_positive_class", {**TABLE_PARAMS, "task": "regression"},
     ["import_data.bad", "positive_class applies only to task: binary"]),
    ("table_with_channels", {**TABLE_PARAMS, "channels": 1},
     ["import_data.bad", "channels apply only to kind: images"]),
    ("images_for_regression", {**IMAGE_PARAMS, "task": "regression", "positive_class": None},
     ["import_data.bad", "kind: images supports task: binary only"]),
    ("images_without_channels", {**IMAGE_PARAMS, "channels": None}, ["import_data.bad", "needs channels: 1"]),
    ("two_channels", {**IMAGE_PARAMS, "channels": 2}, ["import_data.bad.channels = 2", "must be one of 1 or 3"]),
    ("image_size_of_three", {**IMAGE_PARAMS, "image_size": [8, 8, 3]},
     ["import_data.bad", "image_size must be [height, width], got 3 values"]),
    ("image_size_zero", {**IMAGE_PARAMS, "image_size": [0, 8]},
     ["import_data.bad.image_size.0 = 0", "greater than 0"]),
    ("absolute_path", {**TABLE_PARAMS, "path": "/tmp/table.csv"},
     ["import_data.bad", "must be relative to the project root", "Fix: copy or link the data into the project"]),
    ("path_outside_project", {**TABLE_PARAMS, "path": "../table.csv"}, ["must be relative to the project root"]),
    ("positive_class_not_in_classes", {**IMAGE_PARAMS, "classes": ["cat", "bird"]},
     ["import_data.bad", "positive_class 'dog' is not one of classes"]),
    ("misspelled_key", {**TABLE_PARAMS, "feature": ["x1"]},
     ["import_data.bad.feature", "unknown key", "did you mean 'features'"]),
]


@pytest.mark.parametrize(("entry", "fragments"), [case[1:] for case in INVALID_IMPORT_PARAMS],
                         ids=[case[0] for case in INVALID_IMPORT_PARAMS])
def test_invalid_import_params(tmp_path: Path, entry: dict[str, Any], fragments: list[str]) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    set_param(params_file, "import_data.bad", {key: value for key, value in entry.items() if value is not None})
    set_param(params_file, "split.bad", SPLIT_PARAMS)

    with pytest.raises(ParamsError) as raised:
        load_params(params_file)

    for fragment in fragments:
        assert fragment in str(raised.value), f"{fragment!r} not in:\n{raised.value}"
    assert "Fix: " in str(raised.value)


def test_import_without_split_entry(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    set_param(params_file, "import_data.houses", {**TABLE_PARAMS})

    with pytest.raises(ParamsError, match=r"import_data.houses has no entry under split, .* Fix: add split.houses"):
        load_params(params_file)


def test_import_name_reserved(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    set_param(params_file, "import_data.moons", {**TABLE_PARAMS})

    with pytest.raises(ParamsError, match="a name the pipeline's own stages write"):
        load_params(params_file)


def test_integer_class_names_read_as_text(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params_file)
    set_param(params_file, "import_data.digits", {**IMAGE_PARAMS, "classes": [3, 8], "positive_class": 8})
    set_param(params_file, "split.digits", SPLIT_PARAMS)

    entry = load_params(params_file).import_data["digits"]

    assert entry.classes == ["3", "8"]
    assert entry.positive_class == "8"


def test_default_params_import_nothing() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")

    assert params.import_data == {}
    assert params.train_regression.normalization.method == "none"
    assert sorted(params.split) == ["images", "moons", "regression"]
