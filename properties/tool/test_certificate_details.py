"""Certificates, certified solves, the softmax recorder and the layer's plumbing, on layers built to order.

Each test pins a behaviour that a library mutant changed while every other property passed (the mutation report of
``tox -e mutate`` names them). Most use a two-token layer whose certificates are known in closed form: scores Y A^T
over the 1-D tokens x = (-1/2, 1/2) with A = c x and V = v x + b give f(y)_i = b + (v / 2) tanh(c y_i / 2), so
kappa_inf = kappa_F = diam(V) diam(A) / 4 = v c / 4, attained by f's slope at y = 0 (the fixed point when b = 0).
Pinned here: kappa_F's spectral (not Frobenius) norm of A; the weights-only bound of the Y A^T form (1/4 and diam X,
not max ||x_i||); layers that lack an optional method altogether (not merely set it to None); a state check with
one problem in either half of a condition, and two problems joined; messages that name the heads and the head
width, not the batch; certified_solve refusing kappa = 1 and kappa in (1, 2), starting at the given y0, budgeting
its steps from the real residual at the start (past solve's default of 200 when kappa is near 1), its tolerance
and rounding in the state's rows (not its batch) and in the certificate's norm; the kappa of best_certificate in
float64; steps_needed on the near side of its threshold; readout given x; a fixed_point_map whose signature cannot
be read; a torch function without a __name__ inside a recorded map; the recorder's message in full.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function

from iqa import analysis
from iqa.analysis.certificates import SCORES_Y_AT, head_weight_norms
from iqa.analysis.certified_solution import best_certificate, steps_needed
from iqa.analysis.rounding import map_rounding
from iqa.layer import FixedPointLayer, ImplicitQueryAttention
from iqa.variants.multihead import MultiHeadHopfieldAttention
from properties.tool.test_certificate_inputs import single_layer

F64 = torch.float64
#: One batch element (B = 1 != N = 2), the two tokens -1/2 and 1/2: diam(x) = 1, max_i |x_i| = 1/2.
X2 = torch.tensor([[[-0.5], [0.5]]], dtype=F64)
#: solve's own default budget: a certified solve that needs more steps must pass its own max_iter.
SOLVE_DEFAULT_MAX_ITER = 200


class TwoPoint(FixedPointLayer):
    """Scores Y A^T with A = c x and V = v x + b: on X2, f(y)_i = b + (v / 2) tanh(c y_i / 2), kappa = v c / 4."""

    score_form = SCORES_Y_AT

    def __init__(self, c: float, v: float, b: float = 0.0) -> None:
        super().__init__(1)
        self.c, self.v, self.b = c, v, b

    def score_matrix(self, x: Tensor) -> Tensor:
        return self.c * x

    def values(self, x: Tensor) -> Tensor:
        return self.v * x + self.b

    def fixed_point_map(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        A, V = self.score_matrix(x), self.values(x)
        return lambda y: torch.softmax(y @ A.transpose(-2, -1), dim=-1) @ V


class TwoHeads(FixedPointLayer):
    """Heads h with A_h = c_h x and V_h = v_h x, scores Y A_h^T, and neither head_outputs nor
    head_score_weight_norms: kappa_inf = kappa_F = sum_h diam(V_h) diam(A_h) / 4, kappa_w = +inf."""

    score_form = SCORES_Y_AT

    def __init__(self, cs: tuple[float, ...], vs: tuple[float, ...]) -> None:
        super().__init__(1)
        self.cs, self.vs = cs, vs

    def head_score_matrices(self, x: Tensor) -> Tensor:
        return torch.stack([c * x for c in self.cs], dim=-3)

    def head_values(self, x: Tensor) -> Tensor:
        return torch.stack([v * x for v in self.vs], dim=-3)

    def fixed_point_map(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        A, V = self.head_score_matrices(x), self.head_values(x)
        return lambda y: (torch.softmax(y.unsqueeze(-3) @ A.transpose(-2, -1), dim=-1) @ V).sum(-3)


def tanh_fixed_point(b: float, v: float, c: float, sign: float = 1.0) -> float:
    """The y with y = sign (b + (v / 2) tanh(c y / 2)), by iterating that contraction in Python floats."""
    y = 0.0
    for _ in range(500):
        y = sign * (b + v / 2 * math.tanh(c * y / 2))
    return y


# ---------------------------------------------------------------- certificates


def test_kappa_F_takes_the_spectral_norm_of_A() -> None:
    """Seed form with W_K = I, Omega = diag(2, 1) and x = e1, e2, e1 + e2: A = x Omega has A^T A = [[8, 2], [2, 2]],
    so ||A||_2 = sqrt(5 + sqrt 13) (not ||A||_F = sqrt 10), and diam(V = x) = sqrt 2."""
    layer = ImplicitQueryAttention(2).to(F64)
    with torch.no_grad():
        layer.W_K.weight.copy_(torch.eye(2, dtype=F64))
        layer.Omega_Q.weight.copy_(torch.diag(torch.tensor([2.0, 1.0], dtype=F64)))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]], dtype=F64)
    certs = analysis.certificates(layer, x)
    # kappa_F = sqrt 2 ||A||_2 / (2 sqrt 2); an SVD, a cdist and three products in float64: a few eps
    assert math.isclose(float(certs.kappa_F), math.sqrt(5 + math.sqrt(13)) / 2, rel_tol=1e-14)
    assert math.isclose(float(certs.kappa_inf), math.sqrt(2) * math.sqrt(5) / 2, rel_tol=1e-14)


def test_weights_bound_of_the_y_at_form_is_a_quarter_with_the_diameter_of_x() -> None:
    """kappa_w = diam(V) ||M||_2 diam(X) / 4 for scores Y A^T (A = X M, M = [c]): on X2, diam(X) = 1 while
    max_i ||x_i|| = 1/2, and the bound equals the tight v c / 4."""
    reported = type("Reported", (TwoPoint,), {"score_weight_norm": lambda self: torch.tensor(self.c, dtype=F64)})
    c, v = 1.5, 2.0
    certs = analysis.certificates(reported(c, v), X2)
    assert float(certs.kappa_weights) == v * c / 4  # every factor is exact in binary: 2, 1.5, 1, 1/4
    assert float(certs.kappa_inf) == float(certs.kappa_F) == v * c / 4


def test_heads_without_output_map_or_weight_norms_sum_their_certificates() -> None:
    """A multi-head layer with no head_outputs and no head_score_weight_norms attribute at all (not None): the values
    are in output space, kappa_inf = kappa_F = sum_h v_h c_h / 4 on X2, and the weights-only bound is +inf."""
    layer = TwoHeads((1.0, 0.5), (0.5, 1.0))
    assert not hasattr(layer, "head_outputs") and not hasattr(layer, "head_score_weight_norms")
    assert head_weight_norms(layer) is None
    certs = analysis.certificates(layer, X2)
    expected = (1.0 * 0.5 + 0.5 * 1.0) / 4  # exact in binary
    assert float(certs.kappa_inf) == float(certs.kappa_F) == expected
    assert math.isinf(float(certs.kappa_weights))


def test_head_score_matrices_of_too_low_a_rank_are_refused() -> None:
    def flat_scores(self: TwoHeads, x: Tensor) -> Tensor:
        return TwoHeads.head_score_matrices(self, x)[0, 0]

    flat = type("Flat", (TwoHeads,), {"head_score_matrices": flat_scores})
    message = "Flat.head_score_matrices(x) (2, 1) and head_values(x) (1, 2, 2, 1) must both be [B, heads, N, .]"
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(flat((1.0, 1.0), (1.0, 1.0)), X2)


def test_optional_methods_may_be_absent_not_only_none() -> None:
    """getattr with a default: a layer without ``values`` at all has no single-head form, and one with
    head_score_matrices but no ``head_values`` at all has no heads (its single-head form still certifies)."""
    only_scores = type("OnlyScores", (FixedPointLayer,), {"score_matrix": lambda self, x: x})(2)
    assert not hasattr(only_scores, "values")
    assert not analysis.supports_certificates(only_scores)
    half = type("HalfHeads", (ImplicitQueryAttention,), {"head_score_matrices": lambda self, x: x[:, None]})
    layer, plain = half(4).to(F64), ImplicitQueryAttention(4).to(F64)
    layer.load_state_dict(plain.state_dict())
    assert not hasattr(layer, "head_values") and not analysis.has_heads(layer)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert torch.equal(analysis.certificates(layer, x).kappa_F, analysis.certificates(plain, x).kappa_F)


X3 = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=F64)


@pytest.mark.parametrize(
    ("overrides", "shapes"),
    [
        # A and V agree with each other but have 2 rows for 3 tokens
        (
            {
                "score_matrix": lambda self, x: ImplicitQueryAttention.score_matrix(self, x)[:, :2],
                "values": lambda self, x: x[:, :2],
            },
            "score_matrix(x) (2, 1, 2, 4) and values(x) (2, 1, 2, 4)",
        ),
        # A has a row per token but V does not
        ({"values": lambda self, x: x[:, :2]}, "score_matrix(x) (2, 1, 3, 4) and values(x) (2, 1, 2, 4)"),
    ],
)
def test_a_and_v_need_one_row_per_token_each(overrides: dict[str, object], shapes: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"V: {shapes} need one row per token. The certificates")):
        analysis.certificates(single_layer(**overrides), X3)


def test_two_state_problems_are_joined_by_a_semicolon() -> None:
    layer = single_layer(values=lambda self, x: torch.cat([x, x], dim=-1), initial_point=lambda self, x: x[:, :2])
    message = (
        "OddSingle's state has shape (2, 2, 4) for x of shape (2, 3, 4), which does not fit its declared form "
        "softmax(A Y^T) V: A (2, 1, 3, 4) and V (2, 1, 3, 8) must have the state's width 4; scores A Y^T average "
        "the rows of V, so the state needs one row per token, not 2. The certificates do not apply to it"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(layer, X3)


def odd_heads(width: int, **overrides: object) -> MultiHeadHopfieldAttention:
    return type("OddHeads", (MultiHeadHopfieldAttention,), overrides)(width, heads=2).to(F64)


def test_head_messages_name_the_heads_and_the_head_width_not_the_batch() -> None:
    """Batch 3, 2 heads, head width 4 (width 8): every number in the message is told apart from the others."""
    x = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(2), dtype=F64)

    def one_norm(self: MultiHeadHopfieldAttention) -> Tensor:
        return MultiHeadHopfieldAttention.head_score_weight_norms(self)[:1]

    short = odd_heads(8, head_score_weight_norms=one_norm)
    with pytest.raises(ValueError, match=re.escape("OddHeads reports 1 score weight norms for 2 heads")):
        analysis.certificates(short, x)
    cut = odd_heads(8, head_outputs=lambda self: MultiHeadHopfieldAttention.head_outputs(self)[:1])
    message = "OddHeads.head_outputs() must be [heads, d, D_out] = [2, 4, .], got (1, 4, 8)"
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(cut, x)


# ---------------------------------------------------------------- certified solves


@pytest.mark.parametrize(("c", "kappa"), [(2.0, 1.0), (3.0, 1.5)])
def test_kappa_of_one_or_more_certifies_nothing(c: float, kappa: float) -> None:
    """v = 2, x = +-1/2: diam(V) = 2 and diam(A) = c exactly, so kappa = c / 2 exactly: 1 and 1.5 prove nothing."""
    layer = TwoPoint(c, 2.0)
    assert float(analysis.certificates(layer, X2).kappa_inf) == kappa
    message = f"no certificate < 1 for every batch element (best: kappa_inf = [{kappa}])"
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certified_solve(layer, X2)


def test_a_slow_contraction_gets_the_steps_it_needs() -> None:
    """kappa = 0.95, attained at y* = 0: Picard's error shrinks by about 0.95 a step, so reaching the tolerance
    takes more than solve's default budget; certified_solve budgets its own and converges, within its bound."""
    result = analysis.certified_solve(TwoPoint(1.9, 2.0), X2)
    assert result.solution.converged
    assert max(result.solution.steps) > SOLVE_DEFAULT_MAX_ITER
    assert bool((result.y.abs().amax(dim=(-2, -1)) <= result.error_bound).all())  # y* = 0: f is odd


