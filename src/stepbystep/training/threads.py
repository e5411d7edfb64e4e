"""Choose how many intra-op CPU threads training uses, so that small models run on one.

PyTorch starts with one intra-op thread per core. A training step of a model
like the chapter 4 classifiers (under 200 parameters, batches of 16) is a few
dozen operations on tensors of a few hundred elements. Handing such an
operation to the thread pool costs more than computing it, and when another
process occupies a core every parallel region also waits for a descheduled
worker. ``benchmarks/bench_threads.py`` times steps of growing size with one
thread and with the default; BENCHMARKS.md lists its results.
"""

from __future__ import annotations

import os

import torch
from torch import nn

# Batch size times parameter count below which one thread is used. On an idle
# 2-core machine (benchmarks/bench_threads.py, BENCHMARKS.md) one thread was as
# fast as two up to 1.5e6 and two were 1.5x faster from 1.9e7. When another
# process occupies the second core, two threads were slower at every size.
SMALL_STEP_WORK = 2**20

# Variables through which users choose the thread count themselves.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def step_work(model: nn.Module, batch_size: int) -> int:
    """Return batch size times the number of parameters: about the multiply-adds of a dense forward pass."""
    return batch_size * sum(parameter.numel() for parameter in model.parameters())


def choose_num_threads(model: nn.Module, batch_size: int) -> int:
    """Return 1 for a step smaller than ``SMALL_STEP_WORK``, else the current ``torch.get_num_threads()``.

    A thread count set through ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` is
    kept whatever the model's size.
    """
    if any(os.environ.get(name) for name in _THREAD_VARIABLES):
        return torch.get_num_threads()
    if step_work(model, batch_size) < SMALL_STEP_WORK:
        return 1
    return torch.get_num_threads()
