"""The sweep's data: a faithful, deterministic record of what the solvers did.

These check ``iqa.measure`` itself (not a variant): its run records agree with
solving the same cell again by hand, its metrics agree with an independent
summary of those records, it rejects a bad sweep by name, and its result does
not depend on how many worker processes computed it.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from iqa import solve
from iqa.measure import measure_variant, worker_pool
from iqa.measure.summary import metric_info
from iqa.measure.sweep import Cell, Sweep, rounded
from iqa.variants import resolve
from properties.strategies import TINY_SWEEP as TINY


@pytest.fixture(scope="module")
def reference_result() -> dict:
    return measure_variant("reference", TINY, progress=False)


def _deterministic(result: dict) -> dict:
    out = dict(result)
    out["metrics"] = {k: v for k, v in result["metrics"].items() if result["metric_info"][k]["deterministic"]}
    return out


def test_runs_agree_with_solving_each_cell_again(reference_result: dict) -> None:
    """Each run's status and step count are what iqa.solve says for the same layer and input, built here."""
    variant = resolve("reference")
    runs = reference_result["runs"]
    assert len(runs) == len(list(TINY.cells())) * TINY.batch
    for cell in TINY.cells():
        layer = variant.make(cell.dim, scale=cell.scale, seed=cell.weight_seed, dtype=torch.float64)
        g = torch.Generator().manual_seed(cell.input_seed)
        x = torch.randn(TINY.batch, cell.tokens, cell.dim, dtype=torch.float64, generator=g)
        with torch.no_grad():
            solution = solve(layer.fixed_point_map(x), x.clone(), "picard", tol=TINY.tol, max_iter=TINY.max_iter)
        mine = [r for r in runs if (r["tokens"], r["dim"], r["scale"], r["seed"]) == cell.key]
        assert [r["picard"]["status"] for r in mine] == [s.value for s in solution.statuses]
        assert [r["picard"]["steps"] for r in mine] == list(solution.steps)
        assert [len(r["picard"]["history"]) for r in mine] == list(solution.steps)


def test_metrics_agree_with_an_independent_summary(reference_result: dict) -> None:
    """Fractions and medians recomputed with the statistics module from the run records."""
    runs, m = reference_result["runs"], reference_result["metrics"]
    for method in TINY.methods:
        statuses = [r[method]["status"] for r in runs]
        assert m[f"{method}.converged_fraction"] == statuses.count("converged") / len(runs)
        assert m[f"{method}.cycle_fraction"] == statuses.count("cycle") / len(runs)
        assert m[f"{method}.max_iter_fraction"] == statuses.count("max_iter") / len(runs)
        steps = [r[method]["steps"] for r in runs if r[method]["status"] == "converged"]
        if steps:  # the median is the linear-interpolation 0.5-quantile: exact for integers and halves
            assert m[f"{method}.iterations.p50"] == statistics.median(steps)
        else:
            assert m[f"{method}.iterations.p50"] is None
    assert m["runs"] == len(runs)


def test_fractions_cover_every_run(reference_result: dict) -> None:
    m = reference_result["metrics"]
    for method in TINY.methods:
        parts = ("converged", "cycle", "max_iter", "diverged")
        assert math.fsum(m[f"{method}.{p}_fraction"] for p in parts) == pytest.approx(1.0, abs=1e-12)


def test_result_is_strict_json_and_documented(reference_result: dict) -> None:
    import json

    json.dumps(reference_result, allow_nan=False)  # raises on NaN or inf
    assert set(reference_result["metric_info"]) == set(reference_result["metrics"])
    for name, info in reference_result["metric_info"].items():
        assert info["unit"], f"metric {name} has no unit"
        assert info["deterministic"] == ("time" not in name), name


def test_result_does_not_depend_on_jobs(reference_result: dict) -> None:
    """Two worker processes give the same data as one process (wall-clock metrics aside)."""
    parallel = measure_variant("reference", TINY, jobs=2, progress=False)
    assert _deterministic(parallel) == _deterministic(reference_result)


def _worker_state() -> tuple[str, str | None, list[str], int, bool]:
    return os.getcwd(), os.environ.get("IQA_PROBE"), list(sys.path), torch.get_num_threads(), torch.is_grad_enabled()


