"""The attention weights inside a map, recorded as f runs, and how saturated they are.

Any softmax that f computes (``F.softmax``, ``torch.softmax``,
``Tensor.softmax``) is captured through a :class:`torch.overrides.TorchFunctionMode`,
so this works for every variant without an attention accessor. A row is
saturated when one weight carries all but ``1 - max_j p_ij`` of the mass; the
Jacobian block p_ij (v_j - f_i) a_i^T then vanishes with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from iqa.solvers import Map


class _SoftmaxRecorder(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.weights: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "softmax" and isinstance(out, Tensor):
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if dim is None:
                raise ValueError("softmax without an explicit dim: cannot tell which axis holds the weights")
            self.weights.append(out.detach().movedim(int(dim), -1))
        return out


def attention_weights(f: Map, y: Tensor) -> list[Tensor]:
    """Every softmax output computed by f(y), in call order, with the normalized axis moved last."""
    recorder = _SoftmaxRecorder()
    with torch.no_grad(), recorder:
        f(y.detach())
    return recorder.weights


def saturation_gap(f: Map, y: Tensor) -> Tensor:
    """max over the softmax rows of each batch element of 1 - max_j p_ij, [B].

    0 means every attention row is exactly one-hot; NaN means f computes no softmax.
    """
    weights = attention_weights(f, y)
    batch = y.shape[0]
    if not weights:
        return torch.full((batch,), float("nan"), dtype=torch.float64)
    gaps = [(1 - w.amax(dim=-1)).reshape(batch, -1).amax(dim=-1).to(torch.float64) for w in weights]
    return torch.stack(gaps).amax(dim=0).cpu()
