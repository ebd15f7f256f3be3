"""Verdicts: what a property's test outcome means for the variant under test.

A variant's ``expected_failures`` are data: the suite marks those properties
xfail(strict) and ``iqa_expected_failure(reason)``, and the properties whose
tags the variant does not claim skip and ``iqa_not_applicable(reason)``;
:mod:`iqa.pytest_plugin` records pytest's outcome with those declarations and
whether the test's call raised. A property that needs something of its draws
(a converged fixed point, a regime) and got nothing to check skips with a reason
that starts with :data:`NOT_REACHED_PREFIX` (:mod:`iqa.rejections`); the plugin
records that reason as data too. This module turns such a record into one of
six verdicts, the only vocabulary ``iqa check``, ``iqa report`` and
``iqa regress`` use:

    pass               the property held
    fail               it did not, and the variant does not declare it (an unexpected failure)
    expected failure   it failed, as declared (pytest: xfailed)
    unexpected pass    declared as failing, but the property held (pytest: a strict xfail whose call
                       did not raise is "failed"; a non-strict one is "xpassed")
    not reached        nothing (or too little) to check: every draw, or all but a few that held, lacked
                       what the property needs (a converged fixed point, a regime), with a one-line
                       reason; neither a pass nor a fail of the variant
    not applicable     skipped: the variant does not claim the tags the property needs

and gives one verdict per property (test function): the worst over its test cases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PASS = "pass"
FAIL = "fail"
EXPECTED_FAILURE = "expected failure"
UNEXPECTED_PASS = "unexpected pass"
NOT_REACHED = "not reached"
NOT_APPLICABLE = "not applicable"
#: Verdicts from worst to best: a property with several test cases gets its worst one (a case that had nothing
#: to check outweighs one that passed: the property did not test all it is for).
VERDICTS = (FAIL, UNEXPECTED_PASS, NOT_REACHED, PASS, EXPECTED_FAILURE, NOT_APPLICABLE)
#: Verdicts that make a check fail.
BAD_VERDICTS = (FAIL, UNEXPECTED_PASS)
#: Verdicts of a property that had something to check (its assertions ran on some draw).
REACHED_VERDICTS = (FAIL, UNEXPECTED_PASS, PASS, EXPECTED_FAILURE)
#: How the skip reason of a property that reached nothing starts (pytest.skip(NOT_REACHED_PREFIX + reason)).
NOT_REACHED_PREFIX = "not reached: "


def not_reached_reason(record: Mapping[str, Any]) -> str | None:
    """The one-line reason of a skipped record that reached nothing, None for any other record.

    The plugin writes it as ``not_reached``; a record without that key is read from its skip reason's prefix.
    """
    if record.get("outcome") != "skipped":
        return None
    if record.get("not_reached"):
        return str(record["not_reached"])
    reason = str(record.get("reason") or "")
    return reason[len(NOT_REACHED_PREFIX) :] if reason.startswith(NOT_REACHED_PREFIX) else None


def verdict(record: Mapping[str, Any]) -> str:
    """The verdict for one test record of :mod:`iqa.pytest_plugin` (module docstring)."""
    outcome = record["outcome"]
    if outcome == "passed":
        return UNEXPECTED_PASS if record.get("expected_failure") is not None else PASS
    if outcome == "xfailed":
        return EXPECTED_FAILURE
    if outcome == "xpassed":
        return UNEXPECTED_PASS
    if outcome == "skipped":
        return NOT_REACHED if not_reached_reason(record) is not None else NOT_APPLICABLE
    if outcome == "failed":
        # a strict xfail whose call ran without raising: pytest fails the test because it held
        held = record.get("phase") == "call" and record.get("call_raised") is False
        return UNEXPECTED_PASS if held else FAIL
    raise ValueError(f"unknown test outcome {outcome!r} in {record.get('nodeid')!r}")


def detail(record: Mapping[str, Any], verdict_: str) -> str:
    """A line that says why: the declared reason, the skip reason, or the failure's message."""
    if verdict_ == NOT_REACHED:
        return not_reached_reason(record) or ""
    if verdict_ == NOT_APPLICABLE:
        return str(record.get("not_applicable") or record.get("reason") or "")
    if verdict_ == EXPECTED_FAILURE:
        return str(record.get("expected_failure") or record.get("reason") or "")
    if verdict_ == UNEXPECTED_PASS:
        declared = record.get("expected_failure") or record.get("reason")
        return "declared as an expected failure" + (f" ({declared})" if declared else "") + ", but the property held"
    if verdict_ == FAIL:
        return str(record.get("message") or "")
    return ""


def counts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many properties (rows of :func:`property_verdicts`) got each verdict, in :data:`VERDICTS` order."""
    found = [row["verdict"] for row in rows]
    return {v: found.count(v) for v in VERDICTS}


def property_verdicts(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per property (file, test function), sorted: its worst verdict over its test cases.

    Each row has ``property``, ``file``, ``verdict``, ``counts`` (verdict -> number of
    test cases), ``detail`` and ``record`` (the test record the verdict comes from).
    A record's own ``verdict`` (written by the plugin) is used; :func:`verdict` computes it otherwise.
    """
    by_property: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        by_property.setdefault((record["file"], record["function"]), []).append(record)
    rows = []
    for (file, function), group in sorted(by_property.items()):
        each = [r.get("verdict") or verdict(r) for r in group]
        worst = min(each, key=VERDICTS.index)
        chosen = next(r for r, v in zip(group, each) if v == worst)
        rows.append(
            {
                "property": function,
                "file": file,
                "verdict": worst,
                "counts": {v: each.count(v) for v in VERDICTS if v in each},
                "detail": detail(chosen, worst),
                "record": chosen,
            }
        )
    return rows
