"""The cheaper paths of the training engine give the results of the paths they replace."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from torchvision.transforms import v2

from stepbystep.data.samplers import make_balanced_sampler
from stepbystep.training import (
    BatchedLoader,
    Callback,
    GradientStats,
    RandomHorizontalFlip,
    Trainer,
    TransformedTensorDataset,
)
from stepbystep.training.threads import SMALL_STEP_WORK, choose_num_threads, step_work


def make_images(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    images = torch.rand(n, 1, 5, 5, generator=generator) * 2 - 1
    labels = (torch.rand(n, 1, generator=generator) > 0.7).float()
    return images, labels


def make_deep_relu() -> nn.Sequential:
    torch.manual_seed(17)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(25, 5, bias=False),
        nn.ReLU(),
        nn.Linear(5, 3, bias=False),
        nn.ReLU(),
        nn.Linear(3, 1, bias=False),
        nn.Sigmoid(),
    )


# ---------------------------------------------------------------------------
# Horizontal flip


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_flip_matches_torchvision(p: float) -> None:
    images, _ = make_images(50)
    reference = v2.RandomHorizontalFlip(p=p)
    flip = RandomHorizontalFlip(p=p)

    torch.manual_seed(3)
    expected = [reference(image) for image in images]
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    flipped = [flip(image) for image in images]
    flipped_next = torch.rand(1)

    for want, got in zip(expected, flipped, strict=True):
        assert torch.equal(want, got)
    assert torch.equal(expected_next, flipped_next)


@pytest.mark.parametrize("n", [1, 16, 17, 300])
def test_flip_batch_matches_calls_in_order(n: int) -> None:
    images, _ = make_images(n)
    flip = RandomHorizontalFlip(p=0.5)

    torch.manual_seed(11)
    expected = torch.stack([flip(image) for image in images])
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    batch = flip.apply_batch(images)
    batch_next = torch.rand(1)

    assert torch.equal(expected, batch)
    assert torch.equal(expected_next, batch_next)
    assert batch.shape == images.shape


def test_flip_rejects_invalid_probability() -> None:
    with pytest.raises(ValueError, match="1.5"):
        RandomHorizontalFlip(p=1.5)


def test_image_training_matches_torchvision_dataloader() -> None:
    """The pipeline's feeding (batched flip, BatchedLoader) trains the weights that torchvision and DataLoader train."""
    images, labels = make_images(240)

    def train(loader_class: type, transform: object) -> Trainer:
        dataset = TransformedTensorDataset(images, labels, transform=transform)
        sampler = make_balanced_sampler(labels)
        assert isinstance(sampler, WeightedRandomSampler)
        loader = loader_class(dataset, batch_size=16, sampler=sampler)
        model = make_deep_relu()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model, nn.BCELoss(), optimizer, train_loader=loader, device="cpu", progress=False)
        trainer.train(4, seed=42)
        return trainer

    reference = train(DataLoader, v2.RandomHorizontalFlip(p=0.5))
    pipeline = train(BatchedLoader, RandomHorizontalFlip(p=0.5))

    assert pipeline.losses == reference.losses
    for key, value in reference.model.state_dict().items():
        assert torch.equal(pipeline.model.state_dict()[key], value), key


# ---------------------------------------------------------------------------
# Gradient statistics


def test_gradient_stats_count_missing_gradient_as_zero() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    stats = GradientStats(model)
    x = torch.ones(4, 3)

    model(x).sum().backward()
    first_norm = model[0].weight.grad.norm().item()
    first_mean_abs = model[0].weight.grad.abs().mean().item()
    stats.update()
    model.zero_grad(set_to_none=True)
    # The second step leaves the first layer without a gradient.
    model[1](torch.ones(4, 2)).sum().backward()
    stats.update()

    epoch = stats.pop_epoch_stats()
    assert epoch["grad_norm/0.weight"] == pytest.approx(first_norm / 2, rel=1e-6)
    assert epoch["grad_mean_abs/0.weight"] == pytest.approx(first_mean_abs / 2, rel=1e-6)
    assert stats.pop_epoch_stats() == {}


def test_gradient_stats_of_half_precision() -> None:
    model = nn.Linear(4, 1).half()
    stats = GradientStats(model)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, -0.5)

    stats.update()
    epoch = stats.pop_epoch_stats()

    assert epoch["grad_mean_abs/weight"] == pytest.approx(0.5)
    assert epoch["grad_norm/weight"] == pytest.approx(1.0)
    assert epoch["grad_norm/bias"] == pytest.approx(0.5)


def test_gradient_stats_leave_training_unchanged() -> None:
    images, labels = make_images(64)

    def train(track: bool) -> Trainer:
        model = make_deep_relu()
        loader = BatchedLoader(TransformedTensorDataset(images, labels), batch_size=16, shuffle=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        trainer = Trainer(model, nn.BCELoss(), optimizer, train_loader=loader, track_gradients=track, progress=False)
        trainer.train(3, seed=1)
        return trainer

    tracked = train(True)
    untracked = train(False)

    assert tracked.losses == untracked.losses
    assert len(tracked.history["grad_norm/1.weight"]) == 3


# ---------------------------------------------------------------------------
# Thread count


def test_small_model_gets_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    model = make_deep_relu()

    assert step_work(model, 16) == 16 * (125 + 15 + 3)
    assert choose_num_threads(model, 16) == 1


def test_large_step_keeps_default_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    model = nn.Linear(1024, 1024)

    assert step_work(model, 1024) >= SMALL_STEP_WORK
    assert choose_num_threads(model, 1024) == torch.get_num_threads()


def test_thread_variable_overrides_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")

    assert choose_num_threads(make_deep_relu(), 16) == torch.get_num_threads()


def test_trainer_threads_restored_after_training() -> None:
    images, labels = make_images(32)
    model = make_deep_relu()
    loader = BatchedLoader(TransformedTensorDataset(images, labels), batch_size=16)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen: list[int] = []

    class ThreadRecorder(Callback):
        def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict) -> None:
            seen.append(torch.get_num_threads())

    original = torch.get_num_threads()
    # Two threads before training, so that the restored value differs from the one used.
    torch.set_num_threads(2)
    try:
        trainer = Trainer(
            model, nn.BCELoss(), optimizer, train_loader=loader, callbacks=[ThreadRecorder()], num_threads=1, progress=False
        )
        trainer.train(2)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(original)

    assert seen == [1, 1]
    assert after == 2


def test_trainer_rejects_zero_threads() -> None:
    model = make_deep_relu()
    with pytest.raises(ValueError, match="num_threads"):
        Trainer(model, nn.BCELoss(), torch.optim.SGD(model.parameters(), lr=0.1), num_threads=0)
