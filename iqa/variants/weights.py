"""The weight scale: which parameters it reaches, and the default factory that applies it.

The weight scale s picks a layer's regime (docs/theory.md#regimes). It reaches every
*weight matrix* the layer owns: a parameter with at least two dimensions of size
> 1 (nn.Linear weights, MultiheadAttention's ``in_proj_weight``, GRU/LSTM weights,
convolution kernels, ``nn.Parameter`` matrices). Vectors (LayerNorm gains,
biases, a learned start of shape ``[1, 1, D]``) keep their initialisation: they set
offsets and gains, not the contraction. A variant excludes a matrix by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from iqa.layer import FixedPointLayer, linear_init_


def is_weight_matrix(p: torch.Tensor) -> bool:
    """A weight matrix by shape: at least two dimensions of size > 1 (nn.Linear weights count whatever
    their shape, see :func:`scaled_parameters`)."""
    return sum(1 for n in p.shape if n > 1) >= 2


def _linear_weights(module: nn.Module) -> set[int]:
    return {id(m.weight) for m in module.modules() if isinstance(m, nn.Linear)}


def scaled_parameters(module: nn.Module, unscaled: Iterable[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The (name, parameter) pairs the weight scale reaches, in ``named_parameters()`` order: every nn.Linear
    weight (a 1 x 1 one too) and every other weight matrix (:func:`is_weight_matrix`).

    ``unscaled`` names parameters (as ``named_parameters()`` spells them) to leave alone; a name that is
    not a parameter of ``module`` is an error, so a misspelling never silently scales a weight.
    """
    named = dict(module.named_parameters())
    excluded = set(unscaled)
    unknown = sorted(excluded - set(named))
    if unknown:
        raise ValueError(
            f"unscaled names {', '.join(map(repr, unknown))}, which are not parameters of "
            f"{type(module).__name__}; its parameters: {', '.join(named) or '(none)'}"
        )
    linear = _linear_weights(module)
    return [(name, p) for name, p in named.items() if name not in excluded and (id(p) in linear or is_weight_matrix(p))]


@dataclass(frozen=True)
class LinearFactory:
    """Builds ``layer_cls(embed_dim, **options)`` with seeded weights at a weight scale.

    The constructor runs under torch's global CPU RNG forked and seeded from the generator's state, so every
    parameter it draws is reproducible from the seed (and the caller's global RNG is left as it was). Then
    every nn.Linear weight (subclasses included) is redrawn with nn.Linear's default init (Kaiming-uniform)
    from the generator, in module order, times ``scale``; every other weight matrix
    (:func:`scaled_parameters`) keeps its seeded constructor init times ``scale``; vectors keep their init.
    The layer's ``start_seed`` (its noise start, :meth:`FixedPointLayer.start_generator`) is a function of
    the generator's state after the weights were drawn. A class (not a closure) so that a variant pickles to
    worker processes.
    """

    layer_cls: type[FixedPointLayer]
    unscaled: frozenset[str] = frozenset()

    def __call__(
        self, embed_dim: int, *, scale: float = 1.0, generator: torch.Generator | None = None, **options: Any
    ) -> FixedPointLayer:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also seeds every accelerator backend (each formats the
            # caller's stack for a lazy call), about 1.2 ms a build inside the property suite (README).
            torch.default_generator.manual_seed(_derived_seed(generator))
            layer = self.layer_cls(embed_dim, **options)
        scale_weights_(layer, scale, generator, self.unscaled)
        layer.start_seed = _derived_seed(generator)
        return layer


def scale_weights_(
    layer: nn.Module, scale: float, generator: torch.Generator, unscaled: Iterable[str] = ()
) -> nn.Module:
    """Apply the weight scale in place: nn.Linear weights redrawn from ``generator`` (Kaiming-uniform) times
    ``scale``, every other weight matrix multiplied by ``scale``; names in ``unscaled`` untouched."""
    reached = {id(p) for _, p in scaled_parameters(layer, unscaled)}
    redrawn = set()
    for module in layer.modules():
        if isinstance(module, nn.Linear) and id(module.weight) in reached and id(module.weight) not in redrawn:
            linear_init_(module, scale, generator)
            redrawn.add(id(module.weight))
    with torch.no_grad():
        for _, p in scaled_parameters(layer, unscaled):
            if id(p) not in redrawn:
                p.mul_(scale)
    return layer


def _derived_seed(generator: torch.Generator) -> int:
    """A seed drawn from a copy of ``generator``: a function of its state that leaves it unchanged."""
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return int(torch.randint(0, 2**62, (1,), generator=copy, device=generator.device))


def check_scale(name: str, scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale >= 0 and math.isfinite(scale)):
        raise ValueError(f"variant {name!r}: scale must be a finite number >= 0, got {scale!r}")
