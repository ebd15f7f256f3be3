"""Fixed-point solvers that say whether they converged.

``solve(f, y0, solver)`` looks for y* = f(y*) with a solver object:
:class:`Picard` (optionally damped, y <- (1 - a) y + a f(y)) or
:class:`Anderson` (acceleration from the last m iterates, with safeguards), or
their shorthand names "picard" and "anderson" with the options as keywords.
Dimension 0 of ``y0`` is the batch: every batch element gets its own residual
history, its own step count and its own :class:`Status`, and an element stops
changing as soon as its status is decided, so one slow element never perturbs
a finished one.

The residual of an iterate y is r(y) = ||f(y) - y|| (absolute) or
||f(y) - y|| / ||f(y)|| (relative), over all non-batch dimensions; ``stop``
selects which one is compared with ``tol``. A solution is ``CONVERGED`` only
when the residual of the iterate it returns is <= tol; its overall status is
never ``CONVERGED`` while any element is not.

Modules: :mod:`~iqa.solvers.result` (Status, Solution, ConvergenceError),
:mod:`~iqa.solvers.tracker` (histories, stall and cycle detection),
:mod:`~iqa.solvers.options` (the Solver base and which option belongs to whom),
:mod:`~iqa.solvers.picard`, :mod:`~iqa.solvers.anderson`, :mod:`~iqa.solvers.solve`.
"""

from iqa.solvers.anderson import (
    ALPHA_LIMIT,
    DEFAULT_HISTORY,
    RESTART_FACTOR,
    STALE_FACTOR,
    STALL_STEPS,
    Anderson,
)
from iqa.solvers.options import SHORTHANDS, Solver, as_solver, check_solve_options, option_error, owner_of
from iqa.solvers.picard import Picard
from iqa.solvers.result import NORM_FLOOR, STOP_MODES, ConvergenceError, Map, Solution, Status, StopMode
from iqa.solvers.solve import solve
from iqa.solvers.tracker import CYCLE_GAP, DIVERGENCE_FACTOR, MAX_PERIOD, STALL_RATIO

SHORTHANDS.update(picard=Picard, anderson=Anderson)
#: The shorthand names of the built-in solvers.
METHODS = tuple(SHORTHANDS)

__all__ = [
    "ALPHA_LIMIT",
    "CYCLE_GAP",
    "DEFAULT_HISTORY",
    "DIVERGENCE_FACTOR",
    "MAX_PERIOD",
    "METHODS",
    "NORM_FLOOR",
    "RESTART_FACTOR",
    "SHORTHANDS",
    "STALE_FACTOR",
    "STALL_RATIO",
    "STALL_STEPS",
    "STOP_MODES",
    "Anderson",
    "ConvergenceError",
    "Map",
    "Picard",
    "Solution",
    "Solver",
    "Status",
    "StopMode",
    "as_solver",
    "check_solve_options",
    "option_error",
    "owner_of",
    "solve",
]
