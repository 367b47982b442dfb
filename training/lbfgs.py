"""L-BFGS for an image in [0, 1]: one evaluation per iteration, and a guard against divergence.

The Gatys optimiser runs L-BFGS the way neural-style and the PyTorch tutorial do:
no line search (each iteration costs exactly one forward and backward), the
step taken whole and the image clamped to [0, 1] after it. On this non-convex
objective that loop sometimes diverges: in `python -m bench.gatys_stability`
(five Kodak photo and painting pairs, 100 iterations at 256 px) its loss rose
above 1.2x the best so far 0 to 24 times per pair, up to 95x, and on two pairs the
image it ended with scored 34x and 920x worse than its best one.

`GuardedLBFGS` is that loop with three changes:
  - a step whose loss exceeds `max_rise` times the best loss so far is undone:
    the image goes back to the best one, the curvature memory is cleared and the
    next step is shorter; no evaluation is spent on it (the best point's gradient
    is kept), where restarting torch.optim.LBFGS costs one evaluation to redo the
    gradient and one for its deliberately tiny first step;
  - the first step moves the most-changed pixel
    by `first_step` rather than torch's min(1, 1/|g|_1) along -g, which at image
    scale barely moves and so, in bf16, measures curvature from rounding noise
    (one pair stalled for 50 iterations that way);
  - `best` is the image with the lowest loss evaluated, which is what a run returns.
With `first_step=None` and no guard firing it takes torch.optim.LBFGS(lr=1, max_iter=1)'s steps.

It is ask/tell: the caller evaluates the loss and gradient at `x`, hands them to
`step()`, which moves `x` to the next point to evaluate.
"""

from __future__ import annotations

import math
from collections import deque

import torch


class GuardedLBFGS:
    def __init__(
        self, x: torch.Tensor, history: int = 100, max_rise: float = 1.2, first_step: float | None = 0.05
    ) -> None:
        """`x`: the image, changed in place; `history`: curvature pairs kept; `max_rise` > 1: the guard;
        `first_step`: the largest pixel change of a first step (None: torch.optim.LBFGS's rule)."""
        if history < 1 or not max_rise > 1:
            raise ValueError("history must be at least 1 and max_rise above 1")
        self.x = x
        self.max_rise = max_rise
        self.first_step = first_step
        self.pairs: deque[tuple[torch.Tensor, torch.Tensor, float]] = deque(maxlen=history)  # (s, y, 1 / y.s)
        self.gamma: float | None = None  # the initial inverse-Hessian scale, y.s / y.y of the newest pair
        self.best_loss = math.inf
        self.best = x.detach().clone()
        self._best_grad: torch.Tensor | None = None
        self._grad: torch.Tensor | None = None  # the gradient where the last step started
        self._step: torch.Tensor | None = None  # that step, before clamping
        self.restarts = 0

    def step(self, loss: float, grad: torch.Tensor) -> None:
        """Take the loss and gradient at `x`; move `x` to the next point to evaluate."""
        g = grad.detach().flatten().float()
        if self._step is not None and self._grad is not None:
            if not loss <= self.best_loss * self.max_rise:  # also catches NaN
                # Diverging: back to the best image, the memory (now misleading) cleared, half the step scale.
                self.restarts += 1
                self.x.data.copy_(self.best)
                assert self._best_grad is not None
                g = self._best_grad
                self.pairs.clear()
                self.gamma = None if self.gamma is None else self.gamma / 2
                self._move(g)
                return
            y = g - self._grad
            ys = float(torch.dot(y, self._step))
            if ys > 1e-10:  # torch.optim.LBFGS's test: keep only pairs of positive curvature
                self.pairs.append((self._step, y, 1.0 / ys))
                self.gamma = ys / float(torch.dot(y, y))
        if loss < self.best_loss:
            self.best_loss = loss
            self.best.copy_(self.x.detach())
            self._best_grad = g.clone()
        self._move(g)

    def _move(self, g: torch.Tensor) -> None:
        # Nocedal & Wright, Algorithm 7.4 (the two-loop recursion): d = -H g.
        q = g.clone()
        alphas = []
        for s, y, rho in reversed(self.pairs):
            alpha = rho * float(torch.dot(s, q))
            q.add_(y, alpha=-alpha)
            alphas.append(alpha)
        if self.gamma is not None:
            q.mul_(self.gamma)
        elif self.first_step is not None:  # no memory yet: a step of first_step at the most-changed pixel
            q.mul_(self.first_step / max(float(g.abs().max()), 1e-30))
        else:  # torch.optim.LBFGS's first step
            q.mul_(min(1.0, 1.0 / max(float(g.abs().sum()), 1e-30)))
        for (s, y, rho), alpha in zip(self.pairs, reversed(alphas), strict=True):
            beta = rho * float(torch.dot(y, q))
            q.add_(s, alpha=alpha - beta)
        d = q.neg_()
        self._grad = g
        self._step = d
        with torch.no_grad():
            self.x.add_(d.view_as(self.x).to(self.x.dtype)).clamp_(0, 1)
