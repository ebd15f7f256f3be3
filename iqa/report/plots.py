"""The report's figures, as PNG bytes that depend only on the data.

Each function takes measurement data (see :mod:`iqa.measure`) and returns PNG
bytes. Figures are drawn with matplotlib's object API (no pyplot state, no
backend choice), under matplotlib's default style plus :data:`STYLE` (so a
user's matplotlibrc changes nothing), and saved without metadata (no
"Software" version tag, no date), so the same data give the same bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import matplotlib.style
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, Locator, NullLocator
from PIL import Image

from iqa.solvers import Status

DPI = 100
STYLE: dict[str, Any] = {
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.framealpha": 0.9,
    "path.simplify": True,
}

#: One colour per solver status, the same in every figure.
STATUS_COLORS = {
    Status.CONVERGED.value: "#2a9d43",
    Status.CYCLE.value: "#f08a24",
    Status.MAX_ITER.value: "#d62728",
    Status.DIVERGED.value: "#7b3fa0",
    Status.NONFINITE.value: "#444444",
}
STATUS_LABELS = {
    Status.CONVERGED.value: "converged",
    Status.CYCLE.value: "cycle",
    Status.MAX_ITER.value: "out of steps",
    Status.DIVERGED.value: "diverged",
    Status.NONFINITE.value: "non-finite",
}
#: Rates and bounds below this are drawn at the edge of the rate plots.
RATE_FLOOR = 1e-8
MODE_STYLES = {"unrolled": ("#1f77b4", "o"), "implicit": ("#2a9d43", "s"), "phantom": ("#9467bd", "^")}


def render(fig: Figure) -> bytes:
    """PNG bytes of a figure: no metadata, and 256 colours (a palette PNG is ~3x smaller than RGBA).

    matplotlib writes an RGBA PNG (its "Software" tag removed); Pillow (a
    matplotlib dependency) reduces it to a 256-colour palette without
    dithering, which is deterministic and invisible on these flat-colour plots,
    and writes it without any text chunk.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    buffer.seek(0)
    with Image.open(buffer) as image:
        palette = image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _styled(draw: Any) -> Any:
    """Run a drawing function under matplotlib's defaults plus STYLE."""

    def wrapper(*args: Any, **kwargs: Any) -> bytes:
        with matplotlib.style.context(["default", STYLE]):
            return render(draw(*args, **kwargs))

    wrapper.__name__ = draw.__name__
    wrapper.__doc__ = draw.__doc__
    return wrapper


def _grid_label(values: Sequence[Any]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in values) + "}"


def _log(ax: Axes, which: str = "y", base: float = 10) -> None:
    """A log axis with at most ~8 labelled decades and no minor ticks (wide ranges stay fast and legible)."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log", base=base)
    axis.set_major_locator(DecadeLocator(base))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda value, _: power_label(value, base)))


class DecadeLocator(Locator):
    """Log-axis ticks: every k-th power of the base (at most ~8 of them) over a wide range, and
    1, 2, 5 times the powers of ten over a range of less than three decades (where powers alone leave
    one tick or none)."""

    def __init__(self, base: float = 10) -> None:
        self.base = base

    def __call__(self) -> Any:
        assert self.axis is not None
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin: float, vmax: float) -> Any:
        vmin, vmax = sorted((vmin, vmax))
        if not (vmin > 0 and math.isfinite(vmax)):
            return np.array([])
        lo, hi = math.floor(math.log(vmin, self.base)), math.ceil(math.log(vmax, self.base))
        if self.base == 10 and hi - lo <= 3:
            ticks = [m * 10.0**k for k in range(lo, hi + 1) for m in (1, 2, 5)]
        else:
            stride = max(1, math.ceil((hi - lo) / 8))
            ticks = [float(self.base) ** k for k in range(lo - lo % stride, hi + 1, stride)]
        return np.array([t for t in ticks if vmin <= t <= vmax])


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_label(value: float, base: float = 10) -> str:
    """A log-axis tick label as plain text, e.g. 10⁻⁵ (matplotlib's mathtext labels cost a parser per tick)."""
    if not (value > 0 and math.isfinite(value)):
        return ""
    exponent = math.log(value, base)
    if abs(exponent - round(exponent)) > 1e-9 or (base == 10 and -2 <= round(exponent) <= 2):
        return f"{value:g}"  # 0.05, 2, 500: plain numbers read faster than powers near 1
    return f"{base:g}{str(round(exponent)).translate(_SUPERSCRIPT)}"


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=10, color="#555555", wrap=True)


