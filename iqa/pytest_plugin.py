"""A pytest plugin that writes one JSON record per test: what ran, how it ended, how to rerun it.

The suite's conftest.py loads it (``pytest_plugins``), and ``iqa check``,
``iqa report`` and ``iqa regress`` pass ``-p iqa.pytest_plugin --iqa-results PATH``
(:mod:`iqa.suite`) and read PATH afterwards. It defines every option it reads:

- ``--variant SPEC`` (repeatable) and ``--device NAME``: what the suite tests, and where;
- ``--iqa-results PATH``: the JSON below;
- ``--iqa-max-examples N`` caps Hypothesis's examples and ``--iqa-no-shrink``
  skips its shrink phase (both derive a profile from the one the suite loaded).

A suite says why a test is not run normally for a variant with two markers
that this plugin defines and records as data: ``iqa_expected_failure(reason)``
(the variant declares the property fails; the suite marks it xfail(strict) too)
and ``iqa_not_applicable(reason)`` (it skips the test: a tag is not claimed).
A property that had nothing to check skips with a reason that starts with
``not reached: ``; the plugin records that reason as data too (``not_reached``).
It also runs each test's draws in a tally of why they were rejected
(:mod:`iqa.rejections`): when Hypothesis gives up on a property (``Unsatisfiable``,
or the ``filter_too_much`` health check) and no draw was checked, the test ends
"not reached" with that one-line reason instead of Hypothesis's error; where the
variant claims ``contractive`` at the weight scales of draws that did not converge,
it fails instead (a broken solver never hides behind "not reached").
Each record carries its verdict (:mod:`iqa.verdicts`), computed here once.
It works with pytest-xdist (the controller writes the file; workers attach
each test's function, variant and declarations to its report).

The file (UTF-8 JSON, keys sorted, written atomically at the end of the session)::

    {
      "format": "iqa-pytest-results/2",
      "rootdir": "/abs/path",            # run `command`s from here
      "args": ["properties", ...],       # pytest's arguments
      "exitstatus": 0,                   # pytest's exit status (int)
      "hypothesis_profile": "ci",        # the profile the suite loaded
      "max_examples_cap": null,          # --iqa-max-examples N, if given
      "shrink": true,                    # false with --iqa-no-shrink (examples as found, not minimal)
      "versions": {"python": ..., "pytest": ..., "hypothesis": ..., "torch": ..., "iqa": ...},
      "summary": {"passed": n, "failed": n, "skipped": n, "xfailed": n, "xpassed": n},
      "tests": [                         # sorted by nodeid
        {
          "nodeid": "properties/variant/test_seed.py::test_layer_equals_seed_bitwise[reference]",
          "file": "properties/variant/test_seed.py",
          "function": "test_layer_equals_seed_bitwise",   # the test function's name
          "variant": "reference",        # the variant's name, or null for tests without one
          "outcome": "passed" | "failed" | "skipped" | "xfailed" | "xpassed",
          "phase": "setup" | "call" | "teardown",   # where the outcome was decided
          "call_raised": bool | null,    # whether the test's call raised (null: it did not run)
          "expected_failure": str | null,   # the variant's declared reason (marker iqa_expected_failure)
          "not_applicable": str | null,  # why the test does not apply (marker iqa_not_applicable)
          "not_reached": str | null,     # why it had nothing to check (a skip reason "not reached: ...")
          "verdict": "pass" | "fail" | "expected failure" | "unexpected pass" | "not reached"
                     | "not applicable",
          "reason": str | null,          # pytest's reason: why skipped / xfailed / xpassed
          "message": str | null,         # a failure's one-line message
          "longrepr": str | null,        # a failure's full report (traceback, Hypothesis notes)
          "falsifying_example": str | null,   # Hypothesis's minimal "Falsifying example: ..." block
          "reproduce_failure": str | null,    # "@reproduce_failure(...)" when Hypothesis printed one
          "command": str                 # a shell command that reruns exactly this test
        }
      ]
    }

An xfail(strict) test that passes is "failed" (pytest's own verdict), with a
message saying it passed unexpectedly. A failure in setup or teardown makes
the test "failed" with that phase. Nothing in the file depends on timing, so
two runs of a deterministic suite (the ``ci`` profile is derandomized) give
the same bytes.

PYTEST_DONT_REWRITE: the plugin has no assertions for pytest to rewrite, and the suite's conftest.py imports
it (for the marker names) before pytest would.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from iqa.atomic import write_json
from iqa.verdicts import NOT_REACHED_PREFIX
from iqa.versions import package_versions

FORMAT = "iqa-pytest-results/2"
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed")
#: A failure's longrepr is cut to this many characters (a Hypothesis report can be long).
MAX_LONGREPR = 20_000

_BASE_PROFILE: str | None = None
_FUNCTION = "iqa_function"
_VARIANT = "iqa_variant"
_EXPECTED = "iqa_expected_failure"
_NOT_APPLICABLE = "iqa_not_applicable"
_RAISED = "iqa_call_raised"
#: The markers a suite puts on a test case: the variant declares it fails / it does not apply to the variant.
EXPECTED_FAILURE_MARK = "iqa_expected_failure"
NOT_APPLICABLE_MARK = "iqa_not_applicable"
#: How Hypothesis starts the note that shows a failing input (the wording changed across versions).
_FALSIFYING = re.compile(r"^(?:Falsifying (?:explicit )?example|Failing test case): ")
_REPRODUCE = re.compile(r"@reproduce_failure\([^\n]*\)")


def pytest_addoption(parser: pytest.Parser) -> None:
    from iqa.variants import ENV_VARIABLE

    group = parser.getgroup("iqa")
    group.addoption(
        "--variant",
        action="append",
        default=[],
        help="variant to test: a registered name, package.module:attr or path/file.py:attr; "
        f"repeatable; default: ${ENV_VARIABLE} (comma-separated), else every available variant",
    )
    group.addoption("--device", default="cpu", help="torch device for the properties (default cpu; e.g. cuda)")
    group.addoption(
        "--iqa-results",
        default=None,
        metavar="PATH",
        help="write each test's outcome, minimal failing example and rerun command to PATH as JSON",
    )
    group.addoption(
        "--iqa-max-examples",
        type=int,
        default=None,
        metavar="N",
        help="cap Hypothesis's max_examples at N for tests that do not set their own (the loaded profile otherwise)",
    )
    group.addoption(
        "--iqa-no-shrink",
        action="store_true",
        default=False,
        help="skip Hypothesis's shrink phase (a smoke run: failing examples are reported as found, not minimal)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{EXPECTED_FAILURE_MARK}(reason): the variant declares this property fails")
    config.addinivalue_line("markers", f"{NOT_APPLICABLE_MARK}(reason): the property does not apply to the variant")
    cap = config.getoption("--iqa-max-examples")
    no_shrink = config.getoption("--iqa-no-shrink")
    if cap is not None or no_shrink:
        _derive_profile(cap, no_shrink)
    path = config.getoption("--iqa-results")
    if path and not hasattr(config, "workerinput"):  # xdist workers report to the controller
        config.pluginmanager.register(ResultsRecorder(config, Path(path)), "iqa-results-recorder")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Attach the test function's name and the variant to each item (reports carry user_properties)."""
    for item in items:
        function = getattr(item, "originalname", None) or item.name.split("[")[0]
        variant = None
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "variant" in callspec.params:
            param = callspec.params["variant"]
            variant = str(getattr(param, "name", param))
        item.user_properties.append((_FUNCTION, function))
        item.user_properties.append((_VARIANT, variant))
        for mark_name, key in ((EXPECTED_FAILURE_MARK, _EXPECTED), (NOT_APPLICABLE_MARK, _NOT_APPLICABLE)):
            mark = item.get_closest_marker(mark_name)
            if mark is not None:
                item.user_properties.append((key, _mark_reason(mark)))


