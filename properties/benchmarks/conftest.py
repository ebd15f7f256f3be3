"""Shared set-up of the benchmarks: no xdist, and a summary of ratios at the end.

pytest-benchmark times one function per test and shows each group's rows
side by side. Several targets are ratios between two tests (Anderson against
Picard, iqa against torchdeq) or deterministic counts (iterations, residuals,
gradient errors) that a timing table does not show. Tests put them in a
:class:`SummaryTable` through the ``summary`` fixture; each table is printed as
Markdown at the end of the session (and the same numbers go to each
benchmark's ``extra_info``, so ``--benchmark-autosave`` keeps them), and the
tables are also written to ``.benchmarks/summary-<UTC time>-<sizes>.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from tabulate import tabulate

from iqa.atomic import atomic_open
from properties.benchmarks.attention import Size


@dataclass
class SummaryTable:
    """Rows of named values; ``ratios`` adds columns name = numerator column / denominator column."""

    title: str
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, tuple[str, str]] = field(default_factory=dict)

    def add(self, row: str, **values: Any) -> None:
        self.rows.setdefault(row, {}).update(values)

    def ratio(self, name: str, numerator: str, denominator: str) -> None:
        self.ratios[name] = (numerator, denominator)

    def markdown(self) -> str:
        columns: list[str] = []
        for values in self.rows.values():
            columns += [c for c in values if c not in columns]
        columns += [name for name in self.ratios if name not in columns]
        body = []
        for key, values in self.rows.items():
            row = dict(values)
            for name, (num, den) in self.ratios.items():
                row[name] = _ratio(values.get(num), values.get(den))
            body.append([key, *(_cell(row.get(c)) for c in columns)])
        return tabulate(body, headers=["", *columns], tablefmt="github")


def _ratio(num: Any, den: Any) -> float | None:
    if not isinstance(num, (int, float)) or not isinstance(den, (int, float)) or den == 0:
        return None
    return num / den


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (bool, int)):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)


_TABLES: dict[str, SummaryTable] = {}


@pytest.fixture(scope="session")
def summary() -> Any:
    """``summary(title)`` returns the session's table of that title (created on first use)."""

    def table(title: str) -> SummaryTable:
        return _TABLES.setdefault(title, SummaryTable(title))

    return table


def median_seconds(benchmark: Any) -> float | None:
    """The median round time of a finished benchmark, or None when timing was disabled."""
    stats = getattr(benchmark, "stats", None)
    return None if not stats else float(stats.stats.median)


#: ``--sizes``: the named size sets of the realistic-size benchmarks (test_bench_scale.py).
SIZE_SETS = ("small", "large")


def sizes_option(text: str) -> str:
    """``--sizes``' value checked: a name of SIZE_SETS, or comma-separated sizes like B8-N512-D96-h2."""
    if text in SIZE_SETS:
        return text
    for part in text.split(","):
        try:
            Size.parse(part)
        except ValueError as error:
            hint = f"give {' or '.join(SIZE_SETS)}, or sizes like {_EXAMPLE}"
            raise argparse.ArgumentTypeError(f"{error} ({hint})") from error
    return text


_EXAMPLE = "B8-N512-D96-h2,B4-N128-D64-h1"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("iqa").addoption(
        "--sizes",
        type=sizes_option,
        default="small",
        help="problem sizes of test_bench_scale.py: small (default, its smallest multi-head shape: seconds), "
        "large (B = 8, N in 64/256/1024, D in 64/128, 1 and 4 heads: tens of minutes on one CPU thread), "
        f"or comma-separated sizes such as {_EXAMPLE}",
    )


@pytest.fixture(autouse=True)
def _never_under_xdist(request: pytest.FixtureRequest) -> Iterator[None]:
    """Timing under xdist shares cores between workers and measures the neighbours, not the code."""
    config = request.config
    if hasattr(config, "workerinput") and not config.getoption("benchmark_skip", False):
        pytest.fail("benchmarks never run under xdist: run them with -p no:xdist (tox -e bench does)")
    yield


#: Where the session's tables go as Markdown, beside pytest-benchmark's saved runs.
SUMMARY_DIR = ".benchmarks"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    tables = [table for table in _TABLES.values() if table.rows]
    for table in tables:
        terminalreporter.write_sep("-", table.title)
        terminalreporter.write_line(table.markdown())
    if tables:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        path = Path(config.rootpath) / SUMMARY_DIR / f"summary-{stamp}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as out:
            out.write("\n\n".join(f"### {table.title}\n\n{table.markdown()}" for table in tables) + "\n")
        terminalreporter.write_line(f"summary tables written to {path}")
