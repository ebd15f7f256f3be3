"""``iqa regress``: a variant's metrics against a stored baseline, metric by metric.

    iqa regress [VARIANT ...] [--baseline FILE] [--update [--sweep NAME] [--properties]]
                [--max-time-ratio R] [--jobs N]

With no VARIANT, every built-in variant is checked against
``reports/baselines/<name>.json``. The variant is measured
(:func:`iqa.measure.measure_variant`) on the baseline's own sweep, and each
metric is compared with a direction-aware rule (:data:`RULES`): only a change
for the worse by more than the rule's allowance fails, and each allowance says
why it is that size. Wall-clock metrics are shown but fail only beyond an
explicit ``--max-time-ratio``. If the baseline holds property verdicts, the
property suite runs on the variant too, and a property that turns bad
(fail or unexpected pass) fails. The result is a Markdown table (before,
after, ratio, the limit, the verdict per metric) and the exit status: 0 no
regression, 1 a regression, 2 a usage error or a missing, corrupt or
mismatched baseline (which is left untouched).

``--update`` (re)writes the baseline atomically, on the baseline's own sweep
when it exists (``--sweep`` picks a preset instead, and is the sweep of a new
baseline: :data:`SWEEPS`); it never writes over a file it cannot read.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

import iqa
from iqa.baseline import Baseline, BaselineError, load, save
from iqa.measure import QUICK, Sweep, measure_variant
from iqa.variants import Variant, VariantError, builtin_variants, resolve
from iqa.verdicts import BAD_VERDICTS, property_verdicts

#: The sweep of a new built-in baseline: both sides of the contraction boundary (s = 0.5 .. 3, THEORY.md),
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
    memory_shape=(8, 8),
)
SWEEPS = {"regress": REGRESS, "quick": QUICK}

LOWER, HIGHER = "lower", "higher"
OK, BETTER, WORSE, SHOWN, NEW, MISSING = "ok", "better", "WORSE", "shown", "new", "MISSING"


@dataclass(frozen=True)
class Rule:
    """How a metric may change: ``better`` direction (None: shown, never fails) and the allowance
    absolute + relative * |before| by which it may get worse, or with ``max_ratio`` the most that
    after / before may be instead (judged only for a positive before); ``reason`` says why."""

    better: str | None
    absolute: float = 0.0
    relative: float = 0.0
    reason: str = ""
    max_ratio: float | None = None

    def limit(self, before: float) -> float:
        """The worst value that still passes."""
        if self.max_ratio is not None:
            return before * self.max_ratio
        allowance = self.absolute + self.relative * abs(before)
        return before + allowance if self.better == LOWER else before - allowance


def rules(sweep: Sweep, runs: int, max_time_ratio: float | None = None) -> list[tuple[str, Rule]]:
    """(pattern, rule) for the metrics of :mod:`iqa.measure`; the first pattern that matches applies.

    Wall-clock metrics are descriptive unless ``max_time_ratio`` (``--max-time-ratio``) bounds after / before.
    """
    one_run = 1.0 / max(runs, 1)
    wall_clock = "wall clock: shown; fails only beyond --max-time-ratio"
    return [
        (
            r"\.time_per_step_us$",
            Rule(None, reason=wall_clock)
            if max_time_ratio is None
            else Rule(LOWER, reason=wall_clock, max_ratio=max_time_ratio),
        ),
        (
            r"\.iterations\.p\d\d$",
            Rule(
                LOWER,
                1.0,
                0.05,
                "deterministic; FP reordering moves a residual across tol by one step, "
                "and quantiles interpolate between runs (5%)",
            ),
        ),
        (
            r"\.converged_fraction$",
            Rule(HIGHER, one_run, 0.0, "one run may cross the tol or max_iter boundary under FP reordering"),
        ),
        (
            r"\.(cycle|max_iter|diverged)_fraction$",
            Rule(LOWER, one_run, 0.0, "one run may cross the tol or max_iter boundary under FP reordering"),
        ),
        (
            r"\.rate\.p\d\d$",
            Rule(
                LOWER,
                0.01,
                0.0,
                "an observed rate (r_T / r_1)^(1/T) moves ~|log r| / T under one step's change; "
                "a weaker contraction moves it by tenths",
            ),
        ),
        (
            r"^(kappa|rho|rho_consensus)\.p\d\d$",
            Rule(
                LOWER,
                0.0,
                0.01,
                "functions of weights, x and y* (solved to tol): FP noise is far below 1%, and "
                "1% of rho changes steps ~ 1 / log(1 / rho) by < 10% for rho <= 0.9",
            ),
        ),
        (
            r"\.below_one_fraction$",
            Rule(HIGHER, one_run, 0.0, "one run's certificate or rho may cross 1 under FP reordering"),
        ),
        (
            r"^(unrolled|phantom)_error\.",
            Rule(
                LOWER,
                10 * sweep.tol,
                1.0,
                "below ~tol the error is the solves' own residual; above it, errors "
                "scale like rho^T, so a lost contraction costs orders of magnitude, far beyond a factor 2",
            ),
        ),
        (r"^saved_bytes\.", Rule(LOWER, 0.0, 0.0, "counted exactly, storage by storage (iqa.memory)")),
        (r"^gradient_cells$", Rule(HIGHER, 0.0, 0.0, "cells whose solves converged for the gradient checks")),
    ]


def rule_for(name: str, table: list[tuple[str, Rule]]) -> Rule:
    for pattern, rule in table:
        if re.search(pattern, name):
            return rule
    return Rule(None, reason="descriptive: shown, never fails")


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
    if (after > limit) if rule.better == LOWER else (after < limit):
        return Row(name, before, after, shown, WORSE, rule.reason)
    improved = after < before if rule.better == LOWER else after > before
    return Row(name, before, after, shown, BETTER if improved else OK, rule.reason)


def baseline_rules(baseline: Baseline, max_time_ratio: float | None = None) -> list[tuple[str, Rule]]:
    """:func:`rules` for the baseline's own sweep and number of runs."""
    return rules(baseline.sweep, int(baseline.metrics.get("runs") or 0), max_time_ratio)


