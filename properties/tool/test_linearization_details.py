"""The consensus check, the rate interval and the rounding bounds where the broader properties rarely look.

Each test here pins a behaviour that a library mutant changed while every other property passed (the mutation
report of ``tox -e mutate`` names them): the consensus check's limit, met exactly at its boundary by a map that
is off the mean by a chosen amount; ``consensus_radius``'s ``check`` and its dtype (float16 included); the rate
interval's window (differences that are exactly zero, a difference between the noise floor and 1.5 times it), its
remainder bound nu_t (an exact linear iteration, where nu_t is J d_t's rounding alone) and its lower pairwise bound
(iterates that shrink faster than rho, and a lower bound of exactly 0); ``rate_intervals`` on a float32 layer; the
rounding bounds with more batch elements than tokens, with several heads whose values are in output space (the
sum over heads), for a float32 layer without a score form, and for a layer whose scores pass through no weight.

References are built here: closed forms of exact (power-of-two) iterations, the documented formulas with norms
from svdvals and cdist, and the inputs that ``rate_intervals`` documents it feeds ``_interval``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from iqa import analysis
from iqa.analysis.linearization import SIGNAL_TO_NOISE, _interval, rate_intervals, second_order_constant
from iqa.analysis.rounding import jacobian_rounding, map_rounding, weight_norm_product
from iqa.layer import FixedPointLayer, ImplicitQueryAttention, linear_init_
from iqa.solvers import Map
from iqa.variants import resolve
from iqa.variants.multihead import MultiHeadHopfieldAttention
from properties.tool.layers import NoScores, relaxed_seed
from properties.tool.test_rounding_formulas import FORMULA_RTOL, row_max

F64 = torch.float64
EPS = torch.finfo(F64).eps


def diam(t: Tensor) -> Tensor:
    t = t.to(F64)
    return torch.cdist(t, t).amax(dim=(-2, -1))


# --- the consensus check ----------------------------------------------------------------------------------------


class OffMean(ImplicitQueryAttention):
    """The seed's scores and values, with a map that sends every state to its own row mean plus the row ``shift``:
    off the consensus point 1 mean(V)^T by exactly ||shift|| per row when that mean is 0."""

    shift = torch.zeros(2)

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        return lambda y: analysis.consensus_point(y) + self.shift


def test_the_consensus_check_accepts_exactly_its_documented_limit() -> None:
    """_check_consensus_fixed: the deviation ||f(1 mean(V)^T) - 1 mean(V)^T|| per row may be at most
    map_rounding + (N + 1) eps max ||v_j||: a map off the mean by exactly that is accepted, one off by the next float
    above it is refused. B = 1, N = 4, D = 2 (all different, so that no other axis stands in for N) and x with
    integer entries, token mean exactly 0 and max row norm exactly 5, so the deviation is the shift exactly."""
    layer = OffMean(2).to(F64)
    linear_init_(layer.W_K, 0.7, torch.Generator().manual_seed(0))
    linear_init_(layer.Omega_Q, 0.9, torch.Generator().manual_seed(1))
    x = torch.tensor([[[3.0, 4.0], [-3.0, -4.0], [0.0, 1.0], [0.0, -1.0]]], dtype=F64)
    point = torch.zeros_like(x)
    assert torch.equal(analysis.consensus_point(x), point)
    R = row_max(x)
    assert float(R[0]) == 5.0
    limit = float((map_rounding(layer, x, point) + (4 + 1) * EPS * R)[0])
    # the mean's term is many floats of the limit: any change to it moves the limit past the next float
    mean_term = (4 + 1) * EPS * 5.0
    assert mean_term > 1e6 * math.ulp(limit)
    layer.shift = torch.tensor([limit, 0.0], dtype=F64)
    assert analysis.consensus_eigenvalues(layer, x).shape == (1, 5)
    layer.shift = torch.tensor([math.nextafter(limit, math.inf), 0.0], dtype=F64)
    with pytest.raises(ValueError, match=r"OffMean's map does not fix 1 mean\(V\)\^T"):
        analysis.consensus_eigenvalues(layer, x)


def deviation_near(target: float, side: int) -> Tensor:
    """A float32 row (a, b) whose float64 norm is within 1e-12 relative of ``target``: at or below it (side -1),
    above it (side +1). a is the float32 just below target, b ~ sqrt(2 a (t - a)) tunes the norm on a far finer
    grid than float32's own (b << a: its ulp moves a + b^2 / 2a by ~1e-14 relative)."""
    a = torch.tensor(target, dtype=torch.float32)
    if float(a) >= target:
        a = torch.nextafter(a, torch.tensor(0.0))
    t = target * (1 + side * 5e-13)
    b = torch.tensor(math.sqrt(2 * float(a) * (t - float(a))), dtype=torch.float32)
    row = torch.stack([a, b])
    norm = float(torch.linalg.vector_norm(row.to(F64)))
    assert (norm <= target if side < 0 else norm > target) and abs(norm / target - 1) < 1e-12
    return row