@_styled
def residual_plot(variant: str, runs: list[dict[str, Any]], sweep: dict[str, Any]) -> Figure:
    """The seed's plot: ||y_{t+1} - y_t|| against the step t for every Picard run, coloured by status."""
    fig = _figure(8, 4.6)
    ax = fig.add_subplot()
    segments: dict[str, list[np.ndarray]] = {s: [] for s in STATUS_COLORS}
    for run in runs:
        history = [h for h in run["picard"]["history"] if h is not None and h > 0]
        if history:
            t = np.arange(len(history))
            segments[run["picard"]["status"]].append(np.column_stack([t, history]))
    drawn = False
    handles = []
    # converged last so that the failures underneath stay visible
    for status in (
        Status.MAX_ITER.value,
        Status.CYCLE.value,
        Status.DIVERGED.value,
        Status.NONFINITE.value,
        "converged",
    ):
        lines = segments[status]
        if not lines:
            continue
        ax.add_collection(LineCollection(lines, colors=STATUS_COLORS[status], linewidths=0.8, alpha=0.45))
        handles.append(Line2D([], [], color=STATUS_COLORS[status], label=f"{STATUS_LABELS[status]} ({len(lines)})"))
        drawn = True
    ax.axhline(sweep["tol"], color="black", linestyle="--", linewidth=1)
    handles.append(Line2D([], [], color="black", linestyle="--", label=f"tol = {sweep['tol']:g}"))
    _log(ax)
    ax.set_xlim(0, sweep["max_iter"])
    if drawn:
        ax.autoscale(axis="y")
    ax.set_xlabel("step t (Picard iteration y ← f(y), from y₀ = the layer's start)")
    ax.set_ylabel("‖y_{t+1} − y_t‖  (log scale)")
    ax.set_title(
        f"{variant}: step size per iteration of {len(runs)} runs\n"
        f"N ∈ {_grid_label(sweep['tokens'])}, D ∈ {_grid_label(sweep['dims'])}, "
        f"weight scale ∈ {_grid_label(sweep['scales'])}, {len(sweep['seeds'])} seed(s) × {sweep['batch']} inputs"
    )
    fig.legend(handles=handles, loc="outside right center", title="status (runs)")
    return fig


def _by_cell(runs: list[dict[str, Any]], tokens: list[int], scales: list[float]) -> dict[tuple[int, int], list[Any]]:
    cells: dict[tuple[int, int], list[Any]] = {(i, j): [] for i in range(len(tokens)) for j in range(len(scales))}
    for run in runs:
        cells[(tokens.index(run["tokens"]), scales.index(run["scale"]))].append(run)
    return cells


def _grid_axes(ax: Axes, tokens: list[int], scales: list[float]) -> None:
    ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales])
    ax.set_yticks(range(len(tokens)), [str(n) for n in tokens])
    ax.set_xlim(-0.5, len(scales) - 0.5)
    ax.set_ylim(-0.5, len(tokens) - 0.5)
    ax.set_xlabel("weight scale s (× nn.Linear's default init)")
    ax.set_ylabel("tokens N")
    ax.grid(False)


