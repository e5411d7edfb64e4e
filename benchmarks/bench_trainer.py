"""Time one training epoch of the project's Trainer against a hand-written loop, the book's loop and Lightning.

All runners train the chapter 4 deep ReLU model (Flatten, Linear(25, 5), ReLU,
Linear(5, 3), ReLU, Linear(3, 1), Sigmoid, no biases) with BCELoss and SGD
(lr 0.1). They share the random 5x5 images with random binary labels, the
process and the number of intra-op threads:

1. hand-written: one ``randperm`` per epoch, then each batch is a slice of it
   that indexes the tensors. This is the floor for eager PyTorch.
2. book: ``DataLoader(TensorDataset(x, y), shuffle=True)`` and the loop of
   *Deep Learning with PyTorch Step-by-Step*.
3. Trainer: ``stepbystep.training.Trainer`` fed by ``BatchedLoader``, the
   pipeline's default data feeding.
4. Trainer + gradient statistics: the same with ``track_gradients=True``, as the
   pipeline's training stages run it.
5. Lightning: ``lightning.Trainer(barebones=True)`` over the same ``DataLoader``
   as the book, when the ``bench`` extra (``lightning``) is installed.

The Trainer runs and Lightning visit the samples in the hand-written loop's
order, because their samplers own a generator seeded like the loop's. Their
epoch losses and final weights must therefore equal the loop's; the script
checks that before timing and exits with status 1 otherwise. The book's loop
shuffles with a generator of its own, so only its time is compared. Only
training is timed, without a validation pass: the median of ``--repeats``
epochs, each on a fresh model, with the runners interleaved.

Usage::

    .venv/bin/python benchmarks/bench_trainer.py                 # both cases, 1 thread, 7 repeats
    .venv/bin/python benchmarks/bench_trainer.py --threads 0     # PyTorch's default thread count
    .venv/bin/python benchmarks/bench_trainer.py --cases 20000:16 --repeats 15 --csv out.csv
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from stepbystep.training import BatchedLoader, Trainer

MODEL_SEED = 17
ORDER_SEED = 42
DEFAULT_CASES = ["20000:16", "200000:256"]


@dataclass
class Epoch:
    """One timed epoch: its seconds, its loss (the mean of the mini-batch losses) and the trained model."""

    seconds: float
    loss: float
    model: nn.Module


def make_model() -> nn.Sequential:
    torch.manual_seed(MODEL_SEED)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(25, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 1, bias=False),
        nn.Sigmoid(),
    )


def make_data(n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(n_samples, 1, 5, 5, generator=generator)
    labels = torch.randint(0, 2, (n_samples, 1), generator=generator).float()
    return images, labels


def seeded_sampler(dataset: TensorDataset) -> RandomSampler:
    """Return a sampler whose first epoch is ``torch.randperm(n)`` of a generator seeded with ``ORDER_SEED``."""
    return RandomSampler(dataset, generator=torch.Generator().manual_seed(ORDER_SEED))


# ---------------------------------------------------------------------------
# Runners


def hand_written_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Epoch:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCELoss()
    order_generator = torch.Generator().manual_seed(ORDER_SEED)

    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(images), generator=order_generator)
    mini_batch_losses = []
    for first in range(0, len(images), batch_size):
        indices = order[first : first + batch_size]
        loss = loss_fn(model(images[indices]), labels[indices])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mini_batch_losses.append(loss.item())
    epoch_loss = float(np.mean(mini_batch_losses))
    return Epoch(time.perf_counter() - start, epoch_loss, model)


def book_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Epoch:
    """Train one epoch as the book does: a DataLoader that shuffles and a step function."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.BCELoss()
    train_loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)

    def train_step_fn(x: torch.Tensor, y: torch.Tensor) -> float:
        model.train()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    start = time.perf_counter()
    mini_batch_losses = []
    for x_batch, y_batch in train_loader:
        mini_batch_losses.append(train_step_fn(x_batch, y_batch))
    epoch_loss = float(np.mean(mini_batch_losses))
    return Epoch(time.perf_counter() - start, epoch_loss, model)


def trainer_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int, track_gradients: bool) -> Epoch:
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = TensorDataset(images, labels)
    loader = BatchedLoader(dataset, batch_size=batch_size, sampler=seeded_sampler(dataset))
    trainer = Trainer(
        model,
        nn.BCELoss(),
        optimizer,
        train_loader=loader,
        device="cpu",
        track_gradients=track_gradients,
        progress=False,
    )

    start = time.perf_counter()
    trainer.train(1)
    return Epoch(time.perf_counter() - start, trainer.losses[-1], model)


