"""``iqa report``: measure every variant, run its properties, write Markdown pages with plots.

Layout of the output directory (default ``reports/``)::

    README.md              the index: one row per variant, a comparison figure
    convergence.png        converged fraction against weight scale, all variants
    <variant>/README.md    the variant's page (GitHub shows it when the folder is opened)
    <variant>/*.png        its figures (see iqa.report.markdown.FIGURES)
    <variant>/metrics.json its scalar metrics (without wall-clock times), sweep and versions

The files are written as a set (:mod:`iqa.report.output`): into a staging
directory beside the output directory, swapped in at the end, so an
interrupted run leaves the old reports whole; folders the report does not
write (``baselines/`` and other tools') are kept. The same command with the
same seed writes the same bytes: the property suite runs on the derandomized ``ci``
profile, capped at 10 examples per property (``--quick``: 3, not shrunk),
and timings stay out of the files.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iqa.atomic import write_bytes, write_json, write_text
from iqa.measure import PRESETS, MeasurementError, SchedulerError, Sweep, executor, measure_variants
from iqa.measure import versions as measure_versions
from iqa.report import markdown, plots
from iqa.report.output import RESERVED, OutputError, Staging
from iqa.runtime import configure_threads
from iqa.suite import RECORDED_PROFILE, PropertyRun, SuiteError, locate, start
from iqa.variants import Variant, VariantError, resolve, resolve_all
from iqa.versions import package_versions

__all__ = ["Options", "build", "configure_parser", "main"]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``iqa report``'s options to ``parser``."""
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SPEC",
        help="variant to report (registered name, package.module:attr or file.py:attr); repeatable; default: all",
    )
    parser.add_argument("--out", default="reports", metavar="DIR", help="output directory (default: reports)")
    parser.add_argument(
        "--sweep",
        choices=tuple(PRESETS),
        default=None,
        help="the sweep preset: default (the committed reports'), quick (= --quick), large (realistic sizes: "
        "N 64 and 256, D 32 and 64, float32)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (< 30 s), short for --sweep quick: a small sweep, 3 examples per property, "
        "failing examples not shrunk",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="S",
        help="first seed of the sweep (default: 0); the property run is derandomized and does not depend on it",
    )
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument(
        "--suite",
        default=None,
        metavar="DIR",
        help="the property suite to run (default: properties/ next to the iqa source, else ./properties)",
    )
    parser.add_argument("--no-properties", action="store_true", help="do not run the property suite")
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        metavar="N",
        help=f"Hypothesis examples per property at most (default {DEFAULT_MAX_EXAMPLES}, {QUICK_MAX_EXAMPLES} with "
        f"--quick; the {PROFILE} profile's own number, 30, when larger)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the sweep's cells and figures on this Dask scheduler (e.g. tcp://host:8786; needs iqa[dask]); "
        "--jobs then sets only the property run's processes. The files do not change",
    )


#: The Hypothesis profile of the report's property run (derandomized: the same examples every time).
PROFILE = RECORDED_PROFILE
#: The sweep preset without --sweep, and --quick's (keys of iqa.measure.PRESETS).
DEFAULT_SWEEP, QUICK = "default", "quick"
#: Examples per property with --quick (the 30-second budget).
QUICK_MAX_EXAMPLES = 3
#: Examples per property otherwise: the full ci profile (30) takes most of the 3-minute budget by itself.
DEFAULT_MAX_EXAMPLES = 10


