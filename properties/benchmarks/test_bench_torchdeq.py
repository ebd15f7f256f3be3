"""The peer, side by side: iqa against torchdeq on the same map, tolerance and data.

torchdeq (PyPI; ``tox -e bench`` installs it) is called through its own API
(the drivers are in :mod:`properties.benchmarks.peers`):
``torchdeq.solver.anderson_solver`` / ``fixed_point_iter`` for the forward
solve, under ``torch.no_grad()`` as its DEQ core does, and the IFT backward
of ``torchdeq.grad.backward_factory(grad_type="ift")`` (the
``torch.autograd.Function`` form its DEQ core uses by default). iqa runs
:func:`iqa.solve` and :func:`iqa.fixed_point` with ``backward="implicit"``.
Both get the same f (one closure), y0, tolerance (absolute forward residual,
relative adjoint residual), step limit and Anderson memory; each keeps its own
Anderson regularisation (torchdeq: lam = 1e-4 added to G G^T; iqa: 1e-10
times trace(G G^T) / m).

Measured per problem, as iqa / torchdeq ratios in the session summary:
f evaluations of the forward solve and of the adjoint solve (counted by
wrapping the maps), wall time of each (pytest-benchmark), the true residual
||f(y) - y|| of the point each forward returns, and each gradient's relative
error against an exact reference: the dense adjoint (I - J^T)^{-1} v at a
fixed point solved to 1e-13. torchdeq returns f(y_k) where it measured the
residual of y_k, so its returned point is typically one Picard step further
along than the one it tested.

Problems, for each selected variant tagged ``weight_dependent``: ``init``, a
batch of 8 sequences of 16 tokens of width 16 at nn.Linear's default init
(scale 1), and ``band``, the grid case of :mod:`properties.benchmarks.band`
with rho(J*) in [0.8, 0.95] on which Picard is slowest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor

from iqa import AdjointOptions, SolveRecord, fixed_point, solve
from iqa.analysis import jacobian, spectral_radius
from iqa.solvers import DEFAULT_HISTORY, Anderson, Picard, Solver
from iqa.variants import Tag, Variant
from properties.benchmarks import band as grid
from properties.benchmarks.conftest import median_seconds
from properties.strategies import Case
from properties.tags import requires

pytest.importorskip("torchdeq", reason="torchdeq is not installed (tox -e bench installs it)")
from properties.benchmarks import peers
from properties.benchmarks.peers import AdjointProbe, Counted

TOL = grid.TOL  # absolute forward residual and relative adjoint residual, the same for both libraries
MAX_ITER = grid.MAX_ITER
MEMORY = DEFAULT_HISTORY  # Anderson's history length, both libraries: iqa's default
REFERENCE_TOL = 1e-13  # float64: ~100 eps * ||y||, the tightest a forward solve reaches reliably
NORM_FLOOR = 1e-6  # a reference gradient below this norm would make relative errors meaningless: fail instead
METHODS = peers.METHODS
COUNTS = f"iqa / torchdeq, same map, tol {TOL:g}: f evaluations, residuals, gradient errors"
TIMES = f"iqa / torchdeq, same map, tol {TOL:g}: median wall time (s); iqa= is iqa run to torchdeq's residuals"


@dataclass
class Problem:
    """A layer, its input and what the gradients are taken with respect to."""

    name: str
    case: Case
    layer: Any
    x: Tensor
    weight: Tensor  # the loss is sum(y * weight): v = dL/dy is dense and not symmetric across tokens

    @property
    def wrt(self) -> list[Tensor]:
        return [*self.layer.parameters(), self.x]

    def map(self) -> Callable[[Tensor], Tensor]:
        return self.layer.fixed_point_map(self.x)

    def start(self) -> Tensor:
        return self.layer.initial_point(self.x).detach()


def _problem(variant: Variant, kind: str) -> Problem:
    if kind == "init":
        case = Case(batch=8, tokens=16, dim=16, dtype=torch.float64, scale=1.0, seed=0)
    else:
        case = grid.slowest(grid.band_or_skip(variant)).case
    layer = case.layer(variant)
    x = case.inputs().requires_grad_(True)
    weight = torch.randn(x.shape, dtype=x.dtype, generator=case.generator(2))
    return Problem(kind, case, layer, x, weight)


def _torchdeq_forward(method: str, f: Callable[[Tensor], Tensor], y0: Tensor) -> Tensor:
    return peers.torchdeq_forward(method, f, y0, tol=TOL, stop="abs", max_iter=MAX_ITER, memory=MEMORY)


def _torchdeq_ift(method: str, probe: AdjointProbe | None = None) -> Any:
    """torchdeq's IFT gradient functor, its backward solver optionally watched by ``probe``."""
    return peers.torchdeq_ift(method, tol=TOL, stop="rel", max_iter=MAX_ITER, memory=MEMORY, probe=probe)


