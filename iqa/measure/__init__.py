"""Sweeps over shapes, weight scales and seeds -> plain JSON-able data about a variant.

``measure_variant(variant, sweep)`` solves every cell of the sweep with every
method, measures certificates, spectral radii, observed rates, distance to
the token mean, gradients (implicit vs unrolled-T vs phantom) and bytes saved
for backward, and returns::

    {
      "format": "iqa-measure/1",
      "variant": name, "description": str, "tags": [...],
      "sweep": Sweep.to_dict(),
      "versions": {"python", "torch", "numpy", "iqa"},
      "metrics": {name: float | None},      # scalar summaries, see iqa.measure.summary
      "metric_info": {name: {"better": "lower" | "higher" | None, "unit": str, "deterministic": bool}},
                                            # from the one metric table, iqa.metrics
      "runs": [run, ...],                   # one per (cell, batch element), see iqa.measure.cell
      "gradients": [record, ...],           # one per cell with gradient checks that converged
      "saved_bytes": {...},                 # see iqa.measure.saved
      "outside_domain": [[N, D], ...],      # only when the variant's shape domain excludes some of the grid:
      "domain": str,                        # those (N, D) were not measured; the domain as `iqa variants` shows it
    }

A slot variant's runs carry "slots": K, and its cells one per K (:meth:`Sweep.cells`).

Metric names (built by :mod:`iqa.metrics`; for each method m in the sweep, T in
unrolled_T, mode in the backward modes; pNN are quantiles):
``m.iterations.p50/p95`` (steps to tol, converged runs), ``m.converged_fraction``,
``m.cycle_fraction``, ``m.max_iter_fraction``, ``m.diverged_fraction`` (diverged or
non-finite), ``m.rate.p50/p95`` (observed rate, converged runs),
``m.time_per_step_us`` (wall clock: the one non-deterministic metric),
``kappa.p05/p50/p95`` and ``kappa.below_one_fraction`` (best certificate),
``rho.p05/p50/p95`` (spectral radius at y*; ``rho.failed_runs`` counts runs where
the eigenvalue solver failed), ``rho_consensus.*`` (at the token
mean, for layers that fix it; each ``below_one_fraction`` is over every run, a run
without a value counting as not below one), ``consensus_distance.p05/p50/p95``,
``weight_grad_norm.p05/p50/p95``, ``unrolled_error.T<T>.p50/p95``,
``phantom_error.k<k>_lam<lam>.p50/p95``, ``saved_bytes.<mode>.T<T>``, and the
counts ``runs`` and ``gradient_cells``.

Everything but the wall-clock times is a deterministic function of the
variant and the sweep: cells draw their weights and inputs from their own
seeds, each worker runs torch on one thread, and results are put back in the
sweep's cell order whatever ``jobs`` is.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
from collections.abc import Sequence
from typing import Any

import torch
from tqdm import tqdm

from iqa.measure.cell import measure_cell
from iqa.measure.executors import SchedulerError, dask_pool, executor, worker_pool
from iqa.measure.saved import measure_saved_bytes
from iqa.measure.summary import metric_info, summarize
from iqa.measure.sweep import DEFAULT, LARGE, PRESETS, QUICK, Cell, Sweep
from iqa.runtime import configure_threads
from iqa.variants import Variant, VariantError, resolve
from iqa.versions import package_versions

__all__ = [
    "DEFAULT",
    "FORMAT",
    "LARGE",
    "PRESETS",
    "QUICK",
    "Cell",
    "DomainError",
    "MeasurementError",
    "SchedulerError",
    "Sweep",
    "dask_pool",
    "executor",
    "measure_variant",
    "measure_variants",
    "versions",
    "worker_pool",
]

FORMAT = "iqa-measure/1"


class DomainError(ValueError):
    """No cell of the sweep lies inside a variant's shape domain: the caller's choice of sweep, not the variant's
    failure."""


class MeasurementError(Exception):
    """A variant failed while a cell (or its saved-bytes measurement) was measured: the variant's failure,
    not the caller's. ``variant`` names it, ``where`` the cell, and the cause is chained (``__cause__``)."""

    def __init__(self, variant: str, where: str, cause: BaseException) -> None:
        super().__init__(variant, where, cause)
        self.variant = variant
        self.where = where
        self.cause = cause

    def __str__(self) -> str:
        return f"variant {self.variant!r} failed on {self.where}: {type(self.cause).__name__}: {self.cause}"


def _where(cell: Cell | None) -> str:
    if cell is None:
        return "the saved-bytes measurement"
    return f"cell N={cell.tokens}, D={cell.dim}, scale={cell.scale:g}, seed={cell.seed}"


#: A task: (variant index, cell or None for the saved-bytes measurement).
_Task = tuple[int, Cell | None]
_RESOLVED: dict[str, Variant] = {}


def versions() -> dict[str, str]:
    """The versions that the numbers of a measurement depend on."""
    return package_versions("torch", "numpy", "iqa")


