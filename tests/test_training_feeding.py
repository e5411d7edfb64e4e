"""BatchedLoader must yield what a single-process DataLoader yields, batch for batch and draw for draw."""

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
    WeightedRandomSampler,
    random_split,
)
from torchvision.transforms import v2

from stepbystep.training import BatchedLoader, TransformedTensorDataset

N_SAMPLES = 103  # not a multiple of the batch size, so the last batch is partial


def make_images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(N_SAMPLES, 1, 5, 5, generator=generator)
    labels = torch.randint(0, 2, (N_SAMPLES, 1), generator=generator).float()
    return images, labels


def make_class_weights(labels: torch.Tensor) -> torch.Tensor:
    counts = torch.bincount(labels.long().flatten())
    return 1.0 / counts[labels.long().flatten()].float()


def tensor_dataset() -> TensorDataset:
    return TensorDataset(*make_images())


def flipped_dataset() -> TransformedTensorDataset:
    images, labels = make_images()
    transform = v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.Normalize(mean=(0.5,), std=(0.5,))])
    return TransformedTensorDataset(images, labels, transform=transform)


def flipped_dataset_with_batch_transform() -> TransformedTensorDataset:
    images, labels = make_images()
    return TransformedTensorDataset(
        images,
        labels,
        transform=v2.RandomHorizontalFlip(p=0.5),
        batch_transform=v2.Normalize(mean=(0.5,), std=(0.5,)),
    )


# Each case builds DataLoader keyword arguments; BatchedLoader gets the same ones.
LOADER_CASES = {
    "sequential": lambda: {"dataset": tensor_dataset(), "batch_size": 16},
    "shuffle": lambda: {"dataset": tensor_dataset(), "batch_size": 16, "shuffle": True},
    "shuffle_drop_last": lambda: {"dataset": tensor_dataset(), "batch_size": 16, "shuffle": True, "drop_last": True},
    "shuffle_loader_generator": lambda: {
        "dataset": tensor_dataset(),
        "batch_size": 16,
        "shuffle": True,
        "generator": torch.Generator().manual_seed(3),
    },
    "random_sampler_generator": lambda: (
        lambda dataset: {
            "dataset": dataset,
            "batch_size": 16,
            "sampler": RandomSampler(dataset, generator=torch.Generator().manual_seed(3)),
        }
    )(tensor_dataset()),
    "random_sampler_more_samples": lambda: (
        lambda dataset: {"dataset": dataset, "batch_size": 16, "sampler": RandomSampler(dataset, num_samples=250)}
    )(tensor_dataset()),
    "random_sampler_replacement": lambda: (
        lambda dataset: {
            "dataset": dataset,
            "batch_size": 16,
            "sampler": RandomSampler(dataset, replacement=True, num_samples=77),
        }
    )(tensor_dataset()),
    "weighted_sampler": lambda: (
        lambda dataset: {
            "dataset": dataset,
            "batch_size": 16,
            "sampler": WeightedRandomSampler(
                make_class_weights(dataset.tensors[1]),
                num_samples=len(dataset),
                replacement=True,
                generator=torch.Generator().manual_seed(42),
            ),
        }
    )(tensor_dataset()),
    "random_split_subset": lambda: {
        "dataset": random_split(tensor_dataset(), [80, 23])[0],
        "batch_size": 16,
        "shuffle": True,
    },
    "flips_weighted_sampler": lambda: (
        lambda dataset: {
            "dataset": dataset,
            "batch_size": 16,
            "sampler": WeightedRandomSampler(
                make_class_weights(dataset.y),
                num_samples=len(dataset),
                replacement=True,
                generator=torch.Generator().manual_seed(42),
            ),
        }
    )(flipped_dataset()),
    "flips_batch_transform_shuffle": lambda: {
        "dataset": flipped_dataset_with_batch_transform(),
        "batch_size": 16,
        "shuffle": True,
    },
    "custom_batch_sampler": lambda: (
        lambda dataset: {
            "dataset": dataset,
            "batch_sampler": BatchSampler(SequentialSampler(dataset), batch_size=10, drop_last=False),
        }
    )(tensor_dataset()),
}


