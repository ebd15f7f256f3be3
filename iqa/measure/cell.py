"""Measure one cell of a sweep: solves, certificates, rates, and (optionally) gradients.

For the layer and input batch of a :class:`~iqa.measure.sweep.Cell`, every
solver method runs from the layer's y0 with the sweep's tol and max_iter. The
solves, rho and the rates are about the fixed-point state y (x's shape, or a
slot variant's [B, K, D_y]); the gradients about the layer's output, its
readout g(y*, x). Each batch element gives one *run* record::

    {"tokens", "dim", "scale", "seed", "element", ("slots": K, for a slot variant)
     "kappa": {"inf", "F", "weights", "best"} | None,   # certificates (None: not of the form softmax(A Y^T) V)
     "rho": float | None,              # spectral radius of df/dy at y* (None: no converged y*, or it failed)
     "rho_failed": bool,               # the eigenvalue solver failed on the cell's Jacobian
     "rho_consensus": float | None,    # rho at the token mean 1 mean(x)^T, for layers that fix it
     "consensus_distance": float | None,   # ||y* - 1 mean(x)^T||_F / ||x - 1 mean(x)^T||_F (None: y* is not x's shape)
     "<method>": {"status", "steps", "residual", "rate", "history" (picard only)}}

``rate`` is the observed contraction rate (:func:`iqa.analysis.empirical_rate`
of the absolute residuals r_t = ||f(y_t) - y_t||; for Picard r_t = ||y_{t+1} - y_t||).
y* is Picard's converged iterate, else Anderson's, else None.

The gradient record (cells with ``gradients``) compares, for L = <G, g(y*, x)> with a
fixed G ~ N(0, 1) of the output's shape, the gradient over every input of the layer (x and each weight):

    unrolled_error[T] = ||g_unrolled(T) - g_implicit|| / ||g_implicit||
    phantom_error[k, lam] = ||g_phantom(k, lam) - g_implicit|| / ||g_implicit||
    weight_grad_norm = ||dL/dtheta|| / sqrt(B N D)   (theta: the weights only)

It is taken only when every element of the batch converged (an implicit
gradient elsewhere is meaningless), and an error is None when ||g_implicit||
is below a floor (a relative error against ~0 means nothing).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from iqa.analysis import (
    certificates,
    consensus_distance,
    consensus_radius,
    empirical_rate,
    spectral_radius,
    supports_certificates,
)
from iqa.grad import IQAWarning
from iqa.layer import FixedPointLayer
from iqa.measure.sweep import Cell, Sweep, rounded
from iqa.metrics import phantom_name
from iqa.solvers import Solution, Status, solve
from iqa.variants import Tag, Variant

#: Gradients whose norm is below this (times ||G||) are "zero": relative errors against them are not taken.
GRADIENT_FLOOR = 1e-12


def inputs(cell: Cell, sweep: Sweep) -> Tensor:
    """x ~ N(0, 1) of shape [batch, N, D] from the cell's input seed (drawn in float64, then cast)."""
    generator = torch.Generator().manual_seed(cell.input_seed)
    x = torch.randn(sweep.batch, cell.tokens, cell.dim, dtype=torch.float64, generator=generator)
    return x.to(sweep.torch_dtype)


