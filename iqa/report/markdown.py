"""The report's Markdown: one page per variant and an index that compares them.

Pages are built from measurement data (:mod:`iqa.measure`) and property
verdicts (:mod:`iqa.pytest_plugin` records); every number on a page is read
from that data and formatted by :func:`fmt`, tables by tabulate ("github"
format). Nothing here reads a clock: the same data give the same text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from iqa import metrics as names
from iqa.grad import BACKWARD_MODES
from iqa.metrics import phantom_name
from iqa.verdicts import BAD_VERDICTS, FAIL, NOT_REACHED, UNEXPECTED_PASS, VERDICTS, property_verdicts
from iqa.verdicts import counts as verdict_counts

#: Images of a variant page: file name -> (section title, alt text).
FIGURES = {
    "residuals.png": "Picard step size ‖y_{t+1} − y_t‖ per iteration for every run, coloured by status",
    "iterations.png": "median steps to tol over tokens and weight scale, per solver",
    "status.png": "share of converged / cycle / out-of-steps runs over tokens and weight scale, per solver",
    "certificate.png": "observed rate against the certificate κ and against ρ(J*)",
    "unrolled.png": "unrolled-T gradient error against T with the ρᵀ line",
    "saved_bytes.png": "bytes saved for backward against T per backward mode",
}
COMPARISON_FIGURE = "convergence.png"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Context:
    """What made the report: the command (without options that do not change it), versions, seed, profile."""

    command: str
    versions: dict[str, str]
    seed: int
    preset: str
    properties_command: str | None
    properties_profile: str | None
    properties_max_examples: int | None = None
    properties_shrink: bool = True


def fmt(value: Any) -> str:
    """A number as the tables show it: 3 significant digits; integers as they are; None as "—"."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e6):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def clean(text: str) -> str:
    """Text from a test report without memory addresses (they change from run to run)."""
    return _ADDRESS.sub("", text)


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    return str(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


def _provenance(context: Context, result: dict[str, Any] | None = None) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in sorted(context.versions.items()))
    lines = [
        f"Made by `{context.command}` (seed {context.seed}, `{context.preset}` sweep; `--jobs` and `--out` "
        "do not change the content). Versions: " + versions + ".",
    ]
    if result is not None:
        sweep = result["sweep"]
        lines += [
            "",
            f"Sweep: N ∈ {_set(sweep['tokens'])} tokens, D ∈ {_set(sweep['dims'])}, weight scale s ∈ "
            f"{_set(sweep['scales'])} (× nn.Linear's default init), seeds {_set(sweep['seeds'])}, "
            f"{sweep['batch']} inputs x ~ N(0, 1) per cell, {sweep['dtype']}; solvers {', '.join(sweep['methods'])} "
            f"from the layer's y₀, tol = {sweep['tol']:g} on ‖f(y) − y‖, max_iter = {sweep['max_iter']}.",
        ]
        lines += _state_lines(result)
    return lines


def _state_lines(result: dict[str, Any]) -> list[str]:
    """What a slot variant's state is and which grid shapes its domain left out (nothing for other variants)."""
    lines = []
    slots = sorted({run["slots"] for run in result["runs"] if "slots" in run})
    if slots:
        lines += [
            "",
            f"State: K ∈ {_set(slots)} slots per input (the fixed-point state y is [B, K, D], not x's shape): "
            "ρ and the observed rates are about y; the gradients about the layer's output, its readout of y*.",
        ]
    outside = result.get("outside_domain")
    if outside:
        shapes = ", ".join(f"(N = {n}, D = {d})" for n, d in outside)
        lines += ["", f"Not measured, outside the variant's domain ({result['domain']}): {shapes}."]
    return lines


def _set(values: Sequence[Any]) -> str:
    return "{" + ", ".join(fmt(v) for v in values) + "}"


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """The per-method convergence table: one row per solver."""
    m = result["metrics"]
    rows = []
    for method in result["sweep"]["methods"]:
        rows.append(
            [
                method,
                *(percent(m[names.status_fraction(method, status)]) for status in names.STATUS_FRACTIONS),
                fmt(m[names.iterations(method, "p50")]),
                fmt(m[names.iterations(method, "p95")]),
                fmt(m[names.rate(method, "p50")]),
            ]
        )
    return rows