def test_the_solve_starts_at_y0_and_budgets_from_its_real_residual() -> None:
    """b = 1, v = 2, c = 1 (kappa = 1/2). y0 solves y = -f(y): f(y0) + y0 = 0 but the residual f(y0) - y0 = -2 y0
    is large. The first residual is that of y0, and the budget from it is enough to converge to y* (y = f(y))."""
    b, v, c = 1.0, 2.0, 1.0
    y0 = tanh_fixed_point(b, v, c, sign=-1.0)
    start = torch.full((1, 2, 1), y0, dtype=F64)
    result = analysis.certified_solve(TwoPoint(c, v, b), X2, start)
    # f(y0) - y0 = -2 y0 in both rows, Frobenius over the two: the softmax and tanh forms agree to a few eps
    assert math.isclose(float(result.solution.residuals[0, 0]), 2 * math.sqrt(2) * abs(y0), rel_tol=1e-14)
    assert result.solution.converged
    y_star = tanh_fixed_point(b, v, c)
    assert float((result.y - y_star).abs().max()) <= float(result.error_bound)


def test_tolerance_and_rounding_count_the_state_rows_in_the_certificate_norm() -> None:
    """On X2 (B = 1, N = 2) kappa_inf = kappa_F and the first (rows) wins: the rounding is the per-row bound itself,
    not sqrt(N) times it, and the tolerance is 10 sqrt(N) 2 eps_f / (1 - kappa) with N the state's rows."""
    layer = TwoPoint(1.0, 2.0)
    result = analysis.certified_solve(layer, X2)
    assert result.certificate == "kappa_inf" and result.norm == "rows"
    eps_start = map_rounding(layer, X2, X2)
    rows = torch.maximum(eps_start, map_rounding(layer, X2, result.y))
    assert torch.equal(result.rounding, rows)
    assert result.solution.tol == 10 * math.sqrt(2) * 2 * float(eps_start.max()) / (1 - 0.5)


