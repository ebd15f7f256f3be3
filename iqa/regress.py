"""``iqa regress``: a variant's metrics against a stored baseline, metric by metric.

    iqa regress [VARIANT ...] [--baseline FILE] [--update [--sweep NAME] [--properties] [--training]]
                [--max-time-ratio R] [--jobs N | --scheduler ADDRESS] [--suite DIR]

With no VARIANT, every built-in variant is checked against
``reports/baselines/<name>.json``. The variant is measured
(:func:`iqa.measure.measure_variant`) on the baseline's own sweep, and each
metric is compared with a direction-aware rule from the one metric table
(:mod:`iqa.metrics`): only a change for the worse by more than the metric's
allowance fails, and each allowance says why it is that size; a change for
the better by more than the allowance is "better", anything within it "ok".
Wall-clock metrics are shown but fail only beyond an explicit
``--max-time-ratio``. If the baseline holds property verdicts, the property
suite runs on the variant too, and a property that turns bad (fail or
unexpected pass), or that had something to check in the baseline and is now
"not reached", fails. If it holds training metrics (``--update --training``),
the variant is trained again (:func:`iqa.train.training_metrics`, same seed and
set-up) and a variant that trains worse or destabilises regresses. The result is a Markdown table (before,
after, ratio, the limit, the verdict per metric) and the exit status: 0 no
regression, 1 a regression (or the variant failed while it was measured), 2 a usage error or a missing, corrupt or
mismatched baseline (which is left untouched).

``--update`` (re)writes the baseline atomically, on the baseline's own sweep
when it exists (``--sweep`` picks a preset instead, and is the sweep of a new
baseline: :data:`SWEEPS`); it never writes over a file it cannot read.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

import iqa
from iqa import metrics
from iqa.baseline import Baseline, BaselineError, Training, load, save
from iqa.measure import QUICK, DomainError, MeasurementError, SchedulerError, Sweep, dask_pool, measure_variant
from iqa.metrics import LOWER, Metric
from iqa.suite import RECORDED_PROFILE, SuiteError, locate, start
from iqa.variants import Variant, VariantError, builtin_variants, resolve
from iqa.verdicts import BAD_VERDICTS, EXPECTED_FAILURE, NOT_REACHED, PASS, REACHED_VERDICTS, property_verdicts

#: The sweep of a new built-in baseline: both sides of the contraction boundary (s = 0.5 .. 3, docs/theory.md#regimes),
#: token counts where the consensus and the weight-dependent fixed points differ, and unrolled depths up to
#: where rho^T reaches the solver tolerance; about 10 s per variant on one core.
REGRESS = Sweep(
    tokens=(4, 8, 16),
    dims=(4, 8),
    scales=(0.5, 1.0, 1.5, 2.0, 3.0),
    seeds=(0, 1),
    batch=4,
    unrolled_T=(1, 4, 16, 64),
    phantom=((1, 1.0), (5, 0.5)),
    gradient_seeds=2,
    saved_bytes_shape=(8, 8),
)
SWEEPS = {"regress": REGRESS, "quick": QUICK}

OK, BETTER, WORSE, SHOWN, NEW, MISSING = "ok", "better", "WORSE", "shown", "new", "MISSING"
#: The reason shown for a metric that :mod:`iqa.metrics` does not declare (e.g. one a newer iqa dropped).
UNDECLARED = "not declared in iqa.metrics: shown, never fails"


@dataclass(frozen=True)
class Rule:
    """How a metric may change, from its :class:`iqa.metrics.Metric` on one baseline.

    ``better`` is the direction (None: shown, never fails). A change for the worse fails beyond the metric's
    allowance for ``runs`` runs and solver tolerance ``tol``, or, with ``max_ratio`` (wall clock, only with
    ``--max-time-ratio``), when after / before exceeds it (judged only for a positive before).
    """

    better: str | None
    reason: str
    metric: Metric | None = None
    runs: int = 0
    tol: float = 0.0
    max_ratio: float | None = None

    def limit(self, before: float) -> float:
        """The worst value that still passes."""
        if self.max_ratio is not None:
            return before * self.max_ratio
        allowance = self.metric.allowance(before, runs=self.runs, tol=self.tol) if self.metric is not None else 0.0
        return before + allowance if self.better == LOWER else before - allowance

    def worse(self, before: float, after: float) -> bool:
        """Whether ``after`` is worse than ``before`` beyond the allowance."""
        limit = self.limit(before)
        return after > limit if self.better == LOWER else after < limit

    def better_than(self, before: float, after: float) -> bool:
        """Whether ``after`` improved on ``before`` by more than the allowance: going back from ``after`` to
        ``before`` would be a regression. Equal values, and changes within the noise, are never better."""
        return self.worse(after, before)


def rule_for(name: str, *, runs: int, tol: float, max_time_ratio: float | None = None) -> Rule:
    """The rule for one metric: its entry of :data:`iqa.metrics.TABLE` on a sweep of ``runs`` runs at ``tol``.

    A non-deterministic (wall-clock) metric is shown unless ``max_time_ratio`` bounds after / before.
    """
    metric = metrics.find(name)
    if metric is None:
        return Rule(None, UNDECLARED)
    if not metric.deterministic:
        if max_time_ratio is None or metric.better is None:
            return Rule(None, metric.reason, metric)
        return Rule(metric.better, metric.reason, metric, max_ratio=max_time_ratio)
    return Rule(metric.better, metric.reason, metric, runs=runs, tol=tol)


def baseline_rule(baseline: Baseline, name: str, max_time_ratio: float | None = None) -> Rule:
    """:func:`rule_for` on the baseline's own sweep and number of runs."""
    runs = int(baseline.metrics.get(metrics.RUNS) or 0)
    return rule_for(name, runs=runs, tol=baseline.sweep.tol, max_time_ratio=max_time_ratio)


