"""Anderson acceleration (type II) with per-element safeguards, its history in ring buffers.

Each step mixes the last m pairs (x_i, f(x_i)): with g_i = f(x_i) - x_i,

    alpha = argmin ||sum_i alpha_i g_i||  subject to  sum_i alpha_i = 1,
    x_next = beta sum_i alpha_i f(x_i) + (1 - beta) sum_i alpha_i x_i      (beta = mixing),

alpha from (G G^T + lam I) w = 1, alpha = w / sum(w), lam = ridge trace(G G^T) / m.
The pairs live in ring buffers [B, m, n], F and G = F - X, and X only where
the mix needs it (beta < 1: with beta = 1 the step is alpha F). On the host the
buffers hold m slots from the start (no copy when the ring fills up), taken over
from the last finished solve of the same shape where it left them
(:class:`SpareBuffers`); on a device, where memory is committed at allocation,
they grow to m slots as pairs arrive. G G^T is kept up
to date by one new row per step, so a step costs two length-n products per
pair (the new Gram row and alpha F), one batched m x m solve, and a fixed
number of small operations, whatever B is. When no graph is recorded (every
mode but unrolled) and the tensors are on the CPU, everything lives in numpy
(:class:`_HostPairs`): the buffers (float64 for float64 iterates, float32
otherwise), G G^T in float64, the m x m solve and both products. At small n a
step costs what its calls cost, and a numpy call on a small array costs a
fraction of a torch call (the LU alone: ~25 us in torch); on the band cases
(N = D = 8) Anderson takes 0.72-0.74x the time it took with torch buffers and
a host system. While a graph is recorded, and on a GPU, the pairs and the system are
torch tensors on the map's device (:class:`_DevicePairs`). Per-element
bookkeeping (best residual, stall counter, usable pairs) is vectorised on the
host, where the tracker already has the residuals.

Safeguards, each per batch element:

- restart: a residual above RESTART_FACTOR times the element's best drops its
  history (the extrapolation left the region where the secant model holds);
- stale pairs: a stored pair whose residual is more than STALE_FACTOR times the
  newest one is dropped, with every older pair;
- fallback: a singular system, sum |alpha| > ALPHA_LIMIT or a non-finite step
  gives a damped Picard step (damping = mixing) instead, counted in
  ``Solution.fallbacks``. Without a ridge, "singular" means numerically so:
  cond(C) k eps >= 1 for C = D^-1/2 S D^-1/2 (S the k x k system, D its diagonal;
  the scaling takes out the pairs' sizes, so only near-dependent directions count).
  LU does not find an exactly singular Gram matrix reliably (a pivot
  a - a (1/a) a of rounding size), and the alpha it returns then is rounding. With
  a ridge > 0 the system is never singular;
- give up: after STALL_STEPS steps in a row without a new best residual, an
  element that has taken at least one accelerated step starts again from y0
  with damped Picard steps for the rest of its budget. Picard's trajectory from
  y0 is what a stalled acceleration is measured against, so Anderson then fails
  only where that Picard iteration would, in the steps left. Between its first
  accelerated step and giving up an element is never declared CYCLE: its stall
  ends in the fallback instead.

A converged element returns the iterate that met tol; any other returns the
best iterate it saw (and that iterate's residual).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iqa.solvers.options import Solver
from iqa.solvers.result import NORM_FLOOR, Map, Solution, Status, StopMode
from iqa.solvers.tracker import MAX_PERIOD, Tracker, freeze, relaxed
from iqa.validation import check_positive_int, check_unit_interval

#: Default history length m: the shortest with which every band case of the benchmarks (rho(J*) in [0.8, 0.95])
#: needs at most 0.4 x Picard's evaluations (measurements: properties/benchmarks/README.md).
DEFAULT_HISTORY = 8
#: sum |alpha| above this is ill-conditioned: the step would amplify the rounding of the stored iterates (eps
#: relative) 1e4-fold, to ~1e-12 in float64 and ~1e-3 in float32, where it stops helping.
ALPHA_LIMIT = 1e4
#: Restart (drop the history) when the residual exceeds this factor times the element's best.
RESTART_FACTOR = 2.0
#: Drop a stored pair (and the older ones) whose residual exceeds this factor times the newest one's: it samples
#: the map far from the iterate, and its large row of G dominates the least-squares system.
STALE_FACTOR = 1e4
#: Give up on acceleration after this many steps without a new best residual: shorter gave up on plateaus that
#: Anderson leaves in the band cases; longer wastes the budget where Picard needs nearly all of it.
STALL_STEPS = 16


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson acceleration with restarts, stale-pair removal, a Picard fallback and give-up (module docs).

    ``history`` is m, the number of pairs mixed (``memory=`` is its old name, still accepted by the keyword
    forms such as ``solve(f, y0, "anderson", memory=5)``); ``mixing`` is beta in (0, 1], also the damping of
    its Picard steps; ``ridge`` is the Tikhonov term relative to trace(G G^T) / m.
    """

    history: int = DEFAULT_HISTORY
    mixing: float = 1.0
    ridge: float = 1e-10

    name = "anderson"
    relaxation = "mixing"
    aliases = {"memory": "history"}  # noqa: RUF012 (a class attribute of the base, not a field)

    def __post_init__(self) -> None:
        check_positive_int("history", self.history)
        check_unit_interval("mixing", self.mixing)
        ridge = self.ridge
        if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (ridge >= 0 and math.isfinite(ridge)):
            raise ValueError(f"ridge must be a finite number >= 0, got {ridge!r}")

    def run(self, f: Map, y0: Tensor, *, tol: float, max_iter: int, stop: StopMode, keep_iterates: bool) -> Solution:
        return _AndersonRun(self, y0, tol, stop, keep_iterates).solve(f, max_iter)