def _ours(method: str) -> Solver:
    """iqa's solver for ``method``, with torchdeq's history length for Anderson."""
    return Anderson(history=MEMORY) if method == "anderson" else Picard()


def _iqa_output(
    problem: Problem, method: str, record: SolveRecord, tol: float = TOL, adjoint_tol: float = TOL
) -> Tensor:
    return fixed_point(
        problem.map(),
        problem.start(),
        "implicit",
        method=_ours(method),
        tol=tol,
        max_iter=MAX_ITER,
        adjoint=AdjointOptions(tol=adjoint_tol),
        record=record,
    )


def _torchdeq_output(problem: Problem, method: str, ift: Any) -> Tensor:
    f = problem.map()
    z = _torchdeq_forward(method, f, problem.start())
    return ift(None, f, z)[0]


def _loss(problem: Problem, y: Tensor) -> Tensor:
    return (y * problem.weight).sum()


def _residual(f: Callable[[Tensor], Tensor], y: Tensor) -> float:
    """max over the batch of ||f(y) - y||, the forward solves' stop measure."""
    with torch.no_grad():
        return float(torch.linalg.vector_norm((f(y) - y).flatten(1), dim=1).max())


def _flat(grads: tuple[Tensor, ...]) -> Tensor:
    return torch.cat([g.flatten() for g in grads])


def _gradient(problem: Problem, y: Tensor) -> Tensor:
    return _flat(torch.autograd.grad(_loss(problem, y), problem.wrt))


def _reference(problem: Problem) -> tuple[Tensor, float, float]:
    """The exact implicit gradient: dense adjoint at a tightly solved fixed point; max rho(J*); and the largest
    cond = ||(I - J*)^-1||_2 over the batch (what turns a residual into an error, whether or not rho < 1)."""
    f = problem.map()
    with torch.no_grad():
        tight = solve(f, problem.start(), "anderson", tol=REFERENCE_TOL, max_iter=10 * MAX_ITER)
    assert tight.converged, f"the reference solve did not reach {REFERENCE_TOL:g}: {tight.status.name}"
    y = tight.y.detach()
    J = jacobian(f, y).detach()
    eye = torch.eye(J.shape[-1], dtype=J.dtype)
    v = problem.weight.reshape(J.shape[0], -1, 1)
    g = torch.linalg.solve((eye - J).transpose(1, 2), v).reshape(y.shape)
    grads = torch.autograd.grad(f(y), problem.wrt, g)
    cond = float((1 / torch.linalg.svdvals(eye - J)[..., -1]).max())
    return _flat(grads), float(spectral_radius(f, y).max()), cond


@dataclass(frozen=True)
class Comparison:
    """The deterministic side of one (variant, problem, method): counts, residuals, gradient errors."""

    facts: dict[str, Any]
    matched_tol: float  # iqa's forward tol for the matched run: the residual torchdeq's forward reached
    matched_adjoint_tol: float  # and its adjoint tol: the relative residual torchdeq's adjoint reached


