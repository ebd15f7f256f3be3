"""The zoo: adapters that put real implicit and iterative attention layers from other packages under iqa.

Each adapter is a :class:`~iqa.FixedPointLayer` that wraps the package's own module (``layer.module``;
no copy of its code) and expresses one of its iterations as the fixed-point map f(y; x):

- ``iqa.zoo.slot_attention:SLOT_ATTENTION``: lucidrains' ``slot-attention`` (1.5.2), the slot update;
- ``iqa.zoo.perceiver:PERCEIVER``: ``perceiver-pytorch`` (0.11.0) with ``weight_tie_layers=True``, the
  weight-tied latent block.

They need the optional extra ``zoo`` (``pip install -e ".[zoo]"``), so they are not built-in variants and
``import iqa`` never imports them: name them by spec (``iqa check iqa.zoo.slot_attention:SLOT_ATTENTION``)
or through :func:`spec` (``iqa.zoo.spec("zoo-perceiver")``). Importing an adapter whose package is missing
raises an ImportError that names the extra.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iqa.variants import Variant

#: The extra that installs the wrapped packages.
EXTRA = "zoo"

#: Zoo variant name -> (its spec, the distribution it wraps, the top-level module that distribution installs).
ZOO: dict[str, tuple[str, str, str]] = {
    "zoo-slot-attention": ("iqa.zoo.slot_attention:SLOT_ATTENTION", "slot-attention==1.5.2", "slot_attention"),
    "zoo-perceiver": ("iqa.zoo.perceiver:PERCEIVER", "perceiver-pytorch==0.11.0", "perceiver_pytorch"),
}


def missing_extra(requirement: str, importing: str) -> str:
    """The message of the ImportError an adapter raises when the package it wraps is not installed."""
    return (
        f"{importing} wraps the package {requirement}, which is not installed; install iqa's optional extra "
        f'"{EXTRA}": pip install -e ".[{EXTRA}]" (or pip install {requirement})'
    )


def spec(name: str) -> str:
    """The ``module:attr`` spec of the zoo variant ``name`` (e.g. "zoo-slot-attention"), for --variant and
    ``iqa check``; an unknown name is an error listing the zoo."""
    if name not in ZOO:
        raise KeyError(f"no zoo variant {name!r}; the zoo has: {', '.join(ZOO)}")
    return ZOO[name][0]


def installed(name: str) -> bool:
    """Whether the package that zoo variant ``name`` wraps can be imported."""
    spec(name)
    return importlib.util.find_spec(ZOO[name][2]) is not None


def variant(name: str) -> Variant:
    """The zoo variant ``name``, imported now (an ImportError naming the extra when its package is missing)."""
    module, _, attr = spec(name).partition(":")
    found: Variant = getattr(importlib.import_module(module), attr)
    return found
