"""What the zoo's layers do as fixed-point iterations, measured: ``python -m iqa.zoo.findings``.

For each zoo variant, at the weight scales given (scale 1 is the package's own init), seeds 0..S-1 and
a batch of 2 inputs x ~ N(0, 1) in float64:

- **contraction**: Picard from the variant's own start to tol 1e-10 (at most 500 steps); the status of
  every batch element, its steps, and rho(J) = the spectral radius of df/dy at the last iterate
  (:func:`iqa.analysis.spectral_radius`: dense up to K * D = 256, Arnoldi beyond), and at the iterate the
  package itself stops at (its own number of iterations);
- **gradients** (one input per seed, loss <w, y*> with w ~ N(0, 1)): the implicit weight gradient
  (adjoint solve, tol 1e-12) against the gradient unrolled through the same converged Picard solve, and its
  cosine with the gradient the package trains with (autograd through its own number of iterations).

Every number is a deterministic function of the seeds: the same command prints the same Markdown
(``--out reports/zoo/findings.md`` also writes it there).
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from iqa import analysis
from iqa.atomic import write_text
from iqa.grad import IQAWarning
from iqa.layer import FixedPointLayer
from iqa.runtime import configure_threads
from iqa.solvers import solve
from iqa.zoo import ZOO, variant

TOL, MAX_ITER, GRAD_TOL = 1e-10, 500, 1e-12


@dataclass(frozen=True)
class Cell:
    """One measured configuration: D, N tokens, K slots, weight scale."""

    dim: int
    tokens: int
    slots: int
    scale: float


@dataclass(frozen=True)
class Contraction:
    cell: Cell
    statuses: list[str]
    steps: list[int]
    rho_last: list[float]
    rho_package: list[float]
    growth: list[float]  # ||y_last|| / ||y0|| per element: a drifting iteration grows


def _inputs(cell: Cell, seed: int, batch: int) -> Tensor:
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn((batch, cell.tokens, cell.dim), dtype=torch.float64, generator=g)


def _layer(name: str, cell: Cell, seed: int, **options: object) -> FixedPointLayer:
    return variant(name).make(cell.dim, scale=cell.scale, seed=seed, slots=cell.slots, **options)  # type: ignore[arg-type]


def contraction(name: str, cell: Cell, seeds: int) -> Contraction:
    """Picard's status, steps and rho(J) at its last iterate and at the package's own last iterate."""
    statuses: list[str] = []
    steps: list[int] = []
    rho_last: list[float] = []
    rho_package: list[float] = []
    growth: list[float] = []
    for seed in range(seeds):
        layer = _layer(name, cell, seed)
        x = _inputs(cell, seed, 2)
        with torch.no_grad():
            f, y0 = layer.fixed_point_map(x), layer.initial_point(x)
            sol = solve(f, y0, "picard", tol=TOL, max_iter=MAX_ITER)
            y_package = y0
            for _ in range(layer.n_iters):
                y_package = f(y_package)
        statuses += [s.name for s in sol.statuses]
        steps += list(sol.steps)
        rho_last += analysis.spectral_radius(f, sol.y).tolist()
        rho_package += analysis.spectral_radius(f, y_package).tolist()
        growth += (sol.y.flatten(1).norm(dim=1) / y0.flatten(1).norm(dim=1)).tolist()
    return Contraction(cell, statuses, steps, rho_last, rho_package, growth)


@dataclass(frozen=True)
class Gradients:
    cell: Cell
    converged: list[bool]  # the implicit run's forward and adjoint solves both converged
    rho: list[float]  # rho(J*) at the fixed point
    implicit_vs_unrolled: list[float]  # ||g_implicit - g_unrolled|| / ||g_unrolled||, over every weight
    cosine_package: list[float]  # cos(g_implicit, g_package), g_package through the package's own iterations


def _weight_gradient(layer: FixedPointLayer, x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """(y, the gradient of <w, y> for every parameter, flattened into one vector)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    y = layer(x)
    grads = torch.autograd.grad((w * y).sum(), params, allow_unused=True)
    flat = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return y.detach(), torch.cat([g.flatten() for g in flat])


def gradients(name: str, cell: Cell, seeds: int) -> Gradients:
    """The implicit gradient against unrolled-to-convergence and against the package's own training gradient."""
    converged: list[bool] = []
    rho: list[float] = []
    vs_unrolled: list[float] = []
    cosine: list[float] = []
    solve_options = {"solver": "picard", "tol": GRAD_TOL, "max_iter": 4 * MAX_ITER}
    for seed in range(seeds):
        with warnings.catch_warnings():  # non-converged solves warn; they are counted and left out instead
            warnings.simplefilter("ignore", IQAWarning)
            ok, r, error, cos = _gradient_case(name, cell, seed, solve_options)
        converged.append(ok)
        rho.append(r)
        vs_unrolled.append(error)
        cosine.append(cos)
    return Gradients(cell, converged, rho, vs_unrolled, cosine)


