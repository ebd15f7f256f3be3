"""Plain-words statements of what happened in a run, computed from its record (nothing typed in by hand)."""

from __future__ import annotations

import statistics
from typing import Any

from iqa.train.metrics import last_quarter


def _median_steps(per_update: list[list[int] | None]) -> float | None:
    pooled = [s for per in per_update if per for s in per]
    return float(statistics.median(pooled)) if pooled else None


def first_quarter(values: list[Any]) -> list[Any]:
    return values[: max(1, len(values) // 4)]


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}g}"


def run_findings(run: dict[str, Any]) -> list[str]:
    """Sentences about one run: loss, forward steps, convergence, rho(J*), gradient direction."""
    updates, records = run["updates"], run["records"]
    out = []
    start, end = records[0]["heldout_loss"], records[-1]["heldout_loss"]
    if run["stopped_at"] is not None:
        out.append(f"stopped at update {run['stopped_at']}: the loss or its gradient was not finite")
    out.append(f"held-out loss {_fmt(start)} -> {_fmt(end)} after {records[-1]['step']} updates")
    early = _median_steps(first_quarter(updates["forward_steps"]))
    late = _median_steps(last_quarter(updates["forward_steps"]))
    if early and late:
        ratio = late / early
        if ratio >= 1.25:
            trend = f"{ratio:.1f}x more steps in the last quarter of training than in the first"
        elif ratio <= 0.8:
            trend = f"{1 / ratio:.1f}x fewer steps in the last quarter of training than in the first"
        else:
            trend = "about as many steps in the last quarter of training as in the first"
        out.append(f"the forward solve needs {trend} (median {early:g} -> {late:g})")
    shares = [None if s is None else 1.0 - s["converged"] for s in updates["forward_status"]]
    failed = [i + 1 for i, s in enumerate(shares) if s]
    late_share = [s for s in last_quarter(shares) if s is not None]
    if failed:
        out.append(
            f"a forward solve first failed to converge at update {failed[0]}; "
            f"{statistics.fmean(late_share):.0%} of the last quarter's solves did not converge"
        )
    else:
        out.append("every forward solve converged")
    adjoint = [s for s in updates["adjoint_status"] if s is not None]
    if adjoint:
        failed_adjoint = [1.0 - s["converged"] for s in last_quarter(updates["adjoint_status"]) if s is not None]
        out.append(
            f"the adjoint solve needed median {_median_steps(first_quarter(updates['adjoint_steps'])):g} -> "
            f"{_median_steps(last_quarter(updates['adjoint_steps'])):g} steps, and "
            f"{statistics.fmean(failed_adjoint) if failed_adjoint else 0.0:.0%} of the last quarter's did not converge"
        )
    rhos = [(r["step"], r["rho_max"]) for r in records if r["rho_max"] is not None]
    if rhos:
        above = [step for step, rho in rhos if rho >= 1]
        peak = max(rho for _, rho in rhos)
        text = f"rho(J*) {rhos[0][1]:.3g} -> {rhos[-1][1]:.3g} (peak {peak:.3g})"
        text += f", first >= 1 at update {above[0]}" if above else ", below 1 throughout"
        out.append(text)
    cosines = [(r["step"], r["gradient_cosine"]) for r in records if r["gradient_cosine"] is not None]
    missing = sum(1 for r in records if r["gradient_cosine"] is None)
    if cosines:
        worst_step, worst = min(cosines, key=lambda c: c[1])
        text = f"gradient cosine with the reference: lowest {worst:.3g} (update {worst_step})"
        if worst <= 0:
            text += ", where it was no descent direction"
        if missing:
            text += (
                f"; no reference at {missing} of {len(records)} records (no converged solve or a vanishing gradient)"
            )
        out.append(text)
    else:
        out.append("no gradient reference at any record (no converged solve, or the reference gradient vanishes)")
    return out


def comparisons(runs: list[dict[str, Any]]) -> list[str]:
    """Sentences comparing the runs of one task: regularised vs not, implicit and phantom vs unrolled."""
    by_label = {r["label"]: r for r in runs}
    out = []
    for run in runs:
        if run["gamma"] <= 0 or run["mode"] not in by_label:
            continue
        plain = by_label[run["mode"]]
        rho0, rho1 = plain["records"][-1]["rho_max"], run["records"][-1]["rho_max"]
        peak0 = max((r["rho_max"] for r in plain["records"] if r["rho_max"] is not None), default=None)
        peak1 = max((r["rho_max"] for r in run["records"] if r["rho_max"] is not None), default=None)
        loss0, loss1 = plain["records"][-1]["heldout_loss"], run["records"][-1]["heldout_loss"]
        out.append(
            f"{run['mode']} with gamma = {run['gamma']:g}: rho(J*) ends at {_fmt(rho1)} (peak {_fmt(peak1)}) "
            f"against {_fmt(rho0)} (peak {_fmt(peak0)}) without; held-out loss {_fmt(loss1)} against {_fmt(loss0)}"
        )
    base = by_label.get("unrolled")
    if base is not None:
        for label in ("implicit", "phantom"):
            other = by_label.get(label)
            if other is None:
                continue
            a, b = base["records"][-1]["heldout_loss"], other["records"][-1]["heldout_loss"]
            if a is not None and b is not None:
                out.append(f"{label} ends at held-out loss {_fmt(b)}, unrolled at {_fmt(a)} ({b / a:.3g}x)")
    return out
