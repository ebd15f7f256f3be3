"""The reports: reproducible to the byte, complete, atomic, and telling the truth.

A tiny sweep over two variants is reported twice (one process, then two
worker processes, into different directories) and the two outputs are
compared byte for byte; every link of every page must resolve; PNGs must
carry no metadata; numbers in the tables are recomputed independently (by
solving the cells again and computing spectral radii from dense autograd
Jacobians). The pytest plugin is run on a small fake suite whose outcomes are
known, and the command it prints for a failure is run to see that it
reproduces the failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import torch

from iqa import solve
from iqa.atomic import atomic_open, write_json, write_text
from iqa.report import Options, build, configure_parser, main, markdown
from iqa.suite import start
from iqa.variants import resolve
from iqa.verdicts import EXPECTED_FAILURE, FAIL, NOT_APPLICABLE, NOT_REACHED, PASS, UNEXPECTED_PASS
from properties.strategies import TINY_SWEEP as TINY

VARIANTS = ("reference", "hopfield")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def _report(out: Path, *extra: str) -> Path:
    selection = [a for v in VARIANTS for a in ("--variant", v)]
    options = Options.from_args(_args(*selection, "--out", str(out), "--no-properties", "--no-progress", *extra))
    written, error = build(options, sweep=TINY)
    assert error is None and written
    return out


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("reports")
    return _report(base / "one"), _report(base / "two", "--jobs", "2")


def test_a_repeated_variant_is_reported_once(tmp_path: Path) -> None:
    """--variant reference --variant reference,reference with --jobs 2 measures and lists reference once."""
    argv = ("--variant", "reference", "--variant", "reference,reference", "--out", str(tmp_path))
    _, error = build(Options.from_args(_args(*argv, "--no-properties", "--no-progress", "--jobs", "2")), sweep=TINY)
    assert error is None
    assert (tmp_path / "README.md").read_text().count("[`reference`]") == 1


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_the_same_bytes(reports: tuple[Path, Path]) -> None:
    """Markdown, PNG and JSON files are identical across runs, output directories and --jobs."""
    one, two = (_files(r) for r in reports)
    assert sorted(one) == sorted(two)
    assert any(name.endswith(".png") for name in one) and any(name.endswith(".md") for name in one)
    different = [name for name in one if one[name] != two[name]]
    assert different == [], f"files that differ between two runs with the same seed: {different}"


def test_every_link_resolves(reports: tuple[Path, Path]) -> None:
    root = reports[0]
    pages = sorted(root.rglob("*.md"))
    assert len(pages) == 1 + len(VARIANTS)
    images = 0
    for page in pages:
        for target in _LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).is_file(), f"{page.relative_to(root)} links to missing {target}"
            images += target.endswith(".png")
    assert images >= 1 + 6 * len(VARIANTS)  # the comparison figure and six figures per variant


def _chunks(data: bytes) -> list[str]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    kinds, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = int.from_bytes(data[pos + 8 + length : pos + 12 + length], "big")
        assert zlib.crc32(kind + body) == crc, f"corrupt {kind!r} chunk"
        kinds.append(kind.decode("ascii"))
        pos += 12 + length
    return kinds


def test_pngs_carry_no_metadata(reports: tuple[Path, Path]) -> None:
    """No text, time or software chunks: nothing in a PNG but the picture."""
    for path in sorted(reports[0].rglob("*.png")):
        kinds = _chunks(path.read_bytes())
        assert kinds[0] == "IHDR" and kinds[-1] == "IEND"
        assert not {"tEXt", "zTXt", "iTXt", "tIME"} & set(kinds), f"{path.name} has metadata chunks {kinds}"


def _table_row(page: str, first_cell: str) -> list[str]:
    for line in page.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r}")


def _solve_cells(name: str) -> list[tuple[str, int, torch.Tensor | None, torch.nn.Module, torch.Tensor, int]]:
    """Per run: Picard's status and steps, y* (Picard's, else Anderson's, else None), layer, x, element.

    Solved here with iqa.solve on layers built from the cell seeds, without iqa.measure.
    """
    variant = resolve(name)
    out = []
    for cell in TINY.cells():
        layer = variant.make(cell.dim, scale=cell.scale, seed=cell.weight_seed, dtype=torch.float64)
        g = torch.Generator().manual_seed(cell.input_seed)
        x = torch.randn(TINY.batch, cell.tokens, cell.dim, dtype=torch.float64, generator=g)
        with torch.no_grad():
            f = layer.fixed_point_map(x)
            picard = solve(f, x.clone(), "picard", tol=TINY.tol, max_iter=TINY.max_iter)
            anderson = solve(f, x.clone(), "anderson", tol=TINY.tol, max_iter=TINY.max_iter)
        for b in range(TINY.batch):
            y_star = None
            for solution in (picard, anderson):
                if y_star is None and solution.statuses[b].value == "converged":
                    y_star = solution.y[b]
            out.append((picard.statuses[b].value, picard.steps[b], y_star, layer, x, b))
    return out


def _close(shown: str, value: float) -> bool:
    """A table entry printed with 3 significant digits (or as an integer) equals value to that precision."""
    return abs(float(shown) - value) <= 5e-3 * abs(value) + 1e-12


def test_convergence_table_matches_a_recomputation(reports: tuple[Path, Path]) -> None:
    page = (reports[0] / "reference" / "README.md").read_text(encoding="utf-8")
    row = _table_row(page, "picard")
    solved = _solve_cells("reference")
    statuses = [s for s, *_ in solved]
    steps = [n for s, n, *_ in solved if s == "converged"]
    assert row[1] == f"{100 * statuses.count('converged') / len(statuses):.0f}%"
    assert row[2] == f"{100 * statuses.count('cycle') / len(statuses):.0f}%"
    assert _close(row[5], statistics.median(steps))
    index = (reports[0] / "README.md").read_text(encoding="utf-8")
    assert _table_row(index, "[`reference`](reference/README.md)")[1] == row[1]


def test_spectral_radius_matches_dense_autograd(reports: tuple[Path, Path]) -> None:
    """The median rho(J(y*)) of the analysis table, from torch.autograd.functional.jacobian and eigvals."""
    page = (reports[0] / "hopfield" / "README.md").read_text(encoding="utf-8")
    row = _table_row(page, "ρ(J(y*)) at converged fixed points")
    rhos = []
    for _, _, y_star, layer, x, b in _solve_cells("hopfield"):
        if y_star is None:
            continue
        f = layer.fixed_point_map(x[b : b + 1])  # one sequence: its own map (hopfield is batch independent)
        J = torch.autograd.functional.jacobian(lambda v, f=f: f(v[None])[0], y_star)
        n = y_star.numel()
        rhos.append(float(torch.linalg.eigvals(J.reshape(n, n)).abs().max()))
    assert rhos, "no converged run to check"
    assert _close(row[2], statistics.median(rhos))


def test_metrics_json_has_no_clock(reports: tuple[Path, Path]) -> None:
    data = json.loads((reports[0] / "reference" / "metrics.json").read_text(encoding="utf-8"))
    assert data["variant"] == "reference"
    assert not [k for k in data["metrics"] if "time" in k]
    assert data["metrics"]["runs"] == len(list(TINY.cells())) * TINY.batch


def test_bad_arguments_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args("--variant", "no-such-variant", "--out", str(tmp_path), "--no-properties")) == 2
    assert "no-such-variant" in capsys.readouterr().err
    assert main(_args("--jobs", "0", "--out", str(tmp_path), "--no-properties")) == 2
    assert "--jobs" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "page.md"
    write_text(path, "old\n")
    write_text(path, "new\n")
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.md"]


def test_failed_write_leaves_the_old_file_and_no_debris(tmp_path: Path) -> None:
    path = tmp_path / "page.md"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_open(path) as f:
        f.write("half of the new")
        raise RuntimeError("interrupted")
    assert path.read_text() == "old\n"
    with pytest.raises(ValueError):
        write_json(path, {"x": float("nan")})  # strict JSON: NaN is an error, not a token
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.md"]


# --- the pytest plugin on a suite with known outcomes --------------------------------------------

FAKE_CONFTEST = """
import pytest

