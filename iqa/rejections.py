"""Why a property's draws were rejected: a per-test tally, and the one-line reason of the "not reached" verdict.

A property that needs something of its draw (a converged fixed point, a locally stable one, a regime such as
rho(J*) >= 0.1) rejects a draw that lacks it with :func:`reject`, which records why (what is missing, the
solver and its status, rho at the last iterate, the weight scale) and then rejects the draw as Hypothesis's
``assume(False)`` does. :mod:`iqa.pytest_plugin` runs each test inside :func:`tallying`, which counts every
draw Hypothesis runs: rejected with a reason, rejected by an unlabelled ``assume``, or *checked* (the
property's assertions ran, whether they held or not).

When Hypothesis gives up on a property (:func:`gave_up`: ``Unsatisfiable``, or the ``filter_too_much``
health check after 50 rejected draws) and no draw was checked, :func:`not_reached_reason` says why in one
line, e.g. "no converged fixed point in 50 draws; Picard: 50 out of steps; rho at the last iterate
1.00-1.00", and the plugin turns the error into the verdict "not reached" (:mod:`iqa.verdicts`): the layer
gave the property nothing to check, which is neither a pass nor a fail. So it does, with "too few draws
checked", where a few draws were checked and held but every other draw was rejected with a reason (a layer that
converges in a few draws only). Where some rejection said no reason (an unlabelled ``assume``), Hypothesis's
error stands, with the tally as a note.

A variant that claims to contract (tag ``contractive``, ``Variant.contractive_scales``) must converge at those
scales: :func:`refuted_claim` names a rejection for lack of convergence at a claimed scale, and the plugin
then fails the property instead (the claim itself is refuted by properties/variant/test_claims.py).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import pytest

from iqa.verdicts import NOT_REACHED_PREFIX

#: How a solver status (iqa.solvers.Status, by value) reads in a reason.
STATUS_WORDS = {
    "converged": "converged",
    "max_iter": "out of steps",
    "cycle": "cycling",
    "diverged": "diverged",
    "nonfinite": "non-finite",
}


@dataclass(frozen=True)
class Rejection:
    """Why one draw was rejected.

    ``why`` names what the draw lacked ("no converged fixed point", "rho(J*) >= 0.1"); ``solver`` and
    ``status`` say how the solve ended (a status value of iqa.solvers.Status, or free text), ``rho`` is
    the spectral radius of df/dy at the last iterate (where it was cheap to get), ``scale`` the draw's weight
    scale. ``convergence`` marks a rejection for lack of a converged, locally stable fixed point (what a
    ``contractive`` claim rules out), as opposed to a draw outside a regime.
    """

    why: str
    solver: str | None = None
    status: str | None = None
    rho: float | None = None
    scale: float | None = None
    convergence: bool = False


@dataclass
class Tally:
    """The draws of one run of a property: how many ran, how many were checked, and each rejection's reason."""

    draws: int = 0
    checked: int = 0
    rejections: list[Rejection] = field(default_factory=list)
    #: Draws rejected by an ``assume`` that gave no reason.
    unexplained: int = 0
    #: The reason :func:`reject` gave in the running draw, until :func:`tallying` files it when the draw ends.
    pending: Rejection | None = None

    def summary(self) -> str:
        """One line: what the rejected draws lacked, grouped by reason (module docstring)."""
        groups: dict[str, list[Rejection]] = {}
        for rejection in self.rejections:
            groups.setdefault(rejection.why, []).append(rejection)
        rejected = len(self.rejections) + self.unexplained
        parts = [_group(why, found) for why, found in groups.items()]
        if self.unexplained:
            parts.append(f"{self.unexplained} rejected by an assumption that gave no reason")
        if len(groups) == 1 and not self.unexplained and rejected == self.draws:
            why, found = next(iter(groups.items()))
            return f"{why} in {len(found)} draws" + "".join(f"; {d}" for d in _details(found))
        if self.checked:
            head = f"{rejected} of {self.draws} draws rejected ({self.checked} checked)"
        else:
            head = f"nothing checked in {self.draws} draws"
        return head + ": " + "; ".join(parts)


def _group(why: str, found: Sequence[Rejection]) -> str:
    details = _details(found)
    return f"{why} in {len(found)}" + (f" ({'; '.join(details)})" if details else "")


def _details(found: Sequence[Rejection]) -> list[str]:
    """The solvers' statuses and the range of rho at the last iterate, over one group of rejections."""
    details = []
    statuses: Counter[tuple[str, str]] = Counter(
        (r.solver or "solve", STATUS_WORDS.get(r.status, r.status)) for r in found if r.status is not None
    )
    by_solver: dict[str, list[str]] = {}
    for (solver, status), n in statuses.items():
        by_solver.setdefault(solver, []).append(f"{n} {status}")
    details += [f"{solver}: {', '.join(counted)}" for solver, counted in by_solver.items()]
    rhos = [r.rho for r in found if r.rho is not None]
    if rhos:
        label = "rho at the last iterate" if any(r.convergence for r in found) else "rho(J*)"
        details.append(f"{label} {_range(rhos)}")
    scales = [r.scale for r in found if r.scale is not None]
    if scales:
        details.append(f"weight scales {_range(scales)}")
    return details


