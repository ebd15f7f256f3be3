"""Bad options get a clear error that names the problem; nothing is coerced, clipped or ignored silently.

The layer's and solve's options (tol, max_iter, damping, solver, stop mode, backward mode, embed_dim, n_iters,
phantom steps, the start y0) are drawn bad one at a time, and each error's type and message are checked. The
boundary values that are valid (damping = 1, max_iter = 1, a tiny tol) must be accepted, so the checks are not
simply stricter than the contract. Bad *inputs* x, per variant, are in properties/variant/test_inputs.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa import ImplicitQueryAttention, fixed_point, solve
from iqa.layer import DEFAULT_TOL

FLOAT_DTYPES = (torch.float64, torch.float32)


def test_x_must_be_a_tensor() -> None:
    layer = ImplicitQueryAttention(3)
    with pytest.raises(TypeError, match=r"torch\.Tensor.*list"):
        layer([[[0.0, 1.0, 2.0]]])


# --- layer options -------------------------------------------------------------------------------------------------

BAD_TOL = st.one_of(st.floats(max_value=0.0), st.sampled_from([math.nan, math.inf, "1e-6", True]))
BAD_MAX_ITER = st.one_of(st.integers(max_value=0), st.sampled_from([2.0, "10", math.nan, True]))
BAD_DAMPING = st.one_of(
    st.floats(max_value=0.0, allow_nan=False),
    st.floats(min_value=1.0, exclude_min=True),
    st.sampled_from([math.nan, "0.5", False]),
)
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12)


def test_layer_tol_none_means_the_default() -> None:
    assert ImplicitQueryAttention(2, tol=None).tol == DEFAULT_TOL


@given(tol=BAD_TOL)
def test_layer_tol_must_be_positive(tol: Any) -> None:
    with pytest.raises(ValueError, match=r"tol must be a finite number > 0"):
        ImplicitQueryAttention(2, tol=tol)


@given(max_iter=BAD_MAX_ITER)
def test_layer_max_iter_must_be_a_positive_integer(max_iter: Any) -> None:
    with pytest.raises(ValueError, match=r"max_iter must be an integer >= 1"):
        ImplicitQueryAttention(2, max_iter=max_iter)


@given(damping=BAD_DAMPING)
def test_layer_damping_in_unit_interval(damping: Any) -> None:
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\]"):
        ImplicitQueryAttention(2, damping=damping)


def test_layer_damping_is_not_dropped_for_anderson() -> None:
    """Anderson has no damping (its relaxation is mixing=): asking for both is an error, not a silent no-op."""
    with pytest.raises(
        ValueError, match=r"damping is an option of Picard .*not of Anderson; Anderson's relaxation is mixing="
    ):
        ImplicitQueryAttention(2, solver="anderson", damping=0.5)


@given(name=NAMES.filter(lambda s: s not in ("picard", "anderson")))
def test_unknown_solver(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown solver '{name}'.*picard, anderson"):
        ImplicitQueryAttention(2, solver=name)


@given(name=NAMES.filter(lambda s: s not in ("abs", "rel")))
def test_unknown_stop_mode(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown stop mode '{name}'"):
        ImplicitQueryAttention(2, stop=name)
    with pytest.raises(ValueError, match=rf"unknown stop mode '{name}'"):
        solve(lambda y: y / 2, torch.ones(1, 2), stop=name)


@given(name=NAMES.filter(lambda s: s not in ("unrolled", "implicit", "phantom")))
def test_unknown_backward_mode(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown backward mode '{name}'.*unrolled, implicit, phantom"):
        ImplicitQueryAttention(2, backward=name)
    with pytest.raises(ValueError, match=rf"unknown backward mode '{name}'"):
        fixed_point(lambda y: y / 2, torch.ones(1, 2), backward=name)


@given(embed_dim=st.one_of(st.integers(max_value=0), st.sampled_from([2.0, "4"])))
def test_embed_dim_must_be_a_positive_integer(embed_dim: Any) -> None:
    with pytest.raises(ValueError, match=r"embed_dim must be an integer >= 1"):
        ImplicitQueryAttention(embed_dim)


@given(n_iters=st.one_of(st.integers(max_value=-1), st.sampled_from([1.0, "3"])))
def test_n_iters_must_be_a_non_negative_integer(n_iters: Any) -> None:
    with pytest.raises(ValueError, match=r"n_iters must be an integer >= 0"):
        ImplicitQueryAttention(2, n_iters=n_iters)


def test_boundary_values_are_accepted() -> None:
    """The edges of the valid ranges are valid: the checks are not stricter than the contract."""
    x = torch.randn(1, 3, 2, dtype=torch.float64)
    layer = ImplicitQueryAttention(2, solver="picard", tol=5e-324, max_iter=1, damping=1.0).double()
    with torch.no_grad():
        assert layer(x).shape == x.shape
    assert ImplicitQueryAttention(2, n_iters=0).double()(x).equal(x)
    assert solve(lambda y: y / 2, x, tol=1e300, max_iter=1, damping=1.0).converged


# --- solve ------------------------------------------------------------------------------------------------------------


@given(name=NAMES.filter(lambda s: s not in ("picard", "anderson")))
def test_solve_unknown_method(name: str) -> None:
    with pytest.raises(ValueError, match=rf"unknown solver '{name}'.*picard, anderson"):
        solve(lambda y: y / 2, torch.ones(1, 2), name)


# each option a case of its own: drawn from six, an option went unchecked in a short run (the mutation profile's
# five examples missed max_iter when solve() stopped checking it)
@pytest.mark.parametrize("option", ["tol", "max_iter", "mixing", "history", "memory", "ridge"])
@given(data=st.data())
def test_solve_options_are_checked(option: str, data) -> None:
    bad, message = {
        "tol": (BAD_TOL, r"tol must be a finite number > 0"),
        "max_iter": (BAD_MAX_ITER, r"max_iter must be an integer >= 1"),
        "mixing": (BAD_DAMPING, r"mixing must be in \(0, 1\]"),
        "history": (BAD_MAX_ITER, r"history must be an integer >= 1"),
        "memory": (BAD_MAX_ITER, r"history must be an integer >= 1"),  # memory= is history's old name
        "ridge": (st.one_of(st.floats(max_value=0.0, exclude_max=True), st.just(math.inf)), r"ridge must be"),
    }[option]
    value = data.draw(bad, label=option)
    with pytest.raises(ValueError, match=message):
        solve(lambda y: y / 2, torch.ones(1, 2), "anderson", **{option: value})


@given(damping=BAD_DAMPING)
def test_solve_picard_damping_is_checked(damping: Any) -> None:
    with pytest.raises(ValueError, match=r"damping must be in \(0, 1\]"):
        solve(lambda y: y / 2, torch.ones(1, 2), "picard", damping=damping)


@given(
    bad=st.sampled_from(["not a tensor", "scalar", "empty batch", "no elements", "integer", "nan", "inf"]),
    dtype=st.sampled_from(FLOAT_DTYPES),
)
def test_solve_start_is_checked(bad: str, dtype: torch.dtype) -> None:
    y0: Any
    error: type[Exception]
    if bad == "not a tensor":
        y0, error, message = [[1.0, 2.0]], TypeError, r"y0 must be a torch\.Tensor"
    elif bad == "scalar":
        y0, error, message = torch.tensor(1.0, dtype=dtype), ValueError, r"non-empty batch dimension 0, got shape \(\)"
    elif bad == "empty batch":
        y0, error, message = torch.ones(0, 2, dtype=dtype), ValueError, r"non-empty batch"
    elif bad == "no elements":
        y0, error, message = torch.ones(2, 0, dtype=dtype), ValueError, r"non-empty batch"
    elif bad == "integer":
        y0, error, message = torch.ones(2, 2, dtype=torch.int64), TypeError, r"y0 must have a floating dtype"
    else:
        y0 = torch.ones(2, 2, dtype=dtype)
        y0[1, 0] = math.nan if bad == "nan" else math.inf
        error, message = ValueError, r"y0 contains 1 non-finite value"
    with pytest.raises(error, match=message):
        solve(lambda y: y / 2, y0)


@given(steps=st.one_of(st.integers(max_value=0), st.just(1.5)))
def test_phantom_steps_must_be_a_positive_integer(steps: Any) -> None:
    with pytest.raises(ValueError, match=r"phantom steps must be an integer >= 1"):
        fixed_point(lambda y: y / 2, torch.ones(1, 2), backward="phantom", phantom_steps=steps)


# --- defaults and the options that switch a layer to solve mode (each pinned where a library mutant survived) ---


def test_a_new_layer_has_no_solutions_yet() -> None:
    layer = ImplicitQueryAttention(3, solver="picard")
    assert layer.last_solution is None and layer.last_backward_solution is None


@pytest.mark.parametrize("option", [dict(tol=1e-9), dict(max_iter=300), dict(damping=0.5), dict(solver="anderson")])
def test_any_solver_option_switches_the_layer_to_solve_mode(option: dict) -> None:
    """tol, max_iter or a solver option alone (no solver=) makes the layer solve with Picard (or the solver named):
    the forward then records its Solution."""
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    layer = ImplicitQueryAttention(4, **option).double()
    layer(x)
    assert layer.last_solution is not None
    assert layer.last_solution.method == option.get("solver", "picard")


def test_a_layer_without_solver_options_stays_in_seed_mode() -> None:
    layer = ImplicitQueryAttention(4).double()
    layer(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    assert layer.solver is None and layer.last_solution is None


def test_the_layer_solves_in_its_stop_mode() -> None:
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for stop in ("abs", "rel"):
        layer = ImplicitQueryAttention(4, tol=1e-9, stop=stop).double()
        layer(x)
        assert layer.last_solution is not None and layer.last_solution.stop == stop


def test_linear_init_defaults_to_torch_s_own_init() -> None:
    """linear_init_ at its default scale is nn.Linear's Kaiming-uniform init (a = sqrt(5)) from the same generator."""
    from torch import nn

    from iqa.layer import linear_init_

    ours = linear_init_(nn.Linear(5, 3, bias=False), generator=torch.Generator().manual_seed(7))
    theirs = nn.Linear(5, 3, bias=False)
    nn.init.kaiming_uniform_(theirs.weight, a=math.sqrt(5), generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours.weight, theirs.weight)