def compare_metrics(
    baseline: Baseline, metrics: dict[str, float | None], max_time_ratio: float | None = None
) -> list[Row]:
    """One row per metric of the baseline (then any new ones), judged by :func:`baseline_rules`."""
    return judge_metrics(baseline, metrics, baseline_rules(baseline, max_time_ratio))


def judge_metrics(baseline: Baseline, metrics: dict[str, float | None], table: list[tuple[str, Rule]]) -> list[Row]:
    """:func:`compare_metrics` with the rules given: one row per metric of the baseline, then any new ones."""
    runs = baseline.metrics.get("runs")
    if runs != metrics.get("runs"):
        raise BaselineError(
            f"the baseline's sweep gave {runs} runs and now gives {metrics.get('runs')}: "
            "the measurement changed, so its metrics are not comparable; recreate the baseline with --update"
        )
    rows = []
    for name, before in baseline.metrics.items():
        if name == "runs":
            continue
        rule = rule_for(name, table)
        if name not in metrics:
            rows.append(Row(name, before, None, "-", MISSING if rule.better else SHOWN, "not measured any more"))
        else:
            rows.append(_judge(name, before, metrics[name], rule))
    rows += [Row(name, None, value, "-", NEW) for name, value in metrics.items() if name not in baseline.metrics]
    return rows


def compare_verdicts(before: dict[str, str], after: dict[str, str]) -> list[Row]:
    """A property fails when its verdict turns bad (fail, unexpected pass); a property gone is shown."""
    rows = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if new is None:
            rows.append(Row(f"property {name}", old, None, "-", SHOWN, "not in the suite any more"))
            continue
        bad_now, bad_before = new in BAD_VERDICTS, old in BAD_VERDICTS
        status = WORSE if bad_now and not bad_before else (BETTER if bad_before and not bad_now else OK)
        rows.append(Row(f"property {name}", old, new, f"not in {', '.join(BAD_VERDICTS)}", status))
    return rows


@dataclass
class Report:
    """The comparison of one variant with one baseline, and the rules it was judged by."""

    spec: str
    baseline_path: Path
    baseline: Baseline
    rule_table: list[tuple[str, Rule]]
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
        legend += [f"- `{pattern}`: {rule.reason}" for pattern, rule in self.rule_table]
        legend += ["- properties: a verdict that turns to fail or unexpected pass", ""]
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


