"""Export three datasets that ship with scikit-learn as user data: two CSV tables and an image folder.

    python examples/export_sklearn_datasets.py            # writes examples/data/
    python examples/export_sklearn_datasets.py --output DIR

- ``breast_cancer.csv``: 569 tumours, 30 features named as scikit-learn names
  them, and ``diagnosis`` (``malignant`` or ``benign``);
- ``diabetes.csv``: 442 patients, 10 features in their original units (age in
  years, sex 1 or 2, BMI, blood pressure, six blood serum measurements) and
  ``progression``, a measure of disease progression one year later;
- ``digits/<digit>/<index>.png``: 1,797 handwritten digits as 8×8 grayscale
  PNG files, scikit-learn's intensities 0-16 scaled to 0-255.

The files are the same on every run. scikit-learn bundles these datasets, so
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from stepbystep import files

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "data"


def _csv_text(header: list[str], rows: list[list[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([repr(float(value)) if isinstance(value, (float, np.floating)) else value for value in row])
    return buffer.getvalue()


def export_breast_cancer(path: Path) -> None:
    from sklearn.datasets import load_breast_cancer

    dataset = load_breast_cancer()
    diagnosis = dataset.target_names[dataset.target]  # target 0 is malignant, 1 is benign
    rows = [[*features, label] for features, label in zip(dataset.data, diagnosis)]
    files.write_text(path, _csv_text([*dataset.feature_names, "diagnosis"], rows))


def export_diabetes(path: Path) -> None:
    from sklearn.datasets import load_diabetes

    dataset = load_diabetes(scaled=False)
    rows = [[*features, target] for features, target in zip(dataset.data, dataset.target)]
    files.write_text(path, _csv_text([*dataset.feature_names, "progression"], rows))


def export_digits(folder: Path) -> None:
    from PIL import Image

    from sklearn.datasets import load_digits

    dataset = load_digits()
    pixels = np.rint(dataset.images * (255 / 16)).astype(np.uint8)
    with files.atomic_directory(folder) as staging:
        for index, (image, digit) in enumerate(zip(pixels, dataset.target)):
            class_folder = staging / str(digit)
            class_folder.mkdir(exist_ok=True)
            Image.fromarray(image).save(class_folder / f"{index:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="folder to write (default: examples/data)")
    output = parser.parse_args().output

    export_breast_cancer(output / "breast_cancer.csv")
    export_diabetes(output / "diabetes.csv")
    export_digits(output / "digits")
    print(f"wrote breast_cancer.csv, diabetes.csv and digits/ to {output}")


if __name__ == "__main__":
    main()
