"""The consensus fixed point Y_c = 1 mean(x)^T and its stability.

For a map f(Y) = softmax(A Y^T) V, equal rows Y = 1 c^T give constant score
rows, uniform attention and f = 1 mean(V)^T, whatever A is: with V = x (the
seed) Y_c = 1 mean(x)^T is a fixed point for every input and weights.

Jacobian there (p_ij = 1/N): L(dY) = A dY^T V_c / N, V_c = V - 1 mean(V)^T.
Its nonzero eigenvalues are those of S o R with R(Z) = A Z, S(dY) = dY^T V_c / N,
i.e. of K(Z) = Z^T P on D x D matrices, P = A^T V_c / N. In an eigenbasis of P
(P = U diag(mu) U^-1) K maps E_ii -> mu_i E_ii and swaps E_ij, E_ji with weights
mu_i, mu_j, so

    eig(L) = {mu_i} u {+-sqrt(mu_i mu_j), i < j} u {0}

(0 always: L(1 w^T) = 0, as 1^T V_c = 0). Hence rho_c = rho(P). For the seed
A = X M with M = W_K^T Omega and V = X, so P = M^T Sigma_x with
Sigma_x = X_c^T X_c / N, whose eigenvalues are those of its transpose
Sigma_x M: rho_c = rho(Sigma_x W_K^T Omega) of docs/theory.md#consensus. A relaxed map
(1 - a) Y + a f(Y) (``layer.relaxation`` = a) has eigenvalues 1 - a + a lambda.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from iqa.analysis.certificates import (
    SCORES_A_YT,
    check_state_fits,
    has_heads,
    max_row_norm,
    relaxation,
    score_form,
    supports_certificates,
)
from iqa.analysis.rounding import map_rounding
from iqa.analysis.spectral import eig_blocks
from iqa.layer import FixedPointLayer


def consensus_point(x: Tensor) -> Tensor:
    """1 mean(x)^T: every row replaced by the token mean, same shape as x [B, N, D]."""
    return x.mean(dim=-2, keepdim=True).expand_as(x)


def consensus_distance(y: Tensor, x: Tensor) -> Tensor:
    """||y - 1 mean(x)^T||_F per batch element, [B].

    Defined only for a state with x's shape: a slot state [B, K, D_y] has no token mean to be compared with
    (ValueError).
    """
    if y.shape != x.shape:
        raise ValueError(
            f"the consensus distance compares a state with x's shape [B, N, D] to the token mean; got a state of "
            f"shape {tuple(y.shape)} for x of shape {tuple(x.shape)}"
        )
    return torch.linalg.vector_norm(y - consensus_point(x), dim=(-2, -1))


def consensus_matrix(layer: Any, x: Tensor) -> Tensor:
    """P = A^T V_c / N per batch element, [B, D, D]: rho_c = rho(P) for the unrelaxed map."""
    if not supports_certificates(layer) or has_heads(layer):
        raise TypeError(
            f"{type(layer).__name__} has no score_matrix(x)/values(x): the consensus analysis needs a map "
            "of the form softmax(A Y^T) V (one head)"
        )
    if score_form(layer) != SCORES_A_YT:
        raise TypeError(
            f"{type(layer).__name__} has scores Y A^T: equal rows do not give uniform attention, "
            "so there is no consensus fixed point to analyse"
        )
    with torch.no_grad():
        A = layer.score_matrix(x)
        V = layer.values(x)
        check_state_fits(layer, x, A, V, SCORES_A_YT)
        Vc = V - V.mean(dim=-2, keepdim=True)
        return A.transpose(-2, -1) @ Vc / x.shape[-2]


def consensus_eigenvalues(layer: FixedPointLayer, x: Tensor, check: bool = True) -> Tensor:
    """Every distinct-by-construction eigenvalue of df/dY at Y_c (see the module doc), [B, D^2 + 1], complex.

    With ``check`` (the default) the layer's map must fix 1 mean(V)^T to rounding
    (:func:`iqa.analysis.rounding.map_rounding`); a layer whose equal rows do not give uniform
    attention (positional, hopfield) gets a ValueError instead of a wrong number.
    """
    P = consensus_matrix(layer, x)
    if check:
        _check_consensus_fixed(layer, x)
    mu = eig_blocks(P)[0]  # [B, D]
    D = mu.shape[-1]
    i, j = torch.triu_indices(D, D, offset=1, device=mu.device)
    cross = torch.sqrt(mu[:, i] * mu[:, j])
    zero = torch.zeros_like(mu[:, :1])
    values = torch.cat([mu, cross, -cross, zero], dim=-1)
    a = relaxation(layer)
    return (1 - a) + a * values


def consensus_radius(layer: FixedPointLayer, x: Tensor, check: bool = True) -> Tensor:
    """rho_c: the spectral radius of df/dY at Y_c = 1 mean(x)^T per batch element, [B].

    rho_c = rho(Sigma_x W_K^T Omega) for the seed (docs/theory.md#consensus), rho(A^T V_c / N)
    for any map softmax(A Y^T) V, and max |1 - a + a lambda| for a relaxed one.
    rho_c < 1: the mean attracts; rho_c > 1: it repels.
    """
    return consensus_eigenvalues(layer, x, check).abs().amax(dim=-1).to(x.dtype)


def _check_consensus_fixed(layer: FixedPointLayer, x: Tensor) -> None:
    """f(1 mean(V)^T) must be 1 mean(V)^T up to one evaluation's rounding (map_rounding, per row) and the
    rounding of the mean itself ((N + 1) eps max ||v_j||)."""
    with torch.no_grad():
        V = layer.values(x)  # type: ignore[operator]
        point = consensus_point(V)
        error = max_row_norm((layer.fixed_point_map(x)(point) - point).to(torch.float64))
        row_norm = max_row_norm(V.to(torch.float64))
        limit = map_rounding(layer, x, point) + (x.shape[-2] + 1) * torch.finfo(x.dtype).eps * row_norm
    if not bool((error.cpu() <= limit.cpu()).all()):
        raise ValueError(
            f"{type(layer).__name__}'s map does not fix 1 mean(V)^T (deviation {error.tolist()} > rounding "
            f"{limit.tolist()}): equal rows do not give uniform attention, so the consensus analysis does not apply"
        )
