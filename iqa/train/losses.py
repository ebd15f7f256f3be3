"""The task loss: mean squared error per token, (1 / (B N)) sum_{b,i} ||y_bi - t_bi||^2."""

from __future__ import annotations

from torch import Tensor


def task_loss(y: Tensor, target: Tensor) -> Tensor:
    return (y - target).pow(2).sum(dim=-1).mean()