SUMMARY_HEADERS = [
    "solver",
    "converged",
    "cycle",
    "out of steps",
    "diverged / non-finite",
    "steps to tol p50",
    "steps to tol p95",
    "observed rate p50",
]


def analysis_rows(result: dict[str, Any]) -> list[list[str]]:
    """Certificates, spectral radii and how degenerate the fixed point is: quantiles p05 / p50 / p95."""
    m = result["metrics"]

    def q(quantity: str) -> list[str]:
        return [fmt(m.get(names.quantile(quantity, k))) for k in names.QUANTILES]

    return [
        ["certificate κ (best of κ_∞, κ_F, κ_w), all runs", *q(names.KAPPA)],
        ["ρ(J(y*)) at converged fixed points", *q(names.RHO)],
        ["ρ at the token mean 1·mean(x)ᵀ (layers that fix it)", *q(names.RHO_CONSENSUS)],
        ["‖y* − 1·mean(x)ᵀ‖ / ‖x − 1·mean(x)ᵀ‖ (0: output = token mean)", *q(names.CONSENSUS_DISTANCE)],
        ["weight-gradient norm ‖∂⟨G, y*⟩/∂θ‖ / √(BND)", *q(names.WEIGHT_GRAD_NORM)],
    ]


def gradient_rows(result: dict[str, Any]) -> list[list[str]]:
    """Relative gradient errors against the implicit gradient: unrolled at each T, then each phantom setting."""
    m = result["metrics"]
    rows = []
    for T in sorted(result["sweep"]["unrolled_T"]):
        rows.append([f"unrolled, T = {T}", *(fmt(m.get(names.unrolled_error(T, q))) for q in ("p50", "p95"))])
    for k, lam in result["sweep"]["phantom"]:
        setting = phantom_name(k, lam)
        rows.append(
            [f"phantom, k = {k}, λ = {lam:g}", *(fmt(m.get(names.phantom_error(setting, q))) for q in ("p50", "p95"))]
        )
    return rows


def saved_rows(result: dict[str, Any]) -> list[list[str]]:
    saved = result["saved_bytes"]
    return [[str(T), *(fmt(saved["bytes"][mode][i]) for mode in BACKWARD_MODES)] for i, T in enumerate(saved["T"])]


def _mode_header(mode: str, saved: dict[str, Any]) -> str:
    if mode == "phantom" and "phantom_steps" in saved:
        return f"phantom, k = {saved['phantom_steps']} (bytes)"
    return f"{mode} (bytes)"


