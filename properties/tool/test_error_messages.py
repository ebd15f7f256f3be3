"""Bad input gets an error that names the problem: each message here is compared whole, not by a key phrase.

The mutation report (reports/mutation/) listed these messages among the survivors: a message emptied
(``raise TypeError(None)``), naming ``NoneType`` instead of the caller's type, or with its text changed passed
every property that matched a phrase of it. A message is what a user reads when a call goes wrong, so its whole
text is the contract here. A wrapper's defaults are pinned to the defaults of the function it wraps.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from iqa import analysis
from iqa.analysis.linearization import second_order_constant
from iqa.grad import AdjointOptions, Implicit, as_backward
from iqa.layer import ImplicitQueryAttention
from iqa.solvers import Picard, solve
from iqa.solvers.options import Solver, as_solver, option_error
from iqa.solvers.result import ConvergenceError
from iqa.variants.builtin import HopfieldAttention
from properties.tool.layers import NoScores

F64 = torch.float64
X = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)


def identity(y: torch.Tensor) -> torch.Tensor:
    return y


class NoMask(ImplicitQueryAttention):
    """A layer whose fixed_point_map takes no key_padding_mask."""

    def fixed_point_map(self, x):  # type: ignore[override]
        return super().fixed_point_map(x)


def raising(error: Exception) -> None:
    """Raise an error that a function returned (option_error builds its error for the caller to raise)."""
    raise error


@dataclasses.dataclass(frozen=True)
class Bare(Solver):
    """A solver with no options at all."""

    name = "bare"


CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("jacobian of a list", lambda: analysis.jacobian(identity, [1.0]), TypeError, "y must be a torch.Tensor, got list"),
    (
        "jacobian of integers",
        lambda: analysis.jacobian(identity, torch.zeros(2, 3, dtype=torch.int64)),
        TypeError,
        "y must have a floating dtype, got torch.int64",
    ),
    (
        "jacobian of a vector",
        lambda: analysis.jacobian(identity, torch.zeros(3, dtype=F64)),
        ValueError,
        "y must have shape [B, ...] with B >= 1 and at least one entry per element, got (3,)",
    ),
    (
        "spectrum of a non-finite map",
        lambda: analysis.spectrum(lambda y: y * float("nan"), X, method="dense"),
        ValueError,
        "the Jacobian at y has non-finite entries: no spectrum to compute",
    ),
    (
        "second-order constant without scores",
        lambda: second_order_constant(NoScores(4, 10).to(F64), X),
        TypeError,
        "NoScores has no score_matrix(x)/values(x): no second-order bound",
    ),
    (
        "consensus without scores",
        lambda: analysis.consensus_matrix(NoScores(4, 10).to(F64), X),
        TypeError,
        "NoScores has no score_matrix(x)/values(x): the consensus analysis needs a map of the form "
        "softmax(A Y^T) V (one head)",
    ),
    (
        "consensus of Y A^T scores",
        lambda: analysis.consensus_matrix(HopfieldAttention(4, 10).to(F64), X),
        TypeError,
        "HopfieldAttention has scores Y A^T: equal rows do not give uniform attention, so there is no consensus "
        "fixed point to analyse",
    ),
    (
        "empirical rate of a matrix of the wrong rank",
        lambda: analysis.empirical_rate(torch.ones(2, 2, 2)),
        ValueError,
        "residuals must be a tensor of shape [T] or [T, B], got torch.Size([2, 2, 2])",
    ),
    (
        "empirical rate of a list",
        lambda: analysis.empirical_rate([1.0, 0.5]),  # type: ignore[arg-type]
        ValueError,
        "residuals must be a tensor of shape [T] or [T, B], got [1.0, 0.5]",
    ),
    ("solve from a list", lambda: solve(identity, [0.0]), TypeError, "y0 must be a torch.Tensor, got list"),
    (
        "a solver that is neither a name nor an object",
        lambda: as_solver(3),  # type: ignore[arg-type]
        TypeError,
        "solver must be a name (picard, anderson) or a solver object such as iqa.Anderson(...), got int",
    ),
    (
        "options beside a solver object",
        lambda: as_solver(Picard(), {"damping": 0.5, "tol": 1.0}),
        ValueError,
        f"damping=, tol= given beside the solver object {Picard()!r}: set the options in the object "
        "(e.g. dataclasses.replace(solver, ...))",
    ),
    (
        "an option of a solver that has none",
        lambda: raising(option_error("ridge_x", Bare)),
        TypeError,
        "unknown option 'ridge_x' for Bare (its options: none)",
    ),
    (
        "options beside a backward object",
        lambda: as_backward(Implicit(), adjoint="picard", phantom_steps=3),
        ValueError,
        f"adjoint=, phantom_steps= given beside the backward object {Implicit()!r}: set the options in the object",
    ),
    (
        "an unknown adjoint method",
        lambda: AdjointOptions(method="newton"),
        ValueError,
        "unknown adjoint method 'newton'; choose one of picard, anderson or a solver object",
    ),
    (
        "an adjoint of the wrong type",
        lambda: Implicit(adjoint=3),  # type: ignore[arg-type]
        TypeError,
        "adjoint must be an iqa.AdjointOptions, a solver object or a solver name, got int",
    ),
    (
        "a padding mask for a map without one",
        lambda: NoMask(4, 10).to(F64)(X, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)),
        TypeError,
        "NoMask takes no key_padding_mask: its fixed_point_map(x) has no key_padding_mask keyword",
    ),
]


@pytest.mark.parametrize("call, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_whole_message_names_the_problem(call: Callable[[], Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        call()
    assert str(raised.value) == message


def test_convergence_error_names_the_solve_and_its_worst_element() -> None:
    solution = solve(lambda y: 2 * y + 1, torch.ones(2, 3, dtype=F64), tol=1e-12, max_iter=3)
    assert not solution.converged
    worst = max(range(2), key=lambda b: solution.statuses[b].severity)
    assert str(ConvergenceError(solution)) == (
        f"fixed-point solve (picard) ended with status {solution.status.name}: batch element {worst} has residual "
        f"{float(solution.residual[worst]):.3e} (abs) after {solution.steps[worst]} steps, tol=1.000e-12"
    )


@pytest.mark.parametrize(
    "wrapper, wrapped",
    [(analysis.jacobian_norm, analysis.norm_estimate), (analysis.power_norm, analysis.norm_estimate)],
    ids=["jacobian_norm", "power_norm"],
)
def test_a_wrapper_has_the_defaults_of_what_it_wraps(wrapper: Callable[..., Any], wrapped: Callable[..., Any]) -> None:
    """Calling the wrapper without an option must mean what calling the wrapped function without it means."""
    ours, theirs = inspect.signature(wrapper).parameters, inspect.signature(wrapped).parameters
    shared = [name for name in ours if name in theirs and ours[name].default is not inspect.Parameter.empty]
    assert shared, "no option in common"
    for name in shared:
        assert ours[name].default == theirs[name].default, f"{wrapper.__name__}'s {name} defaults differently"
