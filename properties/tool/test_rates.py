"""``empirical_rate`` against numpy: the documented window (each element's usable prefix, its last
max(min_points, ceil(tail * usable)) points) fitted by numpy's least squares, on histories that are not
geometric, so that a wrong window, a wrong slope or a lost element shows. And its bad input, refused by name.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa import analysis
from iqa.analysis.rates import MIN_POINTS


@st.composite
def histories(draw: st.DrawFn) -> tuple[torch.Tensor, list[int], float, float, int, torch.dtype]:
    """[T, B] positive residuals (a random walk in log space, so each window has its own slope), some
    entries at or below the floor or not finite, a step count per element, tail, floor, min_points, dtype."""
    T = draw(st.integers(1, 24), label="T")
    B = draw(st.integers(1, 4), label="B")
    seed = draw(st.integers(0, 2**31 - 1), label="seed")
    g = np.random.default_rng(seed)
    logs = np.cumsum(g.normal(-0.5, 0.6, size=(T, B)), axis=0)
    r = np.exp(logs)
    floor = draw(st.sampled_from([0.0, float(np.exp(np.median(logs)))]), label="floor")
    for _ in range(draw(st.integers(0, 2), label="bad entries")):
        r[g.integers(T), g.integers(B)] = draw(st.sampled_from([0.0, math.inf, math.nan, floor]))
    steps = [draw(st.integers(0, T), label="steps") for _ in range(B)]
    tail = draw(st.sampled_from([1.0, 0.5, 0.3, 0.01]), label="tail")
    min_points = draw(st.integers(2, 6), label="min_points")
    dtype = draw(st.sampled_from([torch.float64, torch.float32]), label="dtype")
    return torch.tensor(r, dtype=dtype), steps, tail, floor, min_points, dtype


def numpy_rate(column: np.ndarray, floor: float, tail: float, min_points: int) -> float:
    """The documented rate of one element's history (already cut at its step count), by numpy."""
    usable = len(column)
    for i, value in enumerate(column):
        if not (np.isfinite(value) and value > floor):
            usable = i
            break
    count = max(min_points, math.ceil(tail * usable))
    if count > usable:
        return math.nan
    t = np.arange(usable - count, usable, dtype=np.float64)
    slope = np.polyfit(t, np.log(column[usable - count : usable]), 1)[0]
    return float(np.exp(slope))


@given(history=histories())
def test_empirical_rate_fits_the_documented_window(history) -> None:
    r, steps, tail, floor, min_points, _ = history
    rates = analysis.empirical_rate(r, steps, tail=tail, floor=floor, min_points=min_points)
    assert rates.dtype == torch.float64 and rates.shape == (r.shape[1],)
    values = r.to(torch.float64).numpy()  # the float32 entries, exactly, in float64
    for b, s in enumerate(steps):
        expected = numpy_rate(values[:s, b], floor, tail, min_points)
        got = float(rates[b])
        if math.isnan(expected):
            assert math.isnan(got), (b, got)
            continue
        # both fit <= 24 points of |log r| <= ~40 in float64: the slopes agree to ~1e-13 absolute, the rates
        # to that relative; float32 input is fitted in float64 (a float32 fit would be ~1e-7 off)
        assert math.isclose(got, expected, rel_tol=1e-11), (b, got, expected)
    single = analysis.empirical_rate(r[:, 0], tail=tail, floor=floor, min_points=min_points)
    assert single.dim() == 0
    expected = numpy_rate(values[:, 0], floor, tail, min_points)
    same = math.isnan(expected) and math.isnan(float(single))
    assert same or math.isclose(float(single), expected, rel_tol=1e-11)  # as above


def test_default_window_is_the_last_half_and_four_points_at_least() -> None:
    """The defaults (tail 0.5, floor 0, MIN_POINTS = 4) on a history that changes rate at its middle."""
    r = torch.tensor([4.0**-t for t in range(6)] + [4.0**-5 * 2.0**-t for t in range(1, 7)], dtype=torch.float64)
    assert math.isclose(float(analysis.empirical_rate(r)), 0.5, rel_tol=1e-12)  # the last 6 of 12: rate 1/2
    assert MIN_POINTS == 4
    assert math.isnan(float(analysis.empirical_rate(r[:3])))  # 3 < 4 points
    # 4^-t is exact in binary: the fit of log r over 4 points rounds only in its few sums, ~10 eps
    assert math.isclose(float(analysis.empirical_rate(r[:4])), 0.25, rel_tol=1e-12)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: analysis.empirical_rate([1.0, 0.5]), r"residuals must be a tensor of shape \[T\] or \[T, B\], got "),
        (lambda r: analysis.empirical_rate(r[None, None]), r"got torch.Size\(\[1, 1, 5\]\)"),
        (lambda r: analysis.empirical_rate(r, tail=0.0), r"tail must be in \(0, 1\], got 0.0"),
        (lambda r: analysis.empirical_rate(r, tail=1.5), r"tail must be in \(0, 1\], got 1.5"),
        (lambda r: analysis.empirical_rate(r, floor=-1.0), r"floor must be a finite number >= 0, got -1.0"),
        (lambda r: analysis.empirical_rate(r, floor=math.inf), r"floor must be a finite number >= 0, got inf"),
        (lambda r: analysis.empirical_rate(r, min_points=1), r"min_points must be an integer >= 2, got 1"),
        (lambda r: analysis.empirical_rate(r, min_points=2.5), r"min_points must be an integer >= 2, got 2.5"),
        (lambda r: analysis.empirical_rate(r, steps=[6]), r"steps must give one length in \[0, 5\] per batch"),
        (lambda r: analysis.empirical_rate(r, steps=[-1]), r"got \[-1\]"),
        (lambda r: analysis.empirical_rate(r, steps=[1, 1]), r"per batch element \(1\), got \[1, 1\]"),
    ],
)
def test_empirical_rate_refuses_bad_input_by_name(call, message: str) -> None:
    r = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625], dtype=torch.float64)
    with pytest.raises(ValueError, match=message):
        call(r)


def test_solution_rate_is_the_rate_of_the_solutions_own_history() -> None:
    """solution_rate = empirical_rate of the Solution's absolute residuals, each element cut at its own step
    count, with the options passed on (each changes the answer here) and the same defaults."""
    from iqa import solve

    M = torch.tensor([[[0.5, 0.2], [0.0, 0.3]], [[0.9, 0.0], [0.1, 0.2]]], dtype=torch.float64)
    b = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float64)
    sol = solve(lambda y: (M @ y[..., None]).squeeze(-1) + b, torch.zeros(2, 2, dtype=torch.float64), tol=1e-9)
    assert sol.steps[0] != sol.steps[1]
    assert torch.equal(analysis.solution_rate(sol), analysis.empirical_rate(sol.residuals, sol.steps))
    for options in (dict(tail=1.0), dict(floor=1e-6), dict(min_points=30), dict(tail=0.3, floor=1e-8, min_points=3)):
        expected = analysis.empirical_rate(sol.residuals, sol.steps, **options)
        got = analysis.solution_rate(sol, **options)
        assert torch.allclose(got, expected, rtol=0, atol=0, equal_nan=True)
        assert not torch.allclose(expected, analysis.solution_rate(sol), rtol=0, atol=0, equal_nan=True), options