def _gradient_case(
    name: str, cell: Cell, seed: int, solve_options: dict[str, object]
) -> tuple[bool, float, float, float]:
    """(converged, rho(J*), implicit vs unrolled relative error, cosine with the package's gradient) for one seed."""
    x = _inputs(cell, seed, 1)
    w = torch.randn(
        (1, cell.slots, cell.dim), dtype=torch.float64, generator=torch.Generator().manual_seed(20_000 + seed)
    )
    implicit = _layer(name, cell, seed, backward="implicit", **solve_options)
    y, g_implicit = _weight_gradient(implicit, x, w)
    forward, adjoint = implicit.last_solution, implicit.last_backward_solution
    ok = forward is not None and forward.converged and adjoint is not None and adjoint.converged
    _, g_unrolled = _weight_gradient(_layer(name, cell, seed, backward="unrolled", **solve_options), x, w)
    _, g_package = _weight_gradient(_layer(name, cell, seed), x, w)  # seed mode: the package's own iterations
    rho = float(analysis.spectral_radius(implicit.fixed_point_map(x), y)[0])
    error = float((g_implicit - g_unrolled).norm() / g_unrolled.norm().clamp_min(1e-300))
    cosine = float(g_implicit @ g_package / (g_implicit.norm() * g_package.norm()).clamp_min(1e-300))
    return ok, rho, error, cosine


def _span(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "-"
    low, high = min(finite), max(finite)
    return fmt.format(low) if fmt.format(low) == fmt.format(high) else f"{fmt.format(low)}–{fmt.format(high)}"


def _counts(statuses: Sequence[str]) -> str:
    return ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))


def contraction_table(rows: Sequence[Contraction]) -> list[str]:
    lines = [
        "| D | N | K | scale | Picard (tol 1e-10, ≤ 500 steps) | steps | ρ(J) at the last iterate "
        "| ρ(J) at the package's last iterate | ‖y_last‖ / ‖y0‖ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.cell
        lines.append(
            f"| {c.dim} | {c.tokens} | {c.slots} | {c.scale:g} | {_counts(r.statuses)} | {_span(r.steps, '{:d}')} "
            f"| {_span(r.rho_last)} | {_span(r.rho_package)} | {_span(r.growth, '{:.3g}')} |"
        )
    return lines


def gradient_table(rows: Sequence[Gradients]) -> list[str]:
    lines = [
        "| D | N | K | scale | converged (forward and adjoint) | ρ(J*) | implicit vs unrolled, rel. error "
        "| cos(implicit, package's own gradient) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, ok = r.cell, r.converged
        kept = [i for i, good in enumerate(ok) if good]
        lines.append(
            f"| {c.dim} | {c.tokens} | {c.slots} | {c.scale:g} | {sum(ok)} of {len(ok)} "
            f"| {_span([r.rho[i] for i in kept])} | {_span([r.implicit_vs_unrolled[i] for i in kept], '{:.1e}')} "
            f"| {_span([r.cosine_package[i] for i in kept])} |"
        )
    return lines


CELLS = {
    "zoo-slot-attention": [
        Cell(dim, tokens, slots, scale)
        for (dim, tokens, slots) in ((16, 16, 4), (64, 64, 5))
        for scale in (0.5, 1.0, 2.0)
    ],
    "zoo-perceiver": [Cell(16, 16, 4, scale) for scale in (0.5, 1.0, 2.0)],
}
GRADIENT_CELLS = {"zoo-slot-attention": [Cell(16, 16, 4, 1.0)], "zoo-perceiver": []}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iqa.zoo.findings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4, help="seeds per cell (default 4)")
    parser.add_argument("--variant", action="append", choices=sorted(ZOO), help="default: every zoo variant")
    parser.add_argument("--out", type=Path, help="also write the Markdown to this file (atomically)")
    args = parser.parse_args(argv)
    configure_threads()
    out = [f"Measured by `python -m iqa.zoo.findings --seeds {args.seeds}` (float64, batch 2 per seed).", ""]
    for name in args.variant or list(ZOO):
        out += [f"### {name}", "", *contraction_table([contraction(name, c, args.seeds) for c in CELLS[name]]), ""]
        if GRADIENT_CELLS[name]:
            rows = [gradients(name, c, 2 * args.seeds) for c in GRADIENT_CELLS[name]]
            out += [f"Gradients ({2 * args.seeds} seeds, one input each):", "", *gradient_table(rows), ""]
    text = "\n".join(out)
    print(text)
    if args.out is not None:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
