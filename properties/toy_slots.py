"""A small, honest slot-attention-like variant for the suite's own tests, and mutants of it.

:class:`ToySlots` iterates K slots of width D against N tokens x [B, N, D], as slot
attention does (Locatello et al. 2020), without its GRU and MLP:

    logits = (W_K x) (W_Q y)^T / sqrt(D)          [B, N, K]
    a      = softmax over the slots (dim -1)      each token shares itself among the slots
    w      = a / sum over the tokens              each slot takes a weighted mean of the tokens
    f(y)   = w^T (W_V x)                          [B, K, D]

from a noise start y0 ~ N(0, 1) [B, K, D] drawn from ``self.start_generator(x)``, with the
readout g(y*, x) = W_O y* (row by row). Its state is not x's shape (K is drawn from
``Domain(slots=(1, 4))`` independently of N), so it exercises everything beyond the forward that
must work on such states (analysis, memory, measure, report, regress), and it is honest about the
claims it makes: batch independence, determinism, weight dependence, token permutation invariance
(the tokens enter only through sums over them) and slot permutation equivariance (every slot is
updated by the same rule, and W_O acts row by row). It is not in the registry.

The mutants each break one of those claims the way a real slot layer might:
:class:`GlobalRngStart` and :class:`FixedSeedStart` (a start that ignores the seed),
:class:`SlotIndexedQueries` (slots mixed up: slot k's query scaled by its index) and
:class:`PositionLeak` (token order leaks through positions added before a layer norm).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.layer import FixedPointLayer
from iqa.solvers import Map
from iqa.variants import Domain, Tag, Variant
from properties.mutants import Mutant

#: What the honest toy claims.
SLOT_TAGS = (
    Tag.BATCH_INDEPENDENT,
    Tag.DETERMINISTIC,
    Tag.WEIGHT_DEPENDENT,
    Tag.TOKEN_PERMUTATION_INVARIANT,
    Tag.SLOT_PERMUTATION_EQUIVARIANT,
)


class ToySlots(FixedPointLayer):
    """Slot attention without GRU or MLP: K slots take softmax-over-slots weighted means of the tokens' values.

    The start is N(0, 1) noise [B, K, D] from ``start_generator(x)``; the output is W_O y* row by row.
    """

    variant_name = "toy_slots"
    tags = SLOT_TAGS
    domain = Domain(slots=(1, 4))

    def __init__(self, embed_dim: int, n_iters: int = 10, *, slots: int = 2, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"slots must be an integer >= 1, got {slots!r}")
        self.slots = slots
        self.W_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_V = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_O = nn.Linear(embed_dim, embed_dim, bias=False)

    def weight_roles(self) -> dict[str, nn.Parameter]:
        return {"key": self.W_K.weight, "query": self.W_Q.weight, "value": self.W_V.weight, "output": self.W_O.weight}

    def initial_point(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], self.slots, x.shape[-1])
        return torch.randn(shape, generator=self.start_generator(x), dtype=x.dtype, device=x.device)

    def queries(self, y: Tensor) -> Tensor:
        return self.W_Q(y)

    def keys(self, x: Tensor) -> Tensor:
        return self.W_K(x)

    def fixed_point_map(self, x: Tensor) -> Map:
        k = self.keys(x)
        v = self.W_V(x)
        temperature = 1 / math.sqrt(x.shape[-1])

        def f(y: Tensor) -> Tensor:
            logits = torch.matmul(k, self.queries(y).transpose(-2, -1)) * temperature  # [B, N, K]
            share = torch.softmax(logits, dim=-1)  # each token shared among the slots
            # each slot: a weighted mean over the tokens; a slot that no token shares itself with (every share
            # underflowed to 0 in saturated attention) gets the zero update instead of 0 / 0
            total = share.sum(dim=-2, keepdim=True).clamp_min(torch.finfo(share.dtype).tiny)
            weights = share / total
            return torch.matmul(weights.transpose(-2, -1), v)

        return f

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        return self.W_O(y)


class GlobalRngStart(ToySlots):
    """Mutant: the noise start is drawn from torch's global RNG, not from ``start_generator(x)``."""

    def initial_point(self, x: Tensor) -> Tensor:
        return torch.randn((x.shape[0], self.slots, x.shape[-1]), dtype=x.dtype, device=x.device)