def test_workers_take_the_callers_directory_path_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool made after the fork server started (by the first pool here) still runs its workers in the caller's
    directory, import path and environment of that moment, on one torch thread, with none of its torch state
    (grad mode off here)."""
    with worker_pool(1) as pool:
        pool.submit(_worker_state).result()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IQA_PROBE", "now")
    monkeypatch.syspath_prepend(str(tmp_path))
    with torch.no_grad(), worker_pool(2) as pool:
        states = [pool.submit(_worker_state).result() for _ in range(4)]
    for cwd, probe, path, threads, grad in states:
        assert (cwd, probe, path[0], threads, grad) == (str(tmp_path), "now", str(tmp_path), 1, True)


def test_same_seed_same_data(reference_result: dict) -> None:
    again = measure_variant(resolve("reference"), TINY, progress=False)
    assert _deterministic(again) == _deterministic(reference_result)
    other = measure_variant("reference", TINY.with_seed(5), progress=False)
    assert other["runs"] != reference_result["runs"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("tokens", (), "tokens"),
        ("dims", (0,), "dims"),
        ("scales", (-1.0,), "scales"),
        ("seeds", (-3,), "seeds"),
        ("methods", ("newton",), "newton"),
        ("dtype", "float16", "dtype"),
        ("tol", 0.0, "tol"),
        ("phantom", ((1, 1.5),), "phantom"),
        ("tokens", (2, 2), "repeated"),
    ],
)
def test_bad_sweep_is_named(field: str, value: object, message: str) -> None:
    import dataclasses

    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **{field: value})


def test_unregistered_variant_object_cannot_go_to_workers() -> None:
    import dataclasses

    stranger = dataclasses.replace(resolve("reference"), name="not-registered")
    with pytest.raises(ValueError, match="not registered"):
        measure_variant(stranger, TINY, jobs=2, progress=False)


def test_cell_seeds_are_distinct_and_stable() -> None:
    cells = list(TINY.cells())
    seeds = {c.weight_seed for c in cells} | {c.input_seed for c in cells}
    assert len(seeds) == 2 * len(cells)
    assert Cell(2, 2, 0.5, 0).weight_seed == Cell(2, 2, 0.5, 0, gradients=True).weight_seed


def test_metric_directions() -> None:
    assert metric_info("picard.converged_fraction")["better"] == "higher"
    assert metric_info("picard.iterations.p95")["better"] == "lower"
    assert metric_info("kappa.below_one_fraction")["unit"] == "fraction"
    assert metric_info("saved_bytes.unrolled.T4") == {"better": "lower", "unit": "bytes", "deterministic": True}


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_rounded_keeps_four_digits_or_none(value: float) -> None:
    out = rounded(value)
    if not math.isfinite(value):
        assert out is None
    else:
        assert out is not None
        # 4 significant digits: the relative change is at most half a unit in the 4th digit
        assert abs(out - value) <= 5e-4 * abs(value)


def test_a_failed_eigenvalue_solve_is_recorded_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    import iqa.measure.cell

    def broken(*args: object, **kwargs: object) -> None:
        raise torch.linalg.LinAlgError("eig did not converge")

    monkeypatch.setattr(iqa.measure.cell, "spectral_radius", broken)
    result = measure_variant("reference", TINY, progress=False)
    found = [r for r in result["runs"] if r["consensus_distance"] is not None]  # runs with a converged y*
    assert found and all(r["rho_failed"] and r["rho"] is None for r in found)
    assert result["metrics"]["rho.failed_runs"] == len(found)
    assert result["metrics"]["rho.p50"] is None


def test_old_sweep_field_names_still_load() -> None:
    """memory_shape / memory_scale were renamed saved_bytes_shape / saved_bytes_scale: old files still load."""
    data = TINY.to_dict()
    old = {("memory" + k[len("saved_bytes") :] if k.startswith("saved_bytes") else k): v for k, v in data.items()}
    assert "memory_shape" in old and Sweep.from_dict(old) == TINY
    with pytest.raises(ValueError, match="both given"):
        Sweep.from_dict({**data, "memory_shape": [2, 2]})
