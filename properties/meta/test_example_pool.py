"""A derandomized property draws the same examples whichever modules the process loaded before it
(properties/example_pool.py): Hypothesis's pool of local constants is frozen when the suite starts."""

from __future__ import annotations

import importlib
import sys

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from properties.example_pool import module_names

PROBE = "iqa_example_pool_probe"


def drawn_examples() -> list[list[int]]:
    """The examples of a derandomized property over integers, in the order Hypothesis drew them."""
    examples: list[list[int]] = []

    @settings(derandomize=True, database=None, max_examples=200, phases=[Phase.generate])
    @given(st.lists(st.integers(0, 10**9), min_size=5, max_size=5))
    def record(values: list[int]) -> None:
        examples.append(values)

    record()
    return examples


def test_a_module_loaded_later_changes_no_example(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local module with 60 integer constants in the drawn range, imported between two runs of the same
    property: without the freeze Hypothesis adds them to its pool and some of the 1000 draws pick differently."""
    before = drawn_examples()
    constants = ", ".join(str(7919 * k + 13) for k in range(1, 61))
    (tmp_path / f"{PROBE}.py").write_text(f"CONSTANTS = ({constants})\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, PROBE, raising=False)
    try:
        importlib.import_module(PROBE)
        after = drawn_examples()
    finally:
        sys.modules.pop(PROBE, None)
    assert after == before, "the examples changed after a module was imported: the constant pool is not frozen"


def test_the_pool_covers_every_module_but_test_files() -> None:
    names = set(module_names(importlib.import_module("iqa"), importlib.import_module("properties")))
    lazily_imported = {"iqa.report", "iqa.train", "properties.tool.anderson_reference"}
    assert lazily_imported | {"iqa.solvers.anderson", "properties.strategies"} <= names
    assert not any(name.rpartition(".")[2].startswith("test_") or name.endswith(".conftest") for name in names)
