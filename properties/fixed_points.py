"""Shared set-up of the gradient properties: a layer at a stable fixed point, and a loss's cotangent.

The implicit gradient is defined at a converged fixed point y* where the adjoint
iteration converges, i.e. where y* is locally stable (rho(J*) < 1, docs/theory.md#implicit-differentiation).
:func:`stable_fixed_point` solves a drawn case and
rejects the cases that do not reach such a point (:func:`require_converged`, with the reason recorded for the
"not reached" verdict of :mod:`iqa.rejections`), so that the
properties that use it (test_gradients, test_backward_reports) never compare
gradients at a point where they are undefined, and never pass by skipping.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import torch
from hypothesis import event, note
from torch import Tensor

from iqa import ConvergenceError
from iqa.analysis import spectral_radius
from iqa.grad import BackwardConvergenceWarning
from iqa.layer import FixedPointLayer
from iqa.rejections import reject
from iqa.solvers import Map, Solution, solve
from iqa.variants import Variant
from properties.jacobian_rows import jacobian_rows
from properties.regimes import require
from properties.strategies import Case

F64 = torch.float64


def output_shape(layer: FixedPointLayer, x: Tensor) -> torch.Size:
    """The shape of the layer's output for x: its readout g(y0, x) at its own start (x's shape by default)."""
    with torch.no_grad():
        return layer.readout(layer.initial_point(x), x).shape


def cotangent(
    case: Case,
    device: torch.device | str,
    dtype: torch.dtype = F64,
    *,
    layer: FixedPointLayer | None = None,
    of: str = "output",
) -> Tensor:
    """A random dL/d(output), drawn from the case's seed (independent of x and of the weights), of the shape of
    ``layer``'s output (x's shape without a layer, or for a layer without a readout of its own); with
    ``of="state"``, of the shape of its fixed-point state y* (``layer.solve_state``)."""
    if layer is None:
        shape = case.shape
    elif of == "output":
        shape = output_shape(layer, case.inputs(device))
    elif of == "state":
        with torch.no_grad():
            shape = layer.initial_point(case.inputs(device)).shape
    else:
        raise ValueError(f"of must be 'output' or 'state', got {of!r}")
    return torch.randn(shape, dtype=F64, generator=case.generator(2)).to(dtype=dtype, device=device)


def fixed_map(layer: FixedPointLayer, x: Tensor) -> Map:
    """The layer's map y -> f(y; x) with x and the weights detached (for analysis, not for gradients)."""
    with torch.no_grad():
        return layer.fixed_point_map(x.detach())


def stable_fixed_point(
    case: Case, variant: Variant, device: torch.device | str, max_rho: float = 1.0, **options: object
) -> tuple[FixedPointLayer, Tensor]:
    """The case's layer (built with ``options``) after one forward, and its input, where that forward converged
    to a locally stable fixed point (rho(J*) < 1, and at most ``max_rho``: see :func:`solvable_rho`); other cases
    are rejected, why recorded.

    A forward that raises (``raise_on_failure``) is rejected too: its failure is not the caller's subject.
    Anderson can land on an unstable fixed point, where the adjoint iteration must fail; that failure is
    test_backward_reports' business when it provokes it on purpose, so here it is rejected.
    """
    layer = case.layer(variant, device, **options)
    x = case.inputs(device)
    with torch.no_grad():
        try:
            layer(x)
        except ConvergenceError as error:
            event(f"forward {error.solution.status.name} (raised)")
            require_converged(error.solution, fixed_map(layer, x), case.scale)
    solution = layer.last_solution
    assert solution is not None
    event(f"forward {solution.status.name}")
    require_converged(solution, fixed_map(layer, x), case.scale)
    rho = float(spectral_radius(fixed_map(layer, x), solution.y).max())
    event(f"locally stable (rho < 1): {rho < 1}")
    if not rho < 1:
        reject(
            "no locally stable fixed point (rho(J*) >= 1)",
            solver=solver_name(solution),
            status=solution.status.value,
            rho=rho,
            scale=case.scale,
            convergence=True,
        )
    if rho > max_rho and not adjoint_converges(layer, x):
        reject(
            f"rho(J*) above {max_rho:.4f} and the adjoint did not reach tol within max_iter steps",
            solver=solver_name(solution),
            status=solution.status.value,
            rho=rho,
            scale=case.scale,
        )
    return layer, x


