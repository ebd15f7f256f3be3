"""``iqa report`` writes its reports as a set, checks --out before measuring, and names a failing variant.

The old reports must survive an interrupted run whole (every byte), and what the
report does not write (``baselines/``, other tools' folders, any other file)
must survive every run.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

import pytest

import iqa.report
from iqa.report import Options, build, configure_parser, main, output
from properties.strategies import TINY_SWEEP as TINY

#: What other tools keep in the reports directory: never touched by iqa report.
FOREIGN = {
    "baselines/reference.json": b'{"schema": "iqa-baseline"}\n',
    "train/run-1/loss.csv": b"step,loss\n0,1.0\n",
    "mutation/score.json": b'{"score": 1}\n',
    "NOTES.txt": b"kept\n",
}


def _options(out: Path, *variants: str) -> Options:
    return Options(variants=variants or ("reference",), out=out, properties=False, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _foreign(out: Path) -> None:
    for name, data in FOREIGN.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


@pytest.fixture(scope="module")
def old_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """A report of reference (seed 0) beside foreign files: the set an interrupted run must leave as it was."""
    out = tmp_path_factory.mktemp("old") / "reports"
    out.mkdir()
    _foreign(out)
    build(_options(out), sweep=TINY)
    files = _files(out)
    assert {name for name in files if name.startswith("reference/")} and "README.md" in files
    return files


def _copy(files: dict[str, bytes], out: Path) -> None:
    for name, data in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)


def _no_debris(parent: Path, out: Path) -> None:
    assert sorted(p.name for p in parent.iterdir()) == [out.name], "a staging directory was left behind"


def test_an_interrupted_report_leaves_the_old_set(
    old_reports: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run dies after some new pages are written (the index is last): every old byte is still there."""
    out = tmp_path / "reports"
    _copy(old_reports, out)
    pages = []

    def index_page(*args: object, **kwargs: object) -> str:
        pages.append("index")
        raise KeyboardInterrupt("simulated: interrupted while writing the index")

    monkeypatch.setattr(iqa.report.markdown, "index_page", index_page)
    with pytest.raises(KeyboardInterrupt, match="simulated"):
        build(Options(variants=("reference", "hopfield"), out=out, seed=1, properties=False, progress=False), TINY)
    assert pages == ["index"], "the interruption must come after the variant pages were written"
    assert _files(out) == old_reports
    _no_debris(tmp_path, out)


@pytest.mark.parametrize("failing", [1, 2], ids=["moving-the-old-set-away", "moving-the-new-set-in"])
def test_a_failed_swap_leaves_the_old_set(
    old_reports: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """Everything is written, then a rename of the two-rename swap fails: the old set is (put) back."""
    out = tmp_path / "reports"
    _copy(old_reports, out)

    replace = os.replace
    swaps = []

    def refuse_directories(a: str, b: str) -> None:
        if not os.path.isdir(a):
            return replace(a, b)  # the atomic writes of single files into the staging directory
        swaps.append(b)
        if len(swaps) == failing:
            raise OSError("simulated: the swap failed")
        return replace(a, b)

    monkeypatch.setattr(output, "_exchange", lambda a, b: False)  # the two-rename fallback
    monkeypatch.setattr(os, "replace", refuse_directories)
    with pytest.raises(OSError, match="simulated"):
        build(Options(variants=("hopfield",), out=out, seed=1, properties=False, progress=False), TINY)
    assert swaps, "the failure must come at the swap, after every file was written"
    assert _files(out) == old_reports
    _no_debris(tmp_path, out)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_new_report_replaces_only_its_own_files(
    old_reports: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    out = tmp_path / "reports"
    _copy(old_reports, out)
    if not exchange:
        monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    build(Options(variants=("hopfield",), out=out, seed=1, properties=False, progress=False), TINY)
    files = _files(out)
    for name, data in FOREIGN.items():
        assert files[name] == data, f"{name} was changed or removed"
    assert files["README.md"] != old_reports["README.md"] and "hopfield/README.md" in files
    # reference/ is not written by this run: it stays, as any folder the report does not write now
    assert {k: v for k, v in files.items() if k.startswith("reference/")} == {
        k: v for k, v in old_reports.items() if k.startswith("reference/")
    }
    _no_debris(tmp_path, out)


def test_the_swap_is_one_step_where_the_system_allows_it(tmp_path: Path) -> None:
    """renameat2(RENAME_EXCHANGE) on Linux: both directories exist throughout, their contents trade places."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "new").write_text("new")
    (b / "old").write_text("old")
    if not output._exchange(a, b):
        pytest.skip("this system cannot exchange two directories in one step")
    assert [p.name for p in b.iterdir()] == ["new"] and [p.name for p in a.iterdir()] == ["old"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return parser.parse_args(list(argv))


def _never_measure(*args: object, **kwargs: object) -> None:
    raise AssertionError("measured although --out cannot be written")


@pytest.mark.parametrize("kind", ["below a file", "a file", "read-only"])
def test_an_unwritable_out_is_an_error_before_measuring(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "file"
    file.write_text("not a directory\n")
    out = {"below a file": file / "x", "a file": file}.get(kind)
    if kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only directories")
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        out = locked / "reports"
    assert out is not None
    monkeypatch.setattr(iqa.report, "measure_variants", _never_measure)
    status = main(_args("--variant", "reference", "--out", str(out), "--no-properties", "--no-progress"))
    err = capsys.readouterr().err
    assert status == 2, err
    assert ("--out" in err and str(file) in err) or kind == "read-only"
    assert "Traceback" not in err
    assert file.read_text() == "not a directory\n"


FAILING_VARIANT = '''
"""A variant whose map raises ValueError on 3 tokens: its own bug, met during the measurement."""
from iqa.variants import Variant, resolve
from iqa.variants.builtin import ImplicitQueryAttention


class Fragile(ImplicitQueryAttention):
    def fixed_point_map(self, x):
        if x.shape[1] == 3:
            raise ValueError("fragile cannot take 3 tokens")
        return super().fixed_point_map(x)


FRAGILE = Variant.from_layer(Fragile, name="fragile", tags=resolve("reference").tags)
'''


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_variant_that_raises_is_its_failure_not_a_usage_error(
    old_reports: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    jobs: int,
) -> None:
    module = tmp_path / "fragile_variant.py"
    module.write_text(textwrap.dedent(FAILING_VARIANT), encoding="utf-8")
    out = tmp_path / "reports"
    _copy(old_reports, out)
    monkeypatch.setattr(iqa.report, "PRESETS", {**iqa.report.PRESETS, "quick": TINY})  # TINY has 3 tokens
    argv = ["--variant", f"{module}:FRAGILE", "--out", str(out), "--quick", "--no-properties", "--no-progress"]
    status = main(_args(*argv, "--jobs", str(jobs)))
    err = capsys.readouterr().err
    assert status == 1, err
    assert "variant 'fragile' failed on cell N=3" in err and "ValueError: fragile cannot take 3 tokens" in err
    assert _files(out) == old_reports
    # no staging directory left beside --out (the variant's own __pycache__ may appear where bytecode is written)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == ["fragile_variant.py", "reports"]


def test_a_variant_may_not_take_a_folder_the_report_does_not_own(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="baselines"):
        iqa.report._directory_name("baselines")
