"""The metric table: every scalar metric declared once, with how it is judged and why.

A metric is a float (or None) under a dotted name, e.g. ``picard.iterations.p50``.
Each name matches exactly one :class:`Metric` of the table, which says

- ``better``: ``"lower"``, ``"higher"`` or None (descriptive: shown, never judged);
- ``unit`` and ``deterministic`` (wall-clock times are not);
- the regression allowance: how far the metric may move the wrong way before
  ``iqa regress`` calls it worse, as ``absolute + relative * |before|`` plus
  ``per_run / runs`` (one run crossing a boundary) plus ``per_tol * tol`` (the
  solver tolerance of the sweep), and the ``reason`` that sizes it.

``iqa.measure`` (``metrics.json``'s ``metric_info``), the report pages and
``iqa regress`` all read this table, so a direction cannot differ between them.
The names are built by the functions below, never re-spelled elsewhere.

Another module declares its own metrics with :func:`register` (a training
report, say); a name that matches no entry, or more than one, is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

LOWER, HIGHER = "lower", "higher"
#: The quantiles a summary reports, by suffix.
QUANTILES = {"p05": 0.05, "p50": 0.5, "p95": 0.95}

# --- names ----------------------------------------------------------------------------------------------------------

RUNS = "runs"
GRADIENT_CELLS = "gradient_cells"
KAPPA = "kappa"
RHO = "rho"
RHO_CONSENSUS = "rho_consensus"
CONSENSUS_DISTANCE = "consensus_distance"
WEIGHT_GRAD_NORM = "weight_grad_norm"
RHO_FAILED_RUNS = "rho.failed_runs"
#: Per-method status fractions: the name's middle part -> what it counts.
STATUS_FRACTIONS = ("converged", "cycle", "max_iter", "diverged")


def quantile(quantity: str, q: str) -> str:
    """``<quantity>.<q>``, q one of :data:`QUANTILES` (e.g. ``kappa.p95``)."""
    if q not in QUANTILES:
        raise ValueError(f"unknown quantile {q!r}; choose from {', '.join(QUANTILES)}")
    return f"{quantity}.{q}"


def below_one(quantity: str) -> str:
    """The share of runs whose ``quantity`` (kappa, rho_consensus) is below 1."""
    return f"{quantity}.below_one_fraction"


def iterations(method: str, q: str) -> str:
    """Steps to tol of a solver, quantile over converged runs."""
    return quantile(f"{method}.iterations", q)


def status_fraction(method: str, status: str) -> str:
    """The share of runs of a solver that ended in ``status`` (:data:`STATUS_FRACTIONS`)."""
    if status not in STATUS_FRACTIONS:
        raise ValueError(f"unknown status fraction {status!r}; choose from {', '.join(STATUS_FRACTIONS)}")
    return f"{method}.{status}_fraction"


def rate(method: str, q: str) -> str:
    """The observed convergence rate of a solver, quantile over converged runs."""
    return quantile(f"{method}.rate", q)


def time_per_step(method: str) -> str:
    """Wall-clock microseconds per step of a solver (not deterministic)."""
    return f"{method}.time_per_step_us"


def unrolled_error(T: int, q: str) -> str:
    """Relative error of the unrolled-T gradient against the implicit one."""
    return quantile(f"unrolled_error.T{T}", q)


def phantom_name(k: int, lam: float) -> str:
    """The name of a phantom-gradient setting (k steps, damping lambda)."""
    return f"k{k}_lam{lam:g}"


def phantom_error(setting: str, q: str) -> str:
    """Relative error of the phantom gradient ``setting`` (:func:`phantom_name`) against the implicit one."""
    return quantile(f"phantom_error.{setting}", q)


def saved_bytes(mode: str, T: int) -> str:
    """Bytes autograd saves for backward in a backward mode at T forward steps."""
    return f"saved_bytes.{mode}.T{T}"


# --- the table ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One family of metrics (module docstring): the names it covers and how they are judged."""

    pattern: str
    better: str | None
    unit: str
    reason: str
    deterministic: bool = True
    absolute: float = 0.0
    relative: float = 0.0
    per_run: float = 0.0
    per_tol: float = 0.0
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.better not in (LOWER, HIGHER, None):
            raise ValueError(f"Metric {self.pattern!r}: better must be {LOWER!r}, {HIGHER!r} or None")
        if min(self.absolute, self.relative, self.per_run, self.per_tol) < 0:
            raise ValueError(f"Metric {self.pattern!r}: allowances must be >= 0")
        if not self.reason:
            raise ValueError(f"Metric {self.pattern!r}: say why it is judged as it is (reason)")
        object.__setattr__(self, "regex", re.compile(self.pattern))

    def matches(self, name: str) -> bool:
        return self.regex.fullmatch(name) is not None

    def allowance(self, before: float, *, runs: int, tol: float) -> float:
        """How far the metric may move the wrong way from ``before`` and still pass."""
        return self.absolute + self.relative * abs(before) + self.per_run / max(runs, 1) + self.per_tol * tol

    def info(self) -> dict[str, Any]:
        """What ``metrics.json`` stores about a metric of this family."""
        return {"better": self.better, "unit": self.unit, "deterministic": self.deterministic}


