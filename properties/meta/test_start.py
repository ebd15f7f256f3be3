"""Meta tests of the start property (properties/variant/test_layer_solve.py: n_iters = 0 gives the readout of
the variant's own start): it holds for a layer whose start is not x (seeded noise) and whose output is not its
state (readout y + x), where the former form "returns x" raised a false alarm, and fails on the bugs it guards
against: a start drawn from torch's global RNG, a forward that skips the readout, a start that is x's storage.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from iqa.layer import FixedPointLayer
from properties.claim_variants import OWN_START, OwnStartAttention
from properties.meta.test_mutants import run_property
from properties.strategies import Case
from properties.variant.test_layer_solve import test_zero_iterations_return_the_start as returns_the_start

DEVICE = torch.device("cpu")


def test_the_start_is_not_x_here() -> None:
    """The premise: this layer's start and output at n_iters = 0 differ from x (the old property failed here)."""
    case = Case(batch=1, tokens=3, dim=2, dtype=torch.float64, scale=1.0, seed=0)
    layer, x = case.layer(OWN_START, n_iters=0), case.inputs()
    assert not torch.equal(layer.initial_point(x), x) and not torch.equal(layer(x), x)


def test_holds_for_a_layer_with_its_own_start_and_readout() -> None:
    outcome = run_property(returns_the_start, OWN_START, DEVICE)
    assert outcome.kind == "passed", outcome.detail


def test_a_start_from_the_global_rng_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OwnStartAttention, "initial_point", lambda self, x: torch.randn(x.shape, dtype=x.dtype))
    outcome = run_property(returns_the_start, OWN_START, DEVICE)
    assert outcome.matches("initial_point\\(x\\) differs between two calls"), outcome


def test_a_forward_without_the_readout_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def state_only(self: FixedPointLayer, x: Tensor, track: bool = False, key_padding_mask: Any = None) -> Any:
        return self.solve_state(x, track, key_padding_mask)

    monkeypatch.setattr(FixedPointLayer, "forward", state_only)
    outcome = run_property(returns_the_start, OWN_START, DEVICE)
    assert outcome.matches("the output is not the readout"), outcome


def test_a_start_that_is_x_itself_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OwnStartAttention, "initial_point", lambda self, x: x)
    outcome = run_property(returns_the_start, OWN_START, DEVICE)
    assert outcome.matches("returns x's own storage"), outcome
