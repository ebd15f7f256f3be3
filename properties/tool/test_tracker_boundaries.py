"""The tracker's decision rules at their exact boundaries (iqa.solvers.tracker), fed hand-made iterates.

Each rule compares a residual or a gap with a documented threshold: DIVERGED at a residual DIVERGENCE_FACTOR
times the first; CYCLE where the residual fell by less than 10% over the last MAX_PERIOD steps
(now >= STALL_RATIO x the residual MAX_PERIOD steps before) and the iterate came back to within
CYCLE_GAP x the residual of one of the last MAX_PERIOD (a period of 2 or more). Random draws never land on
such a boundary, so these tests build the iterates: y_t on distinct integer points of one axis (no cycle unless
placed), and f(y_t) = y_t + r_t e_0, so that each residual is r_t exactly (the norm of a vector with one
non-zero entry: sqrt(r^2) = r in floating point, checked as each step is observed).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from iqa import Status
from iqa.solvers.tracker import CYCLE_GAP, DIVERGENCE_FACTOR, MAX_PERIOD, STALL_RATIO, Tracker

F64 = torch.float64
TOL = 1e-12


def point(position: float, offset: float = 0.0) -> Tensor:
    """[1, 3]: position on axis 1, ``offset`` on axis 2, 0 on axis 0 (where the residual steps go)."""
    return torch.tensor([[0.0, position, offset]], dtype=F64)


def run(residuals: list[float], places: dict[int, Tensor] | None = None, stop: str = "abs") -> Tracker:
    """Observe steps 1..T with f(y_t) = y_t + r_t e_0 and y_t = t e_1 (or ``places[t]``); the tracker afterwards
    (an element still undecided is left so: finish() is not called)."""
    places = places or {}
    track = Tracker(point(1.0), TOL, stop, keep_iterates=False)  # type: ignore[arg-type]
    for step, r in enumerate(residuals, 1):
        y = places.get(step, point(float(step)))
        track.observe(y, y + r * torch.tensor([[1.0, 0.0, 0.0]], dtype=F64), step)
        assert track.abs_history[-1][0] == r, "the residual is not exactly r_t: the boundary is not where it is meant"
    return track


@pytest.mark.parametrize("first", [1.0, 0.5, 3.0])
def test_a_residual_exactly_the_divergence_factor_times_the_first_diverges(first: float) -> None:
    """r_8 = DIVERGENCE_FACTOR r_1 is DIVERGED at step 8 (the first divergence check), one ulp less is not."""
    limit = DIVERGENCE_FACTOR * first
    at = run([first] + [2 * first] * 6 + [limit])
    assert (at.statuses[0], at.steps[0]) == (Status.DIVERGED, MAX_PERIOD)
    below = run([first] + [2 * first] * 6 + [math.nextafter(limit, 0.0)])
    assert below.statuses[0] is None


def test_a_residual_that_fell_by_exactly_ten_percent_has_stalled() -> None:
    """An exact return (y_24 = y_22) at step 24 with r_24 = STALL_RATIO r_16 exactly: stalled, so CYCLE at 24.
    The residuals 1, 2, 7 and 8 steps before are 4x larger (a check that read another step would see progress),
    and at step 16 the residual had fallen from 4 to 1 (no stall, no cycle there)."""
    residuals = [4.0] * 24
    residuals[16 - 1], residuals[24 - 1] = 1.0, STALL_RATIO * 1.0
    track = run(residuals, {24: point(22.0)})
    assert (track.statuses[0], track.steps[0]) == (Status.CYCLE, 24)
    # a residual a little above the stall line still is; a little below it is progress
    assert run([*residuals[:-1], math.nextafter(STALL_RATIO, 1.0)], {24: point(22.0)}).statuses[0] is Status.CYCLE
    assert run([*residuals[:-1], math.nextafter(STALL_RATIO, 0.0)], {24: point(22.0)}).statuses[0] is None


@pytest.mark.parametrize("period", range(2, MAX_PERIOD + 1))
def test_a_return_exactly_the_cycle_gap_times_the_residual_away_is_a_cycle(period: int) -> None:
    """Residual 2 throughout (stalled); y_24 comes back to within exactly CYCLE_GAP x 2 of y_(24 - period) and to
    no other of the last MAX_PERIOD iterates: CYCLE at step 24 (not before); one ulp farther, none."""
    gap = CYCLE_GAP * 2.0
    track = run([2.0] * 24, {24: point(24.0 - period, gap)})
    assert (track.statuses[0], track.steps[0]) == (Status.CYCLE, 24)
    assert run([2.0] * 24, {24: point(24.0 - period, math.nextafter(gap, 1.0))}).statuses[0] is None


def test_the_cycle_check_keeps_only_the_iterates_it_compares() -> None:
    """The check compares y_t with the last MAX_PERIOD iterates, so no more than MAX_PERIOD + 1 are kept alive."""
    track = run([2.0] * (3 * MAX_PERIOD + 3))
    assert len(track.recent) == MAX_PERIOD + 1
    assert torch.equal(track.recent[-1], point(3.0 * MAX_PERIOD + 3))
