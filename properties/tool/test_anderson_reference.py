"""The ring-buffer Anderson computes what the former implementation computed, to rounding.

The reference is the former ``iqa/solvers.py``, kept verbatim in
``anderson_reference.py`` (test-only). Two levels:

- one step: the same history of pairs (pushed into the ring, wrapping it, and
  into the reference's deques) and the same usable counts give the same next
  iterate within the rounding of the m x m least-squares solve, a bound derived
  from its condition number kappa, and the same fallbacks; the stale-pair rule
  gives the same counts exactly;
- whole solves on the built-in variants (float64, contractive to cycling
  scales): the same statuses, step counts and fallbacks. Rounding differs
  between the two (the Gram matrix is updated one row per step, the ring stores
  pairs in rotated order), and Anderson's least-squares step amplifies it by
  up to kappa, so whole trajectories are not compared to a fixed tolerance: where the layers contract, the
  iterates are compared within the sum of each step's least-squares rounding bound.
  A decision may differ only where the two runs' own residuals fall on
  different sides of one of its thresholds (tol, a new best, RESTART_FACTOR,
  STALE_FACTOR, the stall ratio of the cycle check, DIVERGENCE_FACTOR); such
  an element is excluded from the comparison and counted as an event.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from hypothesis import assume, event, example, given, note
from hypothesis import strategies as st

from iqa import Anderson, solve
from iqa.solvers import ALPHA_LIMIT, DIVERGENCE_FACTOR, MAX_PERIOD, RESTART_FACTOR, STALE_FACTOR, STALL_RATIO
from iqa.solvers.anderson import make_pairs
from iqa.variants import resolve
from properties.strategies import Case
from properties.tool import anderson_reference as reference

F64 = torch.float64
EPS = torch.finfo(F64).eps


# --- one step ----------------------------------------------------------------------------------------------------


@given(
    batch=st.integers(1, 3),
    n=st.integers(8, 40),
    m=st.integers(2, 8),
    extra=st.integers(0, 12),
    mixing=st.sampled_from([1.0, 0.75, 0.5]),
    # the default, a weak and a strong ridge (options a user may set; a strong one makes a wrong sign or a
    # misplaced term visible far above rounding), and none
    ridge=st.sampled_from([1e-10, 1e-6, 1e-2, 1.0, 0.0]),
    seed=st.integers(0, 2**31 - 1),
    recorded=st.booleans(),
    data=st.data(),
)
def test_step_matches_reference_step(batch, n, m, extra, mixing, ridge, seed, recorded, data) -> None:
    """The next iterate from the same pairs agrees with the reference's within 8 u eps (kappa + 1) sum|alpha|
    max ||pair||: the rounding of a u x u solve with condition number kappa (u the pairs used), carried through
    the mix sum_i alpha_i f_i. Elements that may use one pair take the Picard step, bit for bit. Both ways of
    solving the system are held to it: on the host by numpy (no graph recorded) and by torch on the map's device
    (``recorded``: the unrolled mode's, differentiable)."""
    pushes = data.draw(st.integers(1, m + extra), label="pairs pushed")  # more than m wraps the ring
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(pushes, batch, n, dtype=F64, generator=g)
    F = X + torch.randn(pushes, batch, n, dtype=F64, generator=g) / (1 + torch.arange(pushes, dtype=F64))[:, None, None]
    pairs = make_pairs(X[0], m, differentiable=recorded)
    assert (pairs.gram is None) != recorded  # the host system exactly when no graph is recorded
    xs: deque[torch.Tensor] = deque(maxlen=m)
    fs: deque[torch.Tensor] = deque(maxlen=m)
    for t in range(pushes):
        pairs.push(X[t], F[t], F[t] - X[t], np.zeros(batch))
        xs.append(X[t])
        fs.append(F[t])
    k = min(pushes, m)
    # every element using all k pairs is the common case of a solve (and the system's other branch): half the draws
    every = data.draw(st.booleans(), label="all pairs usable")
    drawn = [k] * batch if every else data.draw(st.lists(st.integers(1, k), min_size=batch, max_size=batch))
    usable = np.array(drawn)
    event(f"usable: {'all k' if every or min(drawn) == k else 'some dropped'}")
    ours, fell_back = pairs.next_iterate(X[-1], F[-1], mixing, ridge, usable)
    expected, expected_fell_back = reference._anderson_step(xs, fs, mixing, ridge, usable.tolist())
    for b in range(batch):
        u = int(usable[b])
        if u == 1:
            assert torch.equal(ours[b], expected[b]) and not fell_back[b] and not expected_fell_back[b]
            continue
        Xb = torch.stack(list(xs)[-u:])[:, b]
        Fb = torch.stack(list(fs)[-u:])[:, b]
        G = Fb - Xb
        gram = G @ G.T
        system = gram + ridge * gram.trace() / u * torch.eye(u, dtype=F64)
        kappa = float(torch.linalg.cond(system))
        assume(kappa * EPS < 1e-3)  # a numerically singular system: its answer is rounding, nothing to compare
        w = torch.linalg.solve(system, torch.ones(u, dtype=F64))
        alpha_sum = float((w / w.sum()).abs().sum())
        scale = float(torch.cat([Xb, Fb]).norm(dim=1).max())
        bound = reference.mix_rounding_bound(u, kappa, alpha_sum, scale, EPS)
        note(f"b={b} u={u} kappa={kappa:.2e} sum|alpha|={alpha_sum:.2e} bound={bound:.2e}")
        if bool(fell_back[b]) != bool(expected_fell_back[b]):
            # only where sum|alpha| is within the solve's rounding of ALPHA_LIMIT
            assert abs(alpha_sum / ALPHA_LIMIT - 1) <= 8 * u * EPS * (kappa + 1)
            event("fallback decided within rounding of ALPHA_LIMIT")
            continue
        assert float((ours[b] - expected[b]).norm()) <= bound


@given(
    batch=st.integers(1, 3),
    m=st.integers(1, 8),
    steps=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_stale_pairs_match_reference(batch, m, steps, seed, data) -> None:
    """The vectorised stale-pair rule gives the reference's counts exactly, from the same residuals."""
    rng = np.random.default_rng(seed)
    # residuals spanning 12 decades, so that STALE_FACTOR = 1e4 cuts somewhere in most histories
    history = (10.0 ** rng.uniform(-6, 6, size=(steps, batch))).tolist()
    pairs = make_pairs(torch.zeros(batch, 1, dtype=F64), m, differentiable=False)
    for row in history:
        pairs.push(torch.zeros(batch, 1, dtype=F64), torch.zeros(batch, 1, dtype=F64), torch.zeros(batch, 1, dtype=F64),
                   np.array(row))  # fmt: skip
    cap = np.array(data.draw(st.lists(st.integers(1, min(m, steps)), min_size=batch, max_size=batch), label="cap"))
    expected = [reference._fresh_pairs(history, b, int(cap[b])) for b in range(batch)]
    assert pairs.fresh(cap).tolist() == expected


# --- whole solves ---------------------------------------------------------------------------------------------------


def straddles(a, r, b: int, tol: float, history: int, until: int | None = None) -> bool:
    """Whether, before element b's decision (and before step ``until``), the two runs' own residuals fall on
    different sides of a threshold of the tracker or of Anderson's safeguards (then their decisions may differ,
    from rounding alone)."""
    steps = min(a.steps[b], r.steps[b], until if until is not None else a.steps[b])
    sa, sr = a.stop_residuals[:, b].tolist(), r.stop_residuals[:, b].tolist()
    ra, rr = a.residuals[:, b].tolist(), r.residuals[:, b].tolist()
    best_a = best_r = float("inf")
    for t in range(steps):
        if (sa[t] <= tol) != (sr[t] <= tol):
            return True
        if (sa[t] < best_a) != (sr[t] < best_r) or (sa[t] > RESTART_FACTOR * best_a) != (
            sr[t] > RESTART_FACTOR * best_r
        ):
            return True
        best_a, best_r = min(best_a, sa[t]), min(best_r, sr[t])
        if (ra[t] >= DIVERGENCE_FACTOR * ra[0]) != (rr[t] >= DIVERGENCE_FACTOR * rr[0]):
            return True
        if t >= MAX_PERIOD and (ra[t] >= STALL_RATIO * ra[t - MAX_PERIOD]) != (
            rr[t] >= STALL_RATIO * rr[t - MAX_PERIOD]
        ):
            return True
        for k in range(1, min(history, t + 1)):
            if (ra[t - k] <= STALE_FACTOR * ra[t]) != (rr[t - k] <= STALE_FACTOR * rr[t]):
                return True
    return False


VARIANTS = st.sampled_from(["hopfield", "positional", "injection", "reference", "scaled", "damped"])


def run_both(name, batch, tokens, dim, scale, seed, history, mixing, stop, tol):
    """Both implementations on one problem, with their iterates, and the rounding budget of each iterate:
    budget[t, b] = the sum of element b's :func:`reference._mix_rounding` over the steps that made y_1 .. y_t."""
    case = Case(batch=batch, tokens=tokens, dim=dim, dtype=F64, scale=scale, seed=seed)
    layer = case.layer(resolve(name))
    x = case.inputs()
    f, y0 = layer.fixed_point_map(x), layer.initial_point(x)
    rounding: list[list[float]] = []
    options = dict(tol=tol, max_iter=300, stop=stop, keep_iterates=True)
    with torch.no_grad():
        ours = solve(f, y0, Anderson(history=history, mixing=mixing), **options)
        theirs = reference.solve(f, y0, "anderson", memory=history, mixing=mixing, rounding=rounding, **options)
    budget = torch.tensor([[0.0] * batch, *rounding], dtype=F64).cumsum(0)
    return ours, theirs, budget


def solve_cases(scales: st.SearchStrategy[float]) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        dict(
            name=VARIANTS,
            batch=st.integers(1, 3),
            tokens=st.integers(2, 8),
            dim=st.integers(2, 8),
            scale=scales,
            seed=st.integers(0, 10**6),
            history=st.integers(2, 8),
            mixing=st.sampled_from([1.0, 0.75, 0.5]),
            stop=st.sampled_from(["abs", "rel"]),
            tol=st.floats(-10.0, -6.0).map(lambda e: 10.0**e),
        )
    )


@given(problem=solve_cases(st.floats(0.5, 1.5)))
# thorough found it: 157 steps, rounding grows from 1e-14 to 1e-5 of the falling residual (a fixed relative
# tolerance failed; the iterates stay within their budget)
@example(problem=dict(name="reference", batch=1, tokens=5, dim=7, scale=1.5, seed=2463, history=3, mixing=1.0,
                      stop="abs", tol=1e-06))  # fmt: skip
def test_contractive_solves_match_reference(problem: dict) -> None:
    """Where the layers contract: the same statuses, steps and fallbacks, and iterates that agree within the
    rounding their least-squares steps have accumulated, except for an element whose two runs straddle a
    threshold before their iterates part."""
    ours, theirs, budget = run_both(**problem)
    assert ours.iterates is not None and theirs.iterates is not None
    rows = min(ours.n_steps, theirs.n_steps)
    ys_a, ys_r = torch.stack(ours.iterates[:rows]).flatten(2), torch.stack(theirs.iterates[:rows]).flatten(2)
    # Each accelerated step t rounds its mix by at most _mix_rounding (8 u eps (kappa_t + 1) sum|alpha_t|
    # max||pair_t||, kappa_t its Gram system's condition number), and the contracting iteration damps what
    # earlier steps left: measured ||y_t - y'_t|| <= 0.01 (budget_t + eps ||y_t||) over 150 random solves.
    apart = (ys_a - ys_r).norm(dim=-1) > budget[:rows] + EPS * ys_r.norm(dim=-1)
    note(f"ours {ours.statuses} {ours.steps} {ours.fallbacks}; reference {theirs.statuses} {theirs.steps}"
         f" {theirs.fallbacks}")  # fmt: skip
    straddled = 0
    for b in range(problem["batch"]):
        parted = int(apart[:, b].nonzero()[0]) if bool(apart[:, b].any()) else rows
        if straddles(ours, theirs, b, problem["tol"], problem["history"], until=parted):
            straddled += 1
            continue
        assert parted == rows, (
            f"element {b}: iterates part at step {parted + 1} with no threshold straddled"
            f" ({float((ys_a[parted, b] - ys_r[parted, b]).norm()):.2e} apart, budget {float(budget[parted, b]):.2e})"
        )
        assert (ours.statuses[b].value, ours.steps[b]) == (theirs.statuses[b].value, theirs.steps[b])
    event(f"elements with a decision within rounding of a threshold: {straddled}")
    if not straddled:
        assert ours.fallbacks == theirs.fallbacks


@given(problem=solve_cases(st.floats(1.5, 3.0)))
def test_cycling_solves_match_reference(problem: dict) -> None:
    """Up to the scales where the layers cycle: the same statuses and steps, except for an element whose two
    runs straddle a threshold (here trajectories may part from rounding alone, amplified by the iteration)."""
    ours, theirs, _ = run_both(**problem)
    explained = [straddles(ours, theirs, b, problem["tol"], problem["history"]) for b in range(problem["batch"])]
    event(f"elements with a decision within rounding of a threshold: {sum(explained)}")
    for b in range(problem["batch"]):
        if not explained[b]:
            assert (ours.statuses[b].value, ours.steps[b]) == (theirs.statuses[b].value, theirs.steps[b])
    assert torch.equal(ours.stop_residuals[0], theirs.stop_residuals[0])  # both evaluate f(y0) first: same bits