@dataclass(frozen=True)
class Options:
    """What ``iqa report`` does: its command-line options as typed values (see :func:`configure_parser`)."""

    variants: tuple[str, ...] = ()
    out: Path = Path("reports")
    sweep: str = "default"
    seed: int = 0
    jobs: int = 1
    suite: str | None = None
    properties: bool = True
    max_examples: int | None = None
    progress: bool = True
    scheduler: str | None = None

    @property
    def quick(self) -> bool:
        """The smoke run (``--quick`` = ``--sweep quick``): its sweep, 3 examples per property, no shrinking."""
        return self.sweep == QUICK

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        """The options of parsed arguments; ``--quick`` with another ``--sweep`` is a ValueError."""
        if args.quick and args.sweep not in (None, QUICK):
            raise ValueError(f"--quick is short for --sweep {QUICK}; it cannot be combined with --sweep {args.sweep}")
        return cls(
            variants=tuple(args.variant),
            out=Path(args.out),
            sweep=QUICK if args.quick else (args.sweep or DEFAULT_SWEEP),
            seed=args.seed,
            jobs=args.jobs,
            suite=args.suite,
            properties=not args.no_properties,
            max_examples=args.max_examples,
            progress=not args.no_progress,
            scheduler=args.scheduler,
        )

    def check(self) -> None:
        """Bad values are a ValueError naming the option."""
        if self.sweep not in PRESETS:
            raise ValueError(f"--sweep must be one of {', '.join(PRESETS)}, got {self.sweep!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {self.jobs}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"--max-examples must be >= 1, got {self.max_examples}")


def _directory_name(variant: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", variant)
    if name in RESERVED or name.startswith("."):
        raise ValueError(f"variant {variant!r} would write its page into {name}/, which iqa report does not own")
    return name


def _command(options: Options) -> str:
    """The command line, without the options that do not change the content (--out, --jobs, --no-progress)."""
    parts = ["iqa", "report"]
    for spec in options.variants:
        parts += ["--variant", spec]
    if options.quick:
        parts.append("--quick")
    elif options.sweep != DEFAULT_SWEEP:
        parts += ["--sweep", options.sweep]
    parts += ["--seed", str(options.seed)]
    if options.suite is not None:
        parts += ["--suite", options.suite]
    if not options.properties:
        parts.append("--no-properties")
    if options.max_examples is not None:
        parts += ["--max-examples", str(options.max_examples)]
    return shlex.join(parts)


def _distinct_specs(given: Sequence[str]) -> list[str]:
    """One spec per variant, in order: worker processes and the pytest run get each variant once."""
    specs: list[str] = []
    seen: set[str] = set()
    for part in (p.strip() for spec in given for p in spec.split(",")):
        if part and (name := resolve(part).name) not in seen:
            seen.add(name)
            specs.append(part)
    return specs


def _versions() -> dict[str, str]:
    return {**measure_versions(), **package_versions("matplotlib", "hypothesis", "pytest", "tabulate")}


def _phase(what: str, since: float) -> None:
    """Elapsed time on stderr (never in the files: they must not depend on the clock)."""
    print(f"iqa report: {what} done after {time.perf_counter() - since:.1f} s", file=sys.stderr)


def build(options: Options, sweep: Sweep | None = None) -> tuple[list[Path], str | None]:
    """Measure, test and write the reports as a set (:mod:`iqa.report.output`); return the files written
    and why the property run gave no verdicts (None when it gave them or did not run).

    ``sweep`` replaces the preset (``--sweep``, ``--quick`` or the default) with a sweep of the caller's,
    seeded by --seed.
    Raises ValueError or VariantError for bad options, SuiteError for a missing suite and OutputError for an
    unwritable ``--out`` (all before anything is measured), and MeasurementError when a variant fails.
    """
    options.check()
    variants = resolve_all(list(options.variants))
    preset = "custom" if sweep is not None else options.sweep
    sweep = (sweep or PRESETS[preset]).with_seed(options.seed)
    specs = _distinct_specs(list(options.variants) or [v.name for v in variants])
    directories = {v.name: _directory_name(v.name) for v in variants}
    suite = locate(options.suite) if options.properties else None
    max_examples = options.max_examples
    if max_examples is None:
        max_examples = QUICK_MAX_EXAMPLES if options.quick else DEFAULT_MAX_EXAMPLES
    staging = Staging.create(options.out)  # before measuring: an unwritable --out fails now
    run: PropertyRun | None = None
    try:
        if suite is not None:
            # the suite runs beside the sweep: both are CPU-bound and independent
            run = start(
                specs, suite, profile=PROFILE, max_examples=max_examples, shrink=not options.quick, jobs=options.jobs
            )
        results, figures = _measure(specs, variants, sweep, options)
        if run is not None:
            run.wait()
        context = markdown.Context(
            command=_command(options),
            versions=_versions(),
            seed=options.seed,
            preset=preset,
            properties_command=run.display if run is not None else None,
            properties_profile=run.profile if run is not None else None,
            properties_max_examples=run.max_examples if run is not None else None,
            properties_shrink=run.shrink if run is not None else True,
        )
        properties = run.by_variant if run is not None and run.error is None else None
        error = run.error if run is not None else None
        related = [(title, link) for title, link in RELATED_REPORTS if (staging.out / link).is_file()]
        written = _write_set(staging.path, results, figures, properties, context, error, directories, related)
        final = [staging.out / p.relative_to(staging.path) for p in written]
        staging.publish({p.relative_to(staging.path).parts[0] for p in written})
    except BaseException:
        if run is not None and run.process is not None:
            run.process.kill()
            run.wait()
        staging.discard()
        raise
    return final, error


def _measure(
    specs: list[str], variants: list[Variant], sweep: Sweep, options: Options
) -> tuple[list[dict[str, Any]], list[dict[str, bytes]]]:
    clock = time.perf_counter()
    if options.jobs > 1 or options.scheduler is not None:
        with executor(options.jobs, options.scheduler) as pool:
            results = measure_variants(specs, sweep, jobs=options.jobs, progress=options.progress, pool=pool)
            _phase("sweep", clock)
            figures = list(pool.map(render_figures, results))
    else:
        results = measure_variants(variants, sweep, progress=options.progress)
        _phase("sweep", clock)
        figures = [render_figures(r) for r in results]
    _phase("sweep and figures", clock)
    return results, figures


#: Reports that other commands keep beside these (the report leaves them in place); the index links those present.
RELATED_REPORTS = (
    ("Training stability (`iqa train`)", "train/README.md"),
    ("Mutation score of the library (`tox -e mutate`)", "mutation/README.md"),
)


def _write_set(
    root: Path,
    results: list[dict[str, Any]],
    figures: list[dict[str, bytes]],
    properties: dict[str, list[dict[str, Any]]] | None,
    context: markdown.Context,
    error: str | None,
    directories: dict[str, str],
    related: list[tuple[str, str]],
) -> list[Path]:
    """Every file of the report under ``root`` (the staging directory)."""
    written: list[Path] = []
    for result, images in zip(results, figures):
        folder = root / directories[result["variant"]]
        tests = properties.get(result["variant"], []) if properties is not None else None
        written += _write_variant(folder, result, images, tests, context, error)
    path = root / markdown.COMPARISON_FIGURE
    write_bytes(path, plots.comparison_plot(results))
    written.append(path)
    path = root / "README.md"
    write_text(path, markdown.index_page(results, properties, context, directories, error, related))
    written.append(path)
    return written


def render_figures(result: dict[str, Any]) -> dict[str, bytes]:
    """The PNG bytes of a variant page's figures, by file name (runs in a worker process when --jobs > 1)."""
    name, runs, sweep = result["variant"], result["runs"], result["sweep"]
    return {
        "residuals.png": plots.residual_plot(name, runs, sweep),
        "iterations.png": plots.iterations_map(name, runs, sweep),
        "status.png": plots.status_map(name, runs, sweep),
        "certificate.png": plots.certificate_plot(name, runs),
        "unrolled.png": plots.unrolled_plot(name, result["gradients"]),
        "saved_bytes.png": plots.saved_bytes_plot(name, result["saved_bytes"]),
    }


def _write_variant(
    folder: Path,
    result: dict[str, Any],
    figures: dict[str, bytes],
    tests: list[dict[str, Any]] | None,
    context: markdown.Context,
    error: str | None,
) -> list[Path]:
    name, sweep = result["variant"], result["sweep"]
    assert set(figures) == set(markdown.FIGURES)
    written = []
    for filename, data in figures.items():
        write_bytes(folder / filename, data)
        written.append(folder / filename)
    metrics = {k: v for k, v in result["metrics"].items() if result["metric_info"][k]["deterministic"]}
    write_json(
        folder / "metrics.json",
        {
            "format": result["format"],
            "variant": name,
            "sweep": sweep,
            "versions": result["versions"],
            "metrics": metrics,
            "metric_info": {k: result["metric_info"][k] for k in metrics},
            "note": "wall-clock metrics (time_per_step_us) are left out: they differ between runs",
        },
    )
    write_text(folder / "README.md", markdown.variant_page(result, tests, context, error))
    return [*written, folder / "metrics.json", folder / "README.md"]


def main(args: argparse.Namespace) -> int:
    """Run ``iqa report``: 0 when the reports were written (failing properties are reported, not fatal),
    1 when they were written but the property suite could not run, or a variant failed while it was measured
    (nothing is written then), 2 for bad arguments, a missing suite, an unwritable ``--out`` or a Dask
    scheduler that cannot be used."""
    configure_threads()
    started = time.perf_counter()
    try:
        options = Options.from_args(args)
        written, error = build(options)
    except MeasurementError as failure:
        print(f"iqa report: {failure}; no report was written", file=sys.stderr)
        return 1
    except (VariantError, ValueError, SuiteError, OutputError, SchedulerError) as problem:
        print(f"iqa report: error: {problem}", file=sys.stderr)
        return 2
    out = options.out
    print(f"iqa report: wrote {len(written)} files under {out} in {time.perf_counter() - started:.1f} s")
    print(f"iqa report: index {out / 'README.md'}")
    if error is not None:
        print(f"iqa report: the property suite gave no verdicts (the pages say so): {error}", file=sys.stderr)
        return 1
    return 0
