"""The start y0 of every variant: seeded, reproducible, and never from torch's global RNG.

A noise start (slots, latents) must draw from ``layer.start_generator(x)``, a generator seeded
with the layer's ``start_seed`` (which ``Variant.make`` sets from its seed), so that the same
layer gives the same start every forward, and another seed another start. A start drawn from
torch's global RNG, or from a generator of its own seeded with a constant, ignores the seed:
the suite's determinism and its seeds would no longer mean what they say. Random draws are
seen through a :class:`torch.overrides.TorchFunctionMode` while ``initial_point`` runs; each
must name a generator that ``start_generator`` returned. A start without random draws (x, zeros,
a learned parameter) passes, as long as it is reproducible.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import event, given, note
from torch import Tensor
from torch.overrides import TorchFunctionMode

from iqa.variants import Variant
from properties.strategies import Case, cases

#: torch functions and Tensor methods that draw random numbers (their ``generator`` keyword names the source).
RANDOM = frozenset(
    {
        "rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal", "bernoulli",
        "multinomial", "poisson", "normal_", "uniform_", "random_", "exponential_", "geometric_", "cauchy_",
        "log_normal_", "bernoulli_",
    }
)  # fmt: skip


class RandomDraws(TorchFunctionMode):
    """Records each random draw while active: (its function's name, the generator it was given or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.draws: list[tuple[str, torch.Generator | None]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in RANDOM:
            self.draws.append((name, kwargs.get("generator")))
        return func(*args, **kwargs)


def watched_start(layer: Any, x: Tensor) -> tuple[Tensor, list[tuple[str, torch.Generator | None]], list[Any]]:
    """y0 = layer.initial_point(x) with its random draws recorded, and the generators start_generator returned."""
    made: list[Any] = []
    original = layer.start_generator

    def spy(x_: Tensor) -> torch.Generator:
        generator = original(x_)
        made.append(generator)
        return generator

    layer.start_generator = spy
    try:
        with torch.no_grad(), RandomDraws() as mode:
            y0 = layer.initial_point(x)
    finally:
        del layer.start_generator  # the instance attribute shadowed the method
    return y0, mode.draws, made


@given(case=cases(tokens=(1, 4), dim=(1, 4)))
def test_start_draws_from_its_generator(variant: Variant, case: Case, device) -> None:
    """Every random draw of initial_point names a generator from start_generator(x); the start is bitwise the
    same on a second call and leaves torch's global RNG as it was; a start that draws changes with start_seed."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    state = torch.random.get_rng_state()
    y0, draws, made = watched_start(layer, x)
    again, _, _ = watched_start(layer, x)
    event(f"start: {'random' if draws else 'no random draws'}")
    note(f"random draws of initial_point: {[name for name, _ in draws]}; start_generator calls: {len(made)}")
    foreign = [name for name, generator in draws if not any(generator is g for g in made)]
    assert not foreign, (
        f"{variant.name}: initial_point draws {foreign} from a generator that start_generator(x) did not return "
        "(torch's global RNG, or one of its own): the start ignores the layer's seed"
    )
    assert torch.equal(torch.random.get_rng_state(), state), f"{variant.name}: initial_point moved torch's global RNG"
    assert torch.equal(y0, again), f"{variant.name}: two calls of initial_point(x) on one layer differ"
    if draws:
        layer.start_seed = layer.start_seed + 1
        other, _, _ = watched_start(layer, x)
        assert not torch.equal(other, y0), f"{variant.name}: start_seed + 1 gives the same random start"
