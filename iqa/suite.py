"""The property-suite runner: where the suite is, the pytest command that runs it, and its profiles.

``iqa check``, ``iqa report`` and ``iqa regress`` run the suite only through
this module. The suite is found by :func:`locate`: ``--suite DIR`` when given,
else the ``properties/`` folder beside the iqa package (a clone installed with
``pip install -e .``), else ``./properties``. The properties a variant is checked
against are selected by location: the suite's ``variant/`` folder (a suite
without one is an error that says so).

Every run loads :mod:`iqa.pytest_plugin` (``--iqa-results``: one JSON record
per test, with its verdict). :func:`start` runs it in the background with a
reproducible environment (the report's and the baselines' verdicts): a fixed
Hypothesis profile, an empty Hypothesis database, ``PYTHONHASHSEED=0`` and one
torch thread. ``iqa check`` runs :func:`pytest_command` in the foreground.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import iqa
from iqa.pytest_plugin import read_results

#: Hypothesis profiles of the suite (their settings are registered by the suite's conftest.py).
DEV, CI, THOROUGH, LARGE = "dev", "ci", "thorough", "large"
#: ``large``: few derandomized examples at realistic sizes (properties/strategies.py widens the shapes under it).
#: ``mutation``: the profile of ``tox -e mutate`` (properties/meta/mutation_run.py): few, fixed examples, no shrinking.
MUTATION = "mutation"
PROFILES = (DEV, CI, THOROUGH, LARGE, MUTATION)
#: The profile of the report's and the baselines' property runs: derandomized, so verdicts are reproducible.
RECORDED_PROFILE = CI
#: The folder of the suite that holds the properties a variant is checked against.
VARIANT_FOLDER = "variant"


class SuiteError(Exception):
    """The property suite cannot be found or is not one; the message says where it looked."""


def profile_from_environment(environ: Mapping[str, str] | None = None) -> str:
    """$HYPOTHESIS_PROFILE, else ``ci`` when $CI is set, else ``dev``; an unknown name is a :class:`SuiteError`."""
    env = os.environ if environ is None else environ
    name = env.get("HYPOTHESIS_PROFILE") or (CI if env.get("CI") else DEV)
    if name not in PROFILES:
        raise SuiteError(
            f"HYPOTHESIS_PROFILE={name!r} is not a profile of the suite; choose from {', '.join(PROFILES)}"
        )
    return name


def _is_suite(path: Path) -> bool:
    return (path / "conftest.py").is_file()


def locate(given: str | os.PathLike[str] | None = None) -> Path:
    """The suite (module docstring): ``given``, else properties/ beside the package, else ./properties."""
    if given is not None:
        suite = Path(given)
        if not _is_suite(suite):
            raise SuiteError(f"--suite {str(given)!r} is not the property suite (no conftest.py in it)")
        return suite.resolve()
    beside = Path(iqa.__file__).resolve().parent.parent / "properties"
    for candidate in (beside, Path.cwd() / "properties"):
        if _is_suite(candidate):
            return candidate.resolve()
    raise SuiteError(
        f"cannot find the property suite: no properties/conftest.py beside the iqa package ({beside.parent}) "
        "or in the current directory; pass --suite DIR"
    )


def selection(suite: Path) -> list[str]:
    """pytest arguments that select the variant properties of ``suite``: its variant/ folder (by location)."""
    folder = suite / VARIANT_FOLDER
    if not folder.is_dir():
        raise SuiteError(
            f"{suite} has no {VARIANT_FOLDER}/ folder: the properties a variant is checked against live there"
        )
    return [str(folder)]


def pytest_command(
    suite: Path,
    specs: Sequence[str],
    results: Path,
    *,
    max_examples: int | None = None,
    shrink: bool = True,
    jobs: int = 1,
    options: Sequence[str] = (),
) -> list[str]:
    """The one pytest command line: the variant properties of ``suite`` on ``specs``, results to ``results``.

    ``max_examples`` caps Hypothesis's examples per property (``--iqa-max-examples``), ``shrink=False``
    skips shrinking (``--iqa-no-shrink``), ``jobs`` > 1 runs pytest-xdist workers when it is installed
    (the verdicts do not change); ``options`` go to pytest last.
    """
    command = [sys.executable, "-m", "pytest", *selection(suite), "-p", "iqa.pytest_plugin"]
    command += ["--iqa-results", str(results)]
    for spec in specs:
        command += ["--variant", spec]
    if max_examples is not None:
        command.append(f"--iqa-max-examples={max_examples}")
    if not shrink:
        command.append("--iqa-no-shrink")
    if jobs > 1 and importlib.util.find_spec("xdist") is not None:
        command += ["-n", str(jobs)]
    return [*command, *options]


def shown(command: Sequence[str], root: Path) -> str:
    """``command`` as a reader reruns it from ``root``: ``python`` for the interpreter, paths relative to
    ``root``, and without the results file (a temporary path)."""
    words: list[str] = []
    skip = False
    for word in command:
        if skip:
            skip = False
            continue
        if word == "--iqa-results":
            skip = True
            continue
        if word == sys.executable:
            word = "python"
        elif os.path.isabs(word) and Path(word).is_relative_to(root):
            word = str(Path(word).relative_to(root))
        words.append(word)
    return shlex.join(words)


def recorded_environment(profile: str, workdir: Path) -> dict[str, str]:
    """The environment of a recorded run (module docstring); $IQA_VARIANTS is dropped: --variant chooses."""
    env = dict(os.environ)
    env.pop("IQA_VARIANTS", None)
    env.update(
        HYPOTHESIS_PROFILE=profile,
        HYPOTHESIS_STORAGE_DIRECTORY=str(workdir / "hypothesis"),
        PYTHONHASHSEED="0",
        IQA_THREADS="1",
        MPLBACKEND="Agg",
    )
    return env


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
    specs: Sequence[str],
    suite: Path,
    *,
    profile: str = RECORDED_PROFILE,
    max_examples: int | None = None,
    shrink: bool = True,
    jobs: int = 1,
) -> PropertyRun:
    """Start a recorded run (module docstring) of ``suite`` on ``specs``; :meth:`PropertyRun.wait` collects it."""
    if profile not in PROFILES:
        raise SuiteError(f"unknown Hypothesis profile {profile!r}; choose from {', '.join(PROFILES)}")
    suite = suite.resolve()
    workdir = tempfile.TemporaryDirectory(prefix="iqa-pytest-")
    directory = Path(workdir.name)
    options = ["-p", "no:cacheprovider", "-q", "--no-header"]
    command = pytest_command(
        suite,
        specs,
        directory / "results.json",
        max_examples=max_examples,
        shrink=shrink,
        jobs=jobs,
        options=options,
    )
    # what a reader reruns: without the options that do not change the verdicts (-q, --no-header, -n)
    rerun = pytest_command(suite, specs, directory / "results.json", max_examples=max_examples, shrink=shrink)
    display = f"HYPOTHESIS_PROFILE={profile} PYTHONHASHSEED=0 " + shown(
        [*rerun, "-p", "no:cacheprovider"], suite.parent
    )
    run = PropertyRun(command=command, display=display, profile=profile, max_examples=max_examples, shrink=shrink)
    with open(directory / "pytest.log", "wb") as log:
        run.process = subprocess.Popen(
            command,
            cwd=suite.parent,
            env=recorded_environment(profile, directory),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    run.workdir = workdir
    return run
