"""Adam (Kingma and Ba 2015), written out: the same update as torch.optim.Adam with its defaults.

m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, p <- p - lr m_hat / (sqrt(v_hat) + eps) with
m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). Not torch.optim: constructing any torch.optim
optimiser imports torch._dynamo, which takes seconds, more than the whole ``--quick`` budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class Adam:
    """Adam over a list of parameters (their ``.grad``), deterministic and allocation-light."""

    def __init__(
        self, params: Sequence[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.sub_(self.lr * (m / c1) / ((v / c2).sqrt() + self.eps))
