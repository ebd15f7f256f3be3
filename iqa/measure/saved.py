"""Bytes that each backward mode saves for backward, against the number of forward steps T.

Unrolled differentiation keeps every step's activations, so its cost grows
like T; the implicit and phantom modes record one application of f (phantom:
k of them) whatever the forward took. The counts come from
:func:`iqa.memory.saved_tensor_bytes` (exact and deterministic), with the
layer's weights and the input excluded (they are alive anyway).

The unrolled mode runs the seed's loop for exactly T steps; the implicit and
phantom modes run a Picard solve with ``max_iter = T`` (fewer steps when it
converges first; ``steps`` records how many it took).
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


def measure_saved_bytes(variant: Variant, sweep: Sweep) -> dict[str, Any]:
    """{"tokens", "dim", "scale", "batch", "phantom_steps", "T": [...], "bytes": {mode: [...]}, "steps": {mode: [...]}}.

    The phantom mode records ``phantom_steps`` = k of the sweep's first phantom setting.
    """
    n, d = sweep.saved_bytes_shape
    cell = Cell(n, d, sweep.saved_bytes_scale, sweep.seeds[0])
    x = inputs(cell, sweep)
    depths = sorted(sweep.unrolled_T)
    k = sweep.phantom[0][0] if sweep.phantom else 1
    out: dict[str, Any] = {
        "tokens": n,
        "dim": d,
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
