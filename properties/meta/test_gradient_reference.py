"""Meta tests of properties.gradient_reference: the reference and the tolerances the gradient properties trust.

Every gradient property compares the layer's gradient with :func:`~properties.gradient_reference.analyse`'s
dense reference within :func:`~properties.gradient_reference.adjoint_budget`, above the norm floor of
:func:`~properties.gradient_reference.floor_of`. A wrong reference, a budget too wide or a floor that lets a
zero reference through would make those properties pass on a broken backward, so the helpers are checked here
on their own:

- on a linear map f(y) = W y + b x, whose fixed point y* = b (I - W)^-1 x, adjoint g = (I - W)^-T v and
  gradients (dL/dW = sum g y*^T, dL/db = sum <g, x>, dL/dx = b g) have a closed form, the dense reference and
  its facts (J, rho, cond, residual) equal the closed form to rounding;
- the comparisons fail against a reference below the floor (a zero one included), and the floor separates a
  weight-independent fixed point solved to TOL64 from a weight-dependent one;
- the adjoint budget follows its formula (linear in cond, affine in tol with slope cond (1 + ||J||), growing
  with ||J||, n and eps of the dtype, the worst batch element deciding) and bounds, nearly tightly, the error
  of an adjoint stopped at relative residual tol in the worst direction.

Small tensors (n <= 8) and no solver of the library: these run in a few seconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from properties.gradient_reference import (
    F64,
    FLOOR_REL,
    MAX_ITER,
    TOL64,
    Analysis,
    Grads,
    adjoint_budget,
    analyse,
    analyse_solved,
    assert_close,
    eps,
    floor_of,
    layer_grads,
    map_jacobians,
    map_jacobians_along,
    rel_err,
)

EPS64 = eps(F64)


class LinearMap(nn.Module):
    """f(y; x) = W y + b x per batch element (y, x of shape [B, N, D], W acting on y's n = N D entries), with
    parameters W [n, n] and b [1] in that (module) order; ``centered``: f(y; x) = W (y - x) + b x, whose fixed
    point for b = 1 is x whatever W (a weight-independent fixed point). The forward is the exact fixed point, a
    dense solve (differentiable, no iteration), recorded as ``last_solution`` like a FixedPointLayer's."""

    def __init__(self, W: Tensor, b: float, centered: bool = False) -> None:
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(torch.tensor([b], dtype=W.dtype))
        self.centered = centered
        self.last_solution: SimpleNamespace | None = None

    def fixed_point_map(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        def f(y: Tensor) -> Tensor:
            z = y - x if self.centered else y
            return (z.flatten(1) @ self.W.T).reshape(y.shape) + self.b * x

        return f

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        """The output is the state, as for a FixedPointLayer without a readout of its own."""
        return y

    def forward(self, x: Tensor) -> Tensor:
        eye = torch.eye(self.W.shape[0], dtype=x.dtype)
        rhs = self.b * x.flatten(1).T - (self.W @ x.flatten(1).T if self.centered else 0)
        y = torch.linalg.solve(eye - self.W, rhs).T.reshape(x.shape)
        self.last_solution = SimpleNamespace(y=y.detach())
        return y


def _unit(generator: torch.Generator, *shape: int) -> Tensor:
    t = torch.randn(*shape, dtype=F64, generator=generator)
    return t / torch.linalg.vector_norm(t)


@st.composite
def linear_problems(draw: st.DrawFn) -> tuple[LinearMap, Tensor, Tensor]:
    """W = a I + c G / ||G||_2 (G Gaussian: not symmetric, so J and J^T differ by O(c)), ||W||_2 <= 0.95, so
    rho(W) < 1 and cond = ||(I - W)^-1||_2 <= 20; x, v Gaussian of shape [B, N, D] with B in {1, 2}."""
    batch, tokens, dim = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 2))
    a, c = draw(st.floats(0.0, 0.6)), draw(st.floats(0.05, 0.35))
    b = draw(st.sampled_from([-2.0, 0.5, 1.0, 3.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n = tokens * dim
    G = torch.randn(n, n, dtype=F64, generator=gen)
    W = a * torch.eye(n, dtype=F64) + c * G / torch.linalg.matrix_norm(G, ord=2)
    x = torch.randn(batch, tokens, dim, dtype=F64, generator=gen)
    v = torch.randn(batch, tokens, dim, dtype=F64, generator=gen)
    return LinearMap(W, b), x, v


def closed_form(layer: LinearMap, x: Tensor, v: Tensor) -> SimpleNamespace:
    """y*, g, the gradients and cond of the linear map, from M = (I - W)^-1 (an explicit inverse: another route
    than analyse's solve with the Jacobian)."""
    W, b = layer.W.detach(), float(layer.b.detach())
    M = torch.linalg.inv(torch.eye(W.shape[0], dtype=F64) - W)
    X, V = x.flatten(1), v.flatten(1)  # [B, n]
    Y = b * X @ M.T  # y*_k = b M x_k
    G = V @ M  # g_k = M^T v_k
    return SimpleNamespace(
        y=Y.reshape(x.shape),
        g=G.reshape(v.shape),
        dW=G.T @ Y,  # sum_k g_k y*_k^T
        db=(G * X).sum().reshape(1),  # sum_k <g_k, x_k>
        dx=(b * G).reshape(x.shape),
        cond=float(torch.linalg.matrix_norm(M, ord=2)),
        rho=float(torch.linalg.eigvals(W).abs().max()),
        M=M,
    )


def rounding(layer: LinearMap) -> float:
    """A relative rounding budget for two dense solves of (I - W) with n unknowns: backward stable, so each is off
    by ~n eps cond(I - W) = n eps (1 + ||W||) cond relative, with a safety factor of 10."""
    W = layer.W.detach()
    n = W.shape[0]
    M = torch.linalg.inv(torch.eye(n, dtype=F64) - W)
    return 10 * n * EPS64 * (1 + float(torch.linalg.matrix_norm(W, ord=2))) * float(torch.linalg.matrix_norm(M, ord=2))


def _close(actual: Tensor, expected: Tensor, scale: float, relative: float, what: str) -> None:
    err = float(torch.linalg.vector_norm(actual - expected))
    assert err <= relative * scale, f"{what}: off by {err:.3e} > {relative:.1e} x {scale:.3e}"


class ReadoutLinearMap(LinearMap):
    """The linear map with a readout of its own: the output is r(y*, x) = s y* + x with a parameter s (after W and
    b in module order), so the gradient has a part through the readout (s, x) besides the one through f."""

    def __init__(self, W: Tensor, b: float, s: float) -> None:
        super().__init__(W, b)
        self.s = nn.Parameter(torch.tensor([s], dtype=W.dtype))

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        return self.s * y + x

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(super().forward(x), x)


# ---------------------------------------------------------------------------------------------------------------
# the dense reference on a linear map, against its closed form
# ---------------------------------------------------------------------------------------------------------------


@given(problem=linear_problems())
def test_reference_equals_the_closed_form_on_a_linear_map(problem: tuple[LinearMap, Tensor, Tensor]) -> None:
    """analyse at y*: J = W, rho = rho(W), cond = ||(I - W)^-1||_2, g = (I - W)^-T v and the reference gradient
    g^T df/d(W, b, x) equal the closed form to rounding (each term's error relative to the sum of its terms'
    norms, so a cancelling sum is not held to a relative bound it cannot meet)."""
    layer, x, v = problem
    with torch.no_grad():
        layer(x)
    exact = closed_form(layer, x, v)
    an = analyse_solved(layer, x, v)
    tol = rounding(layer)
    assert torch.equal(an.y, layer.last_solution.y), "analyse_solved is not at the layer's last solution"
    _close(an.J, layer.W.detach().expand_as(an.J), float(layer.W.detach().norm()), tol, "J")
    assert abs(float(an.rho.max()) - exact.rho) <= 1e-10, f"rho {float(an.rho.max())} vs {exact.rho}"
    assert abs(an.worst_cond - exact.cond) <= tol * exact.cond, f"cond {an.worst_cond} vs {exact.cond}"
    g_norm, y_norms, x_norms = float(exact.g.norm()), exact.y.flatten(1).norm(dim=1), x.flatten(1).norm(dim=1)
    g_norms = exact.g.flatten(1).norm(dim=1)
    _close(an.g, exact.g, g_norm, tol, "g")
    W_size = layer.W.numel()
    _close(an.reference.weights[:W_size], exact.dW.flatten(), float((g_norms * y_norms).sum()), 2 * tol, "dL/dW")
    _close(an.reference.weights[W_size:], exact.db, float((g_norms * x_norms).sum()), 2 * tol, "dL/db")
    _close(an.reference.x, exact.dx, abs(float(layer.b.detach())) * g_norm, 2 * tol, "dL/dx")


@given(problem=linear_problems())
def test_layer_grads_equal_the_closed_form_on_a_linear_map(problem: tuple[LinearMap, Tensor, Tensor]) -> None:
    """layer_grads (L = <v, layer(x)>, through the layer's own backward: here autograd through a dense solve)
    flattens the parameters in module order like the reference, and equals the closed form to rounding."""
    layer, x, v = problem
    grads = layer_grads(layer, x, v)
    exact = closed_form(layer, x, v)
    tol = rounding(layer)
    g_norms = exact.g.flatten(1).norm(dim=1)
    W_size = layer.W.numel()
    assert grads.weights.shape == (W_size + 1,) and grads.x.shape == x.shape
    _close(
        grads.weights[:W_size],
        exact.dW.flatten(),
        float((g_norms * exact.y.flatten(1).norm(dim=1)).sum()),
        2 * tol,
        "dL/dW",
    )
    _close(grads.weights[W_size:], exact.db, float((g_norms * x.flatten(1).norm(dim=1)).sum()), 2 * tol, "dL/db")
    _close(grads.x, exact.dx, abs(float(layer.b.detach())) * float(exact.g.norm()), 2 * tol, "dL/dx")
    assert torch.equal(grads.all, torch.cat([grads.weights, grads.x.flatten()]))


@given(problem=linear_problems(), shift=st.floats(1e-6, 1.0))
def test_map_jacobians_and_residual_away_from_the_fixed_point(
    problem: tuple[LinearMap, Tensor, Tensor], shift: float
) -> None:
    """At any y: df/dtheta = [kron(I, y_k^T) | x_k] per batch element, df/dx = b I (dense, exact in float64:
    products by 0 and 1), and analyse's residual is ||f(y) - y|| = ||(W - I)(y - y*)|| per element."""
    layer, x, v = problem
    exact = closed_form(layer, x, v)
    gen = torch.Generator().manual_seed(1)
    delta = shift * torch.randn(x.shape, dtype=F64, generator=gen)
    y = exact.y + delta
    dtheta, dx = map_jacobians(layer, x, y)
    n, B = layer.W.shape[0], x.shape[0]
    eye = torch.eye(n, dtype=F64)
    rows = [
        torch.cat([torch.kron(eye, y_k[None, :]), x_k[:, None]], dim=1) for y_k, x_k in zip(y.flatten(1), x.flatten(1))
    ]
    assert torch.equal(dtheta, torch.cat(rows)), "df/dtheta is not [kron(I, y^T) | x] in module order"
    assert torch.equal(dx, float(layer.b.detach()) * torch.eye(B * n, dtype=F64)), "df/dx is not b I"
    an = analyse(layer, x, y, v)
    expected = ((eye - layer.W.detach()) @ delta.flatten(1).T).T.norm(dim=1)
    # y* is the closed form's, off by its rounding: f(y) - y = (W - I) delta + that rounding amplified by ||I - W||
    atol = rounding(layer) * float(y.norm() + abs(float(layer.b.detach())) * x.norm())
    assert torch.allclose(an.residual, expected, rtol=0, atol=atol), (
        f"residual {an.residual.tolist()} vs ||(I - W) delta|| {expected.tolist()}"
    )


class ItemLinearMap(LinearMap):
    """The linear map, computed through a Python float of y (``.item()``), which vmap cannot batch."""

    def fixed_point_map(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        linear = super().fixed_point_map(x)

        def f(y: Tensor) -> Tensor:
            return linear(y) * (1.0 + 0.0 * float(y.sum()))

        return f


@given(problem=linear_problems(), steps=st.integers(0, 5), unbatchable=st.booleans())
def test_map_jacobians_along_a_path_equal_the_closed_form(
    problem: tuple[LinearMap, Tensor, Tensor], steps: int, unbatchable: bool
) -> None:
    """map_jacobians_along (vmapped jacrev) at each of a few points equals [kron(I, y_k^T) | x_k] and b I exactly,
    as map_jacobians does, in the order of the points; a map vmap cannot batch (``.item()``) gets the same
    answer one point at a time, and no points give no pairs."""
    layer, x, _ = problem
    if unbatchable:
        layer = ItemLinearMap(layer.W.detach(), float(layer.b.detach()))
    gen = torch.Generator().manual_seed(steps)
    points = [torch.randn(x.shape, dtype=F64, generator=gen) for _ in range(steps)]
    got = map_jacobians_along(layer, x, points)
    assert len(got) == steps
    n, B = layer.W.shape[0], x.shape[0]
    eye = torch.eye(n, dtype=F64)
    for y, (dtheta, dx) in zip(points, got):
        rows = [
            torch.cat([torch.kron(eye, y_k[None, :]), x_k[:, None]], dim=1)
            for y_k, x_k in zip(y.flatten(1), x.flatten(1))
        ]
        assert torch.equal(dtheta, torch.cat(rows)), "df/dtheta along the path is not [kron(I, y^T) | x]"
        assert torch.equal(dx, float(layer.b.detach()) * torch.eye(B * n, dtype=F64)), "df/dx along the path is not b I"


def test_map_jacobians_along_a_builtin_path_equal_one_at_a_time() -> None:
    """On a nonlinear map (multihead: softmax, two heads, an output projection; 70 Picard iterates, more than one
    vmap chunk) the batched Jacobians equal map_jacobians' at each iterate to a few ulps of their largest entry
    (reverse mode both ways, the products in another order: measured <= 3e-16 relative)."""
    from iqa.variants import resolve

    layer = resolve("multihead").make(4, scale=1.5, seed=1, dtype=F64)
    x = torch.randn(2, 3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        path = [layer.initial_point(x)]
        for _ in range(69):
            path.append(f(path[-1]))
    for y, (dtheta, dx) in zip(path, map_jacobians_along(layer, x, path), strict=True):
        expected_theta, expected_x = map_jacobians(layer, x, y)
        for got, expected in ((dtheta, expected_theta), (dx, expected_x)):
            assert got.shape == expected.shape
            assert float((got - expected).abs().max()) <= 8 * EPS64 * float(expected.abs().max())


# ---------------------------------------------------------------------------------------------------------------
# the floor: a comparison against a (near-)zero reference fails
# ---------------------------------------------------------------------------------------------------------------


@given(floor=st.floats(1e-12, 1e3), below=st.one_of(st.just(0.0), st.floats(0.0, 1 - 1e-6)), seed=st.integers(0, 99))
def test_comparisons_fail_below_the_floor(floor: float, below: float, seed: int) -> None:
    """A reference of norm below ``floor`` (zero included) fails rel_err and assert_close, even when the
    actual value equals it and the budget is generous: nothing is compared against nothing."""
    reference = below * floor * _unit(torch.Generator().manual_seed(seed), 6)
    with pytest.raises(AssertionError, match="below the floor"):
        rel_err(reference.clone(), reference, floor, "meta")
    with pytest.raises(AssertionError, match="below the floor"):
        assert_close(reference.clone(), reference, budget=1e300, floor=floor, what="meta")


@given(
    floor=st.floats(1e-12, 1e3),
    above=st.floats(1.0, 1e6),
    delta=st.floats(1e-12, 1.0),
    seed=st.integers(0, 99),
)
def test_comparisons_measure_above_the_floor(floor: float, above: float, delta: float, seed: int) -> None:
    """Above the floor, rel_err is ||actual - reference|| / ||reference|| (of the reference, not of actual), and
    assert_close's budget is absolute: it passes at a budget just above the error and fails just below it."""
    gen = torch.Generator().manual_seed(seed)
    ref_norm = above * floor * (1 + 1e-9)
    reference = ref_norm * _unit(gen, 6)
    error = delta * ref_norm * _unit(gen, 6)
    actual = reference + error
    err = float((actual - reference).norm())  # the error as stored in actual
    assert math.isclose(rel_err(actual, reference, floor, "meta"), err / ref_norm, rel_tol=1e-6)
    assert_close(actual, reference, budget=err * (1 + 1e-6), floor=floor, what="meta")
    with pytest.raises(AssertionError, match="exceeds"):
        assert_close(actual, reference, budget=err * (1 - 1e-6), floor=floor, what="meta")


@given(problem=linear_problems(), residual=st.floats(1e-16, TOL64))
def test_floor_separates_weight_independent_from_weight_dependent(
    problem: tuple[LinearMap, Tensor, Tensor], residual: float
) -> None:
    """floor_of = FLOOR_REL ||v|| max|x|, placed between the two cases it must tell apart: for
    f(y) = W (y - x) + x (y* = x whatever W) at a point solved to TOL64, the weight gradient g (y - x)^T is far
    below it and the comparison fails; for f(y) = W y + x (y* moves with W) the weight gradient is far above it."""
    layer, x, v = problem
    floor = floor_of(x, v)
    assert math.isclose(floor, FLOOR_REL * float(v.norm()) * float(x.abs().max()), rel_tol=1e-12)
    assert math.isclose(floor_of(3 * x, 2 * v), 6 * floor, rel_tol=1e-12), (
        "floor_of is not ||v|| max|x| times a constant"
    )
    # weight-independent: the reference at y = y* + (a residual of TOL64 or below)
    independent = LinearMap(layer.W.detach(), 1.0, centered=True)
    with torch.no_grad():
        y_star = independent(x)
    assert torch.allclose(y_star, x, rtol=0, atol=1e-12), "the centered map's fixed point is not x"
    y = y_star + residual * _unit(torch.Generator().manual_seed(2), *x.shape)
    an = analyse(independent, x, y, v)
    with pytest.raises(AssertionError, match="below the floor"):
        assert_close(
            an.reference.weights[: layer.W.numel()], an.reference.weights[: layer.W.numel()], 1.0, floor, "meta"
        )
    # weight-dependent: b = 1, y* = (I - W)^-1 x
    dependent = LinearMap(layer.W.detach(), 1.0)
    with torch.no_grad():
        dependent(x)
    weights = analyse_solved(dependent, x, v).reference.weights[: layer.W.numel()]
    assert float(weights.norm()) >= 1e3 * floor, (
        f"a weight-dependent gradient {float(weights.norm()):.2e} near the floor {floor:.2e}"
    )


# ---------------------------------------------------------------------------------------------------------------
# adjoint_budget: its formula, and that it bounds an adjoint stopped at tol
# ---------------------------------------------------------------------------------------------------------------


def synthetic(J: Tensor, cond: Tensor) -> Analysis:
    """An Analysis with the fields adjoint_budget reads (J, cond, and n from J); the rest are placeholders."""
    B, n, _ = J.shape
    zero = torch.zeros(B, n, dtype=F64)
    return Analysis(zero, J, cond, cond, cond, zero, Grads(zero.flatten(), zero), zero, zero)


@given(
    seed=st.integers(0, 99),
    n=st.integers(1, 8),
    cond=st.floats(1.0, 1e6),
    tol=st.floats(1e-16, 1e-4),
    k=st.floats(1.5, 100.0),
)
def test_adjoint_budget_follows_its_formula(seed: int, n: int, cond: float, tol: float, k: float) -> None:
    """budget = max_b cond_b (tol (1 + ||J_b||_2) + n eps (1 + 2 spread_b^2)): linear in cond, affine in tol with slope
    cond (1 + ||J||), growing with ||J||, with n and with the dtype's eps; the worst batch element decides."""
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(1, n, n, dtype=F64, generator=gen)
    norm_J = float(torch.linalg.matrix_norm(J[0], ord=2))
    c = torch.tensor([cond], dtype=F64)
    budget = adjoint_budget(synthetic(J, c), tol)
    assert math.isclose(budget, cond * (tol * (1 + norm_J) + n * EPS64), rel_tol=1e-12)
    # cond: linear
    assert math.isclose(adjoint_budget(synthetic(J, k * c), tol), k * budget, rel_tol=1e-12)
    # tol: affine, slope cond (1 + ||J||)
    slope = (adjoint_budget(synthetic(J, c), k * tol) - budget) / ((k - 1) * tol)
    assert math.isclose(slope, cond * (1 + norm_J), rel_tol=1e-6), f"slope in tol {slope:.4e}"
    # ||J||: grows at the same cond
    assert adjoint_budget(synthetic(k * J, c), tol) > budget
    # n and eps: the rounding term cond n eps
    assert math.isclose(adjoint_budget(synthetic(J, c), 0.0), cond * n * EPS64, rel_tol=1e-12)
    # token spread s: the rounding term grows as 1 + 2 s^2 (close tokens, test_token_spread.py)
    spread = dataclasses.replace(synthetic(J, c), spread=torch.tensor([k], dtype=F64))
    assert math.isclose(adjoint_budget(spread, 0.0), cond * n * EPS64 * (1 + 2 * k**2), rel_tol=1e-12)
    J_big = torch.zeros(1, n + 1, n + 1, dtype=F64)
    J_big[:, :n, :n] = J
    assert adjoint_budget(synthetic(J_big, c), 0.0) > adjoint_budget(synthetic(J, c), 0.0)
    assert math.isclose(
        adjoint_budget(synthetic(J, c), 0.0, torch.float32), cond * n * eps(torch.float32), rel_tol=1e-12
    )
    # the worst element decides, in either position
    worse = synthetic(torch.cat([J, k * J]), torch.tensor([cond, k * cond], dtype=F64))
    flipped = synthetic(torch.cat([k * J, J]), torch.tensor([k * cond, cond], dtype=F64))
    worst = adjoint_budget(synthetic(k * J, k * c), tol)
    assert math.isclose(adjoint_budget(worse, tol), worst, rel_tol=1e-12)
    assert math.isclose(adjoint_budget(flipped, tol), worst, rel_tol=1e-12)


@given(problem=linear_problems(), tol=st.floats(1e-10, 1e-4))
def test_adjoint_budget_bounds_an_adjoint_stopped_at_tol(problem: tuple[LinearMap, Tensor, Tensor], tol: float) -> None:
    """g_a = g + (I - J^T)^-1 r has relative residual ||v + J^T g_a - g_a|| / ||v + J^T g_a|| = tol for r of
    that size; along the worst direction (the right singular vector of (I - J^T)^-1's largest singular value) its
    error is cond ||r||. The budget bounds that relative error, and is within a factor 2 (1 + ||J||) of it."""
    layer, x, v = problem
    with torch.no_grad():
        layer(x)
    an = analyse_solved(layer, x, v)
    M_T = torch.linalg.inv(torch.eye(an.n, dtype=F64) - an.J.transpose(1, 2))  # (I - J^T)^-1, [B, n, n]
    Vh = torch.linalg.svd(M_T).Vh
    direction = Vh[:, 0, :]  # M_T direction = S_max U[:, :, 0]: the largest amplification, cond
    g = an.g.flatten(1)
    # v + J^T g_a - g_a = -r, so ||r|| = tol ||v + J^T g_a|| = tol ||g_a - r||: a fixed-point iteration on the
    # size converges (tol << 1)
    size = tol * g.norm(dim=1, keepdim=True)
    for _ in range(5):
        r = size * direction
        g_a = g + (M_T @ r.unsqueeze(-1)).squeeze(-1)
        size = tol * (g_a - r).norm(dim=1, keepdim=True)
    r = size * direction
    g_a = g + (M_T @ r.unsqueeze(-1)).squeeze(-1)
    Jt_g = (an.J.transpose(1, 2) @ g_a.unsqueeze(-1)).squeeze(-1)
    relative_residual = ((v.flatten(1) + Jt_g - g_a).norm(dim=1) / (v.flatten(1) + Jt_g).norm(dim=1)).max()
    assert math.isclose(float(relative_residual), tol, rel_tol=1e-2), "the construction missed its residual"
    error = float(((g_a - g).norm(dim=1) / g.norm(dim=1)).max())
    budget = adjoint_budget(an, tol)
    norm_J = float(torch.linalg.matrix_norm(an.J, ord=2).max())
    assert error <= budget, f"adjoint error {error:.3e} above its budget {budget:.3e}"
    assert budget <= 2 * (1 + norm_J) * error + an.worst_cond * an.n * EPS64 * 2, (
        f"budget {budget:.3e} loose against the worst-case error {error:.3e}"
    )


# ---------------------------------------------------------------------------------------------------------------
# MAX_ITER: enough Picard steps for TOL64 in the hard band
# ---------------------------------------------------------------------------------------------------------------


def test_max_iter_reaches_tol64_at_the_edge_of_the_hard_band() -> None:
    """Picard on f(y) = W y + x with W = 0.97 Q (Q orthogonal: rho = ||W|| = 0.97, the hard band's edge), from
    y0 = 0 at ||y*|| = 10, reaches an absolute residual TOL64 within MAX_ITER steps."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, dtype=F64, generator=gen))
    W = 0.97 * Q
    y_star = 10 * _unit(gen, 8)
    x = y_star - W @ y_star
    y = torch.zeros(8, dtype=F64)
    for _ in range(MAX_ITER):
        y_next = W @ y + x
        if float((y_next - y).norm()) <= TOL64:
            break
        y = y_next
    else:
        pytest.fail(f"Picard at rho 0.97 did not reach TOL64 = {TOL64:g} in MAX_ITER = {MAX_ITER} steps")


@given(problem=linear_problems(), s=st.sampled_from([-1.5, 0.5, 2.0]))
def test_reference_through_a_readout(problem: tuple[LinearMap, Tensor, Tensor], s: float) -> None:
    """With a readout r(y*, x) = s y* + x, analyse pulls v back through r ((dr/dy)^T v = s v into the adjoint)
    and adds v^T dr/d(s, x): its reference equals autograd through the layer's exact dense solve and readout
    (layer_grads, no adjoint), to the rounding of two dense solves. A reference that left out either part of the
    readout is off by O(1) (checked: the readout's own part alone is that large)."""
    linear, x, v = problem
    layer = ReadoutLinearMap(linear.W.detach(), float(linear.b.detach()), s)
    with torch.no_grad():
        layer(x)
    an = analyse_solved(layer, x, v)
    exact = layer_grads(layer, x, v)
    tol = rounding(layer)
    scale = float(exact.all.norm()) + float(v.norm()) * (1 + float(an.y.norm()))
    _close(an.reference.all, exact.all, scale, 4 * tol, "readout reference vs autograd through the dense solve")
    own = float(v.flatten() @ an.y.flatten())  # dL/ds, the readout's own part of the weight gradient
    assert abs(float(exact.weights[-1]) - own) <= 4 * tol * scale, "dL/ds is not <v, y*>"
