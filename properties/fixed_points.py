"""Shared set-up of the gradient properties: a layer at a stable fixed point, and a loss's cotangent.

The implicit gradient is defined at a converged fixed point y* where the adjoint
iteration converges, i.e. where y* is locally stable (rho(J*) < 1, THEORY.md
"Implicit differentiation"). :func:`stable_fixed_point` solves a drawn case and
rejects (``assume``) the cases that do not reach such a point, so that the
properties that use it (test_gradients, test_backward_reports) never compare
gradients at a point where they are undefined, and never pass by skipping.
"""

from __future__ import annotations

import torch
from hypothesis import assume, event
from torch import Tensor

from iqa import ConvergenceError
from iqa.analysis import spectral_radius
from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.variants import Variant
from properties.strategies import Case

F64 = torch.float64


def cotangent(case: Case, device: torch.device | str, dtype: torch.dtype = F64) -> Tensor:
    """A random dL/dy*, drawn from the case's seed (independent of x and of the weights)."""
    return torch.randn(case.shape, dtype=F64, generator=case.generator(2)).to(dtype=dtype, device=device)


def fixed_map(layer: FixedPointLayer, x: Tensor) -> Map:
    """The layer's map y -> f(y; x) with x and the weights detached (for analysis, not for gradients)."""
    with torch.no_grad():
        return layer.fixed_point_map(x.detach())


def stable_fixed_point(
    case: Case, variant: Variant, device: torch.device | str, **options: object
) -> tuple[FixedPointLayer, Tensor]:
    """The case's layer (built with ``options``) after one forward, and its input, where that forward converged
    to a locally stable fixed point (rho(J*) < 1); other cases are rejected with ``assume``.

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
            assume(False)
    solution = layer.last_solution
    assert solution is not None
    event(f"forward {solution.status.name}")
    assume(solution.converged)
    rho = float(spectral_radius(fixed_map(layer, x), solution.y).max())
    event(f"locally stable (rho < 1): {rho < 1}")
    assume(rho < 1)
    return layer, x
