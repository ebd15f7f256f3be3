"""The large profile's size policy (properties/strategies.py): ranges widen to N = 256, D = 128, lower ends and
fixed sizes are kept, and ``max_elements`` bounds N * D for the dense-matrix properties under every profile."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import find, given
from hypothesis import strategies as st

from iqa.suite import CI, DEV, LARGE, PROFILES, THOROUGH
from properties import strategies
from properties.strategies import LARGE_SIZES, Case, size_bounds

BOUNDS = st.tuples(st.integers(1, 12), st.integers(0, 12)).map(lambda t: (t[0], t[0] + t[1]))


def test_large_is_a_profile_of_the_suite() -> None:
    assert LARGE in PROFILES


@given(bounds=BOUNDS, axis=st.sampled_from(sorted(LARGE_SIZES)), profile=st.sampled_from([DEV, CI, THOROUGH]))
def test_other_profiles_keep_the_bounds(bounds: tuple[int, int], axis: str, profile: str) -> None:
    assert size_bounds(bounds, axis, profile=profile) == bounds


@given(bounds=BOUNDS, axis=st.sampled_from(sorted(LARGE_SIZES)))
def test_large_widens_ranges_and_keeps_fixed_sizes(bounds: tuple[int, int], axis: str) -> None:
    low, high = size_bounds(bounds, axis, profile=LARGE)
    assert low == bounds[0]
    assert high == (max(bounds[1], LARGE_SIZES[axis]) if bounds[0] < bounds[1] else bounds[1])


@given(
    bounds=BOUNDS,
    other=st.integers(1, 12),
    cap=st.integers(1, 4096),
    profile=st.sampled_from([DEV, CI, THOROUGH, LARGE]),
)
def test_max_elements_bounds_the_product(bounds: tuple[int, int], other: int, cap: int, profile: str) -> None:
    if bounds[0] * other > cap:
        with pytest.raises(ValueError, match="exceeds max_elements"):
            size_bounds(bounds, "tokens", max_elements=cap, other=other, profile=profile)
        return
    low, high = size_bounds(bounds, "tokens", max_elements=cap, other=other, profile=profile)
    assert low == bounds[0] and low <= high and high * other <= cap
    assert high == min(size_bounds(bounds, "tokens", profile=profile)[1], cap // other)


@contextmanager
def large_sizes() -> Iterator[None]:
    """cases() with the large profile's sizes, whatever profile this run loaded."""
    saved, strategies.SIZE_PROFILE = strategies.SIZE_PROFILE, LARGE
    try:
        yield
    finally:
        strategies.SIZE_PROFILE = saved


@given(data=st.data())
def test_cases_under_large_draw_realistic_sizes_within_the_cap(data: st.DataObject) -> None:
    with large_sizes():
        case: Case = data.draw(strategies.cases(tokens=(2, 6), dim=(1, 4), max_elements=256))
        one_token: Case = data.draw(strategies.cases(tokens=(1, 1)))
        few_tokens: Case = data.draw(strategies.cases(max_tokens=16))
    assert case.tokens >= 2 and case.dim >= 1 and case.tokens * case.dim <= 256
    assert one_token.tokens == 1 and 1 <= one_token.dim <= LARGE_SIZES["dim"]
    assert 1 <= few_tokens.tokens <= 16


def test_cases_under_large_reach_realistic_sizes() -> None:
    """Both axes reach beyond half their large bound (not just the tests' own small bounds)."""
    with large_sizes():
        case = find(
            strategies.cases(), lambda c: 2 * c.tokens > LARGE_SIZES["tokens"] and 2 * c.dim > LARGE_SIZES["dim"]
        )
    assert case.tokens <= LARGE_SIZES["tokens"] and case.dim <= LARGE_SIZES["dim"]
