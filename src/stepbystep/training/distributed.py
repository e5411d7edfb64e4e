"""Data-parallel training with ``DistributedDataParallel`` in processes that torchrun starts.

A training stage whose ``nproc_per_node`` param is above 1 re-executes itself as
``python -m torch.distributed.run --standalone --nproc_per_node=N STAGE ARGS``
(:func:`relaunch_with_torchrun`). A stage that torchrun started, for example on
several nodes with ``--nnodes`` and ``--master_addr``, trains in the process
group that torchrun set up and ignores its ``nproc_per_node`` param. Every
process loads the whole dataset and a replica of the model. gloo connects the
processes on the CPU, and NCCL on CUDA.

``batch_size`` stays the global batch, and each step trains on the same samples
as one process would:

- Rank 0 draws each epoch's batches from the single-process sampler, with the
  same random numbers, and broadcasts them. Rank ``r`` of ``N`` takes positions
  ``r, r + N, ...`` of every batch (:class:`ShardedBatchSampler`).
- Each rank's mean loss is rescaled (:class:`ShardedLoss`) so that DDP's average
  of the ranks' gradients is the gradient of the whole batch's mean loss, also
  when a batch does not split evenly.
- Epoch losses are averaged across ranks, so every rank records and checks
  the same values and early stopping stops all of them at the same epoch.
- Rank 0 alone writes checkpoints, outputs and MLflow records.

So without random transforms or dropout, N processes train the weights of one
process up to floating-point rounding. Random transforms and dropout draw from
each rank's own generators, which ranks above 0 seed from their rank.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from stepbystep.errors import UserError
from stepbystep.training.feeding import BatchedLoader
from stepbystep.training.steps import LossFn

if TYPE_CHECKING:
    from stepbystep.training.trainer import Trainer

logger = logging.getLogger(__name__)

# torchrun sets these for every worker process.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the process group: its rank, the group's size and the device it trains on."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None
    device: torch.device | None = None

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, outputs and tracking records."""
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()


# --- launching ---------------------------------------------------------------


def launched_by_torchrun() -> bool:
    """Return whether torchrun (or another launcher that sets ``RANK`` and ``WORLD_SIZE``) started this process."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_command(nproc_per_node: int, argv: Sequence[str]) -> list[str]:
    """Return the torchrun command that runs ``argv`` (script and arguments) in ``nproc_per_node`` local processes."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        *argv,
    ]


def relaunch_with_torchrun(nproc_per_node: int, argv: Sequence[str] | None = None) -> None:
    """Replace this process with torchrun running ``argv`` (default ``sys.argv``) in ``nproc_per_node`` processes.

    Returns without doing anything when ``nproc_per_node`` is 1 or when torchrun
    started this process. The process keeps its id, so a signal that DVC sends
    to the stage reaches torchrun, which passes it on to its workers.
    """
    if launched_by_torchrun():
        world_size = int(os.environ["WORLD_SIZE"])
        if world_size != nproc_per_node:
            logger.info(
                "training in the %d processes that torchrun started; nproc_per_node=%d applies only "
                "to stages that start without torchrun",
                world_size,
                nproc_per_node,
            )
        return
    if nproc_per_node <= 1:
        return

    command = torchrun_command(nproc_per_node, list(sys.argv if argv is None else argv))
    env = dict(os.environ)
    # --standalone keeps every process on this machine, so gloo's connections
    # between them can stay on the loopback interface (Linux names it "lo").
    if "GLOO_SOCKET_IFNAME" not in env and "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    logger.info("starting %d training processes: %s", nproc_per_node, " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)