class _Ring:
    """Which slot of a ring of m pairs each new pair goes to, the residual of each stored pair, and the stale-pair
    rule; the storage (:class:`_HostPairs`, :class:`_DevicePairs`) is the subclass's.

    Slots fill from 0, so the first ``count`` slots are the valid ones; ``head`` is the newest. ``capacity`` is the
    buffers' number of slots: the device buffers start with one and double it (up to m) when the ring is full, so
    that a solve that stops after k < m pairs holds about k of them (at most 2k), not m; the host buffers start
    with m (:class:`_HostPairs`).
    """

    gram: Tensor | None = None

    def __init__(self, batch: int, m: int) -> None:
        self.m = m
        self.residual = np.zeros((m, batch))  # the absolute residual of each stored pair's x
        self.count = 0
        self.head = -1
        self.capacity = 1

    def _advance(self, residual: np.ndarray) -> int:
        """Move the head to the next slot (growing the buffers when it is one past their capacity) and record
        the new pair's residual there; the slot."""
        slot = (self.head + 1) % self.m
        if slot == self.capacity:
            self.capacity = min(self.m, 2 * self.capacity)
            self._grow(self.capacity)
        self.head = slot
        self.count = min(self.count + 1, self.m)
        self.residual[slot] = residual
        return slot

    def _grow(self, capacity: int) -> None:
        raise NotImplementedError

    def step(self, mixing: float, ridge: float, usable: np.ndarray) -> tuple[Tensor, np.ndarray] | None:
        raise NotImplementedError

    def ages(self) -> np.ndarray:
        """Age of each valid slot (0 = newest), [count]."""
        return (self.head - np.arange(self.count)) % self.m

    def fresh(self, cap: np.ndarray) -> np.ndarray:
        """Per element, how many of its newest pairs (at most ``cap``) to use: up to the first, going back, whose
        residual exceeds STALE_FACTOR times the newest one's."""
        stored = self.residual[: self.count]
        newest = stored[self.head]
        if stored.max() <= STALE_FACTOR * newest.min():  # nothing stale (NaN fails this test: the full rule runs)
            return cap
        by_age = self.residual[self.ages()]  # [count, B], newest first
        within = by_age[1:] <= STALE_FACTOR * by_age[0]
        leading = np.cumprod(within, axis=0).sum(axis=0)
        return np.minimum(1 + leading, cap)

    def next_iterate(
        self, y: Tensor, fy: Tensor, mixing: float, ridge: float, usable: np.ndarray
    ) -> tuple[Tensor, np.ndarray]:
        """The next iterate [B, n] from the newest pair (y, f(y)) and the history: Anderson's where its system is
        sound and the element may use more than one pair, else the damped Picard step (bit for bit); and which
        elements fell back."""
        found = self.step(mixing, ridge, usable)
        if found is None:
            return relaxed(y, fy, mixing), np.zeros(y.shape[0], dtype=bool)
        new, ok = found
        accelerating = usable > 1
        take = ok & accelerating
        if np.count_nonzero(take) == take.size:  # count_nonzero: a third of the cost of take.all() at small B
            return new, ~take
        fell_back = ~ok & accelerating
        mask = torch.from_numpy(take).to(y.device)[:, None]
        return torch.where(mask, new, relaxed(y, fy, mixing)), fell_back