def solvable_rho(options: dict[str, object]) -> float:
    """The largest rho(J*) at which the adjoint g = v + J*^T g, iterated at rate rho, surely reaches the options'
    tol within their max_iter steps: tol^(1 / max_iter) (0.990 for tol 1e-13 in 3000 steps); 1 without both.
    Above it the backward may fail to solve a locally stable point however correct it is (found on the Perceiver:
    Anderson stopped where rho(J*) = 0.99999, and the adjoint ended at residual 1.5e-3 after 3000 steps), so
    :func:`stable_fixed_point` tries the adjoint there and rejects the draw only if it fails; below it an adjoint
    that fails is the property's to report."""
    tol, max_iter = options.get("tol"), options.get("max_iter")
    if not isinstance(tol, float) or not isinstance(max_iter, int) or not 0 < tol < 1:
        return 1.0
    return float(tol ** (1 / max_iter))


def adjoint_converges(layer: FixedPointLayer, x: Tensor) -> bool:
    """Whether the layer's backward solves its adjoint at its last forward's point for a random cotangent (seeded
    by the layer's start seed): one backward, its warnings caught and its Solution read."""
    generator = torch.Generator().manual_seed(getattr(layer, "start_seed", 0))
    x_leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", BackwardConvergenceWarning)
        y = layer(x_leaf)
        v = torch.randn(y.shape, dtype=torch.float64, generator=generator).to(y)
        torch.autograd.grad((v * y).sum(), x_leaf)
    adjoint = layer.last_backward_solution
    return adjoint is None or adjoint.converged


def solver_name(solution: Solution) -> str:
    """How a reason names the solver of ``solution`` ("Picard", "Anderson")."""
    return solution.method.capitalize()


def require_converged(solution: Solution, f: Map, scale: float | None = None) -> None:
    """Reject a draw whose solve did not converge, recording why (:func:`iqa.rejections.reject`): the solver, its
    status, rho(df/dy) at the last iterate (dense at these small sizes: whether the solve stopped near a locally
    attracting point) and the draw's weight ``scale``; so that a property none of whose draws converge says so."""
    if solution.converged:
        return
    rho = float(spectral_radius(f, solution.y).max()) if bool(torch.isfinite(solution.y).all()) else math.inf
    reject(
        "no converged fixed point",
        solver=solver_name(solution),
        status=solution.status.value,
        rho=rho,
        scale=scale,
        convergence=True,
    )


#: rho(J*) where implicit gradients are hard (issue 12): the adjoint's Neumann series sum (J^T)^i v needs
#: log(eps) / log(rho) ~ 100..1200 terms, cond(I - J*) is 3..30 or more, and the unrolled gradient converges slowly.
HARD_BAND = (0.7, 0.97)
#: The weight scales searched for it: from contractive (0.25) past where the built-ins cycle (~3; injection ~10).
BAND_SCALES = (0.25, 16.0)
#: The search's steps up in scale: rho grows about as s^2 while the attention is far from saturated (its scores are
#: quadratic in the weights), so each step aims at BAND_AIM (about the band's middle, 0.835) with that law, by a
#: factor within BAND_FACTORS (at least the former 12-point grid's spacing, 64^(1/11) ~ 1.46; at most 4, ~3.6
#: grid steps, so that a misjudged law costs bisection steps, not the band).
BAND_AIM, BAND_FACTORS = 0.85, (64 ** (1 / 11), 4.0)
#: Bisections on log(scale) within a bracket: 8 halve a factor-4 bracket to 4^(1/256) ~ 1.005, the resolution the
#: grid's 6 gave its 1.46 brackets.
BAND_STEPS = 8
#: The search's solves: Anderson (tens of steps where Picard needs ~1000 at rho = 0.97), float64 to 1e-11.
BAND_TOL, BAND_MAX_ITER = 1e-11, 300


def reverse_jacobian(f: Map, y: Tensor) -> Tensor:
    """df/dy [n, n] at y (one batch element), one reverse-mode product per row (:func:`jacobian_rows`):
    independent of iqa.analysis, and far cheaper than a vmapped forward for these small n."""
    y_req = y.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (rows,) = jacobian_rows(f(y_req), [y_req])
    return rows.flatten(1).to(torch.float64)