def collect_epochs(loader, n_epochs: int = 3) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Return every batch of n_epochs epochs, plus a global draw after each epoch, and the final RNG state."""
    items = []
    for _ in range(n_epochs):
        for batch in loader:
            items.append(list(batch))
        # A draw between epochs shows whether the loader left the global RNG where DataLoader leaves it.
        items.append([torch.rand(1)])
    return items, torch.get_rng_state()


@pytest.mark.parametrize("case", sorted(LOADER_CASES))
def test_batched_loader_matches_dataloader(case):
    torch.manual_seed(5)
    expected, expected_rng = collect_epochs(DataLoader(**LOADER_CASES[case]()))
    torch.manual_seed(5)
    actual, actual_rng = collect_epochs(BatchedLoader(**LOADER_CASES[case]()))

    assert len(actual) == len(expected)
    for position, (actual_items, expected_items) in enumerate(zip(actual, expected, strict=True)):
        assert len(actual_items) == len(expected_items), position
        for actual_tensor, expected_tensor in zip(actual_items, expected_items, strict=True):
            assert actual_tensor.dtype == expected_tensor.dtype, position
            assert torch.equal(actual_tensor, expected_tensor), position
    assert torch.equal(actual_rng, expected_rng)


@pytest.mark.parametrize("case", sorted(LOADER_CASES))
def test_batched_loader_length_matches_dataloader(case):
    assert len(BatchedLoader(**LOADER_CASES[case]())) == len(DataLoader(**LOADER_CASES[case]()))


def test_from_loader_shares_sampler_and_order():
    dataset = tensor_dataset()
    sampler = WeightedRandomSampler(make_class_weights(dataset.tensors[1]), num_samples=len(dataset))
    loader = DataLoader(dataset, batch_size=8, sampler=sampler)

    batched = BatchedLoader.from_loader(loader)
    torch.manual_seed(9)
    expected, _ = collect_epochs(loader, n_epochs=2)
    torch.manual_seed(9)
    actual, _ = collect_epochs(batched, n_epochs=2)

    assert batched.sampler is sampler
    assert all(
        torch.equal(a, e) for a_items, e_items in zip(actual, expected, strict=True) for a, e in zip(a_items, e_items)
    )


def test_from_loader_rejects_workers_and_custom_collate():
    dataset = tensor_dataset()

    with pytest.raises(ValueError, match="num_workers=2"):
        BatchedLoader.from_loader(DataLoader(dataset, batch_size=4, num_workers=2))
    with pytest.raises(ValueError, match="collate_fn"):
        BatchedLoader.from_loader(DataLoader(dataset, batch_size=4, collate_fn=lambda samples: samples))


def test_batched_loader_rejects_unindexable_dataset():
    class SquaresDataset(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return torch.tensor([index * index])

    with pytest.raises(TypeError, match="SquaresDataset"):
        BatchedLoader(SquaresDataset(), batch_size=2)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 4, "shuffle": True, "sampler": SequentialSampler(range(N_SAMPLES))},
        {"batch_size": 4, "batch_sampler": BatchSampler(SequentialSampler(range(N_SAMPLES)), 4, False)},
        {"batch_size": 0},
    ],
    ids=["sampler_and_shuffle", "batch_sampler_and_batch_size", "zero_batch_size"],
)
def test_batched_loader_rejects_conflicting_arguments(kwargs):
    with pytest.raises(ValueError):
        BatchedLoader(tensor_dataset(), **kwargs)


def test_transformed_dataset_item_matches_batch():
    dataset = flipped_dataset_with_batch_transform()
    indices = torch.tensor([4, 0, 17])

    torch.manual_seed(2)
    items = [dataset[int(index)] for index in indices]
    torch.manual_seed(2)
    batch_x, batch_y = dataset.get_batch(indices)

    assert torch.equal(batch_x, torch.stack([x for x, _ in items]))
    assert torch.equal(batch_y, torch.stack([y for _, y in items]))


def test_transformed_dataset_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        TransformedTensorDataset(torch.zeros(3, 2), torch.zeros(4, 1))
