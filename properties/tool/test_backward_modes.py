"""The backward modes on maps built here, not on a variant: double backward (implicit refuses it, unrolled and
phantom are plain graphs), a non-finite cotangent, a map that ignores y, the adjoint's options (inherited from
the forward, checked when given) and an adjoint that must diverge where rho(J*) > 1.

The per-variant reports of the implicit backward (its kept Solution, warnings, raise_on_failure) are in
properties/variant/test_backward_reports.py. pyproject turns iqa's warnings into errors, so a test without
``pytest.warns`` also proves that no warning was raised.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import (
    AdjointOptions,
    BackwardConvergenceWarning,
    ConvergenceError,
    SolveRecord,
    fixed_point,
)
from iqa.analysis import jacobian, vjp

F64 = torch.float64
EPS = torch.finfo(F64).eps


def linear_map(n: int, rho: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """M [n, n] with spectral radius rho, b [1, n] (requires grad), and the exact fixed point of y M^T + b."""
    generator = torch.Generator().manual_seed(seed)
    M = torch.randn(n, n, dtype=F64, generator=generator)
    M = M * (rho / float(torch.linalg.eigvals(M).abs().max()))
    b = torch.randn(1, n, dtype=F64, generator=generator).requires_grad_(True)
    y_star = torch.linalg.solve(torch.eye(n, dtype=F64) - M, b.detach().T).T
    return M, b, y_star


@given(n=st.integers(2, 5), rho=st.floats(1.1, 3.0), seed=st.integers(0, 2**31 - 1), raise_it=st.booleans())
def test_adjoint_fails_where_rho_exceeds_one(n: int, rho: float, seed: int, raise_it: bool) -> None:
    """f(y) = y M^T + b with rho(M) > 1, started at its exact fixed point: the forward converges at once, but
    the Picard adjoint g <- v + M g cannot converge. It warns (or raises) and its Solution is kept."""
    M, b, y_star = linear_map(n, rho, seed)
    record = SolveRecord()
    adjoint = AdjointOptions(method="picard", max_iter=200, raise_on_failure=raise_it)
    y = fixed_point(lambda y: y @ M.T + b, y_star, "implicit", tol=1e-10, adjoint=adjoint, record=record)
    assert record.forward is not None and record.forward.converged
    v = torch.randn(1, n, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    what = re.escape("adjoint solve g = v + J^T g of the implicit backward")
    if raise_it:
        with pytest.raises(ConvergenceError, match=what) as raised:
            torch.autograd.grad((v * y).sum(), b)
        assert raised.value.solution is record.backward
    else:
        with pytest.warns(BackwardConvergenceWarning, match=what + r".*; the gradient is inexact$"):
            torch.autograd.grad((v * y).sum(), b)
    assert record.backward is not None and not record.backward.converged
    event(f"adjoint {record.backward.status.name}")
    note(f"adjoint status {record.backward.status}, residual {record.backward.residual.tolist()}")


def contraction(n: int, q: float, seed: int) -> tuple[Tensor, torch.Generator]:
    """A = q Q with Q orthogonal, so ||A||_2 = q exactly, and the generator, to draw the rest of the problem."""
    g = torch.Generator().manual_seed(seed)
    return q * torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0], g


def small_map(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    W = (0.3 * torch.randn(3, 3, dtype=F64, generator=generator)).requires_grad_(True)
    x = torch.randn(2, 3, dtype=F64, generator=generator)
    return W, x


def test_double_backward_through_implicit_is_a_clear_error() -> None:
    W, x = small_map(0)
    y = fixed_point(lambda y: torch.tanh(y @ W.T + x), x.clone(), "implicit", tol=1e-12)
    message = (
        "double backward (create_graph=True) through an implicit fixed point is not supported; "
        "use backward='unrolled' or 'phantom' for higher-order gradients"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        torch.autograd.grad(y.sum(), W, create_graph=True)


def test_double_backward_through_unrolled_is_correct() -> None:
    """The unrolled mode is a plain graph: second derivatives pass gradgradcheck (a fixed number of steps)."""
    W, x = small_map(1)

    def output(W: Tensor) -> Tensor:
        return fixed_point(lambda y: torch.tanh(y @ W.T + x), x.clone(), "unrolled", tol=1e-300, max_iter=6)

    assert torch.autograd.gradgradcheck(output, (W,))


def test_double_backward_through_phantom_matches_its_surrogate() -> None:
    """The phantom mode's graph is k damped steps from the detached y*: its second derivative is that of
    <v, z_k(W)> with y* held fixed, built here by hand."""
    W, x = small_map(2)
    v = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    record = SolveRecord()

    def f(y: Tensor) -> Tensor:
        return torch.tanh(y @ W.T + x)

    y = fixed_point(f, x.clone(), "phantom", phantom_steps=3, phantom_damping=0.5, tol=1e-12, record=record)
    (g,) = torch.autograd.grad((v * y).sum(), W, create_graph=True)
    (hvp,) = torch.autograd.grad(g.sum(), W)
    assert record.forward is not None
    z = record.forward.y.detach()
    for _ in range(3):
        z = z + 0.5 * (f(z) - z)
    (g_ref,) = torch.autograd.grad((v * z).sum(), W, create_graph=True)
    (hvp_ref,) = torch.autograd.grad(g_ref.sum(), W)
    assert torch.equal(g, g_ref) and torch.equal(hvp, hvp_ref)


def test_nonfinite_cotangent_is_a_clear_error() -> None:
    W, x = small_map(4)
    y = fixed_point(lambda y: torch.tanh(y @ W.T + x), x.clone(), "implicit", tol=1e-12)
    v = torch.ones_like(y)
    v[0, 0] = math.nan
    message = (
        "the gradient arriving at the implicit fixed point (dL/dy*) contains NaN or Inf; "
        "the adjoint equation g = dL/dy* + J^T g has no finite solution"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        torch.autograd.grad((v * y).sum(), W)


def test_map_that_ignores_y_gets_its_gradient() -> None:
    """J = 0 (f ignores y): g = v and dL/dW = v^T df/dW, not an error and not zero."""
    W, x = small_map(5)
    v = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(6))
    record = SolveRecord()
    y = fixed_point(lambda y: x @ W.T, x.clone(), "implicit", tol=1e-12, record=record)
    (grad,) = torch.autograd.grad((v * y).sum(), W)
    (direct,) = torch.autograd.grad((v * (x @ W.T)).sum(), W)
    assert torch.equal(grad, direct) and float(direct.abs().max()) > 0
    assert record.backward is not None and record.backward.converged


def test_adjoint_inherits_the_forward_options() -> None:
    """Unset adjoint options follow the forward (method, tol, damping); set ones win; the stop is relative."""
    W, x = small_map(7)
    record = SolveRecord()

    def f(y: Tensor) -> Tensor:
        return torch.tanh(y @ W.T + x)

    y = fixed_point(f, x.clone(), "implicit", method="picard", tol=1e-11, damping=0.7, record=record)
    torch.autograd.grad(y.sum(), W)
    assert record.backward is not None
    assert (record.backward.method, record.backward.tol, record.backward.stop) == ("picard", 1e-11, "rel")
    y = fixed_point(f, x.clone(), "implicit", tol=1e-11, adjoint=AdjointOptions(method="anderson", tol=1e-9),
                    record=record)  # fmt: skip
    torch.autograd.grad(y.sum(), W)
    assert (record.backward.method, record.backward.tol) == ("anderson", 1e-9)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(method="newton"), "unknown adjoint method"),
        (dict(tol=0.0), "adjoint tol"),
        (dict(max_iter=0), "adjoint max_iter"),
        (dict(damping=1.5), "adjoint damping"),
        (dict(stop="max"), "unknown adjoint stop"),
    ],
)
def test_bad_adjoint_options_are_clear_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdjointOptions(**options)  # type: ignore[arg-type]


def test_adjoint_must_be_adjoint_options() -> None:
    W, x = small_map(8)
    with pytest.raises(TypeError, match="AdjointOptions"):
        fixed_point(lambda y: torch.tanh(y @ W.T + x), x.clone(), "implicit", adjoint={"tol": 1e-8})  # type: ignore[arg-type]


def test_jacobian_of_the_check_is_independent() -> None:
    """The residual check above uses iqa.analysis.vjp; it agrees with the dense Jacobian (a guard on the guard)."""
    W, x = small_map(9)

    def f(y: Tensor) -> Tensor:
        return torch.tanh(y @ W.detach().T + x)

    y, g = x.clone(), torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(10))
    dense = jacobian(f, y)
    expected = (dense.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1)
    scale = (dense.abs().transpose(1, 2) @ g.abs().unsqueeze(-1)).squeeze(-1)
    n = y.shape[-1]
    # Each side sums n products g_i sech^2_i W_ik (sech^2 = 1 - tanh^2 included): n + 3 roundings, so within
    # (n + 3) eps (|J|^T |g|)_k of the exact J^T g, and 2 (n + 3) eps of each other.
    error = (vjp(f, y, g) - expected).abs()
    assert bool((error <= 2 * (n + 3) * EPS * scale).all()), f"vjp vs dense J^T g: {error.tolist()}"


def test_option_errors_name_the_option_its_owner_and_the_solver() -> None:
    """Damping for an adjoint whose solver has none: it names the owner (Picard) and says the adjoint inherits it,
    with the solver's own relaxation option as the hint. An option no solver has lists the solver's options."""
    from iqa import Anderson, Phantom, Picard
    from iqa.solvers.options import option_error

    message = (
        "damping is an option of Picard ('picard'), not of Anderson (AdjointOptions.damping: the adjoint inherits "
        "the forward's); Anderson's relaxation is mixing="
    )
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        AdjointOptions(damping=0.5).solver(Anderson())
    named = "damping is an option of Picard ('picard'), not of Anderson (the adjoint's method); Anderson's relaxation"
    with pytest.raises(ValueError, match=re.escape(named)):
        AdjointOptions(method="anderson", damping=0.5)
    assert AdjointOptions(damping=0.5).solver(Picard()) == Picard(damping=0.5)
    assert AdjointOptions().solver(Anderson(history=3)) == Anderson(history=3)
    error = option_error("history", Picard)
    assert isinstance(error, ValueError)
    assert str(error) == "history is an option of Anderson ('anderson'), not of Picard"  # no relaxation hint
    unknown = option_error("momentum", Picard, " (here)")
    assert isinstance(unknown, TypeError)
    assert str(unknown) == "unknown option 'momentum' for Picard (here) (its options: damping)"
    for bad in (0.0, 1.5, math.nan):
        with pytest.raises(ValueError, match=re.escape(f"phantom damping must be in (0, 1], got {bad!r}")):
            Phantom(steps=2, damping=bad)


def test_the_adjoint_scale_is_per_batch_element() -> None:
    """With a relative stop the adjoint equation is solved for v / s, s a power of two per batch element: an element
    whose loss weight is 2^-960 next to one of weight 1 gets exactly 2^-960 times the gradient it gets at weight 1
    (one scale for the whole batch would put it at the solver's absolute floors)."""
    A, g = contraction(3, 0.5, 5)
    b = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    y0 = torch.zeros(2, 3, dtype=F64)
    adjoint = AdjointOptions(tol=1e-12, stop="rel")
    grads = []
    for weights in ((1.0, 1.0), (1.0, 2.0**-960)):
        y = fixed_point(lambda y: y @ A.T + b, y0, "implicit", adjoint=adjoint, tol=1e-13, max_iter=500)
        loss = (torch.tensor(weights, dtype=F64)[:, None] * y).sum()
        (grad,) = torch.autograd.grad(loss, b)
        grads.append(grad)
    assert torch.equal(grads[1][0], grads[0][0])
    assert torch.equal(grads[1][1], grads[0][1] * 2.0**-960)


def test_an_unconverged_adjoint_warns_and_returns_its_best_gradient_by_default() -> None:
    """Without raise_on_failure the implicit backward whose adjoint solve runs out of steps warns
    (BackwardConvergenceWarning) and still returns a finite gradient; it raises only when asked."""
    A, g = contraction(3, 0.95, 6)
    b = torch.randn(1, 3, generator=g, dtype=F64, requires_grad=True)
    y0 = torch.zeros(1, 3, dtype=F64)
    short = AdjointOptions(tol=1e-14, max_iter=2)
    y = fixed_point(lambda y: y @ A.T + b, y0, "implicit", adjoint=short, tol=1e-12, max_iter=2000)
    with pytest.warns(BackwardConvergenceWarning, match="adjoint solve"):
        (grad,) = torch.autograd.grad(y.sum(), b)
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("stop", ["abs", "rel"])
def test_the_adjoint_solves_in_either_stop_mode(stop: str) -> None:
    """The implicit gradient of y -> A y + b is (I - A)^-T 1 per element, in either stop mode of the adjoint (the
    relative one rescales v, the absolute one must not), to the adjoint's tol over 1 - ||A||."""
    A, g = contraction(3, 0.5, 8)
    b = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    y = fixed_point(lambda y: y @ A.T + b, torch.zeros(2, 3, dtype=F64), "implicit",
                    adjoint=AdjointOptions(tol=1e-12, stop=stop), tol=1e-13, max_iter=500)  # fmt: skip
    (grad,) = torch.autograd.grad(y.sum(), b)
    exact = torch.linalg.solve(torch.eye(3, dtype=F64) - A.T, torch.ones(3, dtype=F64))
    # the adjoint stops within tol (relative to ||g|| ~ 2 in rel mode); the error is at most that over 1 - 0.5
    assert bool(((grad - exact).norm(dim=-1) <= 2 * 1e-12 * 2 / 0.5).all()), (grad, exact)
