"""iqa.validation.all_finite, the finiteness test behind every NaN/Inf check of an input (x, y0, dL/dy*, J).

It reads a tensor's min and max instead of building a mask; the reference here reads every entry as a Python
float, so the two share no code.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from iqa.validation import all_finite, check_finite_tensor

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SPECIALS = (math.nan, math.inf, -math.inf)


@st.composite
def tensors_with_specials(draw: st.DrawFn) -> torch.Tensor:
    """A tensor of 0-3 dimensions (sizes 0-70: below, at and past the vector widths), some entries NaN or +-Inf,
    sometimes a transposed (non-contiguous) view; entries of order 1, 1e4, or an eighth of the dtype's largest
    finite value (where a sum of them overflows)."""
    shape = tuple(draw(st.lists(st.integers(0, 70), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(DTYPES))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from((1.0, 1e4, torch.finfo(dtype).max / 8)))
    t = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
    if draw(st.booleans()):
        t = t.abs()  # no cancellation: a sum of a few large entries overflows
    flat = t.reshape(-1)
    if flat.numel():
        for _ in range(draw(st.integers(0, 3))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(SPECIALS))
    return t.transpose(0, -1) if t.dim() >= 2 and draw(st.booleans()) else t


@example(t=torch.full((3,), torch.finfo(torch.float32).max / 2))  # finite entries whose sum overflows
@given(t=tensors_with_specials())
def test_all_finite_agrees_with_each_entry(t: torch.Tensor) -> None:
    expected = all(math.isfinite(v) for v in t.reshape(-1).tolist())
    assert all_finite(t) is expected


@pytest.mark.parametrize("special", SPECIALS)
def test_check_finite_tensor_counts_what_it_refuses(special: float) -> None:
    t = torch.zeros(4, 5)
    t[1, 2] = special
    t[3, 4] = special
    with pytest.raises(ValueError, match=r"y0 contains 2 non-finite value\(s\)"):
        check_finite_tensor("y0", t)
    check_finite_tensor("y0", torch.zeros(0, 5))  # nothing to refuse in an empty tensor