def test_best_certificate_is_in_float64_for_a_float32_layer() -> None:
    name, kappa = best_certificate(TwoPoint(1.5, 2.0), X2.to(torch.float32))
    assert name == "kappa_inf" and kappa.dtype == F64
    assert float(kappa) == 0.75  # 2 * 1.5 / 4: every factor exact in float32 too


@given(kappa=st.floats(0.05, 0.95), tol=st.floats(1e-12, 1.0), r=st.floats(0.01, 1.0))
def test_steps_needed_just_past_its_threshold(kappa: float, tol: float, r: float) -> None:
    """start just above tol (1 - kappa) (by the factor 1 + r kappa <= 1 + kappa) needs at least one step: counted
    here one step at a time; the closed form's log ratio may land one past the count."""
    start = tol * (1 - kappa) * (1 + r * kappa)
    t, left = 0, start
    while left > tol * (1 - kappa):
        left *= kappa
        t += 1
    assert t >= 1
    assert steps_needed(kappa, start, tol) - 2 in (t, t + 1)


def test_a_zero_start_needs_no_step_even_at_zero_tolerance() -> None:
    assert steps_needed(0.5, 0.0, 0.0) == 2  # kappa^0 * 0 <= 0 (1 - kappa)


# ---------------------------------------------------------------- the layer and the recorder


