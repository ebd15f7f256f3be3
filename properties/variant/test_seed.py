"""The layer is the seed document's layer, bit for bit.

The seed's loop (properties/seed_reference.py, verbatim) is the oracle; the package's layer must
equal it exactly (same ops in the same order), in float32 and float64.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa.variants import Tag, Variant
from properties.seed_reference import SeedImplicitQueryAttention
from properties.strategies import cases
from properties.tags import requires


@requires(Tag.SEED_EXACT)
@given(case=cases(), n_iters=st.integers(0, 12))
def test_layer_equals_seed_bitwise(variant: Variant, case, n_iters: int, device) -> None:
    layer = case.layer(variant, device, n_iters=n_iters)
    seed = SeedImplicitQueryAttention(case.dim, n_iters).to(dtype=case.dtype, device=device)
    seed.load_state_dict(layer.state_dict())
    x = case.inputs(device)
    y, history = layer(x, track=True)
    y_seed, history_seed = seed(x, track=True)
    gap = float((y - y_seed).detach().abs().max())
    assert torch.equal(y, y_seed), f"the output differs from the seed's: max {gap:.3e}"
    assert len(history) == len(history_seed) == n_iters + 1, "the tracked history differs from the seed's in length"
    assert all(torch.equal(a, b) for a, b in zip(history, history_seed)), "an iterate differs from the seed's"
    assert torch.equal(layer(x), seed(x)), "the untracked output differs from the seed's"
