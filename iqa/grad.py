"""Backward modes for a fixed point y* = f(y*, theta).

- ``unrolled``: autograd records every solver step (memory grows with steps).
- ``implicit``: the solve records nothing; the backward solves the adjoint
  fixed point g = v + J^T g (J = df/dy at y*, v = dL/dy*) and then carries
  g^T df/dtheta through one recorded application of f to every tensor f uses.
  This is dL/dtheta = v^T (I - J)^{-1} df/dtheta, at a memory cost that does not
  depend on the number of forward steps.
- ``phantom``: k damped steps z <- (1 - lam) z + lam f(z) from the detached y*
  are recorded; with k = 1, lam = 1 this is the Jacobian-free gradient
  v^T df/dtheta. It approximates (I - J)^{-1} by lam sum_{i<k} ((1 - lam) I + lam J)^i.

In the implicit and phantom modes the forward value is y* itself, and the path
through y0 drops out (the gradient with respect to y0 is zero), as it does at a
unique fixed point.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iqa.checks import check_positive_int, check_unit_interval
from iqa.solvers import ConvergenceError, Map, Solution, solve

BACKWARD_MODES = ("unrolled", "implicit", "phantom")


class IQAWarning(UserWarning):
    """Base class of iqa's warnings."""


class BackwardConvergenceWarning(IQAWarning):
    """The adjoint solve of an implicit backward did not converge: the gradient is inexact."""


class NonConvergedForwardWarning(IQAWarning):
    """An implicit or phantom gradient was taken at a point that is not a fixed point."""


@dataclass
class SolveRecord:
    """Where :func:`fixed_point` leaves the Solutions of its forward and backward solves."""

    forward: Solution | None = None
    backward: Solution | None = None


@dataclass(frozen=True)
class AdjointOptions:
    """How the implicit backward solves g = v + J^T g.

    ``None`` fields take the forward solve's value. The stop mode is relative,
    ||g - v - J^T g|| / ||v + J^T g|| <= tol, so that the accuracy of the
    gradient does not depend on the scale of the loss.
    """

    method: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    stop: str = "rel"
    raise_on_failure: bool = False


def check_backward_mode(backward: str) -> None:
    if backward not in BACKWARD_MODES:
        raise ValueError(f"unknown backward mode {backward!r}; choose one of {', '.join(BACKWARD_MODES)}")


def fixed_point(
    f: Map,
    y0: Tensor,
    backward: str = "implicit",
    *,
    adjoint: AdjointOptions | None = None,
    phantom_steps: int = 1,
    phantom_damping: float = 1.0,
    record: SolveRecord | None = None,
    **solve_options: Any,
) -> Tensor:
    """Solve y* = f(y*) from y0 and return y* with gradients by ``backward``.

    ``f`` closes over its parameters (and inputs); the returned tensor carries
    gradients to every tensor f uses. ``solve_options`` go to :func:`iqa.solve`.
    ``record`` (if given) receives the forward Solution and, once the backward
    has run, the adjoint Solution.
    """
    check_backward_mode(backward)
    check_positive_int("phantom_steps", phantom_steps)
    check_unit_interval("phantom_damping", phantom_damping)
    record = record if record is not None else SolveRecord()
    if backward == "unrolled":
        solution = solve(f, y0, **solve_options)
        record.forward = solution
        return solution.y
    with torch.no_grad():
        solution = solve(f, y0.detach(), **solve_options)
    record.forward = solution
    y_star = solution.y.detach()
    if not torch.is_grad_enabled():
        return y_star
    if backward == "phantom":
        z = y_star
        for _ in range(phantom_steps):
            z = z + phantom_damping * (f(z) - z)
        if not z.requires_grad:
            return y_star
        z.register_hook(_warn_if_not_converged(solution))
        return y_star + (z - z.detach())
    fy = f(y_star)
    if not fy.requires_grad:
        return y_star
    options = adjoint or AdjointOptions()
    fy.register_hook(_adjoint_hook(f, y_star, solution, options, solve_options, record))
    # The value is exactly y*; the gradient flows through one application of f.
    return y_star + (fy - fy.detach())


def _warn_if_not_converged(solution: Solution) -> Any:
    def hook(v: Tensor) -> Tensor:
        if not solution.converged:
            warnings.warn(
                f"gradient taken at a point that is not a fixed point (forward status "
                f"{solution.status.name}, residual {float(solution.residual.max()):.3e}): it is meaningless",
                NonConvergedForwardWarning,
                stacklevel=2,
            )
        return v

    return hook


def _adjoint_hook(
    f: Map,
    y_star: Tensor,
    forward: Solution,
    options: AdjointOptions,
    solve_options: dict[str, Any],
    record: SolveRecord,
) -> Any:
    def hook(v: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through an implicit fixed point is not supported; "
                "use backward='unrolled' for higher-order gradients"
            )
        _warn_if_not_converged(forward)(v)
        with torch.enable_grad():
            y_req = y_star.detach().requires_grad_(True)
            fy = f(y_req)

        def adjoint_map(g: Tensor) -> Tensor:
            (jtg,) = torch.autograd.grad(fy, y_req, g, retain_graph=True)
            return v + jtg

        solution = solve(
            adjoint_map,
            v,
            options.method or solve_options.get("method", "picard"),
            tol=options.tol if options.tol is not None else solve_options.get("tol", 1e-6),
            max_iter=options.max_iter if options.max_iter is not None else solve_options.get("max_iter", 200),
            stop=options.stop,
        )
        record.backward = solution
        if not solution.converged:
            error = ConvergenceError(solution, "adjoint solve of the implicit backward")
            if options.raise_on_failure:
                raise error
            warnings.warn(str(error), BackwardConvergenceWarning, stacklevel=2)
        return solution.y

    return hook
