"""Bad input gets a clear error that names the problem; nothing is coerced, clipped or cast silently.

Each property draws a valid configuration of the variant's layer, breaks one thing
in x, and checks both the exception type and that its message names what is wrong.
Bad options (tol, max_iter, solver, ...) are in properties/tool/test_options.py.

Decision on low precision: float16 and bfloat16 are floating dtypes and are
accepted as they are, when the layer's parameters have the same dtype; x whose
dtype differs from the parameters' (float16 into a float32 layer, float64 into a
float32 one) is a TypeError naming both dtypes: the layer never casts.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa.variants import Variant
from properties.strategies import Case, cases

FLOAT_DTYPES = (torch.float64, torch.float32)


def _layer(variant: Variant, case: Case, device, **options: Any):
    return case.layer(variant, device, **options)


# --- x --------------------------------------------------------------------------------------------------------------


@given(case=cases(), extra=st.sampled_from(["drop batch", "add axis", "flatten"]))
def test_x_must_be_three_dimensional(variant: Variant, case: Case, extra: str, device) -> None:
    layer = _layer(variant, case, device)
    x = case.inputs(device)
    bad = {"drop batch": x[0], "add axis": x[None], "flatten": x.reshape(-1)}[extra]
    with pytest.raises(ValueError, match=r"\[B, N, D\].*" + str(bad.dim()) + " dimensions"):
        layer(bad)


@given(case=cases(), delta=st.integers(1, 3), sign=st.sampled_from([-1, 1]))
def test_last_dimension_must_be_embed_dim(variant: Variant, case: Case, delta: int, sign: int, device) -> None:
    wrong = case.dim + sign * delta
    if wrong < 1:
        wrong = case.dim + delta
    layer = _layer(variant, case, device)
    x = torch.randn(case.batch, case.tokens, wrong, dtype=case.dtype, device=device)
    with pytest.raises(ValueError, match=rf"last dimension {wrong}.*embed_dim is {case.dim}"):
        layer(x)


@given(case=cases(), empty=st.sampled_from(["tokens", "batch"]))
def test_empty_batch_or_no_tokens(variant: Variant, case: Case, empty: str, device) -> None:
    layer = _layer(variant, case, device)
    shape = (case.batch, 0, case.dim) if empty == "tokens" else (0, case.tokens, case.dim)
    x = torch.zeros(shape, dtype=case.dtype, device=device)
    with pytest.raises(ValueError, match=r"N = 0" if empty == "tokens" else r"B = 0"):
        layer(x)


@given(case=cases(), dtype=st.sampled_from([torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]))
def test_non_floating_dtype(variant: Variant, case: Case, dtype: torch.dtype, device) -> None:
    layer = _layer(variant, case, device)
    x = torch.ones(case.shape, dtype=dtype, device=device)
    with pytest.raises(TypeError, match=rf"floating dtype.*{dtype}"):
        layer(x)


@given(case=cases(), value=st.sampled_from([math.nan, math.inf, -math.inf]), data=st.data())
def test_non_finite_x(variant: Variant, case: Case, value: float, data, device) -> None:
    """A single NaN or Inf anywhere in x is refused, and the message counts the bad entries."""
    layer = _layer(variant, case, device)
    x = case.inputs(device)
    flat = x.reshape(-1).clone()
    where = data.draw(st.sets(st.integers(0, flat.numel() - 1), min_size=1, max_size=flat.numel()), label="where")
    flat[sorted(where)] = value
    with pytest.raises(ValueError, match=rf"x contains {len(where)} non-finite value"):
        layer(flat.reshape(x.shape))


@given(
    case=cases(dtypes=FLOAT_DTYPES),
    x_dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
)
def test_dtype_is_never_cast(variant: Variant, case: Case, x_dtype: torch.dtype, device) -> None:
    """x in a dtype other than the layer's is refused with both dtypes named, not cast."""
    layer = _layer(variant, case, device)
    x = case.inputs(device).to(x_dtype)
    if x_dtype == case.dtype:
        assert layer(x).dtype == case.dtype
        return
    with pytest.raises(TypeError, match=rf"x has dtype {x_dtype}.*dtype {case.dtype}"):
        layer(x)


@given(case=cases(batch=(1, 2), tokens=(1, 4), dim=(1, 4), dtypes=(torch.float16, torch.bfloat16)))
def test_low_precision_runs_in_its_own_dtype(variant: Variant, case: Case, device) -> None:
    """float16 / bfloat16 are accepted when the layer has that dtype too; the output keeps it."""
    layer = _layer(variant, case, device, n_iters=3)
    x = case.inputs(device)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == case.dtype
    with torch.no_grad():
        assert y.shape == layer.readout(layer.initial_point(x), x).shape  # the output's own shape (x's by default)


# --- layer options -------------------------------------------------------------------------------------------------
