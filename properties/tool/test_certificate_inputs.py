"""Layers that declare a score form they do not have get an error that names the layer and the mismatch, never
a certificate: methods missing, head tensors of the wrong rank or size, an output map of the wrong shape, a
relaxation outside (0, 1], an unknown score form, a weight norm per head missing, a state that does not fit.

The layers are the built-in multi-head and reference layers with one method or attribute overridden, so that
each error is the only thing wrong with them.
"""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor

from iqa import analysis
from iqa.analysis.certificates import head_weight_norms
from iqa.layer import ImplicitQueryAttention
from iqa.variants.multihead import MultiHeadHopfieldAttention

F64 = torch.float64


def heads_layer(**overrides) -> MultiHeadHopfieldAttention:
    """A 2-head layer of width 4 whose class overrides the given methods / attributes."""
    cls = type("OddHeads", (MultiHeadHopfieldAttention,), overrides)
    return cls(4, heads=2).to(F64)


def single_layer(**overrides) -> ImplicitQueryAttention:
    cls = type("OddSingle", (ImplicitQueryAttention,), overrides)
    return cls(4, 10).to(F64)


X = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)


def test_a_layer_without_a_score_form_is_refused() -> None:
    layer = single_layer(score_matrix=None, values=None)
    assert not analysis.supports_certificates(layer)
    message = (
        "OddSingle has neither score_matrix(x)/values(x) nor head_score_matrices(x)/head_values(x): its map is not "
        "of the form sum_h softmax(scores_h) U_h, so no certificate applies"
    )
    with pytest.raises(TypeError, match=re.escape(message)):
        analysis.certificates(layer, X)
    # one of the two methods is not enough, for a single head or for heads
    assert not analysis.supports_certificates(single_layer(values=None))
    assert not analysis.supports_certificates(single_layer(score_matrix=None))
    lone = heads_layer(head_values=None)
    assert not analysis.has_heads(lone) and not analysis.has_heads(heads_layer(head_score_matrices=None))
    assert analysis.has_heads(heads_layer()) and analysis.supports_certificates(heads_layer())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"head_values": lambda self, x: MultiHeadHopfieldAttention.head_values(self, x)[:, 0]},
            "OddHeads.head_score_matrices(x) (2, 2, 3, 4) and head_values(x) (2, 3, 2) must both be "
            "[B, heads, N, .] for x (2, 3, 4)",
        ),
        (
            {"head_score_matrices": lambda self, x: MultiHeadHopfieldAttention.head_score_matrices(self, x)[:, 0]},
            "OddHeads.head_score_matrices(x) (2, 3, 4) and head_values(x) (2, 2, 3, 2) must both be",
        ),
        (
            {"head_values": lambda self, x: MultiHeadHopfieldAttention.head_values(self, x)[:, :, :2]},
            "head_values(x) (2, 2, 2, 2) must both be [B, heads, N, .]",
        ),
        (
            {"head_outputs": lambda self: MultiHeadHopfieldAttention.head_outputs(self)[:1]},
            "OddHeads.head_outputs() must be [heads, d, D_out] = [2, 2, .], got (1, 2, 4)",
        ),
        (
            {"head_outputs": lambda self: MultiHeadHopfieldAttention.head_outputs(self)[:, :1]},
            "OddHeads.head_outputs() must be [heads, d, D_out] = [2, 2, .], got (2, 1, 4)",
        ),
        (
            {"head_outputs": lambda self: MultiHeadHopfieldAttention.head_outputs(self)[0]},
            "must be [heads, d, D_out] = [2, 2, .], got (2, 4)",
        ),
        (
            {"head_score_weight_norms": lambda self: MultiHeadHopfieldAttention.head_score_weight_norms(self)[:1]},
            "OddHeads reports 1 score weight norms for 2 heads",
        ),
    ],
)
def test_heads_of_the_wrong_shape_are_refused_by_name(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(heads_layer(**overrides), X)


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, 2, True, "0.5", None, float("nan")])
def test_relaxation_outside_the_unit_interval_is_refused(bad: object) -> None:
    layer = single_layer(relaxation=bad)
    with pytest.raises(ValueError, match=re.escape(f"OddSingle.relaxation must be a number in (0, 1], got {bad!r}")):
        analysis.relaxation(layer)