def _mark_reason(mark: pytest.Mark) -> str:
    reason = mark.kwargs.get("reason", mark.args[0] if mark.args else None)
    if not isinstance(reason, str):
        raise pytest.UsageError(f"@pytest.mark.{mark.name} needs a reason (a string), got {reason!r}")
    return reason


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Record whether the test's call raised: a strict xfail that held fails without raising."""
    report = yield
    if call.when == "call":
        report.user_properties = [*report.user_properties, (_RAISED, call.excinfo is not None)]
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """Run the test inside a tally of its draws (:mod:`iqa.rejections`); when Hypothesis gave up on it and no
    draw was checked, end it "not reached" with the tally's one-line reason, or fail it when that would hide a
    refuted ``contractive`` claim. Any other outcome is left as it is."""
    from iqa import rejections

    with rejections.tallying(getattr(item, "obj", None)) as tally:
        try:
            return (yield)
        except BaseException as error:
            if not tally.draws or not rejections.gave_up(error):
                raise
            reason = rejections.not_reached_reason(tally)
            if reason is None:
                add_note = getattr(error, "add_note", None)  # Python >= 3.11
                if add_note is not None:
                    add_note(f"iqa: the draws Hypothesis ran: {tally.summary()}")
                raise
            refuted = rejections.refuted_claim(tally, _claimed_scales(item))
            if refuted is not None:
                first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                pytest.fail(f"{refuted} (Hypothesis gave up: {first})", pytrace=False)
            rejections.not_reached(reason)