def test_fixed_point_defaults_to_the_implicit_backward() -> None:
    """fixed_point(f, y0) without backward= differentiates implicitly: the same value and the same gradient, bit for
    bit, as backward="implicit", and a different gradient from one phantom step on this slowly contracting map."""
    g = torch.Generator().manual_seed(3)
    A = 0.9 * torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))[0]  # ||A|| = 0.9
    y0 = torch.zeros(2, 4, dtype=torch.float64)
    grads = {}
    for backward in (None, "implicit", "phantom"):
        b = torch.randn(2, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
        kwargs = {} if backward is None else {"backward": backward}
        y = fixed_point(lambda y, b=b: y @ A.T + b, y0, tol=1e-12, max_iter=2000, **kwargs)
        (grads[backward],) = torch.autograd.grad(y.sum(), b)
    assert torch.equal(grads[None], grads["implicit"])
    assert not torch.allclose(grads[None], grads["phantom"])


def test_the_phantom_shorthand_is_one_undamped_step() -> None:
    from iqa import Phantom
    from iqa.grad import as_backward

    assert as_backward("phantom") == Phantom(steps=1, damping=1.0)
    assert ImplicitQueryAttention(3, backward="phantom").backward == Phantom(steps=1, damping=1.0)


def test_adjoint_damping_is_accepted_where_the_adjoint_solver_has_it() -> None:
    from iqa import AdjointOptions

    assert AdjointOptions(method="picard", damping=0.5).damping == 0.5
    with pytest.raises(ValueError, match=r"adjoint damping must be in \(0, 1\]"):
        AdjointOptions(method="picard", damping=1.5)
    with pytest.raises(ValueError, match=r"damping is an option of Picard"):
        AdjointOptions(method="anderson", damping=0.5)