_COMPARISONS: dict[tuple[str, str, str], Comparison | str] = {}


def _compare(variant: Variant, kind: str, method: str) -> Comparison:
    """Everything but the times, once per (variant, problem, method). Skips Picard on a problem with
    rho(J*) >= 1 (causal's init problem: 1.01), where its iteration cannot converge."""
    key = (variant.name, kind, method)
    if key not in _COMPARISONS:
        _COMPARISONS[key] = _comparison(variant, kind, method)
    found = _COMPARISONS[key]
    if isinstance(found, str):
        pytest.skip(found)
    return found


def _comparison(variant: Variant, kind: str, method: str) -> Comparison | str:
    problem = _problem(variant, kind)
    reference, rho, cond = _reference(problem)
    if method == "picard" and rho >= 1:
        return f"Picard cannot converge on {variant.name}'s {kind} problem: rho(J*) = {rho:.3f} >= 1"
    ref_norm = float(reference.norm())
    assert ref_norm >= NORM_FLOOR, f"reference gradient norm {ref_norm:.1e} is below the floor {NORM_FLOOR:g}"
    plain = problem.map()

    f = Counted(problem.map())
    with torch.no_grad():
        ours = solve(f, problem.start(), _ours(method), tol=TOL, max_iter=MAX_ITER)
    g = Counted(problem.map())
    theirs = _torchdeq_forward(method, g, problem.start())

    record = SolveRecord()
    ours_grad = _gradient(problem, _iqa_output(problem, method, record))
    probe = AdjointProbe()
    theirs_grad = _gradient(problem, _torchdeq_output(problem, method, _torchdeq_ift(method, probe)))
    assert record.forward is not None and record.backward is not None and probe.residual is not None

    residual_tdq = _residual(plain, theirs)
    matched_tol, matched_adjoint_tol = min(TOL, residual_tdq), min(TOL, probe.residual)
    matched = SolveRecord()
    matched_grad = _gradient(problem, _iqa_output(problem, method, matched, matched_tol, matched_adjoint_tol))
    assert matched.forward is not None and matched.backward is not None

    def error(grad: Tensor) -> float:
        return float((grad - reference).norm()) / ref_norm

    facts = {
        "rho max": rho,
        "cond max": cond,
        "iqa status": f"{record.forward.status.name}/{record.backward.status.name}",
        "iqa= status": f"{matched.forward.status.name}/{matched.backward.status.name}",
        "fwd evals iqa": f.calls,
        "fwd evals iqa=": matched.forward.n_steps,
        "fwd evals tdq": g.calls,
        "bwd evals iqa": record.backward.n_steps,
        "bwd evals iqa=": matched.backward.n_steps,
        "bwd evals tdq": probe.calls,
        "residual iqa": _residual(plain, ours.y),
        "residual iqa=": _residual(plain, matched.forward.y),
        "residual tdq": residual_tdq,
        "adj residual iqa": float(record.backward.residual.max()),
        "adj residual iqa=": float(matched.backward.residual.max()),
        "adj residual tdq": probe.residual,
        "grad err iqa": error(ours_grad),
        "grad err iqa=": error(matched_grad),
        "grad err tdq": error(theirs_grad),
    }
    return Comparison(facts, matched_tol, matched_adjoint_tol)


PROBLEMS = ["init", "band"]
#: "iqa=" runs iqa to the residuals torchdeq's returned points actually have (forward and adjoint), so that
#: the times compare the same accuracy: torchdeq returns f(y_k) after testing y_k, one step past its test.
LIBRARIES = ["iqa", "iqa=", "tdq"]


def _row(variant: Variant, kind: str, method: str) -> str:
    return f"{variant.name} {kind} {method}"