def make_lightning_runner() -> Callable[[torch.Tensor, torch.Tensor, int], Epoch]:
    import lightning as L

    # Lightning logs its set-up (barebones notice, accelerators, tips) at INFO on every fit.
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("lightning"):
            logging.getLogger(name).setLevel(logging.WARNING)

    class DeepReLU(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = make_model()
            self.loss_fn = nn.BCELoss()
            self.mini_batch_losses: list[float] = []

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
            x, y = batch
            loss = self.loss_fn(self.model(x), y)
            # The other loops read every loss too, which costs the same synchronization.
            self.mini_batch_losses.append(loss.item())
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.model.parameters(), lr=0.1)

    class EpochTimer(L.Callback):
        """Time the epoch itself, without Lightning's set-up and tear-down around ``fit``."""

        def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.start = time.perf_counter()

        def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            self.seconds = time.perf_counter() - self.start

    def lightning_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> Epoch:
        module = DeepReLU()
        dataset = TensorDataset(images, labels)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=seeded_sampler(dataset))
        timer = EpochTimer()
        trainer = L.Trainer(
            barebones=True,
            max_epochs=1,
            accelerator="cpu",
            devices=1,
            callbacks=[timer],
            # The sampler given here is used as it is, not replaced by a distributed one.
            use_distributed_sampler=False,
        )
        trainer.fit(module, loader)
        return Epoch(timer.seconds, float(np.mean(module.mini_batch_losses)), module.model)

    return lightning_epoch


# ---------------------------------------------------------------------------
# Measurement


def same_result(reference: Epoch, other: Epoch) -> bool:
    """Return whether ``other`` has the reference's epoch loss and weights, bit for bit."""
    weights_equal = all(
        torch.equal(a, b) for a, b in zip(reference.model.parameters(), other.model.parameters(), strict=True)
    )
    return other.loss == reference.loss and weights_equal


def run_case(
    n_samples: int, batch_size: int, repeats: int, with_lightning: bool
) -> list[dict[str, object]]:
    images, labels = make_data(n_samples)
    runners: dict[str, Callable[[], Epoch]] = {
        "hand-written": lambda: hand_written_epoch(images, labels, batch_size),
        "book (DataLoader)": lambda: book_epoch(images, labels, batch_size),
        "Trainer": lambda: trainer_epoch(images, labels, batch_size, track_gradients=False),
        "Trainer + gradient stats": lambda: trainer_epoch(images, labels, batch_size, track_gradients=True),
    }
    # Runners that must reproduce the hand-written loop's result exactly.
    checked = {"Trainer", "Trainer + gradient stats"}
    if with_lightning:
        runners["Lightning barebones"] = (lambda epoch: lambda: epoch(images, labels, batch_size))(
            make_lightning_runner()
        )
        checked.add("Lightning barebones")

    # One untimed run each warms up allocators and lazy imports and checks the results.
    reference = runners["hand-written"]()
    results = {label: runner() for label, runner in runners.items() if label != "hand-written"}
    for label in sorted(checked):
        if not same_result(reference, results[label]):
            raise SystemExit(
                f"{label}: epoch loss {results[label].loss!r} or weights differ from the hand-written loop "
                f"({reference.loss!r}), so the runners do not train the same thing"
            )

    # Interleaving the runners spreads slow phases of the machine over all of them.
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(repeats):
        for label, runner in runners.items():
            seconds[label].append(runner().seconds)

    floor = statistics.median(seconds["hand-written"])
    rows = []
    for label, values in seconds.items():
        median = statistics.median(values)
        rows.append(
            {
                "n_samples": n_samples,
                "batch_size": batch_size,
                "runner": label,
                "median_s": median,
                "min_s": min(values),
                "ratio": median / floor,
                "same_result": "yes" if label == "hand-written" or label in checked else "not checked",
            }
        )
    return rows


def print_case(rows: list[dict[str, object]], repeats: int) -> None:
    first = rows[0]
    print(f"\n{first['n_samples']} samples, batch size {first['batch_size']}, median of {repeats} epochs")
    print(f"{'runner':<28}{'s/epoch':>10}{'min s':>10}{'ratio':>8}  same loss and weights")
    for row in rows:
        print(
            f"{row['runner']:<28}{row['median_s']:>10.4f}{row['min_s']:>10.4f}{row['ratio']:>8.3f}  {row['same_result']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases", nargs="+", default=DEFAULT_CASES, help="SAMPLES:BATCH_SIZE pairs (default: 20000:16 200000:256)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per runner and case (default: 7)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for every runner; 0 keeps PyTorch's default (default: 1, what the pipeline uses for this model)",
    )
    parser.add_argument("--no-lightning", action="store_true", help="skip Lightning even when it is installed")
    parser.add_argument("--csv", type=Path, help="also write the results to this CSV file")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with_lightning = not args.no_lightning and importlib.util.find_spec("lightning") is not None
    if with_lightning:
        warnings.filterwarnings("ignore", module="lightning")
    elif not args.no_lightning:
        print("lightning is not installed, so it is skipped; install the bench extra: pip install -e '.[bench]'")

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )

    all_rows = []
    for case in args.cases:
        n_samples, batch_size = (int(part) for part in case.split(":"))
        rows = run_case(n_samples, batch_size, args.repeats, with_lightning)
        print_case(rows, args.repeats)
        all_rows.extend(rows)

    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(all_rows[0]))
            writer.writeheader()
            writer.writerows(all_rows)


if __name__ == "__main__":
    main()
