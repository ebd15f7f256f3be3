"""Scalar metrics from a sweep's runs: what a baseline stores and a regression compares.

Every metric is a float (or None when there is nothing to summarise, e.g. the
median iteration count of a method that never converged). Quantiles are
numpy's linear-interpolation quantiles over the runs that qualify; fractions
are over every run. Names are dotted paths built by :mod:`iqa.metrics`, whose
table says for each whether lower or higher is better, its unit, whether it is
deterministic (wall-clock times are not) and how much it may move in a regression.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from iqa import metrics as names
from iqa.grad import BACKWARD_MODES
from iqa.metrics import QUANTILES
from iqa.solvers import Status


def quantile(values: Iterable[float | None], q: float) -> float | None:
    """The q-quantile (numpy 'linear') of the values that are not None; None if there are none."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return None
    return float(np.quantile(np.asarray(data, dtype=np.float64), q))


def fraction(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def below_one_fraction(values: list[float | None]) -> float | None:
    """The share of all runs whose value (the best certificate kappa, rho at the token mean) is < 1.

    A run without a value proves nothing and counts as not below one, so the share is of every run, as the
    report words it ("Share of runs with a certificate κ < 1"); None when no run has a value (the quantity
    does not apply to the variant).
    """
    if all(v is None for v in values):
        return None
    return fraction([v is not None and v < 1 for v in values])


def _quantiles(
    metrics: dict[str, float | None], quantity: str, values: list[float | None], keys: Iterable[str]
) -> None:
    for key in keys:
        metrics[names.quantile(quantity, key)] = quantile(values, QUANTILES[key])


def summarize(
    runs: list[dict[str, Any]],
    gradients: list[dict[str, Any]],
    saved: dict[str, Any],
    timing: dict[str, list[float]],
    methods: Iterable[str],
) -> dict[str, float | None]:
    """The metrics (module docstring) of one variant's sweep."""
    m: dict[str, float | None] = {names.RUNS: float(len(runs)), names.GRADIENT_CELLS: float(len(gradients))}
    for method in methods:
        statuses = [r[method]["status"] for r in runs]
        converged = [r for r in runs if r[method]["status"] == Status.CONVERGED.value]
        for q in ("p50", "p95"):
            m[names.iterations(method, q)] = quantile([r[method]["steps"] for r in converged], QUANTILES[q])
        for fraction_name, counted in _STATUS_FRACTIONS.items():
            m[names.status_fraction(method, fraction_name)] = fraction([s in counted for s in statuses])
        for q in ("p50", "p95"):
            m[names.rate(method, q)] = quantile([r[method]["rate"] for r in converged], QUANTILES[q])
        seconds, steps = timing.get(method, [0.0, 0.0])
        m[names.time_per_step(method)] = 1e6 * seconds / steps if steps else None
    kappas = [r["kappa"]["best"] if r["kappa"] else None for r in runs]
    _quantiles(m, names.KAPPA, kappas, QUANTILES)
    m[names.below_one(names.KAPPA)] = below_one_fraction(kappas)
    rhos = [r["rho"] for r in runs]
    _quantiles(m, names.RHO, rhos, QUANTILES)
    m[names.RHO_FAILED_RUNS] = float(sum(bool(r.get("rho_failed")) for r in runs))
    rho_c = [r["rho_consensus"] for r in runs]
    _quantiles(m, names.RHO_CONSENSUS, rho_c, QUANTILES)
    m[names.below_one(names.RHO_CONSENSUS)] = below_one_fraction(rho_c)
    _quantiles(m, names.CONSENSUS_DISTANCE, [r["consensus_distance"] for r in runs], QUANTILES)
    _quantiles(m, names.WEIGHT_GRAD_NORM, [g["weight_grad_norm"] for g in gradients], QUANTILES)
    depths = sorted({int(t) for g in gradients for t in g["unrolled_error"]})
    for T in depths:
        for q in ("p50", "p95"):
            m[names.unrolled_error(T, q)] = quantile([g["unrolled_error"][str(T)] for g in gradients], QUANTILES[q])
    settings = sorted({k for g in gradients for k in g["phantom_error"]})
    for setting in settings:
        for q in ("p50", "p95"):
            m[names.phantom_error(setting, q)] = quantile(
                [g["phantom_error"][setting] for g in gradients], QUANTILES[q]
            )
    for mode in BACKWARD_MODES:
        for T, count in zip(saved["T"], saved["bytes"][mode]):
            m[names.saved_bytes(mode, T)] = float(count)
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in m.items()}


#: The statuses each per-method fraction counts (diverged includes non-finite).
_STATUS_FRACTIONS = {
    "converged": (Status.CONVERGED.value,),
    "cycle": (Status.CYCLE.value,),
    "max_iter": (Status.MAX_ITER.value,),
    "diverged": (Status.DIVERGED.value, Status.NONFINITE.value),
}
assert tuple(_STATUS_FRACTIONS) == names.STATUS_FRACTIONS


def metric_info(name: str) -> dict[str, Any]:
    """How a metric is judged (:func:`iqa.metrics.metric_info`: the one table)."""
    return names.metric_info(name)