@dataclass(frozen=True)
class Row:
    """One compared metric or property."""

    name: str
    before: Any
    after: Any
    limit: str
    status: str
    reason: str = ""

    @property
    def ratio(self) -> float | None:
        if isinstance(self.before, float) and isinstance(self.after, float) and self.before != 0:
            return self.after / self.before
        return None


def _judge(name: str, before: float | None, after: float | None, rule: Rule) -> Row:
    if rule.better is None:
        return Row(name, before, after, "-", SHOWN, rule.reason)
    if rule.max_ratio is not None:
        if before is None or after is None or before <= 0:
            return Row(name, before, after, "-", SHOWN, rule.reason)
        worse = after / before > rule.max_ratio
        return Row(name, before, after, f"ratio <= {rule.max_ratio:g}", WORSE if worse else OK, rule.reason)
    if before is None:
        return Row(name, before, after, "-", OK if after is None else BETTER, rule.reason)
    limit = rule.limit(before)
    shown = f"{'<=' if rule.better == LOWER else '>='} {_number(limit)}"
    if after is None:  # e.g. no run converged any more, so there is no iteration count
        return Row(name, before, after, shown, WORSE, rule.reason)
    if rule.worse(before, after):
        return Row(name, before, after, shown, WORSE, rule.reason)
    return Row(name, before, after, shown, BETTER if rule.better_than(before, after) else OK, rule.reason)


def compare_metrics(
    baseline: Baseline, measured: dict[str, float | None], max_time_ratio: float | None = None
) -> list[Row]:
    """One row per metric of the baseline, then any new ones, each judged by its :func:`baseline_rule`."""
    runs = baseline.metrics.get(metrics.RUNS)
    if runs != measured.get(metrics.RUNS):
        raise BaselineError(
            f"the baseline's sweep gave {runs} runs and now gives {measured.get(metrics.RUNS)}: "
            "the measurement changed, so its metrics are not comparable; recreate the baseline with --update"
        )
    rows = []
    for name, before in baseline.metrics.items():
        if name == metrics.RUNS:
            continue
        rule = baseline_rule(baseline, name, max_time_ratio)
        if name not in measured:
            rows.append(Row(name, before, None, "-", MISSING if rule.better else SHOWN, "not measured any more"))
        else:
            rows.append(_judge(name, before, measured[name], rule))
    rows += [Row(name, None, value, "-", NEW) for name, value in measured.items() if name not in baseline.metrics]
    return rows


#: What a property's verdict must keep to, as the table's limit column says it.
VERDICT_LIMIT = f"not in {', '.join(BAD_VERDICTS)}; reached if it was"


