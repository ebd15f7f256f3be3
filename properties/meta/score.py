"""The mutation score: mutants caught by the suite over mutants run.

A pytest plugin (registered by ``properties/conftest.py``). Each run of
``properties/meta/test_mutants.py::test_mutant_is_caught`` attaches a record to
its report (``user_properties``, so it also reaches the controller under
pytest-xdist); this plugin gathers them, prints the score in the terminal
summary, and, when the environment variable ``IQA_MUTATION_SCORE`` names a
path, writes it there as JSON (atomically)::

    {
      "format": "iqa-mutation-score/1",
      "caught": 13, "run": 14, "score": 0.9285714285714286,
      "mutants": [                      # sorted by name
        {"mutant": "mutant-softmax-axis",
         "bug": "softmax over the queries ...",
         "property": "test_layer_solve:test_output_in_convex_hull",
         "control": "hopfield",         # an honest variant on which the property must pass
         "outcome": "caught" | "escaped" | "error",
         "detail": "AssertionError: ..."}          # what the property raised, or why it is an error
      ]
    }

"caught": the property passed on the control and failed by an assertion on
the mutant; "escaped": it passed on the mutant; "error": it could not be run,
failed on the control, or raised something other than an assertion failure.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from iqa.atomic import write_json

FORMAT = "iqa-mutation-score/1"
ENV_VARIABLE = "IQA_MUTATION_SCORE"
#: The user_properties key under which a meta test leaves its record.
RECORD_KEY = "iqa_mutant"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(MutationScore(config), "iqa-mutation-score")


def score(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The JSON form of the score from the records of the meta tests, keyed by mutant name."""
    mutants = [records[name] for name in sorted(records)]
    caught = sum(1 for m in mutants if m["outcome"] == "caught")
    return {
        "format": FORMAT,
        "caught": caught,
        "run": len(mutants),
        "score": caught / len(mutants) if mutants else None,
        "mutants": mutants,
    }


class MutationScore:
    """Gathers the meta tests' records of one session; prints and writes the score."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.records: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        for key, value in report.user_properties:
            if key == RECORD_KEY and isinstance(value, dict):
                self.records[str(value["mutant"])] = dict(value)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        result = score(self.records)
        terminalreporter.section("mutation score")
        terminalreporter.write_line(f"mutants caught: {result['caught']} of {result['run']} run")
        for m in result["mutants"]:
            if m["outcome"] != "caught":
                terminalreporter.write_line(f"  {m['outcome']}: {m['mutant']} ({m['bug']}) via {m['property']}")
                terminalreporter.write_line(f"    {m['detail']}")

    def pytest_sessionfinish(self) -> None:
        path = os.environ.get(ENV_VARIABLE)
        if path and self.records and not hasattr(self.config, "workerinput"):
            write_json(path, score(self.records))
