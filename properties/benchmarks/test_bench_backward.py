"""Implicit forward + backward is no slower than unrolled once the forward takes 30 or more steps (issue 3).

Both modes solve the same problem to the same tolerance: Picard, damped so
that the forward needs at least ``min_steps`` steps, with a relative stop. The
unrolled mode records every step and back-propagates through all of them
(each step's backward also forms that step's weight gradient); the implicit
mode runs the forward without a graph and then solves the adjoint
g = v + J^T g, one vector-Jacobian product with respect to y per step, and
forms the weight gradients once. So per step the implicit mode saves the graph
bookkeeping and the weight-gradient products, and pays an autograd call per
adjoint step; on these shapes (float32, a batch of 8 sequences of 32 tokens of
width 32) the first dominates.

The comparison is asserted here, from the measured stats: ``test_unrolled``
runs first (pytest keeps file order) and leaves its timings in
:data:`MEASURED`; ``test_implicit`` compares against them. The minimum over
rounds is compared: it is the round least disturbed by other processes, the
estimate of the cost itself. Memory is not timed here: it is an exact count
(``properties/variant/test_memory.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from iqa.layer import FixedPointLayer
from iqa.variants import Tag, Variant
from properties.benchmarks.conftest import median_seconds
from properties.strategies import Case
from properties.tags import requires

#: Picard relaxation -> the least number of forward steps it must produce (asserted, not assumed).
DEPTHS = {0.35: 30, 0.1: 100}
CASE = Case(batch=8, tokens=32, dim=32, dtype=torch.float32, scale=1.0, seed=0)
#: Relative stop at ~100 eps32: reachable in float32, and the gradient is then accurate to ~1e-5.
TOL = 1e-5
MAX_ITER = 2000
ROUNDS = 15
TABLE = "Forward + backward wall time (s): implicit against unrolled at the same tolerance"

#: (variant, damping) -> {"min": seconds, "median": seconds, "steps": forward steps} of the unrolled mode.
MEASURED: dict[tuple[str, float], dict[str, float]] = {}


def build(variant: Variant, backward: str, damping: float) -> tuple[FixedPointLayer, Any]:
    layer = CASE.layer(variant, solver="picard", damping=damping, tol=TOL, stop="rel", max_iter=MAX_ITER,
                       backward=backward)  # fmt: skip
    x = CASE.inputs()
    cotangent = torch.randn(CASE.shape, dtype=torch.float64, generator=CASE.generator(2)).to(CASE.dtype)
    params = list(layer.parameters())

    def run() -> None:
        y = layer(x)
        torch.autograd.grad((y * cotangent).sum(), params)

    return layer, run


def forward_steps(layer: FixedPointLayer, damping: float) -> int:
    solution = layer.last_solution
    assert solution is not None and solution.converged, "the forward did not converge: nothing fair to compare"
    steps = solution.n_steps
    assert steps >= DEPTHS[damping], f"damping {damping} gave {steps} forward steps, fewer than {DEPTHS[damping]}"
    return steps


def timed(benchmark: Any, variant: Variant, mode: str, damping: float) -> tuple[FixedPointLayer, int]:
    """Time forward + backward in ``mode`` on the damping's problem; the layer and its forward step count."""
    layer, run = build(variant, mode, damping)
    benchmark.group = f"backward[{variant.name}-damping {damping}]"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1)
    return layer, forward_steps(layer, damping)


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("damping", list(DEPTHS))
def test_unrolled(benchmark, summary, variant: Variant, damping: float) -> None:
    _, steps = timed(benchmark, variant, "unrolled", damping)
    benchmark.extra_info.update(mode="unrolled", forward_steps=steps)
    if benchmark.stats:
        MEASURED[(variant.name, damping)] = {
            "min": float(benchmark.stats.stats.min),
            "median": float(benchmark.stats.stats.median),
            "steps": steps,
        }
    summary(TABLE).add(f"{variant.name} damping {damping}", forward_steps=steps, unrolled=median_seconds(benchmark))


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("damping", list(DEPTHS))
def test_implicit(benchmark, summary, variant: Variant, damping: float) -> None:
    """Asserts min(implicit) <= min(unrolled) on the same problem (the unrolled one measured just before)."""
    layer, steps = timed(benchmark, variant, "implicit", damping)
    adjoint = layer.last_backward_solution
    assert adjoint is not None and adjoint.converged, "the adjoint solve did not converge"
    benchmark.extra_info.update(mode="implicit", forward_steps=steps, adjoint_steps=adjoint.n_steps)
    row = summary(TABLE)
    row.ratio("implicit / unrolled", "implicit", "unrolled")
    row.add(f"{variant.name} damping {damping}", implicit=median_seconds(benchmark), adjoint_steps=adjoint.n_steps)
    if not benchmark.stats:  # --benchmark-disable: nothing was timed, nothing to compare
        return
    unrolled = MEASURED.get((variant.name, damping))
    if unrolled is None:
        pytest.skip("the unrolled benchmark of this problem did not run first (run the whole module)")
    assert unrolled["steps"] == steps, "the two modes solved different forwards"
    implicit_min = float(benchmark.stats.stats.min)
    benchmark.extra_info.update(unrolled_min=unrolled["min"], ratio_of_min=implicit_min / unrolled["min"])
    assert implicit_min <= unrolled["min"], (
        f"implicit forward+backward took {implicit_min:.4f} s against {unrolled['min']:.4f} s unrolled "
        f"at {steps} forward steps"
    )
