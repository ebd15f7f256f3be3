"""``iqa report --sweep {default,quick,large}``: the preset is chosen by name, a bad name is a usage error that
names the choices, ``--quick`` stays the shorthand of ``--sweep quick``, and the large preset's cells are the
realistic sizes it says (N 64 and 256, D 32 and 64, float32)."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

import pytest

import iqa.report
from iqa import cli
from iqa.measure import LARGE, PRESETS, QUICK, Sweep
from iqa.report import Options, configure_parser


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="iqa report")
    configure_parser(parser)
    return parser.parse_args(list(argv))


def test_a_bad_sweep_name_is_a_usage_error_naming_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--sweep", "huge", "--no-properties"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--sweep" in err and "'huge'" in err
    assert all(f"'{name}'" in err for name in PRESETS)


def test_options_refuse_an_unknown_sweep_by_name() -> None:
    with pytest.raises(ValueError, match=r"--sweep must be one of default, quick, large, got 'huge'"):
        Options(sweep="huge").check()


def test_quick_with_another_sweep_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status = cli.main(["report", "--quick", "--sweep", "large", "--out", str(tmp_path / "r"), "--no-properties"])
    assert status == 2
    assert "--quick is short for --sweep quick; it cannot be combined with --sweep large" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("argv", "name"),
    [((), "default"), (("--quick",), "quick"), (("--sweep", "quick"), "quick"), (("--sweep", "large"), "large")],
)
def test_the_sweep_option_picks_the_preset(
    argv: tuple[str, ...], name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build() measures the named preset (seeded by --seed) and the page's command line says which."""
    seen: dict[str, Any] = {}

    class StopError(Exception):
        pass

    def measure(specs: list[str], variants: list[Any], sweep: Sweep, options: Options) -> None:
        seen["sweep"], seen["command"] = sweep, iqa.report._command(options)
        raise StopError

    monkeypatch.setattr(iqa.report, "_measure", measure)
    options = Options.from_args(
        _parse("--variant", "reference", "--out", str(tmp_path / "r"), "--no-properties", *argv)
    )
    with pytest.raises(StopError):
        iqa.report.build(options)
    assert seen["sweep"] == PRESETS[name].with_seed(0)
    assert options.quick is (name == "quick")
    expected = {"default": "", "quick": " --quick", "large": " --sweep large"}[name]
    assert seen["command"] == f"iqa report --variant reference{expected} --seed 0 --no-properties"


def test_the_large_preset_is_realistic_sizes_in_float32() -> None:
    cells = list(LARGE.cells())
    assert [(c.tokens, c.dim) for c in cells[:: len(LARGE.scales) * len(LARGE.seeds)]] == list(
        itertools.product((64, 256), (32, 64))
    )
    assert {c.scale for c in cells} == {0.5, 1.0, 3.0} and {c.seed for c in cells} == {0}
    assert len(cells) == 12 and all(c.gradients for c in cells)
    assert LARGE.dtype == "float32" and LARGE.batch == 2 and LARGE.saved_bytes_shape == (256, 64)
    assert max(c.tokens for c in QUICK.cells()) < min(c.tokens for c in cells)
