"""Picard against Anderson to the same tolerance, where acceleration matters.

Target (issue 7): on the variants whose fixed point depends on the weights,
Anderson needs at most half of Picard's iterations where rho(J*) is in
[0.8, 0.95], and never fails where Picard converges. The cases come from
:mod:`properties.benchmarks.band` (a fixed grid, filtered by the measured rho).
Iteration counts are deterministic and asserted (the median ratio, and no
Anderson failure in the band); wall times are timed and shown, never asserted.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from iqa import Status, solve
from iqa.variants import Tag, Variant
from properties.benchmarks import band as grid
from properties.benchmarks.conftest import median_seconds
from properties.strategies import Case
from properties.tags import requires

TABLE = f"Picard vs Anderson to tol {grid.TOL:g}, rho(J*) in {list(grid.BAND)} (f evaluations)"


def _band(variant: Variant) -> list[grid.Outcome]:
    cases = grid.band(variant)
    if not cases:
        pytest.skip(f"{variant.name}: no case of the grid has rho(J*) in {grid.BAND}")
    return cases


def _solve_all(variant: Variant, cases: list[Case], method: str) -> None:
    for case in cases:
        f, y0 = grid.problem(variant, case)
        with torch.no_grad():
            solve(f, y0, method, tol=grid.TOL, max_iter=grid.MAX_ITER)


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_band_cases(benchmark, summary, variant: Variant, method: str) -> None:
    """Time each solver over the variant's band cases (same cases, same tolerance)."""
    band = _band(variant)
    benchmark.group = f"solvers-compare[{variant.name}]"
    benchmark.pedantic(_solve_all, args=(variant, [o.case for o in band], method), rounds=5, warmup_rounds=1)
    table = summary(TABLE)
    table.ratio("time A/P", "anderson s", "picard s")
    table.add(variant.name, **{f"{method} s": median_seconds(benchmark)})
    benchmark.extra_info.update(cases=len(band), tol=grid.TOL, max_iter=grid.MAX_ITER, shape=[grid.TOKENS, grid.DIM])


@requires(Tag.WEIGHT_DEPENDENT)
def test_anderson_halves_picard_in_band(benchmark, summary, variant: Variant) -> None:
    """The counts behind the target; times Anderson on the band case that Picard finds hardest."""
    outcomes = grid.study(variant)
    band = _band(variant)
    ratios = [o.ratio for o in band]
    band_failures = [o for o in band if o.anderson_status is not Status.CONVERGED]
    picard_converged = [o for o in outcomes if o.picard_status is Status.CONVERGED]
    grid_failures = [o for o in picard_converged if o.anderson_status is not Status.CONVERGED]
    hardest = max(band, key=lambda o: o.picard)
    benchmark.group = f"solvers-compare[{variant.name}]"
    benchmark.pedantic(_solve_all, args=(variant, [hardest.case], "anderson"), rounds=5, warmup_rounds=1)
    median = statistics.median(ratios)
    facts = {
        "band cases": len(band),
        "picard p50": statistics.median(o.picard for o in band),
        "anderson p50": statistics.median(o.anderson for o in band),
        "ratio p50": median,
        "ratio max": max(ratios),
        "cases <= 1/2": sum(r <= 0.5 for r in ratios),
        "A fails, band": len(band_failures),
        "A fails, grid": f"{len(grid_failures)}/{len(picard_converged)}",
    }
    summary(TABLE).add(variant.name, **facts)
    benchmark.extra_info.update(facts)
    benchmark.extra_info["band"] = [
        {"scale": o.case.scale, "seed": o.case.seed, "rho": o.rho, "picard": o.picard, "anderson": o.anderson}
        for o in band
    ]
    described = [f"s={o.case.scale} seed={o.case.seed} rho={o.rho} ({o.anderson_status.name})" for o in band_failures]
    assert not band_failures, f"Anderson failed where Picard converged: {described}"
    assert median <= 0.5, f"Anderson/Picard iterations in the band: median {median:.2f} (target <= 0.5)"