def compare_verdicts(before: dict[str, str], after: dict[str, str]) -> list[Row]:
    """A property fails when its verdict turns bad (fail, unexpected pass), or when it had something to check in
    the baseline and is now "not reached" (the variant stopped giving it converged fixed points or its regime:
    a failure that turns into "not reached" is not fixed either); a property gone is shown."""
    rows = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if new is None:
            rows.append(Row(f"property {name}", old, None, "-", SHOWN, "not in the suite any more"))
            continue
        bad_now, bad_before = new in BAD_VERDICTS, old in BAD_VERDICTS
        lost = new == NOT_REACHED and old in REACHED_VERDICTS
        if (bad_now and not bad_before) or lost:
            status = WORSE
        elif (bad_before and not bad_now) or (old == NOT_REACHED and new in (PASS, EXPECTED_FAILURE)):
            status = BETTER
        else:
            status = OK
        reason = "reached in the baseline, nothing to check now" if lost else ""
        rows.append(Row(f"property {name}", old, new, VERDICT_LIMIT, status, reason))
    return rows


def compare_training(stored: Training, measured: dict[str, float | None]) -> list[Row]:
    """The training metrics against the baseline's, each judged by its entry of the metric table (one run, no
    solver-tolerance term: a training run's allowances are absolute and relative)."""
    rows = []
    for name, before in stored.metrics.items():
        rule = rule_for(name, runs=1, tol=0.0)
        if name not in measured:
            rows.append(Row(name, before, None, "-", MISSING if rule.better else SHOWN, "not measured any more"))
        else:
            rows.append(_judge(name, before, measured[name], rule))
    rows += [Row(name, None, value, "-", NEW) for name, value in measured.items() if name not in stored.metrics]
    return rows


def _training_metrics(spec: str | Variant, *, seed: int, quick: bool) -> dict[str, float | None]:
    from iqa.train import training_metrics  # imported here: training pulls in its own modules

    return training_metrics(spec, seed=seed, quick=quick)


#: What trains a variant and returns its training metrics (a test passes a stand-in).
Trainer = Callable[..., dict[str, float | None]]


@dataclass
class Report:
    """The comparison of one variant with one baseline, and the rules it was judged by."""

    spec: str
    baseline_path: Path
    baseline: Baseline
    rows: list[Row] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.status in (WORSE, MISSING)]

    def markdown(self) -> str:
        sweep = self.baseline.sweep
        head = [
            f"### iqa regress: {self.spec} against {self.baseline_path} (measured on {self.baseline.variant!r})",
            "",
            f"sweep: N {list(sweep.tokens)}, D {list(sweep.dims)}, s {list(sweep.scales)}, seeds "
            f"{list(sweep.seeds)}, batch {sweep.batch}, {sweep.dtype}, tol {sweep.tol:g}, max_iter {sweep.max_iter}",
            "",
        ]
        body = [[r.name, _cell(r.before), _cell(r.after), _cell(r.ratio), r.limit, r.status] for r in self.rows]
        table = tabulate(
            body, headers=["metric", "before", "after", "after/before", "limit", "verdict"], tablefmt="github"
        )
        worse = self.regressions
        tail = f"**{len(worse)} regression(s):** " + ", ".join(r.name for r in worse) if worse else "**no regression**"
        legend = ["", "limits (only a change for the worse beyond its limit fails):"]
        names = [r.name for r in self.rows]
        legend += [f"- `{m.pattern}`: {m.reason}" for m in metrics.TABLE if any(m.matches(n) for n in names)]
        legend += [
            "- properties: a verdict that turns to fail or unexpected pass, or to not reached from one that had "
            "something to check",
            "",
        ]
        return "\n".join([*head, table, "", tail, *legend])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _number(value: float) -> str:
    """4 significant digits, but whole numbers (steps, bytes, counts) in full."""
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.4g}"


def default_baseline_dir() -> Path:
    """reports/baselines beside the package source (an editable install), else ./reports/baselines."""
    beside = Path(iqa.__file__).resolve().parent.parent / "reports" / "baselines"
    return beside if beside.is_dir() else Path.cwd() / "reports" / "baselines"


def baseline_file(variant: Variant, path: str | Path | None = None) -> Path:
    return Path(path) if path is not None else default_baseline_dir() / f"{variant.name}.json"


def _measure_spec(spec: str | Variant, variant: Variant) -> str | Variant:
    """What measure_variant gets: the spec string, which worker processes can resolve again."""
    return spec if isinstance(spec, str) else variant


