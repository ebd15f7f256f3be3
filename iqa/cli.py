"""The ``iqa`` command line: thin wrappers over the library and the property suite.

    iqa variants [SPEC ...] [--json]      the variants, their tags and expected failures
    iqa check [OPTIONS] VARIANT [PYTEST_ARGS ...]
                                          the property suite on one variant, a verdict per property
    iqa report ...                        Markdown reports with plots (iqa.report)
    iqa regress ...                       metrics against a stored baseline (iqa.regress)

A VARIANT is a registered name (``iqa variants`` lists them),
``package.module:attr`` or ``path/to/file.py:attr``. One that does not resolve
is an error (exit status 2) that lists what exists.

``iqa check`` runs ``python -m pytest SUITE/variant --variant VARIANT`` in a
subprocess with :mod:`iqa.pytest_plugin` (per-test results as JSON; the
command comes from :mod:`iqa.suite`, which also finds the suite), then reads
the results and prints one verdict per property (:mod:`iqa.verdicts`): pass,
fail (with the minimal falsifying example and the command that reruns it),
expected failure, unexpected pass, not reached (with its one-line reason: what
the draws lacked, e.g. a converged fixed point), not applicable.

Its exit status is 0 when every verdict is pass, expected failure, not reached or
not applicable, 1 when any is fail or unexpected pass, 2 for a usage error (of iqa
or of pytest, e.g. an ``expected_failures`` key that names no property), and
pytest's own status when pytest could not run the suite otherwise. The package never imports the suite; SUITE is
``--suite DIR``, else the ``properties/`` directory next to the package source
(an editable install), else ``./properties``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

import iqa
from iqa.pytest_plugin import read_results
from iqa.suite import PROFILES, SuiteError, locate, pytest_command
from iqa.variants import ENTRY_POINT_GROUP, ENV_VARIABLE, Variant, VariantError, available, builtin_variants, resolve
from iqa.verdicts import BAD_VERDICTS, FAIL, NOT_REACHED, VERDICTS, property_verdicts

#: Subcommands that other modules implement: name -> (module, one-line help).
DELEGATED = {
    "report": ("iqa.report", "write Markdown convergence reports with plots for variants"),
    "regress": ("iqa.regress", "compare a variant's metrics with a stored baseline"),
    "train": ("iqa.train", "train variants and write training-stability pages with plots"),
}


class UsageError(Exception):
    """A command line that cannot be carried out; the message says why (exit status 2)."""


# --- iqa variants -----------------------------------------------------------------------------


def _variants_rows(variants: Sequence[Variant]) -> list[list[str]]:
    return [
        [
            v.name,
            ", ".join(sorted(t.value for t in v.tags)) or "(none)",
            _domain_text(v),
            ", ".join(sorted(v.expected_failures)) or "-",
            v.description,
        ]
        for v in variants
    ]


def _domain_text(variant: Variant) -> str:
    """The variant's shape domain, and the weight scales of its contraction claim when it makes one."""
    text = variant.domain.describe()
    if variant.contractive_scales is not None:
        low, high = variant.contractive_scales
        text += f"; contracts at scales [{low:g}, {high:g}]"
    return text


def _variant_json(variant: Variant, origin: str) -> dict[str, Any]:
    domain = variant.domain
    return {
        "name": variant.name,
        "origin": origin,
        "tags": sorted(t.value for t in variant.tags),
        "domain": {
            "text": domain.describe(),
            "dim_multiple": domain.dim_multiple,
            "min_dim": domain.min_dim,
            "max_dim": domain.max_dim,
            "min_tokens": domain.min_tokens,
            "max_tokens": domain.max_tokens,
            "slots": list(domain.slots) if domain.slots is not None else None,
        },
        "contractive_scales": list(variant.contractive_scales) if variant.contractive_scales else None,
        "expected_failures": dict(sorted(variant.expected_failures.items())),
        "description": variant.description,
    }


def cmd_variants(args: argparse.Namespace) -> int:
    if args.specs:
        chosen = [(resolve(spec), spec) for spec in args.specs]
    else:
        builtins = builtin_variants()
        chosen = [(v, "built-in" if name in builtins else "plug-in") for name, v in available().items()]
    if args.json:
        print(json.dumps([_variant_json(v, origin) for v, origin in chosen], indent=2))
        return 0
    variants = [v for v, _ in chosen]
    print(
        tabulate(
            _variants_rows(variants),
            headers=["variant", "tags", "shape domain", "expected failures", "description"],
            maxcolwidths=[None, 40, 24, 30, 40],
        )
    )
    reasons = [(v.name, test, why) for v in variants for test, why in sorted(v.expected_failures.items())]
    if reasons:
        print("\nexpected failures:")
        for name, test, why in reasons:
            print(f"  {name}: {test}: {why}")
    if not args.specs:
        print(
            f"\nname others as package.module:attr or path/to/file.py:attr; plug-ins register under the "
            f"entry-point group {ENTRY_POINT_GROUP!r}; pytest takes --variant or ${ENV_VARIABLE}"
        )
    return 0


# --- iqa check --------------------------------------------------------------------------------


def _cases(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items()) if sum(counts.values()) > 1 else ""


