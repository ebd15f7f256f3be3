"""The property suite's throughput: Hypothesis examples per second, per variant.

Every Hypothesis property in ``properties/variant/test_*.py`` whose only arguments
besides the drawn ones are the ``variant`` and ``device`` fixtures runs once
per selected variant, under the settings the suite itself runs with (the
Hypothesis profile: ``ci`` in tox), and skipping what the suite skips (a tag
the variant does not claim, an expected failure). Examples are counted by
wrapping each property's ``.hypothesis.inner_test``, the hook Hypothesis
documents for inserting logic into the execution of each case, so a count is
exact: one call that returned is one example run to the end. Properties that
need other fixtures are listed in ``extra_info`` as not run.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import settings

import properties.variant
from iqa.variants import Variant
from properties.benchmarks.conftest import median_seconds
from properties.tags import required_tags

FIXTURES = {"variant", "device"}
TABLE = "Property suite throughput (Hypothesis examples per second)"


def _properties() -> tuple[list[tuple[str, Callable[..., Any]]], list[str]]:
    """(name, test) of every runnable property, and the names of those needing other fixtures."""
    runnable, other = [], []
    for info in pkgutil.iter_modules(properties.variant.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"properties.variant.{info.name}")
        for name, obj in sorted(vars(module).items()):
            if not name.startswith("test_") or not hasattr(obj, "hypothesis"):
                continue
            label = f"{info.name}::{name}"
            if set(inspect.signature(obj).parameters) <= FIXTURES:
                runnable.append((label, obj))
            else:
                other.append(label)
    return runnable, other


@dataclass
class Tally:
    examples: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.examples.values())


def _run(test: Callable[..., Any], label: str, variant: Variant, tally: Tally) -> None:
    handle = test.hypothesis  # type: ignore[attr-defined]
    inner = handle.inner_test
    count = [0]

    def counted(*args: Any, **kwargs: Any) -> Any:
        result = inner(*args, **kwargs)
        count[0] += 1
        return result

    handle.inner_test = counted
    start = time.perf_counter()
    try:
        kwargs = {"variant": variant, "device": torch.device("cpu")}
        test(**{k: v for k, v in kwargs.items() if k in inspect.signature(test).parameters})
    except pytest.skip.Exception as skipped:
        tally.skipped[label] = str(skipped)
    except Exception as error:  # a failing property: the suite reports it; here it makes the count meaningless
        tally.failures[label] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        handle.inner_test = inner
    tally.seconds[label] = tally.seconds.get(label, 0.0) + time.perf_counter() - start
    tally.examples[label] = tally.examples.get(label, 0) + count[0]


def test_suite_throughput(benchmark, summary, variant: Variant) -> None:
    """Run every applicable property once; examples per second = examples / median round time."""
    runnable, other = _properties()
    selected = [
        (label, test)
        for label, test in runnable
        if required_tags(test) <= variant.tags and test.__name__ not in variant.expected_failures
    ]
    if not selected:
        pytest.skip(f"no runnable property applies to {variant.name}")
    tally = Tally()

    def run_all() -> None:
        for label, test in selected:
            _run(test, label, variant, tally)

    benchmark.group = "suite-throughput"
    benchmark.pedantic(run_all, rounds=1, warmup_rounds=0)
    seconds = median_seconds(benchmark)
    assert not tally.failures, f"properties failed, so the throughput means nothing: {tally.failures}"
    assert tally.total > 0, "the properties ran no example"
    slowest = max(tally.seconds, key=lambda k: tally.seconds[k] / max(tally.examples[k], 1))
    facts = {
        "profile": settings.get_current_profile_name(),
        "properties": len(selected),
        "examples": tally.total,
        "seconds": seconds,
        "examples/s": None if not seconds else tally.total / seconds,
        "slowest per example": slowest,
    }
    summary(TABLE).add(variant.name, **facts)
    benchmark.extra_info.update(facts)
    benchmark.extra_info["per_property"] = {
        label: {"examples": tally.examples[label], "seconds": tally.seconds[label]} for label in tally.examples
    }
    benchmark.extra_info["not_run_needs_other_fixtures"] = other
    benchmark.extra_info["skipped_while_running"] = tally.skipped
