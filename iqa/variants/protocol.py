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
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from iqa.layer import FixedPointLayer, linear_init_
from iqa.validation import check_positive_int


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
    #: the layer exposes score_matrix(x) = A and values(x) = V with scores A y^T (or y A^T where its
    #: score_form says so) depending on the weights only through A (iqa.analysis certificates apply)
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
        failures = dict(self.expected_failures)
        for test, reason in failures.items():
            if not (isinstance(test, str) and test.startswith("test_") and isinstance(reason, str) and reason):
                raise ValueError(
                    f"variant {self.name!r}: expected_failures maps a property's test function name "
                    f"(test_...) to the reason it fails, got {test!r}: {reason!r}"
                )
        object.__setattr__(self, "expected_failures", MappingProxyType(failures))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle through the constructor (a mappingproxy does not pickle), for worker processes."""
        return (type(self), (self.name, self.factory, self.tags, dict(self.expected_failures), self.description))

    def __repr__(self) -> str:
        # Short, so that Hypothesis's falsifying examples stay readable.
        return f"Variant({self.name!r})"

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

        ``seed`` is an int (a fresh CPU generator is seeded with it) or a
        ``torch.Generator`` that the factory draws from. ``options`` (n_iters,
        solver, tol, backward, ...) go to the layer.
        """
        check_positive_int("embed_dim", embed_dim)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale >= 0 and math.isfinite(scale)):
            raise ValueError(f"variant {self.name!r}: scale must be a finite number >= 0, got {scale!r}")
        if isinstance(seed, torch.Generator):
            generator = seed
        elif isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63:
            generator = torch.Generator().manual_seed(seed)
        else:
            raise ValueError(
                f"variant {self.name!r}: seed must be an int in [0, 2**63) or a torch.Generator, got {seed!r}"
            )
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
        ``tags``, ``expected_failures`` and its docstring's first paragraph.
        """
        doc = inspect.getdoc(layer_cls) or ""
        return cls(
            name=str(name or getattr(layer_cls, "variant_name", layer_cls.__name__)),
            factory=linear_factory(layer_cls),
            tags=as_tags(tags if tags is not None else getattr(layer_cls, "tags", ())),
            expected_failures=dict(
                expected_failures if expected_failures is not None else getattr(layer_cls, "expected_failures", {})
            ),
            description=description if description is not None else " ".join(doc.split("\n\n")[0].split()),
        )


def linear_factory(layer_cls: type[FixedPointLayer]) -> Factory:
    """Factory for a layer whose weights are nn.Linear modules (see :class:`LinearFactory`)."""
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, FixedPointLayer)):
        raise TypeError(f"linear_factory needs an iqa.FixedPointLayer subclass, got {layer_cls!r}")
    return LinearFactory(layer_cls)


@dataclass(frozen=True)
class LinearFactory:
    """Builds ``layer_cls(embed_dim, **options)`` with seeded weights at a weight scale.

    Every nn.Linear weight gets nn.Linear's default init (Kaiming-uniform)
    drawn from the generator, in module order, times ``scale``; biases are
    zeroed. The constructor itself runs under torch's global RNG forked and
    seeded from the generator's state, so any other parameter the layer draws
    in ``__init__`` (e.g. ``nn.Parameter(torch.randn(...))``) is reproducible
    from the seed too (such parameters are not multiplied by ``scale``), and
    the caller's global RNG is left as it was. A class (not a closure) so that
    a variant pickles to worker processes.
    """

    layer_cls: type[FixedPointLayer]

    def __call__(
        self, embed_dim: int, *, scale: float = 1.0, generator: torch.Generator | None = None, **options: Any
    ) -> FixedPointLayer:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derived_seed(generator))
            layer = self.layer_cls(embed_dim, **options)
        for module in layer.modules():
            if isinstance(module, nn.Linear):
                linear_init_(module, scale, generator)
                if module.bias is not None:
                    with torch.no_grad():
                        module.bias.zero_()
        return layer


def _derived_seed(generator: torch.Generator) -> int:
    """A seed drawn from a copy of ``generator``: a function of its state that leaves it unchanged."""
    copy = torch.Generator(device=generator.device)
    copy.set_state(generator.get_state())
    return int(torch.randint(0, 2**62, (1,), generator=copy, device=generator.device))