class PlusX(ImplicitQueryAttention):
    """A readout that uses x: g(y*, x) = y* + x."""

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        return y + x


def test_the_readout_is_given_x() -> None:
    layer = PlusX(2, 3).to(F64)
    x = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    state = layer.solve_state(x)
    assert torch.equal(layer(x), state + x)
    assert torch.equal(layer(x, track=True).y, state + x)


class Unreadable:
    """A callable whose signature inspect cannot read (a __signature__ that is not a Signature)."""

    __signature__ = 0

    def __call__(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Callable[[Tensor], Tensor]:
        return lambda y: y


def test_a_map_whose_signature_cannot_be_read_takes_no_mask() -> None:
    layer = ImplicitQueryAttention(2).to(F64)
    layer.fixed_point_map = Unreadable()  # type: ignore[method-assign]
    x = torch.zeros(1, 2, 2, dtype=F64)
    with pytest.raises(TypeError, match="ImplicitQueryAttention takes no key_padding_mask"):
        layer(x, key_padding_mask=torch.zeros(1, 2, dtype=torch.bool))


class Doubling:
    """A torch function without a __name__ (a callable object) that dispatches through __torch_function__."""

    def __call__(self, t: Tensor) -> Tensor:
        if has_torch_function((t,)):
            return handle_torch_function(self, (t,), t)
        return 2 * t


def test_a_torch_function_without_a_name_is_run_and_not_recorded() -> None:
    double = Doubling()
    assert not hasattr(double, "__name__")
    y = torch.linspace(-1, 1, 8, dtype=F64).reshape(2, 2, 2)
    weights = analysis.attention_weights(lambda t: F.softmax(double(t), dim=-1), y)
    assert len(weights) == 1 and torch.equal(weights[0], F.softmax(2 * y, dim=-1))


def test_the_recorder_refusal_is_the_whole_message() -> None:
    y = torch.zeros(1, 2, 2, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own: an implicit softmax dim is deprecated
        with pytest.raises(ValueError) as refused:
            analysis.attention_weights(lambda t: F.softmax(t), y)  # type: ignore[call-arg]
    assert str(refused.value) == "softmax without an explicit dim: cannot tell which axis holds the weights"
