"""The solvers' options, bookkeeping and precision, where the broader solver properties rarely look.

Each test here pins a behaviour that a library mutant changed while every other property passed (the mutation
report of ``tox -e mutate`` names them): Anderson's ridge validation; an element that is non-finite from its
first evaluation; history 1, which must be damped Picard bit for bit (cycle detection included); the iterate
returned for an unconverged element when its residual is not monotone; the unrolled path when only the map's
parameters need gradients; the m x m system of a half-precision solve, formed in float32; no warnings from a
diverging element; an undamped Picard step that is f(y) itself; iterates kept only
when asked.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import Anderson, Picard, Status, solve
from iqa.solvers import MAX_PERIOD
from iqa.solvers.anderson import make_pairs
from iqa.solvers.tracker import relaxed
from properties.tool.test_solver_status import identical, rotations

F64 = torch.float64


@pytest.mark.parametrize("ridge", [True, False, math.inf, -math.inf, math.nan, -1e-12, -1, "1e-10", None])
def test_ridge_must_be_a_finite_nonnegative_number(ridge: object) -> None:
    """A bool, an infinite, NaN or negative ridge, or one that is not a number, is refused by name."""
    with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
        Anderson(ridge=ridge)  # type: ignore[arg-type]


@pytest.mark.parametrize("ridge", [0, 0.0, 1e-300, 1e-10, 1, 1e6])
def test_finite_nonnegative_ridges_are_accepted(ridge: float) -> None:
    assert Anderson(ridge=ridge).ridge == ridge


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_an_element_nonfinite_from_its_first_evaluation_returns_its_start(bad: float) -> None:
    """Element 0's f is non-finite at y0 already: it is NONFINITE at step 1 and, having seen no finite residual,
    returns y0 itself; element 1 (a contraction) converges as it would alone."""
    y0 = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)

    def f(y: Tensor) -> Tensor:
        out = 0.5 * y + 1.0
        return torch.cat((torch.full_like(out[:1], bad), out[1:]))

    sol = solve(f, y0, "anderson", tol=1e-10, max_iter=50)
    alone = solve(lambda y: 0.5 * y + 1.0, y0[1:], "anderson", tol=1e-10, max_iter=50)
    assert sol.statuses == (Status.NONFINITE, Status.CONVERGED)
    assert sol.steps[0] == 1
    assert torch.equal(sol.y[0], y0[0])
    assert torch.equal(sol.y[1], alone.y[0]) and sol.steps[1] == alone.steps[0]


@given(
    rotation=rotations(),
    mixing=st.sampled_from([1.0, 0.5]),
    max_iter=st.integers(1, 5 * MAX_PERIOD),
)
def test_history_one_is_damped_picard(rotation, mixing: float, max_iter: int) -> None:
    """With one stored pair no step is accelerated: Anderson(history=1, mixing=a) is Picard(damping=a) bit for bit:
    the same residual histories, statuses and step counts, CYCLE detected at the same step on maps of period
    2..MAX_PERIOD (rotations; undamped they cycle, damped they converge slowly). Unconverged elements return their
    best iterate rather than the last one, so only converged ones are compared by value."""
    f, y0, periods = rotation
    r = float(torch.linalg.vector_norm(f(y0) - y0, dim=-1).min())
    # A stopping rule, not an error bound: six decades below the smallest first residual, so within max_iter
    # undamped rotations cycle or run out of steps and only the fastest damped ones converge (all three reached).
    tol = r * 1e-6
    anderson = solve(f, y0, Anderson(history=1, mixing=mixing), tol=tol, max_iter=max_iter)
    picard = solve(f, y0, Picard(damping=mixing), tol=tol, max_iter=max_iter)
    note(f"periods={periods} anderson={anderson.statuses}/{anderson.steps} picard={picard.statuses}/{picard.steps}")
    event(f"mixing={mixing}: {sorted({s.name for s in picard.statuses})}")
    assert anderson.statuses == picard.statuses
    assert anderson.steps == picard.steps
    assert identical(anderson.residuals, picard.residuals)
    assert anderson.fallbacks == 0 and picard.fallbacks == 0
    for b, status in enumerate(picard.statuses):
        if status is Status.CONVERGED:
            assert torch.equal(anderson.y[b], picard.y[b])


@given(rotation=rotations(), history=st.integers(1, 4), max_iter=st.integers(2, 3 * MAX_PERIOD))
def test_an_unconverged_element_returns_its_best_iterate(rotation, history: int, max_iter: int) -> None:
    """On a rotation (a cycle; Anderson's secant step solves its linear map only where the history spans it), an
    element that does not converge returns the iterate of its smallest residual and that residual, found here
    from the kept iterates, while the other elements of the batch improve at other steps; a converged one
    returns the iterate that met tol."""
    f, y0, _periods = rotation
    tol = float(torch.linalg.vector_norm(f(y0) - y0, dim=-1).min()) * 1e-30  # below rounding: none converges
    sol = solve(f, y0, Anderson(history=history), tol=tol, max_iter=max_iter, keep_iterates=True)
    assert sol.iterates is not None
    event(f"history={history}: {sorted({s.name for s in sol.statuses})}")
    for e, status in enumerate(sol.statuses):
        residuals = sol.stop_residuals[: sol.steps[e], e]
        t = sol.steps[e] - 1 if status is Status.CONVERGED else int(residuals.nan_to_num(math.inf).argmin())
        note(f"element {e}: status {status.name}, residuals {residuals.tolist()}, expected iterate {t}")
        assert torch.equal(sol.y[e], sol.iterates[t][e]), f"element {e}: not iterate {t}"
        assert float(sol.residual[e]) == float(residuals[t]), f"element {e}: not iterate {t}'s residual"


@pytest.mark.parametrize("history", [2, 5])
def test_unrolled_anderson_differentiates_the_parameters_alone(history: int) -> None:
    """Only the map's parameter needs a gradient (y0 does not): the solve must still record its steps, so that the
    gradient through the unrolled Anderson iterations equals the one taken when y0 requires a gradient too, and
    matches central finite differences of the solve itself."""
    g = torch.Generator().manual_seed(1)
    n = 4
    A = 0.4 * torch.randn(n, n, dtype=F64, generator=g) / math.sqrt(n)
    b = torch.randn(2, n, dtype=F64, generator=g)
    y0 = torch.randn(2, n, dtype=F64, generator=g)
    weights = torch.randn(2, n, dtype=F64, generator=g)
    steps = 6  # a fixed budget: the unrolled map is smooth in theta (no stopping decision moves)

    def loss(theta: Tensor, start: Tensor) -> Tensor:
        f = lambda y: torch.tanh(y @ (theta * A).T + b)  # noqa: E731
        sol = solve(f, start, Anderson(history=history), tol=1e-300, max_iter=steps)
        return (weights * sol.y).sum()

    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    (alone,) = torch.autograd.grad(loss(theta, y0), theta)
    start = y0.clone().requires_grad_(True)
    (together,) = torch.autograd.grad(loss(theta, start), theta)
    h = 1e-5
    with torch.no_grad():
        numeric = (loss(theta + h, y0) - loss(theta - h, y0)) / (2 * h)
    assert torch.equal(alone, together)
    # central differences at h = 1e-5: truncation h^2 |L'''| / 6 ~ 2e-11 |L'''|, rounding 2 eps |L| / h ~ 4e-11 |L|
    # (both of order 1 here); seen 3e-12 and 7e-12
    assert abs(float(alone) - float(numeric)) <= 2e-10 * (1 + abs(float(numeric)))


@pytest.mark.parametrize("recorded", [False, True])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_history_is_solved_in_float32(dtype: torch.dtype, recorded: bool) -> None:
    """Residuals of size ~10^3 have squared norms ~10^6, beyond float16's range (65 504): G G^T is formed and
    solved in float32, so the step is the float64 Anderson step of the same stored pairs (to the dtype's
    rounding of the mix), no fallback; the next iterate keeps the dtype."""
    g = torch.Generator().manual_seed(0)
    batch, n, m = 2, 6, 3
    X = (300 * torch.randn(m, batch, n, dtype=F64, generator=g)).to(dtype)
    F = (X.double() + 400 * torch.randn(m, batch, n, dtype=F64, generator=g)).to(dtype)
    G = F - X  # as the solver forms it, in the dtype
    with torch.set_grad_enabled(recorded):
        pairs = make_pairs(X[0].clone().requires_grad_(recorded), m, differentiable=recorded)
        for t in range(m):
            pairs.push(X[t], F[t], G[t], np.zeros(batch))
        new, fell_back = pairs.next_iterate(X[-1], F[-1], 1.0, 1e-10, np.full(batch, m))
    assert new.dtype == dtype
    assert not fell_back.any()
    for b in range(batch):
        Gb = G[:, b].double()
        w = torch.linalg.solve(Gb @ Gb.T, torch.ones(m, dtype=F64))
        alpha = w / w.sum()
        expected = alpha @ F[:, b].double()
        terms = float(alpha.abs().sum()) * float(F[:, b].double().abs().max())  # sum|alpha| max|F|
        # the mix rounds each product and the sum to the dtype: m + 1 roundings of terms <= sum|alpha| max|F|;
        # alpha itself comes from a float32 solve of a system with condition number cond(G G^T)
        kappa = float(torch.linalg.cond(Gb @ Gb.T))
        bound = ((m + 1) * torch.finfo(dtype).eps + 4 * m * torch.finfo(torch.float32).eps * kappa) * terms
        assert float((new[b].detach().double() - expected).abs().max()) <= bound


def test_a_diverging_element_raises_no_warning() -> None:
    """An element whose iterates overflow brings Inf and NaN into its m x m system; its steps are refused by the
    checks, and numpy's floating-point warnings are not raised for it (they would be noise, or errors under
    -W error)."""
    y0 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=F64)
    growth = torch.tensor([[1e150], [0.5]], dtype=F64)

    def f(y: Tensor) -> Tensor:
        return growth * y + 1.0

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = solve(f, y0, "anderson", tol=1e-12, max_iter=60)
    assert sol.statuses[0] in (Status.NONFINITE, Status.DIVERGED)
    assert sol.statuses[1] is Status.CONVERGED


def test_a_mixed_step_without_stored_iterates_is_refused_by_name() -> None:
    """mixing < 1 needs the stored x_i; buffers made without them say so."""
    pairs = make_pairs(torch.zeros(1, 2, dtype=F64), 3, differentiable=False, store_x=False)
    for t in range(2):
        x = torch.tensor([[float(t), 1.0 - t]], dtype=F64)
        pairs.push(x, 0.5 * x + 1, 1 - 0.5 * x, np.ones(1))
    with pytest.raises(ValueError, match=r"mixing < 1 needs the stored iterates \(store_x=True\)"):
        pairs.next_iterate(x, 0.5 * x + 1, 0.5, 0.0, np.full(1, 2))


def test_a_stalling_element_gives_up_on_time_beside_an_improving_one() -> None:
    """Element 0 runs into :func:`trap` (Anderson stalls, gives up after STALL_STEPS steps without a new best and
    follows Picard from y0); element 1, y -> y - y^3 / 8, improves at every step (the secant steps converge only
    linearly to its triple root). Each element's residual history, status and step count in the batch equal its
    own solve alone: one element's improvements never reset another's stall count."""
    from properties.tool.test_solver_status import trap

    y0 = torch.tensor([[0.5], [0.9]], dtype=F64)

    def f(y: Tensor) -> Tensor:
        return torch.cat((trap(y[:1]), y[1:] - y[1:] ** 3 / 8))

    batched = solve(f, y0, "anderson", tol=1e-9, max_iter=80, memory=3)
    alone = [
        solve(trap, y0[:1], "anderson", tol=1e-9, max_iter=80, memory=3),
        solve(lambda y: y - y**3 / 8, y0[1:], "anderson", tol=1e-9, max_iter=80, memory=3),
    ]
    improving = alone[1].stop_residuals[:, 0]
    assert bool((improving[1:] < improving[:-1]).all()), "element 1 must improve at every step"
    assert alone[0].fallbacks > 0, "element 0 must give up"
    for b, one in enumerate(alone):
        said = f"element {b}: batched {batched.statuses[b]}/{batched.steps[b]}, alone {one.statuses[0]}/{one.steps[0]}"
        assert batched.statuses[b] is one.statuses[0] and batched.steps[b] == one.steps[0], said
        assert identical(batched.history(b), one.history(0))


@given(rotation=rotations(), steps=st.integers(1, 12))
def test_an_undamped_picard_step_is_f_itself(rotation, steps: int) -> None:
    """With damping 1 the next iterate is f(y), bit for bit (not y + 1 (f(y) - y), which rounds differently)."""
    f, y0, _periods = rotation
    sol = solve(f, y0, Picard(), tol=1e-300, max_iter=steps, keep_iterates=True)
    assert sol.iterates is not None and len(sol.iterates) == steps
    for before, after in zip(sol.iterates, sol.iterates[1:]):
        assert torch.equal(after, f(before))


@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_iterates_are_kept_only_when_asked(method: str) -> None:
    y0 = torch.tensor([[1.0, -2.0]], dtype=F64)
    kept = solve(lambda y: 0.5 * y, y0, method, tol=1e-300, max_iter=5, keep_iterates=True)
    assert kept.iterates is not None and len(kept.iterates) == 5
    assert solve(lambda y: 0.5 * y, y0, method, tol=1e-300, max_iter=5).iterates is None


@pytest.mark.parametrize("mixing", [1.0, 0.5])
@pytest.mark.parametrize("ridge", [0.0, 1e-2])
def test_the_recorded_step_with_dropped_pairs_matches_the_host_step(mixing: float, ridge: float) -> None:
    """Three elements that may use 1, 2 and 4 of their 4 newest pairs (after restarts and stale pairs), on the
    recorded path (torch, differentiable: dropped pairs zeroed in the system, 1 on their diagonal) and on the host
    (numpy): the same next iterate to the rounding of a 4 x 4 solve, no fallback; the element with one usable pair
    takes the damped Picard step bit for bit on both paths."""
    g = torch.Generator().manual_seed(5)
    batch, n, m = 3, 12, 4
    X = torch.randn(m + 2, batch, n, dtype=F64, generator=g)  # two more pushes than slots: the ring wraps
    F = X + torch.randn(m + 2, batch, n, dtype=F64, generator=g) / (1 + torch.arange(m + 2, dtype=F64))[:, None, None]
    usable = np.array([1, 2, m])
    steps = {}
    for recorded in (False, True):
        pairs = make_pairs(X[0], m, differentiable=recorded, store_x=mixing != 1.0)
        for t in range(m + 2):
            pairs.push(X[t], F[t], F[t] - X[t], np.zeros(batch))
        steps[recorded] = pairs.next_iterate(X[-1], F[-1], mixing, ridge, usable)
    for recorded, (new, fell_back) in steps.items():
        assert not fell_back.any(), recorded
        assert torch.equal(new[0], relaxed(X[-1], F[-1], mixing)[0]), f"one usable pair, recorded={recorded}"
    # a 2 x 2 and a 4 x 4 system of pairs of size ~3, sum |alpha| < 50 here: agreement within 1e-12 is ~1e3 eps
    assert torch.allclose(steps[True][0], steps[False][0], rtol=0.0, atol=1e-12), steps[True][0] - steps[False][0]
