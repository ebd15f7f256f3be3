"""The implicit backward reports like the forward: status over silence.

Its adjoint solve g = v + J^T g is checked (||(I - J^T) g - v|| against an
independent vector-Jacobian product), kept (``layer.last_backward_solution``),
warns when it fails (``BackwardConvergenceWarning``) and raises under
``raise_on_failure``; a gradient taken after a forward that did not converge
warns (``NonConvergedForwardWarning``). Failures are provoked by cutting the
adjoint to one step. Double backward and maps built without a variant are in
properties/tool/test_backward_modes.py. The losses here are on the fixed-point state
(``layer.solve_state``, whatever its shape), which is what the hook differentiates; a
readout's part of the gradient is test_gradients' business.

pyproject turns iqa's warnings into errors, so a test without ``pytest.warns``
also proves that no warning was raised.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import (
    AdjointOptions,
    BackwardConvergenceWarning,
    ConvergenceError,
    Implicit,
    NonConvergedForwardWarning,
    Phantom,
    Status,
)
from iqa.analysis import spectral_radius, vjp
from iqa.layer import FixedPointLayer
from iqa.rejections import reject
from iqa.variants import Variant
from properties.fixed_points import cotangent, stable_fixed_point
from properties.regimes import require
from properties.strategies import CONTRACTIVE_SCALES, Case, cases

F64 = torch.float64
EPS = torch.finfo(F64).eps
TOL = 1e-12
MAX_ITER = 500

#: Under the large profile N * D <= 2048: every example solves forward and adjoint to 1e-12 in float64 (up to
#: 500 steps) and takes rho(J*) by Arnoldi above n = 256; uncapped (n up to 32768) one property took 80-150 s
#: for its 3 examples on a loaded 2-core machine.
REPORT_ELEMENTS = 2048
report_cases = cases(
    batch=(1, 3), tokens=(2, 5), dim=(1, 5), dtypes=(F64,), scales=CONTRACTIVE_SCALES, max_elements=REPORT_ELEMENTS
)


def backward_of(layer: FixedPointLayer, x: Tensor, v: Tensor, with_x: bool = False) -> list[Tensor]:
    """Run L = <v, y*> backward, y* = layer.solve_state(x) (the state the hook differentiates, before any
    readout); return the parameter gradients (and dL/dx last, ``with_x``)."""
    params = list(layer.parameters())
    x_leaf = x.detach().clone().requires_grad_(True)
    y = layer.solve_state(x_leaf)
    assert isinstance(y, Tensor)
    return list(torch.autograd.grad((v * y).sum(), params + [x_leaf] * with_x, materialize_grads=True))


def pullback(layer: FixedPointLayer, x: Tensor, y: Tensor, g: Tensor) -> list[Tensor]:
    """g^T df/d(theta, x) at y: one plain vector-Jacobian product through f(y; x), y held fixed (no iqa.grad)."""
    params = list(layer.parameters())
    x_leaf = x.detach().clone().requires_grad_(True)
    fy = layer.fixed_point_map(x_leaf)(y.detach())
    return list(torch.autograd.grad(fy, [*params, x_leaf], g, materialize_grads=True))


def converged_layer(case: Case, variant: Variant, device: torch.device, **options: object) -> FixedPointLayer:
    """The case's layer in implicit mode (tol TOL, MAX_ITER steps, then ``options``) after a forward that reached
    a locally stable fixed point (:func:`properties.fixed_points.stable_fixed_point`); without adjoint ``options``,
    its adjoint budget sized from rho(J*) (:func:`sized_adjoint`)."""
    defaults: dict[str, object] = {"backward": "implicit", "tol": TOL, "max_iter": MAX_ITER}
    layer, x = stable_fixed_point(case, variant, device, **{**defaults, **options})
    if "adjoint" not in options:  # a caller that sets the adjoint's options (cut short on purpose) keeps them
        sized_adjoint(layer, x)
    return layer


#: The most adjoint steps a draw may need (ADJOINT_MARGIN log(TOL) / log rho <= this: rho <= ~0.99).
ADJOINT_CAP = 6000
#: The adjoint iteration contracts at rho(J*) per step (Picard; Anderson at least as fast), from a relative residual
#: ~1 at g0 = v: log(TOL) / log(rho) steps, doubled for the transient of a non-normal J (||J^k|| / rho^k up to TOL^-1).
ADJOINT_MARGIN = 2


def sized_adjoint(layer: FixedPointLayer, x: Tensor) -> None:
    """Give the layer's adjoint solve at least ADJOINT_MARGIN log(TOL) / log(rho(J*)) steps (MAX_ITER at least),
    so that a slow but converging adjoint (rho(J*) ~ 0.95 needs ~540 steps to TOL) is not failed for its budget;
    reject the draw (reason recorded) where that exceeds ADJOINT_CAP."""
    forward = layer.last_solution
    assert forward is not None and isinstance(layer.backward, Implicit)
    with torch.no_grad():
        rho = float(spectral_radius(layer.fixed_point_map(x.detach()), forward.y).max())
    steps = math.ceil(ADJOINT_MARGIN * math.log(TOL) / math.log(rho)) if rho > 0 else 1
    event(f"adjoint budget above MAX_ITER: {steps > MAX_ITER}")
    if steps > ADJOINT_CAP:
        reject(f"adjoint budget {ADJOINT_MARGIN} log(tol) / log rho(J*) <= {ADJOINT_CAP} steps", rho=rho)
    options = dataclasses.replace(layer.backward.options, max_iter=max(MAX_ITER, steps))
    layer.backward = dataclasses.replace(layer.backward, adjoint=options)


@given(case=report_cases, solver=st.sampled_from(["picard", "anderson"]))
def test_adjoint_solution_is_kept_and_its_residual_holds(variant: Variant, case: Case, solver: str, device) -> None:
    """After backward, last_backward_solution is CONVERGED, and the returned g satisfies
    ||g - v - J^T g|| <= tol ||v + J^T g|| per batch element, recomputed here with an independent vjp."""
    layer = converged_layer(case, variant, device, solver=solver)
    x, v = case.inputs(device), cotangent(case, device, layer=layer, of="state")
    returned = torch.cat([t.flatten() for t in backward_of(layer, x, v, with_x=True)])
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
    # Rounding of v + J^T g: n eps (||v|| + ||J^T g||), n = the state's size (N D, or K D_y) terms per row product.
    n = g[0].numel()
    rounding = n * EPS * (torch.linalg.vector_norm(v, dim=dims) + torch.linalg.vector_norm(jtg, dim=dims))
    note(f"relative residuals {(residual / image).tolist()}, reported {adjoint.residual.tolist()}")
    assert bool((residual <= adjoint.tol * image + rounding).all())
    # The reported residual is the one of the returned g (same quantity, same point).
    assert torch.allclose(adjoint.residual, (residual / image).cpu(), rtol=0, atol=float((rounding / image).max())), (
        f"reported adjoint residual {adjoint.residual.tolist()} is not that of the recorded g"
    )
    # The gradient the hook returned is the recorded g pulled back through f at y*: both are the same vector-Jacobian
    # product g^T df/dtheta at the same y*, over the same operations, so they agree to its rounding, (n + 2) eps
    # relative (measured: bit for bit); a hook that returned v, or any vector but the recorded g, is O(1) off.
    rebuilt = torch.cat([t.flatten() for t in pullback(layer, x, forward.y, g)])
    gap = float((returned - rebuilt).norm())
    allowed = (n + 2) * EPS * float(rebuilt.norm())
    note(f"||returned - pullback(adjoint.y)|| = {gap:.3e}, allowed {allowed:.3e}")
    event("returned gradient == pullback of adjoint.y bit for bit" if gap == 0 else "returned within rounding")
    assert gap <= allowed, (
        f"the gradient the hook returned is not the pullback of the recorded adjoint: off by {gap:.3e} > {allowed:.3e}"
    )


@given(case=report_cases)
def test_adjoint_cut_short_warns_and_keeps_its_solution(variant: Variant, case: Case, device) -> None:
    """An adjoint allowed one step fails where J^T v is not negligible: it warns, keeps its MAX_ITER Solution,
    and the gradient is the finite, nonzero one-step iterate, not silently zero. Nonzero over (weights, x): at a
    consensus fixed point (reference, scaled) the weight part is exactly 0 whatever g is (docs/theory.md#consensus)."""
    layer = converged_layer(case, variant, device, adjoint=AdjointOptions(max_iter=1))
    x, v = case.inputs(device), cotangent(case, device, layer=layer, of="state")
    forward = layer.last_solution
    assert forward is not None
    with torch.no_grad():
        jtv = vjp(layer.fixed_point_map(x), forward.y, v)
    relative = torch.linalg.vector_norm(jtv.flatten(1), dim=1) / torch.linalg.vector_norm((v + jtv).flatten(1), dim=1)
    # One step from g0 = v leaves the relative residual ||J^T v|| / ||v + J^T v||: above tol, the solve must fail.
    require(bool((relative > TOL).any()), "||J^T v|| above tol relative (one adjoint step cannot converge)")
    x_leaf = x.clone().requires_grad_(True)
    y = layer.solve_state(x_leaf)
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
    x, v = case.inputs(device), cotangent(case, device, layer=layer, of="state")
    forward = layer.last_solution
    assert forward is not None
    with torch.no_grad():
        jtv = vjp(layer.fixed_point_map(x), forward.y, v)
    above = torch.linalg.vector_norm(jtv.flatten(1), dim=1) > TOL * (v + jtv).flatten(1).norm(dim=1)
    require(bool(above.any()), "||J^T v|| above tol relative (one adjoint step cannot converge)")
    with pytest.raises(ConvergenceError, match="adjoint solve") as raised:
        backward_of(layer, x, v)
    assert raised.value.solution is layer.last_backward_solution
    assert raised.value.solution.status is Status.MAX_ITER


@given(case=report_cases, backward=st.sampled_from(["implicit", "phantom"]))
def test_gradient_after_nonconverged_forward_warns(variant: Variant, case: Case, backward: str, device) -> None:
    """A forward cut to one step is not at a fixed point: its implicit or phantom gradient warns. The implicit
    adjoint at that point may fail too (rho(J) >= 1 there): then it warns as well, and only then."""
    mode = Implicit(adjoint=AdjointOptions(max_iter=500)) if backward == "implicit" else Phantom()
    layer = case.layer(variant, device, backward=mode, tol=TOL, max_iter=1)
    x, v = case.inputs(device), cotangent(case, device, layer=layer, of="state")
    with torch.no_grad():
        layer(x)
    forward = layer.last_solution
    assert forward is not None
    require(not forward.converged, "a forward not converged after one step")
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
    backward_of(layer, case.inputs(device), cotangent(case, device, layer=layer, of="state"))