class Named:
    def __init__(self, name):
        self.name = name
        # "bad" claims to contract at weight scales [0, 1] (iqa.rejections.refuted_claim reads these two)
        self.tags = {"contractive"} if name == "bad" else set()
        self.contractive_scales = (0.0, 1.0) if name == "bad" else None
    def __repr__(self):
        return f"Named({self.name!r})"

def pytest_generate_tests(metafunc):  # --variant is iqa.pytest_plugin's option
    if "variant" in metafunc.fixturenames:
        names = metafunc.config.getoption("--variant") or ["good", "bad"]
        marks = []
        if metafunc.function.__name__.startswith("test_declared"):  # as properties/conftest.py declares
            marks = [pytest.mark.xfail(strict=True, reason="declared"), pytest.mark.iqa_expected_failure("declared")]
        metafunc.parametrize("variant", [pytest.param(Named(n), id=n, marks=marks) for n in names])
"""

FAKE_TESTS = """
import pytest
from hypothesis import assume, given, settings, strategies as st
from iqa.rejections import reject

@settings(derandomize=True, database=None)
@given(n=st.integers(0, 1000))
def test_nothing_converges(variant, n):
    reject("no converged fixed point", solver="Picard", status="max_iter", rho=1.0, scale=0.5, convergence=True)