def _one_line(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    line = clean(text).strip().splitlines()[0] if text.strip() else ""
    line = line.replace("|", "\\|")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def properties_section(tests: list[dict[str, Any]] | None, context: Context, error: str | None) -> list[str]:
    lines = ["## Property verdicts", ""]
    if context.properties_command is None:
        return [*lines, "The property suite was not run for this report (`--no-properties`).", ""]
    cap = context.properties_max_examples
    budget = "" if cap is None else f", capped at {cap} examples per property for the report's time budget"
    if not context.properties_shrink:
        budget += " and without shrinking (a smoke run: failing examples are shown as found, not minimal)"
    lines += [
        f"From one pytest run of the per-variant properties on the derandomized `{context.properties_profile}` "
        f"Hypothesis profile{budget}. Meta tests of the suite and benchmarks are not part of it (`tox` runs "
        "them). The command, from the repository root:",
        "",
        f"    {context.properties_command}",
        "",
    ]
    if error is not None:
        return [*lines, "The run gave no verdicts:", "", "```text", clean(error), "```", ""]
    if not tests:
        return [*lines, "No property ran for this variant.", ""]
    rows = property_verdicts(tests)
    counted = verdict_counts(rows)
    lines += [", ".join(f"{n} {v}" for v, n in counted.items() if n) + " (properties).", ""]
    table = []
    for row in rows:
        cases = f" ({_cases(row['counts'])})" if sum(row["counts"].values()) > 1 else ""
        verdict = f"**{row['verdict']}**" if row["verdict"] in BAD_VERDICTS else row["verdict"]
        table.append([f"`{row['property']}`", row["file"], verdict + cases, _one_line(row["detail"])])
    lines += [_table(table, ["property", "file", "verdict", "why / message"]), ""]
    unreached = [row for row in rows if row["verdict"] == NOT_REACHED]
    if unreached:
        lines += [
            "Not reached: the layer gave these properties nothing to check (every draw lacked what the property "
            "needs, as said); neither a pass nor a fail.",
            "",
            *(f"- `{row['property']}`: {clean(row['detail'])}" for row in unreached),
            "",
        ]
    for row in rows:
        t = row["record"]
        if row["verdict"] == UNEXPECTED_PASS:
            lines += [f"### Unexpected pass: `{t['function']}`", "", f"`{t['nodeid']}`: {row['detail']}.", ""]
            lines += ["Remove the declaration, or find why the property holds. Rerun:", "", "```sh", t["command"]]
            lines += ["```", ""]
        if row["verdict"] != FAIL:
            continue
        lines += [f"### Failure: `{t['function']}`", "", f"`{t['nodeid']}` failed in {t['phase']}:", ""]
        lines += ["```text", clean(t["message"] or "(no message)"), "```", ""]
        if t["falsifying_example"]:
            lines += [
                "Minimal falsifying example (Hypothesis, shrunk):"
                if context.properties_shrink
                else "Falsifying example (Hypothesis, not shrunk in this smoke run):",
                "",
                "```python",
                clean(t["falsifying_example"]),
                "```",
                "",
            ]
        if t["reproduce_failure"]:
            lines += [f"To replay it exactly, decorate the test with `{t['reproduce_failure']}`.", ""]
        lines += ["Reproduce (from the repository root):", "", "```sh", t["command"], "```", ""]
    return lines


def _cases(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}" for v, n in counts.items()) + " cases"


def variant_page(
    result: dict[str, Any], tests: list[dict[str, Any]] | None, context: Context, error: str | None = None
) -> str:
    """The Markdown page of one variant; its figures are the files named in FIGURES, next to it."""
    name = result["variant"]
    sweep = result["sweep"]
    m = result["metrics"]
    lines = [f"# Variant `{name}`: convergence, gradients and properties", ""]
    if result["description"]:
        lines += [f"> {result['description']}", ""]
    lines += [f"Tags: {', '.join(f'`{t}`' for t in result['tags']) or 'none'}.", ""]
    lines += [*_provenance(context, result), "", "[All variants](../README.md)", ""]
    lines += ["## Convergence", ""]
    lines += [_table(summary_rows(result), SUMMARY_HEADERS), ""]
    lines += [
        f"Fractions are over all {fmt(m[names.RUNS])} runs; steps to tol and observed rates over the converged ones "
        "(the observed rate is q in a least-squares fit ‖y_{t+1} − y_t‖ ∝ qᵗ over the last half of a run).",
        "",
        "### The seed's plot: step size per iteration",
        "",
        f"![{FIGURES['residuals.png']}](residuals.png)",
        "",
        "Each line is one run of the seed's iteration y ← f(y) (Picard, undamped): a straight descending line is "
        "linear convergence at rate ρ(J*), a flat band that never reaches the dashed tolerance is a run that "
        "cycles or runs out of steps.",
        "",
        "### Where it converges",
        "",
        f"![{FIGURES['iterations.png']}](iterations.png)",
        "",
        f"![{FIGURES['status.png']}](status.png)",
        "",
        "Each cell pools every D, seed and input at that (N, s). The regimes of docs/theory.md#regimes for the seed: "
        "small weight scales contract to the token mean, s ≈ 3 cycles, and at large s (nearly one-hot attention) "
        "Picard from x rarely converges.",
        "",
        "## Certificates, spectral radius and the fixed point",
        "",
        _table(analysis_rows(result), ["quantity", "p05", "p50", "p95"]),
        "",
        "Share of runs with a certificate κ < 1 (contraction proven): "
        f"{percent(m[names.below_one(names.KAPPA)])}."
        + (
            f" The eigenvalue solver failed on the Jacobian of {fmt(m[names.RHO_FAILED_RUNS])} converged runs "
            "(left out of the ρ quantiles)."
            if m.get(names.RHO_FAILED_RUNS)
            else ""
        ),
        "",
        f"![{FIGURES['certificate.png']}](certificate.png)",
        "",
        "κ is an upper bound on the contraction factor, so every run with κ < 1 must sit below the diagonal "
        "on the left; ρ(J*) is the local rate, so on the right the runs should lie along the diagonal.",
        "",
        "## Gradients: implicit against unrolled and phantom",
        "",
        f"For L = ⟨G, y*⟩ with a fixed G ~ N(0, 1), the gradient over x and every weight, in "
        f"{fmt(m[names.GRADIENT_CELLS])} cells ({_seeds_phrase(sweep['gradient_seeds'])} of each (N, D, s), where "
        "the whole batch converged); error = ‖g − g_implicit‖ / ‖g_implicit‖, quantiles over cells:",
        "",
        _table(gradient_rows(result), ["gradient", "error p50", "error p95"]),
        "",
        f"![{FIGURES['unrolled.png']}](unrolled.png)",
        "",
        "## Memory: bytes saved for backward",
        "",
        _table(saved_rows(result), ["T", *(_mode_header(mode, result["saved_bytes"]) for mode in BACKWARD_MODES)]),
        "",
        f"![{FIGURES['saved_bytes.png']}](saved_bytes.png)",
        "",
        "Counted exactly by `iqa.memory.saved_tensor_bytes` (weights and input excluded). Wall-clock time per "
        "step is measured (`iqa.measure`, and `tox -e bench`) but not shown here: it differs from run to run, "
        "and this page is reproduced byte for byte.",
        "",
    ]
    lines += properties_section(tests, context, error)
    lines += ["## Every metric", "", "The scalar metrics of `metrics.json` (what a baseline stores):", ""]
    rows = [[f"`{k}`", fmt(v), result["metric_info"][k]["unit"]] for k, v in sorted(m.items()) if _shown(result, k)]
    lines += [_table(rows, ["metric", "value", "unit"]), ""]
    return "\n".join(lines)


def _phantom_label(sweep: dict[str, Any]) -> str:
    if not sweep["phantom"]:
        return "none"
    k, lam = sweep["phantom"][0]
    return f"k={k}, λ={lam:g}"


def _seeds_phrase(n: int) -> str:
    return "the first seed" if n == 1 else f"the first {n} seeds"


def _shown(result: dict[str, Any], name: str) -> bool:
    return bool(result["metric_info"][name]["deterministic"])


def index_page(
    results: list[dict[str, Any]],
    properties: dict[str, list[dict[str, Any]]] | None,
    context: Context,
    directories: dict[str, str],
    error: str | None = None,
    related: Sequence[tuple[str, str]] = (),
) -> str:
    """The index: one row per variant, the comparison figure, links to each page and to the related reports
    (title, relative link) kept beside it."""
    lines = ["# iqa reports: every variant", ""]
    lines += [*_provenance(context, results[0] if results else None), ""]
    if related:
        lines += ["Also here: " + "; ".join(f"[{title}]({link})" for title, link in related) + ".", ""]
    rows = []
    for r in results:
        m = r["metrics"]
        last_T = max(r["sweep"]["unrolled_T"])
        first_phantom = r["sweep"]["phantom"][0] if r["sweep"]["phantom"] else None
        phantom = fmt(m.get(names.phantom_error(phantom_name(*first_phantom), "p50"))) if first_phantom else "—"
        rows.append(
            [
                f"[`{r['variant']}`]({directories[r['variant']]}/README.md)",
                *(percent(m[names.status_fraction(method, "converged")]) for method in r["sweep"]["methods"]),
                fmt(m[names.iterations(r["sweep"]["methods"][0], "p50")]),
                percent(m[names.below_one(names.KAPPA)]),
                fmt(m[names.quantile(names.RHO, "p50")]),
                fmt(m[names.quantile(names.CONSENSUS_DISTANCE, "p50")]),
                fmt(m[names.quantile(names.WEIGHT_GRAD_NORM, "p50")]),
                fmt(m.get(names.unrolled_error(last_T, "p50"))),
                phantom,
                _verdicts(properties, r["variant"], error),
            ]
        )
    methods = results[0]["sweep"]["methods"] if results else []
    headers = [
        "variant",
        *(f"{method} converged" for method in methods),
        f"{methods[0] if methods else ''} steps p50",
        "κ < 1",
        "ρ(J*) p50",
        "distance to mean p50",
        "weight grad p50",
        f"unrolled error T={max(results[0]['sweep']['unrolled_T']) if results else ''} p50",
        f"phantom ({_phantom_label(results[0]['sweep'])}) error p50" if results else "phantom error p50",
        "properties",
    ]
    lines += ["## Comparison", "", _table(rows, headers), ""]
    lines += [
        "Distance to mean: ‖y* − 1·mean(x)ᵀ‖ / ‖x − 1·mean(x)ᵀ‖ (0 means the layer outputs the token mean, "
        "the degenerate fixed point of docs/theory.md#consensus); weight grad: ‖∂⟨G, y*⟩/∂θ‖ / √(BND) at converged "
        "cells (≈ 0: the weights do not move the fixed point). Properties: how many got each verdict, "
        + " / ".join(VERDICTS)
        + ", from the pytest run described on each page.",
        "",
        f"![fraction of converged runs against weight scale, one line per variant]({COMPARISON_FIGURE})",
        "",
    ]
    if properties is not None:
        bad = [
            (name, row)
            for name, tests in sorted(properties.items(), key=lambda kv: str(kv[0]))
            for row in property_verdicts(tests)
            if row["verdict"] in BAD_VERDICTS
        ]
        unreached = [
            (name, row)
            for name, tests in sorted(properties.items(), key=lambda kv: str(kv[0]))
            for row in property_verdicts(tests)
            if row["verdict"] == NOT_REACHED
        ]
        lines += ["## Property failures", ""]
        if bad:
            lines += [
                _table(
                    [
                        [f"`{name}`", f"`{row['property']}`", row["verdict"], _one_line(row["detail"], 100)]
                        for name, row in bad
                    ],
                    ["variant", "property", "verdict", "message"],
                ),
                "",
                "Each variant's page gives the minimal falsifying example and the command that reproduces it.",
                "",
            ]
        elif unreached:
            lines += [
                "None: every property that ran passed, failed as declared, did not apply, or was not reached.",
                "",
            ]
        else:
            lines += ["None: every property that ran passed, failed as declared, or did not apply.", ""]
        if unreached:
            lines += [
                "## Properties not reached",
                "",
                "The layer gave these properties nothing to check (neither a pass nor a fail):",
                "",
                _table(
                    [[f"`{name}`", f"`{row['property']}`", _one_line(row["detail"], 200)] for name, row in unreached],
                    ["variant", "property", "why"],
                ),
                "",
            ]
    elif error is not None:
        lines += [
            "## Property failures",
            "",
            "The property run gave no verdicts:",
            "",
            "```text",
            clean(error),
            "```",
            "",
        ]
    lines += [
        "## Reproducing",
        "",
        "The same command and seed give byte-identical Markdown and PNG files (fixed seeds per cell, one torch "
        "thread, a derandomized Hypothesis profile, PNGs without metadata). Wall-clock timings are left out for "
        "that reason.",
        "",
    ]
    return "\n".join(lines)


def _verdicts(properties: dict[str, list[dict[str, Any]]] | None, variant: str, error: str | None) -> str:
    if properties is None:
        return "not run" if error is None else "run failed"
    counted = verdict_counts(property_verdicts(properties.get(variant, [])))
    return " / ".join(str(counted[v]) for v in VERDICTS)
