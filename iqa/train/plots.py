"""The training page's figures, as PNG bytes that depend only on the recorded data.

One figure per quantity, one panel per task, one line per run (colour = backward mode, dashed =
Jacobian-regularised), drawn and saved the way :mod:`iqa.report.plots` does (its style, no metadata,
a palette PNG), so that the same record gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from iqa.report.plots import MODE_STYLES, STYLE, render

#: (file name, title, y label) of each figure.
FIGURES = {
    "loss": (
        "loss.png",
        "held-out loss (solid markers) and training loss (thin) against update",
        "loss (MSE per token)",
    ),
    "forward": ("forward_steps.png", "forward solver steps per update (median over the batch)", "steps"),
    "rho": ("rho.png", "rho(J*) on the held-out batch (largest over its elements)", "rho(J*)"),
    "nonconverged": ("nonconverged.png", "share of forward solves that did not converge, per update", "share"),
    "cosine": (
        "gradient_cosine.png",
        "cosine of the mode's gradient with the converged reference (held-out batch; a gap: no reference there)",
        "cosine",
    ),
}


def _style(run: dict[str, Any]) -> dict[str, Any]:
    colour, marker = MODE_STYLES.get(run["mode"], ("#444444", "o"))
    return {"color": colour, "marker": marker, "linestyle": "--" if run["gamma"] > 0 else "-"}


def _label(run: dict[str, Any]) -> str:
    return run["label"] + (f" (gamma={run['gamma']:g})" if run["gamma"] > 0 else "")


def _xy(xs: list[int], ys: list[Any]) -> tuple[list[int], list[float]]:
    """Points to plot; a value that was not measured (None) becomes NaN, so that the line breaks there
    instead of bridging the gap."""
    return list(xs), [math.nan if y is None else float(y) for y in ys]


def _median(values: list[int]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _panels(
    tasks: list[str], runs: list[dict[str, Any]], draw: Callable[[Axes, dict[str, Any]], None], key: str
) -> Figure:
    _, title, ylabel = FIGURES[key]
    fig = Figure(figsize=(4.2 * len(tasks) + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for run in (r for r in runs if r["task"] == task):
            draw(ax, run)
        ax.set_title(task)
        ax.set_xlabel("update")
        ax.set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4))
    fig.suptitle(title)
    return fig


def _loss(ax: Axes, run: dict[str, Any]) -> None:
    style = _style(run)
    steps = list(range(1, len(run["updates"]["train_loss"]) + 1))
    ax.plot(
        *_xy(steps, run["updates"]["train_loss"]),
        color=style["color"],
        linestyle=style["linestyle"],
        alpha=0.35,
        lw=0.8,
    )
    records = run["records"]
    ax.plot(
        *_xy([r["step"] for r in records], [r["heldout_loss"] for r in records]),
        markersize=3,
        label=_label(run),
        **style,
    )
    ax.set_yscale("log")


def _forward(ax: Axes, run: dict[str, Any]) -> None:
    style = _style(run)
    per = [(i + 1, s) for i, s in enumerate(run["updates"]["forward_steps"]) if s]
    xs = [p[0] for p in per]
    ax.plot(
        xs, [_median(p[1]) for p in per], color=style["color"], linestyle=style["linestyle"], lw=1.2, label=_label(run)
    )


def _rho(ax: Axes, run: dict[str, Any]) -> None:
    records = run["records"]
    ax.plot(
        *_xy([r["step"] for r in records], [r["rho_max"] for r in records]),
        markersize=3,
        label=_label(run),
        **_style(run),
    )
    ax.axhline(1.0, color="#d62728", lw=1.0, linestyle=":")
    ax.set_yscale("log")


def _nonconverged(ax: Axes, run: dict[str, Any]) -> None:
    style = _style(run)
    shares = run["updates"]["forward_status"]
    ax.plot(
        *_xy(list(range(1, len(shares) + 1)), [None if s is None else 1.0 - s["converged"] for s in shares]),
        color=style["color"],
        linestyle=style["linestyle"],
        lw=1.2,
        label=_label(run),
    )
    ax.set_ylim(-0.03, 1.03)


def _cosine(ax: Axes, run: dict[str, Any]) -> None:
    records = run["records"]
    ax.plot(
        *_xy([r["step"] for r in records], [r["gradient_cosine"] for r in records]),
        markersize=3,
        label=_label(run),
        **_style(run),
    )
    ax.axhline(0.0, color="#444444", lw=0.8, linestyle=":")
    ax.set_ylim(-1.05, 1.05)


DRAW = {"loss": _loss, "forward": _forward, "rho": _rho, "nonconverged": _nonconverged, "cosine": _cosine}


def figures(tasks: list[str], runs: list[dict[str, Any]]) -> dict[str, bytes]:
    """File name -> PNG bytes for every figure of the page."""
    out = {}
    with matplotlib.style.context(["default", STYLE]):
        for key, draw in DRAW.items():
            out[FIGURES[key][0]] = render(_panels(tasks, runs, draw, key))
    return out
