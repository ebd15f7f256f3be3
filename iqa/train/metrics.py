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

:data:`METRICS` declares each by a regular expression over the names, with the direction in which it is
better, its unit, the allowance by which it may get worse, and the reason: the same shape as the rows of
``iqa.regress.rules`` so that it merges into the project's metric table.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

LOWER, HIGHER = "lower", "higher"

#: Every training metric's name starts with this.
PREFIX = "train."


@dataclass(frozen=True)
class MetricSpec:
    """A family of metrics (``pattern``, a regex the whole name must match), which way is better (None:
    descriptive), its unit, the reason for its allowance, whether it is deterministic, and the allowance
    absolute + relative * |before| by which it may get worse before it counts as a regression.

    The fields, their names and order are those of ``iqa.metrics.Metric`` (the project's metric table), so the
    table merges as ``register(*(Metric(**dataclasses.asdict(m)) for m in METRICS))``.
    """

    pattern: str
    better: str | None
    unit: str
    reason: str
    deterministic: bool = True
    absolute: float = 0.0
    relative: float = 0.0

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.pattern, name) is not None


#: Training repeats bit for bit on one build (properties/variant/test_training.py). Another BLAS or torch build
#: reorders sums; training amplifies the change over its updates, so the allowances are sized to what a
#: destabilised or mis-trained variant changes (tenths to factors), not to rounding.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "^train\\..*\\.heldout_loss\\.end$",
        LOWER,
        "loss (MSE per token)",
        "deterministic per build; rounding differences grow through training, by far less than the 5% "
        "a worse-training variant loses",
        absolute=0.01,
        relative=0.05,
    ),
    MetricSpec(
        "^train\\..*\\.train_loss\\.last_quarter$",
        LOWER,
        "loss (MSE per token)",
        "a mean over a quarter of the updates: as heldout_loss.end",
        absolute=0.01,
        relative=0.05,
    ),
    MetricSpec(
        "^train\\..*\\.forward_steps\\.p\\d\\d$",
        LOWER,
        "solver steps",
        "steps to tol move by a step or two when rounding moves the weights; a destabilising variant "
        "needs several times more",
        absolute=2.0,
        relative=0.1,
    ),
    MetricSpec(
        "^train\\..*\\.nonconverged_share$",
        LOWER,
        "share of forward solves",
        "a solve near max_iter may cross it under rounding; 2% of the last quarter's solves is a few of them",
        absolute=0.02,
        relative=0.0,
    ),
    MetricSpec(
        "^train\\..*\\.adjoint_nonconverged_share$",
        LOWER,
        "share of adjoint solves",
        "as nonconverged_share: the adjoint iteration has the forward's linearization at y*",
        absolute=0.02,
        relative=0.0,
    ),
    MetricSpec(
        "^train\\..*\\.rho\\.end$",
        LOWER,
        "spectral radius",
        "rho(J*) moves with the trained weights; 0.02 is well below the drift towards 1 the page looks for",
        absolute=0.02,
        relative=0.0,
    ),
    MetricSpec(
        "^train\\..*\\.gradient_cosine\\.last_quarter$",
        HIGHER,
        "cosine",
        "a median cosine; 0.02 lower is far beyond the solves' tol, and a non-descent direction drops it by 1 or more",
        absolute=0.02,
        relative=0.0,
    ),
    MetricSpec(
        "^train\\..*\\.gradient_rel_error\\.last_quarter$",
        LOWER,
        "relative error",
        "errors scale with tol and with rho (unrolled, phantom): a factor 2 plus 0.01 separates rounding "
        "from a lost contraction",
        absolute=0.01,
        relative=1.0,
    ),
    MetricSpec(
        "^train\\..*\\.stopped$",
        LOWER,
        "0 or 1",
        "a run that ends on NaN is a regression",
        absolute=0.0,
        relative=0.0,
    ),
)


def spec_for(name: str) -> MetricSpec | None:
    """The declaration that covers ``name`` (None: not a training metric)."""
    for spec in METRICS:
        if spec.matches(name):
            return spec
    return None


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
            out[f"{PREFIX}{run['task']}.{run['label']}.{name}"] = value
    return out


def regress_rules() -> list[tuple[str, Any]]:
    """:data:`METRICS` as ``iqa.regress`` (pattern, Rule) rows, for a regress run over training metrics."""
    from iqa.regress import Rule  # imported here: iqa.regress imports the sweep machinery

    return [(spec.pattern, Rule(spec.better, spec.absolute, spec.relative, spec.reason)) for spec in METRICS]
