"""Layers the tool tests build to order: the seed map, relaxed or not, through the variant registry."""

from __future__ import annotations

import torch

from iqa.layer import FixedPointLayer, ImplicitQueryAttention
from iqa.variants import resolve


class NoScores(ImplicitQueryAttention):
    """The seed's layer without the score_matrix(x) / values(x) the certificates and the consensus analysis need."""

    score_matrix = None  # type: ignore[assignment]
    values = None  # type: ignore[assignment]


def relaxed_seed(
    dim: int, relaxation: float, scale: float, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> FixedPointLayer:
    """The seed layer (relaxation 1) or its damped form f = (1 - a) y + a g(y), weights drawn at ``scale``."""
    if relaxation == 1.0:
        return resolve("reference").make(dim, scale=scale, seed=generator, dtype=dtype)
    return resolve("damped").make(dim, scale=scale, seed=generator, dtype=dtype, relaxation=relaxation)