def make_layer(variant: Variant, cell: Cell, sweep: Sweep, **options: Any) -> FixedPointLayer:
    """The cell's layer (same weights for every call with the same cell); a slot cell's K as ``slots=K``."""
    if cell.slots is not None:
        options = {"slots": cell.slots, **options}
    return variant.make(cell.dim, scale=cell.scale, seed=cell.weight_seed, dtype=sweep.torch_dtype, **options)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def measure_cell(variant: Variant, cell: Cell, sweep: Sweep) -> dict[str, Any]:
    """Runs (one per batch element), the gradient record (or None) and solver timings of one cell."""
    layer = make_layer(variant, cell, sweep)
    x = inputs(cell, sweep)
    with torch.no_grad():
        f = layer.fixed_point_map(x)
        y0 = layer.initial_point(x)
        solutions: dict[str, Solution] = {}
        timing: dict[str, list[float]] = {}
        for method in sweep.methods:
            start = time.perf_counter()
            solutions[method] = solve(f, y0, method, tol=sweep.tol, max_iter=sweep.max_iter)
            timing[method] = [time.perf_counter() - start, float(solutions[method].n_steps)]
        kappa = certificates(layer, x) if supports_certificates(layer) else None
        y_star, found = _fixed_point(solutions, y0)
        distance = None
        if y_star.shape == x.shape:  # the token mean is a point of the state space only for x-shaped states
            spread = consensus_distance(x, x)
            distance = consensus_distance(y_star, x) / spread.clamp_min(torch.finfo(x.dtype).tiny)
        rho_c = _consensus_radius(layer, x)
    rho, rho_failed = None, False
    if variant.has(Tag.BATCH_INDEPENDENT) and any(found):
        try:
            rho = spectral_radius(f, y_star).tolist()
        except torch.linalg.LinAlgError:  # LAPACK's eig can fail on a nearly defective Jacobian: say so
            rho_failed = True
    runs = []
    for b in range(sweep.batch):
        run: dict[str, Any] = {
            "tokens": cell.tokens,
            "dim": cell.dim,
            "scale": cell.scale,
            "seed": cell.seed,
            **({} if cell.slots is None else {"slots": cell.slots}),
            "element": b,
            "kappa": None,
            "rho": _finite(rho[b]) if rho is not None and found[b] else None,
            "rho_failed": rho_failed and found[b],
            "rho_consensus": _finite(rho_c[b]) if rho_c is not None else None,
            "consensus_distance": _finite(float(distance[b])) if distance is not None and found[b] else None,
        }
        if kappa is not None:
            run["kappa"] = {
                "inf": _finite(float(kappa.kappa_inf[b])),
                "F": _finite(float(kappa.kappa_F[b])),
                "weights": _finite(float(kappa.kappa_weights[b])),
                "best": _finite(float(kappa.best[b])),
            }
        for method, solution in solutions.items():
            history = solution.residuals[: solution.steps[b], b]
            run[method] = {
                "status": solution.statuses[b].value,
                "steps": solution.steps[b],
                "residual": _finite(float(solution.residual[b])),
                "rate": _finite(float(empirical_rate(history))),
            }
            if method == "picard":
                run[method]["history"] = [rounded(r) for r in history.tolist()]
        runs.append(run)
    gradients = None
    if cell.gradients and all(found):
        gradients = measure_gradients(variant, cell, sweep, rho, x=x, solutions=solutions)
    return {"key": list(cell.key), "runs": runs, "gradients": gradients, "timing": timing}


def _fixed_point(solutions: dict[str, Solution], y0: Tensor) -> tuple[Tensor, list[bool]]:
    """Per element, Picard's converged iterate, else the first other method's; ``found`` says which have one."""
    y_star = y0.clone()
    found = [False] * y0.shape[0]
    for solution in solutions.values():
        for b, status in enumerate(solution.statuses):
            if status is Status.CONVERGED and not found[b]:
                y_star[b] = solution.y[b]
                found[b] = True
    return y_star, found


def _output_shape(layer: FixedPointLayer, x: Tensor) -> torch.Size:
    """The shape of the layer's output for x: its readout at the start (x's shape unless it reads out)."""
    with torch.no_grad():
        return layer.readout(layer.initial_point(x), x).shape


def _consensus_radius(layer: FixedPointLayer, x: Tensor) -> list[float] | None:
    """rho at 1 mean(x)^T, or None for layers that do not fix the token mean (or are not softmax(A Y^T) V)."""
    try:
        return consensus_radius(layer, x).tolist()
    except (TypeError, ValueError):
        return None


def _flat_grad(loss: Tensor, inputs: list[Tensor], retain: bool = False) -> Tensor:
    grads = torch.autograd.grad(loss, inputs, retain_graph=retain, allow_unused=True)
    return torch.cat([(torch.zeros_like(t) if g is None else g).reshape(-1) for t, g in zip(inputs, grads)])


