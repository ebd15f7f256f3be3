"""The claims a variant makes about convergence, refuted by a counterexample where they are false.

``contractive`` (with ``Variant.contractive_scales = (low, high)``): at every weight scale in that closed range,
Picard converges from the layer's own start y0 = initial_point(x), with the layer's own tolerance and step
budget, to a fixed point that is locally stable, rho(J*) < 1. The property draws scales over the range
(log-uniform, both ends included), shapes inside the variant's domain, and checks both halves; J* is a dense
Jacobian built here with torch.autograd.functional.jacobian at small sizes, its spectral radius from
torch.linalg.eigvals (independent of iqa.analysis). A failure names the draw, Picard's status and rho at the
last iterate. A variant that claims ``contractive`` also never gets "not reached" for lack of convergence at its
claimed scales elsewhere in the suite (:mod:`iqa.rejections`): its claim is refuted instead.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from hypothesis import given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa.solvers import Map
from iqa.variants import Tag, Variant
from properties.strategies import Case, active_domain, cases
from properties.tags import requires

F64 = torch.float64
#: Small shapes: batch <= 2, N and D up to SMALL or the domain's smallest allowed size, so that every domain gets
#: draws and the dense Jacobian of the whole state stays small (a few dozen rows for the built-ins).
SMALL = 4


def claim_cases() -> st.SearchStrategy[Case]:
    """Cases inside the active variant's domain (properties.strategies.active_domain), at small sizes."""
    domain = active_domain()
    dims = (1, max(SMALL, domain.smallest_dim(1) or 1))
    tokens = (1, max(SMALL, domain.min_tokens))
    return cases(batch=(1, 2), tokens=tokens, dim=dims, dtypes=(F64,), scales=st.just(1.0))


def claimed_scale(scales: tuple[float, float], position: float) -> float:
    """The weight scale at ``position`` in [0, 1] of the claimed range, on the log scale (both ends reached)."""
    lo, hi = scales
    return lo if position <= 0 else hi if position >= 1 else lo * (hi / lo) ** position


def dense_rho(f: Map, y: Tensor) -> tuple[float, float]:
    """rho(df/dy) at y of the whole state (every batch element, slot and width at once) and ||J||_F: the dense
    Jacobian by torch.autograd.functional.jacobian, its eigenvalues by torch.linalg.eigvals."""
    n = y.numel()
    J = torch.autograd.functional.jacobian(f, y.detach().to(F64)).reshape(n, n)
    if not bool(torch.isfinite(J).all()):
        return math.inf, math.inf
    return float(torch.linalg.eigvals(J).abs().max()), float(torch.linalg.matrix_norm(J))


@requires(Tag.CONTRACTIVE)
@given(data=st.data(), position=st.floats(0.0, 1.0))
def test_contractive_claim_holds(variant: Variant, data: st.DataObject, position: float, device) -> None:
    """Picard from the layer's own y0 converges at every claimed weight scale, to a point with rho(J*) < 1."""
    assert variant.contractive_scales is not None  # the tag and the range go together (iqa.Variant checks)
    lo, hi = variant.contractive_scales
    case = dataclasses.replace(data.draw(claim_cases(), label="case"), scale=claimed_scale((lo, hi), position))
    layer = case.layer(variant, device, solver="picard")
    x = case.inputs(device)
    with torch.no_grad():
        layer.solve_state(x)
    solution = layer.last_solution
    assert solution is not None
    f = layer.fixed_point_map(x)
    rho, norm = dense_rho(f, solution.y)
    slots = "" if case.slots is None else f", K={case.slots}"
    draw = (
        f"{variant.name} claims contractive at weight scales [{lo:g}, {hi:g}]; at scale {case.scale:.6g} "
        f"(B={case.batch}, N={case.tokens}, D={case.dim}{slots}, seed={case.seed}) "
        f"Picard from the layer's own start ended {solution.status.value} after {solution.n_steps} steps "
        f"(residual {float(solution.residual.max()):.3e}, tol {solution.tol:.1e}); rho at the last iterate {rho:.4f}"
    )
    note(draw)
    assert solution.converged, draw
    # rho of the computed J, eigenvalues in float64: off from the exact rho by the rounding of the n x n
    # eigenproblem, ~n eps ||J||_F (backward-stable eig; a defective eigenvalue moves more, and then the claim's
    # margin below 1 is nil anyway). The claim is refuted only beyond that.
    slack = solution.y.numel() * torch.finfo(F64).eps * max(1.0, norm)
    assert rho < 1 + slack, f"{draw}: Picard converged to a point that is not locally stable (rho >= 1 + {slack:.1e})"
