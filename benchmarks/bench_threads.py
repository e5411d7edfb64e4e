"""Time one training step of multilayer perceptrons of growing size with 1 intra-op thread and with PyTorch's default.

The work of a step is measured as batch size times parameter count, about
the multiply-adds of the forward pass of a dense network. The script prints,
for each size, the median seconds per step of both settings and their ratio,
so the size below which one thread is faster can be read off. The training
workflow uses one thread below ``SMALL_STEP_WORK`` of
``stepbystep.training.threads``.

Usage::

    .venv/bin/python benchmarks/bench_threads.py
    .venv/bin/python benchmarks/bench_threads.py --repeats 9 --csv benchmarks/results/threads.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from stepbystep.training.threads import SMALL_STEP_WORK

# (batch size, hidden width): the first is the chapter 4 model's size class.
SIZES = [(16, 5), (16, 32), (64, 64), (256, 64), (256, 256), (256, 512), (1024, 512), (1024, 1024)]
N_INPUTS = 25


def make_model(width: int) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(N_INPUTS, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))


def seconds_per_step(model: nn.Module, batch_size: int, n_threads: int, min_seconds: float) -> float:
    """Run training steps for at least ``min_seconds`` with ``n_threads`` and return the mean seconds per step."""
    torch.set_num_threads(n_threads)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.MSELoss()
    x = torch.rand(batch_size, N_INPUTS)
    y = torch.rand(batch_size, 1)

    def step() -> None:
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()

    for _ in range(10):
        step()
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        step()
        steps += 1
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="measurements per size and setting (default: 5)")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="minimum duration of one measurement (default: 0.2)")
    parser.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    load = os.getloadavg()
    print(f"default intra-op threads: {default_threads}, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"SMALL_STEP_WORK = {SMALL_STEP_WORK}")
    print(f"{'batch':>6}{'width':>7}{'work':>12}{'1 thread µs':>14}{f'{default_threads} threads µs':>15}{'ratio':>8}")

    rows = []
    for batch_size, width in SIZES:
        model = make_model(width)
        work = batch_size * sum(parameter.numel() for parameter in model.parameters())
        times: dict[int, list[float]] = {1: [], default_threads: []}
        # Alternating the settings spreads slow phases of the machine over both.
        for _ in range(args.repeats):
            for n_threads in times:
                times[n_threads].append(seconds_per_step(model, batch_size, n_threads, args.min_seconds))
        single = statistics.median(times[1])
        multi = statistics.median(times[default_threads])
        rows.append({"batch_size": batch_size, "width": width, "work": work, "one_thread_s": single, "default_threads_s": multi})
        print(f"{batch_size:>6}{width:>7}{work:>12}{single * 1e6:>14.1f}{multi * 1e6:>15.1f}{multi / single:>8.2f}")
    torch.set_num_threads(default_threads)

    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
