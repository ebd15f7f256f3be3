"""``iqa report``: measure every variant, run its properties, write Markdown pages with plots.

Layout of the output directory (default ``reports/``)::

    README.md              the index: one row per variant, a comparison figure
    convergence.png        converged fraction against weight scale, all variants
    <variant>/README.md    the variant's page (GitHub shows it when the folder is opened)
    <variant>/*.png        its figures (see iqa.report.markdown.FIGURES)
    <variant>/metrics.json its scalar metrics (without wall-clock times), sweep and versions

Every file is written atomically, and the same command with the same seed
writes the same bytes: the property suite runs on the derandomized ``ci``
profile, capped at 10 examples per property (``--quick``: 3, not shrunk),
and timings stay out of the files.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from iqa.atomic import write_bytes, write_json, write_text
from iqa.measure import PRESETS, Sweep, measure_variants, worker_pool
from iqa.measure import versions as measure_versions
from iqa.report import markdown, plots
from iqa.report.properties import PropertyRun, start
from iqa.runtime import configure_threads
from iqa.variants import VariantError, resolve, resolve_all
from iqa.versions import package_versions

__all__ = ["build", "configure_parser", "main"]


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
        "--quick",
        action="store_true",
        help="a smoke run (< 30 s): a small sweep, 3 examples per property, failing examples not shrunk",
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


#: The Hypothesis profile of the report's property run (derandomized: the same examples every time).
PROFILE = "ci"
#: Examples per property with --quick (the 30-second budget).
QUICK_MAX_EXAMPLES = 3
#: Examples per property otherwise: the full ci profile (30) takes most of the 3-minute budget by itself.
DEFAULT_MAX_EXAMPLES = 10


def _directory_name(variant: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", variant)


def _command(args: argparse.Namespace) -> str:
    """The command line, without the options that do not change the content (--out, --jobs, --no-progress)."""
    parts = ["iqa", "report"]
    for spec in args.variant:
        parts += ["--variant", spec]
    if args.quick:
        parts.append("--quick")
    parts += ["--seed", str(args.seed)]
    if args.suite is not None:
        parts += ["--suite", args.suite]
    if args.no_properties:
        parts.append("--no-properties")
    if args.max_examples is not None:
        parts += ["--max-examples", str(args.max_examples)]
    return shlex.join(parts)


def _distinct_specs(given: list[str]) -> list[str]:
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


def _suite(given: str | None) -> Path:
    """--suite, else the properties/ folder beside the package (an editable install), else ./properties."""
    if given is not None:
        return Path(given)
    beside = Path(__file__).resolve().parents[2] / "properties"
    return beside if beside.is_dir() else Path("properties")


def _phase(what: str, since: float) -> None:
    """Elapsed time on stderr (never in the files: they must not depend on the clock)."""
    print(f"iqa report: {what} done after {time.perf_counter() - since:.1f} s", file=sys.stderr)


def build(args: argparse.Namespace, sweep: Sweep | None = None) -> tuple[list[Path], str | None]:
    """Measure, test and write the reports; return the files written and why the property run gave no
    verdicts (None when it gave them or did not run).

    ``sweep`` replaces the preset (``--quick`` or the default) with a sweep of the caller's, seeded by --seed.
    """
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.max_examples is not None and args.max_examples < 1:
        raise ValueError(f"--max-examples must be >= 1, got {args.max_examples}")
    variants = resolve_all(args.variant)
    preset = "quick" if args.quick else "default"
    if sweep is not None:
        preset = "custom"
    sweep = (sweep or PRESETS[preset]).with_seed(args.seed)
    specs = _distinct_specs(list(args.variant) or [v.name for v in variants])
    max_examples = args.max_examples
    if max_examples is None:
        max_examples = QUICK_MAX_EXAMPLES if args.quick else DEFAULT_MAX_EXAMPLES
    run: PropertyRun | None = None
    if not args.no_properties:
        # the suite runs beside the sweep: both are CPU-bound and independent
        run = start(
            specs,
            _suite(args.suite),
            profile=PROFILE,
            max_examples=max_examples,
            shrink=not args.quick,
            jobs=args.jobs,
        )
    progress = not args.no_progress
    clock = time.perf_counter()
    if args.jobs > 1:
        with worker_pool(args.jobs) as pool:
            results = measure_variants(specs, sweep, jobs=args.jobs, progress=progress, pool=pool)
            _phase("sweep", clock)
            figures = list(pool.map(render_figures, results))
    else:
        results = measure_variants(variants, sweep, progress=progress)
        _phase("sweep", clock)
        figures = [render_figures(r) for r in results]
    _phase("sweep and figures", clock)
    if run is not None:
        run.wait()
        _phase("property suite (running since the start)", clock)
    context = markdown.Context(
        command=_command(args),
        versions=_versions(),
        seed=args.seed,
        preset=preset,
        properties_command=run.display if run is not None else None,
        properties_profile=run.profile if run is not None else None,
        properties_max_examples=run.max_examples if run is not None else None,
        properties_shrink=run.shrink if run is not None else True,
    )
    out = Path(args.out)
    written: list[Path] = []
    properties = run.by_variant if run is not None and run.error is None else None
    error = run.error if run is not None else None
    directories = {r["variant"]: _directory_name(r["variant"]) for r in results}
    for result, images in zip(results, figures):
        folder = out / directories[result["variant"]]
        tests = properties.get(result["variant"], []) if properties is not None else None
        written += _write_variant(folder, result, images, tests, context, error)
    path = out / markdown.COMPARISON_FIGURE
    write_bytes(path, plots.comparison_plot(results))
    written.append(path)
    path = out / "README.md"
    write_text(path, markdown.index_page(results, properties, context, directories, error))
    written.append(path)
    return written, error


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
    1 when they were written but the property suite could not run, 2 for bad arguments."""
    configure_threads()
    started = time.perf_counter()
    try:
        written, error = build(args)
    except (VariantError, ValueError) as problem:
        print(f"iqa report: {problem}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(f"iqa report: wrote {len(written)} files under {out} in {time.perf_counter() - started:.1f} s")
    print(f"iqa report: index {out / 'README.md'}")
    if error is not None:
        print(f"iqa report: the property suite gave no verdicts (the pages say so): {error}", file=sys.stderr)
        return 1
    return 0