def _spec(variant: Variant | str) -> str:
    """A string a worker process can resolve to the same variant."""
    if isinstance(variant, str):
        return variant
    try:
        found = resolve(variant.name)
    except VariantError:
        found = None
    if found is not variant and found != variant:
        raise ValueError(
            f"variant {variant.name!r} is not registered under that name, so worker processes cannot rebuild it; "
            "pass its spec (package.module:attr or path/file.py:attr) instead of the Variant object, or use jobs=1"
        )
    return variant.name


def _run_task(variant: Variant, sweep: Sweep, cell: Cell | None) -> Any:
    if cell is None:
        return measure_saved_bytes(variant, sweep)
    return measure_cell(variant, cell, sweep)


def _worker(spec: str, sweep_data: dict[str, Any], cell: Cell | None) -> Any:
    if spec not in _RESOLVED:
        configure_threads(1)  # a Dask worker runs no initializer: one torch thread, as in worker_pool
        _RESOLVED[spec] = resolve(spec)
    return _run_task(_RESOLVED[spec], Sweep.from_dict(sweep_data), cell)


def measure_variants(
    variants: Sequence[Variant | str],
    sweep: Sweep = DEFAULT,
    *,
    jobs: int = 1,
    progress: bool = True,
    pool: concurrent.futures.Executor | None = None,
) -> list[dict[str, Any]]:
    """:func:`measure_variant` for several variants, sharing one pool of ``jobs`` worker processes.

    ``pool`` (from :func:`worker_pool` or :func:`dask_pool`) is used instead of a new one when given,
    whatever ``jobs`` is.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    resolved = [resolve(v) if isinstance(v, str) else v for v in variants]
    cells = [list(sweep.cells(v.domain)) for v in resolved]  # each variant's cells inside its shape domain
    for variant, own in zip(resolved, cells):
        if not own:
            raise DomainError(
                f"variant {variant.name!r}: no cell of the sweep (N in {list(sweep.tokens)}, D in {list(sweep.dims)}) "
                f"lies inside its domain ({variant.domain.describe()}); choose a sweep with shapes it supports"
            )
    tasks: list[_Task] = [(i, c) for i in range(len(resolved)) for c in [*cells[i], None]]
    results: dict[_Task, Any] = {}
    bar = tqdm(total=len(tasks), desc="measure", unit="cell", disable=not progress, file=sys.stderr)
    if jobs == 1 and pool is None:
        previous = torch.get_num_threads()
        configure_threads(1)
        try:
            for task in tasks:
                try:
                    results[task] = _run_task(resolved[task[0]], sweep, task[1])
                except Exception as error:  # the variant's code raised: its failure, named
                    raise MeasurementError(resolved[task[0]].name, _where(task[1]), error) from error
                bar.update()
        finally:
            torch.set_num_threads(previous)
    else:
        specs = [_spec(v) for v in variants]
        with contextlib.ExitStack() as stack:
            executor = pool if pool is not None else stack.enter_context(worker_pool(jobs))
            futures = {executor.submit(_worker, specs[i], sweep.to_dict(), cell): (i, cell) for i, cell in tasks}
            for future in concurrent.futures.as_completed(futures):
                i, cell = futures[future]
                try:
                    results[(i, cell)] = future.result()
                except Exception as error:  # raised in a worker: the variant's failure, named
                    for other in futures:
                        other.cancel()
                    raise MeasurementError(resolved[i].name, _where(cell), error) from error
                bar.update()
    bar.close()
    return [
        _assemble(variant, sweep, [results[(i, c)] for c in cells[i]], results[(i, None)])
        for i, variant in enumerate(resolved)
    ]


def measure_variant(
    variant: Variant | str,
    sweep: Sweep = DEFAULT,
    *,
    jobs: int = 1,
    progress: bool = True,
    pool: concurrent.futures.Executor | None = None,
) -> dict[str, Any]:
    """Measure one variant over the sweep (module docstring); ``jobs`` > 1 spreads cells over processes,
    ``pool`` (:func:`worker_pool`, :func:`dask_pool`) runs them there instead."""
    return measure_variants([variant], sweep, jobs=jobs, progress=progress, pool=pool)[0]


def _assemble(variant: Variant, sweep: Sweep, cells: list[dict[str, Any]], saved: dict[str, Any]) -> dict[str, Any]:
    runs = [run for cell in cells for run in cell["runs"]]
    gradients = [cell["gradients"] for cell in cells if cell["gradients"] is not None]
    timing: dict[str, list[float]] = {}
    for cell in cells:
        for method, (seconds, steps) in cell["timing"].items():
            total = timing.setdefault(method, [0.0, 0.0])
            total[0] += seconds
            total[1] += steps
    metrics = summarize(runs, gradients, saved, timing, sweep.methods)
    outside = sweep.outside(variant.domain)
    extra = {"outside_domain": [list(c) for c in outside], "domain": variant.domain.describe()} if outside else {}
    return {
        "format": FORMAT,
        "variant": variant.name,
        "description": variant.description,
        "tags": sorted(t.value for t in variant.tags),
        "sweep": sweep.to_dict(),
        "versions": versions(),
        "metrics": metrics,
        "metric_info": {name: metric_info(name) for name in metrics},
        "runs": runs,
        "gradients": gradients,
        "saved_bytes": saved,
        **extra,
    }
