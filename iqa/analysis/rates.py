"""The empirical contraction rate of an iteration, from its residual history.

Near a fixed point the residuals of y_{t+1} = f(y_t) decay like r_t ~ C q^t
with q = rho(J(y*)) (the dominant eigenvalue's modulus). A least-squares line
through log r_t over the tail of the history estimates log q; the tail avoids
the transient, and residuals at or below ``floor`` (rounding level) or past an
element's own step count (frozen values) are left out.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iqa.solvers import Solution

#: Fewer tail points than this give NaN: a line through two or three points is not a rate.
MIN_POINTS = 4


def empirical_rate(
    residuals: Tensor,
    steps: Tensor | list[int] | tuple[int, ...] | None = None,
    *,
    tail: float = 0.5,
    floor: float = 0.0,
    min_points: int = MIN_POINTS,
) -> Tensor:
    """exp(slope of log r_t over the tail), per element: [T] -> scalar, [T, B] -> [B] (float64).

    Args:
        residuals: r_t, oldest first; one column per batch element.
        steps: the length of each element's own history (``Solution.steps``);
            rows beyond it are ignored. Default: all T rows.
        tail: the fraction (0, 1] of each element's usable history that is fitted.
        floor: residuals <= floor end the usable history (they are rounding).
        min_points: below this many usable tail points the rate is NaN.

    The usable history of an element is its prefix up to its step count and up
    to (not including) the first residual that is <= floor or not finite.
    """
    if not isinstance(residuals, Tensor) or residuals.dim() not in (1, 2):
        raise ValueError(
            f"residuals must be a tensor of shape [T] or [T, B], got {getattr(residuals, 'shape', residuals)!r}"
        )
    if not 0 < tail <= 1:
        raise ValueError(f"tail must be in (0, 1], got {tail!r}")
    if not (floor >= 0 and math.isfinite(floor)):
        raise ValueError(f"floor must be a finite number >= 0, got {floor!r}")
    if not (isinstance(min_points, int) and min_points >= 2):
        raise ValueError(f"min_points must be an integer >= 2, got {min_points!r}")
    single = residuals.dim() == 1
    r = residuals.detach().to(torch.float64).cpu()
    if single:
        r = r[:, None]
    T, B = r.shape
    lengths = [T] * B if steps is None else [int(s) for s in steps]
    if len(lengths) != B or any(not 0 <= s <= T for s in lengths):
        raise ValueError(f"steps must give one length in [0, {T}] per batch element ({B}), got {lengths}")
    rates = torch.full((B,), math.nan, dtype=torch.float64)
    for b in range(B):
        column = r[: lengths[b], b]
        bad = ~(torch.isfinite(column) & (column > floor))
        usable = int(bad.nonzero()[0, 0]) if bool(bad.any()) else column.numel()
        start = usable - max(min_points, math.ceil(tail * usable))
        if start < 0:
            continue
        t = torch.arange(start, usable, dtype=torch.float64)
        logs = column[start:usable].log()
        tc = t - t.mean()
        slope = (tc * (logs - logs.mean())).sum() / (tc * tc).sum()
        rates[b] = slope.exp()
    return rates[0] if single else rates


def solution_rate(solution: Solution, *, tail: float = 0.5, floor: float = 0.0, min_points: int = MIN_POINTS) -> Tensor:
    """:func:`empirical_rate` of a Solution's absolute residuals, each element up to its own step count."""
    return empirical_rate(solution.residuals, solution.steps, tail=tail, floor=floor, min_points=min_points)