class SpareBuffers:
    """The host buffers of the last finished solve, kept for the next solve of the same shape.

    A solve writes one new slot of F and G (and X) per step for its first m steps. In freshly mapped buffers each
    write first faults its pages in, on every solve: at B = 8, N = D = 64, 4 heads, float32 (5 steps to relative
    1e-4) the forward solve took 4.3-4.7 ms with taken-over buffers against 4.6-4.8 ms without, f ~0.45 ms
    (interleaved scratch runs, development checkout). Only slots a solve wrote are read, so what the buffers held
    before does not matter. At most one set of at most ``limit`` bytes is kept, so an idle process keeps at most
    that much. ``take`` and ``keep`` are single dict operations (atomic under the GIL): two threads never share a
    set.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = {}

    def take(self, key: tuple[Any, ...]) -> tuple[np.ndarray, ...] | None:
        """The kept buffers for ``key`` (they are no longer kept), or None."""
        return self._kept.pop(key, None)

    def keep(self, key: tuple[Any, ...], buffers: tuple[np.ndarray, ...]) -> None:
        """Keep ``buffers`` for the next solve of ``key`` in place of whatever was kept, if they fit the limit."""
        if sum(b.nbytes for b in buffers) <= self.limit:
            self._kept = {key: buffers}

    def clear(self) -> None:
        self._kept = {}


#: Solves up to B n m x 4 bytes x 2 = 16 MiB of pairs (float32: B = 8, N = 256, D = 128, m = 8) reuse the
#: buffers; at larger n a page fault costs less and less next to f (O(N^2 D) against O(N D)).
SPARE_BUFFERS = SpareBuffers(limit=16 * 2**20)


class _HostPairs(_Ring):
    """The pairs of a solve that records no graph, on the CPU: the buffers F, G (and X with ``store_x``) are numpy
    arrays [B, m, n] in float64 for float64 iterates and float32 otherwise (numpy has no bfloat16; a half-precision
    G G^T would overflow), G G^T a float64 array [B, m, m]. Every product of a step (the new Gram row, the mix
    alpha F) is one numpy matmul: at small n a step's cost is its number of calls, and a numpy call on a small
    array costs a fraction of a torch call (module docs)."""

    def __init__(self, y0: Tensor, m: int, store_x: bool = True) -> None:
        batch, n = y0.shape[0], y0[0].numel()
        super().__init__(batch, m)
        self.dtype = y0.dtype
        self.host_dtype = np.float64 if y0.dtype == torch.float64 else np.float32
        # All m slots at once: no growth copies. The last finished solve's buffers of this shape are taken over
        # (SPARE_BUFFERS); else np.zeros maps them untouched (calloc), and the OS backs pages only as pushes write
        # them. Only slots a push wrote are ever read, so what a taken-over buffer held does not matter.
        self.key = (batch, m, n, self.host_dtype, store_x)
        buffers = SPARE_BUFFERS.take(self.key)
        if buffers is None:
            buffers = tuple(np.zeros((batch, m, n), dtype=self.host_dtype) for _ in range(3 if store_x else 2))
        self.F, self.G = buffers[0], buffers[1]
        self.X = buffers[2] if store_x else None
        self.capacity = m
        self.gram_host = np.zeros((batch, m, m))
        #: G G^T's diagonal, a view: trace(G G^T) of the first k slots is gram_diagonal[:, :k].sum(-1)
        self.gram_diagonal = self.gram_host.reshape(batch, m * m)[:, :: m + 1]
        self.diagonals, self.eyes = _identities(m)
        self.ones_host = np.ones((batch, m, 1))

    def release(self) -> None:
        """Hand the buffers to the next solve of the same shape (:data:`SPARE_BUFFERS`); this ring is done."""
        SPARE_BUFFERS.keep(self.key, (self.F, self.G) if self.X is None else (self.F, self.G, self.X))

    def _host(self, t: Tensor) -> np.ndarray:
        """[B, n] on the host in the buffers' dtype: a view for float32 and float64 tensors, a copy otherwise."""
        return (t if t.dtype == self.dtype and self.dtype in _HOST_VIEWS else t.float()).numpy()

    def push(self, x: Tensor, fx: Tensor, g: Tensor, residual: np.ndarray) -> None:
        """Store (x, f(x), g = f(x) - x), all [B, n], in the oldest slot (x only with ``store_x``), and its row of
        G G^T; ``residual`` is ||g|| per element."""
        slot = self._advance(residual)
        k = self.count
        g_host = self._host(g)
        if self.X is not None:
            self.X[:, slot] = self._host(x)
        self.F[:, slot] = self._host(fx)
        self.G[:, slot] = g_host
        with np.errstate(all="ignore"):  # a diverging element's Inf and NaN: refused at its step
            row = np.matmul(self.G[:, :k], g_host[:, :, None])[:, :, 0]  # [B, k]: g_i . g_new
        self.gram_host[:, :k, slot] = row
        self.gram_host[:, slot, :k] = row

    def step(self, mixing: float, ridge: float, usable: np.ndarray) -> tuple[Tensor, np.ndarray] | None:
        """The Anderson step [B, n] from each element's newest ``usable`` pairs, and which elements' systems
        failed (singular, sum |alpha| > ALPHA_LIMIT, or a non-finite step). None when no element may use more
        than one pair (every step is a Picard step)."""
        k = self.count
        if k == 1 or int(usable.max()) == 1:
            return None
        # A diverging element brings Inf and NaN into its system: its step is refused below, no warning needed.
        with np.errstate(all="ignore"):
            keep: np.ndarray | None = None
            if int(usable.min()) < k:
                # Dropped pairs get alpha_i = 0: their rows and columns of the system are zeroed, 1 on the diagonal.
                diagonal = self.diagonals[k]
                keep = self.ages()[None, :] < usable[:, None]
                system = self.gram_host[:, :k, :k] * (keep[:, :, None] & keep[:, None, :])
                scale = np.maximum(system.trace(axis1=1, axis2=2), NORM_FLOOR) / np.maximum(usable, 1)
                system[:, diagonal, diagonal] += (ridge * scale)[:, None] + ~keep
            else:
                scale = np.maximum(self.gram_diagonal[:, :k].sum(-1), NORM_FLOOR) / k
                # + 0 off the diagonal: exact
                system = self.gram_host[:, :k, :k] + (ridge * scale)[:, None, None] * self.eyes[k]
            w = _solve_each(system, self.ones_host[:, :k])  # NaN where singular: refused by the alpha check
            if keep is not None:
                w = w * keep
            alpha = w / w.sum(-1, keepdims=True)
            sound = np.abs(alpha).sum(-1) <= ALPHA_LIMIT  # False for a NaN or Inf alpha too
            if ridge == 0:  # numerically singular (see the module doc)
                sound &= ~_numerically_singular(system, k)
            new = self._mix(alpha.astype(self.host_dtype, copy=False)[:, None, :], k, mixing)
            step = torch.from_numpy(new)
            if self.dtype in _HOST_VIEWS:
                return step, sound & np.isfinite(new).all(-1)
            step = step.to(self.dtype)
            # rounded to half precision, a finite mix may overflow: the extremes of the step itself, as float32
            low, high = (t.float().numpy() for t in _extremes(step))
            return step, sound & np.isfinite(low) & np.isfinite(high)

    def _mix(self, alpha: np.ndarray, k: int, mixing: float) -> np.ndarray:
        """beta sum_i alpha_i f(x_i) + (1 - beta) sum_i alpha_i x_i over the first k slots, [B, n] (alpha [B, 1, k])."""
        new = np.matmul(alpha, self.F[:, :k])[:, 0]
        if mixing == 1.0:
            return new
        if self.X is None:
            raise ValueError("an Anderson step with mixing < 1 needs the stored iterates (store_x=True)")
        return mixing * new + (1 - mixing) * np.matmul(alpha, self.X[:, :k])[:, 0]