def test_a_float32_consensus_check_measures_in_float64() -> None:
    """On a float32 layer the deviation and max ||v_j|| are taken in float64: a deviation whose float64 norm is
    1e-12 relative below map_rounding + (N + 1) eps max ||v_j|| (float32's eps, max ||v_j|| = sqrt(5) from float64)
    is accepted and one as far above it refused, though its float32 norm may round to either side and the float32
    max ||v_j|| is another number (~1e-8 relative) than the float64 one."""
    layer = OffMean(2)
    linear_init_(layer.W_K, 0.7, torch.Generator().manual_seed(0))
    linear_init_(layer.Omega_Q, 0.9, torch.Generator().manual_seed(1))
    x = torch.tensor([[[1.0, 2.0], [-1.0, -2.0], [2.0, 1.0], [-2.0, -1.0]]])
    point = torch.zeros_like(x)
    assert torch.equal(analysis.consensus_point(x), point)
    limit = float((map_rounding(layer, x, point) + (4 + 1) * torch.finfo(torch.float32).eps * row_max(x))[0])
    for side, accepted in ((-1, True), (1, False)):
        layer.shift = deviation_near(limit, side)
        if accepted:
            assert analysis.consensus_eigenvalues(layer, x).shape == (1, 5)
        else:
            with pytest.raises(ValueError, match="does not fix"):
                analysis.consensus_eigenvalues(layer, x)


def test_consensus_radius_passes_check_on_and_keeps_the_dtype() -> None:
    """check=False skips the check in consensus_radius too (positional fails it), and the radius comes back in
    x's dtype, float16 and bfloat16 included (the eigenvalues of a half-precision P are complex64)."""
    x = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    positional = resolve("positional").make(3, scale=1.0)
    with pytest.raises(ValueError, match="does not fix"):
        analysis.consensus_radius(positional, x)
    rho = analysis.consensus_radius(positional, x, check=False)
    assert rho.shape == (2,) and bool(torch.isfinite(rho).all())
    for dtype in (torch.float16, torch.bfloat16, torch.float32, F64):
        g = torch.Generator().manual_seed(1)
        layer = resolve("reference").make(2, scale=1.0, seed=g, dtype=dtype)
        xd = torch.randn(1, 4, 2, generator=g, dtype=F64).to(dtype)
        assert analysis.consensus_radius(layer, xd).dtype == dtype


# --- the rate interval ------------------------------------------------------------------------------------------


def geometric(y0: Tensor, q: float, steps: int) -> list[Tensor]:
    """y_t = q^t y0: exact for q a power of two (no underflow over these steps), and so are the differences
    d_t = q^t (q - 1) y0 and their norms r_t = q^t r_0 when y0 has small integer entries."""
    return [y0 * q**t for t in range(steps + 1)]


