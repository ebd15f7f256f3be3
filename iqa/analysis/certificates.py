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

A multi-head layer (h heads) whose map is f(Y) = sum_h softmax(scores_h) U_h (+ B), the
scores of head h formed from its own A_h in the layer's score form, exposes the per-head
``head_score_matrices(x)`` (A_h, [B, h, N, D]), ``head_values(x)`` (V_h, [B, h, N, d]) and, when the
heads' outputs pass through an output projection, ``head_outputs()`` (W_h, [h, d, D_out]: U_h = V_h W_h,
the head's values in output space). Its Jacobian is the sum of the heads'
Jacobians, each of the single-head form with (A_h, U_h), so by the triangle inequality each
certificate is the sum over heads of the single-head certificate of (A_h, U_h)
(docs/theory.md#multi-head). A single-head layer is the case h = 1 (:func:`head_terms`).

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

import functools
import math
from collections.abc import Iterable
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


def has_heads(layer: FixedPointLayer) -> bool:
    """Whether the layer exposes the per-head A_h = head_score_matrices(x) and U_h = head_values(x)."""
    return callable(getattr(layer, "head_score_matrices", None)) and callable(getattr(layer, "head_values", None))


def supports_certificates(layer: FixedPointLayer) -> bool:
    """Whether the layer exposes A = score_matrix(x) and V = values(x) of a map softmax(scores) V + B,
    or per head A_h = head_score_matrices(x) and U_h = head_values(x) of sum_h softmax(scores_h) U_h + B.

    A layer whose map has neither score form sets the inherited methods to None.
    """
    single = callable(getattr(layer, "score_matrix", None)) and callable(getattr(layer, "values", None))
    return single or has_heads(layer)


def head_terms(layer: FixedPointLayer, x: Tensor) -> tuple[Tensor, Tensor]:
    """(A, U), each [B, h, N, .]: the score matrix of every head and its values in output space
    (U_h = V_h W_h with ``head_outputs()`` = [W_h], else V_h); h = 1 for a single-head layer: ``score_matrix(x)``
    and ``values(x)`` with a head axis of size one."""
    A, V, outputs = head_parts(layer, x)
    return A, V if outputs is None else V @ outputs


def head_parts(layer: FixedPointLayer, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(A, V, W): every head's score matrix A_h and values V_h ([B, h, N, .]) and its output map W_h ([h, d, D_out],
    None when the values are already in output space): head h adds softmax(scores_h) V_h W_h to f."""
    if not supports_certificates(layer):
        raise TypeError(
            f"{type(layer).__name__} has neither score_matrix(x)/values(x) nor head_score_matrices(x)/"
            "head_values(x): its map is not of the form sum_h softmax(scores_h) U_h, so no certificate applies"
        )
    if not has_heads(layer):
        return layer.score_matrix(x).unsqueeze(-3), layer.values(x).unsqueeze(-3), None  # type: ignore[operator]
    A = layer.head_score_matrices(x)  # type: ignore[operator]
    V = layer.head_values(x)  # type: ignore[operator]
    outputs = getattr(layer, "head_outputs", None)
    W = None if outputs is None else outputs()
    heads = A.shape[-3] if A.dim() == x.dim() + 1 else None
    if heads is None or V.dim() != x.dim() + 1 or V.shape[:-1] != A.shape[:-1]:
        raise ValueError(
            f"{type(layer).__name__}.head_score_matrices(x) {tuple(A.shape)} and head_values(x) {tuple(V.shape)} "
            f"must both be [B, heads, N, .] for x {tuple(x.shape)}"
        )
    if W is not None and (W.dim() != 3 or W.shape[0] != heads or W.shape[1] != V.shape[-1]):
        raise ValueError(
            f"{type(layer).__name__}.head_outputs() must be [heads, d, D_out] = [{heads}, {V.shape[-1]}, .], "
            f"got {tuple(W.shape)}"
        )
    return A, V, W


def head_sum(terms: Iterable[Tensor]) -> Tensor:
    """The sum of one tensor per head; one head's tensor is returned as it is (bit for bit)."""
    return functools.reduce(torch.add, terms)


def head_weight_norms(layer: FixedPointLayer) -> Tensor | None:
    """||M_h||_2 per head, [h] (A_h = X M_h): ``head_score_weight_norms()``, or ``score_weight_norm()`` as one head;
    None when the layer has neither (then the weights-only bound is +inf)."""
    if has_heads(layer):
        norms = getattr(layer, "head_score_weight_norms", None)
        return None if norms is None else norms().reshape(-1)
    norm = getattr(layer, "score_weight_norm", None)
    return None if norm is None else norm().reshape(1)


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

    The layer must expose ``score_matrix(x)`` (A) and ``values(x)`` (V), or per head
    ``head_score_matrices(x)`` and ``head_values(x)``: each certificate is then the sum over heads of the
    single-head one (docs/theory.md#multi-head). The weights-only bound also uses ``score_weight_norm()``
    (||M||_2 with A = X M; per head ``head_score_weight_norms()``) when the layer has it, and is +inf otherwise.
    """
    form = score_form(layer)
    with torch.no_grad():
        A, U = head_terms(layer, x)
        check_state_fits(layer, x, A, U, form)
        weight_norms = head_weight_norms(layer)
        if weight_norms is not None and weight_norms.numel() != A.shape[-3]:
            raise ValueError(
                f"{type(layer).__name__} reports {weight_norms.numel()} score weight norms for {A.shape[-3]} heads"
            )
        spread = max_row_norm(x) if form == SCORES_A_YT else diameter(x)
        parts = [
            _head_certificates(form, A[..., h, :, :], U[..., h, :, :], spread, weight_norms, h)
            for h in range(A.shape[-3])
        ]
        kappa_inf, kappa_F, kappa_w = (head_sum(part[i] for part in parts) for i in range(3))
        a = relaxation(layer)
        if a != 1.0:
            kappa_inf, kappa_F, kappa_w = ((1 - a) + a * k for k in (kappa_inf, kappa_F, kappa_w))
    return Certificates(kappa_inf=kappa_inf, kappa_F=kappa_F, kappa_weights=kappa_w)


def _head_certificates(
    form: str, A: Tensor, V: Tensor, spread: Tensor, weight_norms: Tensor | None, head: int
) -> tuple[Tensor, Tensor, Tensor]:
    """One head's (kappa_inf, kappa_F, kappa_w) for scores from A [B, N, D] and values V [B, N, D_out]."""
    diam = diameter(V)
    if form == SCORES_A_YT:
        kappa_inf = 0.5 * diam * max_row_norm(A)
        kappa_F = diam * torch.linalg.matrix_norm(A, ord=2) / (2 * math.sqrt(2))
        factor = 0.5
    else:
        kappa_inf = kappa_F = 0.25 * diam * diameter(A)
        factor = 0.25
    unknown = weight_norms is None
    kappa_w = torch.full_like(diam, math.inf) if unknown else factor * diam * weight_norms[head] * spread  # type: ignore[index]
    return kappa_inf, kappa_F, kappa_w
