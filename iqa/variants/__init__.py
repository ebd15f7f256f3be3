"""Variants of the layer: the protocol, the built-ins and the registry."""

from iqa.variants.builtin import (
    BUILTIN_VARIANTS,
    OPT_IN_VARIANTS,
    DampedQueryAttention,
    HopfieldAttention,
    InjectedQueryAttention,
    PositionalQueryAttention,
    ScaledQueryAttention,
)
from iqa.variants.domain import ANY_SHAPE, Domain
from iqa.variants.protocol import Tag, Variant, as_tags, linear_factory
from iqa.variants.registry import (
    ENTRY_POINT_GROUP,
    ENV_VARIABLE,
    VariantError,
    available,
    builtin_variants,
    clear_plugin_cache,
    default_variants,
    opt_in_variants,
    plugin_variants,
    resolve,
    resolve_all,
)
from iqa.variants.weights import LinearFactory, scaled_parameters

__all__ = [
    "ANY_SHAPE",
    "BUILTIN_VARIANTS",
    "ENTRY_POINT_GROUP",
    "ENV_VARIABLE",
    "OPT_IN_VARIANTS",
    "DampedQueryAttention",
    "Domain",
    "HopfieldAttention",
    "InjectedQueryAttention",
    "LinearFactory",
    "PositionalQueryAttention",
    "ScaledQueryAttention",
    "Tag",
    "Variant",
    "VariantError",
    "as_tags",
    "available",
    "builtin_variants",
    "clear_plugin_cache",
    "default_variants",
    "linear_factory",
    "opt_in_variants",
    "plugin_variants",
    "resolve",
    "resolve_all",
    "scaled_parameters",
]
