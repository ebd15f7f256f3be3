"""The built-in variants.

``reference`` is the seed; ``scaled`` and ``damped`` keep its consensus fixed
point (so their weight gradients vanish where they contract, declared as an
expected failure); ``hopfield``, ``positional`` and ``injection`` break the
symmetry in the three ways of docs/theory.md#breaking-the-symmetry, so their fixed points move with
their weights and the gradient properties have something to check.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.layer import ImplicitQueryAttention
from iqa.solvers import Map
from iqa.variants.deq import DEQ_VARIANTS
from iqa.variants.protocol import Tag, Variant

#: The property that a layer with a consensus fixed point is known to fail.
WEIGHTS_MOVE_FIXED_POINT = "test_fixed_point_depends_on_weights"
CONSENSUS_REASON = (
    "the fixed point is the token mean 1 mean(x)^T wherever the layer contracts, "
    "so it does not depend on the weights and their gradients vanish (docs/theory.md#consensus)"
)
CONSENSUS_FAILURES = {WEIGHTS_MOVE_FIXED_POINT: CONSENSUS_REASON}

_CONSENSUS_TAGS = {
    Tag.CONVEX_HULL,
    Tag.PERMUTATION_EQUIVARIANT,
    Tag.BATCH_INDEPENDENT,
    Tag.MEAN_FIXED_POINT,
    Tag.SCALE_COVARIANT,
    Tag.ORTHOGONAL_EQUIVARIANT,
    Tag.DETERMINISTIC,
}


class ScaledQueryAttention(ImplicitQueryAttention):
    """The seed with a 1/sqrt(D) temperature: y <- softmax(K Q(y)^T / sqrt(D)) x."""

    def keys(self, x: Tensor) -> Tensor:
        """k_i = W_K x_i / sqrt(D): the seed's map and score matrix then carry the temperature."""
        return super().keys(x) / math.sqrt(self.embed_dim)

    def score_weight_norm(self) -> Tensor:
        return super().score_weight_norm() / math.sqrt(self.embed_dim)