def element_jacobian(f: Map, y: Tensor, b: int) -> Tensor:
    """df_b/dy_b [n, n] at batch element b of y (the other elements held), by :func:`reverse_jacobian`."""

    def f_b(z: Tensor) -> Tensor:
        return f(torch.cat([y[:b], z, y[b + 1 :]]))[b : b + 1]

    return reverse_jacobian(f_b, y[b : b + 1])


def band_rho(case: Case, variant: Variant, scale: float) -> float:
    """rho(J*) at the fixed point that Anderson reaches from the layer's own start at this weight scale (inf where
    it does not converge): the Jacobian by reverse mode, its eigenvalues by numpy (torch 2.13's CPU eigvals
    fails to converge on some of these, as iqa.analysis.spectral.eig_blocks notes)."""
    layer = dataclasses.replace(case, scale=scale).layer(variant)
    x = case.inputs()
    f = fixed_map(layer, x)
    with torch.no_grad():
        solution = solve(f, layer.initial_point(x), "anderson", tol=BAND_TOL, max_iter=BAND_MAX_ITER)
    if not solution.converged:
        return math.inf
    J = reverse_jacobian(f, solution.y).cpu().numpy()
    return float(abs(np.linalg.eigvals(J)).max()) if np.isfinite(J).all() else math.inf


def band_scale(case: Case, variant: Variant) -> tuple[float, float] | None:
    """A weight scale at which the case's layer (its seed, shape and x) has a fixed point, reached by Anderson from
    its own start, with rho(J*) in HARD_BAND; with that rho. From the smallest scale of BAND_SCALES it steps up
    (BAND_AIM, BAND_FACTORS) to the first scale in the band, or to the first pair below and above it, which a
    bisection on log(scale) then narrows (BAND_STEPS). None when rho jumps over the band (a branch change, or a
    fixed point lost), when the largest scale is still below it, and at once when there is no fixed point at the
    smallest, most contractive scale: a layer that does not converge there (e.g. a residual stream that drifts at
    every scale) would cost the whole search for nothing."""
    low, high = BAND_SCALES
    scale = low
    rho = band_rho(case, variant, scale)
    if rho == math.inf:
        return None
    while True:
        if HARD_BAND[0] <= rho <= HARD_BAND[1]:
            return scale, rho
        if rho > HARD_BAND[1] or scale >= high:
            return None  # above the band at the smallest scale, or still below it at the largest
        below = scale
        factor = math.sqrt(BAND_AIM / rho) if rho > 0 else BAND_FACTORS[1]
        scale = min(high, below * min(max(factor, BAND_FACTORS[0]), BAND_FACTORS[1]))
        rho = band_rho(case, variant, scale)
        if rho > HARD_BAND[1]:  # above the band (or no fixed point): bisect between below and scale
            a, b = math.log(below), math.log(scale)
            for _ in range(BAND_STEPS):
                mid = math.exp((a + b) / 2)
                rho = band_rho(case, variant, mid)
                if HARD_BAND[0] <= rho <= HARD_BAND[1]:
                    return mid, rho
                a, b = (math.log(mid), b) if rho < HARD_BAND[0] else (a, math.log(mid))
            return None


#: Seeds tried per hard draw (the drawn one, then offsets of it): one search succeeds for ~35-90% of cases.
BAND_ATTEMPTS = 3


def hard_case(case: Case, variant: Variant) -> Case:
    """``case`` moved into HARD_BAND (:func:`band_scale`, one batch element; its seed, then BAND_ATTEMPTS - 1
    offsets of it); rejected when every search fails (:func:`properties.regimes.require`: counted under
    BAND_LABEL, and named as the reason)."""
    for attempt in range(BAND_ATTEMPTS):
        candidate = dataclasses.replace(case, batch=1, seed=case.seed + 7919 * attempt)
        found = band_scale(candidate, variant)
        if found is not None:
            break
    require(found is not None, BAND_LABEL)
    assert found is not None
    note(f"hard band: seed {candidate.seed}, weight scale {found[0]:.4g}, rho(J*) {found[1]:.4f}")
    return dataclasses.replace(candidate, scale=found[0])


BAND_LABEL = f"rho(J*) in the hard band [{HARD_BAND[0]}, {HARD_BAND[1]}]"