def _method_panels(
    runs: list[dict[str, Any]], sweep: dict[str, Any], margin: float
) -> tuple[list[int], list[float], list[str], dict[tuple[int, int], list[Any]], Figure, Any]:
    """The (N, weight scale) grid of a sweep, its runs by cell, and a figure with one panel per method
    (``margin`` inches beside the panels for a colour bar or legend)."""
    tokens, scales, methods = list(sweep["tokens"]), list(sweep["scales"]), list(sweep["methods"])
    fig = _figure(4.2 * len(methods) + margin, 3.8)
    return tokens, scales, methods, _by_cell(runs, tokens, scales), fig, fig.subplots(1, len(methods), squeeze=False)[0]


@_styled
def iterations_map(variant: str, runs: list[dict[str, Any]], sweep: dict[str, Any]) -> Figure:
    """Median steps to tol over (N, weight scale), one panel per method; grey where nothing converged."""
    tokens, scales, methods, cells, fig, axes = _method_panels(runs, sweep, margin=0.8)
    norm = LogNorm(vmin=1, vmax=sweep["max_iter"])
    image = None
    for ax, method in zip(axes, methods):
        grid = np.full((len(tokens), len(scales)), np.nan)
        for (i, j), members in cells.items():
            steps = [r[method]["steps"] for r in members if r[method]["status"] == Status.CONVERGED.value]
            if steps:
                grid[i, j] = float(np.median(steps))
        ax.set_facecolor("#d9d9d9")
        image = ax.imshow(grid, origin="lower", cmap="viridis", norm=norm, aspect="auto")
        for (i, j), members in cells.items():
            n_conv = sum(r[method]["status"] == Status.CONVERGED.value for r in members)
            text = "none\nconv." if np.isnan(grid[i, j]) else f"{grid[i, j]:.0f}"
            color = "black" if np.isnan(grid[i, j]) or grid[i, j] > 20 else "white"
            ax.text(j, i, f"{text}\n{n_conv}/{len(members)}", ha="center", va="center", fontsize=7, color=color)
        _grid_axes(ax, tokens, scales)
        ax.set_title(f"{method}: median steps to tol (converged/runs)")
    assert image is not None
    fig.colorbar(image, ax=list(axes), label="median steps to tol (converged runs)")
    fig.suptitle(f"{variant}: steps to tol = {sweep['tol']:g} over tokens and weight scale (all D, seeds, inputs)")
    return fig


@_styled
def status_map(variant: str, runs: list[dict[str, Any]], sweep: dict[str, Any]) -> Figure:
    """Share of each status per (N, weight scale) cell, as stacked bars inside the cell, one panel per method."""
    tokens, scales, methods, cells, fig, axes = _method_panels(runs, sweep, margin=1.6)
    for ax, method in zip(axes, methods):
        for (i, j), members in cells.items():
            bottom = i - 0.45
            for status, color in STATUS_COLORS.items():
                share = sum(r[method]["status"] == status for r in members) / max(len(members), 1)
                if share > 0:
                    ax.add_patch(Rectangle((j - 0.45, bottom), 0.9, 0.9 * share, color=color, linewidth=0))
                    bottom += 0.9 * share
            conv = sum(r[method]["status"] == Status.CONVERGED.value for r in members)
            ax.text(j, i, f"{100 * conv / max(len(members), 1):.0f}%", ha="center", va="center", fontsize=7)
        _grid_axes(ax, tokens, scales)
        ax.set_title(f"{method}: status of each run (text: % converged)")
    handles = [Patch(color=c, label=STATUS_LABELS[s]) for s, c in STATUS_COLORS.items()]
    fig.legend(handles=handles, loc="outside right center", title="status")
    fig.suptitle(f"{variant}: how the solves end over tokens and weight scale (max_iter = {sweep['max_iter']})")
    return fig