def _claimed_scales(item: pytest.Item) -> tuple[float, float] | None:
    """The weight scales at which the test's variant claims to contract (tag ``contractive``), else None."""
    callspec = getattr(item, "callspec", None)
    variant = callspec.params.get("variant") if callspec is not None else None
    scales = getattr(variant, "contractive_scales", None)
    tags = {str(getattr(tag, "value", tag)) for tag in getattr(variant, "tags", ())}
    if scales is None or "contractive" not in tags:
        return None
    lo, hi = scales
    return float(lo), float(hi)


def _derive_profile(cap: int | None, no_shrink: bool) -> None:
    """Load a profile derived from the current one (conftest has loaded it): max_examples <= cap, and
    without the shrink phase if asked. Tests with their own @settings keep them."""
    if cap is not None and cap < 1:
        raise pytest.UsageError(f"--iqa-max-examples must be >= 1, got {cap}")
    from hypothesis import Phase, settings

    global _BASE_PROFILE
    current = settings.get_current_profile_name()
    _BASE_PROFILE = current
    parent = settings.get_profile(current)
    changes: dict[str, Any] = {}
    name = current
    if cap is not None:
        changes["max_examples"] = min(cap, parent.max_examples)
        name += f"-max{cap}"
    if no_shrink:
        changes["phases"] = [p for p in parent.phases if p is not Phase.shrink]
        name += "-noshrink"
    settings.register_profile(name, parent=parent, **changes)
    settings.load_profile(name)


def _versions() -> dict[str, str]:
    return package_versions("pytest", "hypothesis", "torch", "iqa")


def _hypothesis_profile() -> str | None:
    """The profile the suite loaded (before any --iqa-max-examples cap)."""
    if _BASE_PROFILE is not None:
        return _BASE_PROFILE
    try:
        from hypothesis import settings
    except ImportError:
        return None
    return settings.get_current_profile_name()


def _text(longrepr: Any) -> str:
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # a skip: (path, lineno, reason)
        return str(longrepr[2])
    return str(longrepr)


def _skip_reason(longrepr: Any) -> str:
    reason = _text(longrepr)
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


def _crash(report: pytest.TestReport) -> str:
    """The exception's text with its notes (where Hypothesis writes the failing input), or the longrepr."""
    crash = getattr(report.longrepr, "reprcrash", None)
    return str(crash.message) if crash is not None else _text(report.longrepr)


def falsifying_examples(text: str) -> list[str]:
    """Hypothesis's "Falsifying example: test(...)" blocks in ``text``.

    A block is its first line alone, or, when that line opens a call with
    "(", every line up to the ")" that closes it at the start of a line.
    """
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        if _FALSIFYING.match(line):
            end = i
            if line.rstrip().endswith("("):
                end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == ")"), len(lines) - 1)
            found.append("\n".join(lines[i : end + 1]))
    return found


