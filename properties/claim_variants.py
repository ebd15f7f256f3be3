"""Test variants for the verdicts about convergence and the start: a layer that gives the suite nothing to check,
layers that claim to contract where they do not, and a layer with its own start and readout.

``DRIFTING`` never has a fixed point: its map adds a positive step to y, f(y) = y + DRIFT exp(g(y)) with g the
Hopfield update softmax(Omega_Q(y) W_K(x)^T) x, so the residual DRIFT exp(g(y)) > 0 never vanishes (exp keeps
it away from zero: g itself, a convex combination of the tokens, can be 0 at D = 1), and its Jacobian
I + DRIFT diag(exp g) J_g has rho near 1 (the pre-LN residual block of issue 13 in miniature: "Picard out of
steps, rho ~ 1.00 at the last iterate"). Every property that needs a converged fixed point ends "not reached"
on it (properties/meta/test_not_reached.py). It claims hopfield's tags so that the suite runs those properties
on it; the claims that do not need a fixed point it honestly fails (its output leaves the convex hull).

``FALSE_CONTRACTIVE`` is the reference layer claiming ``contractive`` at weight scales [2, 4], where the
reference cycles or stalls (docs/theory.md#regimes: s ~ 3 cycles): properties/variant/test_claims.py must refute
the claim with a counterexample. ``UNSTABLE_START`` starts on a repelling fixed point (y0 = 0, f(y) = tanh(2 y):
Picard "converges" in one step, rho(J*) = 2), so only the claim's second half, rho(J*) < 1, refutes it.
``DRIFTING_CONTRACTIVE`` is DRIFTING claiming to contract: a property that finds no converged fixed point at
its claimed scales must fail, not end "not reached". ``HONEST_CONTRACTIVE`` is a claim that holds.

``TINY`` is Hopfield attention always at weight scale 0.01: it converges, to fixed points with rho(J*) ~ 1e-4, so the
properties that need rho(J*) >= 0.1 or 0.05 find no draw in their regime.

``OWN_START`` starts from seeded noise (drawn from the layer's start_generator) and reads its output out as
g(y*, x) = y* + x: the properties must use its y0 and readout, never assume y0 = x (properties/meta/test_start.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from iqa.solvers import Map
from iqa.variants import HopfieldAttention, Tag, Variant, resolve

#: How far the drifting map moves y per step, relative to the attention output.
DRIFT = 0.1


class DriftingAttention(HopfieldAttention):
    """f(y) = y + DRIFT exp(softmax(Omega_Q(y) W_K(x)^T) x): a residual step that never vanishes; no fixed point."""

    def fixed_point_map(self, x: Tensor) -> Map:
        K = self.keys(x)

        def f(y: Tensor) -> Tensor:
            return y + DRIFT * torch.exp(F.softmax(self.Omega_Q(y) @ K.transpose(-2, -1), dim=-1) @ x)

        return f


_HOPFIELD = resolve("hopfield")
_REFERENCE = resolve("reference")

DRIFTING = Variant.from_layer(
    DriftingAttention,
    name="drifting",
    tags=_HOPFIELD.tags,
    description="y + DRIFT exp(Hopfield update): a residual that never vanishes, no fixed point",
)


def claiming(variant: Variant, scales: tuple[float, float], name: str, description: str | None = None) -> Variant:
    """``variant`` renamed, with the contractive claim at weight scales ``scales`` added to its tags."""
    return dataclasses.replace(
        variant,
        name=name,
        tags=variant.tags | {Tag.CONTRACTIVE},
        contractive_scales=scales,
        description=variant.description if description is None else description,
    )


#: The reference claiming to contract at weight scales [2, 4], where it cycles or stalls: a false claim.
FALSE_CONTRACTIVE = claiming(
    _REFERENCE,
    (2.0, 4.0),
    "reference-claims-2-4",
    "the reference, falsely claiming contractive at weight scales [2, 4]",
)

#: The reference claiming to contract at weight scales [0.05, 0.5] (near-uniform attention: rho(J*) well below 1).
HONEST_CONTRACTIVE = claiming(
    _REFERENCE,
    (0.05, 0.5),
    "reference-claims-0.05-0.5",
    "the reference, claiming contractive at weight scales [0.05, 0.5]",
)

#: DRIFTING claiming to contract where it never converges: "not reached" must not hide it.
DRIFTING_CONTRACTIVE = claiming(DRIFTING, (0.05, 4.0), "drifting-claims-contractive")


class UnstableStart(HopfieldAttention):
    """Starts on a repelling fixed point: y0 = 0 and f(y) = tanh(2 y), so f(y0) = y0 while rho(J) = 2 there."""

    def initial_point(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def fixed_point_map(self, x: Tensor) -> Map:
        return lambda y: torch.tanh(2 * y)


UNSTABLE_START = Variant.from_layer(
    UnstableStart,
    name="unstable-start",
    tags={Tag.CONTRACTIVE},
    contractive_scales=(0.5, 1.0),
    description="starts on a repelling fixed point, claiming contractive",
)


class OwnStartAttention(HopfieldAttention):
    """Hopfield attention from a seeded noise start y0 ~ N(0, 1) (its start_generator), output y* + x."""

    def initial_point(self, x: Tensor) -> Tensor:
        return torch.randn(x.shape, generator=self.start_generator(x), dtype=x.dtype, device=x.device)

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        return y + x


OWN_START = Variant.from_layer(
    OwnStartAttention, name="own-start", tags={Tag.DETERMINISTIC}, description="noise start, readout y* + x"
)


def _tiny_weights(embed_dim: int, *, scale: float = 1.0, generator: Any = None, **options: Any) -> Any:
    return _HOPFIELD.factory(embed_dim, scale=TINY_SCALE, generator=generator, **options)


#: The weight scale every TINY layer is built at, whatever scale a property draws.
TINY_SCALE = 0.01

#: Hopfield attention whose weights are always at scale 0.01: it converges fast to a fixed point with rho(J*) far
#: below the rho >= 0.1 that the rate properties need (like a strongly contracting retrieval layer), so their
#: draws all fall outside the regime they need.
TINY = Variant("tiny-weights", _tiny_weights, tags=_HOPFIELD.tags, description="hopfield at weight scale 0.01")
