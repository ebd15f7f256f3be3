"""The built-in multi-head variant: h Hopfield heads with learned values and an output projection.

Each head h reads its own block of d = D / h rows of the query, key and value maps (the protocol's
convention: rows split into ``heads`` contiguous blocks) and the output projection W_O takes the
concatenated head outputs back to D:

    y_i <- W_O concat_h( sum_j softmax_j(q^h(y_i) . k^h(x_j)) v^h(x_j) )
         = sum_h sum_j softmax_j(y_i . a^h_j) u^h_j,

with a^h_j = W_Q^hT W_K^h x_j (the head's score matrix A_h, "Y A^T" scores) and
u^h_j = W_O^h W_V^h x_j (the head's values after its block W_O^h of the output projection's
columns). The layer computes the first form (h softmaxes in one batched call, then W_O on the
concatenation); the certificates use the second (docs/theory.md#multi-head), through
``head_score_matrices(x)`` (A_h), ``head_values(x)`` (V_h) and ``head_outputs()`` (the blocks W_O^hT).

Like ``hopfield`` the scores carry no temperature: each head is that variant's update on its block (a 1/sqrt(d)
would only rescale A_h, and the values already pass through two weight matrices, so the map contracts
strongly at the suite's weight scales; ``scaled`` is the variant that studies a temperature).

Each head is the Hopfield orientation (queries from y, keys from x), not the seed's: in the seed's
orientation equal rows of y give uniform attention in every head, so f(1 c^T) = 1 sum_h mean(U_h)^T and
the fixed point would not move with the query and key weights; here each token moves on its own, so the
fixed point depends on every weight and the gradient properties have something to check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.variants.domain import Domain

#: The number of heads when the layer option ``heads`` is not given.
DEFAULT_HEADS = 2


class MultiHeadHopfieldAttention(FixedPointLayer):
    """h Hopfield heads: y_i <- W_O concat_h sum_j softmax_j(y_i . a^h_j) v^h_j (see the module docstring).

    Args:
        embed_dim: D, a multiple of ``heads``.
        n_iters: steps in seed mode.
        heads: h, the number of heads (each of width d = D / h).
        **options: the base class's solve options.
    """

    heads: int = DEFAULT_HEADS
    #: D a multiple of the default number of heads (a layer built with another ``heads`` needs its own Domain).
    domain = Domain(dim_multiple=DEFAULT_HEADS)
    #: Scores s^h_ij = y_i . a^h_j: queries from y, keys from x (iqa.analysis.certificates).
    score_form = "Y A^T"

    def __init__(self, embed_dim: int, n_iters: int = 10, heads: int = DEFAULT_HEADS, **options: Any) -> None:
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive int, got {heads!r}")
        if isinstance(embed_dim, int) and not isinstance(embed_dim, bool) and embed_dim % heads:
            raise ValueError(f"embed_dim must be a multiple of heads={heads}, got embed_dim={embed_dim}")
        super().__init__(embed_dim, n_iters, **options)
        self.heads = heads
        self.head_dim = embed_dim // heads
        self.W_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_V = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_O = nn.Linear(embed_dim, embed_dim, bias=False)

    def weight_roles(self) -> dict[str, Tensor]:
        """The protocol's roles: scores depend on W_Q, W_K only through W_K^hT W_Q^h per head block."""
        return {"key": self.W_K.weight, "query": self.W_Q.weight, "value": self.W_V.weight, "output": self.W_O.weight}

    def split_heads(self, t: Tensor) -> Tensor:
        """[B, N, D] -> [B, h, N, d]: feature block h (columns h d .. (h + 1) d - 1) becomes head h."""
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(-3, -2)

    def keys(self, x: Tensor) -> Tensor:
        """k^h_j = W_K^h x_j, [B, h, N, d]."""
        return self.split_heads(self.W_K(x))

    def head_values(self, x: Tensor) -> Tensor:
        """V_h with rows v^h_j = W_V^h x_j, [B, h, N, d]: what head h averages."""
        return self.split_heads(self.W_V(x))

    def head_outputs(self) -> Tensor:
        """W_O^hT per head, [h, d, D] (row block h of W_O^T): head h's values in output space are U_h = V_h W_O^hT."""
        return self.W_O.weight.T.unflatten(0, (self.heads, self.head_dim))

    def head_score_matrices(self, x: Tensor) -> Tensor:
        """A_h with rows a^h_j = W_Q^hT k^h_j, [B, h, N, D]: the scores of head h are Y A_h^T."""
        W_Q = self.W_Q.weight.unflatten(0, (self.heads, self.head_dim))  # [h, d, D]: row block h of W_Q
        return self.keys(x) @ W_Q

    def head_score_weight_norms(self) -> Tensor:
        """||M_h||_2 for A_h = X M_h, M_h = W_K^hT W_Q^h, [h]: bounds diam(A_h) <= ||M_h||_2 diam(X)."""
        W_K = self.W_K.weight.unflatten(0, (self.heads, self.head_dim))  # [h, d, D]
        W_Q = self.W_Q.weight.unflatten(0, (self.heads, self.head_dim))
        return torch.linalg.matrix_norm(W_K.transpose(-2, -1) @ W_Q, ord=2)

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        """f(Y) = W_O concat_h softmax(Q_h(Y) K_h^T) V_h; padded keys get score -inf (and zero values) in every
        head."""
        K = self.keys(x)
        V = self.head_values(x)
        padded = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # [B, 1, 1, N]
        if key_padding_mask is not None:
            V = V.masked_fill(key_padding_mask[:, None, :, None], 0.0)  # padded content never enters a sum

        def f(y: Tensor) -> Tensor:
            scores = self.split_heads(self.W_Q(y)) @ K.transpose(-2, -1)  # [B, h, N, N]
            if padded is not None:
                scores = scores.masked_fill(padded, float("-inf"))
            heads = F.softmax(scores, dim=-1) @ V  # [B, h, N, d]
            return self.W_O(heads.transpose(-3, -2).flatten(-2))  # concat over heads, then the projection

        return f
