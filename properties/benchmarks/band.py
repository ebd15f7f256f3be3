"""The cases where acceleration matters: Picard converges and rho(J*) is in [0.8, 0.95].

They are found, not picked: every (weight scale, seed) of a fixed grid is
solved by Picard and by Anderson to the same tolerance, and a case is in the
band when Picard converges and the spectral radius of the Jacobian at its
fixed point (dense eigenvalues, :func:`iqa.analysis.spectral_radius`) lies in
[0.8, 0.95]. The grid's scales run from 1 (contractive at nn.Linear's default
init, docs/theory.md#regimes) to 3 (where the layers start to cycle), the regime where rho
approaches 1.

:func:`sample` is broader: shapes, scales and seeds drawn at random (seeded
per variant), to look for cases where Anderson fails and Picard does not.
Results are cached per variant for the session.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from iqa import Status, solve
from iqa.analysis import spectral_radius
from iqa.variants import Variant
from properties.strategies import Case

BAND = (0.8, 0.95)  # the band of rho(J*) named by the target (issue 7)
TOKENS, DIM = 8, 8
SCALES = tuple(1.0 + 0.125 * i for i in range(17))  # 1.0 .. 3.0: contractive to cycling (docs/theory.md#regimes)
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
    def picard_converged(self) -> bool:
        return self.picard_status is Status.CONVERGED

    @property
    def anderson_failed(self) -> bool:
        return self.anderson_status is not Status.CONVERGED

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


def outcome(variant: Variant, case: Case, with_rho: bool = True) -> Outcome:
    """Both solvers on one case, to TOL within MAX_ITER; rho(J*) at Picard's fixed point when asked."""
    f, y0 = problem(variant, case)
    with torch.no_grad():
        picard = solve(f, y0, "picard", tol=TOL, max_iter=MAX_ITER)
        anderson = solve(f, y0, "anderson", tol=TOL, max_iter=MAX_ITER)
    rho = float(spectral_radius(f, picard.y)[0]) if with_rho and picard.converged else None
    return Outcome(case, rho, picard.n_steps, picard.status, anderson.n_steps, anderson.status)


_STUDIES: dict[str, list[Outcome]] = {}


def study(variant: Variant) -> list[Outcome]:
    """Every grid case of the variant, solved by both methods (cached per variant name)."""
    if variant.name not in _STUDIES:
        _STUDIES[variant.name] = [
            outcome(variant, Case(batch=1, tokens=TOKENS, dim=DIM, dtype=torch.float64, scale=scale, seed=seed))
            for scale in SCALES
            for seed in SEEDS
        ]
    return _STUDIES[variant.name]


SAMPLE_SIZE = 700  # per variant: about 350 cases where Picard converges, ~8 s per variant for both solvers
SAMPLE_SIDES = (4, 16)  # N and D, each drawn uniformly
SAMPLE_SCALES = (1.0, 3.0)  # the grid's range of weight scales, drawn uniformly

_SAMPLES: dict[str, list[Outcome]] = {}


def sample(variant: Variant) -> list[Outcome]:
    """SAMPLE_SIZE random cases of the variant (float64, batch 1), solved by both methods.

    Drawn from a generator seeded by the variant's name, so a variant always gets the same cases. N and D are
    drawn inside the variant's domain (multihead: D a multiple of its heads); a variant whose domain allows
    every size in SAMPLE_SIDES gets the draws it got before domains were respected.
    """
    if variant.name not in _SAMPLES:
        domain = variant.domain
        tokens, widths = domain.tokens(*SAMPLE_SIDES), domain.dims(*SAMPLE_SIDES)
        if tokens is None or not widths:
            pytest.skip(f"{variant.name}'s domain ({domain.describe()}) has no N, D in {SAMPLE_SIDES}")
        every_width = widths == list(range(SAMPLE_SIDES[0], SAMPLE_SIDES[1] + 1))
        rng = random.Random(f"iqa-bench-sample-{variant.name}")
        cases = [
            Case(
                batch=1,
                tokens=rng.randint(*tokens),
                dim=rng.randint(*SAMPLE_SIDES) if every_width else rng.choice(widths),
                dtype=torch.float64,
                scale=round(rng.uniform(*SAMPLE_SCALES), 3),
                seed=rng.randrange(10**6),
            )
            for _ in range(SAMPLE_SIZE)
        ]
        _SAMPLES[variant.name] = [outcome(variant, case, with_rho=False) for case in cases]
    return _SAMPLES[variant.name]


def band(variant: Variant) -> list[Outcome]:
    """The variant's grid cases in the band (possibly none)."""
    return [o for o in study(variant) if o.in_band]


def band_or_skip(variant: Variant) -> list[Outcome]:
    """The variant's band cases; the calling test is skipped when there are none."""
    cases = band(variant)
    if not cases:
        pytest.skip(f"{variant.name}: no case of the grid has rho(J*) in {BAND}")
    return cases


def slowest(outcomes: list[Outcome]) -> Outcome:
    """The outcome on which Picard needed the most steps."""
    return max(outcomes, key=lambda o: o.picard)