@pytest.mark.parametrize("good", [1, 1.0, 0.25, 1e-9])
def test_relaxation_in_the_unit_interval_is_a_float(good: float) -> None:
    a = analysis.relaxation(single_layer(relaxation=good))
    assert type(a) is float and a == good
    assert analysis.relaxation(single_layer()) == 1.0  # the seed layer has none: f = g


def test_an_unknown_score_form_is_refused() -> None:
    layer = single_layer(score_form="Q K^T")
    message = f"OddSingle.score_form must be one of {analysis.SCORE_FORMS}, got 'Q K^T'"
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(layer, X)
    assert analysis.score_form(single_layer()) == analysis.SCORES_A_YT


def test_a_state_that_does_not_fit_the_form_is_refused() -> None:
    """Scores A Y^T average V's rows, so the state needs one row per token and the values' width."""
    wide = single_layer(values=lambda self, x: torch.cat([x, x], dim=-1))
    message = (
        "OddSingle's state has shape (2, 3, 4) for x of shape (2, 3, 4), which does not fit its declared form "
        "softmax(A Y^T) V: A (2, 1, 3, 4) and V (2, 1, 3, 8) must have the state's width 4. The certificates do "
        "not apply to it"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.certificates(wide, X)
    short = single_layer(initial_point=lambda self, x: x[:, :2])
    with pytest.raises(ValueError, match=re.escape("so the state needs one row per token, not 2")):
        analysis.certificates(short, X)
    rows = single_layer(score_matrix=lambda self, x: ImplicitQueryAttention.score_matrix(self, x)[:, :2])
    expected = "score_matrix(x) (2, 1, 2, 4) and values(x) (2, 1, 3, 4) need one row per token. The"
    with pytest.raises(ValueError, match=re.escape(expected)):
        analysis.certificates(rows, X)


def test_weight_norms_come_from_the_layer_or_make_the_weights_bound_infinite() -> None:
    """kappa_w is finite exactly when the layer reports ||M||_2 (per head or as one), and linear in it (before the
    relaxation a: kappa = (1 - a) + a kappa_g)."""
    layer = heads_layer()
    a = analysis.relaxation(layer)
    plain = analysis.certificates(layer, X).kappa_weights
    assert bool(torch.isfinite(plain).all())

    def twice_the_norms(self: MultiHeadHopfieldAttention) -> Tensor:
        return 2 * MultiHeadHopfieldAttention.head_score_weight_norms(self)

    doubled = heads_layer(head_score_weight_norms=twice_the_norms)
    doubled.load_state_dict(layer.state_dict())
    twice = analysis.certificates(doubled, X).kappa_weights
    # doubling is exact; the sum over two heads and the relaxation round once or twice: a few eps
    assert torch.allclose(twice - (1 - a), 2 * (plain - (1 - a)), rtol=1e-14, atol=0)
    unknown = analysis.certificates(heads_layer(head_score_weight_norms=None), X).kappa_weights
    assert head_weight_norms(heads_layer(head_score_weight_norms=None)) is None
    assert bool(torch.isinf(unknown).all())
    single: Tensor = analysis.certificates(single_layer(), X).kappa_weights
    assert bool(torch.isinf(single).all()) == (getattr(ImplicitQueryAttention, "score_weight_norm", None) is None)
    reported = single_layer(score_weight_norm=lambda self: torch.tensor(3.0, dtype=F64))
    finite = analysis.certificates(reported, X).kappa_weights
    # A Y^T: kappa_w = diam(V) ||M||_2 max_i ||x_i|| / 2 (docs/theory.md)
    V = reported.values(X)
    expected = 0.5 * torch.cdist(V, V).amax(dim=(-2, -1)) * 3.0 * torch.linalg.vector_norm(X, dim=-1).amax(-1)
    assert torch.allclose(finite, expected, rtol=1e-14, atol=0)  # three products of float64 norms: a few eps
