"""Finding variants: built-ins, installed plug-ins, and ``module:attr`` specs.

A spec is a registered name (``iqa variants`` lists them), ``package.module:attr``
or ``path/to/file.py:attr``. The attribute may be a :class:`Variant`, a
:class:`~iqa.layer.FixedPointLayer` subclass (wrapped by
:meth:`Variant.from_layer`), or a callable with no arguments returning a Variant.
Plug-ins register under the entry-point group ``iqa.variants`` the same way.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from torch import nn

from iqa.layer import FixedPointLayer
from iqa.variants.builtin import BUILTIN_VARIANTS, OPT_IN_VARIANTS
from iqa.variants.protocol import Variant

ENTRY_POINT_GROUP = "iqa.variants"
ENV_VARIABLE = "IQA_VARIANTS"


class VariantError(LookupError):
    """A variant spec that does not resolve, or resolves to something that is not a variant."""


def builtin_variants() -> dict[str, Variant]:
    """The built-in variants of the default selection (every run that names none tests these)."""
    return {v.name: v for v in BUILTIN_VARIANTS}


def opt_in_variants() -> dict[str, Variant]:
    """Built-in variants that run only when named (:data:`iqa.variants.builtin.OPT_IN_VARIANTS`)."""
    return {v.name: v for v in OPT_IN_VARIANTS}


def plugin_variants() -> dict[str, Variant]:
    """Variants that installed packages register under the ``iqa.variants`` group.

    Loaded once per process for each ``sys.path`` (on which the installed
    distributions are found) and each ``entry_points`` function (tests may swap
    in their own), not on every :func:`resolve`; a plug-in that fails to load is
    not remembered, so it fails with the same error every time. After installing
    a package into a running process, :func:`clear_plugin_cache`.
    """
    return dict(_load_plugins(entry_points, tuple(str(p) for p in sys.path)))


def clear_plugin_cache() -> None:
    """Forget the loaded plug-ins: the next lookup reads the entry points again."""
    _load_plugins.cache_clear()


@functools.cache
def _load_plugins(find: Callable[..., Iterable[EntryPoint]], path: tuple[str, ...]) -> dict[str, Variant]:
    """The plug-in variants that ``find`` (``entry_points``) lists with ``sys.path`` = ``path``."""
    found = {}
    for ep in find(group=ENTRY_POINT_GROUP):
        origin = f"plug-in variant {ep.name!r} (entry point {ep.value!r} in group {ENTRY_POINT_GROUP!r})"
        try:
            obj = ep.load()
        except Exception as error:
            raise VariantError(f"{origin} failed to load: {type(error).__name__}: {error}") from error
        found[ep.name] = as_variant(obj, origin)
    return found


def available() -> dict[str, Variant]:
    """Every variant that a plain name resolves to: built-ins, opt-in built-ins, then plug-ins."""
    variants = {**builtin_variants(), **opt_in_variants()}
    for name, variant in plugin_variants().items():
        if name in variants:
            raise VariantError(f"plug-in variant {name!r} clashes with a built-in variant of the same name")
        variants[name] = variant
    return variants


def default_variants() -> dict[str, Variant]:
    """What a run that names no variant tests: every available variant but the opt-in built-ins."""
    opt_in = opt_in_variants()
    return {name: v for name, v in available().items() if name not in opt_in}


def as_variant(obj: Any, origin: str) -> Variant:
    """Turn what a spec points at into a Variant, or say why it cannot be one."""
    if isinstance(obj, Variant):
        return obj
    if isinstance(obj, type) and issubclass(obj, FixedPointLayer):
        return Variant.from_layer(obj)
    if isinstance(obj, nn.Module):
        raise VariantError(
            f"{origin} is a layer instance ({type(obj).__name__}); point at its class, or at a Variant, "
            "so that the suite can build it with seeded weights at every shape and scale"
        )
    if callable(obj) and not isinstance(obj, type):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise VariantError(
                f"{origin} is a function that needs arguments; expected an iqa Variant, a FixedPointLayer "
                "subclass, or a function of no arguments returning a Variant"
            ) from None
        except ValueError:
            pass  # no signature to inspect (a builtin): just call it
        made = obj()
        if isinstance(made, Variant):
            return made
        raise VariantError(f"{origin}: calling it returned {type(made).__name__}, not an iqa Variant")
    raise VariantError(
        f"{origin} is a {type(obj).__name__}; expected an iqa Variant, a FixedPointLayer subclass, "
        "or a function returning a Variant"
    )


def _import_target(target: str) -> Any:
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise VariantError(f"variant file {target!r} does not exist")
        name = f"iqa_user_variant_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # registered first, so that its classes pickle and dataclasses work
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise _import_failed(target, error) from error
        return module
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        raise VariantError(f"cannot import module {target!r} for a variant: {error}") from error
    except Exception as error:
        raise _import_failed(target, error) from error


def _import_failed(target: str, error: Exception) -> VariantError:
    """The error for a variant module that exists but raises while it is imported, with where it raised."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    return VariantError(f"importing {target!r} for a variant failed{where}: {type(error).__name__}: {error}")


def resolve(spec: str | Variant) -> Variant:
    """The Variant a spec names; a spec that does not resolve lists what exists."""
    if isinstance(spec, Variant):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise VariantError(f"a variant spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if ":" in spec:
        target, _, attr = spec.rpartition(":")
        module = _import_target(target)
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise VariantError(f"{target!r} has no attribute {attr!r} (variant spec {spec!r})")
            obj = getattr(obj, part)
        return as_variant(obj, f"variant spec {spec!r}")
    variants = available()
    if spec not in variants:
        raise VariantError(
            f"unknown variant {spec!r}; available: {', '.join(variants)} "
            "(or name one as package.module:attr or path/to/file.py:attr)"
        )
    return variants[spec]


def resolve_all(specs: list[str] | None) -> list[Variant]:
    """Variants for a list of specs (or a comma-separated one); none means the default selection
    (:func:`default_variants`: every available variant but the opt-in built-ins)."""
    if not specs:
        return list(default_variants().values())
    out: dict[str, tuple[str, Variant]] = {}
    for spec in specs:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            variant = resolve(part)
            if variant.name in out:
                first, seen = out[variant.name]
                if seen is variant or first == part:
                    continue
                raise VariantError(
                    f"two variants are named {variant.name!r} ({first!r} and {part!r}); "
                    "give one another name, since results and test ids are keyed by it"
                )
            out[variant.name] = (part, variant)
    if not out:
        raise VariantError(f"no variant named in {specs!r}")
    return [variant for _, variant in out.values()]