@_styled
def certificate_plot(variant: str, runs: list[dict[str, Any]]) -> Figure:
    """Observed Picard rate against the certificate kappa (left) and against rho(J*) (right), converged runs."""
    fig = _figure(9, 4.2)
    left, right = fig.subplots(1, 2)
    converged = [r for r in runs if r["picard"]["status"] == Status.CONVERGED.value and r["picard"]["rate"] is not None]
    for ax, key, label in ((left, "kappa", "certificate κ (best of κ_∞, κ_F, κ_w)"), (right, "rho", "ρ(J(y*))")):
        points = []
        for r in converged:
            x = r["kappa"]["best"] if key == "kappa" and r["kappa"] else r.get(key) if key == "rho" else None
            if x is not None and x > 0 and r["picard"]["rate"] > 0:
                points.append((x, r["picard"]["rate"]))
        _log(ax, "x")
        _log(ax, "y")
        ax.set_xlabel(label)
        ax.set_ylabel("observed rate (fit of ‖y_{t+1} − y_t‖ ∝ qᵗ)")
        if not points:
            if not converged:
                why = "no converged run with an observed rate"
            elif key == "kappa" and not any(r["kappa"] for r in runs):
                why = "no certificate: the map is not of the form softmax(A Yᵀ) V"
            else:
                why = "no ρ(J*): the variant does not claim batch_independent\nor the eigenvalue solver failed"
            _note(ax, f"{why}\n(no points to show)")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        xs, ys = np.array(points).T
        # saturated runs converge superlinearly (rates ~1e-20): show them at the edge, not stretch the axes
        lo = max(min(xs.min(), ys.min()) / 2, RATE_FLOOR)
        hi = max(xs.max(), ys.max(), 1.5) * 2
        clipped = (xs < lo) | (ys < lo)
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1, label="rate = " + ("κ" if key == "kappa" else "ρ"))
        if key == "kappa":
            ax.axvspan(lo, 1, color="#2a9d43", alpha=0.08, label="κ < 1: contraction proven")
            below = int(np.sum(xs < 1))
            above = int(np.sum((xs < 1) & (ys > xs)))
            title = f"runs with κ < 1: {below}; of these, rate above κ: {above}"
        else:
            title = "observed rate against the local rate ρ(J*)"
        inside = ~clipped
        ax.scatter(xs[inside], ys[inside], s=9, color="#1f77b4", alpha=0.6, label=f"converged runs ({inside.sum()})")
        if clipped.any():
            edge_x, edge_y = np.maximum(xs[clipped], lo * 1.05), np.maximum(ys[clipped], lo * 1.05)
            label = f"runs with a value < {lo:.0e}, drawn at the edge ({clipped.sum()})"
            ax.scatter(edge_x, edge_y, s=14, marker="x", color="#7f7f7f", label=label)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_title(title)
        ax.legend(loc="upper left")
    fig.suptitle(f"{variant}: observed contraction rate of Picard against its bounds")
    return fig