@given(tokens=st.integers(1, 3), dim=st.integers(1, 3), steps=st.integers(6, 16))
def test_the_pairwise_bound_of_an_exact_linear_iteration_exceeds_it_by_nu(tokens: int, dim: int, steps: int) -> None:
    """J = I / 4, y_t = J^t y0 exactly, H = 0 and eps_f = 0: nu_t = n eps ||J||_F r_t (J d_t's rounding), and
    r_t = ||J^k||_2 r_s exactly, so the closest pairwise upper bound (k = 1) exceeds r_{s+1} by nu_s:
    worst_ratio = 1 / (1 + n eps ||J||_F / (1/4)) = 1 / (1 + n^1.5 eps). The remainder is exactly 0 and the fit
    finds the rate 1/4. (The interval is only ~n^1.5 eps wide here, less than the fit's own rounding, so the fitted
    rate may fall an ulp outside it: eps_f = 0 is never what a layer's map_rounding gives.)"""
    n = tokens * dim
    J = 0.25 * torch.eye(n, dtype=F64)
    y0 = (3 * torch.arange(1, n + 1, dtype=F64)).reshape(tokens, dim)
    got = _interval(geometric(y0, 0.25, steps), J, 0.0, 0.0, EPS, tokens)
    assert got is not None
    assert got.worst_remainder_ratio == 0.0
    # 1 - worst on the float grid below 1 (spacing eps / 2), after a few roundings in the sums: within 1 eps
    assert abs((1 - got.worst_ratio) / EPS - n**1.5) <= 1.0, (got.worst_ratio, n)
    assert got.rho == 0.25
    assert math.isclose(got.rate, 0.25, rel_tol=8 * EPS)  # an exact geometric sequence: the fit's rounding only


@given(q=st.sampled_from([0.125, 0.0625]), steps=st.integers(6, 30))
def test_iterates_that_shrink_faster_than_rho_break_the_lower_bound(q: float, steps: int) -> None:
    """J = 1/2 (n = 1) but y_t = q^t y0 with q < 1/2: the pairwise lower bound |v^T d_s| rho^k - (nu terms)
    exceeds r_t, most for the widest pair: worst_ratio = (rho / q)^(end - start) up to the nu terms
    (H = 0, eps_f = 0: a few eps relative)."""
    got = _interval(
        geometric(torch.tensor([[3.0]], dtype=F64), q, steps), torch.tensor([[0.5]], dtype=F64), 0.0, 0.0, EPS, 1
    )
    assert got is not None and not got.consistent
    expected = (0.5 / q) ** (got.end - got.start)
    # the nu terms and the powers of rho: measured <= 1.5 eps relative over every q and length drawn here
    assert math.isclose(got.worst_ratio, expected, rel_tol=8 * EPS)


def test_the_window_ends_at_the_last_difference_above_the_noise() -> None:
    """Differences must be > SIGNAL_TO_NOISE * 2 sqrt(N) eps_f to be fitted: with eps_f = 0 exactly zero differences
    (iterates that landed on their fixed point) are not, and the interval is that of the run cut after its first
    zero difference; with eps_f > 0 a difference 1.25 x above the noise floor is the window's end."""
    J = torch.tensor([[0.5]], dtype=F64)
    moving = geometric(torch.tensor([[3.0]], dtype=F64), 0.5, 10)
    landed = moving + [torch.zeros(1, 1, dtype=F64)] * 6  # d_10 = -y_10, then zeros
    full = _interval(landed, J, 0.5, 0.0, EPS, 1)
    cut = _interval(landed[:13], J, 0.5, 0.0, EPS, 1)
    assert full is not None and full == cut and full.end == 10
    tokens = 4
    ys = [y.expand(tokens, 1) for y in moving]  # N = 4 rows: the noise floor scales with sqrt(N)
    r = [float(torch.linalg.vector_norm(ys[t + 1] - ys[t])) for t in range(10)]  # r_t = 3 / 2^t
    floor = r[7] / 1.25  # r_7 above the floor, r_8 = r_7 / 2 below it
    eps_f = floor / (SIGNAL_TO_NOISE * 2 * math.sqrt(tokens))
    got = _interval(ys, 0.5 * torch.eye(tokens, dtype=F64), 0.5, eps_f, EPS, tokens)
    assert got is not None and got.end == 7


