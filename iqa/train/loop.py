"""One training run: a variant's layer trained on a task in one backward mode, recorded as it goes.

Every run of a task starts from the same weights (the variant's factory at
``seed``), sees the same batches in the same order (a generator seeded from
``seed``) and uses the same optimiser (Adam, ``config.lr``); only the backward
mode and the Jacobian-regularisation weight gamma differ. The loss is the
task's mean squared error plus gamma * ||J||_F^2 / n (Hutchinson, one probe per
element, :mod:`iqa.train.jacreg`). A step whose loss or gradient is not finite
ends the run (``stopped_at``): what follows would be NaN.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from iqa.grad import IQAWarning, Phantom
from iqa.layer import FixedPointLayer
from iqa.solvers import Solution, Status
from iqa.train.config import Run, TrainConfig
from iqa.train.jacreg import regulariser
from iqa.train.losses import task_loss
from iqa.train.optim import Adam
from iqa.train.recorder import diagnose
from iqa.train.tasks import Task
from iqa.variants import Variant

#: Offsets of the generators derived from the seed, one per use, so that no two uses share draws.
DATA_STREAM, PROBE_STREAM = 0, 1


def build_layer(variant: Variant, run: Run, config: TrainConfig, seed: int) -> FixedPointLayer:
    """The variant's layer at weight scale ``config.weight_scale`` from ``seed``, in ``run``'s mode (float64);
    a slot variant gets the lowest K of its domain (``slots=K``)."""
    k, lam = config.phantom
    slots = variant.domain.slots
    options: dict[str, Any] = {} if slots is None else {"slots": slots[0]}
    return variant.make(
        config.dim,
        scale=config.weight_scale,
        seed=seed,
        dtype=torch.float64,
        solver=config.solver,
        tol=config.tol,
        max_iter=config.unrolled_steps if run.mode == "unrolled" else config.max_iter,
        backward=Phantom(steps=k, damping=lam) if run.mode == "phantom" else run.mode,
        **options,
    )


def status_shares(solution: Solution | None) -> dict[str, float] | None:
    """The fraction of batch elements with each status (None without a solve)."""
    if solution is None:
        return None
    total = len(solution.statuses)
    return {s.value: sum(1 for t in solution.statuses if t is s) / total for s in Status}


def generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 4 + stream)


def train_run(variant: Variant, task: Task, run: Run, config: TrainConfig, seed: int) -> dict[str, Any]:
    """Train one run and return its record (JSON-ready: lists of numbers, None where nothing was measured)."""
    layer = build_layer(variant, run, config, seed)
    params = [p for p in layer.parameters() if p.requires_grad]
    optimiser = Adam(params, lr=config.lr)
    data = generator(seed, DATA_STREAM)
    heldout = task.sample(config.heldout, data)
    probes = generator(seed, PROBE_STREAM)
    updates: dict[str, list[Any]] = {
        "train_loss": [],
        "regulariser": [],
        "forward_steps": [],
        "forward_status": [],
        "adjoint_steps": [],
        "adjoint_status": [],
    }
    records: list[dict[str, Any]] = [diagnose(layer, heldout, config, seed, step=0)]
    stopped_at = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IQAWarning)  # non-converged solves are recorded as statuses instead
        for step in range(1, config.steps + 1):
            x, target = task.sample(config.batch, data)
            optimiser.zero_grad()
            state = layer.solve_state(x)  # y*: the regulariser's point; the loss is on the output g(y*, x)
            assert isinstance(state, torch.Tensor)
            y = layer.readout(state, x)
            forward = layer.last_solution
            loss = task_loss(y, target)
            reg = regulariser(layer.fixed_point_map(x), state, probes) if run.gamma > 0 else None
            total = loss + run.gamma * reg if reg is not None else loss
            finite = bool(torch.isfinite(total))
            if finite:
                total.backward()
                finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
            adjoint = layer.last_backward_solution if run.mode == "implicit" else None
            updates["train_loss"].append(_number(loss))
            updates["regulariser"].append(_number(reg) if reg is not None else None)
            updates["forward_steps"].append(list(forward.steps) if forward is not None else None)
            updates["forward_status"].append(status_shares(forward))
            updates["adjoint_steps"].append(list(adjoint.steps) if adjoint is not None else None)
            updates["adjoint_status"].append(status_shares(adjoint))
            if not finite:
                stopped_at = step
                break
            optimiser.step()
            if step % config.record_every == 0 or step == config.steps:
                records.append(diagnose(layer, heldout, config, seed, step=step))
    return {
        "task": task.name,
        "mode": run.mode,
        "gamma": run.gamma,
        "label": run.label,
        "stopped_at": stopped_at,
        "updates": updates,
        "records": records,
    }


def _number(t: torch.Tensor) -> float | None:
    value = float(t.detach())
    return value if math.isfinite(value) else None
