"""lucidrains' slot attention (``slot-attention`` 1.5.2) as a fixed-point layer: f(slots; x) is its slot update.

The package's ``SlotAttention.forward(inputs)`` draws K start slots ``mu + sigma * noise`` (learned mu and
log sigma, noise from torch's global RNG), normalises the inputs and projects them to keys and values once,
then repeats ``iters`` times (3 by default)::

    q = to_q(norm_slots(s));  attn = l1norm_j(softmax_i(q k^T / sqrt(D)))   # slots compete for each token
    s <- gru(attn v, s);  s <- s + mlp(norm_pre_ff(s))

:class:`SlotAttentionLayer` wraps that module (``layer.module``) and states this as f(s; x) on the state
s = the slots ``[B, K, D]``, from the package's own start with its noise drawn from
``self.start_generator(x)`` (seeded by the variant's seed, so the start is the same on every forward).
In seed mode with ``n_iters = module.iters`` the layer's output equals ``layer.module(x)`` bit for bit
when the global RNG is seeded with ``layer.start_seed`` (``properties/tool/test_zoo.py``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.variants import Domain, Variant
from iqa.zoo import missing_extra

try:
    from einops import einsum
    from slot_attention.slot_attention import SlotAttention, l1norm
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(missing_extra("slot-attention==1.5.2", __name__)) from error

#: The package's own number of iterations (SlotAttention's ``iters`` default).
PACKAGE_ITERS = 3


class SlotAttentionLayer(FixedPointLayer):
    """lucidrains' SlotAttention: f(s; x) = one slot update, s the K slots [B, K, D], from mu + sigma * noise."""

    variant_name = "zoo-slot-attention"
    tags = (
        "token_permutation_invariant",  # keys and values per token, summed over tokens: no positions
        "slot_permutation_equivariant",  # every op acts per slot, or symmetrically across slots (softmax_i)
        "batch_independent",  # LayerNorm and GRUCell act per row; attention within a batch element
        "weight_dependent",  # the slots are a GRU/MLP state: they move with every weight
        "deterministic",  # the start's noise comes from the layer's own seeded generator
    )

    #: D >= 3 for the LayerNorms: over D = 1 feature a LayerNorm is constant, over D = 2 it is a smoothed sign,
    #: (a, b) -> ±(1, -1) scaled by the gain, whose Jacobian is ~0 except within |a - b| ~ sqrt(eps) of the switch,
    #: where it reaches ~1 / sqrt(eps) (~300). Any N; K slots drawn on their own, passed as ``slots=K``.
    domain = Domain(min_dim=3, slots=(1, 5))

    def __init__(
        self,
        embed_dim: int,
        n_iters: int = PACKAGE_ITERS,
        *,
        slots: int = 4,
        hidden_dim: int = 128,
        eps: float = 1e-8,
        **options: Any,
    ) -> None:
        """``slots``: K; ``hidden_dim``, ``eps``: the package's options (its MLP is max(D, hidden_dim) wide)."""
        super().__init__(embed_dim, n_iters, **options)
        self.module = SlotAttention(num_slots=slots, dim=embed_dim, iters=n_iters, eps=eps, hidden_dim=hidden_dim)

    @property
    def slots(self) -> int:
        """K, the number of slots."""
        return int(self.module.num_slots)

    def initial_point(self, x: Tensor) -> Tensor:
        """The package's start mu + sigma * noise, its noise drawn from ``self.start_generator(x)``."""
        m = self.module
        mu = m.slots_mu.expand(x.shape[0], self.slots, -1)
        sigma = m.slots_logsigma.exp().expand(x.shape[0], self.slots, -1)
        noise = torch.randn(mu.shape, generator=self.start_generator(x), device=x.device, dtype=x.dtype)
        return mu + sigma * noise

    def fixed_point_map(self, x: Tensor) -> Map:
        """One iteration of the package's loop; the input norm and the k, v projections are done once, here."""
        m = self.module
        inputs = m.norm_input(x)
        k, v = m.to_k(inputs), m.to_v(inputs)
        b, d = x.shape[0], x.shape[-1]

        def f(slots: Tensor) -> Tensor:
            q = m.to_q(m.norm_slots(slots))
            dots = einsum(q, k, "b i d, b j d -> b i j") * m.scale
            attn = l1norm(dots.softmax(dim=1), eps=m.eps)  # softmax over slots, then normalised over tokens
            updates = einsum(v, attn, "b j d, b i j -> b i d")
            out = m.gru(updates.reshape(-1, d), slots.reshape(-1, d)).reshape(b, -1, d)
            return out + m.mlp(m.norm_pre_ff(out))

        return f


SLOT_ATTENTION = Variant.from_layer(SlotAttentionLayer)
