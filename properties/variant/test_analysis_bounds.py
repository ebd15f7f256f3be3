"""Meta tests of iqa.analysis and properties.regimes: the helpers against exact answers.

Every helper is run where the answer is known by construction: linear maps with
chosen singular values and eigenvalues (negative and complex dominant ones
included), residual histories that are sums of geometric sequences, float32
evaluations checked against float64 ones for the rounding bounds, and regimes
built to order.
"""

from __future__ import annotations

import torch
from hypothesis import event, given, target
from hypothesis import strategies as st

from iqa import analysis, solve
from iqa.analysis.linearization import second_order_constant
from iqa.analysis.rounding import jacobian_rounding, map_rounding
from iqa.variants import Tag, Variant
from properties.regimes import require
from properties.strategies import ANY_SCALE, Case, cases
from properties.tags import requires


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@requires(Tag.SCORE_MATRIX)
@given(case=cases(scales=ANY_SCALE))
def test_attention_weights_are_the_softmax_of_the_map(variant: Variant, case: Case, device) -> None:
    """The recorded weights are those that reproduce f(y) = p V (+ the rest): one softmax, rows summing to 1."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    f = layer.fixed_point_map(x)
    weights = analysis.attention_weights(f, x)
    heads = analysis.head_terms(layer, x)[0].shape[-3]  # one softmax over every head's rows at once
    shape = (case.batch, case.tokens, case.tokens) if heads == 1 else (case.batch, heads, case.tokens, case.tokens)
    assert len(weights) == 1 and weights[0].shape == shape
    eps = torch.finfo(case.dtype).eps
    assert bool(((weights[0].sum(-1) - 1).abs() <= (case.tokens + 2) * eps).all())
    gap = analysis.saturation_gap(f, x)
    assert bool(((gap >= 0) & (gap <= 1)).all())
    assert bool(analysis.saturation_gap(lambda y: 2 * y, x).isnan().all())


@requires(Tag.SCORE_MATRIX)
@given(case=cases(dtypes=(torch.float64,), scales=ANY_SCALE), step=st.sampled_from([1e-1, 1e-2, 1e-3]))
def test_second_order_constant_bounds_the_taylor_remainder(variant: Variant, case: Case, step: float, device) -> None:
    """||f(y + d) - f(y) - J(y) d||_row <= H / 2 ||d||^2_(2,inf) (+ the rounding of two f and one J d)."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    rows = layer.initial_point(x).shape[-2]  # the state's rows: N, or a slot state's K
    mixing = torch.softmax(torch.randn(rows, case.tokens, generator=case.generator(4), dtype=torch.float64), -1)
    y = mixing.to(device) @ x
    d = step * torch.randn(y.shape, generator=case.generator(6), dtype=torch.float64).to(device)
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        remainder = f(y + d) - f(y) - analysis.jvp(f, y, d)
    H = second_order_constant(layer, x)
    size = analysis.token_norm(d, "rows").cpu()
    rounding = (
        2 * map_rounding(layer, x, y + d).cpu()
        + jacobian_rounding(layer, x, y).cpu() * analysis.token_norm(d, "fro").cpu()
    )
    observed = analysis.token_norm(remainder, "rows").cpu()
    target(float((observed / (H / 2 * size**2 + rounding)).max()), label="remainder / bound")
    assert bool((observed <= H / 2 * size**2 + rounding).all()), f"remainder {observed.tolist()} vs H {H.tolist()}"


@requires(Tag.SCORE_MATRIX)
@given(case=cases(scales=st.floats(0.05, 0.7)))
def test_certified_solve_bound_holds(variant: Variant, case: Case, device) -> None:
    """The proven ||y - y*|| bound holds against y* from a float64 solve to 1e-13 of the same layer."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    _, kappa = analysis.best_certificate(layer, x)
    event(f"certificate < 1: {bool((kappa < 1).all())}")
    require(bool((kappa < 1).all()), "certificate kappa < 1")  # the bound is proven only under it
    result = analysis.certified_solve(layer, x)
    wide = case.layer(variant, device)
    wide.load_state_dict(layer.state_dict())
    wide = wide.to(torch.float64)
    with torch.no_grad():
        x64 = x.double()
        reference = solve(wide.fixed_point_map(x64), wide.initial_point(x64), tol=1e-13, max_iter=10_000)
    assert reference.converged
    # the float64 reference is itself within (1e-13 + its rounding) / (1 - kappa) of y*
    slack = analysis.in_norm(torch.full_like(kappa, 1e-13), result.norm, result.y.shape[-2]) / (1 - kappa)
    error = analysis.token_norm(result.y.double() - reference.y, result.norm).cpu()
    target(float((error / result.error_bound).max()), label="error / proven bound")
    assert bool((error <= result.error_bound + slack).all()), (
        f"error {error.tolist()} > bound {result.error_bound.tolist()}"
    )
