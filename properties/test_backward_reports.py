"""The implicit backward reports like the forward: status over silence.

Its adjoint solve g = v + J^T g is checked (||(I - J^T) g - v|| against an
independent vector-Jacobian product), kept (``layer.last_backward_solution``),
warns when it fails (``BackwardConvergenceWarning``) and raises under
``raise_on_failure``; a gradient taken after a forward that did not converge
warns (``NonConvergedForwardWarning``); double backward through the implicit
mode is a clear error. Failures are provoked: an adjoint cut to one step, and a
map with rho(J*) > 1 where the Picard adjoint iteration must diverge.

pyproject turns iqa's warnings into errors, so a test without ``pytest.warns``
also proves that no warning was raised.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import assume, event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import (
    AdjointOptions,
    BackwardConvergenceWarning,
    ConvergenceError,
    NonConvergedForwardWarning,
    SolveRecord,
    Status,
    fixed_point,
)
from iqa.analysis import jacobian, vjp
from iqa.layer import FixedPointLayer
from iqa.variants import Variant
from properties.fixed_points import cotangent, stable_fixed_point
from properties.strategies import CONTRACTIVE_SCALES, Case, cases

F64 = torch.float64
EPS = torch.finfo(F64).eps
TOL = 1e-12
MAX_ITER = 500

report_cases = cases(batch=(1, 3), tokens=(2, 5), dim=(1, 5), dtypes=(F64,), scales=CONTRACTIVE_SCALES)


def backward_of(layer: FixedPointLayer, x: Tensor, v: Tensor) -> list[Tensor]:
    """Run L = <v, layer(x)> backward; return the parameter gradients."""
    params = list(layer.parameters())
    y = layer(x)
    assert isinstance(y, Tensor)
    return list(torch.autograd.grad((v * y).sum(), params, materialize_grads=True))


def converged_layer(case: Case, variant: Variant, device: torch.device, **options: object) -> FixedPointLayer:
    """The case's layer in implicit mode (tol TOL, MAX_ITER steps, then ``options``) after a forward that reached
    a locally stable fixed point (:func:`properties.fixed_points.stable_fixed_point`)."""
    defaults: dict[str, object] = {"backward": "implicit", "tol": TOL, "max_iter": MAX_ITER}
    layer, _ = stable_fixed_point(case, variant, device, **{**defaults, **options})
    return layer


@given(case=report_cases, solver=st.sampled_from(["picard", "anderson"]))
def test_adjoint_solution_is_kept_and_its_residual_holds(variant: Variant, case: Case, solver: str, device) -> None:
    """After backward, last_backward_solution is CONVERGED, and the returned g satisfies
    ||g - v - J^T g|| <= tol ||v + J^T g|| per batch element, recomputed here with an independent vjp."""
    layer = converged_layer(case, variant, device, solver=solver)
    x, v = case.inputs(device), cotangent(case, device)
    backward_of(layer, x, v)
    adjoint, forward = layer.last_backward_solution, layer.last_solution
    assert adjoint is not None and forward is not None
    assert adjoint.converged and adjoint.stop == "rel" and adjoint.method == solver
    g = adjoint.y
    with torch.no_grad():
        f = layer.fixed_point_map(x)
    jtg = vjp(f, forward.y, g)
    dims = tuple(range(1, g.dim()))
    residual = torch.linalg.vector_norm(g - v - jtg, dim=dims)
    image = torch.linalg.vector_norm(v + jtg, dim=dims)
    # Rounding of v + J^T g: n eps (||v|| + ||J^T g||), n = N D terms per row product.
    n = case.tokens * case.dim
    rounding = n * EPS * (torch.linalg.vector_norm(v, dim=dims) + torch.linalg.vector_norm(jtg, dim=dims))
    note(f"relative residuals {(residual / image).tolist()}, reported {adjoint.residual.tolist()}")
    assert bool((residual <= adjoint.tol * image + rounding).all())
    # The reported residual is the one of the returned g (same quantity, same point).
    assert torch.allclose(adjoint.residual, (residual / image).cpu(), rtol=0, atol=float((rounding / image).max()))


@given(case=report_cases)
def test_adjoint_cut_short_warns_and_keeps_its_solution(variant: Variant, case: Case, device) -> None:
    """An adjoint allowed one step fails where J^T v is not negligible: it warns, keeps its MAX_ITER Solution,
    and the gradient is the finite, nonzero one-step iterate, not silently zero. Nonzero over (weights, x): at a
    consensus fixed point (reference, scaled) the weight part is exactly 0 whatever g is (THEORY.md)."""
    layer = converged_layer(case, variant, device, adjoint=AdjointOptions(max_iter=1))
    x, v = case.inputs(device), cotangent(case, device)
    forward = layer.last_solution
    assert forward is not None
    with torch.no_grad():
        jtv = vjp(layer.fixed_point_map(x), forward.y, v)
    relative = torch.linalg.vector_norm(jtv.flatten(1), dim=1) / torch.linalg.vector_norm((v + jtv).flatten(1), dim=1)
    # One step from g0 = v leaves the relative residual ||J^T v|| / ||v + J^T v||: above tol, the solve must fail.
    assume(bool((relative > TOL).any()))
    x_leaf = x.clone().requires_grad_(True)
    y = layer(x_leaf)
    assert isinstance(y, Tensor)
    with pytest.warns(BackwardConvergenceWarning, match="adjoint solve"):
        grads = torch.autograd.grad((v * y).sum(), [*layer.parameters(), x_leaf], materialize_grads=True)
    adjoint = layer.last_backward_solution
    assert adjoint is not None
    assert adjoint.status is Status.MAX_ITER and adjoint.n_steps == 1
    flat = torch.cat([g.flatten() for g in grads])
    assert bool(torch.isfinite(flat).all()) and float(flat.abs().max()) > 0


@given(case=report_cases, where=st.sampled_from(["adjoint options", "layer"]))
def test_adjoint_failure_raises_under_raise_on_failure(variant: Variant, case: Case, where: str, device) -> None:
    """raise_on_failure (on the AdjointOptions, or on the layer, which the adjoint inherits) turns the failed
    adjoint into a ConvergenceError that carries the Solution the layer also keeps."""
    if where == "layer":
        options: dict[str, object] = dict(raise_on_failure=True, adjoint=AdjointOptions(max_iter=1))
    else:
        options = dict(adjoint=AdjointOptions(max_iter=1, raise_on_failure=True))
    layer = converged_layer(case, variant, device, **options)
    x, v = case.inputs(device), cotangent(case, device)
    forward = layer.last_solution
    assert forward is not None
    with torch.no_grad():
        jtv = vjp(layer.fixed_point_map(x), forward.y, v)
    assume(bool((torch.linalg.vector_norm(jtv.flatten(1), dim=1) > TOL * (v + jtv).flatten(1).norm(dim=1)).any()))
    with pytest.raises(ConvergenceError, match="adjoint solve") as raised:
        backward_of(layer, x, v)
    assert raised.value.solution is layer.last_backward_solution
    assert raised.value.solution.status is Status.MAX_ITER


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
    if raise_it:
        with pytest.raises(ConvergenceError) as raised:
            torch.autograd.grad((v * y).sum(), b)
        assert raised.value.solution is record.backward
    else:
        with pytest.warns(BackwardConvergenceWarning):
            torch.autograd.grad((v * y).sum(), b)
    assert record.backward is not None and not record.backward.converged
    event(f"adjoint {record.backward.status.name}")
    note(f"adjoint status {record.backward.status}, residual {record.backward.residual.tolist()}")


@given(case=report_cases, backward=st.sampled_from(["implicit", "phantom"]))
def test_gradient_after_nonconverged_forward_warns(variant: Variant, case: Case, backward: str, device) -> None:
    """A forward cut to one step is not at a fixed point: its implicit or phantom gradient warns. The implicit
    adjoint at that point may fail too (rho(J) >= 1 there): then it warns as well, and only then."""
    layer = case.layer(variant, device, backward=backward, tol=TOL, max_iter=1, adjoint=AdjointOptions(max_iter=500))
    x, v = case.inputs(device), cotangent(case, device)
    with torch.no_grad():
        layer(x)
    forward = layer.last_solution
    assert forward is not None
    assume(not forward.converged)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backward_of(layer, x, v)
    messages = [str(w.message) for w in caught if issubclass(w.category, NonConvergedForwardWarning)]
    assert any("not a fixed point" in m for m in messages), f"no NonConvergedForwardWarning: {caught}"
    adjoint = layer.last_backward_solution
    adjoint_failed = backward == "implicit" and adjoint is not None and not adjoint.converged
    event(f"{backward}: adjoint failed at the non-fixed point: {adjoint_failed}")
    warned = any(issubclass(w.category, BackwardConvergenceWarning) for w in caught)
    assert warned == adjoint_failed, f"adjoint converged: {not adjoint_failed}, BackwardConvergenceWarning: {warned}"


@given(case=report_cases)
def test_unrolled_gradient_of_a_nonconverged_forward_is_silent(variant: Variant, case: Case, device) -> None:
    """The unrolled gradient is the exact gradient of the steps taken: no warning (warnings are errors here).
    Two steps: the solver returns the last iterate whose residual it measured, y_1 = f(y_0)."""
    layer = case.layer(variant, device, backward="unrolled", tol=TOL, max_iter=2)
    backward_of(layer, case.inputs(device), cotangent(case, device))


def small_map(seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    W = (0.3 * torch.randn(3, 3, dtype=F64, generator=generator)).requires_grad_(True)
    x = torch.randn(2, 3, dtype=F64, generator=generator)
    return W, x


def test_double_backward_through_implicit_is_a_clear_error() -> None:
    W, x = small_map(0)
    y = fixed_point(lambda y: torch.tanh(y @ W.T + x), x.clone(), "implicit", tol=1e-12)
    with pytest.raises(RuntimeError, match="double backward"):
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
    with pytest.raises(ValueError, match="NaN or Inf"):
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
