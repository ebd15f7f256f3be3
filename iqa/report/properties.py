"""Run the property suite for the report, in a subprocess, and read its verdicts.

The suite runs once for every variant of the report (``--variant`` for each),
with the :mod:`iqa.pytest_plugin` writing one JSON record per test, and
``--iqa-variant-tests-only`` so that only the per-variant properties run (meta
tests of the suite itself and examples are left to ``tox``). Benchmarks are
ignored. The run is made reproducible: a fixed Hypothesis profile (``ci`` is
derandomized), an empty Hypothesis database in a temporary directory, a
fixed ``PYTHONHASHSEED`` and one torch thread.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iqa.pytest_plugin import read_results


@dataclass
class PropertyRun:
    """A running (then finished) pytest subprocess and what it produced."""

    command: list[str]
    display: str
    profile: str
    max_examples: int | None = None
    shrink: bool = True
    process: subprocess.Popen[bytes] | None = None
    workdir: tempfile.TemporaryDirectory[str] | None = None
    results: dict[str, Any] | None = None
    error: str | None = None
    log: str = ""
    by_variant: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def wait(self) -> PropertyRun:
        """Wait for pytest, read its results; ``error`` says what went wrong if there are none."""
        if self.process is None or self.workdir is None:
            return self
        self.process.wait()
        directory = Path(self.workdir.name)
        self.log = (directory / "pytest.log").read_text(encoding="utf-8", errors="replace")
        path = directory / "results.json"
        if path.exists():
            self.results = read_results(path)
            for test in self.results["tests"]:
                self.by_variant.setdefault(test["variant"], []).append(test)
        if self.process.returncode not in (0, 1) or self.results is None:
            tail = "\n".join(self.log.strip().splitlines()[-15:])
            self.error = f"pytest exited with status {self.process.returncode} and no usable results:\n{tail}"
        self.workdir.cleanup()
        self.process = None
        self.workdir = None
        return self


def start(
    specs: list[str],
    suite: Path,
    *,
    profile: str,
    max_examples: int | None = None,
    shrink: bool = True,
    jobs: int = 1,
) -> PropertyRun:
    """Start pytest on ``suite`` for the variants ``specs``; :meth:`PropertyRun.wait` collects it.

    ``max_examples`` caps Hypothesis's examples per property (``--iqa-max-examples``: the report's time
    budget), ``shrink=False`` skips shrinking (``--iqa-no-shrink``: a smoke run); ``jobs`` > 1 runs
    pytest-xdist workers when it is installed (the verdicts do not change).
    """
    suite = suite.resolve()
    benchmarks = suite / "benchmarks"
    selection = ["--iqa-variant-tests-only", "-p", "no:cacheprovider"]
    if max_examples is not None:
        selection.append(f"--iqa-max-examples={max_examples}")
    if not shrink:
        selection.append("--iqa-no-shrink")
    for spec in specs:
        selection += ["--variant", spec]
    shown = ["python", "-m", "pytest", suite.name, "-p", "iqa.pytest_plugin", *selection]
    args = [str(suite), *selection, "-q", "--no-header"]
    if benchmarks.is_dir():
        args += ["--ignore", str(benchmarks)]
        shown += ["--ignore", f"{suite.name}/benchmarks"]
    if jobs > 1 and importlib.util.find_spec("xdist") is not None:
        args += ["-n", str(jobs)]
    display = f"HYPOTHESIS_PROFILE={profile} PYTHONHASHSEED=0 {shlex.join(shown)}"
    run = PropertyRun(command=[], display=display, profile=profile, max_examples=max_examples, shrink=shrink)
    if not suite.is_dir():
        run.error = f"the property suite {suite} does not exist (run iqa report from the repository, or pass --suite)"
        return run
    workdir = tempfile.TemporaryDirectory(prefix="iqa-report-pytest-")
    directory = Path(workdir.name)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "iqa.pytest_plugin",
        "--iqa-results",
        str(directory / "results.json"),
    ]
    command += args
    env = dict(os.environ)
    env.pop("IQA_VARIANTS", None)
    env.update(
        HYPOTHESIS_PROFILE=profile,
        HYPOTHESIS_STORAGE_DIRECTORY=str(directory / "hypothesis"),
        PYTHONHASHSEED="0",
        IQA_THREADS="1",
        MPLBACKEND="Agg",
    )
    with open(directory / "pytest.log", "wb") as log:
        process = subprocess.Popen(command, cwd=suite.parent, env=env, stdout=log, stderr=subprocess.STDOUT)
    run.command = command
    run.process = process
    run.workdir = workdir
    return run
