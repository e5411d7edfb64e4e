"""Feed mini-batches of in-memory tensors with one indexing operation per batch.

A ``DataLoader`` over a ``TensorDataset`` fetches every sample on its own and
stacks them again, which costs more than the forward and backward passes of a
small model. ``BatchedLoader`` keeps the ``DataLoader`` interface and its samplers
but gathers each batch in one go with a tensor of indices.

It reproduces a single-process ``DataLoader`` (``num_workers=0``, default
``collate_fn``) exactly. It yields the same batches in the same order and makes
the same draws from every random number generator, including the base seed that
a ``DataLoader`` draws for worker processes each time it starts an epoch. Seeded
results therefore do not depend on which of the two loaders feeds the trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
    TensorDataset,
)

Batch = tuple[torch.Tensor, ...]
BatchFetcher = Callable[[torch.Tensor], Batch]


class RandomHorizontalFlip:
    """Flip an image tensor along its last dimension with probability ``p``, one draw per image.

    Each image takes one ``torch.rand(1)`` from the global generator and is
    flipped when the draw is below ``p``, which is what
    ``torchvision.transforms.v2.RandomHorizontalFlip`` (torchvision 0.29) does
    with a plain tensor, so seeded runs give the same batches with either.
    ``apply_batch`` flips a stack of images with one ``torch.rand(n)``, which
    on the CPU generator of torch 2.14 yields the numbers of ``n`` calls of
    ``torch.rand(1)``. Using this class spares importing torchvision (1-2 s).
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(1) >= self.p:
            return image
        return image.flip(-1)

    def apply_batch(self, images: torch.Tensor) -> torch.Tensor:
        """Return ``images`` (a stack along dimension 0) as calling the flip on each image in order would."""
        flip = torch.rand(len(images)) < self.p
        flip = flip.to(images.device).view(-1, *([1] * (images.dim() - 1)))
        return torch.where(flip, images.flip(-1), images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class TransformedTensorDataset(Dataset):
    """Features and targets held in memory, with optional transforms applied to the features.

    ``transform`` runs on one feature sample at a time, in index order, in both
    ``__getitem__`` and ``get_batch``. Random transforms such as
    ``RandomHorizontalFlip`` therefore draw from the global RNG exactly as a
    ``DataLoader`` fetching sample by sample would. A transform with an
    ``apply_batch`` method, such as this module's ``RandomHorizontalFlip``, gets
    the whole batch in ``get_batch`` instead and must return what the calls on
    each sample would. ``batch_transform`` runs once on a
    whole batch of features (on a batch of one in ``__getitem__``). Use it only for
    deterministic elementwise transforms such as ``Normalize``, whose result does not
    depend on how samples are grouped.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
        self.x = x
        self.y = y
        self.transform = transform
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> Batch:
        x = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        if self.batch_transform is not None:
            x = self.batch_transform(x.unsqueeze(0)).squeeze(0)
        return x, self.y[index]

    def get_batch(self, indices: torch.Tensor) -> Batch:
        """Return the features and targets at ``indices`` (a 1-D int64 tensor), stacked."""
        x = self.x[indices]
        if self.transform is not None:
            apply_batch = getattr(self.transform, "apply_batch", None)
            if apply_batch is not None:
                x = apply_batch(x)
            else:
                x = torch.stack([self.transform(sample) for sample in x])
        if self.batch_transform is not None:
            x = self.batch_transform(x)
        return x, self.y[indices]


def make_batch_fetcher(dataset: Dataset) -> BatchFetcher:
    """Return a function that gathers the samples at a 1-D tensor of indices as one batch.

    Supported datasets are ``TensorDataset``, any dataset with a
    ``get_batch(indices)`` method (such as ``TransformedTensorDataset``), and
    ``Subset`` of a supported dataset, as ``random_split`` returns. Raises
    ``TypeError`` for anything else.
    """
    if isinstance(dataset, TensorDataset):
        tensors = dataset.tensors
        if len(tensors) == 2:
            # Two tensors (features, targets) is the common case; unrolling it
            # saves a generator expression on every batch.
            x, y = tensors
            return lambda indices: (x[indices], y[indices])
        return lambda indices: tuple(tensor[indices] for tensor in tensors)

    if isinstance(dataset, Subset):
        fetch_from_parent = make_batch_fetcher(dataset.dataset)
        parent_indices = torch.as_tensor(dataset.indices, dtype=torch.int64)
        return lambda indices: fetch_from_parent(parent_indices[indices])

    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        return get_batch

    raise TypeError(
        f"BatchedLoader cannot index a {type(dataset).__name__} in batches: use a "
        "TensorDataset, a Subset of one, or a dataset with a get_batch(indices) method, "
        "or feed this dataset through a DataLoader"
    )


class BatchedLoader:
    """An iterable of mini-batches with ``DataLoader``'s arguments and sampling, fetched in one go.

    The arguments mean what they mean for ``DataLoader``: ``shuffle`` builds a
    ``RandomSampler(dataset, generator=generator)``, otherwise a
    ``SequentialSampler``; ``sampler`` (for example ``WeightedRandomSampler``) and
    ``batch_sampler`` are used as given. ``batch_size=None`` (no automatic batching)
    is not supported. Each batch is a tuple of tensors, such as ``(x, y)``.

    ``sampler``, ``batch_sampler``, ``generator``, ``dataset``, ``batch_size`` and
    ``drop_last`` are public attributes, like ``DataLoader``'s, so seeding and
    checkpoint code finds the generators in the same places. A ``DistributedSampler``
    passed as ``sampler`` works unchanged.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        shuffle: bool = False,
        sampler: Sampler[int] | None = None,
        batch_sampler: Sampler[list[int]] | None = None,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError(
                    "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler and drop_last"
                )
            batch_size = getattr(batch_sampler, "batch_size", None)
        elif batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")

        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if sampler is None and batch_sampler is None:
            if shuffle:
                sampler = RandomSampler(dataset, generator=generator)
            else:
                sampler = SequentialSampler(dataset)
        if batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        else:
            # The sampler inside a given batch sampler, so that seeding and
            # DistributedSampler.set_epoch reach it through loader.sampler.
            sampler = getattr(batch_sampler, "sampler", None)

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.generator = generator
        self._fetch = make_batch_fetcher(dataset)

    @classmethod
    def from_loader(cls, loader: DataLoader) -> BatchedLoader:
        """Build a ``BatchedLoader`` that yields what ``loader`` yields, sharing its sampler and generator.

        Raises ``ValueError`` for loaders whose batches this class cannot reproduce:
        worker processes, a custom ``collate_fn`` or ``batch_size=None``.
        """
        if loader.num_workers != 0:
            raise ValueError(f"cannot batch a DataLoader with num_workers={loader.num_workers}; use num_workers=0")
        if loader.batch_sampler is None:
            raise ValueError("cannot batch a DataLoader with batch_size=None (no automatic batching)")
        if loader.collate_fn is not torch.utils.data.default_collate:
            raise ValueError("cannot batch a DataLoader with a custom collate_fn")
        return cls(loader.dataset, batch_sampler=loader.batch_sampler, generator=loader.generator)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[Batch]:
        batch_sampler = self.batch_sampler
        sampler = getattr(batch_sampler, "sampler", None)
        fast_order = type(batch_sampler) is BatchSampler and type(sampler) in (RandomSampler, SequentialSampler)

        # DataLoader creates the batch sampler's iterator first, then draws a
        # base seed for worker processes from its generator (the global one when
        # it has none), on every epoch and even without workers. Drawing it here
        # too keeps every later random number identical to a DataLoader's.
        batch_iterator = None if fast_order else iter(batch_sampler)
        torch.empty((), dtype=torch.int64).random_(generator=self.generator)

        if fast_order:
            return self._iter_ordered(_epoch_order(sampler), batch_sampler.batch_size, batch_sampler.drop_last)
        return self._iter_sampled(batch_iterator)

    def _iter_ordered(self, order: torch.Tensor, batch_size: int, drop_last: bool) -> Iterator[Batch]:
        # Slicing one index tensor avoids turning every index into a Python int
        # and back, which dominates the cost for large batches.
        fetch = self._fetch
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            yield fetch(order[start : start + batch_size])

    def _iter_sampled(self, batch_iterator: Iterator[list[int]]) -> Iterator[Batch]:
        fetch = self._fetch
        for indices in batch_iterator:
            yield fetch(torch.as_tensor(indices, dtype=torch.int64))


def _epoch_order(sampler: RandomSampler | SequentialSampler) -> torch.Tensor:
    """Return one epoch of ``sampler``'s indices as an int64 tensor, drawn as its ``__iter__`` draws them.

    For ``RandomSampler`` this mirrors ``RandomSampler.__iter__`` of torch 2.14 call
    for call. It draws a seed from the global generator when the sampler has no
    generator of its own. Then it calls ``randperm`` once per full pass over the
    data, plus once more for the remainder, even when the remainder is empty. The
    feeding tests compare the result with ``DataLoader``, so a change in torch
    shows up there.
    """
    n = len(sampler.data_source)
    if isinstance(sampler, SequentialSampler):
        return torch.arange(n)

    if sampler.replacement:
        generator = _sampler_generator(sampler)
        return _with_replacement_order(sampler, n, generator)

    generator = _sampler_generator(sampler)
    num_samples = sampler.num_samples
    permutations = [torch.randperm(n, generator=generator) for _ in range(num_samples // n)]
    remainder = torch.randperm(n, generator=generator)[: num_samples % n]
    if not permutations:
        return remainder
    if len(remainder) == 0 and len(permutations) == 1:
        return permutations[0]
    return torch.cat([*permutations, remainder])


def _sampler_generator(sampler: RandomSampler) -> torch.Generator:
    if sampler.generator is not None:
        return sampler.generator
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _with_replacement_order(sampler: RandomSampler, n: int, generator: torch.Generator) -> torch.Tensor:
    # RandomSampler draws indices with replacement in chunks of 32, then the rest.
    num_samples = sampler.num_samples
    chunks = [torch.randint(high=n, size=(32,), dtype=torch.int64, generator=generator) for _ in range(num_samples // 32)]
    chunks.append(torch.randint(high=n, size=(num_samples % 32,), dtype=torch.int64, generator=generator))
    return torch.cat(chunks)