@contextlib.contextmanager
def process_group() -> Iterator[DistributedContext]:
    """Join the process group that torchrun set up and yield this process's context.

    Outside torchrun, or with a single process, it yields ``SINGLE_PROCESS`` and
    touches nothing. Otherwise it initializes the default group with the NCCL
    backend on CUDA (one device per local rank) or gloo on the CPU. Ranks above
    0 log only warnings and errors. When the block succeeds, every rank waits
    at a barrier, so that no rank leaves while rank 0 still writes outputs.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        yield SINGLE_PROCESS
        return

    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # NOTE: the tests run gloo on the CPU only. The NCCL branch follows torch's
    # documented set-up but has not run here, for lack of a machine with 2 GPUs.
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"process {rank} has local rank {local_rank}, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s). Fix: set nproc_per_node to at most "
                "the number of GPUs per machine"
            )
        torch.cuda.set_device(local_rank)
        backend, device = "nccl", torch.device("cuda", local_rank)
    else:
        backend, device = "gloo", torch.device("cpu")

    dist.init_process_group(backend=backend)
    context = DistributedContext(rank, local_rank, world_size, backend, device)
    if rank > 0:
        logging.getLogger("stepbystep").setLevel(logging.WARNING)
    logger.info("process group of %d processes with the %s backend", world_size, backend)
    try:
        yield context
        dist.barrier()
    finally:
        dist.destroy_process_group()


# --- collectives -------------------------------------------------------------


def _broadcast(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Return rank 0's ``tensor`` on every rank, on the CPU. NCCL needs the data on the rank's device."""
    on_device = tensor.to(context.device)
    dist.broadcast(on_device, src=0)
    return on_device.cpu()


