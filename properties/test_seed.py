"""The layer is the seed document's layer, bit for bit.

The seed's loop lives here, verbatim, as the oracle; the package's layer must
equal it exactly (same ops in the same order), in float32 and float64.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from iqa import ImplicitQueryAttention
from iqa.variants import Tag, Variant
from properties.strategies import cases
from properties.tags import requires


class SeedImplicitQueryAttention(nn.Module):
    """The seed document's code, unchanged."""

    def __init__(self, embed_dim, n_iters=10):
        super().__init__()
        self.embed_dim = embed_dim
        self.n_iters = n_iters
        self.Omega_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, x, track=False):
        K = self.W_K(x)
        y = x.clone()
        y_history = [y.clone()] if track else None

        for _ in range(self.n_iters):
            Q = self.Omega_Q(y)
            attn_scores = torch.matmul(K, Q.transpose(-2, -1))
            attn_probs = F.softmax(attn_scores, dim=-1)
            y = torch.matmul(attn_probs, x)
            if track:
                y_history.append(y.clone())
        return (y, y_history) if track else y


@requires(Tag.SEED_EXACT)
@given(case=cases(), n_iters=st.integers(0, 12))
def test_layer_equals_seed_bitwise(variant: Variant, case, n_iters: int, device) -> None:
    layer = case.layer(variant, device, n_iters=n_iters)
    seed = SeedImplicitQueryAttention(case.dim, n_iters).to(dtype=case.dtype, device=device)
    seed.load_state_dict(layer.state_dict())
    x = case.inputs(device)
    y, history = layer(x, track=True)
    y_seed, history_seed = seed(x, track=True)
    assert torch.equal(y, y_seed)
    assert len(history) == len(history_seed) == n_iters + 1
    assert all(torch.equal(a, b) for a, b in zip(history, history_seed))
    assert torch.equal(layer(x), seed(x))


def test_default_construction_matches_seed() -> None:
    """Same parameter names, Linear without bias, default n_iters = 10."""
    layer = ImplicitQueryAttention(8)
    seed = SeedImplicitQueryAttention(8)
    assert layer.n_iters == 10
    assert [n for n, _ in layer.named_parameters()] == [n for n, _ in seed.named_parameters()]
    assert layer.W_K.bias is None and layer.Omega_Q.bias is None
    assert isinstance(layer.W_K, nn.Linear) and isinstance(layer.Omega_Q, nn.Linear)