def _relative(a: Tensor, ref: Tensor, floor: float) -> float | None:
    norm = float(torch.linalg.vector_norm(ref))
    if not norm > floor:
        return None
    return _finite(float(torch.linalg.vector_norm(a - ref)) / norm)


def measure_gradients(
    variant: Variant,
    cell: Cell,
    sweep: Sweep,
    rho: list[float] | None,
    *,
    x: Tensor | None = None,
    solutions: Mapping[str, Solution] | None = None,
) -> dict[str, Any]:
    """Implicit vs unrolled-T and phantom gradients of L = <G, y*> for one cell (see the module docstring).

    ``x`` is the cell's input batch (drawn from the cell when not given) and ``solutions`` the cell's solves
    by method, as :func:`measure_cell` ran them. The implicit gradient's forward is Picard's, else
    Anderson's where Picard does not converge; the layer's Picard forward is the cell's own Picard solve
    (same weights, x, y0, tol and max_iter), so when ``solutions`` holds a failed one it is not run again.
    """
    if x is None:
        x = inputs(cell, sweep)
    generator = torch.Generator().manual_seed(cell.input_seed + 1)
    G = torch.randn(_output_shape(make_layer(variant, cell, sweep), x), dtype=torch.float64, generator=generator)
    G = G.to(x.dtype)
    floor = GRADIENT_FLOOR * float(torch.linalg.vector_norm(G))

    def gradient(**options: Any) -> tuple[Tensor, int, FixedPointLayer]:
        layer = make_layer(variant, cell, sweep, **options)
        params = list(layer.parameters())
        xg = x.clone().requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", IQAWarning)  # the adjoint's status is recorded instead
            y = layer(xg)
            assert isinstance(y, Tensor)
            g = _flat_grad((G * y).sum(), [xg, *params])
        return g, sum(p.numel() for p in params), layer

    picard = solutions.get("picard") if solutions is not None else None
    method = "anderson" if picard is not None and not picard.converged else "picard"
    solver = dict(solver=method, tol=sweep.tol, max_iter=sweep.max_iter)
    implicit, n_weights, layer = gradient(backward="implicit", **solver)
    if method == "picard" and (layer.last_solution is None or not layer.last_solution.converged):
        solver["solver"] = "anderson"
        implicit, n_weights, layer = gradient(backward="implicit", **solver)
    adjoint = layer.last_backward_solution
    forward_ok = layer.last_solution is not None and layer.last_solution.converged
    weights = implicit[implicit.numel() - n_weights :]
    record: dict[str, Any] = {
        "key": list(cell.key),
        "solver": solver["solver"],
        "forward_converged": forward_ok,
        "adjoint_status": adjoint.status.value if adjoint is not None else None,
        "rho": _finite(max(rho)) if rho is not None else None,
        "implicit_norm": _finite(float(torch.linalg.vector_norm(implicit))),
        "weight_grad_norm": _finite(float(torch.linalg.vector_norm(weights)) / math.sqrt(x.numel())),
        "unrolled_error": {},
        "phantom_error": {},
    }
    usable = forward_ok and adjoint is not None and adjoint.converged
    # Unrolled: the seed's loop for max(T) steps from y0, one backward per depth T through the shared graph;
    # the output at depth T is the readout of the T-th state.
    unrolled = make_layer(variant, cell, sweep, n_iters=max(sweep.unrolled_T))
    xg = x.clone().requires_grad_(True)
    _, history = unrolled(xg, track=True)
    for T in sorted(sweep.unrolled_T):
        g = _flat_grad((G * unrolled.readout(history[T], xg)).sum(), [xg, *unrolled.parameters()], retain=True)
        record["unrolled_error"][str(T)] = _relative(g, implicit, floor) if usable else None
    for k, lam in sweep.phantom:
        g, _, _ = gradient(backward="phantom", phantom_steps=k, phantom_damping=lam, **solver)
        record["phantom_error"][phantom_name(k, lam)] = _relative(g, implicit, floor) if usable else None
    return record
