"""The default-constructed layer equals the seed document's layer (properties/seed_reference.py)."""

from __future__ import annotations

import torch.nn as nn

from iqa import ImplicitQueryAttention
from properties.seed_reference import SeedImplicitQueryAttention


def test_default_construction_matches_seed() -> None:
    """Same parameter names, Linear without bias, default n_iters = 10."""
    layer = ImplicitQueryAttention(8)
    seed = SeedImplicitQueryAttention(8)
    assert layer.n_iters == 10
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in seed.named_parameters()]
    assert layer.W_K.bias is None and layer.Omega_Q.bias is None
    assert isinstance(layer.W_K, nn.Linear) and isinstance(layer.Omega_Q, nn.Linear)
