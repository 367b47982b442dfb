"""GuardedLBFGS: torch.optim.LBFGS's steps when nothing goes wrong, bounds kept, divergence undone."""

from __future__ import annotations

import pytest
import torch

from training.lbfgs import GuardedLBFGS


def quadratic(target: torch.Tensor, curvature: torch.Tensor):  # type: ignore[no-untyped-def]
    """f(x) = sum(curvature * (x - target)^2): an ill-conditioned bowl."""

    def loss_and_grad(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        x = x.detach().requires_grad_(True)
        loss = (curvature * (x - target) ** 2).sum()
        loss.backward()
        assert x.grad is not None
        return float(loss.detach()), x.grad

    return loss_and_grad


def bowl(seed: int, inside: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 3, 6, 5)
    target = torch.rand(shape, generator=generator) * (0.6 if inside else 1.6) + (0.2 if inside else -0.3)
    curvature = torch.rand(shape, generator=generator) * 20 + 0.5
    start = torch.full(shape, 0.5)
    return target, curvature, start


def test_without_bounds_or_guard_it_takes_torch_lbfgs_steps() -> None:
    target, curvature, start = bowl(0, inside=True)
    f = quadratic(target, curvature)
    ours = GuardedLBFGS(start.clone(), history=5, first_step=None)
    theirs = start.clone().requires_grad_(True)
    reference = torch.optim.LBFGS([theirs], lr=1, max_iter=1, history_size=5, tolerance_grad=0, tolerance_change=0)

    def closure() -> torch.Tensor:
        reference.zero_grad()
        loss = (curvature * (theirs - target) ** 2).sum()
        loss.backward()
        return loss

    for _ in range(6):
        ours.step(*f(ours.x))
        reference.step(closure)
        torch.testing.assert_close(ours.x, theirs.detach())
    assert ours.restarts == 0


def test_it_converges_inside_the_box_with_the_optimum_outside() -> None:
    target, curvature, start = bowl(1, inside=False)
    f = quadratic(target, curvature)
    optimizer = GuardedLBFGS(start)
    for _ in range(60):
        optimizer.step(*f(optimizer.x))
        assert 0 <= optimizer.x.min() and optimizer.x.max() <= 1
    # The box's optimum is the target clamped; the loss gets within 1e-5 of the way there from the start.
    optimum, initial = f(target.clamp(0, 1))[0], f(start)[0]
    assert f(optimizer.best)[0] == optimizer.best_loss
    assert optimizer.best_loss - optimum < 1e-5 * (initial - optimum)


def test_a_step_that_raises_the_loss_too_far_is_undone() -> None:
    target, curvature, start = bowl(2, inside=True)
    f = quadratic(target, curvature)
    optimizer = GuardedLBFGS(start, max_rise=1.2)
    for _ in range(3):
        optimizer.step(*f(optimizer.x))
    best_before, best_loss = optimizer.best.clone(), optimizer.best_loss
    loss, grad = f(optimizer.x)
    optimizer.step(loss * 1000 + 1, grad)  # as if the objective had blown up here
    assert optimizer.restarts == 1 and not optimizer.pairs
    assert optimizer.best_loss == best_loss
    torch.testing.assert_close(optimizer.best, best_before)
    # It carries on from the best image and still converges.
    for _ in range(60):
        optimizer.step(*f(optimizer.x))
    torch.testing.assert_close(optimizer.best, target, atol=1e-3, rtol=0)


def test_the_first_step_moves_the_most_changed_pixel_by_first_step() -> None:
    target, curvature, start = bowl(4, inside=True)
    optimizer = GuardedLBFGS(start.clone(), first_step=0.05)
    optimizer.step(*quadratic(target, curvature)(optimizer.x))
    assert float((optimizer.x - start).abs().max()) == pytest.approx(0.05)


def test_a_nan_loss_counts_as_divergence() -> None:
    target, curvature, start = bowl(3, inside=True)
    f = quadratic(target, curvature)
    optimizer = GuardedLBFGS(start)
    optimizer.step(*f(optimizer.x))
    optimizer.step(float("nan"), torch.full_like(start, float("nan")))
    assert optimizer.restarts == 1 and torch.isfinite(optimizer.x).all()


@pytest.mark.parametrize(("history", "max_rise"), [(0, 1.2), (10, 1.0)])
def test_bad_settings_are_refused(history: int, max_rise: float) -> None:
    with pytest.raises(ValueError, match="history must be at least 1 and max_rise above 1"):
        GuardedLBFGS(torch.zeros(1, 3, 2, 2), history=history, max_rise=max_rise)
