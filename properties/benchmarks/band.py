"""The cases where acceleration matters: Picard converges and rho(J*) is in [0.8, 0.95].

They are found, not picked: every (weight scale, seed) of a fixed grid is
solved by Picard and by Anderson to the same tolerance, and a case is in the
band when Picard converges and the spectral radius of the Jacobian at its
fixed point (dense eigenvalues, :func:`iqa.analysis.spectral_radius`) lies in
[0.8, 0.95]. The grid's scales run from 1 (contractive at nn.Linear's default
init, THEORY.md) to 3 (where the layers start to cycle), the regime where rho
approaches 1. Results are cached per variant for the session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from iqa import Status, solve
from iqa.analysis import spectral_radius
from iqa.variants import Variant
from properties.strategies import Case

BAND = (0.8, 0.95)  # the band of rho(J*) named by the target (issue 7)
TOKENS, DIM = 8, 8
SCALES = tuple(1.0 + 0.125 * i for i in range(17))  # 1.0 .. 3.0: contractive to cycling (THEORY.md)
SEEDS = tuple(range(6))
# float64, tol 1e-8: far above rounding (~1e-14 here) and far below the transient, so the counts measure the rate.
TOL = 1e-8
# Picard needs log(tol / r0) / log(rho) <= ~300 steps at rho = 0.95 from r0 ~ 10; 500 leaves room for the transient.
MAX_ITER = 500


@dataclass(frozen=True)
class Outcome:
    """One grid case: both solvers' f evaluations and statuses, and rho at Picard's fixed point."""

    case: Case
    rho: float | None
    picard: int
    picard_status: Status
    anderson: int
    anderson_status: Status

    @property
    def in_band(self) -> bool:
        return self.rho is not None and BAND[0] <= self.rho <= BAND[1]

    @property
    def ratio(self) -> float:
        return self.anderson / self.picard


def problem(variant: Variant, case: Case) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The map f(.; x) and the start y0 of a case (weights and x from the case's seed)."""
    layer = case.layer(variant)
    x = case.inputs()
    return layer.fixed_point_map(x), layer.initial_point(x)


_STUDIES: dict[str, list[Outcome]] = {}


def study(variant: Variant) -> list[Outcome]:
    """Every grid case of the variant, solved by both methods (cached per variant name)."""
    if variant.name in _STUDIES:
        return _STUDIES[variant.name]
    out = []
    for scale in SCALES:
        for seed in SEEDS:
            case = Case(batch=1, tokens=TOKENS, dim=DIM, dtype=torch.float64, scale=scale, seed=seed)
            f, y0 = problem(variant, case)
            with torch.no_grad():
                picard = solve(f, y0, "picard", tol=TOL, max_iter=MAX_ITER)
                anderson = solve(f, y0, "anderson", tol=TOL, max_iter=MAX_ITER)
            rho = float(spectral_radius(f, picard.y)[0]) if picard.converged else None
            out.append(Outcome(case, rho, picard.n_steps, picard.status, anderson.n_steps, anderson.status))
    _STUDIES[variant.name] = out
    return out


def band(variant: Variant) -> list[Outcome]:
    """The variant's grid cases in the band (possibly none)."""
    return [o for o in study(variant) if o.in_band]
