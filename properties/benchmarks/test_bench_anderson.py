"""Anderson's cost against Picard's and against one evaluation of f (issue 14, "A faster Anderson").

Targets, each a ratio measured in one run:

- on the band cases (N = D = 8, rho(J*) in [0.8, 0.95], see :mod:`properties.benchmarks.band`), Anderson's
  wall time over every band case of a variant is at most ANDERSON_OVER_PICARD times Picard's (it needs
  <= 0.4 x Picard's iterations there, asserted in test_bench_solvers_compare.py);
- at B = 8, N = 256, D = 64 (hopfield, weight scale 1, float32), Anderson's per-step overhead, its step minus
  one evaluation of f, is at most OVERHEAD_OVER_F times one evaluation of f.

Costs are medians over interleaved rounds of this thread's CPU time (``marginal_costs`` of
test_bench_solver.py), so that other processes on a busy machine count less; per-step costs are marginal,
(T(2K) - T(K)) / K, so that what a solve spends once cancels.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch

from iqa import Anderson, Picard, Status, solve
from iqa.variants import Tag, Variant, resolve
from properties.benchmarks import band as grid
from properties.benchmarks.test_bench_solver import cpu_clock, marginal_costs, seed_loop
from properties.strategies import Case
from properties.tags import requires

ANDERSON_OVER_PICARD = 0.8
OVERHEAD_OVER_F = 0.25
BATCH, TOKENS, DIM = 8, 256, 64
#: Anderson reaches a relative residual of 1e-4 in ~16 steps here; steps (K, 2K] = (4, 8] decide nothing and
#: take no fallback (checked on pilot solves).
WINDOW = 4
ROUNDS = 15
BAND_ROUNDS = 7
TABLE = "Anderson's cost (CPU time, one thread): band wall vs Picard; per-step overhead vs one f"


def _solve_all(problems: list[Any], solver: Any) -> None:
    for f, y0 in problems:
        solve(f, y0, solver, tol=grid.TOL, max_iter=grid.MAX_ITER)


@requires(Tag.WEIGHT_DEPENDENT)
def test_anderson_wall_against_picard_in_band(benchmark: Any, summary: Any, variant: Variant) -> None:
    problems = [grid.problem(variant, o.case) for o in grid.band_or_skip(variant)]
    clock = cpu_clock()
    times: dict[str, list[float]] = {"picard": [], "anderson": []}
    with torch.no_grad():
        benchmark.group = f"anderson-vs-picard[{variant.name}]"
        benchmark.pedantic(_solve_all, args=(problems, Anderson()), rounds=3, warmup_rounds=1)
        if benchmark.disabled:
            return
        for i in range(BAND_ROUNDS):
            order = ["picard", "anderson"] if i % 2 == 0 else ["anderson", "picard"]
            for name in order:
                start = clock()
                _solve_all(problems, Picard() if name == "picard" else Anderson())
                times[name].append(clock() - start)
    picard, anderson = statistics.median(times["picard"]), statistics.median(times["anderson"])
    ratio = anderson / picard
    facts = {"band cases": len(problems), "picard s": picard, "anderson s": anderson, "A/P wall": ratio}
    summary(TABLE).add(f"band {variant.name}", **facts, target=ANDERSON_OVER_PICARD)
    benchmark.extra_info.update(facts)
    assert ratio <= ANDERSON_OVER_PICARD, f"Anderson takes {ratio:.2f} x Picard's time on the band cases"


def test_anderson_step_overhead_against_f(benchmark: Any, summary: Any) -> None:
    case = Case(batch=BATCH, tokens=TOKENS, dim=DIM, dtype=torch.float32, scale=1.0, seed=0)
    layer = case.layer(resolve("hopfield"))
    x = case.inputs()
    f, y0 = layer.fixed_point_map(x), layer.initial_point(x)
    anderson = Anderson()
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        # the window decides nothing, takes no Picard fallback, and ends before Anderson converges at the
        # issue's tolerance (relative 1e-4)
        pilot = solve(f, y0, anderson, tol=tiny, max_iter=2 * WINDOW)
        assert all(s is Status.MAX_ITER for s in pilot.statuses) and pilot.fallbacks == 0, pilot
        reached = solve(f, y0, anderson, tol=1e-4, stop="rel", max_iter=100)
        assert min(reached.steps) > 2 * WINDOW, reached.steps
        benchmark.group = "anderson step"
        benchmark.pedantic(solve, args=(f, y0, anderson), kwargs={"tol": tiny, "max_iter": 2 * WINDOW}, rounds=3)
        if benchmark.disabled:
            return
        cost = marginal_costs(
            {
                "anderson": lambda n: solve(f, y0, anderson, tol=tiny, max_iter=n),
                "f": lambda n: seed_loop(f, y0, n),
            },
            WINDOW,
            ROUNDS,
        )
    overhead = (cost["anderson"] - cost["f"]) / cost["f"]
    facts = {"anderson step ms": cost["anderson"] * 1e3, "f ms": cost["f"] * 1e3, "overhead / f": overhead}
    summary(TABLE).add(f"B={BATCH} N={TOKENS} D={DIM} hopfield float32", **facts, target=OVERHEAD_OVER_F)
    benchmark.extra_info.update(facts)
    assert overhead <= OVERHEAD_OVER_F, f"Anderson's step costs f + {overhead:.2f} f (target {OVERHEAD_OVER_F})"
