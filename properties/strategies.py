"""Hypothesis strategies for the suite: shapes, dtypes, weight scales and seeds.

Tensors stay small (a few tokens of a few dimensions) so that hundreds of
examples run in seconds; the weight scale s multiplies nn.Linear's default
init and picks the regime (docs/theory.md#regimes: s <= 1 mostly contracts, s ~ 3 cycles,
s >= 10 saturates the attention and rarely converges from x).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from hypothesis import settings
from hypothesis import strategies as st

from iqa.layer import FixedPointLayer
from iqa.measure import Sweep
from iqa.suite import LARGE, PROFILES, profile_from_environment
from iqa.variants import ANY_SHAPE, Domain, Variant

DTYPES = (torch.float64, torch.float32)

#: Weight scales by regime (docs/theory.md#consensus).
CONTRACTIVE_SCALES = st.floats(0.05, 1.0)
ANY_SCALE = st.one_of(
    st.floats(0.05, 1.0),
    st.floats(1.0, 4.0),
    st.sampled_from([10.0, 20.0]),
)


@dataclass(frozen=True)
class Case:
    """One drawn configuration: x ~ N(0, 1) of shape [batch, tokens, dim], weights at ``scale``; ``slots`` is
    K for a variant whose domain has slots (given to its factory), None when the state has a row per token."""

    batch: int
    tokens: int
    dim: int
    dtype: torch.dtype
    scale: float
    seed: int
    slots: int | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.batch, self.tokens, self.dim)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def inputs(self, device: torch.device | str = "cpu") -> torch.Tensor:
        x = torch.randn(self.shape, dtype=torch.float64, generator=self.generator(1))
        return x.to(dtype=self.dtype, device=device)

    def layer(self, variant: Variant, device: torch.device | str = "cpu", **options: Any) -> FixedPointLayer:
        if self.slots is not None:
            options = {"slots": self.slots, **options}
        return variant.make(self.dim, scale=self.scale, seed=self.seed, dtype=self.dtype, device=device, **options)


_DOMAINS: list[Domain] = []


@contextmanager
def use_domain(domain: Domain) -> Iterator[None]:
    """Make ``domain`` the one :func:`cases` draws inside while the block runs (the suite's conftest does this
    for every test that takes a variant, with the variant's declared domain)."""
    _DOMAINS.append(domain)
    try:
        yield
    finally:
        _DOMAINS.pop()


def active_domain() -> Domain:
    """The shape domain :func:`cases` draws inside now: the tested variant's, or any shape outside a test."""
    return _DOMAINS[-1] if _DOMAINS else ANY_SHAPE


def outside_domain(what: str, domain: Domain) -> None:
    """End the test as not applicable: the property's shapes (``what``) and the variant's domain do not meet."""
    pytest.skip(f"outside the variant's domain: the property draws {what}; the domain is {domain.describe()}")


#: The largest N and D the ``large`` profile draws (issue 14: realistic sizes), and the profile's name.
LARGE_SIZES = {"tokens": 256, "dim": 128}


def active_profile() -> str:
    """The suite's Hypothesis profile loaded now (conftest.py loads $HYPOTHESIS_PROFILE, --hypothesis-profile
    overrides); $HYPOTHESIS_PROFILE's when none of the suite's is loaded (this module imported outside pytest)."""
    current = getattr(settings, "get_current_profile_name", None)  # hypothesis >= 6.127
    name = current() if current is not None else None
    return name if name in PROFILES else profile_from_environment()


def size_bounds(
    bounds: tuple[int, int], axis: str, *, max_elements: int | None = None, other: int = 1, profile: str | None = None
) -> tuple[int, int]:
    """The (low, high) a test's ``bounds`` for ``axis`` ("tokens" or "dim") draw from under ``profile``.

    Under ``large`` a range (low < high) has its upper end widened to :data:`LARGE_SIZES`; its lower end
    and a fixed size (low == high: a constraint of the test, e.g. one token) are kept. ``max_elements``
    caps N * D for properties that build dense n x n matrices (``other`` is the size of the other axis):
    the upper end shrinks to ``max_elements // other``, never below the lower end.
    """
    low, high = bounds
    if (profile or SIZE_PROFILE) == LARGE and low < high:
        high = max(high, LARGE_SIZES[axis])
    if max_elements is not None:
        if low * other > max_elements:
            raise ValueError(f"{axis} >= {low} with the other axis at {other} exceeds max_elements={max_elements}")
        high = max(low, min(high, max_elements // other))
    return low, high


#: ``max_elements`` caps (N * D per batch element) for properties that cannot run at N = 256, D = 128: a
#: dense n x n Jacobian that is also factored (eig, svd: ~25 n^3 flops; measured, a rate property with its eig
#: took 74 s for 3 examples at n <= 512 and 58-132 s at n <= 256 on a loaded machine), and dense Jacobians
#: against every weight too (n x 2 D^2 entries, one backward per row).
FACTORED_ELEMENTS, WEIGHT_JACOBIAN_ELEMENTS = 128, 128

#: The profile whose size policy :func:`cases` applies, read once when the suite imports this module.
SIZE_PROFILE = active_profile()


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    batch: tuple[int, int] = (1, 3),
    tokens: tuple[int, int] = (1, 6),
    dim: tuple[int, int] = (1, 6),
    dtypes: tuple[torch.dtype, ...] = DTYPES,
    scales: st.SearchStrategy[float] = ANY_SCALE,
    max_elements: int | None = None,
    max_tokens: int | None = None,
) -> Case:
    """A :class:`Case`; ``tokens`` and ``dim`` are widened under the large profile (:func:`size_bounds`),
    N * D stays <= ``max_elements`` when given (dense-Jacobian properties) and N <= ``max_tokens`` (properties
    that draw N x N data through Hypothesis, whose choice buffer holds a few thousand values)."""
    domain = active_domain()
    b = draw(st.integers(*batch))  # the draw order (batch, tokens, dim, ...) fixes the ci profile's examples
    smallest_dim = domain.smallest_dim(dim[0])
    low, high = size_bounds(tokens, "tokens", max_elements=max_elements, other=smallest_dim or dim[0])
    if max_tokens is not None:
        if low > max_tokens:
            raise ValueError(f"tokens >= {low} exceeds max_tokens={max_tokens}")
        high = min(high, max_tokens)
    token_range = domain.tokens(low, high)
    if token_range is None:
        outside_domain(f"N in [{low}, {high}]", domain)
    assert token_range is not None
    n = draw(st.integers(*token_range))
    dim_low, dim_high = size_bounds(dim, "dim", max_elements=max_elements, other=n)
    widths = domain.dims(dim_low, dim_high)
    if not widths:
        outside_domain(f"D in [{dim_low}, {dim_high}] (with N = {n})", domain)
    # Every width of the range allowed: the same draw as before domains existed, so the ci profile's examples are
    # unchanged; otherwise (a multiple of the heads, or a min_dim / max_dim inside the range) only allowed widths.
    every = widths == list(range(dim_low, dim_high + 1))
    d = draw(st.integers(dim_low, dim_high)) if every else draw(st.sampled_from(widths))
    case = Case(
        batch=b,
        tokens=n,
        dim=d,
        dtype=draw(st.sampled_from(dtypes)),
        scale=draw(scales),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
    if domain.slots is not None:
        case = dataclasses.replace(case, slots=draw(st.integers(*domain.slots)))
    return case


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
