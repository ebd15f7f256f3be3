"""The task loss: mean squared error per token, (1 / (B N)) sum_{b,i} ||y_bi - t_bi||^2."""

from __future__ import annotations

from torch import Tensor


def task_loss(y: Tensor, target: Tensor) -> Tensor:
    """The loss of output y against the task's target; their shapes must be equal (no broadcasting: a slot
    variant's output [B, K, D] against a target [B, N, D] is an error that says so, not a silent broadcast)."""
    if y.shape != target.shape:
        raise ValueError(
            f"the layer's output has shape {tuple(y.shape)} but the task's target {tuple(target.shape)}: the "
            "training tasks map x [B, N, D] to a target of the same shape, so they need an output with one row "
            "per token"
        )
    return (y - target).pow(2).sum(dim=-1).mean()
