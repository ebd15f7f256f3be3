"""Every mutant must be caught by the property meant for it.

For each mutant of ``properties/mutants.py`` this calls the property function
itself with ``variant=<mutant>`` (a Hypothesis test accepts its non-drawn
arguments) and requires it to fail with its own assertion (a message matching
the mutant's ``message``, not any AssertionError), after the same call on an
honest built-in variant (the mutant's control) has passed: the property is then
known to fail because of the mutant's bug. Hypothesis runs both
derandomized, without shrinking, with at least ``MIN_EXAMPLES`` examples, so
the verdict is the same on every run. The share of mutants caught is printed
at the end of the session (``properties/meta/score.py``).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from iqa.variants import Variant, VariantError, resolve
from properties.meta.score import ENV_VARIABLE as SCORE_VARIABLE
from properties.meta.score import FORMAT as SCORE_FORMAT
from properties.meta.score import RECORD_KEY
from properties.mutants import BY_NAME, MUTANTS, Mutant
from properties.strategies import use_domain
from properties.tags import required_tags

#: A mutant that survives this many generated examples counts as escaped.
MIN_EXAMPLES = 50


@dataclass(frozen=True)
class Outcome:
    """How one call of a property ended."""

    kind: str  # "passed", "failed" (by an assertion) or "error" (anything else)
    detail: str | None = None
    #: The messages of the assertions that failed (every leaf of a Hypothesis exception group).
    messages: tuple[str, ...] = ()

    def matches(self, pattern: str) -> bool:
        """Whether the property's own assertion failed: some assertion message matches ``pattern``."""
        return self.kind == "failed" and any(re.search(pattern, m, re.DOTALL) for m in self.messages)


def load_property(spec: str) -> Callable[..., Any]:
    """The test function named by "module:function" in the properties package."""
    module_name, _, function = spec.partition(":")
    try:
        module = importlib.import_module(f"properties.{module_name}")
    except ModuleNotFoundError as error:
        path = module_name.replace(".", "/")
        raise LookupError(f"property module properties/{path}.py does not exist ({error})") from None
    prop = getattr(module, function, None)
    if not callable(prop):
        props = sorted(n for n in dir(module) if n.startswith("test_"))
        path = module_name.replace(".", "/")
        raise LookupError(f"properties/{path}.py has no property {function!r}; it has: {', '.join(props)}")
    return prop


@contextmanager
def _meta_settings(prop: Callable[..., Any], min_examples: int = MIN_EXAMPLES) -> Iterator[None]:
    """Run a Hypothesis property derandomized, unshrunk, with at least MIN_EXAMPLES examples.

    Hypothesis keeps a test's settings in ``_hypothesis_internal_use_settings``;
    they are swapped for the duration of the call and then restored, so the
    property keeps its own settings when the suite runs it normally.
    """
    attribute = "_hypothesis_internal_use_settings"
    prop = getattr(prop, "hypothesis_inner", prop)  # under properties.regimes.requires_share
    own = getattr(prop, attribute, None)
    if own is None:
        yield
        return
    meta = settings(
        own,
        derandomize=True,
        database=None,
        max_examples=max(own.max_examples, min_examples),
        phases=(Phase.explicit, Phase.generate),
        report_multiple_bugs=False,
        print_blob=False,
        suppress_health_check=[*own.suppress_health_check, HealthCheck.filter_too_much],
    )
    setattr(prop, attribute, meta)
    try:
        yield
    finally:
        setattr(prop, attribute, own)


def _assertions_only(error: BaseException) -> bool:
    """True for an AssertionError, or a group (Hypothesis's Flaky) whose leaves all are."""
    inner = getattr(error, "exceptions", None)
    if inner:
        return all(_assertions_only(e) for e in inner)
    return isinstance(error, AssertionError)


def _assertion_messages(error: BaseException) -> tuple[str, ...]:
    inner = getattr(error, "exceptions", None)
    if inner:
        return tuple(m for e in inner for m in _assertion_messages(e))
    return (str(error),) if isinstance(error, AssertionError) else ()


