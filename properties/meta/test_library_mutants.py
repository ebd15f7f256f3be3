"""Every library mutant (a seeded bug in iqa itself) must be caught by the property meant for it.

For each mutant of ``properties/library_mutants.py``: the property runs on the
honest library (the control; it must pass), then with the bug patched in
(:func:`properties.library_mutants.applied`), and must fail by its OWN assertion:
an AssertionError whose message matches the mutant's ``message``. Hypothesis
runs derandomized, without shrinking, with at least ``MIN_EXAMPLES`` examples
(the ci profile's count), so the verdict is the same on every run.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from iqa.variants import resolve
from properties.library_mutants import LIBRARY_MUTANTS, SOLVER_MUTANTS, LibraryMutant, applied, buggy_code
from properties.meta.score import RECORD_KEY
from properties.meta.test_mutants import load_property, run_property

#: Examples per run: the ci profile's, enough for every mutant here (each is caught within a few examples).
MIN_EXAMPLES = 30


def check_library_mutant(mutant: LibraryMutant, device: torch.device) -> tuple[str, str | None]:
    """("caught" | "escaped" | "error", detail), the honest control run first."""
    prop = load_property(mutant.caught_by)
    variant = None if mutant.variant is None else resolve(mutant.variant)
    honest = run_property(prop, variant, device, MIN_EXAMPLES)
    if honest.kind != "passed":
        return "error", f"{mutant.caught_by} does not pass on the honest library: {honest.detail}"
    with applied(mutant):
        outcome = run_property(prop, variant, device, MIN_EXAMPLES)
    if outcome.matches(mutant.message):
        return "caught", outcome.detail
    if outcome.kind == "passed":
        return "escaped", f"{mutant.caught_by} passed with the bug: it is too weak for it"
    return "error", f"{mutant.caught_by} failed, but not by its own assertion /{mutant.message}/: {outcome.detail}"


@pytest.mark.parametrize("mutant", LIBRARY_MUTANTS, ids=[m.name for m in LIBRARY_MUTANTS])
def test_library_mutant_is_caught(mutant: LibraryMutant, device: torch.device, record_property: Any) -> None:
    kind, detail = check_library_mutant(mutant, device)
    record_property(
        RECORD_KEY,
        {
            "mutant": f"library-{mutant.name}",
            "bug": mutant.bug,
            "property": mutant.caught_by,
            "control": f"{mutant.variant or 'no variant'} on the honest library",
            "outcome": kind,
            "detail": detail,
        },
    )
    assert kind == "caught", f"{mutant.name} ({mutant.bug}) was not caught by {mutant.caught_by}: {detail}"


def test_library_mutants_compile_and_restore() -> None:
    """Each mutant's snippet occurs once in today's source; applying it swaps the code and restores it after."""
    from properties.library_mutants import target_function

    for mutant in LIBRARY_MUTANTS:
        function = target_function(mutant)
        honest = function.__code__
        assert buggy_code(mutant) is not honest
        with applied(mutant):
            assert function.__code__ is not honest
        assert function.__code__ is honest


def test_library_mutants_are_enough() -> None:
    names = [m.name for m in LIBRARY_MUTANTS]
    assert len(names) == len(set(names)) and len(names) >= 12
    assert len(SOLVER_MUTANTS) >= 4
