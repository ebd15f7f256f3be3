"""Bytes that each backward mode saves for backward, against the number of forward steps T.

Unrolled differentiation keeps every step's activations, so its cost grows
like T; the implicit and phantom modes record one application of f (phantom:
k of them) whatever the forward took. The counts come from
:func:`iqa.memory.saved_tensor_bytes` (exact and deterministic), with the
layer's weights and the input excluded (they are alive anyway).

The unrolled mode runs the seed's loop for exactly T steps; the implicit and
phantom modes run a Picard solve with ``max_iter = T`` (fewer steps when it
converges first; ``steps`` records how many it took).

The shape is the sweep's ``saved_bytes_shape`` (N, D) moved into the variant's
shape domain (:func:`saved_bytes_cell`: the nearest allowed D and N above, and
K = the top of a slot range); the record names the shape measured.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from iqa.grad import BACKWARD_MODES, IQAWarning, Phantom
from iqa.measure.cell import inputs, make_layer
from iqa.measure.sweep import Cell, Sweep
from iqa.memory import saved_tensor_bytes
from iqa.variants import Variant


def saved_bytes_cell(variant: Variant, sweep: Sweep) -> Cell:
    """The cell of the bytes-saved measurement: ``saved_bytes_shape`` (N, D) where the variant's domain allows
    it, else the smallest allowed D >= D (or the largest below) and N cut into the domain's range; a slot
    variant's K is the top of its range (the largest state it claims)."""
    n, d = sweep.saved_bytes_shape
    domain = variant.domain
    if not domain.contains(n, d, None if domain.slots is None else domain.slots[1]):
        dims = domain.dims(d, max(d, domain.min_dim) + 64 * domain.dim_multiple) or domain.dims(1, d)
        if not dims:
            raise ValueError(f"variant {variant.name!r}: no width D near {d} lies in its domain ({domain.describe()})")
        d = dims[0] if dims[0] >= d else dims[-1]
        n = min(max(n, domain.min_tokens), domain.max_tokens if domain.max_tokens is not None else n)
    k = None if domain.slots is None else domain.slots[1]
    return Cell(n, d, sweep.saved_bytes_scale, sweep.seeds[0], slots=k)


def measure_saved_bytes(variant: Variant, sweep: Sweep) -> dict[str, Any]:
    """{"tokens", "dim", ("slots"), "scale", "batch", "phantom_steps", "T": [...], "bytes": {mode: [...]},
    "steps": {mode: [...]}}.

    The phantom mode records ``phantom_steps`` = k of the sweep's first phantom setting.
    """
    cell = saved_bytes_cell(variant, sweep)
    n, d = cell.tokens, cell.dim
    x = inputs(cell, sweep)
    depths = sorted(sweep.unrolled_T)
    k = sweep.phantom[0][0] if sweep.phantom else 1
    out: dict[str, Any] = {
        "tokens": n,
        "dim": d,
        **({} if cell.slots is None else {"slots": cell.slots}),
        "scale": sweep.saved_bytes_scale,
        "batch": sweep.batch,
        "phantom_steps": k,
        "T": depths,
        "bytes": {mode: [] for mode in BACKWARD_MODES},
        "steps": {mode: [] for mode in BACKWARD_MODES},
    }
    for T in depths:
        for mode in BACKWARD_MODES:
            if mode == "unrolled":
                layer = make_layer(variant, cell, sweep, n_iters=T)
            else:
                backward = Phantom(steps=k) if mode == "phantom" else mode
                layer = make_layer(variant, cell, sweep, solver="picard", tol=sweep.tol, max_iter=T, backward=backward)
            exclude = [*layer.parameters(), x]
            with warnings.catch_warnings(), torch.enable_grad():
                warnings.simplefilter("ignore", IQAWarning)
                count = saved_tensor_bytes(lambda layer=layer: layer(x), exclude=exclude)  # type: ignore[misc]
            solution = layer.last_solution
            out["bytes"][mode].append(count)
            out["steps"][mode].append(T if solution is None else solution.n_steps)
    return out
