"""``perceiver-pytorch`` (0.11.0) with ``weight_tie_layers=True`` as a fixed-point layer: f(z; x) is its tied block.

The package's ``Perceiver(depth=L, weight_tie_layers=True)`` makes its first block on its own and shares one
second block among layers 2..L (its ``cache_fn``: the first cross-attention is untied, as in the Perceiver
paper). Its forward repeats its learned latents over the batch and applies ``layers[0]`` once, then the tied
block ``L - 1`` times; each block is a pre-norm residual cross-attention from the latents to the data and a
feed-forward, then ``self_per_cross_attn`` pre-norm residual self-attention + feed-forward pairs on the latents.

:class:`PerceiverLayer` wraps that module (``layer.module``; built with ``fourier_encode_data=False`` and
``input_axis=1``, so the data are the tokens x ``[B, N, D]`` themselves, and ``final_classifier_head=False``, so
``module(x)`` returns the latents) and states the tied block as f(z; x) on the state z = the latents ``[B, K, D]``:

- y0 = ``layers[0]`` applied to the learned latents repeated over the batch (the untied first block is part
  of the start, not of the iteration, since the iteration is the block that repeats);
- the readout is the state z* itself (the default): the package's own logits head (mean over latents,
  LayerNorm, a Linear to ``num_classes``) is a classifier on top, not part of the iteration, and is left off.

The module has depth ``n_iters + 1`` (at least 2, so that its tied block exists), so in seed mode with
``n_iters >= 1`` the layer's output equals ``layer.module(x)`` bit for bit (``properties/tool/test_zoo.py``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.variants import Domain, Variant
from iqa.zoo import missing_extra

try:
    from einops import repeat
    from perceiver_pytorch import Perceiver, PerceiverBlock
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(missing_extra("perceiver-pytorch==0.11.0", __name__)) from error

#: The depth of the package README's example (Perceiver(depth=6)): the untied first block and 5 tied steps.
PACKAGE_DEPTH = 6


class PerceiverLayer(FixedPointLayer):
    """perceiver-pytorch's weight-tied Perceiver: f(z; x) = the tied latent block, z the K latents [B, K, D]."""

    variant_name = "zoo-perceiver"
    tags = (
        "token_permutation_invariant",  # cross-attention sums over the tokens; no Fourier positions (turned off)
        "slot_permutation_equivariant",  # no positions on the latents: self-attention and FF are equivariant
        "batch_independent",
        "weight_dependent",
        "deterministic",
    )
    #: D >= 3 for the LayerNorms: over D = 1 feature a LayerNorm is constant, over D = 2 it is a smoothed sign,
    #: (a, b) -> ±(1, -1) scaled by the gain, whose Jacobian is ~0 except within |a - b| ~ sqrt(eps) of the switch,
    #: where it reaches ~1 / sqrt(eps) (~300). Any N; K slots drawn on their own, passed as ``slots=K``.
    domain = Domain(min_dim=3, slots=(1, 5))
    #: The learned latents are the start, not a weight of the map: the weight scale leaves them alone.
    unscaled = frozenset({"module.latents"})

    def __init__(
        self,
        embed_dim: int,
        n_iters: int = PACKAGE_DEPTH - 1,
        *,
        slots: int = 4,
        cross_heads: int = 1,
        latent_heads: int = 8,
        cross_dim_head: int = 64,
        latent_dim_head: int = 64,
        self_per_cross_attn: int = 1,
        **options: Any,
    ) -> None:
        """``slots``: K latents of width D (= the token width); the heads options are the package's (its defaults)."""
        super().__init__(embed_dim, n_iters, **options)
        self.module = Perceiver(
            num_freq_bands=1,  # unused: fourier_encode_data=False
            depth=max(n_iters, 1) + 1,
            max_freq=1.0,  # unused
            input_channels=embed_dim,
            input_axis=1,
            num_latents=slots,
            latent_dim=embed_dim,
            cross_heads=cross_heads,
            latent_heads=latent_heads,
            cross_dim_head=cross_dim_head,
            latent_dim_head=latent_dim_head,
            weight_tie_layers=True,
            fourier_encode_data=False,
            self_per_cross_attn=self_per_cross_attn,
            final_classifier_head=False,
        )

    @property
    def slots(self) -> int:
        """K, the number of latents."""
        return int(self.module.latents.shape[0])

    @property
    def first_block(self) -> PerceiverBlock:
        """The package's untied first block, ``module.layers[0]``: part of the start."""
        block: PerceiverBlock = self.module.layers[0]
        return block

    @property
    def tied_block(self) -> PerceiverBlock:
        """The block shared by ``module.layers[1:]``: the iteration."""
        block: PerceiverBlock = self.module.layers[1]
        return block

    def initial_point(self, x: Tensor) -> Tensor:
        """The untied first block applied to the learned latents repeated over the batch."""
        latents = repeat(self.module.latents, "n d -> b n d", b=x.shape[0])
        z: Tensor = self.first_block(latents, context=x)
        return z

    def fixed_point_map(self, x: Tensor) -> Map:
        """z <- tied_block(z; context = x)."""
        block = self.tied_block

        def f(z: Tensor) -> Tensor:
            out: Tensor = block(z, context=x)
            return out

        return f


PERCEIVER = Variant.from_layer(PerceiverLayer)
