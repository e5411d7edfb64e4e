"""Parity of the Trainer with the results printed in Deep Learning with PyTorch Step-by-Step.

The book printed its weights from a GPU run with an older torch, so CPU results
agree to about 2e-3, not bitwise.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn, optim
from torch.utils.data import DataLoader, TensorDataset, random_split

from stepbystep.training import BatchedLoader, Trainer

BOOK_TOLERANCE = 2e-3


def build_regression_trainer(loader_class: type) -> Trainer:
    """Chapter 2.1: y = 1 + 2x + noise, 80/20 split, batch size 16, Linear(1, 1), SGD lr 0.1."""
    np.random.seed(42)
    x = np.random.rand(100, 1)
    y = 1 + 2 * x + 0.1 * np.random.randn(100, 1)
    dataset = TensorDataset(torch.as_tensor(x).float(), torch.as_tensor(y).float())

    torch.manual_seed(13)
    train_data, val_data = random_split(dataset, [80, 20])
    train_loader = loader_class(train_data, batch_size=16, shuffle=True)
    val_loader = loader_class(val_data, batch_size=16)

    torch.manual_seed(42)
    model = nn.Sequential(nn.Linear(1, 1))
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        nn.MSELoss(reduction="mean"),
        optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        device="cpu",
        progress=False,
    )


def build_moons_trainer(loader_class: type) -> Trainer:
    """Chapter 3: two moons, standardized features, Linear(2, 1) on logits, BCEWithLogitsLoss, SGD lr 0.1."""
    x, y = make_moons(n_samples=100, noise=0.3, random_state=0)
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=13)
    scaler = StandardScaler().fit(x_train)
    x_train = scaler.transform(x_train)
    x_val = scaler.transform(x_val)

    torch.manual_seed(13)
    train_data = TensorDataset(torch.as_tensor(x_train).float(), torch.as_tensor(y_train.reshape(-1, 1)).float())
    val_data = TensorDataset(torch.as_tensor(x_val).float(), torch.as_tensor(y_val.reshape(-1, 1)).float())
    train_loader = loader_class(train_data, batch_size=16, shuffle=True)
    val_loader = loader_class(val_data, batch_size=16)

    torch.manual_seed(42)
    model = nn.Sequential()
    model.add_module("linear", nn.Linear(2, 1))
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    return Trainer(
        model,
        nn.BCEWithLogitsLoss(),
        optimizer,
        train_loader=train_loader,
        val_loader=val_loader,
        device="cpu",
        progress=False,
    )


def test_regression_matches_book():
    trainer = build_regression_trainer(DataLoader)

    trainer.train(200, seed=42)

    weight = trainer.model[0].weight.item()
    bias = trainer.model[0].bias.item()
    assert weight == pytest.approx(1.9414, abs=BOOK_TOLERANCE)
    assert bias == pytest.approx(1.0233, abs=BOOK_TOLERANCE)
    assert len(trainer.losses) == 200
    assert len(trainer.val_losses) == 200
    assert trainer.total_epochs == 200


def test_moons_logistic_matches_book():
    trainer = build_moons_trainer(DataLoader)

    trainer.train(100, seed=42)

    weights = trainer.model.linear.weight.detach().numpy()
    bias = trainer.model.linear.bias.item()
    np.testing.assert_allclose(weights, [[1.1822, -1.8684]], rtol=0, atol=BOOK_TOLERANCE)
    assert bias == pytest.approx(-0.0587, abs=BOOK_TOLERANCE)


@pytest.mark.parametrize(("build", "n_epochs"), [(build_regression_trainer, 200), (build_moons_trainer, 100)])
def test_batched_loader_reproduces_dataloader_run(build, n_epochs):
    plain = build(DataLoader)
    plain.train(n_epochs, seed=42)
    batched = build(BatchedLoader)
    batched.train(n_epochs, seed=42)

    for key, value in plain.model.state_dict().items():
        assert torch.equal(batched.model.state_dict()[key], value), key
    assert batched.losses == plain.losses
    assert batched.val_losses == plain.val_losses