@settings(derandomize=True, database=None)
@given(n=st.integers(0, 1000))
def test_filters_without_a_reason(variant, n):
    assume(False)

@settings(derandomize=True, database=None, max_examples=200)
@given(n=st.integers(0, 1000))
def test_small_numbers(variant, n):
    assert variant.name == "good" or n < 10, "too big"

def test_passes(variant):
    pass

@pytest.mark.skip(reason="not applicable here")
def test_skipped(variant):
    pass

@pytest.mark.xfail(strict=True, reason="known to fail")
def test_known_failure(variant):
    assert False

@pytest.mark.xfail(strict=True, reason="claimed to fail")
def test_unexpected_pass(variant):
    pass

def test_declared_failure(variant):
    assert False

def test_declared_but_holds(variant):
    pass
"""

#: A tool test beside the variant properties: never selected, since they are selected by location.
FAKE_TOOL_TEST = """
def test_without_variant(variant):
    pass
"""


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("fake")
    (root / "pytest.ini").write_text("[pytest]\n")
    suite = root / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text(textwrap.dedent(FAKE_CONFTEST))
    for folder, name, text in (("variant", "test_fake.py", FAKE_TESTS), ("tool", "test_tool.py", FAKE_TOOL_TEST)):
        (suite / folder).mkdir()
        (suite / folder / name).write_text(textwrap.dedent(text))
    return root, start(["good", "bad"], suite, profile="ci").wait()


def test_plugin_records_every_outcome(fake_run) -> None:
    _, run = fake_run
    assert run.error is None, run.error
    outcomes = {(t["variant"], t["function"]): t["outcome"] for t in run.results["tests"]}
    assert outcomes == {
        **{(v, "test_passes"): "passed" for v in ("good", "bad")},
        **{(v, "test_skipped"): "skipped" for v in ("good", "bad")},
        **{(v, "test_known_failure"): "xfailed" for v in ("good", "bad")},
        **{(v, "test_unexpected_pass"): "failed" for v in ("good", "bad")},  # strict xfail that passed
        **{(v, "test_declared_failure"): "xfailed" for v in ("good", "bad")},
        **{(v, "test_declared_but_holds"): "failed" for v in ("good", "bad")},
        ("good", "test_small_numbers"): "passed",
        ("bad", "test_small_numbers"): "failed",
        ("good", "test_nothing_converges"): "skipped",  # not reached
        ("bad", "test_nothing_converges"): "failed",  # not reached would hide a refuted contractive claim
        **{(v, "test_filters_without_a_reason"): "failed" for v in ("good", "bad")},  # Hypothesis's error stands
    }  # test_without_variant lies outside variant/: not selected
    assert run.results["summary"] == {"passed": 3, "failed": 8, "skipped": 3, "xfailed": 4, "xpassed": 0}
    verdicts = {(t["variant"], t["function"]): t["verdict"] for t in run.results["tests"]}
    assert verdicts == {
        **{(v, "test_passes"): PASS for v in ("good", "bad")},
        **{(v, "test_skipped"): NOT_APPLICABLE for v in ("good", "bad")},
        **{(v, "test_known_failure"): EXPECTED_FAILURE for v in ("good", "bad")},
        **{(v, "test_unexpected_pass"): UNEXPECTED_PASS for v in ("good", "bad")},
        **{(v, "test_declared_failure"): EXPECTED_FAILURE for v in ("good", "bad")},
        **{(v, "test_declared_but_holds"): UNEXPECTED_PASS for v in ("good", "bad")},
        ("good", "test_small_numbers"): PASS,
        ("bad", "test_small_numbers"): FAIL,
        ("good", "test_nothing_converges"): NOT_REACHED,
        ("bad", "test_nothing_converges"): FAIL,
        **{(v, "test_filters_without_a_reason"): FAIL for v in ("good", "bad")},
    }
    declared = [t for t in run.results["tests"] if t["function"].startswith("test_declared")]
    assert {t["expected_failure"] for t in declared} == {"declared"}  # the reason as data, no prefix


def test_plugin_turns_a_property_with_nothing_checked_into_not_reached(fake_run) -> None:
    """Every draw rejected, each saying why: "not reached" with the tally's one line, recorded as data. The same
    rejections at scales where the variant claims to contract fail instead; rejections that give no reason leave
    Hypothesis's error standing (nothing says what the layer lacked)."""
    _, run = fake_run
    tests = {(t["variant"], t["function"]): t for t in run.results["tests"]}
    good = tests["good", "test_nothing_converges"]
    # one line: the reason, how many draws (Hypothesis gives up after 50 rejected; its first draw comes on top),
    # the solver's statuses and the range of rho at the last iterate
    pattern = (
        r"no converged fixed point in (\d+) draws; Picard: \1 out of steps; rho at the last iterate 1.00-1.00; "
        r"weight scales 0.50-0.50"
    )
    found = re.fullmatch(pattern, good["not_reached"])
    assert found is not None and int(found[1]) >= 50, good["not_reached"]
    assert good["reason"] == "not reached: " + good["not_reached"]
    bad = tests["bad", "test_nothing_converges"]
    assert bad["not_reached"] is None
    assert re.match(
        r"Failed: the variant claims contractive at weight scales \[0, 1\], yet \d+ draws there had", bad["message"]
    )
    unlabelled = tests["good", "test_filters_without_a_reason"]
    assert unlabelled["not_reached"] is None and "FailedHealthCheck" in unlabelled["message"]
    assert re.search(r"\d+ rejected by an assumption that gave no reason", unlabelled["longrepr"])


