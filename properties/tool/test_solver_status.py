"""The solvers report honestly, on maps whose answer is known in closed form.

Independent of the layer: affine contractions y -> A y + b (fixed point
(I - A)^-1 b), periodic maps (y -> -y + c, rotations by 2 pi / p), a map that
returns NaN or Inf at a chosen step, expanding maps, and a translation that makes
Anderson's least-squares system exactly singular. Every bound below is derived
from the map's contraction factor q = ||A||_2, the damping and the dtype's eps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import ConvergenceError, Solution, Status, solve
from iqa.solvers import ALPHA_LIMIT, DIVERGENCE_FACTOR, MAX_PERIOD, STALL_STEPS

DTYPES = (torch.float64, torch.float32)
Map = Callable[[Tensor], Tensor]


def eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def rows(t: Tensor) -> Tensor:
    """Per batch element 2-norm over every other dimension (the solver's residual norm), in float64."""
    return torch.linalg.vector_norm(t.double().reshape(t.shape[0], -1), dim=-1)


def identical(a: Tensor, b: Tensor) -> bool:
    """Bit for bit the same values, NaN matching NaN."""
    return a.shape == b.shape and bool(((a == b) | (a.isnan() & b.isnan())).all())


def residuals(f: Map, y: Tensor, stop: str) -> list[float]:
    """The stop-mode residual of y recomputed from f: ||f(y) - y|| or ||f(y) - y|| / ||f(y)||, per element."""
    fy = f(y)
    r = rows(fy - y)
    if stop == "rel":
        r = r / rows(fy)
    return r.tolist()


# --- strategies ---------------------------------------------------------------------------------------------------


@st.composite
def solver_options(draw: st.DrawFn, *, damping: bool = True) -> dict:
    """method, stop mode, and Picard's damping or Anderson's memory and mixing."""
    method = draw(st.sampled_from(["picard", "anderson"]))
    options: dict = {"method": method, "stop": draw(st.sampled_from(["abs", "rel"]))}
    relax = st.one_of(st.just(1.0), st.floats(0.25, 1.0)) if damping else st.just(1.0)
    if method == "picard":
        options["damping"] = draw(relax)
    else:
        options["memory"] = draw(st.integers(1, 6))
        options["mixing"] = draw(relax)
    return options


def relaxation(options: dict) -> float:
    """The Picard-step weight a: damping for Picard, mixing for Anderson (its fallback step)."""
    return float(options.get("damping", options.get("mixing", 1.0)))


@dataclass
class Affine:
    """f(y) = A y + b per batch element, A: [B, n, n] with ||A_b||_2 = q_b < 1, in ``dtype``."""

    A: Tensor
    b: Tensor
    y0: Tensor
    rho: float

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    def __call__(self, y: Tensor) -> Tensor:
        return (self.A @ y.unsqueeze(-1)).squeeze(-1) + self.b

    @property
    def q(self) -> Tensor:
        """||A_b||_2 of the matrices as stored (after the cast to dtype), in float64."""
        return torch.linalg.matrix_norm(self.A.double(), ord=2)

    @property
    def y_star(self) -> Tensor:
        """(I - A)^-1 b in float64: the exact fixed point of the stored map."""
        A = self.A.double()
        eye = torch.eye(A.shape[-1], dtype=torch.float64).expand_as(A)
        return torch.linalg.solve(eye - A, self.b.double())

    def rounding(self) -> Tensor:
        """delta_b: bound on ||fl(f(y) - y) - (f(y) - y)|| for iterates with ||y|| <= ||y*|| + ||y0 - y*||:
        each entry of A y + b - y sums n + 2 terms, so its error is <= (n + 2) eps (|A||y| + |b| + |y|)."""
        n = self.A.shape[-1]
        ys = self.y_star
        Y = rows(ys) + rows(self.y0.double() - ys)
        A_F = torch.linalg.matrix_norm(self.A.double())
        return (n + 2) * eps(self.dtype) * (A_F * Y + rows(self.b) + Y)


@st.composite
def affine_contractions(draw: st.DrawFn, q_max: float = 0.9, dtypes: tuple[torch.dtype, ...] = DTYPES) -> Affine:
    batch = draw(st.integers(1, 4))
    n = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    q = torch.tensor(draw(st.lists(st.floats(0.0, q_max), min_size=batch, max_size=batch)), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, n, n, dtype=torch.float64, generator=g)
    A = q[:, None, None] * M / torch.linalg.matrix_norm(M, ord=2).clamp_min(1e-300)[:, None, None]
    b = torch.randn(batch, n, dtype=torch.float64, generator=g)
    y_star = torch.linalg.solve(torch.eye(n, dtype=torch.float64) - A, b)
    # y0 = y* + d with ||d|| = rho ||y*||; rho <= (1 - q) / (2 q (1 + q)) keeps ||f(y)|| >= ||y*|| / 2 on every
    # iterate with residual <= r0 (their error is <= r0 / (1 - q) <= (1 + q) rho ||y*|| / (1 - q)).
    q_top = float(q.max())
    rho_max = 1.0 if q_top == 0 else min(1.0, (1 - q_top) / (2 * q_top * (1 + q_top)))
    rho = draw(st.floats(0.01, 1.0)) * rho_max
    d = torch.randn(batch, n, dtype=torch.float64, generator=g)
    d = d / rows(d).clamp_min(1e-300)[:, None] * (rho * rows(y_star))[:, None]
    return Affine(A=A.to(dtype), b=b.to(dtype), y0=(y_star + d).to(dtype), rho=rho)


# --- contractions -------------------------------------------------------------------------------------------------


@given(
    affine=affine_contractions(), options=solver_options(), tol_exponent=st.floats(1.0, 6.0), extra=st.integers(0, 8)
)
def test_affine_contraction_reaches_known_fixed_point(
    affine: Affine, options: dict, tol_exponent: float, extra: int
) -> None:
    """Picard and Anderson converge on y -> A y + b (||A||_2 = q < 1) within the a-priori step count and
    return y with ||y - y*|| <= (r + delta) / (1 - q), r the residual they report."""
    check_affine_solve(affine, options, tol_exponent, extra)


@given(
    affine=affine_contractions(q_max=0.5, dtypes=(torch.float16, torch.bfloat16)),
    options=solver_options(),
    tol_exponent=st.floats(0.5, 2.0),
)
def test_low_precision_is_solved_in_its_own_dtype(affine: Affine, options: dict, tol_exponent: float) -> None:
    """float16 and bfloat16 maps are solved as they are (Anderson solves its small m x m system in float32,
    which torch's CPU LU needs): the same bounds hold with that dtype's eps, and y keeps the dtype."""
    sol = check_affine_solve(affine, options, tol_exponent, 0)
    assert sol.y.dtype == affine.dtype


def check_affine_solve(affine: Affine, options: dict, tol_exponent: float, extra: int) -> Solution:
    """Solve y -> A y + b with max_iter = the a-priori step count + extra; check convergence, the step count
    (Picard) and the distance to the known fixed point."""
    f, q, ys = affine, affine.q, affine.y_star
    a = relaxation(options)
    q_eff = 1 - a * (1 - q)  # ||(1 - a) I + a A||_2 <= 1 - a (1 - q): the rate of a relaxed Picard step
    delta = affine.rounding()
    # a step adds (1 + q) delta to the true residual and the evaluation delta more: floor 2 delta / (1 - q_eff)
    noise = 2 * delta / (1 - q_eff)
    r0 = rows(f(affine.y0) - affine.y0) + delta
    tol_abs = float(noise.max()) * 10**tol_exponent
    # rel: ||f(y)|| >= ||y*|| / 2 on every iterate (see affine_contractions), so r <= tol_abs implies rel <= tol
    f_low = float((rows(ys) / 2).min().clamp_min(1e-300))
    tol = tol_abs if options["stop"] == "abs" else tol_abs / f_low
    # r_k <= q_eff^k r_0 + noise: below tol_abs after k* steps; the solve counts k* + 1 evaluations of f
    k_star = torch.ceil(torch.log(r0 / (tol_abs - noise)) / torch.log(1 / q_eff).clamp_min(1e-300)).clamp_min(1)
    k_star = torch.where(r0 <= tol_abs - noise, torch.zeros_like(k_star), k_star)
    max_iter = int(k_star.max()) + 1 + extra
    sol = solve(f, affine.y0, tol=tol, max_iter=max_iter, **options)
    note(f"q={q.tolist()} tol={tol:.3e} k*={k_star.tolist()} statuses={sol.statuses} steps={sol.steps}")
    event(f"{options['method']}, {affine.dtype}, stop={options['stop']}")
    assert sol.status is Status.CONVERGED
    if options["method"] == "picard":
        assert all(s <= k + 1 for s, k in zip(sol.steps, k_star.tolist()))
    r = torch.tensor(residuals(f, sol.y, "abs"), dtype=torch.float64)
    error = rows(sol.y.double() - ys)
    assert bool((r <= tol_abs if options["stop"] == "abs" else r <= tol * rows(f(sol.y))).all())
    assert bool((error <= (r + delta) / (1 - q)).all()), (error, (r + delta) / (1 - q))
    return sol


# --- cycles, non-finite values, divergence ------------------------------------------------------------------------


@st.composite
def rotations(draw: st.DrawFn) -> tuple[Map, Tensor, list[int]]:
    """y -> c + R_b (y - c): R_b rotates each 2-plane by 2 pi / p_b (p_b = 2 is y -> -y + 2c), period p_b."""
    batch = draw(st.integers(1, 4))
    planes = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from(DTYPES))
    periods = draw(st.lists(st.integers(2, MAX_PERIOD), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([2 * math.pi / p for p in periods], dtype=torch.float64)
    block = torch.stack([torch.stack([theta.cos(), -theta.sin()], -1), torch.stack([theta.sin(), theta.cos()], -1)], -2)
    R = torch.zeros(batch, 2 * planes, 2 * planes, dtype=torch.float64)
    for k in range(planes):
        R[:, 2 * k : 2 * k + 2, 2 * k : 2 * k + 2] = block
    c = torch.randn(batch, 2 * planes, dtype=torch.float64, generator=g)
    y0 = c + torch.randn(batch, 2 * planes, dtype=torch.float64, generator=g)
    R, c, y0 = R.to(dtype), c.to(dtype), y0.to(dtype)

    def f(y: Tensor) -> Tensor:
        return c + (R @ (y - c).unsqueeze(-1)).squeeze(-1)

    return f, y0, periods


@given(rotation=rotations(), max_iter=st.integers(1, 6 * MAX_PERIOD), tol_exponent=st.floats(1.0, 6.0))
def test_known_cycles_are_reported_as_cycles(rotation: tuple[Map, Tensor, list[int]], max_iter: int, tol_exponent):
    """Undamped Picard on a map of period p <= MAX_PERIOD never CONVERGES: it is a CYCLE once the detector has
    seen two windows of MAX_PERIOD steps, and MAX_ITER before that."""
    f, y0, periods = rotation
    r = min(residuals(f, y0, "abs"))  # every iterate has residual 2 sin(pi / p) ||y0 - c|| (rotations are isometries)
    tol = r / 10**tol_exponent
    sol = solve(f, y0, "picard", tol=tol, max_iter=max_iter)
    note(f"periods={periods} statuses={sol.statuses} steps={sol.steps}")
    detectable = max_iter >= 2 * MAX_PERIOD
    event(f"detectable={detectable}")
    assert Status.CONVERGED not in sol.statuses
    expected = Status.CYCLE if detectable else Status.MAX_ITER
    assert sol.statuses == (expected,) * len(periods)
    assert all(s <= min(max_iter, 2 * MAX_PERIOD) for s in sol.steps)


@given(
    affine=affine_contractions(),
    options=solver_options(),
    bad_step=st.integers(1, 12),
    value=st.sampled_from([math.nan, math.inf, -math.inf]),
    data=st.data(),
)
def test_nonfinite_value_stops_that_element_at_once(affine: Affine, options: dict, bad_step: int, value, data):
    """f returning NaN or +-Inf for some elements at evaluation k makes each of them, unless the clean solve
    decided it earlier, NONFINITE with steps == k (no evaluation after it counts) and a finite returned
    iterate; every other element ends as in the clean solve."""
    batch = affine.A.shape[0]
    bad = data.draw(st.sets(st.integers(0, batch - 1), min_size=1), label="bad elements")
    calls = [0]

    def f(y: Tensor) -> Tensor:
        calls[0] += 1
        out = affine(y)
        if calls[0] == bad_step:
            out = out.clone()
            out[sorted(bad), 0] = value
        return out

    tol = float(affine.rounding().min()) * 1e-3  # below the rounding floor: only an exact fixed point converges
    clean = solve(affine, affine.y0, tol=tol, max_iter=bad_step + 4, **options)
    sol = solve(f, affine.y0, tol=tol, max_iter=bad_step + 4, **options)
    note(f"bad={bad} clean={clean.statuses}/{clean.steps} statuses={sol.statuses} steps={sol.steps}")
    hit = {b for b in bad if clean.steps[b] >= bad_step}
    event(f"elements hit: {'all' if len(hit) == batch else 'some' if hit else 'none'}")
    for b in range(batch):
        if b in hit:
            assert sol.statuses[b] is Status.NONFINITE
            assert sol.steps[b] == bad_step
            assert not math.isfinite(float(sol.residuals[bad_step - 1, b]))
            assert bool(torch.isfinite(sol.y[b]).all())
        else:
            assert (sol.statuses[b], sol.steps[b]) == (clean.statuses[b], clean.steps[b])
    assert (sol.status is Status.NONFINITE) == bool(hit)
    if len(hit) == batch:
        assert sol.n_steps == bad_step == calls[0]


@given(
    batch=st.integers(1, 4),
    n=st.integers(1, 4),
    dtype=st.sampled_from(DTYPES),
    growth=st.floats(1.5, 4.0),
    damping=st.one_of(st.just(1.0), st.floats(0.5, 1.0)),
    seed=st.integers(0, 2**31 - 1),
)
def test_expanding_map_is_diverged(batch: int, n: int, dtype, growth: float, damping: float, seed: int):
    """y -> g y + c with g > 1: a relaxed Picard step multiplies the residual by s = 1 + a (g - 1), so it
    passes DIVERGENCE_FACTOR times the first at t = 1 + log(factor) / log(s); DIVERGED is decided at the first
    multiple of MAX_PERIOD after that."""
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(batch, n, dtype=torch.float64, generator=gen).to(dtype)
    y0 = torch.randn(batch, n, dtype=torch.float64, generator=gen).to(dtype)
    g = torch.tensor(growth, dtype=dtype)
    s = 1 + damping * (float(g) - 1)
    y_star = c.double() / (1 - float(g))
    # y_t - y* = s^t (y0 - y*) is computed with an absolute error of ~ 4 t eps (|y_t| + |y*|) per entry, a
    # relative one of ~ 4 t eps (1 + 2 ||y*|| / ||y0 - y*||) on the residual ratio: t moves by that / log(s)
    first_t = 1 + math.log(DIVERGENCE_FACTOR) / math.log(s)
    t_max = first_t + MAX_PERIOD
    spread = float((rows(y_star) / rows(y0.double() - y_star).clamp_min(1e-300)).max())
    band = 4 * t_max * eps(dtype) * (1 + 2 * spread) / math.log(s)
    lo = MAX_PERIOD * math.ceil((first_t - band) / MAX_PERIOD)
    hi = MAX_PERIOD * math.ceil((first_t + band) / MAX_PERIOD)
    r1 = min(residuals(lambda y: g * y + c, y0, "abs"))
    assume(r1 > 0)
    # residuals only grow from r1: a tol below it can never be met
    sol = solve(lambda y: g * y + c, y0, "picard", tol=r1 / 2, max_iter=hi + MAX_PERIOD, damping=damping)
    note(f"s={s} first_t={first_t} band={band} steps={sol.steps}")
    assert sol.statuses == (Status.DIVERGED,) * batch
    assert all(lo <= t <= hi for t in sol.steps)


# --- honest reports ------------------------------------------------------------------------------------------------


@dataclass
class Mixed:
    """A batch whose elements behave differently: y -> a_b y + c_b with a_b by kind, fast (0.2) or slow (0.97)
    contraction, a 2-cycle (-1), or a contraction (0.5) whose f turns NaN from evaluation ``nan_step`` on.

    f acts elementwise on [B, n], so element b of f(y) depends on y[b] alone, bit for bit.
    """

    a: Tensor
    c: Tensor
    y0: Tensor
    kinds: list[str]
    nan_step: int
    calls: int = 0

    SLOPES: ClassVar[dict[str, float]] = {"fast": 0.2, "slow": 0.97, "cycle": -1.0, "nan": 0.5}

    def clean(self, y: Tensor) -> Tensor:
        """f without the NaN: the map every residual is honestly measured with."""
        return self.a * y + self.c

    def __call__(self, y: Tensor) -> Tensor:
        self.calls += 1
        out = self.clean(y)
        if self.calls >= self.nan_step:
            poisoned = torch.tensor([k == "nan" for k in self.kinds], device=y.device)[:, None]
            out = torch.where(poisoned, torch.full_like(out, math.nan), out)
        return out

    def fresh(self) -> Mixed:
        """The same problem with its evaluation counter at zero."""
        self.calls = 0
        return self

    def element(self, b: int) -> Map:
        """f restricted to element b, as a batch of one: same values and the same NaN step."""

        def f(y: Tensor) -> Tensor:
            full = self.y0.clone()
            full[b] = y[0]
            return self(full)[b : b + 1]

        return f


@st.composite
def mixed_problems(draw: st.DrawFn) -> Mixed:
    batch = draw(st.integers(1, 4))
    n = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    kinds = draw(st.lists(st.sampled_from(sorted(Mixed.SLOPES)), min_size=batch, max_size=batch))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([Mixed.SLOPES[k] for k in kinds], dtype=torch.float64)[:, None].to(dtype)
    c = torch.randn(batch, n, dtype=torch.float64, generator=g).to(dtype)
    y0 = torch.randn(batch, n, dtype=torch.float64, generator=g).to(dtype)
    return Mixed(a=a, c=c, y0=y0, kinds=kinds, nan_step=draw(st.integers(1, 40)))


@given(problem=mixed_problems(), options=solver_options(), tol=st.floats(1e-5, 1e-2), max_iter=st.integers(1, 80))
def test_converged_exactly_when_residual_within_tol(problem: Mixed, options: dict, tol: float, max_iter: int):
    """A solution reported CONVERGED has residual <= tol, recomputed from f at the returned y; no other status
    has; and the overall status is CONVERGED only when every element is."""
    sol = solve(problem.fresh(), problem.y0, tol=tol, max_iter=max_iter, **options)
    recomputed = residuals(problem.clean, sol.y, options["stop"])
    # the recomputation (float64 norm of the dtype difference) differs from the solver's by <= n eps relative
    slack = problem.y0[0].numel() * eps(problem.y0.dtype)
    note(f"kinds={problem.kinds} statuses={sol.statuses} reported={sol.residual.tolist()} recomputed={recomputed}")
    for status in set(sol.statuses):
        event(f"{options['method']}: {status.name}")
    for b, status in enumerate(sol.statuses):
        reported = float(sol.residual[b])
        if status is Status.CONVERGED:
            assert reported <= tol
            assert recomputed[b] <= tol * (1 + slack)
        else:
            assert not reported <= tol
            if status is not Status.NONFINITE:
                assert not recomputed[b] <= tol * (1 - slack)
        assert sol.history(b).numel() == sol.steps[b]
    assert (sol.status is Status.CONVERGED) == all(s is Status.CONVERGED for s in sol.statuses)
    assert sol.status.severity == max(s.severity for s in sol.statuses)


@given(problem=mixed_problems(), options=solver_options(), tol=st.floats(1e-5, 1e-2), max_iter=st.integers(1, 80))
def test_raise_on_failure_names_status_and_residual(problem: Mixed, options: dict, tol: float, max_iter: int):
    """raise_on_failure raises ConvergenceError exactly when the solve did not converge; the message names the
    overall status and the residual of the first element with that status, and carries the Solution."""
    reference = solve(problem.fresh(), problem.y0, tol=tol, max_iter=max_iter, **options)
    if reference.converged:
        sol = solve(problem.fresh(), problem.y0, tol=tol, max_iter=max_iter, raise_on_failure=True, **options)
        assert sol.converged
        event("converged: nothing raised")
        return
    with pytest.raises(ConvergenceError, match=rf"\b{reference.status.name}\b") as info:
        solve(problem.fresh(), problem.y0, tol=tol, max_iter=max_iter, raise_on_failure=True, **options)
    worst = reference.statuses.index(reference.status)
    message = str(info.value)
    event(f"raised {reference.status.name}")
    assert f"{float(reference.residual[worst]):.3e}" in message
    assert f"tol={tol:.3e}" in message
    assert info.value.solution.statuses == reference.statuses


@given(problem=mixed_problems(), options=solver_options(), tol=st.floats(1e-5, 1e-2), max_iter=st.integers(1, 80))
def test_elements_are_solved_independently(problem: Mixed, options: dict, tol: float, max_iter: int):
    """Element b of a batched solve equals the solve of element b alone: a slow, cycling or NaN element
    never changes another's iterate, status, step count or residual history; and once an element is decided
    its history rows repeat its final residual (it is frozen)."""
    both = solve(problem.fresh(), problem.y0, tol=tol, max_iter=max_iter, **options)
    for b in range(problem.y0.shape[0]):
        one = solve(problem.fresh().element(b), problem.y0[b : b + 1], tol=tol, max_iter=max_iter, **options)
        note(f"b={b} kind={problem.kinds[b]} batched={both.statuses[b]}/{both.steps[b]} alone={one.statuses}")
        assert one.statuses[0] is both.statuses[b]
        assert one.steps[0] == both.steps[b]
        assert identical(one.y[0], both.y[b])
        assert identical(one.history(0), both.history(b))
        frozen = both.stop_residuals[both.steps[b] - 1 :, b]
        if problem.kinds[b] != "nan":  # a poisoned f changes its value at a frozen y: nothing to repeat
            assert bool((frozen == frozen[0]).all())
    event(f"{options['method']}: kinds {sorted(set(problem.kinds))}")


# --- Anderson's safeguards -----------------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 3),
    n=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    memory=st.integers(2, 6),
    mixing=st.sampled_from([1.0, 0.75, 0.5, 0.25]),
    run=st.integers(2, 12),
    data=st.data(),
)
def test_anderson_falls_back_on_singular_system(batch, n, dtype, memory, mixing, run, data):
    """y -> min(y + c, y*) (c > 0) translates by c until it meets y*: while it does, every residual
    f(y_i) - y_i equals c, so G G^T has identical rows and, without a ridge, is exactly singular. Anderson
    must take Picard steps y + mixing c there, bit for bit those of damped Picard, count them in
    ``fallbacks``, and still converge.

    c, y0 and mixing are dyadic (multiples of 1/8), so every sum and difference here is exact in either dtype
    and the residuals are bit for bit equal.
    """
    eighths = st.lists(st.integers(-32, 32), min_size=batch * n, max_size=batch * n)
    y0 = torch.tensor(data.draw(eighths), dtype=dtype).reshape(batch, n) / 8
    steps = st.lists(st.integers(4, 12), min_size=batch * n, max_size=batch * n)
    c = torch.tensor(data.draw(steps), dtype=dtype).reshape(batch, n) / 8
    y_star = y0 + (run + 0.5) * c  # every coordinate meets y* at the same step: run + 0.5 translations away

    def f(y: Tensor) -> Tensor:
        return torch.minimum(y + c, y_star)

    # iterates y_0..y_J are all > c below y* (translation phase): J = ceil((run - 0.5) / mixing) - 1
    J = math.ceil((run - 0.5) / mixing) - 1
    # then f = y*: from y_(J+1) (residual <= ||c||) a relaxed step shrinks the residual by 1 - mixing. Each
    # step rounds y by <= 2 eps |y| (the iterates run from y0 to y*), which accumulates to <= 2 eps max|y| /
    # mixing per coordinate: tol is twice that floor, and the steps are counted to tol / 2 in exact arithmetic.
    largest = float(torch.maximum(y0.abs().max(), y_star.abs().max()))
    floor = math.sqrt(n) * 2 * eps(dtype) * largest / mixing
    tol = 2 * floor
    c_norm = float(torch.linalg.vector_norm(c.double(), dim=1).max())
    shrink = 1 if mixing == 1 else math.ceil(math.log(c_norm / (tol - floor)) / math.log(1 / (1 - mixing)))
    max_iter = J + 2 + shrink  # iterate y_i is evaluated at step i + 1
    sol = solve(f, y0, "anderson", tol=tol, max_iter=max_iter, memory=memory, mixing=mixing, ridge=0.0)
    picard = solve(f, y0, "picard", tol=tol, max_iter=max_iter, damping=mixing)
    note(f"J={J} statuses={sol.statuses} steps={sol.steps} fallbacks={sol.fallbacks} picard steps={picard.steps}")
    event(f"mixing={mixing}")
    assert sol.status is Status.CONVERGED
    assert torch.equal(sol.residuals[: J + 2], picard.residuals[: J + 2])
    # the Anderson steps after observing y_1..y_J are fallbacks (after y_0 it is a plain Picard step)
    assert sol.fallbacks >= J * batch
    # only active elements count, at most once per Anderson step (every step after the first, before the last)
    assert sol.fallbacks <= sum(max(0, s - 2) for s in sol.steps)


@pytest.mark.parametrize("recorded", [False, True])
def test_anderson_falls_back_where_lu_misses_the_singularity(recorded: bool) -> None:
    """The case thorough found: c = (10, 9, 5) / 8, ||c||^2 = 206 / 64, and G G^T = a [[1, 1], [1, 1]] exactly,
    yet LU computes the pivot a - a (1/a) a, which is not 0 for this a, and "solves" it (alpha (0.195, 0.805),
    a step back along the history). Without a ridge the numerically singular system must give the Picard step,
    on the host path and on the recorded (unrolled) one alike."""
    c = torch.tensor([[10.0, 9.0, 5.0]], dtype=torch.float64) / 8
    y0 = torch.zeros(1, 3, dtype=torch.float64)
    y_star = y0 + 6.5 * c

    def f(y: Tensor) -> Tensor:
        return torch.minimum(y + c, y_star)

    start = y0.requires_grad_() if recorded else y0
    with torch.set_grad_enabled(recorded):
        sol = solve(f, start, "anderson", tol=1e-12, max_iter=10, memory=3, ridge=0.0)
        picard = solve(f, start, "picard", tol=1e-12, max_iter=10)
    assert sol.status is Status.CONVERGED
    assert torch.equal(sol.residuals[:8].detach(), picard.residuals[:8].detach())
    assert sol.fallbacks >= 5


@given(
    batch=st.integers(1, 4),
    n=st.integers(4, 12),
    m=st.integers(2, 6),
    weights=st.lists(st.floats(-2.0, 2.0).filter(lambda w: abs(w) > 0.1), min_size=5, max_size=5),
    recorded=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_anderson_falls_back_on_a_rank_deficient_history(batch, n, m, weights, recorded, seed) -> None:
    """Without a ridge, a history whose newest residual g_m is a combination of the others (rounded, so LU sees a
    pivot of rounding size, not 0) has no meaningful alpha: every element falls back to the Picard step, on the
    host path and on the recorded one. With ridge 1e-10 the same history is a sound system and is used."""
    from iqa.solvers.anderson import make_pairs

    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, batch, n, dtype=torch.float64, generator=g)
    G = torch.randn(m, batch, n, dtype=torch.float64, generator=g)
    G[-1] = sum(w * G[i] for i, w in zip(range(m - 1), weights))
    F = X + G
    pairs = make_pairs(X[0], m, differentiable=recorded)
    for t in range(m):
        pairs.push(X[t], F[t], F[t] - X[t], np.zeros(batch))
    usable = np.full(batch, m)
    new, fell_back = pairs.next_iterate(X[-1], F[-1], 1.0, 0.0, usable)
    assert fell_back.all(), f"a rank-deficient history was used: fell back {fell_back.tolist()}"
    assert torch.equal(new, F[-1])  # the Picard step (mixing 1): f(y) itself
    _, ridged = pairs.next_iterate(X[-1], F[-1], 1.0, 1e-10, usable)
    event(f"with a ridge: {int(ridged.sum())} of {batch} fell back (sum |alpha| > ALPHA_LIMIT)")


def test_one_singular_element_leaves_the_others_accelerated() -> None:
    """When one element's system is exactly singular, only that element falls back: the regular one takes its
    Anderson step (numpy's LAPACK gufunc gives the singular element NaN alone; np.linalg.solve, its fallback,
    refuses the whole batch, which is then solved element by element)."""
    from iqa.solvers.anderson import make_pairs

    g = torch.Generator().manual_seed(0)
    X = torch.randn(3, 2, 5, dtype=torch.float64, generator=g)
    G = torch.randn(3, 2, 5, dtype=torch.float64, generator=g)
    G[:, 0] = torch.tensor([1.0, 0.5, 0.25, 0.0, 2.0], dtype=torch.float64)  # element 0: three equal residuals
    F = X + G
    pairs = make_pairs(X[0], 3, differentiable=False)
    for t in range(3):
        pairs.push(X[t], F[t], F[t] - X[t], np.zeros(2))
    usable = np.full(2, 3)
    new, fell_back = pairs.next_iterate(X[-1], F[-1], 1.0, 0.0, usable)
    assert fell_back.tolist() == [True, False]
    assert torch.equal(new[0], F[-1, 0])  # the Picard step for the singular element
    # the regular element's step: alpha from its own 3 x 3 system, solved densely here
    Gb = G[:, 1]
    w = torch.linalg.solve(Gb @ Gb.T, torch.ones(3, dtype=torch.float64))
    alpha = w / w.sum()
    # a 3 x 3 Gram solve of Gaussian residuals (cond ~1e2) on the host vs torch here: ~cond n eps, far below 1e-10
    assert torch.allclose(new[1], alpha @ F[:, 1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("recorded", [False, True])
@pytest.mark.parametrize("dtype", [*DTYPES, torch.float16, torch.bfloat16])
def test_anderson_falls_back_on_a_step_that_overflows(dtype: torch.dtype, recorded: bool) -> None:
    """A sound system whose step is not finite: residuals g_0 = (10, 1), g_1 = (9, 1) give alpha = (-9, 10) exactly
    (alpha_0 + 9 = 0 zeroes the first coordinate; G G^T has det 1, far from singular), and sum |alpha| = 19 is well
    inside ALPHA_LIMIT. With the first coordinate of the older f(x) at 0.9 x the dtype's max, alpha_0 f_0
    overflows there (to -Inf, and to +Inf where that coordinate is -0.9 x the max; the other coordinate stays
    finite, so both a row's max and its min must be checked): those elements must fall back to the Picard step,
    f(y) itself (mixing 1). The element between them, the same history with f(x) of size 1, takes the Anderson
    step alpha F: each element's step is checked on its own row."""
    from iqa.solvers.anderson import make_pairs

    G = torch.tensor([[[10.0, 1.0]], [[9.0, 1.0]]], dtype=dtype).expand(2, 3, 2).contiguous()  # [pair, batch, n]
    F = torch.ones_like(G)
    F[0, 0, 0] = 0.9 * torch.finfo(dtype).max  # element 0: only alpha_0 f_0 overflows (no Inf - Inf, no NaN)
    F[0, 2, 0] = -0.9 * torch.finfo(dtype).max  # element 2: the same, to +Inf
    F[1] *= 0.5  # keeps the two pairs' f distinct, so element 1's step differs from f(y)
    X = F - G  # rounds to F at the large size; only G enters the system
    with torch.set_grad_enabled(recorded):
        start = X[0].clone().requires_grad_(recorded)
        pairs = make_pairs(start, 2, differentiable=recorded)
        for t in range(2):
            pairs.push(X[t], F[t], G[t], np.zeros(3))
        new, fell_back = pairs.next_iterate(X[-1], F[-1], 1.0, 0.0, np.full(3, 2))
    assert fell_back.tolist() == [True, False, True], f"fell back {fell_back.tolist()}: {new}"
    assert torch.equal(new[0].detach(), F[-1, 0]) and torch.equal(new[2].detach(), F[-1, 2])
    # the Gram entries (101, 91, 82) are exact integers, so only the 2 x 2 solve rounds: at worst cond eps
    # sum|alpha| (~6e5 eps), seen at most 124 eps (float32, recorded path); 2e3 eps keeps 16x room and
    # still tells the Anderson step (-4) from the Picard step f(y) (0.5). In half precision the system is solved
    # in float32 or float64 and the step (-4) rounded once to the dtype: within 2 eps; 8 eps
    expected = (-9 * F[0, 1].double() + 10 * F[1, 1].double()).to(dtype)
    atol = (8 if dtype in (torch.float16, torch.bfloat16) else 2e3) * torch.finfo(dtype).eps
    assert torch.allclose(new[1].detach(), expected, rtol=0, atol=atol)


@given(
    batch=st.integers(1, 3),
    n=st.integers(2, 6),
    rho=st.floats(0.5, 0.99),
    max_iter=st.integers(2, 12),
    memory=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_anderson_returns_the_iterate_that_met_tol_or_its_best(batch, n, rho, max_iter, memory, seed) -> None:
    """The module's promise: a converged element returns the iterate that met tol and that residual; any other
    its best iterate and that iterate's residual, found here from the kept iterates and residual history (the
    history row t is the residual of iterate t). Linear maps of spectral radius rho with a short budget, so that
    some elements stop unconverged and the best is not always the last."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, n, n, dtype=torch.float64, generator=g)
    M = M * (rho / torch.linalg.eigvals(M).abs().amax(dim=-1))[:, None, None]
    b = torch.randn(batch, n, dtype=torch.float64, generator=g)

    def f(y: Tensor) -> Tensor:
        return (M @ y[..., None]).squeeze(-1) + b

    y0 = torch.randn(batch, n, dtype=torch.float64, generator=g)
    sol = solve(f, y0, "anderson", tol=1e-6, max_iter=max_iter, memory=memory, keep_iterates=True)
    assert sol.iterates is not None
    event(f"{sum(s is Status.CONVERGED for s in sol.statuses)} of {batch} converged")
    for e in range(batch):
        history = sol.stop_residuals[: sol.steps[e], e]
        t = sol.steps[e] - 1 if sol.statuses[e] is Status.CONVERGED else int(history.argmin())
        assert torch.equal(sol.y[e], sol.iterates[t][e]), f"element {e}: not iterate {t}"
        assert float(sol.residual[e]) == float(history[t]), f"element {e}: not iterate {t}'s residual"


def trap(y: Tensor) -> Tensor:
    """y -> y/2 + y^2/4 for y >= 0 (fixed point 0), y -> y - 1 for y < 0 (a translation: no fixed point).

    Picard from y0 in (0, 1] stays in [0, 1], where 0 <= f(y) <= 3y/4: it converges to 0. Anderson's
    first accelerated step is the secant root of g(y) = f(y) - y = -y/2 + y^2/4 through two positive
    iterates; g is strictly convex, so that root lies left of g's own root 0, inside the trap.
    """
    return torch.where(y >= 0, y / 2 + y * y / 4, y - 1)


@given(
    y0=st.lists(st.floats(0.125, 1.0), min_size=1, max_size=3),
    memory=st.integers(2, 8),
    mixing=st.sampled_from([1.0, 0.75, 0.5, 0.25]),
)
def test_anderson_gives_up_and_follows_picard_from_the_start(y0, memory, mixing):
    """Where acceleration stalls but Picard converges, Anderson converges too: after STALL_STEPS steps
    without a new best residual it restarts from y0 with damped Picard steps, bit for bit Picard's.

    On :func:`trap`, in float64: step 1 evaluates y0, step 2 the Picard iterate, step 3 the secant root in
    the trap (residual 1, above the best one). No later step in the trap improves the best, so the element
    gives up at step 2 + STALL_STEPS and its next iterate is Picard's second. Its history therefore ends
    with Picard's from Picard's second residual on, it takes STALL_STEPS + 1 more evaluations than Picard,
    and every step from giving up to convergence is counted as a fallback.
    """
    start = torch.tensor(y0, dtype=torch.float64)
    # Picard's rate near 0 is 1 - mixing / 2 <= 7/8 from a residual <= 1/4: ~150 steps reach 1e-9, 400 leave room.
    tol, max_iter = 1e-9, 400
    anderson = solve(trap, start, "anderson", tol=tol, max_iter=max_iter, memory=memory, mixing=mixing)
    picard = solve(trap, start, "picard", tol=tol, max_iter=max_iter, damping=mixing)
    note(f"anderson={anderson.statuses}/{anderson.steps} fallbacks={anderson.fallbacks} picard={picard.steps}")
    assert picard.status is Status.CONVERGED
    assert anderson.status is Status.CONVERGED, (
        f"Anderson did not fall back to Picard and converge: {anderson.statuses}"
    )
    for b, picard_steps in enumerate(picard.steps):
        assert anderson.steps[b] == picard_steps + STALL_STEPS + 1, (
            f"Anderson did not fall back to Picard after STALL_STEPS: {anderson.steps[b]} steps, Picard {picard_steps}"
        )
        assert torch.equal(anderson.history(b)[-(picard_steps - 1) :], picard.history(b)[1:]), (
            "Anderson did not fall back to Picard: its history does not end with Picard's"
        )
        assert torch.equal(anderson.y[b], picard.y[b]), "Anderson did not fall back to Picard: another y"
    assert anderson.fallbacks == sum(steps - 1 for steps in picard.steps), (
        f"Anderson did not fall back to Picard for every step: fallbacks {anderson.fallbacks}"
    )


# --- decision boundaries, hit on purpose ---------------------------------------------------------------------------


@given(
    affine=affine_contractions(),
    method=st.sampled_from(["picard", "anderson"]),
    stop=st.sampled_from(["abs", "rel"]),
    k=st.integers(1, 40),
)
def test_status_flips_exactly_at_tol(affine: Affine, method: str, stop: str, k: int) -> None:
    """tol taken from a previous run's own residual history, so that the decision sits exactly on it: with
    tol = m_k, the smallest of the first k stop-mode residuals, a solve of max_iter = k is CONVERGED at the first
    step j whose residual is <= m_k (the trajectory does not depend on tol until the element is decided); with tol
    one float below m_k it is not CONVERGED at all. A solver that stops one step late or early, compares another
    residual (another stop mode) or allows any slack above tol fails one of the two. On A y + b with A dense
    (non-diagonal), so Anderson's secant model is a real one."""
    f = Affine(A=affine.A[:1], b=affine.b[:1], y0=affine.y0[:1], rho=affine.rho)
    probe = solve(f, f.y0, method, tol=1e-300, max_iter=k, stop=stop)
    history = probe.stop_residuals[:, 0].tolist()
    if probe.statuses[0] is Status.MAX_ITER:
        assert probe.n_steps == k, f"a MAX_ITER solve made {probe.n_steps} evaluations of f, not max_iter = {k}"
    assume(len(history) == k)  # an exactly zero residual (CONVERGED even at tol 1e-300) ends the probe early
    m_k = min(history)
    assume(m_k > 0)
    j = history.index(m_k) + 1
    event(f"{method}, stop {stop}, boundary at {'the last step' if j == k else 'an earlier step'}")
    at = solve(f, f.y0, method, tol=m_k, max_iter=k, stop=stop)
    note(f"history {history}; tol = m_k = {m_k!r} first reached at step {j}; solve at tol: {at.statuses}/{at.steps}")
    assert at.statuses[0] is Status.CONVERGED, (
        f"not CONVERGED although residual {m_k!r} <= tol at step {j} of {k}: {at.statuses[0].name}"
    )
    assert at.steps[0] == j, f"CONVERGED at step {at.steps[0]}, where the residual history first reaches tol at {j}"
    below = math.nextafter(m_k, 0.0)
    under = solve(f, f.y0, method, tol=below, max_iter=k, stop=stop)
    note(f"solve at tol one float below: {under.statuses}/{under.steps}, residual {under.residual.tolist()}")
    assert under.statuses[0] is not Status.CONVERGED, (
        f"CONVERGED with residual {float(under.residual[0])!r} above tol {below!r} (step {under.steps[0]})"
    )


#: The ill-conditioned map's coupling: residuals c + EPSILON A y of consecutive iterates are nearly parallel, so the
#: mixing weights that cancel them are large (sum |alpha| 7e3 on one thorough draw with 2^-20, below ALPHA_LIMIT =
#: 1e4; 2^-22 makes them 4x larger, the Gram system's condition 16x, still far from singular to rounding). Each
#: draw checks both premises itself.
ILL_EPSILON = 2.0**-22


@given(
    n=st.integers(2, 4),
    mixing=st.sampled_from([1.0, 0.75, 0.5]),
    steps=st.integers(3, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_anderson_falls_back_on_ill_conditioned_system(n: int, mixing: float, steps: int, seed: int) -> None:
    """On y -> y + c + EPSILON A y (A Gaussian, memory 2, no ridge) each residual g_k = c + EPSILON A y_k is nearly
    the previous one, off by EPSILON A (y_k - y_(k-1)), which is not parallel to c: the Gram system is
    ill-conditioned (cond ~ 1 / EPSILON^2 ~ 1e12) but not singular to rounding (that would need 1 / (2 eps) ~ 2e15,
    and with A = I, or n = 1, the residuals are parallel and it is), and its weights alpha have sum |alpha| ~
    1 / EPSILON > ALPHA_LIMIT, an extrapolation that amplifies rounding by that much. Anderson must refuse every
    such step: its residual history is bit for bit damped Picard's (mixing), and each refused step is a counted
    fallback."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(1, n, dtype=torch.float64, generator=g)
    y0 = torch.randn(1, n, dtype=torch.float64, generator=g)
    A = torch.randn(n, n, dtype=torch.float64, generator=g)

    def f(y: Tensor) -> Tensor:
        return y + c + ILL_EPSILON * y @ A.T

    # The premises, on damped Picard's trajectory (Anderson's own while it refuses every step), in numpy: each pair
    # of consecutive residuals gives sum |alpha| > ALPHA_LIMIT, and a Gram system that is not singular to rounding
    # (cond of its Jacobi-scaled form times 2 eps below 1), which would be refused for that reason instead.
    ys = [y0]
    for _ in range(steps - 1):
        ys.append(ys[-1] + mixing * (f(ys[-1]) - ys[-1]))
    residuals = [(f(y) - y)[0].numpy() for y in ys]
    for previous, current in itertools.pairwise(residuals):
        G = np.stack([previous, current])
        S = G @ G.T
        scaled = S / np.sqrt(np.outer(np.diag(S), np.diag(S)))
        assume(np.linalg.cond(scaled) * 2 * np.finfo(np.float64).eps < 1)
        w = np.linalg.solve(S, np.ones(2))
        assume(np.abs(w / w.sum()).sum() > ALPHA_LIMIT)
    anderson = solve(f, y0, "anderson", tol=1e-300, max_iter=steps, memory=2, mixing=mixing, ridge=0.0)
    picard = solve(f, y0, "picard", tol=1e-300, max_iter=steps, damping=mixing)
    note(f"anderson residuals {anderson.residuals[:, 0].tolist()}, picard {picard.residuals[:, 0].tolist()}")
    assert torch.equal(anderson.residuals, picard.residuals), (
        "Anderson took an ill-conditioned step: its residuals left damped Picard's "
        f"({anderson.residuals[:, 0].tolist()} vs {picard.residuals[:, 0].tolist()})"
    )
    # every step after the first Picard one (steps 2..steps-1 choose a next iterate) refused the extrapolation
    assert anderson.fallbacks == steps - 2, f"Anderson took an ill-conditioned step: fallbacks {anderson.fallbacks}"


@given(
    kinds=st.lists(st.sampled_from(["well", "scaled", "rank", "zero_row", "nonfinite"]), min_size=1, max_size=4),
    k=st.integers(2, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_numerical_singularity_is_of_directions_not_of_sizes(kinds, k, seed) -> None:
    """Anderson's singularity test without a ridge, on Gram systems S = G G^T whose answer is known by
    construction, per element of a batch, on the host (numpy) and on the recorded path (torch) alike: orthogonal
    residual directions are sound whatever their sizes (10^-12 .. 10^6, so that cond(S) reaches 10^36 but the
    Jacobi-scaled cond is 1; sizes below 1 must be scaled too), a dependent direction or a zero residual is
    singular, and a non-finite system is left to the other checks (not singular here)."""
    from iqa.solvers.anderson import _numerically_singular, _numerically_singular_torch

    rng = np.random.default_rng(seed)
    n = k + 3
    systems, expected = [], []
    for kind in kinds:
        Q = np.linalg.qr(rng.normal(size=(n, k)))[0].T  # k orthonormal rows
        sizes = 10.0 ** rng.uniform(-12, 6, size=k) if kind == "scaled" else rng.uniform(0.5, 2.0, size=k)
        G = sizes[:, None] * Q
        if kind == "rank":
            G[-1] = rng.uniform(-2, 2, size=k - 1) @ G[:-1]
        elif kind == "zero_row":
            G[rng.integers(k)] = 0.0
        S = G @ G.T
        if kind == "nonfinite":
            S[0, -1] = math.nan
        systems.append(S)
        expected.append(kind in ("rank", "zero_row"))
    S = np.stack(systems)
    assert _numerically_singular(S.copy(), k).tolist() == expected
    assert _numerically_singular_torch(torch.from_numpy(S), k).tolist() == expected


@pytest.mark.parametrize("k", range(1, 9))
def test_unit_and_tiny_diagonals_are_not_singular(k: int) -> None:
    """Diagonal Gram systems are sound whatever their sizes: the identity (a diagonal of exact ones is no zero
    row), and diag(10^-20, 1, 10^6, ...) (Jacobi scaling makes it the identity: entries below 1 are scaled too,
    not left as they are), on the host and on the recorded path."""
    from iqa.solvers.anderson import _numerically_singular, _numerically_singular_torch

    sizes = np.array([1e-20, 1.0, 1e6, 1e-3, 7.0, 1e-300, 0.5, 1e12])[:k]
    S = np.stack([np.eye(k), np.diag(sizes)])
    assert _numerically_singular(S.copy(), k).tolist() == [False, False]
    assert _numerically_singular_torch(torch.from_numpy(S), k).tolist() == [False, False]


@given(
    singular=st.lists(st.booleans(), min_size=1, max_size=4),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
def test_each_system_of_a_batch_is_solved_or_refused_alone(singular, k, seed) -> None:
    """Anderson's host solve of S w = 1 per batch element, through numpy's LAPACK gufunc and through the public
    np.linalg.solve it falls back to: an exactly singular S (a zero row and column) gives NaN for its element only,
    and every other element's w solves its system: ||S w - 1|| <= 2 k eps ||S|| ||w||, LU with partial pivoting
    being backward stable (the residual does not grow with kappa); at most 0.5 k eps ||S|| ||w|| was seen over
    3000 draws of these systems (kappa up to 43), through either path."""
    from iqa.solvers import anderson

    rng = np.random.default_rng(seed)
    systems = []
    for is_singular in singular:
        G = rng.normal(size=(k, k + 2))
        if is_singular:
            G[rng.integers(k)] = 0.0
        systems.append(G @ G.T + (0.0 if is_singular else np.eye(k)))
    S, ones = np.stack(systems), np.ones((len(singular), k, 1))
    eps = np.finfo(np.float64).eps
    for lapack in (anderson._lapack_solve, None):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(anderson, "_lapack_solve", lapack)
            with np.errstate(all="ignore"):
                w = anderson._solve_each(S.copy(), ones)
        assert np.isnan(w).any(-1).tolist() == singular, (lapack, w)
        for b in np.flatnonzero(~np.asarray(singular)):
            bound = 2 * k * eps * np.linalg.norm(S[b], 2) * np.linalg.norm(w[b])
            assert np.linalg.norm(S[b] @ w[b] - 1) <= bound, (lapack, b)
