"""Dense Jacobians for the suite's references, by reverse mode only (independent of ``iqa.analysis``).

Row i of d out / d input is the vector-Jacobian product with the i-th unit vector. All rows are taken at once
by autograd's ``is_grads_batched`` (vmap over the backward pass: 2-12x faster than one ``autograd.grad`` per
row on the built-ins at n = 4..64; bit for bit the same df/dy there, and parameter rows within an ulp), and one
at a time where a backward has no batching rule (torch warns that it falls back, or refuses).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor


def jacobian_rows(out: Tensor, inputs: Sequence[Tensor]) -> list[Tensor]:
    """d out.flatten() / d input for each input, [m, *input.shape] (m = out.numel()); zeros where out does not
    depend on an input. The graph is kept (a failed batched pass must leave it for the loop)."""
    flat = out.flatten()
    try:
        basis = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a batching fallback warns: the plain loop below is as exact, and any
            # other warning of the batched pass is left to the loop to raise again
            grads = torch.autograd.grad(
                flat, list(inputs), basis, retain_graph=True, is_grads_batched=True, materialize_grads=True
            )
        # an input out does not depend on comes back as materialized zeros without the batch dimension
        return [g if g.shape == (flat.numel(), *x.shape) else g.new_zeros(flat.numel(), *x.shape)
                for g, x in zip(grads, inputs)]  # fmt: skip
    except (RuntimeError, Warning):
        pass
    rows = [
        torch.autograd.grad(flat[i], list(inputs), retain_graph=True, materialize_grads=True)
        for i in range(flat.numel())
    ]
    return [torch.stack([row[k] for row in rows]) for k in range(len(inputs))]