def _record_counts(summary: Any, row: str, comparison: Comparison) -> None:
    table = summary(COUNTS)
    table.ratio("fwd evals ratio", "fwd evals iqa", "fwd evals tdq")
    table.ratio("bwd evals ratio", "bwd evals iqa", "bwd evals tdq")
    table.ratio("fwd evals= ratio", "fwd evals iqa=", "fwd evals tdq")
    table.ratio("bwd evals= ratio", "bwd evals iqa=", "bwd evals tdq")
    table.add(row, **comparison.facts)


def _record_time(summary: Any, row: str, column: str, seconds: float | None) -> None:
    table = summary(TIMES)
    for phase in ("fwd", "bwd"):
        table.ratio(f"{phase} ratio", f"{phase} iqa", f"{phase} tdq")
        table.ratio(f"{phase}= ratio", f"{phase} iqa=", f"{phase} tdq")
    table.add(row, **{column: seconds})


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", PROBLEMS)
def test_forward(benchmark, summary, variant: Variant, kind: str, method: str, library: str) -> None:
    """Wall time of the forward solve (no graph), each library on the same f, y0 and tol."""
    comparison = _compare(variant, kind, method)
    problem = _problem(variant, kind)
    f, y0 = problem.map(), problem.start()
    tol = comparison.matched_tol if library == "iqa=" else TOL

    def run() -> None:
        if library == "tdq":
            _torchdeq_forward(method, f, y0)
        else:
            with torch.no_grad():
                solve(f, y0, _ours(method), tol=tol, max_iter=MAX_ITER)

    benchmark.group = f"torchdeq-forward[{variant.name}-{kind}-{method}]"
    benchmark.pedantic(run, rounds=7, warmup_rounds=1)
    benchmark.extra_info.update(comparison.facts, tol=tol)
    row = _row(variant, kind, method)
    _record_counts(summary, row, comparison)
    _record_time(summary, row, f"fwd {library}", median_seconds(benchmark))
    if library != "tdq":
        status = comparison.facts[f"{library} status"]
        assert status == "CONVERGED/CONVERGED", f"{library}: forward/adjoint status {status}"


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("library", LIBRARIES)
@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", PROBLEMS)
def test_backward(benchmark, summary, variant: Variant, kind: str, method: str, library: str) -> None:
    """Wall time of the backward alone (the adjoint solve and one vjp through f); the forward is set-up."""
    comparison = _compare(variant, kind, method)
    problem = _problem(variant, kind)

    def setup() -> tuple[tuple[Tensor], dict[str, Any]]:
        if library == "tdq":
            y = _torchdeq_output(problem, method, _torchdeq_ift(method))
        elif library == "iqa=":
            y = _iqa_output(problem, method, SolveRecord(), comparison.matched_tol, comparison.matched_adjoint_tol)
        else:
            y = _iqa_output(problem, method, SolveRecord())
        return (_loss(problem, y),), {}

    def run(loss: Tensor) -> None:
        torch.autograd.grad(loss, problem.wrt)

    benchmark.group = f"torchdeq-backward[{variant.name}-{kind}-{method}]"
    benchmark.pedantic(run, setup=setup, rounds=7, warmup_rounds=1)
    benchmark.extra_info.update(comparison.facts)
    _record_time(summary, _row(variant, kind, method), f"bwd {library}", median_seconds(benchmark))
    if library == "iqa":
        facts = comparison.facts
        # Forward residual tol gives ||y - y*|| <= cond tol; the adjoint's relative residual tol gives a relative
        # error <= cond tol in g; the gradient inherits both, times ||df/dtheta|| / ||grad||: the factor 2 covers
        # that ratio (measured error / (cond tol): 0.05-0.55 on these problems). cond, not 1 / (1 - rho), which is
        # negative where rho(J*) >= 1 and Anderson still converges (causal's init problem: 1.006).
        bound = 2 * TOL * facts["cond max"]
        assert facts["grad err iqa"] <= bound, (
            f"iqa's implicit gradient error {facts['grad err iqa']:.1e} > {bound:.1e}"
        )
