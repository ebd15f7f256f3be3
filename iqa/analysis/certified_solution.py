"""Solves whose accuracy a certificate proves.

With a certificate kappa < 1 in some norm, f is a contraction and Banach's
theorem gives, for the unique fixed point y* and any y,

    ||y - y*|| <= (||f(y) - y|| + eps_f) / (1 - kappa)

where eps_f bounds the rounding of the computed f(y) (:func:`map_rounding`).
:func:`certified_solve` runs Picard with a tolerance 10x above the rounding
floor (2 eps_f / (1 - kappa)) and enough steps for kappa^t to get there, and
returns that bound with the solution, in the certificate's norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iqa.analysis.certificates import certificates, max_row_norm
from iqa.analysis.rounding import map_rounding
from iqa.layer import FixedPointLayer
from iqa.solvers import Solution, solve

#: Each certificate and the norm it bounds: "rows" is max_i ||y_i|| (the "2,inf" norm), "fro" the Frobenius norm.
CERTIFICATE_NORMS = {"kappa_inf": "rows", "kappa_F": "fro", "kappa_weights": "rows"}


def token_norm(t: Tensor, which: str) -> Tensor:
    """||t||_(2,inf) ("rows") or ||t||_F ("fro") over the last two dimensions, per batch element, in float64.

    The rows are t's own (tokens, or a state's K slots)."""
    t = t.detach().to(torch.float64)
    if which == "rows":
        return max_row_norm(t)
    if which == "fro":
        return torch.linalg.vector_norm(t, dim=(-2, -1))
    raise ValueError(f"unknown norm {which!r}; choose 'rows' or 'fro'")


def in_norm(per_row: Tensor, which: str, tokens: int) -> Tensor:
    """A per-row bound turned into a bound in the given norm (sqrt(rows) times for Frobenius).

    ``tokens`` is the number of rows of the bounded tensor: N for x-shaped states, K for a slot state.
    """
    return per_row if which == "rows" else per_row * math.sqrt(tokens)


def best_certificate(layer: FixedPointLayer, x: Tensor) -> tuple[str, Tensor]:
    """The certificate whose largest value over the batch is smallest: (its name, its values [B] in float64)."""
    certs = certificates(layer, x)
    values = {name: getattr(certs, name).detach().to(torch.float64).cpu() for name in CERTIFICATE_NORMS}
    name = min(values, key=lambda n: float(values[n].max()))
    return name, values[name]


def steps_needed(kappa: float, start: float, tol: float) -> int:
    """Picard steps t with kappa^t start <= tol (1 - kappa), plus two: enough for a residual <= tol."""
    if kappa == 0 or start <= tol * (1 - kappa):
        return 2
    return math.ceil(math.log(tol * (1 - kappa) / start) / math.log(kappa)) + 2


@dataclass(frozen=True)
class CertifiedSolution:
    """A Picard solution with kappa < 1: ||y - y*|| <= error_bound in the named norm, per batch element."""

    solution: Solution
    certificate: str
    kappa: Tensor
    norm: str
    residual: Tensor
    rounding: Tensor
    error_bound: Tensor

    @property
    def y(self) -> Tensor:
        return self.solution.y


def certified_solve(layer: FixedPointLayer, x: Tensor, y0: Tensor | None = None) -> CertifiedSolution:
    """Solve y = f(y; x) by Picard from y0 (default the layer's start) under the best certificate.

    Raises ValueError when no certificate is < 1 for every batch element (nothing
    is proven then). Rounding is bounded at y0 and at the end point: the bound of
    :func:`map_rounding` grows with ||y||, and every iterate after the first lies
    between the two (in the convex hull, or the hull plus x with injection).
    """
    name, kappa = best_certificate(layer, x)
    if not bool((kappa < 1).all()):
        raise ValueError(f"no certificate < 1 for every batch element (best: {name} = {kappa.tolist()})")
    which = CERTIFICATE_NORMS[name]
    f = layer.fixed_point_map(x)
    start = layer.initial_point(x) if y0 is None else y0
    N = start.shape[-2]  # the state's rows (K = N but for slot states)
    eps_start = map_rounding(layer, x, start).cpu()
    k = float(kappa.max())
    # the Frobenius residual can sink to about sqrt(N) 2 eps_f / (1 - kappa) by rounding; stop 10x above it
    tol = 10 * math.sqrt(N) * 2 * float(eps_start.max()) / (1 - k)
    with torch.no_grad():
        start_gap = float(token_norm(f(start) - start, "fro").max())
        solution = solve(f, start, tol=tol, max_iter=steps_needed(k, math.sqrt(N) * start_gap, tol))
        y = solution.y
        residual = token_norm(f(y) - y, which).cpu()
    rounding = in_norm(torch.maximum(eps_start, map_rounding(layer, x, y).cpu()), which, N)
    bound = (residual + rounding) / (1 - kappa)
    return CertifiedSolution(solution, name, kappa, which, residual, rounding, bound)
