"""Tests of the step functions built by make_train_step_fn and make_val_step_fn."""

import copy

import pytest
import torch
from torch import nn

from stepbystep.training import make_train_step_fn, make_val_step_fn, make_val_step_with_outputs_fn


def make_regression_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, generator=generator)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 1))


def test_train_step_applies_one_sgd_update():
    x, y = make_regression_batch()
    model = make_model()
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.MSELoss()

    # The reference runs the same forward pass with the same dropout mask.
    torch.manual_seed(5)
    expected_loss = loss_fn(reference(x), y)
    expected_loss.backward()
    torch.manual_seed(5)
    loss = make_train_step_fn(model, loss_fn, optimizer)(x, y)

    assert isinstance(loss, float)
    assert loss == expected_loss.item()
    for updated, before in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(updated, before - 0.1 * before.grad, rtol=0, atol=1e-7)
        assert updated.grad is None


def test_train_step_switches_model_to_train_mode():
    x, y = make_regression_batch()
    model = make_model().eval()
    step = make_train_step_fn(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1))

    step(x, y)

    assert model.training
    assert all(module.training for module in model.modules())


def test_train_step_calls_after_backward_with_raw_gradients():
    x, y = make_regression_batch()
    model = make_model()
    seen_norms = []

    def record_gradient_norm() -> None:
        seen_norms.append(torch.linalg.vector_norm(model[0].weight.grad).item())

    step = make_train_step_fn(
        model,
        nn.MSELoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        clip_grad_norm=1e-6,
        after_backward=record_gradient_norm,
    )
    step(x, y)

    assert len(seen_norms) == 1
    assert seen_norms[0] > 1e-3


@pytest.mark.parametrize(
    ("clip", "max_update"),
    [({"clip_grad_norm": 0.01}, 0.1 * 0.01), ({"clip_grad_value": 0.001}, 0.1 * 0.001)],
)
def test_train_step_clips_gradients(clip, max_update):
    x, y = make_regression_batch()
    model = make_model()
    before = [parameter.detach().clone() for parameter in model.parameters()]
    step = make_train_step_fn(model, nn.MSELoss(), torch.optim.SGD(model.parameters(), lr=0.1), **clip)

    step(x, y)

    updates = torch.cat([(after.detach() - old).flatten() for after, old in zip(model.parameters(), before, strict=True)])
    # Subtracting float32 parameters near 1 leaves rounding errors of about 1e-7.
    if "clip_grad_norm" in clip:
        assert torch.linalg.vector_norm(updates).item() <= max_update + 1e-6
    else:
        assert updates.abs().max().item() <= max_update + 1e-6
    assert updates.abs().max().item() > 0


def test_train_step_rejects_two_clipping_modes():
    model = make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    with pytest.raises(ValueError, match="at most one"):
        make_train_step_fn(model, nn.MSELoss(), optimizer, clip_grad_norm=1.0, clip_grad_value=1.0)


def test_val_step_leaves_model_unchanged():
    x, y = make_regression_batch()
    model = make_model()
    before = copy.deepcopy(model.state_dict())

    loss = make_val_step_fn(model, nn.MSELoss())(x, y)

    assert not model.training
    assert loss == nn.MSELoss()(model(x), y).item()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(parameter.grad is None for parameter in model.parameters())


def test_val_step_with_outputs_returns_eval_outputs():
    x, y = make_regression_batch()
    model = make_model()

    loss, yhat = make_val_step_with_outputs_fn(model, nn.MSELoss())(x, y)

    assert not yhat.requires_grad
    # Eval mode disables dropout, so two passes agree.
    assert torch.equal(yhat, model(x).detach())
    assert loss == nn.MSELoss()(yhat, y).item()
