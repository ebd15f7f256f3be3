"""Verdicts: what a property's test outcome means for the variant under test.

A variant's ``expected_failures`` are data: the suite marks those properties
xfail(strict), and :mod:`iqa.pytest_plugin` records pytest's outcome. This
module turns an outcome record into one of five verdicts:

    pass               the property held
    fail               it did not, and the variant does not declare it (an unexpected failure)
    expected failure   it failed, as the variant declares (pytest: xfailed)
    unexpected pass    the variant declares a failure, but the property held
                       (pytest: a strict xfail that passed is "failed" with "[XPASS(strict)]")
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
NOT_APPLICABLE = "not applicable"
#: Verdicts from worst to best: a property with several test cases gets its worst one.
VERDICTS = (FAIL, UNEXPECTED_PASS, PASS, EXPECTED_FAILURE, NOT_APPLICABLE)
#: Verdicts that make a check fail.
BAD_VERDICTS = (FAIL, UNEXPECTED_PASS)
#: pytest's message for an xfail(strict) test that passed.
XPASS_STRICT = "[XPASS(strict)]"


def verdict(record: Mapping[str, Any]) -> str:
    """The verdict for one test record of :mod:`iqa.pytest_plugin`."""
    outcome = record["outcome"]
    if outcome == "passed":
        return PASS
    if outcome == "xfailed":
        return EXPECTED_FAILURE
    if outcome == "xpassed":
        return UNEXPECTED_PASS
    if outcome == "skipped":
        return NOT_APPLICABLE
    if outcome == "failed":
        text = f"{record.get('message') or ''}\n{record.get('longrepr') or ''}"
        return UNEXPECTED_PASS if XPASS_STRICT in text else FAIL
    raise ValueError(f"unknown test outcome {outcome!r} in {record.get('nodeid')!r}")


def detail(record: Mapping[str, Any], verdict_: str) -> str:
    """A line that says why: the skip or xfail reason, or the failure's message."""
    if verdict_ in (NOT_APPLICABLE, EXPECTED_FAILURE):
        text = str(record.get("reason") or "")
        # the suite's xfail reason reads "expected failure of <variant>: <the variant's reason>"
        prefix = f"expected failure of {record.get('variant')}: "
        return text[len(prefix) :] if text.startswith(prefix) else text
    if verdict_ == UNEXPECTED_PASS:
        return "declared as an expected failure, but the property held"
    if verdict_ == FAIL:
        return str(record.get("message") or "")
    return ""


def property_verdicts(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per property (file, test function), sorted: its worst verdict over its test cases.

    Each row has ``property``, ``file``, ``verdict``, ``counts`` (verdict -> number of
    test cases), ``detail`` and ``record`` (the test record the verdict comes from).
    """
    by_property: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in records:
        by_property.setdefault((record["file"], record["function"]), []).append(record)
    rows = []
    for (file, function), group in sorted(by_property.items()):
        each = [verdict(r) for r in group]
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
