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

MHA is ``torch.nn.MultiheadAttention`` (``heads`` heads of width D / heads, scores
scaled by 1/sqrt(D / heads), no projection biases, as DEQ's ``qkv_net``); LN is
``torch.nn.LayerNorm`` (gains 1 and biases 0 at init; the weight scale leaves them).
LayerNorm maps a width-2 row to +-(1, -1) (up to its eps), so at D <= 2 the map is
piecewise constant: the domain is D >= 3, a multiple of ``heads``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.validation import check_positive_int

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
        """Multi-head self-attention over the rows of h (padded keys, True in the mask, ignored).

        ``need_weights=True`` keeps torch on its explicit softmax path: with ``False`` it calls
        ``scaled_dot_product_attention``, whose CPU kernel has no forward-mode derivative, and
        iqa's Jacobians are built from jvps.
        """
        out, _ = self.attn(h, h, h, key_padding_mask=key_padding_mask, need_weights=True)
        return out

    def step(self, z: Tensor, injection: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """f(z; x) given the injection U x."""
        raise NotImplementedError

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        injection = self.inject(x)  # once per forward, not once per step

        def f(z: Tensor) -> Tensor:
            return self.step(z, injection, key_padding_mask)

        return f

    def weight_roles(self) -> dict[str, nn.Parameter]:
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
