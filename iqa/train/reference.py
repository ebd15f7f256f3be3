"""The converged reference gradient, by a dense solve independent of iqa's backward modes.

At a fixed point y* = f(y*; theta), tightly solved, the exact gradient of
L(g(y*, x; theta)) (g the layer's readout, the identity by default) is
dL/dtheta = u^T df/dtheta + dL/dg dg/dtheta with (I - J)^T u = (dg/dy*)^T dL/dg per batch element,
J = df/dy at y* built densely (n = N * D is small here) and the linear system
solved by LAPACK. Where the tight solve does not converge there is no
reference (None): there is no fixed point to differentiate. J is built for
all batch elements at once (:func:`iqa.analysis.jacobian`), which is exact for
layers whose batch elements do not interact (every built-in claims it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iqa.analysis import jacobian
from iqa.analysis.spectral import eig_blocks
from iqa.layer import FixedPointLayer
from iqa.solvers import Solution, solve
from iqa.train.losses import task_loss


@dataclass(frozen=True)
class Reference:
    """The tight fixed point of a held-out batch, its dense Jacobians and (if it converged) the gradient."""

    solution: Solution
    jacobians: Tensor  # [B, n, n] at the returned point
    rho: Tensor  # [B] spectral radius of each block
    gradient: list[Tensor] | None  # one tensor per parameter; None when the solve did not converge


def reference(layer: FixedPointLayer, x: Tensor, target: Tensor, *, tol: float, max_iter: int) -> Reference:
    """Solve the held-out batch tightly (Anderson), then J, rho(J) and the dense implicit gradient."""
    params = [p for p in layer.parameters() if p.requires_grad]
    with torch.no_grad():
        f0 = layer.fixed_point_map(x)
        solution = solve(f0, layer.initial_point(x), method="anderson", tol=tol, max_iter=max_iter)
    y = solution.y.detach()
    with torch.no_grad():
        f = layer.fixed_point_map(x)
        J = jacobian(f, y)
    if not bool(torch.isfinite(J).all()):  # a non-finite point or overflow: no spectrum, no gradient
        return Reference(solution, J, torch.full((y.shape[0],), math.nan, dtype=torch.float64), None)
    values, _ = eig_blocks(J)
    rho = values.abs().amax(dim=-1).to(torch.float64)
    if not solution.converged:
        return Reference(solution, J, rho, None)
    y_req = y.clone().requires_grad_(True)
    with torch.enable_grad():
        readout_loss = task_loss(layer.readout(y_req, x), target)
        v, *direct = torch.autograd.grad(readout_loss, [y_req, *params], allow_unused=True)
    batch, n = y.shape[0], math.prod(y.shape[1:])
    eye = torch.eye(n, dtype=J.dtype).expand(batch, n, n)
    try:
        g = torch.linalg.solve((eye - J).transpose(-2, -1), v.reshape(batch, n, 1)).reshape(y.shape)
    except torch.linalg.LinAlgError:  # I - J singular (an eigenvalue exactly 1): the gradient does not exist
        return Reference(solution, J, rho, None)
    with torch.enable_grad():
        fy = layer.fixed_point_map(x)(y)
    grads = torch.autograd.grad(fy, params, g, allow_unused=True)
    gradient = [_total(p, through_f, readout) for p, through_f, readout in zip(params, grads, direct)]
    return Reference(solution, J, rho, gradient)


def _total(p: Tensor, through_f: Tensor | None, readout: Tensor | None) -> Tensor:
    """One parameter's gradient: its part through f plus its part through the readout (None: no such part)."""
    parts = [t.detach() for t in (through_f, readout) if t is not None]
    if not parts:
        return torch.zeros_like(p)
    return parts[0] if len(parts) == 1 else parts[0] + parts[1]