class DampedQueryAttention(ImplicitQueryAttention):
    """The seed relaxed: y <- (1 - a) y + a softmax(K Q(y)^T) x, a = relaxation.

    Same fixed points as the seed; the Jacobian is (1 - a) I + a J, which turns
    the seed's negative eigenvalues (its 2-cycles) into convergence.
    """

    def __init__(self, embed_dim: int, n_iters: int = 10, relaxation: float = 0.5, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        if not 0 < relaxation <= 1:
            raise ValueError(f"relaxation must be in (0, 1], got {relaxation!r}")
        self.relaxation = relaxation

    def fixed_point_map(self, x: Tensor) -> Map:
        g = super().fixed_point_map(x)
        a = self.relaxation

        def f(y: Tensor) -> Tensor:
            return y + a * (g(y) - y)

        return f


class HopfieldAttention(ImplicitQueryAttention):
    """The usual orientation: queries from y attend to keys from x,
    y_i <- sum_j softmax_j(Omega_Q(y_i) . W_K(x_j)) x_j (a modern-Hopfield update).

    Each token moves on its own, so the fixed point depends on the weights.
    """

    #: Scores s_ij = Omega y_i . k_j = y_i . a_j: Y A^T with the seed's A (iqa.analysis.certificates).
    score_form = "Y A^T"

    def fixed_point_map(self, x: Tensor) -> Map:
        K = self.keys(x)

        def f(y: Tensor) -> Tensor:
            return F.softmax(self.Omega_Q(y) @ K.transpose(-2, -1), dim=-1) @ x

        return f


def sinusoidal_positions(n: int, d: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The transformer's sinusoidal encoding P [n, d]: sin/cos of pos / 10000^(2i/d)."""
    pos = torch.arange(n, dtype=torch.float64, device=device)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64, device=device) / d)
    P = torch.zeros(n, d, dtype=torch.float64, device=device)
    P[:, 0::2] = torch.sin(pos * freq)
    P[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return P.to(dtype)


class PositionalQueryAttention(ImplicitQueryAttention):
    """The seed with positions in the queries: y <- softmax(K Omega_Q(y + P)^T) x.

    P is the sinusoidal encoding; equal rows no longer give uniform attention,
    so the token mean stops being a fixed point and the weights matter.
    """

    def fixed_point_map(self, x: Tensor) -> Map:
        K = self.keys(x)
        P = sinusoidal_positions(x.shape[-2], x.shape[-1], x.dtype, x.device)

        def f(y: Tensor) -> Tensor:
            return F.softmax(K @ self.Omega_Q(y + P).transpose(-2, -1), dim=-1) @ x

        return f


class InjectedQueryAttention(ImplicitQueryAttention):
    """The seed with input injection: y <- softmax(K Q(y)^T) W_V(x) + x.

    The values are learned and x is added back, as in a DEQ block; the output
    leaves the convex hull of x.
    """

    def __init__(self, embed_dim: int, n_iters: int = 10, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        self.W_V = nn.Linear(embed_dim, embed_dim, bias=False)

    def values(self, x: Tensor) -> Tensor:
        return self.W_V(x)

    def weight_roles(self) -> dict[str, Tensor]:
        return {**super().weight_roles(), "value": self.W_V.weight}

    def fixed_point_map(self, x: Tensor) -> Map:
        attend = super().fixed_point_map(x)  # softmax(K Q(y)^T) W_V(x)

        def f(y: Tensor) -> Tensor:
            return attend(y) + x

        return f


BUILTIN_VARIANTS: tuple[Variant, ...] = (
    Variant.from_layer(
        ImplicitQueryAttention,
        name="reference",
        tags=_CONSENSUS_TAGS | {Tag.SCORE_MATRIX, Tag.SEED_EXACT},
        expected_failures=CONSENSUS_FAILURES,
        description="the seed: y <- softmax(W_K(x) Omega_Q(y)^T) x from y = x",
    ),
    Variant.from_layer(
        HopfieldAttention,
        name="hopfield",
        tags={
            Tag.CONVEX_HULL,
            Tag.PERMUTATION_EQUIVARIANT,
            Tag.BATCH_INDEPENDENT,
            Tag.WEIGHT_DEPENDENT,
            Tag.SCALE_COVARIANT,
            Tag.ORTHOGONAL_EQUIVARIANT,
            Tag.SCORE_MATRIX,
            Tag.DETERMINISTIC,
        },
        expected_failures={},
    ),
    Variant.from_layer(
        PositionalQueryAttention,
        name="positional",
        tags={Tag.CONVEX_HULL, Tag.BATCH_INDEPENDENT, Tag.WEIGHT_DEPENDENT, Tag.SCORE_MATRIX, Tag.DETERMINISTIC},
        expected_failures={},
    ),
    Variant.from_layer(
        InjectedQueryAttention,
        name="injection",
        tags={
            Tag.PERMUTATION_EQUIVARIANT,
            Tag.BATCH_INDEPENDENT,
            Tag.WEIGHT_DEPENDENT,
            # (x R, R^T W R for W_K, Omega_Q, W_V): K R, V R and unchanged scores, so y R = attn V R + x R
            Tag.ORTHOGONAL_EQUIVARIANT,
            Tag.SCORE_MATRIX,
            Tag.DETERMINISTIC,
        },
        expected_failures={},
    ),
    Variant.from_layer(
        ScaledQueryAttention,
        name="scaled",
        tags=_CONSENSUS_TAGS | {Tag.SCORE_MATRIX},
        expected_failures=CONSENSUS_FAILURES,
    ),
    Variant.from_layer(
        DampedQueryAttention,
        name="damped",
        tags=_CONSENSUS_TAGS | {Tag.SCORE_MATRIX},
        expected_failures=CONSENSUS_FAILURES,
    ),
)

#: The DEQ-Transformer blocks, post-LN and pre-LN (iqa/variants/deq.py).
BUILTIN_VARIANTS += DEQ_VARIANTS