_METHOD = r"(picard|anderson)"
_Q = r"p(05|50|95)"
_ONE_RUN = "one run may cross the tol or max_iter boundary under FP reordering"
_CONTRACTION = (
    "functions of weights, x and y* (solved to tol): FP noise is far below 1%, and 1% of rho changes "
    "steps ~ 1 / log(1 / rho) by < 10% for rho <= 0.9; a larger value proves (kappa) or gives (rho) a "
    "weaker contraction, so lower is better"
)

#: The table (module docstring); :func:`register` adds to it.
TABLE: list[Metric] = [
    Metric(
        rf"{_METHOD}\.iterations\.{_Q}",
        LOWER,
        "steps",
        "deterministic; FP reordering moves a residual across tol by one step, "
        "and quantiles interpolate between runs (5%)",
        absolute=1.0,
        relative=0.05,
    ),
    Metric(rf"{_METHOD}\.converged_fraction", HIGHER, "fraction", _ONE_RUN, per_run=1.0),
    Metric(rf"{_METHOD}\.(cycle|max_iter|diverged)_fraction", LOWER, "fraction", _ONE_RUN, per_run=1.0),
    Metric(
        rf"{_METHOD}\.rate\.{_Q}",
        LOWER,
        "ratio per step",
        "an observed rate (r_T / r_1)^(1/T) moves ~|log r| / T under one step's change; "
        "a weaker contraction moves it by tenths",
        absolute=0.01,
    ),
    Metric(
        rf"{_METHOD}\.time_per_step_us",
        LOWER,
        "microseconds",
        "wall clock: shown; fails only beyond --max-time-ratio",
        deterministic=False,
    ),
    Metric(rf"(kappa|rho)\.{_Q}", LOWER, "ratio per step", _CONTRACTION, relative=0.01),
    Metric(
        r"kappa\.below_one_fraction",
        HIGHER,
        "fraction",
        "the share of runs with a proven contraction; one run's certificate may cross 1 under FP reordering",
        per_run=1.0,
    ),
    Metric(
        r"rho\.failed_runs",
        LOWER,
        "count",
        "runs whose eigenvalue solve failed drop out of the rho quantiles, so more of them is worse; FP "
        "reordering in y* may tip one borderline Jacobian, hence one run of slack",
        absolute=1.0,
    ),
    Metric(
        r"rho_consensus\.(p05|p50|p95|below_one_fraction)",
        None,
        "ratio per step",
        "descriptive: a token mean that attracts (rho_c < 1) is the degenerate fixed point, neither better nor "
        "worse for every variant",
    ),
    Metric(
        r"consensus_distance\.p(05|50|95)",
        None,
        "relative",
        "descriptive: how far y* is from the token mean is what the variant is, not how well it works",
    ),
    Metric(
        r"weight_grad_norm\.p(05|50|95)",
        None,
        "gradient norm",
        "descriptive: the size of the weight gradient depends on the variant's design",
    ),
    Metric(
        r"(unrolled_error\.T\d+|phantom_error\.k\d+_lam[0-9.e+-]+)\.p(50|95)",
        LOWER,
        "relative",
        "below ~tol the error is the solves' own residual; above it, errors scale like rho^T, so a lost "
        "contraction costs orders of magnitude, far beyond a factor 2",
        relative=1.0,
        per_tol=10.0,
    ),
    Metric(
        r"saved_bytes\.(unrolled|implicit|phantom)\.T\d+",
        LOWER,
        "bytes",
        "counted exactly, storage by storage (iqa.memory)",
    ),
    Metric(
        r"runs",
        None,
        "count",
        "the sweep's size: a different count makes a baseline not comparable (an error, not a verdict)",
    ),
    Metric(
        r"gradient_cells",
        HIGHER,
        "count",
        "cells whose whole batch converged, so the gradient checks ran: a lost cell is lost convergence; as for "
        "the converged fractions, one run may cross the tol or max_iter boundary under FP reordering, and with "
        "it its cell",
        absolute=1.0,
    ),
]


