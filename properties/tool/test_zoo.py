"""The zoo's oracles: each adapter in seed mode equals its package's own forward on ``layer.module``.

An adapter (``iqa/zoo/``) restates one iteration of a package's module as f(y; x) and the package's start as
y0. The oracle is the package itself: ``layer.module(x)``, the package's own forward, run on the same weights,
with its start noise (slot attention draws it from torch's global RNG) seeded with ``layer.start_seed``, which
is what the adapter's ``start_generator`` is seeded with (a fresh CPU generator and the global one seeded with
the same integer give the same stream). The adapters call the package's own submodules in the package's own
order, so the comparison is bitwise (``torch.equal``), in float64 and float32 alike; nothing here needs a
tolerance.

Each oracle is shown to fail on the bugs it guards against (``test_the_oracle_catches``): one iteration too
few, a start that ignores the seed, a map that leaves out a step of the package's loop, a Perceiver start that
skips its untied first block. Skipped, with the reason, where the ``zoo`` extra is not installed.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from iqa.layer import FixedPointLayer
from iqa.variants import Variant
from iqa.zoo import ZOO, spec

SLOT, PERCEIVER = "zoo-slot-attention", "zoo-perceiver"


def adapter(name: str) -> ModuleType:
    """The adapter module of zoo variant ``name``; the test is skipped when the package it wraps is missing."""
    spec, requirement, top = ZOO[name]
    pytest.importorskip(top, reason=f'needs {requirement}, from the optional extra "zoo" (pip install -e ".[zoo]")')
    return importlib.import_module(spec.partition(":")[0])


def package_forward(layer: FixedPointLayer, x: Tensor) -> Tensor:
    """The package's own forward on ``layer.module``, with torch's global RNG seeded with ``layer.start_seed``
    (and restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer.start_seed)
        out: Tensor = layer.module(x)
    return out


def inputs(shape: tuple[int, int, int], seed: int, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def assert_bitwise(y: Tensor, reference: Tensor, what: str) -> None:
    assert y.shape == reference.shape, f"{what}: shape {tuple(y.shape)}, the package's {tuple(reference.shape)}"
    gap = (y - reference).abs().max().item() if y.numel() else 0.0
    assert torch.equal(y, reference), f"{what}: differs from the package's own forward by up to {gap:.3g}"


shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(3, 8))  # B, N, D inside the domains (D >= 3)
seeds = st.integers(1, 2**31 - 1)
dtypes = st.sampled_from([torch.float64, torch.float32])
scales = st.sampled_from([0.25, 1.0, 4.0])


@given(
    shape=shapes,
    slots=st.integers(1, 5),
    n_iters=st.integers(0, 5),
    seed=seeds,
    scale=scales,
    dtype=dtypes,
    default_iters=st.booleans(),
)
def test_slot_attention_equals_the_package_forward(
    shape: tuple[int, int, int], slots: int, n_iters: int, seed: int, scale: float, dtype: torch.dtype, default_iters
) -> None:
    zoo = adapter(SLOT)
    options: dict[str, Any] = {} if default_iters else {"n_iters": n_iters}
    layer = zoo.SLOT_ATTENTION.make(shape[2], scale=scale, seed=seed, dtype=dtype, slots=slots, **options)
    if default_iters:  # the package's own number of iterations
        assert layer.n_iters == layer.module.iters == zoo.PACKAGE_ITERS == 3
    assert layer.module.iters == layer.n_iters and layer.slots == slots
    x = inputs(shape, seed, dtype)
    assert_bitwise(layer(x), package_forward(layer, x), f"slot attention, {layer.n_iters} iterations")


@given(
    shape=shapes,
    slots=st.integers(1, 5),
    n_iters=st.integers(1, 6),
    seed=seeds,
    scale=scales,
    dtype=dtypes,
    default_iters=st.booleans(),
)
def test_perceiver_equals_the_package_forward(
    shape: tuple[int, int, int], slots: int, n_iters: int, seed: int, scale: float, dtype: torch.dtype, default_iters
) -> None:
    zoo = adapter(PERCEIVER)
    options: dict[str, Any] = {} if default_iters else {"n_iters": n_iters}
    layer = zoo.PERCEIVER.make(shape[2], scale=scale, seed=seed, dtype=dtype, slots=slots, **options)
    if default_iters:  # the package README's Perceiver(depth=6): the untied block and 5 tied steps
        assert layer.n_iters == zoo.PACKAGE_DEPTH - 1 == 5
    layers = layer.module.layers
    assert len(layers) == layer.n_iters + 1 and all(block is layer.tied_block for block in layers[1:])
    assert layers[0] is not layer.tied_block and layer.slots == slots
    x = inputs(shape, seed, dtype)
    assert_bitwise(layer(x), package_forward(layer, x), f"perceiver, {layer.n_iters} tied steps")


# --- the oracles catch the bugs they guard against ---------------------------------------------------------


