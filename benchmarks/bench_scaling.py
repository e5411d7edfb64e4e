"""Measure how epoch time and peak memory of the pipeline's training path grow with the number of samples.

Two datasets, written in the layouts the pipeline's data stages write:

- regression: the chapter 2 table (``y = 1 + 2x + noise``) as ``data.csv``
  with ``dataset.json``, 10^4 to 10^7 rows;
- images: an imported image folder of 28x28 grayscale images, that is the
  memory-mapped ``images.npy`` cache with ``manifest.csv`` and
  ``dataset.json`` as ``import_image_folder`` writes them, 10^3 to 10^5
  images. The pixels are random; decoding PNG files is left out because only
  the training path is measured.

Each size is split 80/20 with ``random_split`` and trained in a fresh process
as the training stages train, without MLflow and TensorBoard. The process
calls ``load_split_data``, ``Preprocessing.fit`` and ``make_loaders`` with
batch size 16. Images get the balanced sampler, a horizontal flip and fixed
normalization, as in params.yaml. The model is the params' model, and
``Trainer`` tracks gradient statistics and uses the thread count of
``choose_num_threads``. An epoch includes its validation pass. The process
reports the seconds of loading and the median wall-clock and CPU seconds of
an epoch. Training runs on one thread, so CPU time is what the epoch takes on
an idle machine, and it stays comparable when other processes share the
cores. The process also reports its peak resident memory (``VmHWM``) above
what it used before loading, next to the size of the raw data (float64
columns of the table, uint8 pixels of the images).

Usage::

    .venv/bin/python benchmarks/bench_scaling.py                      # both datasets, all sizes
    .venv/bin/python benchmarks/bench_scaling.py --kinds images --sizes 1000 10000
    .venv/bin/python benchmarks/bench_scaling.py --plot benchmarks/scaling.png --csv benchmarks/results/scaling.csv
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZES = {
    "regression": [10**4, 10**5, 10**6, 10**7],
    "images": [10**3, 10**4, 10**5],
}
IMAGE_SIDE = 28
BATCH_SIZE = 16
SEED = 13


def reset_peak_memory() -> None:
    """Reset ``VmHWM`` to the current resident size (Linux 4.0 and later)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class AnonymousPeak:
    """Sample the process's anonymous resident memory (``RssAnon``) every ``interval`` seconds and keep the peak.

    ``VmHWM`` also counts the pages of memory-mapped files that the process
    has read. Those belong to the kernel's page cache: they are shared with
    other processes and dropped under memory pressure without being written
    anywhere. The anonymous part is the memory the process itself allocated.
    """

    def __init__(self, interval: float = 0.005) -> None:
        import threading

        self.interval = interval
        self.peak_kib = memory_kib("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_kib = max(self.peak_kib, memory_kib("RssAnon"))

    def start(self) -> AnonymousPeak:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, memory_kib("RssAnon"))


