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
from iqa.variants.causal import CausalQueryAttention
from iqa.variants.multihead import MultiHeadHopfieldAttention
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
    Tag.PADDING_INVARIANT,  # padded tokens: score -inf, value 0 on the softmax axis
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

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        g = super().fixed_point_map(x, key_padding_mask)
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

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        K = self.keys(x)
        V, padded = x, None
        if key_padding_mask is not None:  # padded keys: score -inf and value 0 (never read)
            V, padded = x.masked_fill(key_padding_mask[:, :, None], 0.0), key_padding_mask[:, None, :]

        def f(y: Tensor) -> Tensor:
            scores = self.Omega_Q(y) @ K.transpose(-2, -1)
            if padded is not None:
                scores = scores.masked_fill(padded, float("-inf"))
            return F.softmax(scores, dim=-1) @ V

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

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        K = self.keys(x)
        P = sinusoidal_positions(x.shape[-2], x.shape[-1], x.dtype, x.device)
        V, padded = x, None
        if key_padding_mask is not None:  # the softmax axis (the y index, as in the seed): score -inf, value 0
            V, padded = x.masked_fill(key_padding_mask[:, :, None], 0.0), key_padding_mask[:, None, :]

        def f(y: Tensor) -> Tensor:
            scores = K @ self.Omega_Q(y + P).transpose(-2, -1)
            if padded is not None:
                scores = scores.masked_fill(padded, float("-inf"))
            return F.softmax(scores, dim=-1) @ V

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

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        attend = super().fixed_point_map(x, key_padding_mask)  # softmax(K Q(y)^T) W_V(x)

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
            Tag.PADDING_INVARIANT,  # padded tokens: score -inf, value 0 on the softmax axis
        },
        expected_failures={},
    ),
    Variant.from_layer(
        PositionalQueryAttention,
        name="positional",
        tags={
            Tag.CONVEX_HULL,
            Tag.BATCH_INDEPENDENT,
            Tag.WEIGHT_DEPENDENT,
            Tag.SCORE_MATRIX,
            Tag.DETERMINISTIC,
            Tag.PADDING_INVARIANT,
        },
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
            Tag.PADDING_INVARIANT,  # padded tokens: score -inf, value 0 on the softmax axis
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
    Variant.from_layer(
        MultiHeadHopfieldAttention,
        name="multihead",
        tags={
            Tag.PERMUTATION_EQUIVARIANT,
            Tag.BATCH_INDEPENDENT,
            Tag.WEIGHT_DEPENDENT,  # each head is a Hopfield update: every token moves on its own
            Tag.SCORE_MATRIX,  # sum_h softmax(Y A_h^T) U_h, per head through head_score_matrices/head_values
            Tag.DETERMINISTIC,
            Tag.PADDING_INVARIANT,  # padded keys: score -inf in every head (docs/theory.md#masks)
        },
        expected_failures={},
        description="h Hopfield heads (layer option heads, default 2) with values and an output projection: "
        "y_i <- W_O concat_h softmax_j(W_Q^h y_i . W_K^h x_j) W_V^h x_j",
    ),
    Variant.from_layer(
        CausalQueryAttention,
        name="causal",
        tags={
            Tag.CONVEX_HULL,
            Tag.BATCH_INDEPENDENT,
            Tag.WEIGHT_DEPENDENT,  # the mask breaks the consensus: equal rows give row i the mean of x_0..x_i
            Tag.SCALE_COVARIANT,
            Tag.ORTHOGONAL_EQUIVARIANT,
            Tag.SCORE_MATRIX,  # a masked softmax over fewer tokens: the seed's certificates still bound it
            Tag.DETERMINISTIC,
            Tag.CAUSAL,  # the mask is on the softmax (y) axis: row i reads y_0..y_i, x_0..x_i (docs/theory.md#masks)
            Tag.PADDING_INVARIANT,
        },
        expected_failures={
            "test_zero_weights_give_the_mean": "under the causal mask, uniform attention gives row i the mean of "
            "x_0..x_i, not of every token",
            "test_jacobian_regularisation_lowers_rho": "under the causal mask J is block lower-triangular, so rho(J*) "
            "is that of the diagonal blocks alone while the regulariser penalises ||J||_F^2, mostly off the "
            "diagonal: on the property's run it lowers ||J*||_F^2 (3.09 -> 1.84 against gamma = 0) and rho(J*) "
            "still ends higher (0.573 against 0.487)",
        },
        description="the seed with a causal mask on the softmax (y) axis: y_i <- softmax_{k <= i}(K_i . Q(y_k)) x_k",
    ),
)
