"""A-priori bounds on the rounding error of one evaluation of f, for tolerances.

For f_i(Y) = sum_j p_ij v_j (+ b_i) with p_i = softmax(s_i) and scores formed
by products of the weights with x and y (length-D dot products), the computed
scores carry |ds| <= s_err = (D + 2) eps W ||x||max (||y||max + ||x||max + sqrt(D)),
W the product of the spectral norms of the weight matrices the scores pass
through (:func:`weight_norm_product`; an upper bound on the size of any intermediate product; sqrt(D) covers a bounded
positional offset). Since d f_i / d s_ij = p_ij (v_j - f_i), a score error moves
f_i by at most diam(V) (s_err + 4 eps) (the 4 eps for exp and the
normalization), and the length-N average and the additions add
(N + 4) eps (||v||max + ||y||max + ||x||max). Every bound is per row in the
Euclidean norm (the "2,inf" norm); multiply by sqrt(N) for the Frobenius norm.
A multi-head map sum_h softmax(scores_h) U_h (iqa.analysis.certificates.head_terms) rounds, per row, by
the sum of its heads' bounds (each with its own U_h) plus (h - 1) eps sum_h ||U_h||max for the sum
over heads; one head is exactly the single-head bound.
These are first-order (gamma_n ~ n eps) bounds, not estimates: comparisons that
use them can only fail on a real discrepancy.

The state y may have its own shape [B, K, D_y] (slots, latents: K rows that attend
over the N tokens): the sums then run over up to max(N, K) terms and the products
over up to max(D, D_y), and J has K D_y columns. With K = N and D_y = D (every
built-in) the bounds are the ones above, unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from iqa.analysis.certificates import (
    diameter,
    head_parts,
    head_sum,
    head_terms,
    max_row_norm,
    relaxation,
    supports_certificates,
)
from iqa.layer import FixedPointLayer


def weight_norm_product(layer: FixedPointLayer, x: Tensor | None = None) -> float:
    """W: a bound on the product of the norms of the weight matrices that any score passes through.

    For a layer with ``score_matrix(x)`` (and ``x`` given) that is prod ||W||_2 over the 2-D parameters the
    score matrix depends on (found by autograd: the value matrices, W_V, are left out, their size enters the
    bounds through ||v||); otherwise (no ``x``, no score form, or scores that depend on no parameter) prod
    max(1, ||W||_2) over all of them, a bound on the product over any subset. (A plain product over all
    matrices is not a bound: a value matrix of norm < 1 made it fall below the scores' own scale, found on
    injection, float32, N = 2, D = 1, J's rounding 17x the bound.)
    """
    matrices = [p for p in layer.parameters() if p.dim() == 2]
    on_path: list[bool] | None = None
    if x is not None and supports_certificates(layer) and all(p.requires_grad for p in matrices) and matrices:
        with torch.enable_grad():
            A, _ = head_terms(layer, x.detach())
            grads = torch.autograd.grad(A.sum(), matrices, allow_unused=True) if A.requires_grad else []
        on_path = [g is not None for g in grads] if grads else None
    product = 1.0
    with torch.no_grad():
        for i, p in enumerate(matrices):
            norm = float(torch.linalg.matrix_norm(p.to(torch.float64), ord=2))
            if on_path is None:
                product *= max(1.0, norm)
            elif on_path[i]:
                product *= norm
    return product


def score_rounding(layer: FixedPointLayer, x: Tensor, y: Tensor) -> Tensor:
    """s_err per batch element, [B] (float64): a bound on the rounding of any one score."""
    eps = torch.finfo(x.dtype).eps
    D = max(x.shape[-1], y.shape[-1])  # a score is a product over x's width or the state's
    X = max_row_norm(x.to(torch.float64))
    Y = max_row_norm(y.to(torch.float64)) + X + math.sqrt(D)
    return (D + 2) * eps * weight_norm_product(layer, x) * X * Y


def map_rounding(layer: FixedPointLayer, x: Tensor, y: Tensor) -> Tensor:
    """A per-row bound on ||f~_i(y) - f_i(y)|| for one evaluation, per batch element, [B] (float64).

    Heads with an output map W_h (f = W_O concat_h o^h, o^h_i = sum_j p^h_ij v^h_j, ``head_outputs()``): a score
    error moves W_h o^h_i by at most diam(U_h) (s_err + 4 eps) (U_h = V_h W_h, exact by linearity), the average's
    own rounding (N + 4) eps ||V_h||max is stretched by ||W_h||_2 at most, and the final product, a length-h d sum
    per entry, adds (h d + 2) eps ||W_O||_F ||o_i|| with ||o_i||^2 <= sum_h ||V_h||max^2 (each o^h_i a convex
    combination of rows of V_h).
    """
    eps = torch.finfo(x.dtype).eps
    N = max(x.shape[-2], y.shape[-2])  # the longest sum: over the tokens, or over a slot state's rows
    s_err = score_rounding(layer, x, y)
    Y, X = max_row_norm(y.to(torch.float64)), max_row_norm(x.to(torch.float64))
    heads, outputs = _head_values(layer, x)
    if outputs is not None:
        W = outputs.to(torch.float64)
        U = [V @ W[h] for h, V in enumerate(heads)]
        total = head_sum(
            diameter(U_h) * (s_err + 4 * eps) + (N + 4) * eps * torch.linalg.matrix_norm(W[h], ord=2) * max_row_norm(V)
            for h, (U_h, V) in enumerate(zip(U, heads))
        )
        concat = torch.sqrt(head_sum(max_row_norm(V) ** 2 for V in heads))
        inner = W.shape[0] * W.shape[1]
        return total + (N + 4) * eps * (Y + X) + (inner + 2) * eps * torch.linalg.vector_norm(W) * concat
    total = head_sum(diameter(V) * (s_err + 4 * eps) + (N + 4) * eps * (max_row_norm(V) + Y + X) for V in heads)
    if len(heads) > 1:  # the sum over heads: h - 1 additions of rows of norm <= ||U_h||max
        total = total + (len(heads) - 1) * eps * head_sum(max_row_norm(V) for V in heads)
    return total


def _head_values(layer: FixedPointLayer, x: Tensor) -> tuple[list[Tensor], Tensor | None]:
    """Each head's values in float64 ([B, N, d] each) and the heads' output maps (None: values in output space):
    V for a single-head layer, x for a layer without a score form."""
    with torch.no_grad():
        if not supports_certificates(layer):
            return [x.to(torch.float64)], None
        _, V, W = head_parts(layer, x)
    V = V.detach().to(torch.float64)
    return [V[..., h, :, :] for h in range(V.shape[-3])], None if W is None else W.detach()


def jacobian_rounding(layer: FixedPointLayer, x: Tensor, y: Tensor) -> Tensor:
    """A bound on the rounding of the computed J(y) in the 2-norm, per batch element, [B] (float64).

    A column J e of the forward-mode Jacobian is d_s = products of length D with
    the weights (|d_s| <= W ||x||max per unit step, relative error 2 D eps), then
    d_p = p (d_s - sum_j p_j d_s_j) (N terms) and d_f = sum_j d_p_j v_j (N terms,
    each as large as ||v_j||, not ||v_j - f||: the cancellation is not free). The
    score error s_err of p itself moves every entry by s_err times the entry
    scale W ||x||max diam(V). So each of the N D columns is off by at most

        W ||x||max (diam(V) + 2 ||v||max) (s_err + (2 N + 2 D + 8) eps),

    and the 2-norm by sqrt(N D) times that. For a state [B, K, D_y] the sums run over max(N, K) and
    max(D, D_y) terms and J has K D_y columns. With heads, diam(V) + 2 ||v||max is summed over the heads' U_h.
    A relaxation a (J = (1 - a) I + a J_g)
    scales it by a and adds 3 eps (1 - a) on the diagonal (the scaling and the sum).
    """
    eps = torch.finfo(x.dtype).eps
    N, D = max(x.shape[-2], y.shape[-2]), max(x.shape[-1], y.shape[-1])
    columns = y.shape[-2] * y.shape[-1]  # J's columns: the state's size (N D for x-shaped states)
    heads, outputs = _head_values(layer, x)
    a = relaxation(layer)
    entry = weight_norm_product(layer, x) * max_row_norm(x.to(torch.float64))
    if outputs is None:
        values = head_sum(
            diameter(V) + 2 * max_row_norm(V) for V in heads
        )  # per head, summed: the heads' Jacobians add
        # h - 1 more additions (the sum over heads) per entry: none for one head
        terms = entry * values * (score_rounding(layer, x, y) + (2 * N + 2 * D + 8 + len(heads) - 1) * eps)
    else:
        # each head's column d_o^h as above, stretched by ||W_h||_2; then W_O on the concatenation: a length-h d sum
        W = outputs.to(torch.float64)
        sizes = [diameter(V) + 2 * max_row_norm(V) for V in heads]
        stretched = head_sum(torch.linalg.matrix_norm(W[h], ord=2) * c for h, c in enumerate(sizes))
        product = (W.shape[0] * W.shape[1] + 2) * eps * torch.linalg.vector_norm(W) * head_sum(sizes)
        terms = entry * (stretched * (score_rounding(layer, x, y) + (2 * N + 2 * D + 8) * eps) + product)
    inner = math.sqrt(columns) * terms
    return a * inner + 3 * eps * (1 - a) * math.sqrt(columns)