class _DevicePairs(_Ring):
    """The pairs as torch tensors on the map's device, with G G^T there too: while a graph is recorded (unrolled
    mode; the buffers are then replaced, never written in place, so that autograd keeps the versions it saved,
    and the step is differentiated through), and on a GPU, where a host system would cost a second
    synchronisation per step."""

    def __init__(self, y0: Tensor, m: int, differentiable: bool, store_x: bool = True) -> None:
        batch, n = y0.shape[0], y0[0].numel()
        super().__init__(batch, m)
        self.F = y0.new_zeros(batch, 1, n)
        self.G = y0.new_zeros(batch, 1, n)
        self.X = y0.new_zeros(batch, 1, n) if store_x else None
        # torch has no float16/bfloat16 LU on the CPU, and squared norms overflow there: the m x m system is float32
        self.work = y0.dtype if y0.dtype in (torch.float32, torch.float64) else torch.float32
        self.gram: Tensor = torch.zeros(batch, m, m, dtype=self.work, device=y0.device)
        self.ones = torch.ones(batch, m, 1, dtype=self.work, device=y0.device)
        self.eye = torch.eye(m, dtype=self.work, device=y0.device)
        self.differentiable = differentiable

    def _grow(self, capacity: int) -> None:
        self.F, self.G = self._grown(self.F, capacity), self._grown(self.G, capacity)
        self.X = None if self.X is None else self._grown(self.X, capacity)

    def _grown(self, buffer: Tensor, capacity: int) -> Tensor:
        """``buffer`` [B, c, n] grown to ``capacity`` slots, its c slots copied to the front."""
        batch, old, n = buffer.shape
        if self.differentiable:
            return torch.cat((buffer, buffer.new_zeros(batch, capacity - old, n)), 1)
        grown = buffer.new_empty(batch, capacity, n)  # the new slots are written before they are read
        grown[:, :old] = buffer
        return grown

    def push(self, x: Tensor, fx: Tensor, g: Tensor, residual: np.ndarray) -> None:
        """Store (x, f(x), g = f(x) - x), all [B, n], in the oldest slot (x only with ``store_x``), and its row of
        G G^T; ``residual`` is ||g|| per element."""
        slot = self._advance(residual)
        k = self.count
        if self.differentiable:
            index = torch.tensor([slot], device=g.device)
            if self.X is not None:
                self.X = self.X.index_copy(1, index, x.unsqueeze(1))
            self.F = self.F.index_copy(1, index, fx.unsqueeze(1))
            self.G = self.G.index_copy(1, index, g.unsqueeze(1))
        else:
            if self.X is not None:
                self.X[:, slot] = x
            self.F[:, slot] = fx
            self.G[:, slot] = g
        G = self.G[:, :k]
        if self.work != G.dtype:
            G, g = G.to(self.work), g.to(self.work)
        # [B, 1, k]: g_new . g_i (this orientation is a fast batched row-times-matrix product; G g is not)
        row = torch.bmm(g.unsqueeze(1), G.transpose(1, 2))
        index = torch.tensor([slot], device=g.device)
        column = torch.nn.functional.pad(row.transpose(1, 2), (0, 0, 0, self.m - k))
        gram = self.gram.index_copy(2, index, column)
        self.gram = gram.index_copy(1, index, gram[:, :, slot].unsqueeze(1))

    def step(self, mixing: float, ridge: float, usable: np.ndarray) -> tuple[Tensor, np.ndarray] | None:
        """:meth:`_HostPairs.step` with the system on the device (torch): the same system, the same rules for
        dropped pairs, the ridge and the three checks."""
        k = self.count
        if k == 1 or int(usable.max()) == 1:
            return None
        gram = self.gram[:, :k, :k]
        keep = None
        n_kept: Tensor | float = float(k)
        extra: Tensor | float = 0.0
        if int(usable.min()) < k:
            # Dropped pairs get alpha_i = 0: their rows and columns of the system are zeroed, 1 on the diagonal.
            keep_host = self.ages()[None, :] < usable[:, None]
            keep = torch.from_numpy(keep_host).to(gram.device)
            gram = gram * (keep[:, :, None] & keep[:, None, :])
            n_kept = torch.from_numpy(np.maximum(usable, 1)).to(gram.device, gram.dtype)
            extra = (~keep).to(gram.dtype)
        scale = gram.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(NORM_FLOOR) / n_kept
        if keep is None:
            system = gram + (ridge * scale)[:, None, None] * self.eye[:k, :k]
        else:
            system = gram + torch.diag_embed((ridge * scale)[:, None] + extra)
        w, info = torch.linalg.solve_ex(system, self.ones[:, :k])
        if ridge == 0:  # numerically singular (see the module doc): counted as LAPACK's info > 0
            info = torch.where(_numerically_singular_torch(system.detach(), k), torch.ones_like(info), info)
        w = w.squeeze(-1)
        if keep is not None:
            w = w * keep
        alpha = (w / w.sum(-1, keepdim=True)).to(self.F.dtype)
        new = self._mix(alpha.unsqueeze(1), k, mixing)
        # One transfer for the three checks. sum |alpha| <= ALPHA_LIMIT is False for NaN and Inf too (it checks
        # that alpha is finite); max |new| = max(max new, -min new) without a |new| copy, and it propagates NaN,
        # so isfinite(max |new|) is isfinite(new).all(-1).
        work = self.work
        low, high = _extremes(new)
        checks = torch.stack((info.to(work), alpha.abs().sum(-1).to(work), torch.maximum(high, -low).to(work)))
        info_h, alpha_h, peak = checks.detach().cpu().numpy()
        return new, (info_h == 0) & (alpha_h <= ALPHA_LIMIT) & np.isfinite(peak)

    def _mix(self, alpha: Tensor, k: int, mixing: float) -> Tensor:
        """beta sum_i alpha_i f(x_i) + (1 - beta) sum_i alpha_i x_i over the first k slots, [B, n] (alpha [B, 1, k])."""
        new = torch.bmm(alpha, self.F[:, :k]).squeeze(1)
        if mixing == 1.0:
            return new
        if self.X is None:
            raise ValueError("an Anderson step with mixing < 1 needs the stored iterates (store_x=True)")
        return mixing * new + (1 - mixing) * torch.bmm(alpha, self.X[:, :k]).squeeze(1)


