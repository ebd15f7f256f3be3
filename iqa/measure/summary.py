"""Scalar metrics from a sweep's runs: what a baseline stores and a regression compares.

Every metric is a float (or None when there is nothing to summarise, e.g. the
median iteration count of a method that never converged). Quantiles are
numpy's linear-interpolation quantiles over the runs that qualify; fractions
are over every run. Names are dotted paths; :func:`metric_info` says for each
whether lower or higher is better, its unit, and whether it is deterministic
(wall-clock times are not).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from iqa.grad import BACKWARD_MODES
from iqa.solvers import Status

QUANTILES = {"p05": 0.05, "p50": 0.5, "p95": 0.95}


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


def _quantiles(metrics: dict[str, float | None], name: str, values: list[float | None], keys: Iterable[str]) -> None:
    for key in keys:
        metrics[f"{name}.{key}"] = quantile(values, QUANTILES[key])


def summarize(
    runs: list[dict[str, Any]],
    gradients: list[dict[str, Any]],
    saved: dict[str, Any],
    timing: dict[str, list[float]],
    methods: Iterable[str],
) -> dict[str, float | None]:
    """The metrics (module docstring) of one variant's sweep."""
    m: dict[str, float | None] = {"runs": float(len(runs)), "gradient_cells": float(len(gradients))}
    for method in methods:
        statuses = [r[method]["status"] for r in runs]
        converged = [r for r in runs if r[method]["status"] == Status.CONVERGED.value]
        _quantiles(m, f"{method}.iterations", [r[method]["steps"] for r in converged], ("p50", "p95"))
        m[f"{method}.converged_fraction"] = fraction([s == Status.CONVERGED.value for s in statuses])
        m[f"{method}.cycle_fraction"] = fraction([s == Status.CYCLE.value for s in statuses])
        m[f"{method}.max_iter_fraction"] = fraction([s == Status.MAX_ITER.value for s in statuses])
        bad = (Status.DIVERGED.value, Status.NONFINITE.value)
        m[f"{method}.diverged_fraction"] = fraction([s in bad for s in statuses])
        _quantiles(m, f"{method}.rate", [r[method]["rate"] for r in converged], ("p50", "p95"))
        seconds, steps = timing.get(method, [0.0, 0.0])
        m[f"{method}.time_per_step_us"] = 1e6 * seconds / steps if steps else None
    kappas = [r["kappa"]["best"] if r["kappa"] else None for r in runs]
    _quantiles(m, "kappa", kappas, QUANTILES)
    m["kappa.below_one_fraction"] = below_one_fraction(kappas)
    rhos = [r["rho"] for r in runs]
    _quantiles(m, "rho", rhos, QUANTILES)
    m["rho.failed_runs"] = float(sum(bool(r.get("rho_failed")) for r in runs))
    rho_c = [r["rho_consensus"] for r in runs]
    _quantiles(m, "rho_consensus", rho_c, QUANTILES)
    m["rho_consensus.below_one_fraction"] = below_one_fraction(rho_c)
    _quantiles(m, "consensus_distance", [r["consensus_distance"] for r in runs], ("p05", "p50", "p95"))
    _quantiles(m, "weight_grad_norm", [g["weight_grad_norm"] for g in gradients], ("p05", "p50", "p95"))
    depths = sorted({int(t) for g in gradients for t in g["unrolled_error"]})
    for T in depths:
        _quantiles(m, f"unrolled_error.T{T}", [g["unrolled_error"][str(T)] for g in gradients], ("p50", "p95"))
    names = sorted({k for g in gradients for k in g["phantom_error"]})
    for name in names:
        _quantiles(m, f"phantom_error.{name}", [g["phantom_error"][name] for g in gradients], ("p50", "p95"))
    for mode in BACKWARD_MODES:
        for T, count in zip(saved["T"], saved["bytes"][mode]):
            m[f"saved_bytes.{mode}.T{T}"] = float(count)
    return {k: (v if v is None or math.isfinite(v) else None) for k, v in m.items()}


_INFO = [
    # (pattern, better, unit, deterministic); the last pattern that matches wins
    (r"\.iterations\.", "lower", "steps", True),
    (r"\.converged_fraction$", "higher", "fraction", True),
    (r"\.(cycle|max_iter|diverged)_fraction$", "lower", "fraction", True),
    (r"^(picard|anderson)\.rate\.", "lower", "ratio per step", True),
    (r"\.time_per_step_us$", "lower", "microseconds", False),
    (r"^(kappa|rho|rho_consensus)\.", None, "ratio per step", True),
    (r"^kappa\.below_one_fraction$", None, "fraction", True),
    (r"^rho_consensus\.below_one_fraction$", None, "fraction", True),
    (r"^consensus_distance\.", None, "relative", True),
    (r"^weight_grad_norm\.", None, "gradient norm", True),
    (r"^(unrolled|phantom)_error\.", "lower", "relative", True),
    (r"^saved_bytes\.", "lower", "bytes", True),
    (r"^(runs|gradient_cells)$", None, "count", True),
    (r"^rho\.failed_runs$", "lower", "count", True),
]


def metric_info(name: str) -> dict[str, Any]:
    """{"better": "lower" | "higher" | None (descriptive), "unit": str, "deterministic": bool} for a metric."""
    info: dict[str, Any] = {"better": None, "unit": "", "deterministic": True}
    for pattern, better, unit, deterministic in _INFO:
        if re.search(pattern, name):
            info = {"better": better, "unit": unit, "deterministic": deterministic}
    return info