@_styled
def unrolled_plot(variant: str, gradients: list[dict[str, Any]], max_lines: int = 12) -> Figure:
    """Relative error of unrolled-T gradients against the implicit one, with the rho^T line of each cell."""
    fig = _figure(8, 4.6)
    ax = fig.add_subplot()
    usable = [g for g in gradients if g["rho"] is not None and any(v is not None for v in g["unrolled_error"].values())]
    ax.set_xlabel("unrolled depth T (steps of y ← f(y) differentiated by autograd)")
    ax.set_ylabel("‖g_T − g_implicit‖ / ‖g_implicit‖  (log scale)")
    _log(ax)
    if not usable:
        _note(ax, "no cell with a converged forward and adjoint solve\n(nothing to compare)")
        ax.set_title(f"{variant}: unrolled vs implicit gradient")
        return fig
    usable.sort(key=lambda g: (g["rho"], g["key"]))
    if len(usable) > max_lines:  # evenly spread over rho, always including both ends
        idx = np.unique(np.linspace(0, len(usable) - 1, max_lines).round().astype(int))
        usable = [usable[i] for i in idx]
    norm = Normalize(vmin=0, vmax=1)
    cmap = matplotlib.colormaps["viridis"].with_extremes(over="#d62728")
    floor = np.finfo(np.float64).eps
    measured: list[float] = []
    for g in usable:
        points = sorted((int(t), e) for t, e in g["unrolled_error"].items() if e is not None and e > 0)
        if not points:
            continue
        ts, es = np.array(points, dtype=np.float64).T
        measured.extend(es)
        color = cmap(norm(g["rho"]))
        ax.plot(ts, es, marker="o", markersize=3, color=color, linewidth=1.2)
        # rho^T through the first point: the rate of docs/theory.md#unrolled-gradient
        ref = es[0] * np.power(max(g["rho"], floor), ts - ts[0])
        ax.plot(ts, np.maximum(ref, 1e-300), linestyle="--", color=color, linewidth=0.9, alpha=0.8)
    # the rho^T lines of cells with rho > 1 explode: the y range follows the measured errors
    ax.set_ylim(max(min(measured) / 10, 1e-17), max(measured) * 10)
    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mappable, ax=ax, extend="max", label="ρ(J(y*)) of the cell (largest over its batch; red: > 1)")
    handles = [
        Line2D([], [], color="grey", marker="o", markersize=3, label="measured error"),
        Line2D([], [], color="grey", linestyle="--", label="ρᵀ (through the first point)"),
    ]
    ax.legend(handles=handles, loc="lower left")
    ax.set_title(
        f"{variant}: unrolled-T vs implicit gradient of ⟨G, y*⟩ over x and the weights\n"
        f"{len(usable)} cells spread over ρ; unrolled gradients approach the implicit one like ρᵀ when ρ < 1"
    )
    return fig


@_styled
def saved_bytes_plot(variant: str, saved: dict[str, Any]) -> Figure:
    """Bytes autograd saves for backward against the forward depth T, one line per backward mode."""
    fig = _figure(7, 4.2)
    ax = fig.add_subplot()
    for k, (mode, counts) in enumerate(saved["bytes"].items()):
        color, marker = MODE_STYLES.get(mode, ("black", "x"))
        name = f"phantom, k = {saved['phantom_steps']}" if mode == "phantom" and "phantom_steps" in saved else mode
        label = f"{name} ({counts[-1] / 1024:.1f} KiB at T = {saved['T'][-1]})"
        # markers of modes with equal counts would hide each other: shrink each later one a little
        ax.plot(saved["T"], [c / 1024 for c in counts], marker=marker, markersize=8 - 2 * k, color=color, label=label)
    _log(ax, "x", base=2)
    _log(ax, "y", base=2)
    ax.set_xlabel("forward steps T (unrolled: exactly T; implicit/phantom: a solve with max_iter = T)")
    ax.set_ylabel("KiB saved for backward")
    ax.set_title(
        f"{variant}: memory kept for backward (B = {saved['batch']}, N = {saved['tokens']}, D = {saved['dim']}, "
        + (f"K = {saved['slots']}, " if "slots" in saved else "")
        + f"s = {saved['scale']:g})"
    )
    ax.legend(title="backward mode")
    return fig


@_styled
def comparison_plot(results: list[dict[str, Any]], method: str = "picard") -> Figure:
    """Fraction of runs that converged against the weight scale, one line per variant."""
    fig = _figure(8, 4.2)
    ax = fig.add_subplot()
    markers = "osD^v<>px*"
    for k, result in enumerate(results):
        scales = list(result["sweep"]["scales"])
        shares = []
        for s in scales:
            members = [r for r in result["runs"] if r["scale"] == s]
            shares.append(sum(r[method]["status"] == Status.CONVERGED.value for r in members) / max(len(members), 1))
        ax.plot(scales, shares, marker=markers[k % len(markers)], label=result["variant"])
    _log(ax, "x")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("weight scale s (× nn.Linear's default init)")
    ax.set_ylabel(f"fraction of runs converged ({method})")
    ax.set_title(f"Where each variant converges ({method}, all N, D, seeds)")
    ax.legend(title="variant", loc="lower left")
    return fig
