"""The a-priori rounding bounds are the ones iqa.analysis.rounding derives (its module docstring), term by term,
on single-head layers: the seed (values x, scores through W_K and Omega_Q) and its relaxed form. Soundness against
float64 is test_analysis_helpers.py's ``test_rounding_bounds_hold_against_float64``; a bound that is sound but
looser or tighter than derived is caught only here. Every norm is computed here, independently (svdvals, cdist).
"""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa.analysis.linearization import second_order_constant
from iqa.analysis.rounding import jacobian_rounding, map_rounding, score_rounding, weight_norm_product
from iqa.layer import ImplicitQueryAttention, linear_init_
from properties.tool.layers import NoScores, relaxed_seed

F64 = torch.float64
#: The same float64 formula evaluated in another order (norms by svdvals and cdist here): a few eps per term over
#: fewer than 30 terms, so 1e-12 relative leaves ~100x room and still catches any changed constant (>= 1e-3).
FORMULA_RTOL = 1e-12


def row_max(t: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(t.to(F64), dim=-1).amax(dim=-1)


@given(
    batch=st.integers(1, 3),
    tokens=st.integers(1, 5),
    dim=st.integers(1, 4),
    relaxation=st.sampled_from([1.0, 0.5]),
    dtype=st.sampled_from([F64, torch.float32]),
    scale=st.floats(0.1, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_bounds_are_the_derived_formulas(batch, tokens, dim, relaxation, dtype, scale, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    layer = relaxed_seed(dim, relaxation, scale, g, dtype)
    x = torch.randn(batch, tokens, dim, generator=g, dtype=F64).to(dtype)
    y = torch.randn(batch, tokens, dim, generator=g, dtype=F64).to(dtype)
    eps = torch.finfo(dtype).eps
    # W: the scores pass through W_K and Omega_Q, the product of their spectral norms
    norms = [float(torch.linalg.svdvals(w.detach().to(F64))[0]) for w in (layer.W_K.weight, layer.Omega_Q.weight)]
    W = norms[0] * norms[1]
    assert math.isclose(weight_norm_product(layer, x), W, rel_tol=FORMULA_RTOL)
    X, Y = row_max(x), row_max(y)
    s_err = (dim + 2) * eps * W * X * (Y + X + math.sqrt(dim))
    close = dict(rtol=FORMULA_RTOL, atol=0.0)
    assert torch.allclose(score_rounding(layer, x, y), s_err, **close)
    diam = torch.cdist(x.to(F64), x.to(F64)).amax(dim=(-2, -1))  # V = x for the seed
    f_err = diam * (s_err + 4 * eps) + (tokens + 4) * eps * (X + Y + X)
    assert torch.allclose(map_rounding(layer, x, y), f_err, **close)
    n = tokens * dim
    column = W * X * (diam + 2 * X) * (s_err + (2 * tokens + 2 * dim + 8) * eps)
    a = relaxation
    J_err = a * math.sqrt(n) * column + 3 * eps * (1 - a) * math.sqrt(n)
    assert torch.allclose(jacobian_rounding(layer, x, y), J_err, **close)
    # and linearization's second-order constant H = 3 a diam(V) max_j ||a_j||^2, with A = x W_K^T Omega_Q
    A = x.to(F64) @ layer.W_K.weight.detach().T.to(F64) @ layer.Omega_Q.weight.detach().to(F64)
    H = 3 * a * diam * row_max(A) ** 2
    # the layer forms A in its own dtype: two length-D products per entry (2 D eps), squared in ||a_j||^2
    assert torch.allclose(second_order_constant(layer, x), H, rtol=8 * (dim + 1) * eps, atol=0)


@given(
    batch=st.integers(1, 2),
    tokens=st.integers(1, 4),
    heads=st.integers(1, 3),
    width=st.integers(1, 2),
    dtype=st.sampled_from([F64, torch.float32]),
    scale=st.floats(0.1, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_multi_head_bounds_are_the_derived_formulas(batch, tokens, heads, width, dtype, scale, seed) -> None:
    """Heads with an output map W_O (multihead): per head diam(U_h) (s_err + 4 eps) + (N + 4) eps ||W_h||_2
    ||V_h||max with U_h = V_h W_h, plus (N + 4) eps (||y|| + ||x||) and the final product's (h d + 2) eps ||W_O||_F
    sqrt(sum_h ||V_h||max^2) (map_rounding's docstring); J's columns: each head's (diam(V_h) + 2 ||V_h||max)
    stretched by ||W_h||_2, then W_O's product (jacobian_rounding's). W: the scores pass through W_Q and W_K."""
    from iqa.variants.multihead import MultiHeadHopfieldAttention

    g = torch.Generator().manual_seed(seed)
    D = heads * width
    layer = MultiHeadHopfieldAttention(D, heads=heads)
    for linear in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O):
        linear_init_(linear, scale, g)
    layer = layer.to(dtype)
    x = torch.randn(batch, tokens, D, generator=g, dtype=F64).to(dtype)
    y = torch.randn(batch, tokens, D, generator=g, dtype=F64).to(dtype)
    eps = torch.finfo(dtype).eps
    norms = [float(torch.linalg.svdvals(w.weight.detach().to(F64))[0]) for w in (layer.W_Q, layer.W_K)]
    W = norms[0] * norms[1]
    assert math.isclose(weight_norm_product(layer, x), W, rel_tol=FORMULA_RTOL)
    X, Y = row_max(x), row_max(y)
    s_err = (D + 2) * eps * W * X * (Y + X + math.sqrt(D))
    with torch.no_grad():
        Vs = layer.head_values(x).to(F64)  # [B, h, N, d]
        Ws = layer.head_outputs().to(F64)  # [h, d, D]
    diam = lambda t: torch.cdist(t, t).amax(dim=(-2, -1))  # noqa: E731
    per_head = [
        diam(Vs[:, h] @ Ws[h]) * (s_err + 4 * eps)
        + (tokens + 4) * eps * torch.linalg.svdvals(Ws[h])[0] * row_max(Vs[:, h])
        for h in range(heads)
    ]
    concat = torch.sqrt(sum(row_max(Vs[:, h]) ** 2 for h in range(heads)))
    W_O = torch.linalg.vector_norm(Ws)
    f_err = sum(per_head) + (tokens + 4) * eps * (Y + X) + (heads * width + 2) * eps * W_O * concat
    close = dict(rtol=FORMULA_RTOL, atol=0.0)
    assert torch.allclose(map_rounding(layer, x, y), f_err, **close)
    sizes = [diam(Vs[:, h]) + 2 * row_max(Vs[:, h]) for h in range(heads)]
    stretched = sum(torch.linalg.svdvals(Ws[h])[0] * sizes[h] for h in range(heads))
    product = (heads * width + 2) * eps * W_O * sum(sizes)
    terms = W * X * (stretched * (s_err + (2 * tokens + 2 * D + 8) * eps) + product)
    assert torch.allclose(jacobian_rounding(layer, x, y), math.sqrt(tokens * D) * terms, **close)


def test_without_a_score_path_the_bounds_take_every_weight_and_x_as_values() -> None:
    """W = prod max(1, ||W||_2) over every weight matrix when the score path is unknown (no x, frozen weights, or
    a layer without a score form), and a layer without a score form rounds like one whose values are x."""
    layer = ImplicitQueryAttention(3).to(F64)
    g = torch.Generator().manual_seed(1)
    for linear, scale in ((layer.W_K, 0.3), (layer.Omega_Q, 2.5)):  # one norm below 1, one above
        linear_init_(linear, scale, g)
    norms = [float(torch.linalg.svdvals(w.weight.detach())[0]) for w in (layer.W_K, layer.Omega_Q)]
    assert norms[0] < 1 < norms[1]
    x = torch.randn(2, 4, 3, generator=g, dtype=F64)
    every = math.prod(max(1.0, s) for s in norms)
    assert math.isclose(weight_norm_product(layer), every, rel_tol=FORMULA_RTOL)
    assert math.isclose(weight_norm_product(layer, x), norms[0] * norms[1], rel_tol=FORMULA_RTOL)  # the score path
    layer.requires_grad_(False)
    assert math.isclose(weight_norm_product(layer, x), every, rel_tol=FORMULA_RTOL)
    bare = NoScores(3).to(F64)
    bare.load_state_dict(layer.state_dict())
    assert math.isclose(weight_norm_product(bare, x), every, rel_tol=FORMULA_RTOL)
    y = torch.randn(2, 4, 3, generator=g, dtype=F64)
    eps = torch.finfo(F64).eps
    X, Y = row_max(x), row_max(y)
    s_err = 5 * eps * every * X * (Y + X + math.sqrt(3))
    diam = torch.cdist(x, x).amax(dim=(-2, -1))
    expected = diam * (s_err + 4 * eps) + 8 * eps * (X + Y + X)  # N + 4 = 8
    assert torch.allclose(map_rounding(bare, x, y), expected, rtol=FORMULA_RTOL, atol=0)


def test_rate_intervals_feed_the_interval_what_they_document() -> None:
    """rate_intervals: per element, _interval of the iterates with J at the last iterate (dense), H from
    second_order_constant, eps_f the larger map_rounding at the first and the last iterate, the dtype's eps and
    the state's rows."""
    from iqa import solve
    from iqa.analysis import jacobian
    from iqa.analysis.linearization import _interval, rate_intervals

    layer = ImplicitQueryAttention(2).to(F64)
    g = torch.Generator().manual_seed(3)
    for linear in (layer.W_K, layer.Omega_Q):
        linear_init_(linear, 1.5, g)
    x = torch.randn(2, 3, 2, generator=g, dtype=F64)
    sol = solve(layer.fixed_point_map(x), x, "picard", tol=1e-12, max_iter=200, keep_iterates=True)
    assert sol.iterates is not None
    got = rate_intervals(layer, x, sol.iterates)
    J = jacobian(layer.fixed_point_map(x), sol.iterates[-1])
    H = second_order_constant(layer, x)
    eps_f = torch.maximum(map_rounding(layer, x, sol.iterates[0]), map_rounding(layer, x, sol.iterates[-1]))
    for b in range(2):
        ys = [y[b] for y in sol.iterates]
        expected = _interval(ys, J[b], float(H[b]), float(eps_f[b]), torch.finfo(F64).eps, 3)
        assert expected is not None and got[b] == expected
