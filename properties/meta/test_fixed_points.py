"""Meta tests of properties.fixed_points: the set-up that the gradient properties rely on.

:func:`~properties.fixed_points.stable_fixed_point` must hand back only what it
promises (a converged forward at a locally stable fixed point, checked here
independently: the residual recomputed, rho from the eigenvalues of the dense
Jacobian) and reject a failed forward with ``assume``, whether the failure is
reported or raised, so that no gradient property passes by skipping.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.errors import UnsatisfiedAssumption

from iqa import analysis
from iqa.analysis.rounding import map_rounding
from iqa.variants import resolve
from properties.fixed_points import cotangent, stable_fixed_point
from properties.strategies import CONTRACTIVE_SCALES, Case, cases

TOL = 1e-12
small_cases = cases(batch=(1, 2), tokens=(2, 4), dim=(1, 4), dtypes=(torch.float64,), scales=CONTRACTIVE_SCALES)


@given(case=small_cases, solver=st.sampled_from(["picard", "anderson"]))
def test_stable_fixed_point_is_converged_and_stable(case: Case, solver: str) -> None:
    layer, x = stable_fixed_point(case, resolve("hopfield"), "cpu", solver=solver, tol=TOL, max_iter=500)
    solution = layer.last_solution
    assert solution is not None and solution.converged
    assert torch.equal(x, case.inputs())
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        residual = torch.linalg.vector_norm((f(solution.y) - solution.y).flatten(1), dim=1)
    # the solver measured the same residual of the same y; recomputing f rounds by 2 eps_f per row (sqrt(N) rows)
    rounding = 2 * math.sqrt(case.tokens) * map_rounding(layer, x, solution.y)
    assert bool((residual <= TOL + rounding).all()), f"residual {residual.tolist()} above tol {TOL}"
    rho = torch.linalg.eigvals(analysis.jacobian(f, solution.y)).abs().amax(dim=-1)
    assert bool((rho < 1).all()), f"rho(J*) {rho.tolist()}: not locally stable"


@given(case=small_cases, raise_on_failure=st.booleans())
def test_stable_fixed_point_rejects_a_failed_forward(case: Case, raise_on_failure: bool) -> None:
    """One Picard step from y0 = x cannot reach 1e-12 (f moves x): rejected, reported or raised alike."""
    with pytest.raises(UnsatisfiedAssumption):
        stable_fixed_point(
            case, resolve("hopfield"), "cpu", solver="picard", tol=TOL, max_iter=1, raise_on_failure=raise_on_failure
        )


@given(case=small_cases)
def test_cotangent_is_drawn_from_the_case_seed(case: Case) -> None:
    """Same case, same cotangent (reproducible failures); independent of the inputs x (another generator offset)."""
    v = cotangent(case, "cpu")
    assert v.shape == case.shape and v.dtype == torch.float64
    assert torch.equal(v, cotangent(case, "cpu"))
    assert not torch.equal(v, case.inputs())
    assert torch.equal(cotangent(case, "cpu", torch.float32), v.to(torch.float32))
