"""What a variant is: a layer factory plus honest claims about the layer.

A variant names a :class:`~iqa.layer.FixedPointLayer` subclass (its map
f(y; x), its start y0, and through the base class its forward with every
backward mode), a factory that builds it with seeded weights, the
:class:`Tag` s saying which properties apply to it, and the properties it is
known to fail (expected failures are data, not silence).
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from iqa.layer import FixedPointLayer, linear_init_


class Tag(str, enum.Enum):
    """Claims a variant makes; each admits the properties that rely on it."""

    #: every output row is a convex combination of the rows of x (so N = 1 gives y = x)
    CONVEX_HULL = "convex_hull"
    #: permuting the tokens of x permutes the rows of y the same way
    PERMUTATION_EQUIVARIANT = "permutation_equivariant"
    #: each batch element is computed independently of the others
    BATCH_INDEPENDENT = "batch_independent"
    #: the fixed point moves with the weights: weight gradients are not vacuous
    WEIGHT_DEPENDENT = "weight_dependent"
    #: 1 mean(x)^T is a fixed point for every input and weights (consensus)
    MEAN_FIXED_POINT = "mean_fixed_point"
    #: (2^k x, every weight / 2^k) gives 2^k y
    SCALE_COVARIANT = "scale_covariant"
    #: (x R, weights conjugated by an orthogonal R) gives y R
    ORTHOGONAL_EQUIVARIANT = "orthogonal_equivariant"
    #: the layer exposes score_matrix(x) = A with scores = A y^T (certificates apply)
    SCORE_MATRIX = "score_matrix"
    #: the same input and weights give bitwise the same output
    DETERMINISTIC = "deterministic"
    #: equal, bit for bit, to the seed document's code in seed mode
    SEED_EXACT = "seed_exact"

    def __str__(self) -> str:
        return self.value


def as_tags(tags: Iterable[str | Tag]) -> frozenset[Tag]:
    """Convert tag names to Tags; an unknown name is an error that lists the known ones."""
    out = set()
    for tag in tags:
        try:
            out.add(Tag(tag))
        except ValueError:
            known = ", ".join(t.value for t in Tag)
            raise ValueError(f"unknown tag {tag!r}; known tags: {known}") from None
    return frozenset(out)


Factory = Callable[..., FixedPointLayer]


@dataclass(frozen=True)
class Variant:
    """A named, tagged layer factory.

    ``factory(embed_dim, *, scale, generator, **options)`` returns a
    FixedPointLayer whose weights are drawn from ``generator`` at weight scale
    ``scale``; :meth:`make` moves it to the dtype and device asked for.
    ``expected_failures`` maps a property (test function name) to the reason it
    is known to fail for this variant.
    """

    name: str
    factory: Factory
    tags: frozenset[Tag] = frozenset()
    expected_failures: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a variant needs a non-empty name, got {self.name!r}")
        if not callable(self.factory):
            raise TypeError(f"variant {self.name!r}: factory must be callable, got {type(self.factory).__name__}")
        object.__setattr__(self, "tags", as_tags(self.tags))
        object.__setattr__(self, "expected_failures", MappingProxyType(dict(self.expected_failures)))

    def has(self, *tags: Tag | str) -> bool:
        return all(Tag(t) in self.tags for t in tags)

    def make(
        self,
        embed_dim: int,
        *,
        scale: float = 1.0,
        seed: int | torch.Generator = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
        **options: Any,
    ) -> FixedPointLayer:
        """Build the layer: weights from ``seed`` at ``scale``, then to dtype/device.

        ``options`` (n_iters, solver, tol, backward, ...) go to the layer.
        """
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
        layer = self.factory(embed_dim, scale=scale, generator=generator, **options)
        if not isinstance(layer, FixedPointLayer):
            raise TypeError(
                f"variant {self.name!r}: factory returned {type(layer).__name__}, not an iqa.FixedPointLayer"
            )
        return layer.to(dtype=dtype, device=device)

    @classmethod
    def from_layer(
        cls,
        layer_cls: type[FixedPointLayer],
        name: str | None = None,
        tags: Iterable[str | Tag] | None = None,
        expected_failures: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> Variant:
        """A variant for a layer class whose weights are its nn.Linear modules.

        Tags, expected failures and description default to the class attributes
        ``tags``, ``expected_failures`` and its docstring's first line.
        """
        doc = inspect.getdoc(layer_cls) or ""
        return cls(
            name=str(name or getattr(layer_cls, "variant_name", layer_cls.__name__)),
            factory=linear_factory(layer_cls),
            tags=as_tags(tags if tags is not None else getattr(layer_cls, "tags", ())),
            expected_failures=dict(
                expected_failures if expected_failures is not None else getattr(layer_cls, "expected_failures", {})
            ),
            description=description if description is not None else doc.split("\n")[0],
        )


def linear_factory(layer_cls: type[FixedPointLayer]) -> Factory:
    """Factory for a layer whose weights are nn.Linear modules: each gets nn.Linear's
    default init drawn from the generator (in module order) times ``scale``."""

    def factory(
        embed_dim: int, *, scale: float = 1.0, generator: torch.Generator | None = None, **options: Any
    ) -> FixedPointLayer:
        layer = layer_cls(embed_dim, **options)
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                linear_init_(module, scale, generator)
                if module.bias is not None:
                    with torch.no_grad():
                        module.bias.zero_()
        return layer

    factory.__name__ = f"{layer_cls.__name__}_factory"
    factory.__qualname__ = factory.__name__
    return factory