def run_properties(spec: str, profile: str) -> dict[str, str]:
    """Property verdicts of the suite on one variant: {"file::property": verdict} (runs pytest)."""
    from iqa.cli import UsageError, default_suite
    from iqa.report.properties import start

    try:
        suite = default_suite()
    except UsageError as error:
        raise BaselineError(f"cannot record property verdicts: {error}") from error
    run = start([spec], suite, profile=profile).wait()
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
) -> Report:
    """Measure the variant on the baseline's sweep and compare; raises BaselineError for a bad baseline."""
    variant = resolve(spec)
    path = baseline_file(variant, baseline)
    stored = load(path)
    measurement = measure_variant(_measure_spec(spec, variant), stored.sweep, jobs=jobs, progress=progress)
    table = baseline_rules(stored, max_time_ratio)
    rows = judge_metrics(stored, measurement["metrics"], table)
    if stored.verdicts is not None:
        name = spec if isinstance(spec, str) else variant.name
        rows += compare_verdicts(stored.verdicts, verdicts(name, stored.profile or "ci"))
    return Report(spec if isinstance(spec, str) else variant.name, path, stored, table, rows)


def update(
    spec: str | Variant,
    baseline: str | Path | None = None,
    *,
    sweep: Sweep | None = None,
    properties: bool | None = None,
    profile: str = "ci",
    jobs: int = 1,
    progress: bool = False,
    verdicts: Callable[[str, str], dict[str, str]] = run_properties,
) -> tuple[Path, Baseline, Baseline | None]:
    """(Re)write the baseline; returns (path, new baseline, the old one or None).

    The sweep is ``sweep``, else the existing baseline's, else :data:`REGRESS`;
    property verdicts are recorded when ``properties`` is true, or (None) when
    the existing baseline has them. A file that exists but cannot be read as a
    baseline is an error and stays untouched: remove it to start afresh.
    """
    variant = resolve(spec)
    path = baseline_file(variant, baseline)
    old = load(path) if path.exists() else None
    chosen = sweep or (old.sweep if old is not None else REGRESS)
    record = properties if properties is not None else (old is not None and old.verdicts is not None)
    profile = old.profile if properties is None and old is not None and old.profile else profile
    measurement = measure_variant(_measure_spec(spec, variant), chosen, jobs=jobs, progress=progress)
    found = verdicts(spec if isinstance(spec, str) else variant.name, profile) if record else None
    new = Baseline.from_measurement(measurement, found, profile if record else None)
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
        help="with --update: also record property verdicts (runs the suite, profile ci)",
    )
    parser.add_argument(
        "--max-time-ratio", type=float, metavar="R", help="fail when a wall-clock metric grows by more than R times"
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="measure cells in N processes")
    parser.add_argument("--progress", action="store_true", help="show a progress bar on stderr")


def _usage(args: argparse.Namespace) -> str | None:
    if args.baseline is not None and len(args.variants) != 1:
        return "--baseline needs exactly one VARIANT"
    if (args.sweep or args.properties) and not args.update:
        return "--sweep and --properties only apply with --update (a comparison uses the baseline's own sweep)"
    if args.max_time_ratio is not None and not (args.max_time_ratio > 0 and math.isfinite(args.max_time_ratio)):
        return f"--max-time-ratio must be a finite number > 0, got {args.max_time_ratio}"
    if args.jobs < 1:
        return f"--jobs must be >= 1, got {args.jobs}"
    return None


def main(args: argparse.Namespace) -> int:
    """Run ``iqa regress``; returns 0 (no regression), 1 (a regression) or 2 (an error)."""
    problem = _usage(args)
    if problem is not None:
        print(f"iqa regress: error: {problem}", file=sys.stderr)
        return 2
    specs: list[str] = list(args.variants) or list(builtin_variants())
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
                )
                print(
                    f"iqa regress: wrote {path} ({spec}: {len(new.metrics)} metrics"
                    f"{', property verdicts' if new.verdicts is not None else ''}"
                    f"{'' if old is None else ', replacing the previous baseline'})"
                )
                continue
            report = check(
                spec, args.baseline, max_time_ratio=args.max_time_ratio, jobs=args.jobs, progress=args.progress
            )
        except (BaselineError, VariantError) as error:
            print(f"iqa regress: error: {error}", file=sys.stderr)
            status = 2
            continue
        print(report.markdown())
        if report.regressions and status == 0:
            status = 1
    return status