class Zero(torch.nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def slot_mutants() -> dict[str, type[FixedPointLayer]]:
    zoo = adapter(SLOT)
    base = zoo.SlotAttentionLayer

    class OneIterationShort(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.n_iters -= 1  # the module keeps the package's count

    class StartIgnoresSeed(base):  # type: ignore[misc, valid-type]
        def start_generator(self, x: Tensor) -> torch.Generator:
            return torch.Generator(device=x.device).manual_seed(0)

    class KeysFromRawInputs(base):  # type: ignore[misc, valid-type]
        def fixed_point_map(self, x: Tensor):  # type: ignore[no-untyped-def]
            norm, self.module.norm_input = self.module.norm_input, torch.nn.Identity()
            try:
                return super().fixed_point_map(x)
            finally:
                self.module.norm_input = norm

    class NoFeedForward(base):  # type: ignore[misc, valid-type]
        def fixed_point_map(self, x: Tensor):  # type: ignore[no-untyped-def]
            f, m = super().fixed_point_map(x), self.module

            def g(y: Tensor) -> Tensor:  # the step with the MLP residual left out (the module keeps its MLP)
                mlp, m.mlp = m.mlp, Zero()
                try:
                    return f(y)
                finally:
                    m.mlp = mlp

            return g

    return {c.__name__: c for c in (OneIterationShort, StartIgnoresSeed, KeysFromRawInputs, NoFeedForward)}


def perceiver_mutants() -> dict[str, type[FixedPointLayer]]:
    zoo = adapter(PERCEIVER)
    base = zoo.PerceiverLayer

    class OneTiedStepShort(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.n_iters -= 1

    class StartFromLatents(base):  # type: ignore[misc, valid-type]
        def initial_point(self, x: Tensor) -> Tensor:
            return self.module.latents.expand(x.shape[0], -1, -1).clone()  # the untied first block skipped

    class CrossAttentionOnly(base):  # type: ignore[misc, valid-type]
        def fixed_point_map(self, x: Tensor):  # type: ignore[no-untyped-def]
            block = self.tied_block

            def f(z: Tensor) -> Tensor:
                z = block.cross_attn(z, context=x) + z
                return block.cross_ff(z) + z  # the latent self-attention and its FF left out

            return f

    return {c.__name__: c for c in (OneTiedStepShort, StartFromLatents, CrossAttentionOnly)}


MUTANTS = [(SLOT, m) for m in ("OneIterationShort", "StartIgnoresSeed", "KeysFromRawInputs", "NoFeedForward")] + [
    (PERCEIVER, m) for m in ("OneTiedStepShort", "StartFromLatents", "CrossAttentionOnly")
]


@pytest.mark.parametrize(("name", "mutant"), MUTANTS, ids=[f"{n}-{m}" for n, m in MUTANTS])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_oracle_catches(name: str, mutant: str, dtype: torch.dtype) -> None:
    """The same comparison as the oracle, on an adapter with one bug: it must report a difference."""
    cls = (slot_mutants if name == SLOT else perceiver_mutants)()[mutant]
    shape, seed = (2, 5, 4), 7
    layer = Variant.from_layer(cls).make(shape[2], seed=seed, dtype=dtype, slots=3)
    assert layer.start_seed != 0, "the seed-ignoring mutant is invisible at start_seed 0"
    x = inputs(shape, seed, dtype)
    with pytest.raises(AssertionError, match="differs from the package's own forward"):
        assert_bitwise(layer(x), package_forward(layer, x), f"{name} mutant {mutant}")


# --- without the extra ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ZOO))
def test_a_missing_package_is_an_error_naming_the_extra(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing an adapter whose package is absent raises an ImportError that says how to install it (run here
    with the package hidden: None in sys.modules makes its import fail, installed or not)."""
    module, requirement, top = spec(name).partition(":")[0], ZOO[name][1], ZOO[name][2]
    for key in [key for key in sys.modules if key == top or key.startswith(top + ".")] or [top]:
        monkeypatch.setitem(sys.modules, key, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf'{requirement}, which is not installed; .*extra "zoo"'):
        importlib.import_module(module)


def test_zoo_names_resolve_to_specs_and_others_are_errors() -> None:
    assert spec("zoo-slot-attention") == "iqa.zoo.slot_attention:SLOT_ATTENTION"
    assert spec("zoo-perceiver") == "iqa.zoo.perceiver:PERCEIVER"
    with pytest.raises(KeyError, match="zoo-slot-attention, zoo-perceiver"):
        spec("slot-attention")


def test_importing_iqa_imports_no_zoo_package_and_no_sympy() -> None:
    """``import iqa`` (and the CLI) must work without the extra: it imports neither wrapped package. Nor sympy,
    which torch imports on a first autograd.grad (iqa.grad asks its question of torch at the first implicit
    output, not at import): ~0.4 s that ``iqa --help`` and collection-only processes would pay for nothing."""
    code = "import iqa, iqa.cli, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {TOPS!r}))"
    tops = {top for _, _, top in ZOO.values()} | {"sympy"}
    out = subprocess.run([sys.executable, "-c", code.replace("{TOPS!r}", repr(tops))], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout
