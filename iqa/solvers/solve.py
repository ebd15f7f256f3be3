"""``solve(f, y0)``: the entry point that checks its arguments once and runs a solver object."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from iqa.solvers.options import Solver, as_solver, check_solve_options
from iqa.solvers.result import ConvergenceError, Map, Solution
from iqa.validation import check_finite_tensor


def solve(
    f: Map,
    y0: Tensor,
    method: str | Solver = "picard",
    *,
    tol: float = 1e-6,
    max_iter: int = 200,
    stop: str = "abs",
    raise_on_failure: bool = False,
    keep_iterates: bool = False,
    **options: Any,
) -> Solution:
    """Find y* = f(y*) starting from y0; report per batch element how it went.

    Args:
        f: the map, batched over dimension 0 of its argument.
        y0: the starting point, [B, ...], floating and finite.
        method: a solver object (``Picard(damping=...)``, ``Anderson(history=..., mixing=..., ridge=...)``,
            or any :class:`~iqa.solvers.Solver`), or the name "picard" / "anderson" with that solver's
            options as keywords (``solve(f, y0, "anderson", history=5)``). An option of the other solver
            is an error naming the solver it belongs to.
        tol: the residual (in ``stop`` mode) at which an element has converged.
        max_iter: the most evaluations of f.
        stop: "abs" for ||f(y) - y||, "rel" for ||f(y) - y|| / ||f(y)||.
        raise_on_failure: raise :class:`ConvergenceError` unless CONVERGED.
        keep_iterates: keep a detached copy of every iterate (for plots).
        options: the chosen solver's options, when ``method`` is a name.

    Runs with autograd as the caller has it: under ``torch.no_grad()`` no graph
    is built; otherwise gradients flow through every step (the unrolled mode).
    """
    solver = as_solver(method, options)
    stop_mode = check_solve_options(tol, max_iter, stop)
    assert stop_mode is not None
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dim() < 1 or y0.shape[0] == 0 or y0.numel() == 0:
        raise ValueError(f"y0 must have a non-empty batch dimension 0, got shape {tuple(y0.shape)}")
    check_finite_tensor("y0", y0)
    if y0.dim() == 1:
        # One scalar per batch element: solve in [B, 1] so that norms have a dimension to reduce.
        solution = solver.run(
            lambda y: f(y.squeeze(1)).unsqueeze(1),
            y0.unsqueeze(1),
            tol=tol,
            max_iter=max_iter,
            stop=stop_mode,
            keep_iterates=keep_iterates,
        )
        iterates = None if solution.iterates is None else [t.squeeze(1) for t in solution.iterates]
        solution = dataclasses.replace(solution, y=solution.y.squeeze(1), iterates=iterates)
    else:
        solution = solver.run(f, y0, tol=tol, max_iter=max_iter, stop=stop_mode, keep_iterates=keep_iterates)
    if raise_on_failure and not solution.converged:
        raise ConvergenceError(solution)
    return solution
