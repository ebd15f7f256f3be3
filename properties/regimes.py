"""Which regime a drawn case is in, for ``event()`` buckets and ``note()`` reports.

The regimes of docs/theory.md#regimes, decided in this order:

- ``contractive``: some certificate (kappa_inf, kappa_F or the weights-only
  bound) is < 1 for every batch element: the fixed point is unique;
- ``cycling``: the solver reported Status.CYCLE for some element;
- ``saturated``: every attention row at the solution is nearly one-hot
  (1 - max_j p_ij <= SATURATION_GAP), so the Jacobian there nearly vanishes;
- ``multistable``: anything else (no proof of uniqueness: several fixed
  points, slow or chaotic iterations may exist).

``--hypothesis-show-statistics`` then shows how many examples each property
spent in each regime.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from hypothesis import event, note
from torch import Tensor

from iqa import analysis
from iqa.layer import FixedPointLayer
from iqa.rejections import not_reached, reject
from iqa.solvers import Solution, Status, solve

F = TypeVar("F", bound=Callable[..., Any])

REGIMES = ("contractive", "multistable", "cycling", "saturated")
#: An attention row whose largest weight is within this of 1 counts as one-hot.
SATURATION_GAP = 1e-3
#: Picard steps of the solve that :func:`solve_and_observe` classifies.
OBSERVE_MAX_ITER = 200


def best_certificate(layer: FixedPointLayer, x: Tensor) -> Tensor:
    """The smallest certificate per batch element, +inf where the layer's map has none."""
    if not analysis.supports_certificates(layer):
        return torch.full((x.shape[0],), math.inf, dtype=torch.float64)
    return analysis.certificates(layer, x).best.detach().to(torch.float64).cpu()


def classify(layer: FixedPointLayer, x: Tensor, solution: Solution) -> str:
    """The regime of the case (layer, x) whose solve gave ``solution``; one of REGIMES."""
    if bool((best_certificate(layer, x) < 1).all()):
        return "contractive"
    if Status.CYCLE in solution.statuses:
        return "cycling"
    gap = analysis.saturation_gap(layer.fixed_point_map(x), solution.y)
    if bool((gap <= SATURATION_GAP).all()):
        return "saturated"
    return "multistable"


def observe(layer: FixedPointLayer, x: Tensor, solution: Solution, label: str = "") -> str:
    """Classify the case, bucket it with ``event()`` and ``note()`` kappa, rho and the solver status.

    rho is the spectral radius of df/dy at the returned iterate (dense for small
    sizes, Arnoldi beyond), so a failing example shows whether the point was
    locally attracting.
    """
    regime = classify(layer, x, solution)
    event(f"{label}regime: {regime}" if label else f"regime: {regime}")
    kappa = best_certificate(layer, x)
    rho = analysis.spectral_radius(layer.fixed_point_map(x), solution.y)
    statuses = ", ".join(s.name for s in solution.statuses)
    note(
        f"regime {regime}; kappa (best certificate) {_fmt(kappa)}; rho(J at y) {_fmt(rho)}; "
        f"status {statuses}; steps {list(solution.steps)}; residual {_fmt(solution.residual)}"
    )
    return regime


def _fmt(values: Tensor) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values.flatten()) + "]"


def observation_tol(x: Tensor) -> float:
    """The stop tolerance of the observing solve: 1e3 eps of x's dtype relative to max|x|, well above rounding."""
    return 1e3 * torch.finfo(x.dtype).eps * max(1.0, float(x.abs().max()))


def solve_and_observe(layer: FixedPointLayer, x: Tensor, label: str = "") -> tuple[Solution, str]:
    """Solve the layer's fixed point by Picard from its own start (no gradients), then :func:`observe` it.

    For properties that do not solve themselves, so that every drawn case is still bucketed by regime.
    """
    with torch.no_grad():
        solution = solve(
            layer.fixed_point_map(x), layer.initial_point(x), tol=observation_tol(x), max_iter=OBSERVE_MAX_ITER
        )
    return solution, observe(layer, x, solution, label)


# ---------------------------------------------------------------------------------------------------------------
# coverage asserted: a property that needs a regime fails when too few of its examples reach it
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """How many examples of one run of a property reached each labelled regime, out of how many looked."""

    looked: Counter[str] = field(default_factory=Counter)
    reached: Counter[str] = field(default_factory=Counter)


_RUNNING: list[Tally] = []


def require(hit: bool, regime: str, *, rho: float | None = None, scale: float | None = None) -> None:
    """Record (:func:`reached`) whether this example is in the regime ``regime`` and reject it (why recorded,
    :func:`iqa.rejections.reject`) when it is not, so that a property whose draws all fall outside the regime it
    needs ends "not reached: {regime} in 0 of N draws ..." instead of a Hypothesis health-check error.
    ``rho`` (e.g. rho(J*) of the draw) and ``scale`` (its weight scale) go into that reason."""
    if not reached(regime, hit):
        reject(f"outside the regime {regime}", rho=rho, scale=scale)


def reached(label: str, hit: bool) -> bool:
    """Record (and ``event()``) whether this example reached the regime ``label``; returns ``hit``.

    Counted for the property run that :func:`requires_share` wraps, if any (a no-op tally otherwise), and
    shown by ``--hypothesis-show-statistics`` as the event "label: True/False".
    """
    event(f"{label}: {hit}")
    if _RUNNING:
        _RUNNING[-1].looked[label] += 1
        _RUNNING[-1].reached[label] += int(hit)
    return hit


#: Coverage is judged on profiles with at least this many examples (ci: 20, thorough: 400); with fewer (dev: 10,
#: large: 3, mutation: 5) a share is noise: at 10 examples a 30% share of half the draws fails ~3% of runs by chance.
COVERAGE_MIN_EXAMPLES = 20


def requires_share(label: str, minimum: float, at_least: int = 1) -> Callable[[F], F]:
    """Decorate a Hypothesis property (above ``@given``): after all its examples have run, at least ``minimum``
    of those that called :func:`reached` with ``label`` (and at least ``at_least`` of them) must have reached it.
    Otherwise the property fails: it would pass without having tested the regime it exists for. When some
    examples looked and none reached it, the layer gave the property nothing to check in that regime: the verdict
    is "not reached" (:func:`iqa.rejections.not_reached`), not a failure; a share above zero but too small stays
    a failure (the regime exists for this layer, and the property tested too little of it). Judged only on
    profiles with at least COVERAGE_MIN_EXAMPLES examples.

    The wrapped Hypothesis test stays reachable as ``wrapper.hypothesis_inner`` (the meta tests change its
    settings there).
    """

    def decorate(test: F) -> F:
        @functools.wraps(test)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            tally = Tally()
            _RUNNING.append(tally)
            try:
                test(*args, **kwargs)
            finally:
                _RUNNING.remove(tally)
            looked, hit = tally.looked[label], tally.reached[label]
            share = hit / looked if looked else 0.0
            examples = test._hypothesis_internal_use_settings.max_examples  # type: ignore[attr-defined]
            if examples < COVERAGE_MIN_EXAMPLES:
                return  # a share of a handful of examples is noise (dev, large, mutation): ci and thorough judge it
            if looked and not hit:
                not_reached(f"{label} in 0 of {looked} examples (the other examples held)")
            assert hit >= at_least and share >= minimum, (
                f"regime coverage: {hit} of {looked} examples reached '{label}' ({share:.0%}); "
                f"this property needs at least {minimum:.0%} and {at_least}: it did not test what it is for"
            )

        wrapper.hypothesis_inner = test  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
