"""Seed every random number generator that training draws from, and save or restore their states.

A training run draws random numbers from four places: torch's global generator
(initialization, dropout, random transforms, ``RandomSampler`` without its own
generator), NumPy's legacy global generator, Python's ``random`` module, and the
``torch.Generator`` objects that loaders and samplers own. Seeding all four makes
a run repeatable; saving and restoring all four makes a resumed run continue
exactly where the saved one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

# Attribute paths, relative to a loader, where DataLoader and the samplers in
# torch.utils.data keep the generators they draw from.
_GENERATOR_PATHS = (
    ("generator",),
    ("sampler", "generator"),
    ("batch_sampler", "generator"),
    ("batch_sampler", "sampler", "generator"),
)


def loader_generators(loaders: Mapping[str, Any]) -> dict[str, torch.Generator]:
    """Return the distinct ``torch.Generator`` objects that the loaders draw from.

    ``loaders`` maps a prefix such as ``"train_loader"`` to a loader (or ``None``).
    Keys of the result are attribute paths such as ``"train_loader.sampler.generator"``.
    A generator shared by several paths appears once, under the first path found,
    so that seeding or restoring it happens once.
    """
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    for prefix, loader in loaders.items():
        if loader is None:
            continue
        for path in _GENERATOR_PATHS:
            obj = loader
            for attribute in path:
                obj = getattr(obj, attribute, None)
            if isinstance(obj, torch.Generator) and id(obj) not in seen:
                seen.add(id(obj))
                found[".".join((prefix, *path))] = obj
    return found


def seed_everything(
    seed: int,
    loaders: Iterable[Any] | Mapping[str, Any] = (),
    *,
    deterministic: bool = True,
) -> None:
    """Seed torch (CPU and every CUDA device), NumPy, Python's ``random`` and the loaders' generators.

    ``loaders`` is an iterable of loaders, or a mapping from names to loaders. Every
    ``torch.Generator`` found on a loader, its sampler or its batch sampler is seeded
    with ``seed`` too. With ``deterministic`` the function also sets
    ``torch.backends.cudnn.deterministic = True`` and ``benchmark = False``, which is
    what repeatable results on CUDA need for convolutions.

    NOTE: bitwise repeatability on CUDA can further require
    ``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG``;
    this function does not set them.
    """
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)

    if not isinstance(loaders, Mapping):
        loaders = {f"loader{i}": loader for i, loader in enumerate(loaders)}
    for generator in loader_generators(loaders).values():
        generator.manual_seed(seed)


def capture_rng_state(generators: Mapping[str, torch.Generator]) -> dict[str, Any]:
    """Return the states of all global generators and of ``generators``.

    The result contains only tensors and plain Python types, so it survives
    ``torch.save`` and ``torch.load(weights_only=True)``. CUDA states are included
    only when CUDA has been initialized in this process, because a run that never
    touched CUDA has not drawn from its generators.
    """
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    cuda_states: list[torch.Tensor] = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = list(torch.cuda.get_rng_state_all())

    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda_states,
        "numpy": {
            "bit_generator": str(numpy_state[0]),
            "keys": torch.from_numpy(np.asarray(numpy_state[1], dtype=np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {
            "version": python_state[0],
            "internal_state": list(python_state[1]),
            "gauss_next": python_state[2],
        },
        "generators": {name: generator.get_state() for name, generator in generators.items()},
    }


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator]) -> None:
    """Restore the states saved by ``capture_rng_state``.

    Generators are matched by name. A name present on only one side is logged as a
    warning, because the resumed run then draws different random numbers from the
    saved one. CUDA states are skipped with a warning when this process has no CUDA
    device or a different number of devices.
    """
    torch.set_rng_state(state["torch"])

    cuda_states = state["cuda"]
    if cuda_states:
        if torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_states):
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            logger.warning(
                "skipped restoring the RNG state of %d CUDA device(s): this process has %d",
                len(cuda_states),
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )

    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["bit_generator"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )

    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal_state"]), python_state["gauss_next"])
    )

    saved = state["generators"]
    for name, generator in generators.items():
        if name in saved:
            generator.set_state(saved[name])
        else:
            logger.warning("no saved RNG state for %s; it keeps its current state", name)
    for name in saved.keys() - generators.keys():
        logger.warning("saved RNG state for %s has no matching generator; it was not restored", name)


@contextlib.contextmanager
def preserved_rng_state(generators: Mapping[str, torch.Generator]) -> Iterator[None]:
    """Restore every global generator and ``generators`` on exit from the block.

    Work inside the block, such as fetching a sample batch for a model graph,
    then leaves no trace in the random streams that training draws from.
    """
    state = capture_rng_state(generators)
    try:
        yield
    finally:
        restore_rng_state(state, generators)