# --- training (iqa.train): train.<task>.<run>.<metric> -------------------------------------------------------------

#: Every training metric's name starts with this.
TRAINING_PREFIX = "train."


def training(task: str, run: str, metric: str) -> str:
    """``train.<task>.<run>.<metric>``: a regression metric of one training run (iqa.train.metrics)."""
    return f"{TRAINING_PREFIX}{task}.{run}.{metric}"


#: Training repeats bit for bit on one build (properties/variant/test_training.py). Another BLAS or torch build
#: reorders sums; training amplifies the change over its updates, so the allowances are sized to what a
#: destabilised or mis-trained variant changes (tenths to factors), not to rounding.
TRAINING_TABLE: tuple[Metric, ...] = (
    Metric(
        "^train\\..*\\.heldout_loss\\.end$",
        LOWER,
        "loss (MSE per token)",
        "deterministic per build; rounding differences grow through training, by far less than the 5% "
        "a worse-training variant loses",
        absolute=0.01,
        relative=0.05,
    ),
    Metric(
        "^train\\..*\\.train_loss\\.last_quarter$",
        LOWER,
        "loss (MSE per token)",
        "a mean over a quarter of the updates: as heldout_loss.end",
        absolute=0.01,
        relative=0.05,
    ),
    Metric(
        "^train\\..*\\.forward_steps\\.p\\d\\d$",
        LOWER,
        "solver steps",
        "steps to tol move by a step or two when rounding moves the weights; a destabilising variant "
        "needs several times more",
        absolute=2.0,
        relative=0.1,
    ),
    Metric(
        "^train\\..*\\.nonconverged_share$",
        LOWER,
        "share of forward solves",
        "a solve near max_iter may cross it under rounding; 2% of the last quarter's solves is a few of them",
        absolute=0.02,
        relative=0.0,
    ),
    Metric(
        "^train\\..*\\.adjoint_nonconverged_share$",
        LOWER,
        "share of adjoint solves",
        "as nonconverged_share: the adjoint iteration has the forward's linearization at y*",
        absolute=0.02,
        relative=0.0,
    ),
    Metric(
        "^train\\..*\\.rho\\.end$",
        LOWER,
        "spectral radius",
        "rho(J*) moves with the trained weights; 0.02 is well below the drift towards 1 the page looks for",
        absolute=0.02,
        relative=0.0,
    ),
    Metric(
        "^train\\..*\\.gradient_cosine\\.last_quarter$",
        HIGHER,
        "cosine",
        "a median cosine; 0.02 lower is far beyond the solves' tol, and a non-descent direction drops it by 1 or more",
        absolute=0.02,
        relative=0.0,
    ),
    Metric(
        "^train\\..*\\.gradient_rel_error\\.last_quarter$",
        LOWER,
        "relative error",
        "errors scale with tol and with rho (unrolled, phantom): a factor 2 plus 0.01 separates rounding "
        "from a lost contraction",
        absolute=0.01,
        relative=1.0,
    ),
    Metric(
        "^train\\..*\\.stopped$",
        LOWER,
        "0 or 1",
        "a run that ends on NaN is a regression",
        absolute=0.0,
        relative=0.0,
    ),
)
TABLE.extend(TRAINING_TABLE)


class MetricError(LookupError):
    """A metric name that the table does not declare, or declares twice."""


def register(*metrics: Metric) -> None:
    """Declare more metrics (another module's). A pattern already in the table is an error."""
    known = {m.pattern for m in TABLE}
    for metric in metrics:
        if metric.pattern in known:
            raise ValueError(f"metric pattern {metric.pattern!r} is already declared")
        known.add(metric.pattern)
    TABLE.extend(metrics)


def find(name: str) -> Metric | None:
    """The entry that declares ``name``, or None; two entries that both match are an error."""
    found = [m for m in TABLE if m.matches(name)]
    if len(found) > 1:
        raise MetricError(f"metric {name!r} matches {len(found)} entries: {', '.join(m.pattern for m in found)}")
    return found[0] if found else None


def lookup(name: str) -> Metric:
    """The entry that declares ``name``; an undeclared name is a :class:`MetricError`."""
    metric = find(name)
    if metric is None:
        raise MetricError(f"metric {name!r} is not declared in iqa.metrics (register it)")
    return metric


def metric_info(name: str) -> dict[str, Any]:
    """{"better": "lower" | "higher" | None, "unit": str, "deterministic": bool} for a declared metric."""
    return lookup(name).info()
