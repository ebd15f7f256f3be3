"""The regression metrics of a training page, and the table that declares them.

Each run (task, label) contributes, under ``train.<task>.<label>.``:

- ``heldout_loss.end``: the held-out loss after the last update;
- ``train_loss.last_quarter``: the mean training loss over the last quarter of updates;
- ``forward_steps.p50`` / ``.p95``: forward solver steps per batch element, pooled over the last quarter;
- ``nonconverged_share``: the share of forward solves (batch elements) that did not converge, last quarter;
- ``adjoint_nonconverged_share``: the same for the implicit mode's adjoint solves (None in other modes);
- ``rho.end``: the largest rho(J*) over the held-out batch after the last update;
- ``gradient_cosine.last_quarter``: the median cosine of the mode's gradient with the reference, last quarter;
- ``gradient_rel_error.last_quarter``: the median relative error of it, last quarter;
- ``stopped``: 1 when the run ended early on a non-finite loss or gradient, else 0.

A quarter holds at least one update (or record). A metric with nothing to measure (no reference gradient
in the last quarter, e.g. a consensus fixed point whose gradient vanishes) is None.

Their declarations (direction, unit, allowance and its reason) live in the project's one metric table,
:mod:`iqa.metrics` (``TRAINING_TABLE``), which ``iqa regress`` reads.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from iqa.metrics import TRAINING_PREFIX as PREFIX
from iqa.metrics import TRAINING_TABLE as METRICS
from iqa.metrics import Metric as MetricSpec
from iqa.metrics import find, training


def spec_for(name: str) -> MetricSpec | None:
    """The declaration in :mod:`iqa.metrics` that covers ``name`` (None: not a training metric)."""
    spec = find(name) if name.startswith(PREFIX) else None
    return spec if spec in METRICS else None


def last_quarter(values: list[Any]) -> list[Any]:
    """The last quarter of a list (at least one item)."""
    return values[len(values) - max(1, math.ceil(len(values) / 4)) :]


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (numpy's default), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (position - lo)


def _present(values: list[Any]) -> list[float]:
    return [float(v) for v in values if v is not None]


def run_metrics(run: dict[str, Any]) -> dict[str, float | None]:
    """The metrics of one run record (:func:`iqa.train.loop.train_run`), names without the prefix."""
    updates, records = run["updates"], run["records"]
    steps = [s for per in last_quarter(updates["forward_steps"]) if per is not None for s in per]
    shares = [s for s in last_quarter(updates["forward_status"]) if s is not None]
    adjoint = [s for s in last_quarter(updates["adjoint_status"]) if s is not None]
    losses = _present(last_quarter(updates["train_loss"]))
    cosines = _present([r["gradient_cosine"] for r in last_quarter(records)])
    errors = _present([r["gradient_rel_error"] for r in last_quarter(records)])
    end = records[-1]
    return {
        "heldout_loss.end": end["heldout_loss"] if run["stopped_at"] is None else None,
        "train_loss.last_quarter": statistics.fmean(losses) if losses else None,
        "forward_steps.p50": quantile([float(s) for s in steps], 0.5),
        "forward_steps.p95": quantile([float(s) for s in steps], 0.95),
        "nonconverged_share": statistics.fmean(1.0 - s["converged"] for s in shares) if shares else None,
        "adjoint_nonconverged_share": statistics.fmean(1.0 - s["converged"] for s in adjoint) if adjoint else None,
        "rho.end": end["rho_max"] if run["stopped_at"] is None else None,
        "gradient_cosine.last_quarter": statistics.median(cosines) if cosines else None,
        "gradient_rel_error.last_quarter": statistics.median(errors) if errors else None,
        "stopped": 0.0 if run["stopped_at"] is None else 1.0,
    }


def page_metrics(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Every run's metrics, named ``train.<task>.<label>.<metric>``."""
    out: dict[str, float | None] = {}
    for run in runs:
        for name, value in run_metrics(run).items():
            out[training(run["task"], run["label"], name)] = value
    return out
