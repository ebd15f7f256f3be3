"""Lipschitz certificates: upper bounds on the contraction factor of f.

For layers whose map is f(Y) = softmax(A (Y + C)^T) V + B with A, V, B, C
independent of Y (the seed and the variants tagged ``score_matrix``), the
Jacobian block df_i/dy_j = p_ij (v_j - f_i) a_i^T is rank one, and with
diam(V) = max_{j,k} ||v_j - v_k||:

    kappa_inf = 1/2 diam(V) max_i ||a_i||          (max-row l2 norm, "2,inf")
    kappa_F   = diam(V) ||A||_2 / (2 sqrt 2)       (Frobenius; bounds ||J(y)||_2 too)
    kappa_w   = 1/2 diam(V) ||M||_2 max_i ||x_i||  (weights only; A = X M)

Any of them < 1 makes f a contraction on the invariant set (THEORY.md), so the
fixed point is unique and ||y_t - y*|| <= kappa^t ||y_0 - y*||.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iqa.layer import FixedPointLayer


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
    return hasattr(layer, "score_matrix") and hasattr(layer, "values")


def diameter(points: Tensor) -> Tensor:
    """max_{j,k} ||p_j - p_k|| over the rows of each batch element of points [B, N, D]."""
    return torch.cdist(points, points).amax(dim=(-2, -1))


def certificates(layer: FixedPointLayer, x: Tensor) -> Certificates:
    """kappa_inf, kappa_F and the weights-only bound for each batch element of x.

    The layer must expose ``score_matrix(x)`` (A) and ``values(x)`` (V); the
    weights-only bound also uses ``score_weight_norm()`` (||M||_2 with A = X M)
    when the layer has it, and is +inf otherwise.
    """
    if not supports_certificates(layer):
        raise TypeError(
            f"{type(layer).__name__} has no score_matrix(x)/values(x): its map is not of the form "
            "softmax(A Y^T) V, so these certificates do not apply"
        )
    with torch.no_grad():
        A = layer.score_matrix(x)  # type: ignore[operator]
        V = layer.values(x)  # type: ignore[operator]
        diam = diameter(V)
        kappa_inf = 0.5 * diam * torch.linalg.vector_norm(A, dim=-1).amax(dim=-1)
        kappa_F = diam * torch.linalg.matrix_norm(A, ord=2) / (2 * math.sqrt(2))
        weight_norm = getattr(layer, "score_weight_norm", None)
        if weight_norm is None:
            kappa_w = torch.full_like(diam, math.inf)
        else:
            kappa_w = 0.5 * diam * weight_norm() * torch.linalg.vector_norm(x, dim=-1).amax(dim=-1)
    return Certificates(kappa_inf=kappa_inf, kappa_F=kappa_F, kappa_weights=kappa_w)