def _short(text: str, width: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def rerun_command(results: dict[str, Any], record: dict[str, Any], spec: str) -> str:
    """A command that reruns one test from the current directory (where ``spec`` resolves)."""
    path = Path(results["rootdir"]) / record["nodeid"]
    profile = results.get("hypothesis_profile")
    prefix = f"HYPOTHESIS_PROFILE={profile} " if profile else ""
    return prefix + shlex.join(["python", "-m", "pytest", str(path), "--variant", spec, "-p", "no:cacheprovider"])


def print_verdicts(variant: Variant, rows: list[dict[str, Any]], results: dict[str, Any], spec: str) -> None:
    table = [[r["property"], r["verdict"], _cases(r["counts"]), _short(r["detail"])] for r in rows]
    print(f"\nverdicts for variant {variant.name!r}:")
    print(tabulate(table, headers=["property", "verdict", "cases", "detail"]))
    for r in rows:
        if r["verdict"] not in BAD_VERDICTS:
            continue
        record = r["record"]
        print(f"\n{r['verdict'].upper()}: {r['property']} ({record['nodeid']})")
        if r["verdict"] == FAIL:
            print(f"  {record.get('message') or ''}")
            if record.get("falsifying_example"):
                print("  " + record["falsifying_example"].replace("\n", "\n  "))
        else:
            print(f"  declared: {variant.expected_failures.get(r['property'], '?')}")
        print(f"  rerun: {rerun_command(results, record, spec)}")
    unreached = [r for r in rows if r["verdict"] == NOT_REACHED]
    if unreached:
        print(f"\nnot reached (nothing to check: neither a pass nor a fail of {variant.name}):")
        for r in unreached:
            print(f"  {r['property']}: {r['detail']}")
    ran = {r["property"] for r in rows}
    for test in sorted(set(variant.expected_failures) - ran):
        print(f"\nnote: {variant.name} declares an expected failure of {test}, which is no property that ran")
    counts = {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
    print("\n" + variant.name + ": " + ", ".join(f"{n} {v}" for v, n in counts.items()))


def cmd_check(args: argparse.Namespace) -> int:
    variant = resolve(args.variant)  # a spec that does not resolve fails here, listing what exists
    suite = locate(args.suite)
    extra = list(args.pytest_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    env = dict(os.environ)
    if args.profile:
        env["HYPOTHESIS_PROFILE"] = args.profile
    with tempfile.TemporaryDirectory(prefix="iqa-check-") as tmp:
        results_path = Path(args.results) if args.results else Path(tmp) / "results.json"
        command = pytest_command(suite, [args.variant], results_path, options=["-q", "--tb=short", *extra])
        print("$ " + shlex.join(["python", *command[1:]]), flush=True)
        status = subprocess.run(command, env=env, check=False).returncode
        if not results_path.is_file():
            print(f"iqa check: pytest exited with status {status} before writing results", file=sys.stderr)
            if status == pytest.ExitCode.USAGE_ERROR:  # e.g. an expected failure that names no property
                return 2
            return status or 3
        results = read_results(results_path)
    if not results["tests"]:
        if status not in (0, 1, 5):
            print(f"iqa check: pytest exited with status {status} (its output above says why)", file=sys.stderr)
            return status
        print(f"iqa check: no property of {suite} was selected for {variant.name!r}", file=sys.stderr)
        return 5
    rows = property_verdicts(results["tests"])
    print_verdicts(variant, rows, results, args.variant)
    if status not in (0, 1):  # pytest was interrupted or hit an internal or usage error
        print(f"iqa check: pytest exited with status {status}", file=sys.stderr)
        return status
    return 1 if any(r["verdict"] in BAD_VERDICTS for r in rows) else 0


# --- iqa report / iqa regress -----------------------------------------------------------------


def run_delegated(name: str, argv: Sequence[str]) -> int:
    """Import the module behind ``iqa NAME`` only now, let it build its parser, and run it."""
    module_name, help_text = DELEGATED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"iqa {name} is not available: cannot import {module_name} ({error})") from error
    parser = argparse.ArgumentParser(prog=f"iqa {name}", description=help_text)
    module.configure_parser(parser)
    return int(module.main(parser.parse_args(list(argv))))


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iqa",
        description="Property-based checks of implicit fixed-point attention layers.",
        epilog="VARIANT: a registered name (iqa variants), package.module:attr or path/to/file.py:attr",
    )
    parser.add_argument("--version", action="version", version=f"iqa {iqa.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("variants", help="list variants with their tags and expected failures")
    p.add_argument("specs", nargs="*", metavar="VARIANT", help="show these (default: every registered variant)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=cmd_variants)

    p = commands.add_parser(
        "check",
        help="run the property suite on one variant and print a verdict per property",
        description="Run the property suite on one variant; arguments after VARIANT go to pytest "
        "(e.g. -k gradients, -n 2, -x).",
    )
    p.add_argument(
        "--suite", metavar="DIR", help="the property suite (default: properties/ beside iqa, else ./properties)"
    )
    p.add_argument("--results", metavar="PATH", help="also keep the per-test results JSON at PATH")
    p.add_argument("--profile", choices=PROFILES, help="Hypothesis profile (default: $HYPOTHESIS_PROFILE, else dev)")
    p.add_argument("variant", metavar="VARIANT")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, metavar="PYTEST_ARGS")
    p.set_defaults(run=cmd_check)

    for name, (_, help_text) in DELEGATED.items():
        commands.add_parser(name, help=help_text + f" (see iqa {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in DELEGATED:
            iqa.configure_threads()
            return run_delegated(argv[0], argv[1:])
        parser = build_parser()
        args = parser.parse_args(argv)
        run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
        if run is None:
            parser.print_help(sys.stderr)
            return 2
        return run(args)
    except (UsageError, SuiteError, VariantError) as error:
        print(f"iqa: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
