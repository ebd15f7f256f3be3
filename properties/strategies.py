"""Hypothesis strategies for the suite: shapes, dtypes, weight scales and seeds.

Tensors stay small (a few tokens of a few dimensions) so that hundreds of
examples run in seconds; the weight scale s multiplies nn.Linear's default
init and picks the regime (THEORY.md: s <= 1 mostly contracts, s ~ 3 cycles,
s >= 10 saturates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from hypothesis import strategies as st

from iqa.layer import FixedPointLayer
from iqa.measure import Sweep
from iqa.variants import Variant

DTYPES = (torch.float64, torch.float32)

#: Weight scales by regime (THEORY.md "The consensus fixed point").
CONTRACTIVE_SCALES = st.floats(0.05, 1.0)
ANY_SCALE = st.one_of(
    st.floats(0.05, 1.0),
    st.floats(1.0, 4.0),
    st.sampled_from([10.0, 20.0]),
)


@dataclass(frozen=True)
class Case:
    """One drawn configuration: x ~ N(0, 1) of shape [batch, tokens, dim], weights at ``scale``."""

    batch: int
    tokens: int
    dim: int
    dtype: torch.dtype
    scale: float
    seed: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.batch, self.tokens, self.dim)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def inputs(self, device: torch.device | str = "cpu") -> torch.Tensor:
        x = torch.randn(self.shape, dtype=torch.float64, generator=self.generator(1))
        return x.to(dtype=self.dtype, device=device)

    def layer(self, variant: Variant, device: torch.device | str = "cpu", **options: Any) -> FixedPointLayer:
        return variant.make(self.dim, scale=self.scale, seed=self.seed, dtype=self.dtype, device=device, **options)


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    batch: tuple[int, int] = (1, 3),
    tokens: tuple[int, int] = (1, 6),
    dim: tuple[int, int] = (1, 6),
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    scales: st.SearchStrategy[float] = ANY_SCALE,
) -> Case:
    return Case(
        batch=draw(st.integers(*batch)),
        tokens=draw(st.integers(*tokens)),
        dim=draw(st.integers(*dim)),
        dtype=draw(st.sampled_from(dtypes)),
        scale=draw(scales),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


#: A sweep small enough for unit tests of the measurement and the reports (seconds, not minutes).
TINY_SWEEP = Sweep(
    tokens=(2, 3),
    dims=(2,),
    scales=(0.5, 3.0),
    seeds=(0,),
    batch=2,
    max_iter=60,
    unrolled_T=(1, 4),
    phantom=((1, 1.0),),
    saved_bytes_shape=(2, 2),
)
