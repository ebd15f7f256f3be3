"""Bookkeeping shared by the solvers: residual histories, decisions per element, freezing.

Every step a solver hands the tracker its iterate y and f(y). The tracker
records both residuals, and decides, per batch element: CONVERGED (residual <=
tol), NONFINITE (a NaN or Inf residual), DIVERGED (a residual
DIVERGENCE_FACTOR times the first), CYCLE (the iterate returns to one of the
last MAX_PERIOD while progress has stalled); whatever is undecided when the
budget is spent is MAX_ITER. A decided element is frozen by the solver
(:func:`freeze`), so one slow element never perturbs a finished one.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
from torch import Tensor

from iqa.solvers.result import NORM_FLOOR, Solution, Status, StopMode

#: A residual that grows by this factor over the first one is DIVERGED.
DIVERGENCE_FACTOR = 1e8
#: Cycles of period 2..MAX_PERIOD are detected.
MAX_PERIOD = 8
#: A residual above this fraction of the one MAX_PERIOD steps earlier has stalled (less than 10% progress,
#: a contraction rate above 0.9^(1/8) ~ 0.987), a precondition for declaring CYCLE.
STALL_RATIO = 0.9
#: A cycle is declared when ||y_t - y_{t-p}|| <= CYCLE_GAP ||f(y_t) - y_t||: the iterate comes back far closer
#: than one step moves, which monotone or slowly converging drift never does.
CYCLE_GAP = 1e-3


def freeze(decided: Tensor, old: Tensor, new: Tensor) -> Tensor:
    """Keep decided batch elements at their old value."""
    mask = decided.reshape((-1,) + (1,) * (old.dim() - 1))
    return torch.where(mask, old, new)


def relaxed(y: Tensor, fy: Tensor, damping: float) -> Tensor:
    """The damped Picard step (1 - a) y + a f(y), computed as y + a (f(y) - y); exactly f(y) when a = 1."""
    return fy if damping == 1.0 else y + damping * (fy - y)


class Tracker:
    """Histories, decisions and freezing for one solve.

    The hot path (:meth:`observe`) costs two norms and two small host copies per
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
        #: Which elements have a status (rebuilt by publish(), so the solver loops do not rebuild it per step).
        self.decided = torch.zeros(batch, dtype=torch.bool, device=y0.device)
        self.n_decided = 0
        #: How many elements ``decided`` shows (n_decided as of the last publish()).
        self.n_published = 0
        #: Which elements have no status yet, on the host (for the solvers' vectorised bookkeeping).
        self.open = np.ones(batch, dtype=bool)
        self.limit: list[float] = []
        self.recent: deque[Tensor] = deque(maxlen=MAX_PERIOD + 1)
        self.iterates: list[Tensor] | None = [] if keep_iterates else None
        #: Which elements may be declared CYCLE (None: all). Anderson withholds it until an element gives up.
        self.may_cycle: np.ndarray | None = None

    def norm(self, t: Tensor) -> Tensor:
        """||t|| over every dimension but the batch."""
        return torch.linalg.vector_norm(t, dim=self.dims)

    @property
    def any_decided(self) -> bool:
        return self.n_decided > 0

    @property
    def all_decided(self) -> bool:
        return self.n_decided == len(self.statuses)

    def observe(self, y: Tensor, fy: Tensor, step: int, diff: Tensor | None = None) -> list[float]:
        """Record the residuals of iterate ``step`` (y, with fy = f(y)), decide what
        can be decided, and return the stop-mode residuals. ``diff`` is fy - y
        when the caller has computed it already."""
        if torch.is_grad_enabled():
            y, fy = y.detach(), fy.detach()
            diff = None if diff is None else diff.detach()
        dims = self.dims
        r = torch.linalg.vector_norm(fy - y if diff is None else diff, dim=dims).tolist()
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

    def forget_recent(self) -> None:
        """Drop the iterates kept for the cycle check (up to MAX_PERIOD + 1 of them alive). For a solver that
        knows its next check cannot mark any element (``may_cycle`` will refuse each): that check is then
        skipped, as it is while fewer than MAX_PERIOD + 1 iterates are kept."""
        self.recent.clear()

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
        self.publish()

    def mark(self, b: int, status: Status, step: int) -> None:
        """Give element b its status; :meth:`publish` then updates the ``decided`` mask once for all marks."""
        self.statuses[b] = status
        self.steps[b] = step
        self.n_decided += 1
        self.open[b] = False

    def publish(self) -> None:
        """Rebuild ``decided`` after a round of :meth:`mark` calls, if the round marked any (one tensor per round,
        not per element: timeit of a round that marks 16 elements, 9 us against 135 us with one tensor per mark).
        A new mask, never one changed in place: autograd may have saved the old one (unrolled mode)."""
        if self.n_published != self.n_decided:
            self.decided = torch.from_numpy(~self.open).to(self.device)
            self.n_published = self.n_decided

    def check_cycles(self, step: int) -> None:
        """Mark CYCLE where y_t returns to y_{t-p} (2 <= p <= MAX_PERIOD) and progress has stalled:
        ||y_t - y_{t-p}|| <= CYCLE_GAP ||f(y_t) - y_t||, the residual is above tol, and it fell by less
        than 10% (STALL_RATIO) over the last MAX_PERIOD steps."""
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
            if is_stalled and closest[b] <= CYCLE_GAP * now[b]:
                self.mark(b, Status.CYCLE, step)
        self.publish()

    def finish(self, n_steps: int) -> None:
        for b, s in enumerate(self.statuses):
            if s is None:
                self.mark(b, Status.MAX_ITER, n_steps)
        self.publish()

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
