"""The float64 reference for the gradient properties, and the tolerances they compare against it.

For a layer at a fixed point y* = f(y*; theta, x), J = df/dy at y*, and a loss L = <v, y*>
(docs/theory.md#implicit-differentiation):

    g = v + J^T g,   dL/d(theta, x) = g^T df/d(theta, x).

A layer with a readout (output o = r(y*, x), L = <w, o>) has v = (dr/dy)^T w and adds w^T dr/d(theta, x)
(:func:`readout_pullback`).

:func:`analyse` computes that gradient without the backward under test: J is the dense per-element
Jacobian at the given y (:func:`iqa.analysis.jacobian`, forward-mode products through f), g comes from a
dense linear solve of (I - J^T) g = v (:func:`torch.linalg.solve`, no iteration, no stopping rule), and
g^T df/d(theta, x) from one plain vector-Jacobian product through f(y; x) with y held fixed
(:func:`pullback`). Nothing here goes through :func:`iqa.fixed_point` or its hook (iqa.grad): an error in
the implicit, phantom or unrolled backward, or in the adjoint solver, cannot reach the reference it is
compared with. :func:`layer_grads` is the one helper that runs the layer's own backward: it measures the
gradient under test. The same analysis gives the facts the tolerances are derived from: rho(J*),
cond = ||(I - J*)^-1||_2, the forward residual, ||df/dtheta||_2 and ||df/dx||_2.

The tolerances: :func:`adjoint_budget` bounds the relative error of a gradient whose adjoint stopped at a
relative residual tol (cond tol (1 + ||J||) + n eps cond (1 + 2 spread^2)); :func:`rel_err` and :func:`assert_close`
compare against the reference above a norm floor (:func:`floor_of`: :data:`FLOOR_REL` ||v|| max|x|), and a
reference below the floor fails the comparison instead of passing it (non-vacuity).
properties/meta/test_gradient_reference.py checks these helpers themselves, among others on a linear map
whose fixed point and gradient have a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from hypothesis import note
from torch import Tensor

from iqa.analysis import jacobian, spectral_radius
from iqa.layer import FixedPointLayer
from properties.fixed_points import fixed_map
from properties.jacobian_rows import jacobian_rows

F64 = torch.float64

#: Forward (absolute) and adjoint (relative) tolerances of the float64 solves: ~500 eps, reachable for ||y*|| <= 10.
TOL64 = 1e-13
#: Enough Picard steps for TOL64 at rho(J*) = 0.97 (the hard band): log(1e-13) / log(0.97) ~ 1000, plus a transient.
MAX_ITER = 3000
#: A reference gradient below sqrt(eps) ||v|| max|x| is indistinguishable from a weight-independent fixed point
#: solved to TOL64 (docs/theory.md#consensus: the consensus layer's weight gradients are ~1e-14 of that scale), so it
#: fails.
FLOOR_REL = math.sqrt(torch.finfo(F64).eps)


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def solve_options(solver: str = "anderson", tol: float = TOL64, **extra: object) -> dict[str, object]:
    return dict(solver=solver, tol=tol, max_iter=MAX_ITER, **extra)


@dataclass
class Grads:
    """dL/dtheta (all parameters, flattened in module order) and dL/dx for L = <v, layer(x)>."""

    weights: Tensor
    x: Tensor

    @property
    def all(self) -> Tensor:
        return torch.cat([self.weights, self.x.flatten()])


def layer_grads(layer: FixedPointLayer, x: Tensor, v: Tensor) -> Grads:
    x_leaf = x.detach().clone().requires_grad_(True)
    params = list(layer.parameters())
    y = layer(x_leaf)
    assert isinstance(y, Tensor)
    assert y.shape == v.shape, f"the cotangent has shape {tuple(v.shape)}, the layer's output {tuple(y.shape)}"
    grads = torch.autograd.grad((v * y).sum(), [*params, x_leaf], materialize_grads=True)
    return Grads(torch.cat([g.flatten() for g in grads[:-1]]), grads[-1])


@dataclass
class Analysis:
    """The float64 facts at the layer's fixed point y*: dense J, rho, cond, residual, reference gradient."""

    y: Tensor
    J: Tensor  # [B, n, n]
    rho: Tensor  # [B]
    cond: Tensor  # [B], ||(I - J)^-1||_2
    residual: Tensor  # [B], ||f(y*) - y*|| (absolute)
    g: Tensor  # the exact adjoint (I - J^T)^-1 v, by a dense solve
    reference: Grads  # g^T df/d(theta, x) at y*
    dtheta: Tensor  # df/dtheta at y*, dense [B n, p]
    dx: Tensor  # df/dx at y*, dense [B n, x.numel()] (x through the keys and values, y held fixed)
    spread: Tensor | None = None  # [B], max_i ||x_i|| / max_ij ||x_i - x_j|| (token_spread); None reads as 0

    @property
    def dx_norm(self) -> float:
        return float(torch.linalg.matrix_norm(self.dx, ord=2))

    @property
    def n(self) -> int:
        return self.J.shape[-1]

    @property
    def worst_cond(self) -> float:
        return float(self.cond.max())

    @property
    def scale_weights(self) -> float:
        """||df/dtheta||_2 ||g||: what a relative error of g costs dL/dtheta (g^T df/dtheta can cancel far below)."""
        return float(torch.linalg.matrix_norm(self.dtheta, ord=2)) * float(self.g.norm())

    @property
    def scale_x(self) -> float:
        """||df/dx||_2 ||g||: the same for dL/dx."""
        return self.dx_norm * float(self.g.norm())

    @property
    def scale_all(self) -> float:
        return math.hypot(self.scale_weights, self.scale_x)

    def describe(self) -> str:
        return (
            f"rho {[round(float(r), 4) for r in self.rho]}, cond {[round(float(c), 3) for c in self.cond]}, "
            f"forward residual {[f'{float(r):.1e}' for r in self.residual]}"
        )