def run_property(
    prop: Callable[..., Any], variant: Variant | None, device: torch.device, min_examples: int = MIN_EXAMPLES
) -> Outcome:
    """Call ``prop`` with ``variant``: "failed" when it fails by an assertion, "error" for anything else."""
    available: dict[str, Any] = {"device": device} if variant is None else {"variant": variant, "device": device}
    wanted = list(inspect.signature(prop).parameters)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        return Outcome("error", f"{prop.__name__} needs fixtures the meta test does not provide: {unknown}")
    domain = use_domain(variant.domain) if variant is not None else contextlib.nullcontext()
    try:
        with _meta_settings(prop, min_examples), domain:  # draws inside the variant's domain, as the suite's do
            prop(**{name: available[name] for name in wanted})
    except BaseException as error:
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        message = str(error).strip()
        detail = f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
        if _assertions_only(error):
            return Outcome("failed", detail, _assertion_messages(error))
        return Outcome("error", detail)
    return Outcome("passed")


def check_mutant(mutant: Mutant, device: torch.device) -> tuple[str, str | None]:
    """("caught" | "escaped" | "error", detail) for one mutant, its control run first."""
    try:
        prop = load_property(mutant.caught_by)
        control = resolve(mutant.control)
    except (LookupError, VariantError) as error:
        return "error", str(error)
    for variant in (control, mutant.variant):
        if prop.__name__ in variant.expected_failures:
            return "error", f"{variant.name} declares {prop.__name__} as an expected failure"
    missing = sorted(t.value for t in required_tags(prop) - control.tags)
    if missing:
        return "error", f"the control {control.name} lacks the tags {missing} that {mutant.caught_by} requires"
    missing = sorted(t.value for t in required_tags(prop) - mutant.variant.tags)
    if missing:  # the bug goes through: the suite never runs the property on this mutant
        return "escaped", f"the suite skips {mutant.caught_by} for {mutant.name}: it requires tags {missing}"
    honest = run_property(prop, control, device)
    if honest.kind != "passed":
        return "error", f"{mutant.caught_by} does not pass on the honest control {control.name}: {honest.detail}"
    outcome = run_property(prop, mutant.variant, device)
    if outcome.matches(mutant.message):
        return "caught", outcome.detail
    if outcome.kind == "failed":
        return "error", f"{mutant.caught_by} failed, but not by its own assertion /{mutant.message}/: {outcome.detail}"
    if outcome.kind == "passed":
        return "escaped", f"{mutant.caught_by} passed on the mutant: it is too weak for this bug"
    return "error", outcome.detail


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_caught(mutant: Mutant, device: torch.device, record_property: Any) -> None:
    kind, detail = check_mutant(mutant, device)
    record = {
        "mutant": mutant.name,
        "bug": mutant.bug,
        "property": mutant.caught_by,
        "control": mutant.control,
        "outcome": kind,
        "detail": detail,
    }
    record_property(RECORD_KEY, record)
    assert kind == "caught", f"{mutant.name} ({mutant.bug}) was not caught by {mutant.caught_by}: {detail}"


def test_mutant_names_are_unique() -> None:
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names))


def test_mutation_score_is_printed_and_written(tmp_path: Path) -> None:
    """A run of the meta tests prints the score and, with $IQA_MUTATION_SCORE, writes it as JSON."""
    path = tmp_path / "score.json"
    mutant = BY_NAME["mutant-seed-lie"]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-k", mutant.name, "-q", "-p", "no:cacheprovider"],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, SCORE_VARIABLE: str(path)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "mutants caught: 1 of 1 run" in run.stdout
    score = json.loads(path.read_text())
    assert (score["format"], score["caught"], score["run"], score["score"]) == (SCORE_FORMAT, 1, 1, 1.0)
    (record,) = score["mutants"]
    assert (record["mutant"], record["outcome"], record["property"]) == (mutant.name, "caught", mutant.caught_by)
