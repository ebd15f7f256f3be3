"""What a solve returns: the per-element :class:`Status`, the :class:`Solution` and :class:`ConvergenceError`.

The residual of an iterate y is r(y) = ||f(y) - y|| (absolute) or
||f(y) - y|| / ||f(y)|| (relative), over all non-batch dimensions; a Solution's
``stop`` says which one was compared with ``tol``. A solution is ``CONVERGED``
only when the residual of the iterate it returns is <= tol; its overall status
is never ``CONVERGED`` while any element is not.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

#: A fixed-point map, batched over dimension 0 of its argument.
Map = Callable[[Tensor], Tensor]
StopMode = Literal["abs", "rel"]
STOP_MODES = ("abs", "rel")
#: Below this, a norm counts as zero (relative residuals divide by max(||f(y)||, this)).
NORM_FLOOR = 1e-30


class Status(enum.Enum):
    """Outcome of a solve, per batch element; ordered from best to worst."""

    CONVERGED = "converged"
    MAX_ITER = "max_iter"
    CYCLE = "cycle"
    DIVERGED = "diverged"
    NONFINITE = "nonfinite"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {status: rank for rank, status in enumerate(Status)}


class ConvergenceError(RuntimeError):
    """Raised by a solve with ``raise_on_failure=True`` that did not converge."""

    def __init__(self, solution: Solution, what: str = "fixed-point solve") -> None:
        self.solution = solution
        worst = max(range(len(solution.statuses)), key=lambda b: solution.statuses[b].severity)
        super().__init__(
            f"{what} ({solution.method}) ended with status {solution.status.name}: "
            f"batch element {worst} has residual {float(solution.residual[worst]):.3e} "
            f"({solution.stop}) after {solution.steps[worst]} steps, tol={solution.tol:.3e}"
        )


@dataclass(frozen=True, eq=False)
class Solution:
    """What a solve found and how it got there.

    ``residuals[t, b]`` is the absolute residual of iterate t of element b and
    ``relative_residuals`` the relative one; rows past ``steps[b]`` repeat the
    frozen final value of element b. ``residual[b]`` is the residual (in the
    ``stop`` mode) of the returned ``y[b]``. ``method`` names the solver
    ("picard", "anderson"). ``fallbacks`` counts Anderson's element-steps that
    were damped Picard steps in place of accelerated ones: its least-squares
    system was singular or ill-conditioned, or the element had given up on
    acceleration (see :class:`iqa.solvers.Anderson`).
    """

    y: Tensor
    statuses: tuple[Status, ...]
    steps: tuple[int, ...]
    residuals: Tensor
    relative_residuals: Tensor
    residual: Tensor
    method: str
    stop: StopMode
    tol: float
    fallbacks: int = 0
    iterates: list[Tensor] | None = field(default=None, repr=False)

    @property
    def status(self) -> Status:
        """The worst element status: CONVERGED only when every element converged."""
        return max(self.statuses, key=lambda s: s.severity)

    @property
    def converged(self) -> bool:
        return self.status is Status.CONVERGED

    @property
    def n_steps(self) -> int:
        """Evaluations of f made by the solve (the longest element's count)."""
        return int(self.residuals.shape[0])

    @property
    def stop_residuals(self) -> Tensor:
        """The residual history in the ``stop`` mode, [n_steps, B]."""
        return self.residuals if self.stop == "abs" else self.relative_residuals

    def history(self, b: int) -> Tensor:
        """Residual history (``stop`` mode) of batch element b, up to its decision."""
        return self.stop_residuals[: self.steps[b], b]