def run_properties(spec: str, profile: str, suite: str | Path | None = None) -> dict[str, str]:
    """Property verdicts of the suite on one variant: {"file::property": verdict} (runs pytest, iqa.suite)."""
    try:
        run = start([spec], locate(suite), profile=profile).wait()
    except SuiteError as error:
        raise BaselineError(f"cannot record property verdicts: {error}") from error
    if run.error is not None:
        raise BaselineError(f"the property suite did not run for {spec}: {run.error}")
    records = [r for records in run.by_variant.values() for r in records]
    return {f"{row['file']}::{row['property']}": row["verdict"] for row in property_verdicts(records)}


def check(
    spec: str | Variant,
    baseline: str | Path | None = None,
    *,
    max_time_ratio: float | None = None,
    jobs: int = 1,
    progress: bool = False,
    verdicts: Callable[[str, str], dict[str, str]] = run_properties,
    pool: concurrent.futures.Executor | None = None,
    trainer: Trainer | None = None,
) -> Report:
    """Measure the variant on the baseline's sweep (and train it, when the baseline holds training metrics)
    and compare; raises BaselineError for a bad baseline."""
    trainer = trainer or _training_metrics
    variant = resolve(spec)
    path = baseline_file(variant, baseline)
    stored = load(path)
    measurement = measure_variant(_measure_spec(spec, variant), stored.sweep, jobs=jobs, progress=progress, pool=pool)
    rows = compare_metrics(stored, measurement["metrics"], max_time_ratio)
    if stored.verdicts is not None:
        name = spec if isinstance(spec, str) else variant.name
        rows += compare_verdicts(stored.verdicts, verdicts(name, stored.profile or RECORDED_PROFILE))
    if stored.training is not None:
        measured = trainer(_measure_spec(spec, variant), seed=stored.training.seed, quick=stored.training.quick)
        rows += compare_training(stored.training, measured)
    return Report(spec if isinstance(spec, str) else variant.name, path, stored, rows)


def update(
    spec: str | Variant,
    baseline: str | Path | None = None,
    *,
    sweep: Sweep | None = None,
    properties: bool | None = None,
    profile: str = RECORDED_PROFILE,
    jobs: int = 1,
    progress: bool = False,
    verdicts: Callable[[str, str], dict[str, str]] = run_properties,
    pool: concurrent.futures.Executor | None = None,
    training: bool | None = None,
    trainer: Trainer | None = None,
) -> tuple[Path, Baseline, Baseline | None]:
    """(Re)write the baseline; returns (path, new baseline, the old one or None).

    The sweep is ``sweep``, else the existing baseline's, else :data:`REGRESS`;
    property verdicts are recorded when ``properties`` is true, or (None) when
    the existing baseline has them; training metrics likewise with ``training``
    (the old baseline's seed and set-up, else seed 0, the default set-up). A file that exists but cannot be read as a
    baseline is an error and stays untouched: remove it to start afresh.
    """
    variant = resolve(spec)
    path = baseline_file(variant, baseline)
    old = load(path) if path.exists() else None
    chosen = sweep or (old.sweep if old is not None else REGRESS)
    record = properties if properties is not None else (old is not None and old.verdicts is not None)
    profile = old.profile if properties is None and old is not None and old.profile else profile
    measurement = measure_variant(_measure_spec(spec, variant), chosen, jobs=jobs, progress=progress, pool=pool)
    found = verdicts(spec if isinstance(spec, str) else variant.name, profile) if record else None
    new = Baseline.from_measurement(measurement, found, profile if record else None)
    keep_training = training if training is not None else (old is not None and old.training is not None)
    if keep_training:
        seed, quick = (old.training.seed, old.training.quick) if old is not None and old.training else (0, False)
        trained = (trainer or _training_metrics)(_measure_spec(spec, variant), seed=seed, quick=quick)
        new = dataclasses.replace(new, training=Training(seed, quick, trained))
    save(path, new)
    return path, new, old