class FixedSeedStart(ToySlots):
    """Mutant: the noise start comes from a generator of its own, seeded 0 whatever ``start_seed`` is."""

    def initial_point(self, x: Tensor) -> Tensor:
        generator = torch.Generator(device=x.device).manual_seed(0)
        return torch.randn((x.shape[0], self.slots, x.shape[-1]), generator=generator, dtype=x.dtype, device=x.device)


class SlotIndexedQueries(ToySlots):
    """Mutant (slots mixed up): slot k's query is scaled by (k + 1): the update rule depends on the slot's index."""

    def queries(self, y: Tensor) -> Tensor:
        index = torch.arange(1, y.shape[-2] + 1, dtype=y.dtype, device=y.device)
        return self.W_Q(y) * index[:, None]


class PositionLeak(ToySlots):
    """Mutant: sinusoidal positions are added to the tokens before a (parameter-free) layer norm, as slot
    attention's encoders add position embeddings to their features: the order of the tokens leaks into the keys
    and the values."""

    def fixed_point_map(self, x: Tensor) -> Map:
        n, d = x.shape[-2], x.shape[-1]
        position = torch.arange(n, dtype=x.dtype, device=x.device)[:, None]
        frequency = torch.exp(-math.log(1e4) * torch.arange(d, dtype=x.dtype, device=x.device) / max(d, 1))
        return super().fixed_point_map(F.layer_norm(x + torch.sin(position * frequency), (d,)))


def slot_variant(layer_cls: type[ToySlots] = ToySlots, name: str | None = None) -> Variant:
    """The variant of the toy (or of a mutant of it: same tags and domain, the mutant's name)."""
    return Variant.from_layer(layer_cls, name=name or layer_cls.variant_name)


TOY_SLOTS = slot_variant()
#: Where the honest toy lives, for the mutants' control runs and for worker processes.
TOY_SLOTS_SPEC = "properties.toy_slots:TOY_SLOTS"
#: Each mutant with the property meant to catch it and the message of that property's own assertion.
SLOT_MUTANTS = (
    Mutant(
        slot_variant(GlobalRngStart, "slots-global-rng-start"),
        "the noise start is drawn from torch's global RNG",
        "variant.test_start:test_start_draws_from_its_generator",
        TOY_SLOTS_SPEC,
        r"from a generator that start_generator\(x\) did not return",
    ),
    Mutant(
        slot_variant(FixedSeedStart, "slots-fixed-seed-start"),
        "the noise start comes from a generator seeded 0, whatever the layer's seed",
        "variant.test_start:test_start_draws_from_its_generator",
        TOY_SLOTS_SPEC,
        r"from a generator that start_generator\(x\) did not return",
    ),
    Mutant(
        slot_variant(SlotIndexedQueries, "slots-indexed-queries"),
        "slot k's query is scaled by k + 1: the slots are not interchangeable",
        "variant.test_slots:test_map_is_slot_permutation_equivariant",
        TOY_SLOTS_SPEC,
        r"f\(P y; x\) != P f\(y; x\)",
    ),
    Mutant(
        slot_variant(SlotIndexedQueries, "slots-indexed-queries-solve"),
        "slot k's query is scaled by k + 1, seen through the solve from permuted slots",
        "variant.test_slots:test_solve_from_permuted_slots",
        TOY_SLOTS_SPEC,
        r"did not end at the permuted fixed point",
    ),
    Mutant(
        slot_variant(PositionLeak, "slots-position-leak"),
        "sinusoidal positions join the keys: the order of the tokens leaks into the slots",
        "variant.test_slots:test_token_permutation_invariance",
        TOY_SLOTS_SPEC,
        r"permuting the tokens (moved the fixed point state|changed the output)",
    ),
)
