"""The slot properties fail on the bugs they guard against, and pass on the honest toy slot variant.

Each mutant of ``properties/toy_slots.py`` (a start that ignores the seed, slots mixed up, token order leaking
through positions) is run through the property meant for it by properties/meta/test_mutants.py's own
machinery: the property must pass on the honest toy first, then fail on the mutant by its own assertion.
"""

from __future__ import annotations

import pytest
import torch

from properties.meta.test_mutants import check_mutant
from properties.mutants import Mutant
from properties.toy_slots import SLOT_MUTANTS


@pytest.mark.parametrize("mutant", SLOT_MUTANTS, ids=[m.name for m in SLOT_MUTANTS])
def test_slot_mutant_is_caught(mutant: Mutant, device: torch.device) -> None:
    kind, detail = check_mutant(mutant, device)
    assert kind == "caught", f"{mutant.name} ({mutant.bug}) was not caught by {mutant.caught_by}: {detail}"


def test_slot_mutant_names_are_unique() -> None:
    names = [m.name for m in SLOT_MUTANTS]
    assert len(names) == len(set(names))