def make_pairs(y0: Tensor, m: int, differentiable: bool, store_x: bool = True) -> _HostPairs | _DevicePairs:
    """The ring of m pairs for a solve from ``y0`` [B, n]: on the host when no graph is recorded and the tensors
    are on the CPU, else on the device (``differentiable``: a graph is recorded through the steps)."""
    if not differentiable and y0.device.type == "cpu":
        return _HostPairs(y0, m, store_x)
    return _DevicePairs(y0, m, differentiable, store_x)


try:  # numpy's LAPACK gufunc behind np.linalg.solve (numpy.linalg._umath_linalg since numpy 1.8), see _solve_each
    from numpy.linalg import _umath_linalg

    _lapack_solve: Any = _umath_linalg.solve
except (ImportError, AttributeError):  # pragma: no cover - a numpy without it: np.linalg.solve
    _lapack_solve = None

#: dtypes whose tensors the host buffers view without a copy
_HOST_VIEWS = (torch.float32, torch.float64)


def _extremes(new: Tensor) -> tuple[Tensor, Tensor]:
    """(min, max) of each row of ``new`` [B, n]; NaN propagates to both and an Inf to one, so both are finite exactly
    when the row is. Two reductions: on the CPU torch.aminmax is ~10x slower than amin and amax together (timeit
    on a [8, 16 384] float32 tensor, the step of test_bench_anderson.py's large case, one thread: 279 us vs ~24 us)."""
    return new.amin(-1), new.amax(-1)