def test_index_lists_the_properties_not_reached() -> None:
    """The index counts "not reached" in its properties column and lists each such property with its reason."""
    context = markdown.Context("iqa report", {}, 0, "custom", "cmd", "ci")

    def record(function: str, **fields: object) -> dict[str, object]:
        return {"nodeid": f"p/variant/t.py::{function}[v]", "file": "p/variant/t.py", "function": function, **fields}

    reason = "no converged fixed point in 51 draws; Picard: 51 out of steps; rho at the last iterate 1.00-1.00"
    tests = [record("test_a", outcome="skipped", not_reached=reason), record("test_b", outcome="passed")]
    text = markdown.index_page([], {"v": tests}, context, {})
    assert "fail / unexpected pass / not reached / pass / expected failure / not applicable" in text
    assert "## Properties not reached" in text and f"| `v`       | `test_a`   | {reason} |" in text
    assert "did not apply, or was not reached." in text
    assert "## Properties not reached" not in markdown.index_page([], {"v": tests[1:]}, context, {})


def test_failure_has_minimal_example_and_a_command_that_reproduces_it(fake_run) -> None:
    root, run = fake_run
    (failure,) = [t for t in run.by_variant["bad"] if t["function"] == "test_small_numbers"]
    assert failure["message"].startswith("AssertionError: too big")
    assert "n=10" in failure["falsifying_example"]  # shrunk to the smallest counterexample
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    rerun = subprocess.run(
        ["bash", "-c", failure["command"]], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert "1 failed" in rerun.stdout and "n=10" in rerun.stdout


def test_property_section_shows_the_failure(fake_run) -> None:
    _, run = fake_run
    context = markdown.Context("iqa report", {}, 0, "custom", run.display, run.profile)
    text = "\n".join(markdown.properties_section(run.by_variant["bad"], context, run.error))
    (failure,) = [t for t in run.by_variant["bad"] if t["function"] == "test_small_numbers"]
    assert "### Failure: `test_small_numbers`" in text
    assert "n=10" in text and failure["command"] in text
    assert f"**{FAIL}**" in text and "not applicable here" in text
    assert f"**{UNEXPECTED_PASS}**" in text and "### Unexpected pass: `test_declared_but_holds`" in text
    assert "| failed" not in text and "xfailed" not in text  # the verdicts, not pytest's outcomes
    good = "\n".join(markdown.properties_section(run.by_variant["good"], context, run.error))
    assert "| not reached " in good  # the table's verdict, and the reason below it
    assert re.search(r"- `test_nothing_converges`: no converged fixed point in \d+ draws; Picard: \d+ out of", good)
