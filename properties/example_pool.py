"""The same examples whatever ran before: Hypothesis's pool of the code's own constants, filled once and frozen.

Hypothesis (6.131 and later) takes a few percent of its choices from the literals of the local modules loaded at
the time of the draw (``hypothesis.internal.conjecture.providers``), and the pool grows as modules are imported.
Which of iqa's modules a process has imported when a property runs depends on which tests ran before it in that
process: a report test imports iqa.report, a variant test imports a module it wrote to a temporary folder, a
library mutant is a changed copy of an iqa module. So a derandomized profile's examples depended on test order
and on how xdist shared the tests out: in one process after the meta and tool folders, 20 of 114 multihead
examples of test_observed_rate_matches_spectral_radius reached its regime (18%, below the 20% it needs), and 20 of
fewer than 100 when that file ran alone.

:func:`freeze_constant_pool` imports every module of iqa and of the suite (the test files aside: Hypothesis
leaves them out), has Hypothesis read their constants once, and hands that pool to every later draw: the examples
then depend on the code and the profile only.
"""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import iqa
import properties


def module_names(*packages: ModuleType) -> Iterator[str]:
    """The modules of ``packages`` whose constants Hypothesis would read: all but test files, conftest files
    and ``__main__``."""
    for package in packages:
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            last = info.name.rpartition(".")[2]
            if not (last.startswith("test_") or last in ("conftest", "__main__")):
                yield info.name


def import_all(*packages: ModuleType) -> None:
    """Import every module of ``packages`` (:func:`module_names`) but those that need a package this environment
    lacks (an optional extra)."""
    for name in module_names(*packages):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def freeze_constant_pool() -> Any:
    """Import iqa and the suite, then fix Hypothesis's local-constant pool to what they hold; the pool, or None on
    a Hypothesis without one (nothing to freeze: its examples never depended on the modules loaded)."""
    try:
        from hypothesis.internal.conjecture import providers
    except ImportError:  # pragma: no cover - a Hypothesis without the module
        return None
    read_pool = getattr(providers, "_get_local_constants", None)
    if read_pool is None:  # pragma: no cover - before 6.131
        return None
    import_all(iqa, properties)
    pool = read_pool()
    providers._get_local_constants = lambda: pool
    return pool
