"""How the benchmarks drive torchdeq, the peer library (PyPI; ``tox -e bench`` installs it).

Through its own API, as its DEQ core does: ``torchdeq.solver.anderson_solver``
/ ``fixed_point_iter`` for the forward solve under ``torch.no_grad()``, and
the IFT backward of ``torchdeq.grad.backward_factory(grad_type="ift")`` (the
``torch.autograd.Function`` form its DEQ core uses by default). torchdeq's
stop modes are iqa's: "abs" is ||f(z) - z|| and "rel" is
||f(z) - z|| / ||f(z)|| per batch element, and it stops when the largest over
the batch is below tol. It returns f(z_k) after testing z_k.

Imported only where torchdeq is installed (callers importorskip it first).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchdeq.grad import backward_factory
from torchdeq.solver import anderson_solver, fixed_point_iter

METHODS = {"anderson": anderson_solver, "picard": fixed_point_iter}


class Counted:
    """f with a count of its (batched) evaluations."""

    def __init__(self, f: Callable[[Tensor], Tensor]) -> None:
        self.f = f
        self.calls = 0

    def __call__(self, y: Tensor) -> Tensor:
        self.calls += 1
        return self.f(y)


@dataclass
class AdjointProbe:
    """What torchdeq's adjoint solve did: its map's evaluations and the relative residual of its answer."""

    calls: int = 0
    residual: float | None = None


def torchdeq_forward(
    method: str, f: Callable[[Tensor], Tensor], y0: Tensor, *, tol: float, stop: str, max_iter: int, memory: int
) -> Tensor:
    """torchdeq's forward solve of z = f(z) from y0, without a graph; Anderson with history ``memory``."""
    options = {"m": memory} if method == "anderson" else {}
    with torch.no_grad():
        z, _, _ = METHODS[method](f, y0, max_iter=max_iter, tol=tol, stop_mode=stop, **options)
    return z


def torchdeq_ift(
    method: str, *, tol: float, max_iter: int, memory: int, stop: str = "rel", probe: AdjointProbe | None = None
) -> Any:
    """torchdeq's IFT gradient functor ``ift(None, f, z) -> [z]``, its backward solver optionally watched."""
    solver = METHODS[method]

    def watched_solver(func: Callable[[Tensor], Tensor], x0: Tensor, **options: Any) -> Any:
        if probe is None:
            return solver(func, x0, **options)
        counted = Counted(func)
        out = solver(counted, x0, **options)
        probe.calls = counted.calls
        with torch.no_grad():
            g = out[0]
            image = func(g)
            probe.residual = float(torch.linalg.vector_norm(image - g) / torch.linalg.vector_norm(image))
        return out

    options: dict[str, Any] = {"max_iter": max_iter, "tol": tol, "stop_mode": stop}
    if method == "anderson":
        options["m"] = memory
    return backward_factory(grad_type="ift", b_solver=watched_solver, b_solver_kwargs=options)