# --- the command line ---------------------------------------------------------------------------------------------


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``iqa regress`` (iqa.cli builds the parser and calls :func:`main`)."""
    parser.add_argument(
        "variants",
        nargs="*",
        metavar="VARIANT",
        help="registered name, package.module:attr or path/file.py:attr (default: every built-in variant)",
    )
    parser.add_argument("--baseline", metavar="FILE", help="the baseline (default: reports/baselines/<name>.json)")
    parser.add_argument("--update", action="store_true", help="measure and (re)write the baseline instead of comparing")
    parser.add_argument(
        "--sweep", choices=sorted(SWEEPS), help="with --update: measure on this preset, not the baseline's sweep"
    )
    parser.add_argument(
        "--properties",
        action="store_true",
        help=f"with --update: also record property verdicts (runs the suite, profile {RECORDED_PROFILE})",
    )
    parser.add_argument(
        "--training",
        action="store_true",
        help="with --update: also record training metrics (iqa train's, seed 0; a comparison retrains)",
    )
    parser.add_argument(
        "--max-time-ratio", type=float, metavar="R", help="fail when a wall-clock metric grows by more than R times"
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="measure cells in N processes")
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="measure cells on this Dask scheduler instead (e.g. tcp://host:8786; needs iqa[dask])",
    )
    parser.add_argument(
        "--suite",
        metavar="DIR",
        help="the property suite for property verdicts (default: properties/ beside iqa, else ./properties)",
    )
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")


def _usage(args: argparse.Namespace) -> str | None:
    if args.baseline is not None and len(args.variants) != 1:
        return "--baseline needs exactly one VARIANT"
    if (args.sweep or args.properties or args.training) and not args.update:
        return (
            "--sweep, --properties and --training only apply with --update "
            "(a comparison uses what the baseline recorded)"
        )
    if args.max_time_ratio is not None and not (args.max_time_ratio > 0 and math.isfinite(args.max_time_ratio)):
        return f"--max-time-ratio must be a finite number > 0, got {args.max_time_ratio}"
    if args.jobs < 1:
        return f"--jobs must be >= 1, got {args.jobs}"
    if args.scheduler is not None and args.jobs != 1:
        return "--jobs and --scheduler exclude each other (the cluster's workers run the cells)"
    return None


def main(args: argparse.Namespace) -> int:
    """Run ``iqa regress``; returns 0 (no regression), 1 (a regression) or 2 (an error)."""
    problem = _usage(args)
    if problem is not None:
        print(f"iqa regress: error: {problem}", file=sys.stderr)
        return 2
    try:
        suite = locate(args.suite) if args.suite is not None else None
    except SuiteError as error:
        print(f"iqa regress: error: {error}", file=sys.stderr)
        return 2
    verdicts = functools.partial(run_properties, suite=suite)
    specs: list[str] = list(args.variants) or list(builtin_variants())
    try:
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(dask_pool(args.scheduler)) if args.scheduler is not None else None
            return _run(args, specs, verdicts, pool)
    except SchedulerError as error:
        print(f"iqa regress: error: {error}", file=sys.stderr)
        return 2


def _run(
    args: argparse.Namespace,
    specs: list[str],
    verdicts: Callable[[str, str], dict[str, str]],
    pool: concurrent.futures.Executor | None,
) -> int:
    status = 0
    for spec in specs:
        try:
            if args.update:
                sweep = SWEEPS[args.sweep] if args.sweep else None
                path, new, old = update(
                    spec,
                    args.baseline,
                    sweep=sweep,
                    properties=True if args.properties else None,
                    jobs=args.jobs,
                    progress=args.progress,
                    verdicts=verdicts,
                    pool=pool,
                    training=True if args.training else None,
                )
                print(
                    f"iqa regress: wrote {path} ({spec}: {len(new.metrics)} metrics"
                    f"{', property verdicts' if new.verdicts is not None else ''}"
                    f"{', training metrics' if new.training is not None else ''}"
                    f"{'' if old is None else ', replacing the previous baseline'})"
                )
                continue
            report = check(
                spec,
                args.baseline,
                max_time_ratio=args.max_time_ratio,
                jobs=args.jobs,
                progress=args.progress,
                verdicts=verdicts,
                pool=pool,
            )
        except MeasurementError as failure:  # the variant's own failure: a regression, not a usage error
            print(f"iqa regress: {failure}", file=sys.stderr)
            status = 1 if status == 0 else status
            continue
        except (BaselineError, VariantError, DomainError) as error:
            print(f"iqa regress: error: {error}", file=sys.stderr)
            status = 2
            continue
        print(report.markdown())
        if report.regressions and status == 0:
            status = 1
    return status