def _range(values: Sequence[float]) -> str:
    """ "lo-hi" ("0.98-1.00"); "lo to hi" where a number needs an exponent ("3.2e-12 to 0.50")."""
    lo, hi = (_number(v) for v in (min(values), max(values)))
    return f"{lo}-{hi}" if "e" not in lo + hi else f"{lo} to {hi}"


def _number(value: float) -> str:
    return f"{value:.2f}" if value == 0 or (math.isfinite(value) and 0.01 <= abs(value) < 1000) else f"{value:.2g}"


_RUNNING: list[Tally] = []


def reject(
    why: str,
    *,
    solver: str | None = None,
    status: str | None = None,
    rho: float | None = None,
    scale: float | None = None,
    convergence: bool = False,
) -> NoReturn:
    """Reject the current draw (as ``hypothesis.assume(False)``), recording why for the running tally."""
    from hypothesis.errors import UnsatisfiedAssumption

    if _RUNNING:
        _RUNNING[-1].pending = Rejection(why, solver, status, rho, scale, convergence)
    raise UnsatisfiedAssumption(why)


@contextmanager
def tallying(test: Any) -> Iterator[Tally]:
    """Count the draws of the Hypothesis test ``test`` (a @given function, or a wrapper whose ``hypothesis``
    handle is the @given one's) while the block runs, by wrapping the handle's ``inner_test``, the function
    Hypothesis calls once per draw (it exists for plugins to wrap). Any other test just gets an empty tally."""
    from hypothesis.errors import StopTest, UnsatisfiedAssumption

    tally = Tally()
    handle = getattr(test, "hypothesis", None)
    inner = getattr(handle, "inner_test", None)

    def counted(*args: Any, **kwargs: Any) -> Any:
        tally.draws += 1
        tally.pending = None
        try:
            result = inner(*args, **kwargs)  # type: ignore[misc]
        except UnsatisfiedAssumption:
            if tally.pending is None:
                tally.unexplained += 1
            else:
                tally.rejections.append(tally.pending)
            raise
        except StopTest:
            # Hypothesis abandoned the draw (its choice budget ran out mid-test): neither checked nor rejected.
            tally.draws -= 1
            raise
        except BaseException:
            tally.checked += 1
            raise
        tally.checked += 1
        return result

    _RUNNING.append(tally)
    if inner is not None:
        handle.inner_test = functools.wraps(inner)(counted)  # type: ignore[union-attr]
    try:
        yield tally
    finally:
        if inner is not None:
            handle.inner_test = inner  # type: ignore[union-attr]
        _RUNNING.remove(tally)


def gave_up(error: BaseException) -> bool:
    """Whether Hypothesis gave up on the property for want of draws that got past its rejections."""
    from hypothesis.errors import FailedHealthCheck, Unsatisfiable

    if isinstance(error, Unsatisfiable):
        return True
    return isinstance(error, FailedHealthCheck) and "filter_too_much" in str(error)


def not_reached_reason(tally: Tally) -> str | None:
    """The one-line reason of a run on which Hypothesis gave up: where no draw was checked and some rejection said
    why, the tally's summary; where a few draws were checked (each held, or Hypothesis would have reported that
    failure instead) and every rejection said why, the same prefixed with "too few draws checked" (a layer that
    converges in a few draws only); else None (an unlabelled ``assume`` cannot say what the layer lacked)."""
    if not tally.rejections:
        return None
    if not tally.checked:
        return tally.summary()
    if tally.unexplained:
        return None
    return f"too few draws checked, each held; {tally.summary()}"


def refuted_claim(tally: Tally, scales: tuple[float, float] | None) -> str | None:
    """With a claim that the layer contracts at weight scales ``scales`` (None: no claim): what refutes it among
    the rejections (a draw at a claimed scale without a converged, locally stable fixed point), else None."""
    if scales is None:
        return None
    lo, hi = scales
    against = [r for r in tally.rejections if r.convergence and r.scale is not None and lo <= r.scale <= hi]
    if not against:
        return None
    return (
        f"the variant claims contractive at weight scales [{lo:g}, {hi:g}], yet {len(against)} draws there had no "
        f"converged, locally stable fixed point: {Tally(len(against), rejections=against).summary()}"
    )


def not_reached(reason: str) -> NoReturn:
    """End the test with the verdict "not reached" (a pytest skip whose reason starts with NOT_REACHED_PREFIX)."""
    raise pytest.skip.Exception(NOT_REACHED_PREFIX + reason, _use_item_location=True)