def _numerically_singular(system: np.ndarray, k: int) -> np.ndarray:
    """[B]: whether each k x k system S (PSD, float64) is singular to rounding, cond(C) k eps >= 1 with
    C = D^-1/2 S D^-1/2 (a zero diagonal entry is a zero row: singular). A system with NaN or Inf entries is left to
    the other checks (False here)."""
    singular = np.zeros(system.shape[0], dtype=bool)
    finite = np.isfinite(system).all(axis=(-2, -1))
    if not finite.any():
        return singular
    S = system[finite]
    d = np.sqrt(np.abs(np.diagonal(S, axis1=-2, axis2=-1)))
    zero = (d == 0).any(axis=-1)
    d = np.where(d > 0, d, 1.0)
    values = np.linalg.svd(S / (d[:, :, None] * d[:, None, :]), compute_uv=False)
    singular[finite] = zero | (values[:, -1] <= values[:, 0] * k * np.finfo(S.dtype).eps)
    return singular


def _numerically_singular_torch(system: Tensor, k: int) -> Tensor:
    """:func:`_numerically_singular` on the system's device (the differentiable path), [B] bool."""
    finite = torch.isfinite(system).all(dim=-1).all(dim=-1)
    S = torch.where(finite[:, None, None], system, torch.eye(k, dtype=system.dtype, device=system.device))
    d = S.diagonal(dim1=-2, dim2=-1).abs().sqrt()
    zero = (d == 0).any(dim=-1)
    d = torch.where(d > 0, d, torch.ones_like(d))
    values = torch.linalg.svdvals(S / (d[:, :, None] * d[:, None, :]))
    return finite & (zero | (values[:, -1] <= values[:, 0] * k * torch.finfo(S.dtype).eps))