def test_a_lower_bound_of_exactly_zero_has_no_logarithm() -> None:
    """A pairwise lower bound that is exactly 0 makes the mean lower bound 0 (as a negative one does): J = 2^-10,
    differences of 1, H = 0 and eps_f = 2^-11 - 2^-63, so that nu_t = 2 eps_f + eps J r_t = 2^-10 exactly, the
    lower bound of every adjacent pair."""
    ys = [torch.tensor([[float(t)]], dtype=F64) for t in range(10)]
    rho = 2.0**-10
    got = _interval(ys, torch.tensor([[rho]], dtype=F64), 0.0, 2.0**-11 - 2.0**-63, EPS, 1)
    assert got is not None and got.lower == 0.0 and got.rho == rho
    assert got.worst_ratio > 1 and got.rate == 1.0  # constant differences: no contraction at all


def test_rate_intervals_of_a_float32_layer() -> None:
    """rate_intervals on a float32 layer: the iterates and J in float64 before _interval, which is fed what its
    docstring says (J at the last iterate, H, the larger map_rounding at the first and the last iterate, float32's
    eps, the state's rows). The Picard iterates are made here, 40 steps of f from x."""
    g = torch.Generator().manual_seed(5)
    layer = relaxed_seed(2, 1.0, 2.0, g, torch.float32)
    x = torch.randn(2, 3, 2, generator=g, dtype=F64).to(torch.float32)
    f = layer.fixed_point_map(x)
    iterates = [x]
    with torch.no_grad():
        for _ in range(40):
            iterates.append(f(iterates[-1]))
    got = rate_intervals(layer, x, iterates)
    J = analysis.jacobian(f, iterates[-1]).to(F64)
    H = second_order_constant(layer, x)
    eps_f = torch.maximum(map_rounding(layer, x, iterates[0]), map_rounding(layer, x, iterates[-1]))
    for b in range(2):
        ys = [y[b].to(F64) for y in iterates]
        expected = _interval(ys, J[b], float(H[b]), float(eps_f[b]), torch.finfo(torch.float32).eps, 3)
        assert expected is not None and got[b] == expected


# --- the rounding bounds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("relaxation", [1.0, 0.5])
def test_bounds_with_more_batch_elements_than_tokens(relaxation: float) -> None:
    """B = 3 > N = 2 (D = 2): the sums run over N tokens (and the state's N rows), not over the batch; the seed's
    map_rounding and jacobian_rounding are the derived formulas (test_rounding_formulas.py's, on these shapes)."""
    g = torch.Generator().manual_seed(2)
    B, N, D = 3, 2, 2
    layer = relaxed_seed(D, relaxation, 1.2, g)
    x = torch.randn(B, N, D, generator=g, dtype=F64)
    y = torch.randn(B, N, D, generator=g, dtype=F64)
    W = math.prod(float(torch.linalg.svdvals(w.weight.detach())[0]) for w in (layer.W_K, layer.Omega_Q))
    X, Y = row_max(x), row_max(y)
    s_err = (D + 2) * EPS * W * X * (Y + X + math.sqrt(D))
    f_err = diam(x) * (s_err + 4 * EPS) + (N + 4) * EPS * (X + Y + X)
    close = dict(rtol=FORMULA_RTOL, atol=0.0)
    assert torch.allclose(map_rounding(layer, x, y), f_err, **close)
    column = W * X * (diam(x) + 2 * X) * (s_err + (2 * N + 2 * D + 8) * EPS)
    n = N * D
    J_err = relaxation * math.sqrt(n) * column + 3 * EPS * (1 - relaxation) * math.sqrt(n)
    assert torch.allclose(jacobian_rounding(layer, x, y), J_err, **close)


