"""Solver objects and their options: one place that says which option belongs to which solver.

A solver is a frozen dataclass whose fields are its options, checked once in
``__post_init__``: ``Picard(damping=0.5)``, ``Anderson(history=8, mixing=1.0)``.
Every entry point (:func:`iqa.solve`, :func:`iqa.fixed_point`, the layers,
:class:`iqa.AdjointOptions`) takes either such an object or a shorthand name
("picard", "anderson") with the solver's options as keywords, and turns them
into an object here (:func:`as_solver`). An option of another solver is an
error that names the option and the solver it belongs to; nothing is ignored.

The options of every solve (``tol``, ``max_iter``, ``stop``) are checked by
:func:`check_solve_options`, also once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from iqa.solvers.result import STOP_MODES, Map, Solution, StopMode
from iqa.validation import check_positive, check_positive_int

#: The built-in solvers by shorthand name, in the order they are listed (filled by :mod:`iqa.solvers`).
SHORTHANDS: dict[str, type[Solver]] = {}


class Solver:
    """Base of the fixed-point solvers. Subclasses are frozen dataclasses whose fields are their options.

    :meth:`run` iterates from y0 and returns a :class:`~iqa.solvers.Solution`
    with an honest per-element status. A subclass that is not a built-in (a
    test double, a wrapper) can be passed wherever a solver is accepted.
    """

    #: The name a Solution reports in ``method`` (and the shorthand of a built-in).
    name: ClassVar[str] = ""
    #: The option that weights a plain relaxed step (1 - a) y + a f(y), if any: named in error hints.
    relaxation: ClassVar[str | None] = None
    #: Old keyword names still accepted in the keyword forms, mapped to the field they now set.
    aliases: ClassVar[dict[str, str]] = {}

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()

    def run(self, f: Map, y0: Tensor, *, tol: float, max_iter: int, stop: StopMode, keep_iterates: bool) -> Solution:
        """Solve y = f(y) from y0 ([B, ...], at least two dimensions, checked by :func:`iqa.solve`)."""
        raise NotImplementedError


def as_solver(method: str | Solver, options: Mapping[str, Any] | None = None) -> Solver:
    """The solver object for ``method`` (an object, or a shorthand name with ``options`` as keywords).

    Options beside an object are an error (set them in the object); an option
    of another solver is a ValueError naming the solver it belongs to; an
    option of no solver is a TypeError.
    """
    options = dict(options or {})
    if isinstance(method, Solver):
        if options:
            names = ", ".join(f"{k}=" for k in options)
            raise ValueError(
                f"{names} given beside the solver object {method!r}: set the options in the object "
                f"(e.g. dataclasses.replace(solver, ...))"
            )
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"solver must be a name ({', '.join(SHORTHANDS)}) or a solver object such as iqa.Anderson(...), "
            f"got {type(method).__name__}"
        )
    if method not in SHORTHANDS:
        raise ValueError(
            f"unknown solver {method!r}; choose one of {', '.join(SHORTHANDS)} "
            f"or pass a solver object such as iqa.Anderson(...)"
        )
    cls = SHORTHANDS[method]
    return cls(**solver_keywords(cls, options))


def solver_keywords(cls: type[Solver], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as keyword arguments of ``cls`` (old names mapped by ``cls.aliases``), each checked to belong."""
    out: dict[str, Any] = {}
    own = cls.option_names()
    for name, value in options.items():
        field = cls.aliases.get(name, name)
        if field in own:
            if field in out:
                raise ValueError(f"{name}= is the old name of {field}=: give one of them, not both")
            out[field] = value
            continue
        raise option_error(name, cls)
    return out


def owner_of(name: str) -> type[Solver] | None:
    """The built-in solver that has option ``name`` (or an old name for one), if any."""
    for cls in SHORTHANDS.values():
        if name in cls.option_names() or name in cls.aliases:
            return cls
    return None


def option_error(name: str, cls: type[Solver], context: str = "") -> Exception:
    """The error for option ``name`` given to solver ``cls`` (which lacks it)."""
    owner = owner_of(name)
    if owner is not None and owner is not cls:
        hint = ""
        if name == owner.relaxation and cls.relaxation is not None:
            hint = f"; {cls.__name__}'s relaxation is {cls.relaxation}="
        return ValueError(
            f"{name} is an option of {owner.__name__} ({owner.name!r}), not of {cls.__name__}{context}{hint}"
        )
    known = ", ".join(cls.option_names()) or "none"
    return TypeError(f"unknown option {name!r} for {cls.__name__}{context} (its options: {known})")


def check_solve_options(
    tol: Any = None, max_iter: Any = None, stop: Any = None, *, prefix: str = ""
) -> StopMode | None:
    """Check the options every solve has (None: not given); return ``stop`` as a StopMode."""
    if tol is not None:
        check_positive(f"{prefix}tol", tol)
    if max_iter is not None:
        check_positive_int(f"{prefix}max_iter", max_iter)
    if stop is None:
        return None
    if stop not in STOP_MODES:
        raise ValueError(f"unknown {prefix}stop mode {stop!r}; choose 'abs' or 'rel'")
    return "abs" if stop == "abs" else "rel"