def pullback(layer: FixedPointLayer, x: Tensor, y: Tensor, g: Tensor) -> Grads:
    """g^T df/d(theta, x) at y: one plain vector-Jacobian product through f(y; x), y held fixed."""
    x_leaf = x.detach().clone().requires_grad_(True)
    params = list(layer.parameters())
    fy = layer.fixed_point_map(x_leaf)(y.detach())
    grads = torch.autograd.grad(fy, [*params, x_leaf], g, materialize_grads=True)
    return Grads(torch.cat([t.flatten() for t in grads[:-1]]), grads[-1])


def readout_pullback(layer: FixedPointLayer, x: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Grads]:
    """For the output g(y, x) (the layer's readout) and its cotangent v: ((dg/dy)^T v, v^T dg/d(theta, x)) at
    y, by one plain vector-Jacobian product. The identity readout gives (v, 0) exactly."""
    x_leaf = x.detach().clone().requires_grad_(True)
    y_leaf = y.detach().clone().requires_grad_(True)
    params = list(layer.parameters())
    out = layer.readout(y_leaf, x_leaf)
    assert out.shape == v.shape, f"the cotangent has shape {tuple(v.shape)}, the output {tuple(out.shape)}"
    grads = torch.autograd.grad(out, [y_leaf, *params, x_leaf], v, materialize_grads=True)
    return grads[0], Grads(torch.cat([t.flatten() for t in grads[1:-1]]), grads[-1])


def analyse(layer: FixedPointLayer, x: Tensor, y: Tensor, v: Tensor) -> Analysis:
    """Dense float64 analysis at y (the layer's own fixed point state), independent of iqa.grad; v is the
    cotangent of the layer's output g(y*, x), pulled back through the readout first (``readout_pullback``)."""
    f = fixed_map(layer, x)
    y = y.detach()
    J = jacobian(f, y)
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    rho = spectral_radius(f, y)
    cond = 1 / torch.linalg.svdvals(eye - J)[..., -1]
    with torch.no_grad():
        residual = torch.linalg.vector_norm((f(y) - y).flatten(1), dim=1)
    v_state, direct = readout_pullback(layer, x, y, v)
    g = torch.linalg.solve(eye - J.transpose(1, 2), v_state.flatten(1).unsqueeze(-1)).reshape(y.shape)
    dtheta, dx = map_jacobians(layer, x, y)
    through_f = pullback(layer, x, y, g)
    reference = Grads(through_f.weights + direct.weights, through_f.x + direct.x)
    return Analysis(y, J, rho, cond, residual, g, reference, dtheta, dx, token_spread(x))


def token_spread(x: Tensor) -> Tensor:
    """[B]: max_i ||x_i|| / max_ij ||x_i - x_j|| over the tokens of each element (0 where they all coincide).

    Derivatives of attention in its weights difference the tokens twice: a softmax row's derivative sums to
    zero, so sum_j dp_ij x_j = sum_j dp_ij (x_j - mean), and each score's derivative varies over j only through
    x_j (or its key). They are ~diam^2 while their terms, and their rounding, are ~max||x||^2: float64 resolves
    them to eps spread^2 of their size (two tokens 1.4e-3 apart at |x| = 1.3 gave 2.8e-9 relative)."""
    tokens = x.detach().to(F64).reshape(x.shape[0], -1, x.shape[-1])
    diameter = torch.cdist(tokens, tokens).flatten(1).amax(dim=1)
    size = torch.linalg.vector_norm(tokens, dim=-1).amax(dim=1)
    return torch.where(diameter > 0, size / diameter.clamp_min(torch.finfo(F64).tiny), torch.zeros_like(size))


