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

The implicit backward reports like the forward: its adjoint Solution (whose
residual is ||(I - J^T) g - v|| / ||v + J^T g|| at the returned g) goes to
``record.backward``; an adjoint solve that does not converge warns
(:class:`BackwardConvergenceWarning`) or raises :class:`ConvergenceError`; a
gradient taken after a forward solve that did not converge warns
(:class:`NonConvergedForwardWarning`). Double backward through the implicit mode
raises (the adjoint solve is not itself differentiated); the unrolled and
phantom modes are plain autograd graphs and support it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from iqa.checks import check_positive, check_positive_int, check_unit_interval
from iqa.solvers import METHODS, STOP_MODES, ConvergenceError, Map, Solution, solve

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

    ``None`` fields take the forward solve's value, and so do the forward's
    ``damping`` and Anderson's ``memory``/``mixing``/``ridge``: the adjoint
    iteration has the same linearization as the forward one at y*, so it
    converges where the forward iteration converges locally, at the same rate
    rho(J*), and a forward that needed damping needs it here too. The stop
    mode is relative, ||g - v - J^T g|| / ||v + J^T g|| <= tol, so that the
    accuracy of the gradient does not depend on the scale of the loss.
    """

    method: str | None = None
    tol: float | None = None
    max_iter: int | None = None
    damping: float | None = None
    stop: str = "rel"
    raise_on_failure: bool | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"unknown adjoint method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.tol is not None:
            check_positive("adjoint tol", self.tol)
        if self.max_iter is not None:
            check_positive_int("adjoint max_iter", self.max_iter)
        if self.damping is not None:
            check_unit_interval("adjoint damping", self.damping)
        if self.stop not in STOP_MODES:
            raise ValueError(f"unknown adjoint stop mode {self.stop!r}; choose 'abs' or 'rel'")


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
    if adjoint is not None and not isinstance(adjoint, AdjointOptions):
        raise TypeError(f"adjoint must be an iqa.AdjointOptions, got {type(adjoint).__name__}")
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


#: Options of the forward solve that the adjoint solve inherits unless AdjointOptions says otherwise.
_INHERITED = ("method", "tol", "max_iter", "damping", "memory", "mixing", "ridge", "raise_on_failure")


def adjoint_solve_options(options: AdjointOptions, solve_options: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`iqa.solve` for the adjoint: AdjointOptions, else the forward's."""
    out = {k: solve_options[k] for k in _INHERITED if k in solve_options}
    for name in ("method", "tol", "max_iter", "damping", "raise_on_failure"):
        value = getattr(options, name)
        if value is not None:
            out[name] = value
    out["stop"] = options.stop
    return out


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


def _power_of_two_scale(v: Tensor) -> Tensor:
    """2^e per batch element with 2^(e-1) <= max|v_b| < 2^e (1 where v_b = 0), broadcastable against v."""
    peak = v.detach().reshape(v.shape[0], -1).abs().amax(dim=1)
    scale = torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent)
    return scale.reshape((-1,) + (1,) * (v.dim() - 1))


def _rescaled(solution: Solution, scale: Tensor) -> Solution:
    """The Solution of g = v + J^T g from that of g/s = v/s + J^T (g/s): y and absolute residuals times s."""
    s = scale.reshape(-1).to(torch.float64).cpu()
    residual = solution.residual if solution.stop == "rel" else solution.residual * s
    return dataclasses.replace(
        solution, y=solution.y * scale, residuals=solution.residuals * s, residual=residual, iterates=None
    )


def _adjoint_hook(
    f: Map,
    y_star: Tensor,
    forward: Solution,
    options: AdjointOptions,
    solve_options: dict[str, Any],
    record: SolveRecord,
) -> Any:
    """The hook on f(y*) that replaces its incoming gradient v by the solution g of g = v + J^T g."""
    kwargs = adjoint_solve_options(options, solve_options)
    raise_on_failure = bool(kwargs.pop("raise_on_failure", False))

    def hook(v: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through an implicit fixed point is not supported; "
                "use backward='unrolled' or 'phantom' for higher-order gradients"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError(
                "the gradient arriving at the implicit fixed point (dL/dy*) contains NaN or Inf; "
                "the adjoint equation g = dL/dy* + J^T g has no finite solution"
            )
        _warn_if_not_converged(forward)(v)
        with torch.enable_grad():
            y_req = y_star.detach().requires_grad_(True)
            fy = f(y_req)

        # With a relative stop the equation is scale-free; solve it for v / s (s a power of two near max|v|
        # per batch element, so the division is exact) so that a tiny or huge loss scale never meets the
        # solver's absolute floors, then scale g back by s.
        scale = _power_of_two_scale(v) if kwargs["stop"] == "rel" else None
        v_hat = v / scale if scale is not None else v

        def adjoint_map(g: Tensor) -> Tensor:
            # materialize_grads: a map that ignores y has J = 0 (g = v), not an error.
            (jtg,) = torch.autograd.grad(fy, y_req, g, retain_graph=True, materialize_grads=True)
            return v_hat + jtg

        solution = solve(adjoint_map, v_hat, **kwargs)
        if scale is not None:
            solution = _rescaled(solution, scale)
        record.backward = solution
        if not solution.converged:
            error = ConvergenceError(solution, "adjoint solve g = v + J^T g of the implicit backward")
            if raise_on_failure:
                raise error
            warnings.warn(f"{error}; the gradient is inexact", BackwardConvergenceWarning, stacklevel=2)
        return solution.y

    return hook
