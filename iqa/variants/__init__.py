"""Variants of the layer: the protocol, the built-ins and the registry."""

from iqa.variants.builtin import (
    BUILTIN_VARIANTS,
    DampedQueryAttention,
    HopfieldAttention,
    InjectedQueryAttention,
    PositionalQueryAttention,
    ScaledQueryAttention,
)
from iqa.variants.protocol import Tag, Variant, as_tags, linear_factory
from iqa.variants.registry import (
    ENTRY_POINT_GROUP,
    ENV_VARIABLE,
    VariantError,
    available,
    builtin_variants,
    clear_plugin_cache,
    plugin_variants,
    resolve,
    resolve_all,
)

__all__ = [
    "BUILTIN_VARIANTS",
    "ENTRY_POINT_GROUP",
    "ENV_VARIABLE",
    "DampedQueryAttention",
    "HopfieldAttention",
    "InjectedQueryAttention",
    "PositionalQueryAttention",
    "ScaledQueryAttention",
    "Tag",
    "Variant",
    "VariantError",
    "as_tags",
    "available",
    "builtin_variants",
    "clear_plugin_cache",
    "linear_factory",
    "plugin_variants",
    "resolve",
    "resolve_all",
]
