"""``iqa train``: train variants and write their training-stability pages.

    iqa train [VARIANT ...] [--variant SPEC ...] [--out DIR] [--seed S] [--quick]

With no VARIANT, every built-in variant. Progress and elapsed time go to stderr, never into the files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from iqa.atomic import write_text
from iqa.runtime import configure_threads
from iqa.train.config import DEFAULT, QUICK
from iqa.train.metrics import page_metrics
from iqa.train.page import index_markdown, write_page
from iqa.train.session import check_seed, train_variant
from iqa.variants import VariantError, builtin_variants, resolve

DEFAULT_OUT = "reports/train"


def _seed(text: str) -> int:
    """--seed: an integer in [0, 2**61) (seeds are combined as 4 seed + stream below 2**63)."""
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**61), got {text!r}") from None


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add ``iqa train``'s options to ``parser``."""
    parser.add_argument(
        "variants",
        nargs="*",
        metavar="VARIANT",
        help="registered name, package.module:attr or file.py:attr (default: every built-in)",
    )
    parser.add_argument(
        "--variant", action="append", default=[], metavar="SPEC", help="another variant (repeatable), as for iqa report"
    )
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--seed", type=_seed, default=0, metavar="S", help="seed of data, weights and probes (default: 0)"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke run: one task, {len(QUICK.runs)} runs, {QUICK.steps} updates"
    )


def _command(specs: list[str], args: argparse.Namespace) -> str:
    """The command line, without --out (which does not change the content)."""
    parts = ["iqa", "train", *specs]
    if args.quick:
        parts.append("--quick")
    return shlex.join([*parts, "--seed", str(args.seed)])


def main(args: argparse.Namespace) -> int:
    configure_threads()
    specs = [part.strip() for spec in [*args.variants, *args.variant] for part in spec.split(",") if part.strip()]
    try:
        variants = [resolve(s) for s in specs] if specs else list(builtin_variants().values())
    except VariantError as error:
        print(f"iqa train: error: {error}", file=sys.stderr)
        return 2
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        print(f"iqa train: error: a variant is named twice in {specs}", file=sys.stderr)
        return 2
    config = QUICK if args.quick else DEFAULT
    command = _command(specs, args)
    out = Path(args.out)
    pages = []
    for variant in variants:
        start = time.perf_counter()
        data = train_variant(variant, config, args.seed, command)
        write_page(out, variant.name, data, page_metrics(data["runs"]))
        pages.append((variant.name, data))
        print(f"iqa train: {variant.name} done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    write_text(out / "README.md", index_markdown(command, args.seed, pages))
    print(f"iqa train: wrote {out / 'README.md'} and {len(pages)} page(s)", file=sys.stderr)
    return 0
