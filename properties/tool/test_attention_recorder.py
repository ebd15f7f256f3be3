"""``attention_weights`` and ``saturation_gap`` on maps whose softmaxes are known: every spelling of softmax (the
function, the method, ``dim`` by keyword or by position, any axis), several softmaxes in one map, none at all, and
one without ``dim``. The references are the softmaxes computed here."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis

F64 = torch.float64


@given(
    batch=st.integers(1, 3),
    rows=st.integers(1, 4),
    cols=st.integers(1, 5),
    temperature=st.sampled_from([0.0, 1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([F64, torch.float32]),
)
def test_weights_and_gap_are_the_softmaxes_of_the_map(batch, rows, cols, temperature, seed, dtype) -> None:
    """Two softmaxes over different axes (one by keyword, one by position, as a method): both recorded in call
    order with their axis last; the gap is max over both and every row of 1 - max_j p_ij, float64 [B]."""
    g = torch.Generator().manual_seed(seed)
    S1 = (temperature * torch.randn(batch, rows, cols, generator=g, dtype=F64)).to(dtype)
    S2 = (temperature * torch.randn(batch, cols, rows, generator=g, dtype=F64)).to(dtype)

    def f(y: Tensor) -> Tensor:
        first = F.softmax(S1 + 0 * y.sum(), dim=-1)
        second = (S2 + 0 * y.sum()).softmax(1)  # over rows: the middle axis, given by position
        return y + first.sum() + second.sum()

    y = torch.zeros(batch, 2, 2, dtype=dtype)
    weights = analysis.attention_weights(f, y)
    expected = [torch.softmax(S1, -1), torch.softmax(S2, 1).movedim(1, -1)]
    assert len(weights) == 2
    for w, e in zip(weights, expected):
        assert w.shape == e.shape and torch.equal(w, e)
    gap = analysis.saturation_gap(f, y)
    per_map = [(1 - e.to(F64).amax(-1)).reshape(batch, -1).amax(-1) for e in expected]
    reference = torch.maximum(*per_map)
    assert gap.dtype == F64 and gap.shape == (batch,)
    # 1 - max p in the weights' dtype rounds once: within its eps of the float64 difference
    assert bool(((gap - reference).abs() <= torch.finfo(dtype).eps).all()), (gap, reference)


def test_a_map_without_softmax_has_no_gap_and_one_without_dim_is_refused() -> None:
    y = torch.zeros(3, 2, 2, dtype=F64)
    gap = analysis.saturation_gap(lambda t: 2 * t, y)
    assert gap.dtype == F64 and gap.shape == (3,) and bool(gap.isnan().all())
    assert analysis.attention_weights(lambda t: 2 * t, y) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own: an implicit softmax dim is deprecated
        with pytest.raises(ValueError, match="softmax without an explicit dim: cannot tell which axis holds the"):
            analysis.attention_weights(lambda t: F.softmax(t), y)  # type: ignore[call-arg]
    # a function named otherwise is not recorded, even if it normalizes
    assert analysis.attention_weights(lambda t: F.log_softmax(t, dim=-1), y) == []