class HeadsInOutputSpace(MultiHeadHopfieldAttention):
    """The multihead map written as sum_h softmax(Y A_h^T) U_h, each head's values given in output space
    (U_h = V_h W_O^hT) and no head_outputs(): the form whose rounding adds the sum over heads."""

    head_outputs = None  # type: ignore[assignment]

    def head_values(self, x: Tensor) -> Tensor:
        W = self.W_O.weight.T.unflatten(0, (self.heads, self.head_dim))  # [h, d, D]
        return super().head_values(x) @ W

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        A, U = self.head_score_matrices(x), self.head_values(x)
        return lambda y: (torch.softmax(y[:, None] @ A.transpose(-2, -1), dim=-1) @ U).sum(dim=1)


@given(heads=st.integers(2, 3), tokens=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_heads_with_values_in_output_space_round_by_the_head_sum(heads: int, tokens: int, seed: int) -> None:
    """map_rounding: sum_h [diam(U_h) (s_err + 4 eps) + (N + 4) eps (||U_h||max + ||y||max + ||x||max)] plus
    (h - 1) eps sum_h ||U_h||max for the h - 1 additions over heads; jacobian_rounding: sqrt(N D) W ||x||max
    sum_h (diam(U_h) + 2 ||U_h||max) (s_err + (2 N + 2 D + 8 + h - 1) eps). W: the scores pass through W_Q, W_K."""
    D = 2 * heads
    layer = HeadsInOutputSpace(D, heads=heads).to(F64)
    g = torch.Generator().manual_seed(seed)
    for linear in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O):
        linear_init_(linear, 1.0, g)
    x = torch.randn(2, tokens, D, generator=g, dtype=F64)
    y = torch.randn(2, tokens, D, generator=g, dtype=F64)
    plain = MultiHeadHopfieldAttention(D, heads=heads).to(F64)
    plain.load_state_dict(layer.state_dict())
    with torch.no_grad():
        U = layer.head_values(x)  # [B, h, N, D]
        # the same map as multihead's (W_O on the concatenation): the sums in another order, a few D eps relative
        assert torch.allclose(layer.fixed_point_map(x)(y), plain.fixed_point_map(x)(y), rtol=1e-12, atol=1e-14)
    W = math.prod(float(torch.linalg.svdvals(w.weight.detach())[0]) for w in (layer.W_Q, layer.W_K))
    assert math.isclose(weight_norm_product(layer, x), W, rel_tol=FORMULA_RTOL)
    X, Y = row_max(x), row_max(y)
    s_err = (D + 2) * EPS * W * X * (Y + X + math.sqrt(D))
    per_head = [
        diam(U[:, h]) * (s_err + 4 * EPS) + (tokens + 4) * EPS * (row_max(U[:, h]) + Y + X) for h in range(heads)
    ]
    f_err = sum(per_head) + (heads - 1) * EPS * sum(row_max(U[:, h]) for h in range(heads))
    close = dict(rtol=FORMULA_RTOL, atol=0.0)
    assert torch.allclose(map_rounding(layer, x, y), f_err, **close)
    sizes = sum(diam(U[:, h]) + 2 * row_max(U[:, h]) for h in range(heads))
    terms = W * X * sizes * (s_err + (2 * tokens + 2 * D + 8 + heads - 1) * EPS)
    assert torch.allclose(jacobian_rounding(layer, x, y), math.sqrt(tokens * D) * terms, **close)


def test_a_float32_layer_without_a_score_form_rounds_like_values_x() -> None:
    """No score form: the values are x, taken in float64 (diam and ||x||max of float32 x to float64 accuracy), and
    W = prod max(1, ||W||_2) over every weight; float32's eps throughout."""
    layer = NoScores(3)
    g = torch.Generator().manual_seed(4)
    for linear, scale in ((layer.W_K, 0.3), (layer.Omega_Q, 2.5)):
        linear_init_(linear, scale, g)
    x = torch.randn(2, 4, 3, generator=g)
    y = torch.randn(2, 4, 3, generator=g)
    every = math.prod(
        max(1.0, float(torch.linalg.svdvals(w.weight.detach().to(F64))[0])) for w in (layer.W_K, layer.Omega_Q)
    )
    eps = torch.finfo(torch.float32).eps
    X, Y = row_max(x), row_max(y)
    s_err = 5 * eps * every * X * (Y + X + math.sqrt(3))
    expected = diam(x) * (s_err + 4 * eps) + 8 * eps * (X + Y + X)  # N + 4 = 8
    assert torch.allclose(map_rounding(layer, x, y), expected, rtol=FORMULA_RTOL, atol=0)


