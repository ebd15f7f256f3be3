"""Which variant tags a property relies on.

``@requires(Tag.CONVEX_HULL)`` on a property makes the suite skip it, with the
reason shown, for every variant that does not claim the tag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from iqa.variants import Tag

F = TypeVar("F", bound=Callable[..., Any])
_ATTRIBUTE = "_iqa_required_tags"


def requires(*tags: Tag) -> Callable[[F], F]:
    def mark(test: F) -> F:
        inner = getattr(test, "hypothesis", None)
        target = getattr(inner, "inner_test", None)
        for obj in (test, target):
            if obj is not None:
                setattr(obj, _ATTRIBUTE, frozenset(tags) | getattr(obj, _ATTRIBUTE, frozenset()))
        return test

    return mark


def required_tags(test: Callable[..., Any]) -> frozenset[Tag]:
    return getattr(test, _ATTRIBUTE, frozenset())
