"""Test variants for the verdicts about convergence: a layer that gives the suite nothing to check, and one that
claims to contract where it does not.

``DRIFTING`` never has a fixed point: its map adds a positive step to y, f(y) = y + DRIFT exp(g(y)) with g the
Hopfield update softmax(Omega_Q(y) W_K(x)^T) x, so the residual DRIFT exp(g(y)) > 0 never vanishes (exp keeps
it away from zero: g itself, a convex combination of the tokens, can be 0 at D = 1), and its Jacobian
I + DRIFT diag(exp g) J_g has rho near 1 (the pre-LN residual block of issue 13 in miniature: "Picard out of
steps, rho ~ 1.00 at the last iterate"). Every property that needs a converged fixed point ends "not reached"
on it (properties/meta/test_not_reached.py).

``FALSE_CONTRACTIVE`` is the reference layer claiming ``contractive`` at weight scales [2, 4], where the
reference cycles or stalls (docs/theory.md#regimes: s ~ 3 cycles): properties/variant/test_claims.py must refute
the claim with a counterexample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from iqa.solvers import Map
from iqa.variants import HopfieldAttention, Variant, resolve

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

DRIFTING = Variant.from_layer(
    DriftingAttention,
    name="drifting",
    tags=_HOPFIELD.tags,
    description="y + DRIFT exp(Hopfield update): a residual that never vanishes, no fixed point",
)