class ResultsRecorder:
    """Collects the reports of a session and writes them as JSON at its end."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}

    def _record(self, report: pytest.TestReport) -> dict[str, Any]:
        record = self.records.get(report.nodeid)
        if record is None:
            props: dict[str, Any] = dict(report.user_properties)
            record = {
                "nodeid": report.nodeid,
                "file": report.nodeid.split("::")[0],
                "function": props.get(_FUNCTION) or report.nodeid.split("::")[-1].split("[")[0],
                "variant": props.get(_VARIANT),
                "outcome": "passed",
                "phase": "call",
                "call_raised": None,
                "expected_failure": props.get(_EXPECTED),
                "not_applicable": props.get(_NOT_APPLICABLE),
                "not_reached": None,
                "verdict": None,
                "reason": None,
                "message": None,
                "longrepr": None,
                "falsifying_example": None,
                "reproduce_failure": None,
                "command": self._command(report.nodeid, props.get(_VARIANT)),
            }
            self.records[report.nodeid] = record
        return record

    def _command(self, nodeid: str, variant: str | None) -> str:
        """A command that reruns one test: same variant selection, profile and device."""
        # -p iqa.pytest_plugin: its options (--variant, --device) exist whether or not the suite loads it
        parts = ["python", "-m", "pytest", nodeid, "-p", "no:cacheprovider", "-p", "iqa.pytest_plugin"]
        specs = list(self.config.getoption("--variant", default=None) or [])
        if variant is not None:
            # a name the run resolved from a spec (module:attr or file.py:attr) reruns through that spec
            chosen = [s for s in specs if s == variant] or [s for s in specs if ":" in s] or [variant]
            for spec in chosen:
                parts += ["--variant", spec]
        cap = self.config.getoption("--iqa-max-examples", default=None)
        no_shrink = self.config.getoption("--iqa-no-shrink", default=False)
        if cap is not None:
            parts.append(f"--iqa-max-examples={cap}")
        if no_shrink:
            parts.append("--iqa-no-shrink")
        seed = self.config.getoption("--hypothesis-seed", default=None)
        if seed is not None:
            parts.append(f"--hypothesis-seed={seed}")
        device = self.config.getoption("--device", default=None)
        if device not in (None, "cpu"):
            parts += ["--device", str(device)]
        profile = _hypothesis_profile()
        prefix = f"HYPOTHESIS_PROFILE={profile} " if profile else ""
        if os.environ.get("PYTHONHASHSEED"):  # set orders (and reprs that show them) follow the hash seed
            prefix += f"PYTHONHASHSEED={os.environ['PYTHONHASHSEED']} "
        return prefix + shlex.join(parts)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self._record(report)
        raised = dict(report.user_properties).get(_RAISED)
        if raised is not None:
            record["call_raised"] = bool(raised)
        if report.when == "call" or (report.outcome != "passed" and record["outcome"] != "failed"):
            self._update(record, report)  # setup/teardown only matter when they fail or skip (first one wins)

    def _update(self, record: dict[str, Any], report: pytest.TestReport) -> None:
        record["phase"] = report.when
        wasxfail = getattr(report, "wasxfail", None)
        if report.skipped and wasxfail is not None:
            record.update(outcome="xfailed", reason=wasxfail or None)
        elif report.skipped:
            reason = _skip_reason(report.longrepr)
            reached = reason.startswith(NOT_REACHED_PREFIX)
            record.update(
                outcome="skipped", reason=reason, not_reached=reason[len(NOT_REACHED_PREFIX) :] if reached else None
            )
        elif report.passed and wasxfail is not None:
            record.update(outcome="xpassed", reason=wasxfail or None)
        elif report.passed:
            record.update(outcome="passed")
        else:
            text = _text(report.longrepr)
            crash = _crash(report)
            falsifying = falsifying_examples(crash) or falsifying_examples(text)
            reproduce = _REPRODUCE.findall(crash) or _REPRODUCE.findall(text)
            record.update(
                outcome="failed",
                message=crash.strip().splitlines()[0] if crash.strip() else None,
                longrepr=text[:MAX_LONGREPR],
                falsifying_example="\n\n".join(falsifying) if falsifying else None,
                reproduce_failure=reproduce[-1] if reproduce else None,
            )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from iqa.verdicts import verdict

        tests = [self.records[k] for k in sorted(self.records)]
        for test in tests:
            test["verdict"] = verdict(test)
        summary = {name: sum(1 for t in tests if t["outcome"] == name) for name in OUTCOMES}
        write_json(
            self.path,
            {
                "format": FORMAT,
                "rootdir": str(self.config.rootpath),
                "args": [str(a) for a in self.config.invocation_params.args],
                "exitstatus": int(exitstatus),
                "hypothesis_profile": _hypothesis_profile(),
                "max_examples_cap": self.config.getoption("--iqa-max-examples"),
                "shrink": not self.config.getoption("--iqa-no-shrink"),
                "versions": _versions(),
                "summary": summary,
                "tests": tests,
            },
        )


def read_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a results file written by this plugin, checking its format tag."""
    import json

    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not an iqa pytest results file (expected format {FORMAT!r})")
    return data
