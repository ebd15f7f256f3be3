"""TEST-ONLY: Anderson as it was before the ring-buffer rewrite (the reference its iterates are compared with
in test_anderson_reference.py): the former ``iqa/solvers.py`` reduced to its Anderson path (its tracker, step
and stale-pair rule, verbatim), with the result types and shared constants taken from ``iqa.solvers.result``
instead of a copy. Do not change the algorithm, except to follow a deliberate change of Anderson's, and say so
in the commit. One addition computes nothing the algorithm uses: ``solve(..., rounding=[])`` records, per step
and element, a bound on the rounding of that step's least-squares mix (:func:`_mix_rounding`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable

import torch
from torch import Tensor

from iqa.solvers.result import NORM_FLOOR, STOP_MODES, ConvergenceError, Solution, Status, StopMode
from iqa.validation import check_finite_tensor, check_positive, check_positive_int, check_unit_interval

Map = Callable[[Tensor], Tensor]
#: Cycles of period 2..MAX_PERIOD are detected.
MAX_PERIOD = 8
#: A residual above this fraction of the one MAX_PERIOD steps earlier has stalled (less than 10% progress,
#: a contraction rate above 0.9^(1/8) ~ 0.987), a precondition for declaring CYCLE.
STALL_RATIO = 0.9
#: A residual that grows by this factor over the first one is DIVERGED.
DIVERGENCE_FACTOR = 1e8


class _Tracker:
    """Bookkeeping shared by the solvers: histories, decisions, freezing.

    The hot path (:meth:`record`) costs two norms and two small host copies per
    step. Histories are kept as Python floats: keeping thousands of tiny
    tensors alive slows torch's CPU allocator down several-fold.
    """

    def __init__(self, y0: Tensor, tol: float, stop: StopMode, keep_iterates: bool) -> None:
        batch = y0.shape[0]
        self.tol = tol
        self.stop = stop
        self.dims = tuple(range(1, y0.dim()))
        self.abs_history: list[list[float]] = []
        self.stop_history: list[list[float]] = []
        self.ref_history: list[list[float]] = []
        self.statuses: list[Status | None] = [None] * batch
        self.steps = [0] * batch
        self.device = y0.device
        #: Which elements have a status (rebuilt by mark(), so the solver loops do not rebuild it per step).
        self.decided = torch.zeros(batch, dtype=torch.bool, device=y0.device)
        self.n_decided = 0
        self.limit: list[float] = []
        self.recent: deque[Tensor] = deque(maxlen=MAX_PERIOD + 1)
        self.iterates: list[Tensor] | None = [] if keep_iterates else None
        #: Which elements may be declared CYCLE (None: all). Anderson withholds it until an element gives up.
        self.may_cycle: list[bool] | None = None

    def norm(self, t: Tensor) -> Tensor:
        """||t|| over every dimension but the batch."""
        return torch.linalg.vector_norm(t, dim=self.dims)

    @property
    def any_decided(self) -> bool:
        return self.n_decided > 0

    @property
    def all_decided(self) -> bool:
        return self.n_decided == len(self.statuses)

    def observe(self, y: Tensor, fy: Tensor, step: int) -> list[float]:
        """Record the residuals of iterate ``step`` (y, with fy = f(y)), decide what
        can be decided, and return the stop-mode residuals."""
        if torch.is_grad_enabled():
            y, fy = y.detach(), fy.detach()
        dims = self.dims
        r = torch.linalg.vector_norm(fy - y, dim=dims).tolist()
        ref = torch.linalg.vector_norm(fy, dim=dims).tolist()
        metric = r if self.stop == "abs" else [a / max(b, NORM_FLOOR) for a, b in zip(r, ref)]
        if step == 1:
            self.limit = [DIVERGENCE_FACTOR * max(a, NORM_FLOOR) for a in r]
        self.abs_history.append(r)
        self.ref_history.append(ref)
        self.stop_history.append(metric)
        self.recent.append(y)
        if self.iterates is not None:
            self.iterates.append(y.clone())
        periodic = step % MAX_PERIOD == 0
        tol = self.tol
        # NaN fails every comparison, so this one test passes only when every
        # element is still finite and above tol: the common case, decided here.
        if periodic or self.n_decided or not all(tol < m < math.inf for m in metric):
            self.decide(metric, step, check_divergence=periodic)
            if periodic:
                self.check_cycles(step)
        return metric

    def decide(self, metric: list[float], step: int, check_divergence: bool = False) -> None:
        """Give a status to each element that converged or went non-finite at this step.

        Divergence (a residual DIVERGENCE_FACTOR times the first) is checked
        only when asked, every MAX_PERIOD steps, to keep the hot path short.
        """
        tol = self.tol
        r = self.abs_history[-1]
        for b, m in enumerate(metric):
            if self.statuses[b] is not None or (tol < m < math.inf and not check_divergence):
                continue
            if not (math.isfinite(m) and math.isfinite(r[b])):
                self.mark(b, Status.NONFINITE, step)
            elif m <= tol:
                self.mark(b, Status.CONVERGED, step)
            elif check_divergence and r[b] >= self.limit[b]:
                self.mark(b, Status.DIVERGED, step)

    def mark(self, b: int, status: Status, step: int) -> None:
        self.statuses[b] = status
        self.steps[b] = step
        self.n_decided += 1
        # A new mask, never one changed in place: autograd may have saved the old one (unrolled mode).
        self.decided = torch.tensor([s is not None for s in self.statuses], device=self.device)

    def check_cycles(self, step: int) -> None:
        """Mark CYCLE where y_t returns to y_{t-p} (2 <= p <= 8) and progress has stalled.

        A cycle is declared when ||y_t - y_{t-p}|| <= 1e-3 ||f(y_t) - y_t|| (the
        iterate comes back far closer than one step moves, which monotone or
        slowly converging drift never does), the residual is above tol, and it
        fell by less than 10% over the last MAX_PERIOD steps.
        """
        recent = self.recent
        if len(recent) < MAX_PERIOD + 1 or len(self.abs_history) <= MAX_PERIOD:
            return
        now, before = self.abs_history[-1], self.abs_history[-1 - MAX_PERIOD]
        may = self.may_cycle
        stalled = [
            self.statuses[b] is None and (may is None or may[b]) and now[b] >= STALL_RATIO * before[b]
            for b in range(len(now))
        ]
        if not any(stalled):
            return
        with torch.no_grad():
            gaps = torch.stack([self.norm(recent[-1] - recent[-1 - p]) for p in range(2, MAX_PERIOD + 1)])
            closest = gaps.min(dim=0).values.tolist()
        for b, is_stalled in enumerate(stalled):
            if is_stalled and closest[b] <= 1e-3 * now[b]:
                self.mark(b, Status.CYCLE, step)

    def finish(self, n_steps: int) -> None:
        for b, s in enumerate(self.statuses):
            if s is None:
                self.mark(b, Status.MAX_ITER, n_steps)

    def solution(self, y: Tensor, method: str, final: list[float] | None = None, fallbacks: int = 0) -> Solution:
        """The Solution; ``final`` overrides the residual of the returned iterates."""
        if final is None:
            final = [self.stop_history[self.steps[b] - 1][b] for b in range(len(self.steps))]
        abs_h = torch.tensor(self.abs_history, dtype=torch.float64)
        ref_h = torch.tensor(self.ref_history, dtype=torch.float64)
        return Solution(
            y=y,
            statuses=tuple(s for s in self.statuses if s is not None),
            steps=tuple(self.steps),
            residuals=abs_h,
            relative_residuals=abs_h / ref_h.clamp_min(NORM_FLOOR),
            residual=torch.tensor(final, dtype=torch.float64),
            method=method,
            stop=self.stop,
            tol=self.tol,
            fallbacks=fallbacks,
            iterates=self.iterates,
        )


def _freeze(decided: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """Keep decided batch elements at their old value."""
    mask = decided.reshape((-1,) + (1,) * (old.dim() - 1))
    return torch.where(mask, old, new)


def _relaxed(y: Tensor, fy: Tensor, damping: float) -> Tensor:
    """The damped Picard step (1 - a) y + a f(y), computed as y + a (f(y) - y); exactly f(y) when a = 1."""
    return fy if damping == 1.0 else y + damping * (fy - y)


def _anderson(
    f: Map,
    y0: Tensor,
    tol: float,
    max_iter: int,
    stop: StopMode,
    memory: int,
    mixing: float,
    ridge: float,
    keep: bool,
    rounding: list[list[float]] | None = None,
) -> Solution:
    """Anderson acceleration with three safeguards, each per batch element.

    Restart: a residual above RESTART_FACTOR times the element's best drops its
    history (the extrapolation left the region where the secant model holds).
    Stale pairs: a stored pair whose residual is more than STALE_FACTOR times
    the newest one is dropped, with every older pair.
    Give up: when STALL_STEPS steps in a row have not lowered its best
    residual, and at least one of its steps so far was an accelerated one (not
    a Picard step), the element starts again from y0 with damped Picard steps
    (damping = mixing) for the rest of its budget. Picard's own trajectory from
    y0 is what a stalled acceleration is measured against, so Anderson then
    fails only where that Picard iteration would, in the steps left. Between
    its first accelerated step and giving up, an element is never declared
    CYCLE: its stall ends in the fallback instead.
    """
    batch = y0.shape[0]
    track = _Tracker(y0, tol, stop, keep)
    xs: deque[Tensor] = deque(maxlen=memory)
    fs: deque[Tensor] = deque(maxlen=memory)
    y = y0
    best_y = y0
    restart_point = y0
    best = [math.inf] * batch
    # How many of the newest (x, f(x)) pairs each element may use: a restart drops the older ones.
    usable = [0] * batch
    # Steps since the element last lowered its best residual; whether it ever took an accelerated step (one
    # that is not a Picard step: until then it is on Picard's own trajectory and has nothing to give up); whether
    # it has given up.
    stalled = [0] * batch
    deviated = [False] * batch
    gave_up = [False] * batch
    fallbacks = 0
    step = 0
    for step in range(1, max_iter + 1):
        fy = f(y)
        undecided = [s is None for s in track.statuses]
        metric = track.observe(y, fy, step)
        if step == 1:
            # The first step after giving up is the Picard step from y0, whose f(y0) is already known.
            restart_point = _relaxed(y0, fy, mixing)
        improved = [und and m < old for und, m, old in zip(undecided, metric, best)]
        if any(improved):
            best = [m if imp else old for m, imp, old in zip(metric, improved, best)]
            best_y = _freeze(torch.tensor(improved, device=y.device), y, best_y)
        stalled = [0 if imp else n + 1 for imp, n in zip(improved, stalled)]
        giving_up = [d and not g and n >= STALL_STEPS for d, g, n in zip(deviated, gave_up, stalled)]
        if any(giving_up):
            gave_up = [g or new for g, new in zip(gave_up, giving_up)]
        if track.all_decided or step == max_iter:
            break
        xs.append(y.reshape(batch, -1))
        fs.append(fy.reshape(batch, -1))
        usable = [
            1 if g or m > RESTART_FACTOR * old else _fresh_pairs(track.abs_history, b, min(n + 1, memory))
            for b, (g, m, old, n) in enumerate(zip(gave_up, metric, best, usable))
        ]
        y_next, fell_back = _anderson_step(xs, fs, mixing, ridge, usable, rounding)
        deviated = [d or (n > 1 and not fb) for d, n, fb in zip(deviated, usable, fell_back)]
        track.may_cycle = [g or not d for g, d in zip(gave_up, deviated)]
        # Count only elements still being solved: a decided element's step is discarded by the freeze.
        fallbacks += sum(1 for fb, g, s in zip(fell_back, gave_up, track.statuses) if (fb or g) and s is None)
        y_next = y_next.reshape(y.shape)
        if any(giving_up):
            y_next = _freeze(torch.tensor(giving_up, device=y.device), restart_point, y_next)
        y = _freeze(track.decided, y, y_next) if track.any_decided else y_next
    track.finish(step)
    converged = [s is Status.CONVERGED for s in track.statuses]
    # A converged element returns the iterate that met tol; any other, the best one seen.
    y_out = _freeze(torch.tensor(converged, device=y.device), y, best_y)
    final = [track.stop_history[track.steps[b] - 1][b] if converged[b] else best[b] for b in range(batch)]
    return track.solution(y_out, "anderson", final, fallbacks)


#: A stored Anderson pair whose residual exceeds STALE_FACTOR times the newest one's is dropped (with the older
#: ones): it samples the map far from where the iterate now is, and its large row of G dominates the least-squares
#: system. Measured on the report sweep (iqa.measure.DEFAULT, six built-ins, 4032 elements): mean steps to tol
#: summed over the variants 112.7 / 100.9 / 100.4, elements converged 3119 / 3099 / 3126, with memory 8 and no
#: limit / 1e3 / 1e4 (memory 5, no limit: 105.8 and 3086). The benchmarks' band ratios and sample failures were
#: unchanged or better.
STALE_FACTOR = 1e4
#: Anderson's default history length. Measured on the benchmark grid (properties/benchmarks/band.py: hopfield,
#: positional and injection, N = D = 8, float64, tol 1e-8, cases with rho(J*) in [0.8, 0.95]): the worst
#: Anderson/Picard evaluation ratio was 1.14, 0.50, 0.39, 0.40 and 0.42 with memories 5, 6, 8, 10 and 16 (at 5
#: a positional case gave up on a plateau it would have left).
DEFAULT_MEMORY = 8
#: Mixing weights with sum(|alpha|) above this count as ill-conditioned: the step then amplifies the rounding
#: of the stored iterates (eps relative) by 1e4, to ~1e-12 in float64 and ~1e-3 in float32, where it stops helping.
ALPHA_LIMIT = 1e4
#: An Anderson element restarts (drops its history) when its residual exceeds RESTART_FACTOR times its best.
#: Measured (memory 5, before the give-up rule) on hopfield/positional/injection, N, D in 4..16, s in 1..3,
#: tol 1e-8, 500 steps: Anderson failed where Picard converged in 34/843 cases without restarts and 4/843 with
#: them (prototype: 3 and 4 with factors 3 and 1.5); the median Anderson/Picard steps where rho(J*) is in
#: [0.8, 0.95] stayed 0.22.
RESTART_FACTOR = 2.0
#: An Anderson element gives up (restarts from y0 with Picard steps) after this many steps without a new best
#: residual. Measured with memory 8, before the stale-pair rule, on hopfield/positional/injection (N, D in 4..16,
#: s in 1..3, tol 1e-8, 500 steps, 2172 cases where Picard converges): Anderson failed in 8 cases without it,
#: and in 1, 0, 0 and 1 with 8, 12, 16 and 24 (each failure a case where Picard needed 476-488 of the 500
#: steps). 8 and 12 gave up on plateaus in the rho band that Anderson would have left (worst band ratio 1.11 and
#: 1.07; 0.39 with 16). With the stale-pair rule, 16 failed in none of those cases, and once in a second sample
#: (3127 cases), where Picard needed 495 of the 500 steps. The price is paid where Picard fails: on the regress
#: sweep of the six built-ins (1440 elements, tol 1e-10, 200 steps) Anderson converged on 257 elements that
#: Picard does not solve, against 267 without the rule.
STALL_STEPS = 16


def _fresh_pairs(abs_history: list[list[float]], b: int, n: int) -> int:
    """How many of element b's newest n pairs to use: up to the first (going back) whose residual exceeds
    STALE_FACTOR times the newest one's. Pair k (0 = newest) is the iterate of step -1 - k."""
    limit = STALE_FACTOR * abs_history[-1][b]
    k = 1
    while k < n and abs_history[-1 - k][b] <= limit:
        k += 1
    return k


