"""Time one training epoch of ``Trainer`` against a hand-written loop on the deep ReLU model.

The model is Flatten, Linear(25, 5), ReLU, Linear(5, 3), ReLU, Linear(3, 1),
Sigmoid (no biases), trained with BCELoss and SGD (lr 0.1) on random 5x5 images
with random binary labels. The hand-written loop is the floor: one ``randperm``
per epoch, then each batch is a slice of it used to index the tensors.

Both sides start from the same weights and visit the samples in the same order,
because the trainer's ``RandomSampler`` owns a generator seeded like the loop's.
Their epoch losses and final weights must therefore be identical, and the script
checks that before timing. Only training is timed, without a validation pass.

Usage::

    .venv/bin/python benchmarks/bench_trainer.py             # both cases, 7 repeats
    .venv/bin/python benchmarks/bench_trainer.py --repeats 15 --cases 20000:16
    .venv/bin/python benchmarks/bench_trainer.py --dataloader  # also time a plain DataLoader
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from stepbystep.training import BatchedLoader, Trainer

MODEL_SEED = 17
ORDER_SEED = 42


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


def hand_written_epoch(images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float, nn.Module]:
    """Train one epoch with a minimal loop; return seconds, epoch loss and the model."""
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
        x_batch = images[indices]
        y_batch = labels[indices]
        loss = loss_fn(model(x_batch), y_batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mini_batch_losses.append(loss.item())
    epoch_loss = float(np.mean(mini_batch_losses))
    seconds = time.perf_counter() - start
    return seconds, epoch_loss, model


def trainer_epoch(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, loader_class: type
) -> tuple[float, float, nn.Module]:
    """Train one epoch with ``Trainer``; return seconds, epoch loss and the model."""
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    dataset = TensorDataset(images, labels)
    sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(ORDER_SEED))
    loader = loader_class(dataset, batch_size=batch_size, sampler=sampler)
    trainer = Trainer(model, nn.BCELoss(), optimizer, train_loader=loader, device="cpu", progress=False)

    start = time.perf_counter()
    trainer.train(1)
    seconds = time.perf_counter() - start
    return seconds, trainer.losses[-1], model


def check_identical(reference: tuple[float, float, nn.Module], other: tuple[float, float, nn.Module], label: str) -> None:
    _, reference_loss, reference_model = reference
    _, loss, model = other
    same_weights = all(
        torch.equal(a, b) for a, b in zip(reference_model.parameters(), model.parameters(), strict=True)
    )
    if loss != reference_loss or not same_weights:
        raise SystemExit(f"{label}: loss {loss!r} or weights differ from the hand-written loop ({reference_loss!r})")


def run_case(n_samples: int, batch_size: int, repeats: int, with_dataloader: bool) -> None:
    images, labels = make_data(n_samples)
    runners = {
        "hand-written": lambda: hand_written_epoch(images, labels, batch_size),
        "Trainer+BatchedLoader": lambda: trainer_epoch(images, labels, batch_size, BatchedLoader),
    }
    if with_dataloader:
        runners["Trainer+DataLoader"] = lambda: trainer_epoch(images, labels, batch_size, DataLoader)

    # One untimed run each warms up allocators and checks that the results agree.
    reference = runners["hand-written"]()
    for label, runner in runners.items():
        check_identical(reference, runner(), label)

    # Interleaving the runners spreads slow phases of the machine over all of them.
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(repeats):
        for label, runner in runners.items():
            seconds[label].append(runner()[0])

    floor = statistics.median(seconds["hand-written"])
    print(f"\n{n_samples} samples, batch size {batch_size}, {repeats} repeats, {torch.get_num_threads()} threads")
    print(f"{'runner':<24}{'median s':>10}{'min s':>10}{'median ratio':>14}{'min ratio':>11}")
    floor_min = min(seconds["hand-written"])
    for label, values in seconds.items():
        median = statistics.median(values)
        minimum = min(values)
        print(f"{label:<24}{median:>10.4f}{minimum:>10.4f}{median / floor:>14.3f}{minimum / floor_min:>11.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["20000:16", "200000:256"],
        help="SAMPLES:BATCH_SIZE pairs to time (default: 20000:16 200000:256)",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed epochs per runner and case (default: 7)")
    parser.add_argument("--dataloader", action="store_true", help="also time the Trainer fed by a plain DataLoader")
    args = parser.parse_args()

    for case in args.cases:
        n_samples, batch_size = (int(part) for part in case.split(":"))
        run_case(n_samples, batch_size, args.repeats, args.dataloader)


if __name__ == "__main__":
    main()