@functools.cache
def _identities(m: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For k = 0..m: the indices of a k x k diagonal and the k x k identity (shared by every solve with history m;
    read only)."""
    return [np.arange(k) for k in range(m + 1)], [np.eye(k) for k in range(m + 1)]


def _solve_each(system: np.ndarray, ones: np.ndarray) -> np.ndarray:
    """w with system w = 1 per batch element [B, k] (``ones`` [B, k, 1]); NaN for an element whose system is
    exactly singular (a zero pivot, LAPACK's info > 0, as torch.linalg.solve_ex reports it). A system with NaN or
    Inf entries gets a non-finite w too. Either way the sum |alpha| check refuses the step.

    Through numpy's LAPACK gufunc (what np.linalg.solve calls after its checks) where numpy has it: it fills a
    singular element's w with NaN and goes on with the others, so one call solves the batch, and it skips
    np.linalg.solve's argument handling (timeit at B = 1, k = 8, float64: 1.7 us against 5.4 us); else
    np.linalg.solve, which raises for the whole batch, and then each element alone."""
    if _lapack_solve is not None:
        return _lapack_solve(system, ones)[..., 0]  # the caller's errstate silences LAPACK's "invalid value" flag
    try:
        return np.linalg.solve(system, ones)[..., 0]
    except np.linalg.LinAlgError:
        w = np.full(system.shape[:-1], np.nan)
        for b in range(system.shape[0]):
            with contextlib.suppress(np.linalg.LinAlgError):  # singular: w[b] stays NaN
                w[b] = np.linalg.solve(system[b], ones[b])[:, 0]
        return w


class _AndersonRun:
    """The state of one Anderson solve: the pairs and each element's safeguard state, as host arrays."""

    def __init__(self, options: Anderson, y0: Tensor, tol: float, stop: StopMode, keep_iterates: bool) -> None:
        batch = y0.shape[0]
        self.options = options
        self.y0 = y0
        self.track = Tracker(y0, tol, stop, keep_iterates)
        self.pairs: _HostPairs | _DevicePairs | None = None
        self.best = np.full(batch, math.inf)
        self.best_y = y0
        self.restart_point = y0
        #: How many of the newest pairs each element may use (a restart drops the older ones).
        self.usable = np.zeros(batch, dtype=np.int64)
        #: Steps since the element last lowered its best residual.
        self.stalled = np.zeros(batch, dtype=np.int64)
        #: Whether it ever took an accelerated step: until then it is on Picard's trajectory, nothing to give up.
        self.deviated = np.zeros(batch, dtype=bool)
        self.gave_up = np.zeros(batch, dtype=bool)
        self.fallbacks = 0
        #: The step of the next cycle check, once :meth:`may_cycle_at_next_check` said no element may be CYCLE there.
        self.quiet_until = 0

    def solve(self, f: Map, max_iter: int) -> Solution:
        options, track, y0 = self.options, self.track, self.y0
        batch = y0.shape[0]
        mixing = options.mixing
        y = y0
        step = 0
        history = options.history
        all_open = np.ones(batch, dtype=bool)
        gave_up_any = False
        for step in range(1, max_iter + 1):
            fy = f(y)
            was_open = track.open.copy() if track.n_decided else all_open
            y_flat, f_flat = y.reshape(batch, -1), fy.reshape(batch, -1)
            g = f_flat - y_flat
            metric = np.array(track.observe(y, fy, step, diff=g.view(y.shape)))
            if step == 1:
                # The first step after giving up is the Picard step from y0, whose f(y0) is already known.
                self.restart_point = relaxed(y0, fy, mixing)
                self.pairs = make_pairs(y0, history, fy.requires_grad or y0.requires_grad, store_x=mixing != 1.0)
            assert self.pairs is not None
            improved = was_open & (metric < self.best)
            n_improved = np.count_nonzero(improved)
            if n_improved:
                self.best = np.where(improved, metric, self.best)
                mask = None if n_improved == batch else torch.from_numpy(improved).to(y.device)
                self.best_y = y if mask is None else freeze(mask, y, self.best_y)
                self.stalled = np.where(improved, 0, self.stalled + 1)
            else:
                self.stalled += 1
            giving_up = None
            if self.stalled.max() >= STALL_STEPS:
                giving_up = self.deviated & ~self.gave_up & (self.stalled >= STALL_STEPS)
                self.gave_up |= giving_up
                gave_up_any = bool(self.gave_up.any())
            if track.all_decided or step == max_iter:
                break
            self.pairs.push(y_flat, f_flat, g, np.array(track.abs_history[-1]))
            restart = metric > RESTART_FACTOR * self.best
            if gave_up_any:
                restart |= self.gave_up
            self.usable = np.where(restart, 1, self.pairs.fresh(np.minimum(self.usable + 1, history)))
            y_next, fell_back = self.pairs.next_iterate(y_flat, f_flat, mixing, options.ridge, self.usable)
            self.deviated |= (self.usable > 1) & ~fell_back
            if (step + 1) % MAX_PERIOD == 0:  # the tracker reads it at its next cycle check only
                track.may_cycle = self.gave_up | ~self.deviated
            if track.recent and (step < self.quiet_until or not self.may_cycle_at_next_check(step)):
                track.forget_recent()
            if gave_up_any or np.count_nonzero(fell_back):
                # Count only elements still being solved: a decided element's step is discarded by the freeze.
                self.fallbacks += int(((fell_back | self.gave_up) & track.open).sum())
            y_next = y_next.reshape(y.shape)
            if giving_up is not None and giving_up.any():
                y_next = freeze(torch.from_numpy(giving_up).to(y.device), self.restart_point, y_next)
            y = freeze(track.decided, y, y_next) if track.any_decided else y_next
        track.finish(step)
        converged = [s is Status.CONVERGED for s in track.statuses]
        y_out = freeze(torch.tensor(converged, device=y.device), y, self.best_y)
        final = [
            track.stop_history[track.steps[b] - 1][b] if converged[b] else float(self.best[b]) for b in range(batch)
        ]
        if isinstance(self.pairs, _HostPairs):
            self.pairs.release()
        return track.solution(y_out, options.name, final, self.fallbacks)

    def may_cycle_at_next_check(self, step: int) -> bool:
        """Whether the tracker's next cycle check (at the next multiple of MAX_PERIOD) may let an open element
        be CYCLE: one on Picard's trajectory (never deviated, or gave up), or one that may give up before it
        (its stall counter, up by at most one a step, can reach STALL_STEPS by the step before). When none
        may, the iterates kept for the check are not needed. Deviation and giving up are never undone."""
        check = (step // MAX_PERIOD + 1) * MAX_PERIOD
        may = self.gave_up | ~self.deviated | (self.stalled + (check - 1 - step) >= STALL_STEPS)
        if (may & self.track.open).any():
            return True
        # stalled + (check - 1 - step) cannot grow within the window, deviation and decisions are never undone,
        # and giving up needs the stall counter at STALL_STEPS: no later step before the check may either
        self.quiet_until = check
        return False