def _anderson_step(
    xs: deque[Tensor],
    fs: deque[Tensor],
    mixing: float,
    ridge: float,
    usable: list[int] | None = None,
    rounding: list[list[float]] | None = None,
) -> tuple[Tensor, list[bool]]:
    """One Anderson (type II) update from the last m iterates, batched; also says which elements fell back.

    alpha = argmin ||sum_i alpha_i g_i|| subject to sum_i alpha_i = 1, with
    g_i = f(x_i) - x_i, solved as (G G^T + lam I) w = 1, alpha = w / sum(w),
    where lam = ridge * trace(G G^T) / m scales with the problem. The next
    iterate is beta sum_i alpha_i f(x_i) + (1 - beta) sum_i alpha_i x_i. An
    element whose system is singular, whose alpha is ill-conditioned
    (sum |alpha| > ALPHA_LIMIT) or whose step is not finite takes a damped
    Picard step instead.

    ``usable[b]`` (default: all) is how many of the newest pairs element b may
    use. After a restart (its residual rose above RESTART_FACTOR times its
    best: the extrapolation left the region where the secant model from the
    old pairs holds) it uses only the newest pair, that is, it takes the
    damped Picard step, and regrows its history from there. The dropped pairs get
    alpha_i = 0 by zeroing their rows of G and putting 1 on their diagonal,
    which decouples them from the kept block of the system.
    """
    x_last, f_last = xs[-1], fs[-1]
    picard = _relaxed(x_last, f_last, mixing)
    if len(xs) == 1 or (usable is not None and max(usable) == 1):
        if rounding is not None:
            rounding.append([0.0] * len(x_last))
        return picard, [False] * len(x_last)
    X = torch.stack(tuple(xs), dim=1)
    F = torch.stack(tuple(fs), dim=1)
    G = F - X
    m = G.shape[1]
    keep = None
    counts = None
    if usable is not None and min(usable) < m:
        counts = torch.tensor(usable, device=G.device)
        keep = torch.arange(m, device=G.device)[None, :] >= (m - counts)[:, None]
        G = G * keep[:, :, None]
    # torch has no float16/bfloat16 LU on the CPU, and squared norms overflow there: the m x m system is float32
    G_work = G if G.dtype in (torch.float32, torch.float64) else G.float()
    gram = G_work @ G_work.transpose(1, 2)
    n_kept = m if keep is None else keep.sum(-1).clamp_min(1)
    scale = gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(NORM_FLOOR) / n_kept
    eye = torch.eye(m, dtype=gram.dtype, device=gram.device)
    system = gram + (ridge * scale)[:, None, None] * eye
    if keep is not None:
        system = system + (~keep).to(gram.dtype)[:, :, None] * eye
    ones = torch.ones(gram.shape[0], m, 1, dtype=gram.dtype, device=gram.device)
    w, info = torch.linalg.solve_ex(system, ones)
    w = w.squeeze(-1)
    if keep is not None:
        w = w * keep
    alpha = (w / w.sum(-1, keepdim=True)).to(F.dtype)
    step = mixing * (alpha.unsqueeze(1) @ F).squeeze(1) + (1 - mixing) * (alpha.unsqueeze(1) @ X).squeeze(1)
    with torch.no_grad():
        ok = (
            (info == 0)
            & torch.isfinite(alpha).all(-1)
            & (alpha.abs().sum(-1) <= ALPHA_LIMIT)
            & torch.isfinite(step).all(-1)
        )
        # An element left with one pair takes the Picard step itself (bit for bit), and that is no fallback.
        accelerating = torch.ones_like(ok) if counts is None else counts > 1
        take = ok & accelerating
    if rounding is not None:
        used = [m if usable is None else usable[b] for b in range(len(ok))]
        rounding.append([_mix_rounding(system[b], alpha[b], X[b], F[b], used[b]) if take[b] else 0.0
                         for b in range(len(ok))])  # fmt: skip
    if bool(take.all()):
        return step, [False] * len(ok)
    return torch.where(take[:, None], step, picard), (~ok & accelerating).tolist()


