"""Forward + backward wall time per backward mode, against the depth T of the forward solve.

Unrolled differentiation records all T steps and back-propagates through each;
the implicit mode records one application of f and solves the adjoint fixed
point; the phantom mode records k steps from the last iterate. So unrolled
grows like T and the other two should not grow with T beyond the forward
itself. The bytes each mode saves for backward are counted, exactly, by the
memory benchmarks (``iqa.memory``), not here.

Every mode runs exactly T Picard steps: the problem is the band case of
:mod:`properties.benchmarks.band` (rho(J*) in [0.8, 0.95]) on which Picard is
slowest, which needs more than max(T) steps to reach the band's tolerance, so
each solve stops at max_iter = T. Implicit and phantom gradients are then taken
at a point that is not yet a fixed point: that warning is silenced here (the
cost is what is measured), while the adjoint solve, with its own step limit,
must converge (its warning stays an error).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from iqa import BACKWARD_MODES, AdjointOptions, BackwardConvergenceWarning, Implicit, NonConvergedForwardWarning
from iqa.variants import Tag, Variant
from properties.benchmarks import band as grid
from properties.benchmarks.conftest import median_seconds
from properties.tags import requires

#: From 30 on, the adjoint at y_T converges on the band cases of hopfield, positional, injection and multihead; on
#: causal's it diverges at 30 and 60 (J(y_T) is not yet contractive there), and those depths are skipped.
DEPTHS = (30, 60, 100)
TABLE = "Forward + backward median wall time (s) per backward mode against forward depth T"


@requires(Tag.WEIGHT_DEPENDENT)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("mode", BACKWARD_MODES)
def test_forward_backward(benchmark, summary, variant: Variant, mode: str, depth: int) -> None:
    hardest = grid.slowest(grid.band_or_skip(variant))
    assert hardest.picard > max(DEPTHS), f"the slowest band case needs only {hardest.picard} steps"
    case = hardest.case
    adjoint = AdjointOptions(tol=grid.TOL, max_iter=grid.MAX_ITER)
    backward = Implicit(adjoint) if mode == "implicit" else mode
    layer = case.layer(variant, solver="picard", tol=grid.TOL, max_iter=depth, backward=backward)
    x = case.inputs().requires_grad_(True)
    weight = torch.randn(x.shape, dtype=x.dtype, generator=case.generator(2))
    wrt = [*layer.parameters(), x]

    def run() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NonConvergedForwardWarning)
            y = layer(x)
            torch.autograd.grad((y * weight).sum(), wrt)

    if mode == "implicit":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BackwardConvergenceWarning)
            run()
        solved = layer.last_backward_solution
        if solved is not None and not solved.converged:
            pytest.skip(
                f"the adjoint at y_T ends {solved.status.name} at T = {depth} on {variant.name}'s band case: no "
                "converged implicit gradient to time"
            )
    benchmark.group = f"depth[{variant.name}-{mode}]"
    benchmark.pedantic(run, rounds=5, warmup_rounds=1)
    solution = layer.last_solution
    assert solution is not None and solution.n_steps == depth, "the forward did not run exactly T steps"
    if mode == "implicit":
        solved = layer.last_backward_solution
        assert solved is not None and solved.converged, "the adjoint solve did not converge"
        benchmark.extra_info["adjoint_steps"] = solved.n_steps
    benchmark.extra_info.update(depth=depth, mode=mode, shape=list(case.shape), scale=case.scale, seed=case.seed)
    summary(TABLE).add(f"{variant.name} {mode}", **{f"T={depth}": median_seconds(benchmark)})