def _sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    on_device = tensor.to(context.device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return on_device


def average_across_ranks(value: float, context: DistributedContext) -> float:
    """Return the mean of ``value`` over all ranks, computed in float64."""
    total = _sum(torch.tensor([value], dtype=torch.float64), context)
    return float(total.item()) / context.world_size


# --- sampling ----------------------------------------------------------------


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's share of every batch that ``batch_sampler`` draws: positions ``rank, rank + N, ...``.

    Rank 0 iterates ``batch_sampler`` and broadcasts the epoch's batches, so the
    random numbers are drawn once, as a single process draws them, and the
    ranks cannot disagree even when their generators drift apart. Every rank
    yields ``len(batch_sampler)`` batches, some of them possibly empty, because
    each DDP step needs every rank. ``sampler`` and ``batch_size`` are those of
    ``batch_sampler``, so seeding and checkpoints find the sampler's generator
    where they find it for one process.
    """

    def __init__(self, batch_sampler: Sampler[list[int]], context: DistributedContext) -> None:
        self.batch_sampler = batch_sampler
        self.sampler = getattr(batch_sampler, "sampler", None)
        self.batch_size = getattr(batch_sampler, "batch_size", None)
        self.context = context

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        rank, world_size = self.context.rank, self.context.world_size
        for batch in self._global_batches():
            yield batch[rank::world_size].tolist()

    def _global_batches(self) -> list[torch.Tensor]:
        n_batches = len(self.batch_sampler)
        if self.context.rank == 0:
            batches = [torch.as_tensor(batch, dtype=torch.int64) for batch in self.batch_sampler]
            if len(batches) != n_batches:
                raise RuntimeError(f"the batch sampler yielded {len(batches)} batches but its length is {n_batches}")
            sizes = torch.tensor([len(batch) for batch in batches], dtype=torch.int64)
            order = torch.cat(batches) if batches else torch.empty(0, dtype=torch.int64)
        else:
            sizes = torch.empty(n_batches, dtype=torch.int64)
        sizes = _broadcast(sizes, self.context)
        if self.context.rank != 0:
            order = torch.empty(int(sizes.sum()), dtype=torch.int64)
        order = _broadcast(order, self.context)
        return list(torch.split(order, sizes.tolist()))


def shard_loader(loader: Any, context: DistributedContext) -> BatchedLoader:
    """Return a loader of this rank's share of every batch of ``loader`` (a ``BatchedLoader`` or ``DataLoader``)."""
    return BatchedLoader(
        loader.dataset,
        batch_sampler=ShardedBatchSampler(loader.batch_sampler, context),
        generator=loader.generator,
    )


# --- loss --------------------------------------------------------------------


class ShardedLoss:
    """``loss_fn`` on one rank's share of a batch, scaled so that DDP's gradient average is the whole batch's.

    ``loss_fn`` must average over the samples (``reduction="mean"``). A rank
    with ``n`` of the batch's ``total`` samples returns
    ``loss_fn(yhat, y) * n * N / total``. DDP divides the sum of the ranks'
    gradients by ``N``, which leaves the gradient of the sum of all sample
    losses divided by ``total``, and the mean of the returned values over the
    ranks is the batch's mean loss. A rank without samples returns a zero that
    depends on every parameter, so DDP's gradient all-reduce still includes it.
    Each call sums the ranks' sample counts with one all-reduce.
    """

    def __init__(self, loss_fn: LossFn, context: DistributedContext) -> None:
        self.loss_fn = loss_fn
        self.context = context

    def __call__(self, yhat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        count = len(y)
        total = int(_sum(torch.tensor([count], dtype=torch.int64), self.context).item())
        if count == 0:
            return yhat.sum() * 0.0
        return self.loss_fn(yhat, y) * (count * self.context.world_size / total)


# --- the trainer -------------------------------------------------------------


@contextlib.contextmanager
def shared_file(path: Path, context: DistributedContext) -> Iterator[Path | None]:
    """Yield a readable copy of rank 0's file ``path`` on every rank, or ``None`` when rank 0 has no such file.

    Ranks above 0 receive the bytes from rank 0 and read them from a temporary
    file, deleted when the block ends, so nodes need no shared filesystem.
    """
    if not context.is_distributed:
        yield path if path.is_file() else None
        return

    data = path.read_bytes() if context.is_main and path.is_file() else None
    size = _broadcast(torch.tensor([-1 if data is None else len(data)], dtype=torch.int64), context)
    size = int(size.item())
    if size < 0:
        yield None
        return
    if context.is_main:
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if size else torch.empty(0, dtype=torch.uint8)
    else:
        buffer = torch.empty(size, dtype=torch.uint8)
    if size:
        buffer = _broadcast(buffer, context)
    if context.is_main:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="stepbystep-rank-") as folder:
        copy = Path(folder) / path.name
        copy.write_bytes(buffer.numpy().tobytes())
        yield copy


def _seed_rank_generators(seed: int, rank: int, epoch: int) -> None:
    # Gives each rank its own stream for random transforms and dropout. The
    # checkpoint contains rank 0's states only, so the other ranks restart their
    # streams from the epoch they resume at.
    rank_seed = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    torch.manual_seed(rank_seed)
    np.random.seed(rank_seed)
    random.seed(rank_seed)


def prepare_trainer(trainer: Trainer, context: DistributedContext, seed: int) -> None:
    """Make ``trainer`` train this rank's share with ``DistributedDataParallel``; a single process is left as it is.

    Call it after the trainer is seeded and any checkpoint is loaded, with
    loaders from :func:`shard_loader`. ``seed`` is the training seed, from
    which ranks above 0 derive their own generators' seeds.
    """
    if not context.is_distributed:
        return
    if trainer.metrics:
        # Metric functions see only this rank's outputs, which would make them differ from one process's.
        raise ValueError("validation metrics are not supported with several processes; remove them from the trainer")
    from torch.nn.parallel import DistributedDataParallel

    trainer.loss_fn = ShardedLoss(trainer.loss_fn, context)
    trainer.set_loss_reduction(lambda value: average_across_ranks(value, context))
    device_ids = [context.local_rank] if context.device is not None and context.device.type == "cuda" else None
    # wrap_model rebuilds the step functions, which then use the sharded loss too.
    trainer.wrap_model(lambda model: DistributedDataParallel(model, device_ids=device_ids))
    if context.rank > 0:
        _seed_rank_generators(seed, context.rank, trainer.total_epochs)
