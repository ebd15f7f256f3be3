"""Lipschitz certificates: upper bounds on the contraction factor of f.

For layers whose map is f(Y) = softmax(A (Y + C)^T) V + B with A, V, B, C
independent of Y (the seed and the variants tagged ``score_matrix``), the
Jacobian block df_i/dy_j = p_ij (v_j - f_i) a_i^T is rank one, and with
diam(V) = max_{j,k} ||v_j - v_k||:

    kappa_inf = 1/2 diam(V) max_i ||a_i||          (max-row l2 norm, "2,inf")
    kappa_F   = diam(V) ||A||_2 / (2 sqrt 2)       (Frobenius; bounds ||J(y)||_2 too)
    kappa_w   = 1/2 diam(V) ||M||_2 max_i ||x_i||  (weights only; A = X M)

A layer with ``score_form = "Y A^T"`` (scores s_ij = y_i . a_j: queries from y,
keys from x, the ``hopfield`` variant) has a block-diagonal Jacobian,
df_i/dy_i = sum_j p_ij (v_j - f_i) a_j^T = Cov_{p_i}(v, a), and by
Cauchy-Schwarz and Popoviciu (a variance is at most a quarter of the squared
range) ||Cov_p(v, a)||_2 <= diam(V) diam(A) / 4. That one number bounds the
map in the "2,inf" norm, in the Frobenius norm and ||J(y)||_2, so

    kappa_inf = kappa_F = 1/4 diam(V) diam(A),  kappa_w = 1/4 diam(V) ||M||_2 diam(X).

Any of them < 1 makes f a contraction on the invariant set (docs/theory.md#certificates), so the
fixed point is unique and ||y_t - y*|| <= kappa^t ||y_0 - y*||.

A relaxed map (1 - a) Y + a f(Y) (a layer with a ``relaxation`` attribute a,
the ``damped`` variant) is Lipschitz with 1 - a + a kappa in each of these
norms (triangle inequality), and its Jacobian (1 - a) I + a J has 2-norm at
most 1 - a + a kappa_F; the certificates below include that step.

The certificates bound the map f of the fixed-point state, whatever the layer's
readout g(y*, x) does with it. The state may be [B, K, D_y] (K slots or latents):
with scores Y A^T, K query rows attend over the N rows of A and V, so any K
works; with scores A Y^T the rows of Y are averaged by the rows of V = values(x),
so the state must have one row per token (K = N). Either way A and V must have the
state's width. A layer whose state does not fit its declared form gets a
ValueError that says so, not a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iqa.layer import FixedPointLayer

#: scores = A (Y + C)^T: row i of the scores is a_i against every y_j (the seed).
SCORES_A_YT = "A Y^T"
#: scores = Y A^T: query y_i against every a_j (modern Hopfield).
SCORES_Y_AT = "Y A^T"
SCORE_FORMS = (SCORES_A_YT, SCORES_Y_AT)


@dataclass(frozen=True)
class Certificates:
    """Per batch element bounds on the Lipschitz constant of f (each in its own norm)."""

    kappa_inf: Tensor
    kappa_F: Tensor
    kappa_weights: Tensor

    @property
    def best(self) -> Tensor:
        """The smallest certificate per element: < 1 proves contraction (in that certificate's norm)."""
        return torch.minimum(torch.minimum(self.kappa_inf, self.kappa_F), self.kappa_weights)


def supports_certificates(layer: FixedPointLayer) -> bool:
    """Whether the layer exposes A = score_matrix(x) and V = values(x) of a map softmax(scores) V + B.

    A layer whose map has neither score form sets the inherited methods to None.
    """
    return callable(getattr(layer, "score_matrix", None)) and callable(getattr(layer, "values", None))


def score_form(layer: FixedPointLayer) -> str:
    """``layer.score_form``: "A Y^T" (the default, the seed's) or "Y A^T"."""
    form = getattr(layer, "score_form", SCORES_A_YT)
    if form not in SCORE_FORMS:
        raise ValueError(f"{type(layer).__name__}.score_form must be one of {SCORE_FORMS}, got {form!r}")
    return str(form)


def relaxation(layer: FixedPointLayer) -> float:
    """The layer's relaxation a in (0, 1] (f = (1 - a) Y + a g(Y)); 1.0 for a layer without one."""
    a = getattr(layer, "relaxation", 1.0)
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
        raise ValueError(f"{type(layer).__name__}.relaxation must be a number in (0, 1], got {a!r}")
    return float(a)


def diameter(points: Tensor) -> Tensor:
    """max_{j,k} ||p_j - p_k|| over the rows of each batch element of points [B, N, D]."""
    return torch.cdist(points, points).amax(dim=(-2, -1))


def max_row_norm(t: Tensor) -> Tensor:
    """max_i ||t_i|| over the rows of each batch element of t [B, N, D] (the "2,inf" norm), [B], in t's dtype.

    The row norm that kappa_inf and the rounding bounds are stated in; t [N, D] gives a scalar.
    """
    return torch.linalg.vector_norm(t, dim=-1).amax(dim=-1)


def check_state_fits(layer: FixedPointLayer, x: Tensor, A: Tensor, V: Tensor, form: str) -> None:
    """Raise ValueError unless the layer's state (the shape of its start y0) fits softmax(scores) V with A and V.

    Scores Y A^T: A and V have N rows and the state's width. Scores A Y^T: the state has one row per token
    (K = N) as well. Anything else is not the form the certificates are derived for.
    """
    state = tuple(layer.initial_point(x).shape)
    name = type(layer).__name__
    rows, width = state[-2], state[-1]
    problems = []
    if A.shape[:-1] != V.shape[:-1] or A.shape[-2] != x.shape[-2]:
        problems.append(f"score_matrix(x) {tuple(A.shape)} and values(x) {tuple(V.shape)} need one row per token")
    if A.shape[-1] != width or V.shape[-1] != width:
        problems.append(f"A {tuple(A.shape)} and V {tuple(V.shape)} must have the state's width {width}")
    if form == SCORES_A_YT and rows != x.shape[-2]:
        problems.append(f"scores A Y^T average the rows of V, so the state needs one row per token, not {rows}")
    if problems:
        raise ValueError(
            f"{name}'s state has shape {state} for x of shape {tuple(x.shape)}, which does not fit its declared "
            f"form softmax({form}) V: " + "; ".join(problems) + ". The certificates do not apply to it"
        )


def certificates(layer: FixedPointLayer, x: Tensor) -> Certificates:
    """kappa_inf, kappa_F and the weights-only bound for each batch element of x.

    The layer must expose ``score_matrix(x)`` (A) and ``values(x)`` (V); the
    weights-only bound also uses ``score_weight_norm()`` (||M||_2 with A = X M)
    when the layer has it, and is +inf otherwise.
    """
    if not supports_certificates(layer):
        raise TypeError(
            f"{type(layer).__name__} has no score_matrix(x)/values(x): its map is not of the form "
            "softmax(A Y^T) V or softmax(Y A^T) V, so these certificates do not apply"
        )
    form = score_form(layer)
    with torch.no_grad():
        A = layer.score_matrix(x)  # type: ignore[operator]
        V = layer.values(x)  # type: ignore[operator]
        check_state_fits(layer, x, A, V, form)
        diam = diameter(V)
        weight_norm = getattr(layer, "score_weight_norm", None)
        if form == SCORES_A_YT:
            kappa_inf = 0.5 * diam * max_row_norm(A)
            kappa_F = diam * torch.linalg.matrix_norm(A, ord=2) / (2 * math.sqrt(2))
            spread = max_row_norm(x)
            factor = 0.5
        else:
            kappa_inf = kappa_F = 0.25 * diam * diameter(A)
            spread = diameter(x)
            factor = 0.25
        kappa_w = torch.full_like(diam, math.inf) if weight_norm is None else factor * diam * weight_norm() * spread
        a = relaxation(layer)
        if a != 1.0:
            kappa_inf, kappa_F, kappa_w = ((1 - a) + a * k for k in (kappa_inf, kappa_F, kappa_w))
    return Certificates(kappa_inf=kappa_inf, kappa_F=kappa_F, kappa_weights=kappa_w)
