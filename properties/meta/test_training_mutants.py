"""The training properties fail on the bugs they guard against (properties/variant/test_training.py).

Each test injects one bug by monkeypatching and runs the property on hopfield: it must raise.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import iqa.grad
import iqa.train.loop
import iqa.train.session
from iqa.variants import resolve
from properties.variant import test_training as training


def test_flipped_implicit_gradient_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = iqa.grad._adjoint_hook

    def flipped(*args: Any, **kwargs: Any) -> Any:
        hook = original(*args, **kwargs)
        return lambda v, *rest: -hook(v, *rest)

    monkeypatch.setattr(iqa.grad, "_adjoint_hook", flipped)
    with pytest.raises(AssertionError, match="differ by more than"):
        training.test_implicit_training_matches_unrolled(resolve("hopfield"))


def test_ignored_gamma_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iqa.train.loop, "regulariser", lambda f, y, g: torch.zeros((), dtype=y.dtype))
    with pytest.raises(AssertionError, match="not 1% below"):
        training.test_jacobian_regularisation_lowers_rho(resolve("hopfield"))


def test_unseeded_data_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def global_rng(seed: int, stream: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))

    monkeypatch.setattr(iqa.train.loop, "generator", global_rng)
    with pytest.raises(AssertionError, match="two training runs from seed 3 differ"):
        training.test_training_is_bit_for_bit_reproducible(resolve("hopfield"))


def test_ignored_seed_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = iqa.train.session.train_run

    def seed_zero(variant: Any, task: Any, run: Any, config: Any, seed: int) -> Any:
        return original(variant, type(task)(task.name, task.tokens, task.dim, 0), run, config, 0)

    monkeypatch.setattr(iqa.train.session, "train_run", seed_zero)
    with pytest.raises(AssertionError, match="the seed is not used"):
        training.test_training_is_bit_for_bit_reproducible(resolve("hopfield"))
