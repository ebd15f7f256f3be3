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

from iqa.layer import FixedPointLayer
from iqa.validation import check_positive_int
from iqa.variants.domain import ANY_SHAPE, Domain
from iqa.variants.weights import LinearFactory, check_scale, scaled_parameters


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
    #: Picard converges from the layer's own y0 and rho(J*) < 1 at every weight scale in the variant's
    #: ``contractive_scales``
    CONTRACTIVE = "contractive"
    #: the output at position i does not change when tokens after i change
    CAUSAL = "causal"
    #: with a key_padding_mask, the content of padded tokens changes no unpadded output
    PADDING_INVARIANT = "padding_invariant"
    #: permuting the tokens of x leaves the output unchanged (slots, latents)
    TOKEN_PERMUTATION_INVARIANT = "token_permutation_invariant"
    #: permuting the initial slots permutes the output slots the same way
    SLOT_PERMUTATION_EQUIVARIANT = "slot_permutation_equivariant"

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
    is known to fail for this variant. ``domain`` is the set of shapes the layer
    supports (the suite draws only inside it); ``contractive_scales`` the closed
    range of weight scales over which the ``contractive`` tag claims convergence;
    ``unscaled`` the parameters the weight scale must leave alone (informational
    for a hand-written factory, which applies the scale itself).
    """

    name: str
    factory: Factory
    tags: frozenset[Tag] = frozenset()
    expected_failures: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    domain: Domain = ANY_SHAPE
    contractive_scales: tuple[float, float] | None = None
    unscaled: frozenset[str] = frozenset()

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
        if not isinstance(self.domain, Domain):
            raise TypeError(f"variant {self.name!r}: domain must be an iqa.Domain, got {type(self.domain).__name__}")
        object.__setattr__(self, "unscaled", frozenset(self.unscaled))
        scales = self.contractive_scales
        if scales is not None:
            if not (
                isinstance(scales, tuple)
                and len(scales) == 2
                and all(isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in scales)
                and 0 < scales[0] <= scales[1]
            ):
                raise ValueError(
                    f"variant {self.name!r}: contractive_scales must be a pair (low, high) with 0 < low <= high, "
                    f"got {scales!r}"
                )
            object.__setattr__(self, "contractive_scales", (float(scales[0]), float(scales[1])))
        if (Tag.CONTRACTIVE in self.tags) != (scales is not None):
            raise ValueError(
                f"variant {self.name!r}: the contractive tag and contractive_scales go together "
                "(the claim names the weight scales it holds for)"
            )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle through the constructor (a mappingproxy does not pickle), for worker processes."""
        return (
            type(self),
            (
                self.name,
                self.factory,
                self.tags,
                dict(self.expected_failures),
                self.description,
                self.domain,
                self.contractive_scales,
                self.unscaled,
            ),
        )

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
        if not self.domain.dims(embed_dim, embed_dim):
            raise ValueError(
                f"variant {self.name!r}: embed_dim={embed_dim} is outside its domain ({self.domain.describe()})"
            )
        check_scale(self.name, scale)
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
        domain: Domain | None = None,
        contractive_scales: tuple[float, float] | None = None,
        unscaled: Iterable[str] | None = None,
    ) -> Variant:
        """A variant for a layer class, built by the default factory (:class:`iqa.variants.weights.LinearFactory`:
        the weight scale reaches every weight matrix but those named in ``unscaled``).

        Tags, expected failures, description, domain, contractive scales and unscaled names default to the
        class attributes ``tags``, ``expected_failures``, its docstring's first paragraph, ``domain``,
        ``contractive_scales`` and ``unscaled``.
        """
        doc = inspect.getdoc(layer_cls) or ""
        unscaled_names = frozenset(unscaled if unscaled is not None else getattr(layer_cls, "unscaled", ()))
        return cls(
            name=str(name or getattr(layer_cls, "variant_name", layer_cls.__name__)),
            factory=linear_factory(layer_cls, unscaled_names),
            tags=as_tags(tags if tags is not None else getattr(layer_cls, "tags", ())),
            expected_failures=dict(
                expected_failures if expected_failures is not None else getattr(layer_cls, "expected_failures", {})
            ),
            description=description if description is not None else " ".join(doc.split("\n\n")[0].split()),
            domain=domain if domain is not None else getattr(layer_cls, "domain", ANY_SHAPE),
            contractive_scales=(
                contractive_scales if contractive_scales is not None else getattr(layer_cls, "contractive_scales", None)
            ),
            unscaled=unscaled_names,
        )


def linear_factory(layer_cls: type[FixedPointLayer], unscaled: Iterable[str] = ()) -> Factory:
    """The default factory for a layer class (:class:`iqa.variants.weights.LinearFactory`)."""
    if not (isinstance(layer_cls, type) and issubclass(layer_cls, FixedPointLayer)):
        raise TypeError(f"linear_factory needs an iqa.FixedPointLayer subclass, got {layer_cls!r}")
    return LinearFactory(layer_cls, frozenset(unscaled))


__all__ = ["Domain", "Factory", "LinearFactory", "Tag", "Variant", "as_tags", "linear_factory", "scaled_parameters"]
