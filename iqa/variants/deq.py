"""A DEQ-Transformer block (Bai, Kolter and Koltun 2019) as a fixed-point layer, in two forms.

The DEQ-Transformer iterates one weight-tied transformer block f(z; x) from z0 = 0:
multi-head self-attention whose input carries an injection of x, residual
connections, LayerNorm and a position-wise MLP. DEQ-Transformer injects x into the
q/k/v projections (``W_qkv z + U x``); here one injection U x is added to the
attention's input, ``MHA(z + U x)``, which is that form with the injections tied
through the projections. What this block leaves out of the original: the relative
positional encoding, the causal and local masks of its language model, dropout and
weight normalisation. With no positions the block is permutation equivariant.

- post-LN (``deq-post``, DEQ-Transformer's default ``pre_lnorm=False``)::

      u  = LN1(z + MHA(z + U x))
      z' = LN2(u + W2 relu(W1 u + b1) + b2)

- pre-LN (``deq-pre``, ``pre_lnorm=True``)::

      u  = z + MHA(LN1(z) + U x)
      z' = u + W2 relu(W1 LN2(u) + b1) + b2

MHA is multi-head attention on the weights of a ``torch.nn.MultiheadAttention`` (``heads``
heads of width D / heads, scores scaled by 1/sqrt(D / heads), no projection biases, as
DEQ's ``qkv_net``), its ops written out in :meth:`DEQBlock.attend`; LN is
``torch.nn.LayerNorm`` (gains 1 and biases 0 at init; the weight scale leaves them, and
the MLP biases). LayerNorm maps a width-2 row to +-(1, -1) (up to its eps), so at D <= 2
the map is piecewise constant: the domain is D >= 3, a multiple of ``heads``.

Whether they converge (measured; the variants' descriptions, shown on their report pages,
give the figures): the post-LN form does, slowly (rho(J*) up to 0.99 at every weight
scale measured), and is not claimed contractive; the pre-LN form never reaches a fixed
point from z0 = 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.validation import check_positive_int
from iqa.variants.domain import Domain
from iqa.variants.protocol import Tag, Variant

#: Default number of attention heads (cheap: the suite's D stays small).
DEFAULT_HEADS = 2
#: Default MLP width as a multiple of D (the transformer's usual 4).
DEFAULT_MLP_RATIO = 4


class DEQBlock(FixedPointLayer):
    """The modules both DEQ forms share: injection U, attention, two LayerNorms and the MLP.

    A subclass says how they compose (:meth:`step`). The state z has x's shape
    [B, N, D] and starts from zeros, as in DEQ; the output is z* itself.
    """

    heads: int = DEFAULT_HEADS

    def __init__(
        self,
        embed_dim: int,
        n_iters: int = 10,
        *,
        heads: int = DEFAULT_HEADS,
        mlp_ratio: int = DEFAULT_MLP_RATIO,
        **options: Any,
    ) -> None:
        super().__init__(embed_dim, n_iters, **options)
        check_positive_int("heads", heads)
        check_positive_int("mlp_ratio", mlp_ratio)
        if embed_dim % heads:
            raise ValueError(f"embed_dim must be a multiple of heads: got embed_dim={embed_dim}, heads={heads}")
        self.heads = heads
        #: U: the input injection, added to the attention's input.
        self.inject = nn.Linear(embed_dim, embed_dim, bias=False)
        self.attn = nn.MultiheadAttention(embed_dim, heads, bias=False, batch_first=True)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.mlp_in = nn.Linear(embed_dim, mlp_ratio * embed_dim)
        self.mlp_out = nn.Linear(mlp_ratio * embed_dim, embed_dim)

    def initial_point(self, x: Tensor) -> Tensor:
        """z0 = 0, as DEQ starts its solver."""
        return torch.zeros_like(x)

    def mlp(self, u: Tensor) -> Tensor:
        """The position-wise MLP W2 relu(W1 u + b1) + b2."""
        return self.mlp_out(F.relu(self.mlp_in(u)))

    def attend(self, h: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """Multi-head self-attention over the rows of h: concat_i softmax(q_i k_i^T / sqrt(d)) v_i, then W_O,
        with [q, k, v] = h W_in^T and head i on columns i d .. (i + 1) d - 1 of each (d = D / heads); a key
        that is True in ``key_padding_mask`` gets weight exactly 0.

        The weights are ``self.attn``'s (``in_proj_weight``, ``out_proj``), and its own forward is the
        tests' oracle. The ops are written out because that forward costs 1.7x as much CPU time at the
        suite's sizes (107 against 64 us at B = 2, N = D = 4), and its ``need_weights=False`` path
        (``scaled_dot_product_attention``) has no forward-mode derivative on CPU, which iqa's Jacobians need.
        """
        batch, tokens, dim = h.shape
        d = dim // self.heads
        qkv = F.linear(h, self.attn.in_proj_weight).reshape(batch, tokens, 3, self.heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, N, d]
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], -math.inf)
        out = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.attn.out_proj(out)

    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """f(z; x) given the injection U x."""
        raise NotImplementedError

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        injection = self.inject(x)  # once per forward, not once per step

        def f(z: Tensor) -> Tensor:
            return self.step(z, injection, key_padding_mask)

        return f

    def weight_roles(self) -> dict[str, Tensor]:
        """Only the output projection has a Parameter of its own.

        nn.MultiheadAttention fuses the query, key and value projections into one
        ``in_proj_weight``, so no separate key, query or value Parameter exists to name.
        """
        return {"output": self.attn.out_proj.weight}


class PostLNDEQBlock(DEQBlock):
    """DEQ-Transformer block, post-LN: u = LN1(z + MHA(z + U x)), z <- LN2(u + MLP(u)), from z = 0.

    Multi-head self-attention (2 heads by default) over the state plus the input injection U x,
    residual connections, LayerNorm after each, and a ReLU MLP of width 4D; no positions, no mask
    by default, no dropout.
    """

    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = self.norm1(z + self.attend(z + injection, key_padding_mask))
        return self.norm2(u + self.mlp(u))


class PreLNDEQBlock(DEQBlock):
    """DEQ-Transformer block, pre-LN: u = z + MHA(LN1(z) + U x), z <- u + MLP(LN2(u)), from z = 0.

    The same modules as the post-LN form, with the LayerNorms moved inside the residual branches,
    as DEQ-Transformer's ``pre_lnorm=True``: nothing normalises the state itself.
    """

    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        u = z + self.attend(self.norm1(z) + injection, key_padding_mask)
        return u + self.mlp(self.norm2(u))


#: What both forms claim: attention over the tokens (no positions, no mask of its own) and per-token
#: LayerNorm and MLP; a masked key adds exactly 0 to every softmax row.
_DEQ_TAGS = {
    Tag.BATCH_INDEPENDENT,
    Tag.DETERMINISTIC,
    Tag.PERMUTATION_EQUIVARIANT,
    Tag.PADDING_INVARIANT,
}
#: LayerNorm maps a width-2 row to +-(1, -1) (up to its eps): the map is piecewise constant at D <= 2.
DEQ_DOMAIN = Domain(dim_multiple=DEFAULT_HEADS, min_dim=3)

#: Measured (not by the suite): Picard and Anderson from z0 = 0, float64,
#: x ~ N(0, 1), B = 2, (D, N) in {(4, 1), (4, 3), (4, 6), (6, 2), (6, 5), (8, 4)}, seeds 0-11 (144 runs per
#: weight scale); rho(J*) from dense eigenvalues at the returned point.
POST_LN_CONVERGENCE = (
    "Converges, slowly, and is not claimed contractive. Picard from 0 (tol 1e-10, up to 5000 steps) converged in "
    "144/144 runs at weight scales 0.05 and 0.25, 140/144 at 0.5, 136/144 at 1 and 114/144 at 2 (16 cycles); "
    "rho(J*) was 0.87-0.97 at 0.05, 0.86-0.996 at 0.25, 0.76-0.99 at 0.5, 0.44-0.99 at 1 and 0.03-0.96 at 2. "
    "LayerNorm on the residual path keeps rho(J*) near 1 even at small weights (the MLP biases, which the weight "
    "scale leaves, set the contraction there), so at the default 200 steps and tol 1e-6 Picard runs out of steps "
    "in 6-23% of runs. Anderson also lands on fixed points Picard cannot reach (rho(J*) up to 1.24-2.05 at "
    "scales 0.25-2)."
)
PRE_LN_CONVERGENCE = (
    "Does not converge. Picard from 0 ran out of steps in every run (144/144 at each weight scale 0.05, 0.25, "
    "0.5, 1 and 2; tol 1e-10 in 500 steps, and tol 1e-6 in 200), with rho = 1.00-1.32 at the last iterate: "
    "nothing normalises the state, each step adds two bounded residual branches, ||z|| grows and J tends to I. "
    "Anderson's CONVERGED runs (64, 30, 21, 2 and 1 of 144 at those scales) all end at ||z|| = 4e15-2e19, where "
    "z + g(z) rounds to z in float64 although the branches g(z) are O(1): not fixed points."
)

DEQ_VARIANTS: tuple[Variant, ...] = (
    Variant.from_layer(
        PostLNDEQBlock,
        name="deq-post",
        tags=_DEQ_TAGS | {Tag.WEIGHT_DEPENDENT},
        expected_failures={},
        domain=DEQ_DOMAIN,
        description="DEQ-Transformer block, post-LN: u = LN1(z + MHA(z + U x)), z <- LN2(u + MLP(u)), from z = 0 "
        "(2 heads, ReLU MLP of width 4D, no positions). " + POST_LN_CONVERGENCE,
    ),
    Variant.from_layer(
        PreLNDEQBlock,
        name="deq-pre",
        tags=_DEQ_TAGS,
        expected_failures={},
        domain=DEQ_DOMAIN,
        description="DEQ-Transformer block, pre-LN: u = z + MHA(LN1(z) + U x), z <- u + MLP(LN2(u)), from z = 0 "
        "(2 heads, ReLU MLP of width 4D, no positions). " + PRE_LN_CONVERGENCE,
    ),
)