def memory_kib(field: str) -> int:
    """Return a memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status; this benchmark needs Linux")


# ---------------------------------------------------------------------------
# Datasets


def write_regression(folder: Path, n_samples: int) -> int:
    """Write the regression table of ``n_samples`` rows and return the raw data size in bytes."""
    from stepbystep.data.synthetic import make_regression
    from stepbystep.data.tables import TableInfo, write_table
    from stepbystep.params import RegressionDataParams

    params = RegressionDataParams(n_samples=n_samples, true_w=2.0, true_b=1.0, noise=0.1, seed=42)
    x, y = make_regression(params)
    info = TableInfo(name=folder.name, task="regression", features=["x"], target="y")
    write_table(folder, {"x": x[:, 0], "y": y[:, 0]}, info)
    return x.nbytes + y.nbytes


def write_images(folder: Path, n_samples: int) -> int:
    """Write an imported image folder of ``n_samples`` random 28x28 images and return the pixel bytes."""
    import numpy as np

    from stepbystep.data.images import CACHE_FILE, MANIFEST_FILE
    from stepbystep.data.tables import INFO_FILE

    folder.mkdir(parents=True)
    rng = np.random.default_rng(SEED)
    labels = (rng.random(n_samples) < 0.3).astype(np.int64)
    cache = np.lib.format.open_memmap(
        folder / CACHE_FILE, mode="w+", dtype=np.uint8, shape=(n_samples, 1, IMAGE_SIDE, IMAGE_SIDE)
    )
    # Chunks keep the writer's own memory small for the largest sizes.
    for start in range(0, n_samples, 10_000):
        stop = min(start + 10_000, n_samples)
        cache[start:stop] = rng.integers(0, 256, size=(stop - start, 1, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
    cache.flush()
    del cache

    manifest = io.StringIO()
    writer = csv.writer(manifest, lineterminator="\n")
    writer.writerow(["file", "class", "label"])
    for index, label in enumerate(labels):
        class_name = "positive" if label else "negative"
        writer.writerow([f"{class_name}/{index:07d}.png", class_name, int(label)])
    (folder / MANIFEST_FILE).write_text(manifest.getvalue(), encoding="utf-8")
    info = {
        "kind": "images",
        "name": folder.name,
        "task": "binary",
        "classes": ["negative", "positive"],
        "positive_class": "positive",
        "channels": 1,
        "height": IMAGE_SIDE,
        "width": IMAGE_SIDE,
        "n_images": n_samples,
        "source": "random",
        "cache": CACHE_FILE,
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return n_samples * IMAGE_SIDE * IMAGE_SIDE


def write_split_file(path: Path, name: str, n_samples: int) -> None:
    from stepbystep.data.splits import split_indices, write_split
    from stepbystep.params import SplitParams

    params = SplitParams(method="random_split", train_fraction=0.8, val_fraction=0.2, seed=SEED, stratify=False)
    train, val = split_indices(n_samples, params, name=name)
    write_split(path, name, params, train, val)


# ---------------------------------------------------------------------------
# One measurement, in its own process


def measure(kind: str, folder: Path, split_file: Path, epochs: int) -> dict[str, Any]:
    """Train ``epochs`` epochs on the dataset at ``folder`` as a training stage does; return times and memory.

    Memory is measured from the resident size before loading, so what the
    imports and the first use of PyTorch allocate (about 200 MiB) is left out
    when a warm-up run in the same process has come first.
    """
    import torch
    from torch import nn

    from stepbystep.data.loading import load_split_data, make_loaders
    from stepbystep.data.preprocessing import Preprocessing
    from stepbystep.models import build_classifier, build_regression_model
    from stepbystep.params import NormalizationParams
    from stepbystep.training import Trainer
    from stepbystep.training.threads import choose_num_threads

    baseline_kib = memory_kib("VmRSS")
    anonymous_baseline_kib = memory_kib("RssAnon")
    anonymous = AnonymousPeak().start()
    start = time.perf_counter()
    data = load_split_data(folder, split_file)
    if kind == "regression":
        normalization = NormalizationParams(method="none")
        preprocessing = Preprocessing.fit("table", data.features, normalization, rows=data.train_index)
        loaders = make_loaders(data, preprocessing, BATCH_SIZE)
        model = build_regression_model(data.sample_shape[0], seed=42)
        loss_fn: nn.Module = nn.MSELoss()
    else:
        normalization = NormalizationParams(method="fixed", mean=0.5, std=0.5)
        preprocessing = Preprocessing.fit("images", data.features, normalization, rows=data.train_index)
        loaders = make_loaders(data, preprocessing, BATCH_SIZE, sampler="balanced", horizontal_flip=0.5)
        model = build_classifier(
            n_inputs=IMAGE_SIDE * IMAGE_SIDE,
            hidden_sizes=[5, 3],
            activation="relu",
            bias=False,
            output="sigmoid",
            seed=17,
            flatten=True,
        )
        loss_fn = nn.BCELoss()
    load_seconds = time.perf_counter() - start

    train_loader, val_loader = loaders
    trainer = Trainer(
        model,
        loss_fn,
        torch.optim.SGD(model.parameters(), lr=0.1),
        train_loader=train_loader,
        val_loader=val_loader,
        track_gradients=True,
        progress=False,
        num_threads=choose_num_threads(model, BATCH_SIZE),
    )
    trainer.set_seed(42)
    epoch_seconds = []
    epoch_cpu_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        cpu_start = time.process_time()
        trainer.train(1)
        epoch_seconds.append(time.perf_counter() - start)
        epoch_cpu_seconds.append(time.process_time() - cpu_start)

    anonymous.stop()
    return {
        "load_s": load_seconds,
        "epoch_s": statistics.median(epoch_seconds),
        "epoch_cpu_s": statistics.median(epoch_cpu_seconds),
        "epochs": epochs,
        "baseline_mib": baseline_kib / 1024,
        "peak_above_baseline_mib": (memory_kib("VmHWM") - baseline_kib) / 1024,
        "anonymous_peak_above_baseline_mib": (anonymous.peak_kib - anonymous_baseline_kib) / 1024,
        "threads": trainer.num_threads,
    }


def run_child(kind: str, folder: Path, split_file: Path, epochs: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, str(folder), str(split_file), str(epochs)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"measurement of {folder} failed with status {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def epochs_for(n_samples: int) -> int:
    """Return the epochs to time: several for small sizes, whose epochs are short and noisy, one for large ones."""
    return 5 if n_samples <= 10**5 else 1


# ---------------------------------------------------------------------------
# Report


def print_rows(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'dataset':<11}{'samples':>10}{'data MiB':>10}{'file MiB':>10}{'load s':>9}{'s/epoch':>10}"
        f"{'CPU s/epoch':>13}{'CPU µs/sample':>15}{'peak MiB':>10}{'peak/data':>11}{'anon MiB':>10}{'anon/data':>11}"
    )
    for row in rows:
        print(
            f"{row['kind']:<11}{row['n_samples']:>10}{row['data_mib']:>10.1f}{row['file_mib']:>10.1f}"
            f"{row['load_s']:>9.2f}{row['epoch_s']:>10.3f}"
            f"{row['epoch_cpu_s']:>13.3f}{row['epoch_cpu_s'] / row['n_samples'] * 1e6:>15.2f}"
            f"{row['peak_above_baseline_mib']:>10.1f}{row['peak_above_baseline_mib'] / row['data_mib']:>11.2f}"
            f"{row['anonymous_peak_above_baseline_mib']:>10.1f}"
            f"{row['anonymous_peak_above_baseline_mib'] / row['data_mib']:>11.2f}"
        )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for kind, marker, color in (("regression", "o", "tab:blue"), ("images", "s", "tab:green")):
        selected = [row for row in rows if row["kind"] == kind]
        if not selected:
            continue
        sizes = [row["n_samples"] for row in selected]
        time_axis.loglog(
            sizes, [row["epoch_s"] for row in selected], marker=marker, color=color, label=f"{kind}: wall clock"
        )
        time_axis.loglog(
            sizes,
            [row["epoch_cpu_s"] for row in selected],
            marker=marker,
            color=color,
            fillstyle="none",
            linestyle="--",
            label=f"{kind}: CPU",
        )
        # A line through the first point with slope 1 is what linear growth looks like.
        first = selected[0]
        time_axis.loglog(
            sizes, [first["epoch_cpu_s"] * size / first["n_samples"] for size in sizes], linestyle=":", color="gray"
        )
        memory_axis.loglog(
            sizes,
            [row["peak_above_baseline_mib"] for row in selected],
            marker=marker,
            color=color,
            label=f"{kind}: peak resident (VmHWM)",
        )
        memory_axis.loglog(
            sizes,
            [row["anonymous_peak_above_baseline_mib"] for row in selected],
            marker=marker,
            color=color,
            fillstyle="none",
            linestyle="--",
            label=f"{kind}: peak anonymous",
        )
        memory_axis.loglog(
            sizes, [row["data_mib"] for row in selected], linestyle=":", color=color, label=f"{kind}: raw data"
        )
    time_axis.set(xlabel="samples", ylabel="seconds per epoch", title="Epoch time (gray: linear in samples)")
    memory_axis.set(xlabel="samples", ylabel="MiB", title="Peak memory from the start of loading")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=sorted(DEFAULT_SIZES), default=["regression", "images"])
    parser.add_argument("--sizes", nargs="+", type=int, help="sample counts for every kind (default: per kind)")
    parser.add_argument("--csv", type=Path, help="also write the results to this CSV file")
    parser.add_argument("--plot", type=Path, help="draw epoch time and peak memory against samples into this PNG")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "FOLDER", "SPLIT", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, folder, split_file, epochs = args.child
        # A run on the first 1000-sample dataset loads every module and initializes PyTorch.
        warm_up = Path(folder).with_name(f"{kind}-warm-up")
        measure(kind, warm_up, warm_up.with_suffix(".json"), 1)
        reset_peak_memory()
        print(json.dumps(measure(kind, Path(folder), Path(split_file), int(epochs))))
        return

    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as workdir:
        for kind in args.kinds:
            warm_up = Path(workdir) / f"{kind}-warm-up"
            (write_regression if kind == "regression" else write_images)(warm_up, 1000)
            write_split_file(warm_up.with_suffix(".json"), warm_up.name, 1000)
            for n_samples in args.sizes or DEFAULT_SIZES[kind]:
                folder = Path(workdir) / f"{kind}-{n_samples}"
                split_file = Path(workdir) / f"{kind}-{n_samples}.json"
                writer = write_regression if kind == "regression" else write_images
                data_bytes = writer(folder, n_samples)
                write_split_file(split_file, folder.name, n_samples)
                result = run_child(kind, folder, split_file, epochs_for(n_samples))
                file_bytes = sum(path.stat().st_size for path in folder.iterdir()) + split_file.stat().st_size
                rows.append(
                    {
                        "kind": kind,
                        "n_samples": n_samples,
                        "data_mib": data_bytes / 2**20,
                        "file_mib": file_bytes / 2**20,
                        **result,
                    }
                )
                print_rows(rows[-1:])
                sys.stdout.flush()

    print()
    print_rows(rows)
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
