"""Seeding makes runs repeatable, and captured RNG states restore every generator."""

import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, WeightedRandomSampler
from torchvision.transforms import v2

from stepbystep.training import (
    BatchedLoader,
    Trainer,
    TransformedTensorDataset,
    capture_rng_state,
    loader_generators,
    preserved_rng_state,
    restore_rng_state,
    seed_everything,
)


def build_image_trainer() -> Trainer:
    """A small version of the chapter 4 setup: flips, a weighted sampler and the deep ReLU model."""
    generator = torch.Generator().manual_seed(13)
    images = torch.rand(120, 1, 5, 5, generator=generator)
    labels = (torch.rand(120, 1, generator=generator) < 0.67).float()
    train_transform = v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.Normalize(mean=(0.5,), std=(0.5,))])
    train_data = TransformedTensorDataset(images[:96], labels[:96], transform=train_transform)
    val_data = TransformedTensorDataset(images[96:], labels[96:], transform=v2.Normalize(mean=(0.5,), std=(0.5,)))

    train_labels = labels[:96].long().flatten()
    sample_weights = 1.0 / torch.bincount(train_labels)[train_labels].float()
    sampler = WeightedRandomSampler(
        sample_weights, num_samples=len(sample_weights), replacement=True, generator=torch.Generator()
    )
    train_loader = BatchedLoader(train_data, batch_size=16, sampler=sampler)
    val_loader = BatchedLoader(val_data, batch_size=16)

    torch.manual_seed(17)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(25, 5, bias=False),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(5, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 1, bias=False),
        nn.Sigmoid(),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model, nn.BCELoss(), optimizer, train_loader=train_loader, val_loader=val_loader, device="cpu", progress=False
    )


def test_same_seed_gives_identical_runs():
    first = build_image_trainer()
    first.train(5, seed=42)
    # Consuming random numbers in between shows that seeding resets every generator.
    torch.rand(100)
    np.random.rand(100)
    random.random()
    second = build_image_trainer()
    second.train(5, seed=42)

    for key, value in first.model.state_dict().items():
        assert torch.equal(second.model.state_dict()[key], value), key
    assert second.losses == first.losses
    assert second.val_losses == first.val_losses


def test_different_seed_gives_different_run():
    first = build_image_trainer()
    first.train(3, seed=42)
    second = build_image_trainer()
    second.train(3, seed=43)

    assert second.losses != first.losses


def test_seed_everything_seeds_loader_generators():
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0))
    sampler_generator = torch.Generator()
    loader_generator = torch.Generator()
    train_loader = DataLoader(dataset, sampler=RandomSampler(dataset, generator=sampler_generator))
    val_loader = DataLoader(dataset, shuffle=True, generator=loader_generator)

    seed_everything(7, [train_loader, val_loader])

    assert sampler_generator.initial_seed() == 7
    assert loader_generator.initial_seed() == 7
    assert torch.initial_seed() == 7
    assert torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark


def test_loader_generators_lists_shared_generator_once():
    dataset = torch.utils.data.TensorDataset(torch.arange(10.0))
    generator = torch.Generator()
    # With shuffle=True, DataLoader hands its own generator to the RandomSampler.
    loader = DataLoader(dataset, shuffle=True, generator=generator)

    found = loader_generators({"train_loader": loader, "val_loader": None})

    assert list(found) == ["train_loader.generator"]
    assert found["train_loader.generator"] is generator


def draw_from_everything(generator: torch.Generator) -> tuple:
    return (
        torch.rand(3).tolist(),
        np.random.rand(3).tolist(),
        np.random.randn(),
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        torch.rand(3, generator=generator).tolist(),
    )


def test_restore_rng_state_repeats_every_stream():
    generator = torch.Generator().manual_seed(3)
    seed_everything(11)
    # An odd number of NumPy normal draws leaves a cached Gaussian in the state.
    np.random.randn()
    random.gauss(0, 1)

    state = capture_rng_state({"sampler": generator})
    first = draw_from_everything(generator)
    restore_rng_state(state, {"sampler": generator})
    second = draw_from_everything(generator)

    assert second == first


def test_preserved_rng_state_hides_draws_in_block():
    generator = torch.Generator().manual_seed(3)
    seed_everything(11)
    expected = draw_from_everything(generator)

    seed_everything(11)
    generator.manual_seed(3)
    with preserved_rng_state({"sampler": generator}):
        draw_from_everything(generator)
    actual = draw_from_everything(generator)

    assert actual == expected


def test_restore_rng_state_warns_about_unmatched_generator(caplog):
    state = capture_rng_state({"train_loader.sampler.generator": torch.Generator()})

    restore_rng_state(state, {"val_loader.generator": torch.Generator()})

    assert "no saved RNG state for val_loader.generator" in caplog.text
    assert "train_loader.sampler.generator has no matching generator" in caplog.text


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_everything_accepts_seed_range(seed):
    seed_everything(seed)

    assert torch.initial_seed() == seed
