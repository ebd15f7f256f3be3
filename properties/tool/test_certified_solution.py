"""``certified_solve``'s record is what its docstring says it is: the certificate with the smallest worst value,
its norm, the solve's stopping rule and budget, the residual and rounding of the returned y recomputed here, and
the bound (residual + rounding) / (1 - kappa). Its soundness (y* within the bound) is test_analysis_bounds.py's.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from iqa import analysis
from iqa.analysis.certified_solution import CERTIFICATE_NORMS, in_norm, steps_needed, token_norm
from iqa.analysis.rounding import map_rounding
from properties.tool.layers import relaxed_seed

F64 = torch.float64


@given(kappa=st.floats(0.0, 0.999), start=st.floats(1e-12, 1e6), tol=st.floats(1e-14, 1e-2))
def test_steps_needed_is_the_first_t_with_kappa_t_start_below_tol(kappa: float, start: float, tol: float) -> None:
    """The smallest t >= 0 with kappa^t start <= tol (1 - kappa), plus two; counted here one step at a time."""
    t, left = 0, start
    while left > tol * (1 - kappa) and kappa > 0:
        left *= kappa
        t += 1
    # the closed form takes a log ratio: it may land one step past the count when the two sit within rounding
    assert steps_needed(kappa, start, tol) - 2 in (t, t + 1) if t else steps_needed(kappa, start, tol) == 2


def test_steps_needed_edges() -> None:
    assert steps_needed(0.0, 1.0, 1e-8) == 2  # a zero certificate: one step lands on y*
    assert steps_needed(0.5, 0.5, 1.0) == 2  # already within tol (1 - kappa)
    assert steps_needed(0.5, 1.0, 0.25) == 2 + 3  # 0.5^3 = tol (1 - kappa) = 1/8: on the line after 3 steps


def layer_of(dim: int, relaxation: float, scale: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    return relaxed_seed(dim, relaxation, scale, g), g


@given(
    batch=st.integers(1, 3),
    tokens=st.integers(1, 4),
    dim=st.integers(1, 3),
    relaxation=st.sampled_from([1.0, 0.5]),
    scale=st.one_of(st.floats(0.05, 0.5), st.just(4.0)),  # 4: no certificate < 1 (the error)
    given_start=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_certified_solve_reports_what_it_did(batch, tokens, dim, relaxation, scale, given_start, seed) -> None:
    layer, g = layer_of(dim, relaxation, scale, seed)
    x = torch.randn(batch, tokens, dim, generator=g, dtype=F64)
    certs = analysis.certificates(layer, x)
    worst = {name: float(getattr(certs, name).max()) for name in CERTIFICATE_NORMS}
    event("no certificate < 1" if min(worst.values()) >= 1 else "certified")
    if min(worst.values()) >= 1:
        message = re.escape("no certificate < 1 for every batch element (best: ")
        with pytest.raises(ValueError, match=message):
            analysis.certified_solve(layer, x)
        return
    y0 = torch.randn(batch, tokens, dim, generator=g, dtype=F64) if given_start else None
    result = analysis.certified_solve(layer, x, y0)
    name = min(worst, key=worst.__getitem__)
    assert result.certificate == name and result.norm == CERTIFICATE_NORMS[name]
    assert torch.equal(result.kappa, getattr(certs, name).to(F64))
    f = layer.fixed_point_map(x)
    start = x if y0 is None else y0  # the seed layer starts at x
    with torch.no_grad():
        first = token_norm(f(start) - start, "fro")
        residual = token_norm(f(result.y) - result.y, result.norm)
    assert torch.equal(result.solution.residuals[0], first), "the solve did not start where it was asked to"
    k = float(result.kappa.max())
    eps_start = map_rounding(layer, x, start)
    tol = 10 * math.sqrt(tokens) * 2 * float(eps_start.max()) / (1 - k)
    assert result.solution.tol == tol
    # the budget is enough for the residual to reach tol under kappa < 1, and the solve kept to it
    budget = steps_needed(k, math.sqrt(tokens) * float(first.max()), tol)
    assert result.solution.converged and max(result.solution.steps) <= budget
    assert torch.equal(result.residual, residual)
    rows = torch.maximum(eps_start, map_rounding(layer, x, result.y))
    rounding = rows if result.norm == "rows" else rows * math.sqrt(tokens)
    assert torch.equal(result.rounding, rounding)
    assert torch.equal(result.error_bound, (residual + rounding) / (1 - result.kappa))


def test_norm_helpers() -> None:
    t = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]], dtype=torch.float32)
    assert torch.equal(token_norm(t, "rows"), torch.tensor([5.0], dtype=F64))
    assert torch.equal(token_norm(t, "fro"), torch.tensor([math.sqrt(26.0)], dtype=F64))
    with pytest.raises(ValueError, match=re.escape("unknown norm 'max'; choose 'rows' or 'fro'")):
        token_norm(t, "max")
    per_row = torch.tensor([2.0], dtype=F64)
    assert torch.equal(in_norm(per_row, "rows", 9), per_row)
    assert torch.equal(in_norm(per_row, "fro", 9), per_row * 3)
