"""Jacobian regularisation (Bai et al. 2021): a Hutchinson estimate of ||J||_F^2 at the fixed point.

For a probe e with E[e e^T] = I, E ||J^T e||^2 = tr(J J^T) = ||J||_F^2, so one
vector-Jacobian product per batch element gives an unbiased estimate. With
``create_graph=True`` the estimate is differentiable in the layer's
parameters (through f at the detached y*), which is how it enters the loss:
L + gamma * ||J||_F^2 / n, n = N * D (Bai et al. divide by the dimension).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iqa.solvers import Map


def hutchinson_frobenius(f: Map, y_star: Tensor, generator: torch.Generator, *, create_graph: bool = False) -> Tensor:
    """One-probe Hutchinson estimate of ||J_b||_F^2 per batch element, [B], J = df/dy at ``y_star``.

    The probe is standard normal, drawn from ``generator``; with ``create_graph`` the result carries
    gradients to the parameters f closes over (y_star itself is treated as a constant).
    """
    y = y_star.detach().requires_grad_(True)
    probe = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    with torch.enable_grad():
        fy = f(y)
        (jt_probe,) = torch.autograd.grad(fy, y, probe, create_graph=create_graph)
    return jt_probe.pow(2).sum(dim=tuple(range(1, y.dim())))


def regulariser(f: Map, y_star: Tensor, generator: torch.Generator) -> Tensor:
    """The term added to the loss before gamma: mean over the batch of ||J||_F^2 / n (differentiable)."""
    n = math.prod(y_star.shape[1:])
    return hutchinson_frobenius(f, y_star, generator, create_graph=True).mean() / n