def mix_rounding_bound(used: int, kappa: float, alpha_sum: float, scale: float, eps: float) -> float:
    """8 u eps (kappa + 1) sum|alpha| max ||pair||: the rounding of a u x u least-squares solve with condition
    number kappa, carried through the mix sum_i alpha_i f_i of pairs of size at most ``scale``."""
    return 8 * used * eps * (kappa + 1) * alpha_sum * scale


def _mix_rounding(system: Tensor, alpha: Tensor, X: Tensor, F: Tensor, used: int) -> float:
    """:func:`mix_rounding_bound` of one accelerated step (kappa of the kept block of its system, u the pairs
    used): the bound test_step_matches_reference_step holds single steps to."""
    kappa = float(torch.linalg.cond(system[-used:, -used:].double()))
    scale = float(torch.cat([X[-used:], F[-used:]]).double().norm(dim=1).max())
    alpha_sum = float(alpha[-used:].abs().sum())
    return mix_rounding_bound(used, kappa, alpha_sum, scale, torch.finfo(X.dtype).eps)


def solve(
    f: Map,
    y0: Tensor,
    method: str = "anderson",
    *,
    tol: float = 1e-6,
    max_iter: int = 200,
    stop: str = "abs",
    damping: float = 1.0,
    memory: int = DEFAULT_MEMORY,
    mixing: float = 1.0,
    ridge: float = 1e-10,
    raise_on_failure: bool = False,
    keep_iterates: bool = False,
    rounding: list[list[float]] | None = None,
) -> Solution:
    """Find y* = f(y*) starting from y0; report per batch element how it went.

    Args:
        f: the map, batched over dimension 0 of its argument.
        y0: the starting point, [B, ...], floating and finite.
        method: "picard" (y <- (1 - damping) y + damping f(y)) or "anderson". Anderson restarts its
            history when a residual exceeds RESTART_FACTOR times its best, and gives up on acceleration
            when STALL_STEPS steps bring no new best: it then starts again from y0 with Picard steps.
        tol: the residual (in ``stop`` mode) at which an element has converged.
        max_iter: the most evaluations of f.
        stop: "abs" for ||f(y) - y||, "rel" for ||f(y) - y|| / ||f(y)||.
        damping: Picard's relaxation a in (0, 1].
        memory: Anderson's history length m.
        mixing: Anderson's beta in (0, 1].
        ridge: Anderson's Tikhonov term, relative to trace(G G^T) / m.
        raise_on_failure: raise :class:`ConvergenceError` unless CONVERGED.
        keep_iterates: keep a detached copy of every iterate (for plots).
        rounding: a list to append, per step after the first, each element's :func:`_mix_rounding` to
            (0 for a Picard step or a fallback); test-only.

    Runs with autograd as the caller has it: under ``torch.no_grad()`` no graph
    is built; otherwise gradients flow through every step (the unrolled mode).
    """
    if stop not in STOP_MODES:
        raise ValueError(f"unknown stop mode {stop!r}; choose 'abs' or 'rel'")
    check_positive("tol", tol)
    check_positive_int("max_iter", max_iter)
    check_unit_interval("damping", damping)
    check_unit_interval("mixing", mixing)
    check_positive_int("memory", memory)
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if not isinstance(y0, Tensor):
        raise TypeError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.dim() < 1 or y0.shape[0] == 0 or y0.numel() == 0:
        raise ValueError(f"y0 must have a non-empty batch dimension 0, got shape {tuple(y0.shape)}")
    check_finite_tensor("y0", y0)
    stop_mode: StopMode = "abs" if stop == "abs" else "rel"
    if y0.dim() == 1:
        # One scalar per batch element: solve in [B, 1] so that norms have a dimension to reduce.
        solution = solve(
            lambda y: f(y.squeeze(1)).unsqueeze(1),
            y0.unsqueeze(1),
            method,
            tol=tol,
            max_iter=max_iter,
            stop=stop,
            damping=damping,
            memory=memory,
            mixing=mixing,
            ridge=ridge,
            raise_on_failure=raise_on_failure,
            keep_iterates=keep_iterates,
            rounding=rounding,
        )
        iterates = None if solution.iterates is None else [t.squeeze(1) for t in solution.iterates]
        return dataclasses.replace(solution, y=solution.y.squeeze(1), iterates=iterates)
    if method != "anderson":
        raise ValueError(f"the reference keeps only the former Anderson, not {method!r}")
    solution = _anderson(f, y0, tol, max_iter, stop_mode, memory, mixing, ridge, keep_iterates, rounding)
    if raise_on_failure and not solution.converged:
        raise ConvergenceError(solution)
    return solution