def dense_jacobians(layer: FixedPointLayer, x: Tensor, output: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """d output(x)/dtheta [m, p] and d output(x)/dx [m, x.numel()] (m = output's size, theta = the layer's parameters
    flattened in module order), dense: one vector-Jacobian product per entry (:func:`jacobian_rows`), independent of
    iqa.analysis."""
    x_leaf = x.detach().clone().requires_grad_(True)
    params = list(layer.parameters())
    grads = jacobian_rows(output(x_leaf), [*params, x_leaf])
    return torch.cat([g.flatten(1) for g in grads[:-1]], 1), grads[-1].flatten(1)


def map_jacobians(layer: FixedPointLayer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """df(y; x)/dtheta [B n, p] and df(y; x)/dx [B n, B n] at fixed y."""
    return dense_jacobians(layer, x, lambda x_leaf: layer.fixed_point_map(x_leaf)(y.detach()))


class _StateMap(torch.nn.Module):
    """(x, y) -> f(y; x) as a module over the layer's parameters, for torch.func.functional_call."""

    def __init__(self, layer: FixedPointLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.layer.fixed_point_map(x)(y)


#: Iterates per batched pass of :func:`map_jacobians_along` (bounds its memory: chunk x B n x (p + B n) entries).
ALONG_CHUNK = 64


def map_jacobians_along(layer: FixedPointLayer, x: Tensor, ys: Sequence[Tensor]) -> list[tuple[Tensor, Tensor]]:
    """:func:`map_jacobians` at every y of ``ys``, by reverse mode again: torch.func's jacrev over the parameters
    (through ``functional_call``) and x, vmapped over the iterates, all of a chunk in one pass (a path of 151
    iterates at B = 2, N = D = 4: 20-70 ms against 230-410 ms one at a time on the built-ins, a scratch timing on a
    busy machine; the same entries to 3e-16 relative). A map that vmap cannot batch (it raises) is taken one iterate
    at a time."""
    if not ys:
        return []
    wrapper = _StateMap(layer)
    names = [name for name, _ in wrapper.named_parameters()]
    params = {name: p.detach() for name, p in wrapper.named_parameters()}

    def f(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        return torch.func.functional_call(wrapper, params, (x, y))

    batched = torch.func.vmap(torch.func.jacrev(f, argnums=(0, 1)), in_dims=(None, None, 0), chunk_size=ALONG_CHUNK)
    states = torch.stack([y.detach() for y in ys])
    try:
        d_params, d_x = batched(params, x.detach(), states)
    except (RuntimeError, ValueError, TypeError, NotImplementedError):  # the loop raises again what is not vmap's
        return [map_jacobians(layer, x, y) for y in ys]
    count, m = states.shape[0], ys[0].numel()
    d_theta = torch.cat([d_params[name].reshape(count, m, -1) for name in names], dim=-1)
    return list(zip(d_theta.unbind(0), d_x.reshape(count, m, -1).unbind(0)))


def analyse_solved(layer: FixedPointLayer, x: Tensor, v: Tensor) -> Analysis:
    """:func:`analyse` at the layer's last solution (the fixed point its latest forward reached)."""
    solution = layer.last_solution
    assert solution is not None
    return analyse(layer, x, solution.y, v)


def rel_err(actual: Tensor, reference: Tensor, floor: float, what: str) -> float:
    """||actual - reference|| / ||reference||; a reference below ``floor`` fails the comparison (non-vacuity)."""
    ref_norm = float(torch.linalg.vector_norm(reference))
    assert ref_norm >= floor, (
        f"{what}: reference norm {ref_norm:.3e} is below the floor {floor:.3e}; nothing to compare"
    )
    err = float(torch.linalg.vector_norm(actual.to(reference.dtype) - reference)) / ref_norm
    note(f"{what}: relative error {err:.3e} (reference norm {ref_norm:.3e})")
    return err


def assert_close(actual: Tensor, reference: Tensor, budget: float, floor: float, what: str) -> None:
    """||actual - reference|| <= budget (absolute); a reference below ``floor`` fails (non-vacuity)."""
    ref_norm = float(torch.linalg.vector_norm(reference))
    assert ref_norm >= floor, (
        f"{what}: reference norm {ref_norm:.3e} is below the floor {floor:.3e}; nothing to compare"
    )
    err = float(torch.linalg.vector_norm(actual.to(reference.dtype) - reference))
    note(f"{what}: error {err:.3e}, budget {budget:.3e}, reference norm {ref_norm:.3e}")
    assert err <= budget, f"{what}: error {err:.3e} exceeds {budget:.3e} (reference norm {ref_norm:.3e})"


def floor_of(x: Tensor, v: Tensor) -> float:
    return FLOOR_REL * float(torch.linalg.vector_norm(v)) * float(x.abs().max())


def adjoint_budget(an: Analysis, tol: float, dtype: torch.dtype = F64) -> float:
    """Relative error of a gradient whose adjoint has relative residual <= tol, at the same y*:
    ||g - g_exact|| <= cond tol ||v + J^T g|| <= cond tol (1 + ||J||) ||g||, plus n eps cond (1 + 2 spread^2)
    rounding (spread = :func:`token_spread`: the pullback through f rounds at its terms' size, spread^2 times its
    result where tokens nearly coincide; two float64 evaluations of it differed by up to 1.1 n eps spread^2 on
    hopfield, properties/meta/test_token_spread.py)."""
    norm_J = torch.linalg.matrix_norm(an.J, ord=2)
    spread = torch.zeros_like(an.cond) if an.spread is None else an.spread.to(an.cond)
    return float((an.cond * (tol * (1 + norm_J) + an.n * eps(dtype) * (1 + 2 * spread**2))).max())