class ScoresFromX(FixedPointLayer):
    """f(Y) = softmax(x Y^T) W_V x: the scores pass through no weight (A = x), the values through W_V."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__(embed_dim)
        self.W_V = nn.Linear(embed_dim, embed_dim, bias=False)

    def score_matrix(self, x: Tensor) -> Tensor:
        return x

    def values(self, x: Tensor) -> Tensor:
        return self.W_V(x)

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        V = self.values(x)
        return lambda y: torch.softmax(x @ y.transpose(-2, -1), dim=-1) @ V


def test_scores_through_no_weight_still_get_a_weight_bound() -> None:
    """A score matrix that depends on no parameter (autograd has nothing to differentiate): weight_norm_product
    is still a finite bound on the (empty) product along the score path, between 1 and prod max(1, ||W||_2), and
    the rounding bounds come out finite."""
    layer = ScoresFromX(2).to(F64)
    linear_init_(layer.W_V, 2.0, torch.Generator().manual_seed(6))
    x = torch.randn(1, 3, 2, dtype=F64, generator=torch.Generator().manual_seed(7))
    every = max(1.0, float(torch.linalg.svdvals(layer.W_V.weight.detach())[0]))
    assert every > 1
    W = weight_norm_product(layer, x)
    assert 1.0 <= W <= every * (1 + FORMULA_RTOL)
    assert bool(torch.isfinite(map_rounding(layer, x, x)).all())


def test_iterates_that_stop_and_move_again_are_refused() -> None:
    """Picard from y_t = y_{t+1} stays at y_t: iterates with a zero difference inside the fitted window followed by
    moving ones are no Picard run (here hand-made: halving, one repeat, halving again), and are refused by name
    instead of dividing by the zero difference, wherever in the window the repeat sits; a repeat before the window
    is not read."""
    J = torch.tensor([[0.5]], dtype=F64)
    halving = geometric(torch.tensor([[3.0]], dtype=F64), 0.5, 11)
    restarted = halving + [halving[-1].clone()] + [halving[-1] * 0.5**k for k in range(1, 4)]
    # 16 iterates, 15 differences; the window ends at the last but one, d_13 = y_14 - y_13
    message = r"^iterates y_11 and y_12 are equal but y_13 and y_14 differ: not the iterates of one Picard run$"
    with pytest.raises(ValueError, match=message):
        _interval(restarted, J, 0.5, 0.0, EPS, 1)
    # the repeat right before the window's last difference (d_11, the window ending at d_12) is inside it too
    late = [*halving, halving[-1].clone(), halving[-1] * 0.5, halving[-1] * 0.25]
    with pytest.raises(ValueError, match=r"^iterates y_11 and y_12 are equal but y_12 and y_13 differ"):
        _interval(late, J, 0.5, 0.0, EPS, 1)
    # a repeat before the window (d_1; the window is d_7..d_13) is not read: the fit is the window's
    early = halving[:2] + [halving[1].clone()] + [halving[1] * 0.5**k for k in range(1, 14)]
    fitted = _interval(early, J, 0.5, 0.0, EPS, 1)
    # exact halvings: only the fit's own rounding is left (1 ulp, 5.6e-17, seen)
    assert fitted is not None and fitted.start == 7 and abs(fitted.rate - 0.5) <= 16 * EPS
    # the run that stops for good is the documented case: its zero differences fall outside the window
    assert _interval(halving + [halving[-1].clone()] * 4, J, 0.5, 0.0, EPS, 1) is not None
