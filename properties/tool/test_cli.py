"""The ``iqa`` command line: listing variants, checking one, clear errors, the delegated commands.

Most tests call :func:`iqa.cli.main` in-process. Two run ``iqa check`` for real
(it starts pytest in a subprocess) on a tiny selection, with variants written
to a temporary file so that together they produce every verdict.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from iqa import cli, suite, verdicts
from iqa.pytest_plugin import read_results
from iqa.variants import BUILTIN_VARIANTS

BUILTIN_NAMES = [v.name for v in BUILTIN_VARIANTS]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_variants_lists_every_builtin_with_tags_and_expected_failures(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "variants")
    assert status == 0
    for variant in BUILTIN_VARIANTS:
        assert variant.name in out
        for test, reason in variant.expected_failures.items():
            assert f"{variant.name}: {test}: {reason}" in out
    assert "seed_exact" in out and "weight_dependent" in out


def test_variants_json_matches_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "variants", "--json")
    assert status == 0
    listed = {v["name"]: v for v in json.loads(out)}
    assert list(listed)[: len(BUILTIN_NAMES)] == BUILTIN_NAMES
    for variant in BUILTIN_VARIANTS:
        entry = listed[variant.name]
        assert entry["origin"] == "built-in"
        assert entry["tags"] == sorted(t.value for t in variant.tags)
        assert entry["expected_failures"] == dict(variant.expected_failures)


def test_variants_of_a_spec(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "variants", "--json", "iqa.variants:HopfieldAttention")
    assert status == 0
    assert [v["name"] for v in json.loads(out)] == ["HopfieldAttention"]


@pytest.mark.parametrize("command", [("variants", "nope"), ("check", "nope"), ("check", "nope", "-k", "seed")])
def test_unknown_variant_is_a_usage_error_listing_what_exists(
    capsys: pytest.CaptureFixture[str], command: tuple[str, ...]
) -> None:
    status, out, err = run(capsys, *command)
    assert status == 2
    assert "unknown variant 'nope'; available: " + ", ".join(BUILTIN_NAMES) in err
    assert "$ python -m pytest" not in out  # no suite was started


def test_check_with_a_directory_that_is_not_the_suite(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "check", "--suite", str(tmp_path), "hopfield")
    assert status == 2
    assert "is not the property suite" in err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys)
    assert status == 2
    assert "usage: iqa" in err and "check" in err and "report" in err and "regress" in err


def test_default_suite_is_beside_the_package() -> None:
    assert suite.locate() == Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(cli.DELEGATED))
def test_delegated_commands_have_their_own_parser(capsys: pytest.CaptureFixture[str], name: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: iqa {name}" in capsys.readouterr().out


def _record(outcome: str, **fields: Any) -> dict[str, Any]:
    return {
        "nodeid": "properties/test_x.py::test_p[v]",
        "file": "properties/test_x.py",
        "function": "test_p",
        "variant": "v",
        "outcome": outcome,
        **fields,
    }


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (_record("passed"), verdicts.PASS),
        (_record("failed", phase="call", call_raised=True, message="AssertionError: boom"), verdicts.FAIL),
        (_record("failed", phase="setup", call_raised=None, message="fixture error"), verdicts.FAIL),
        # a strict xfail that held: pytest fails the call although it raised nothing; the text plays no part
        (_record("failed", phase="call", call_raised=False, expected_failure="why"), verdicts.UNEXPECTED_PASS),
        (_record("failed", phase="call", call_raised=True, message="[XPASS(strict)] why"), verdicts.FAIL),
        (_record("passed", expected_failure="why"), verdicts.UNEXPECTED_PASS),
        (_record("xfailed", reason="why", expected_failure="why"), verdicts.EXPECTED_FAILURE),
        (_record("xpassed", reason="why"), verdicts.UNEXPECTED_PASS),
        (_record("skipped", reason="v does not claim convex_hull"), verdicts.NOT_APPLICABLE),
        # nothing to check: the plugin records the reason; a record without that key is read from the prefix
        (
            _record("skipped", reason="not reached: no converged fixed point", not_reached="no converged fixed point"),
            verdicts.NOT_REACHED,
        ),
        (_record("skipped", reason="not reached: no converged fixed point"), verdicts.NOT_REACHED),
        (_record("passed", not_reached="stale"), verdicts.PASS),
    ],
)
def test_verdict_of_each_outcome(record: dict[str, Any], expected: str) -> None:
    assert verdicts.verdict(record) == expected


def test_details_say_why() -> None:
    """The declared reasons are data recorded by the plugin, shown as written (no prefix to strip)."""
    declared = _record("xfailed", reason="pytest's own text", expected_failure="why")
    assert verdicts.detail(declared, verdicts.EXPECTED_FAILURE) == "why"
    skipped = _record("skipped", reason="Skipped: text", not_applicable="v does not claim convex_hull")
    assert verdicts.detail(skipped, verdicts.NOT_APPLICABLE) == "v does not claim convex_hull"
    held = _record("failed", phase="call", call_raised=False, expected_failure="why")
    assert "why" in verdicts.detail(held, verdicts.UNEXPECTED_PASS)
    assert verdicts.detail(_record("failed", message="AssertionError: x"), verdicts.FAIL) == "AssertionError: x"
    unreached = _record("skipped", reason="not reached: no converged fixed point in 50 draws")
    assert verdicts.detail(unreached, verdicts.NOT_REACHED) == "no converged fixed point in 50 draws"


def test_not_reached_outweighs_pass_but_not_fail() -> None:
    """A property with a case that had nothing to check did not test all it is for: that shows; a fail still wins."""
    unreached = _record("skipped", not_reached="no converged fixed point in 50 draws")
    (row,) = verdicts.property_verdicts([_record("passed"), unreached, _record("skipped", not_applicable="r")])
    assert (row["verdict"], row["detail"]) == (verdicts.NOT_REACHED, "no converged fixed point in 50 draws")
    (row,) = verdicts.property_verdicts([unreached, _record("failed", message="m")])
    assert row["verdict"] == verdicts.FAIL


def test_a_property_gets_its_worst_verdict() -> None:
    records = [_record("passed"), _record("skipped", reason="r"), _record("failed", message="m")]
    (row,) = verdicts.property_verdicts(records)
    assert row["verdict"] == verdicts.FAIL
    assert row["counts"] == {verdicts.FAIL: 1, verdicts.PASS: 1, verdicts.NOT_APPLICABLE: 1}
    assert row["detail"] == "m"


VARIANTS_FILE = '''
"""Variants that give every verdict on the seed and determinism properties."""
from iqa import ImplicitQueryAttention, Tag, Variant
from iqa.variants import ScaledQueryAttention

SEED = "test_layer_equals_seed_bitwise"

# The scores are divided by sqrt(D): not the seed, and it says so. The same seed gives the same
# weights (pass); it does not claim determinism of its output (not applicable).
HONEST = Variant.from_layer(
    ScaledQueryAttention,
    name="honest",
    tags={Tag.SEED_EXACT},
    expected_failures={SEED: "divides the scores by sqrt(D)"},
)


def unseeded(embed_dim, *, scale=1.0, generator=None, **options):
    return ImplicitQueryAttention(embed_dim, **options)  # ignores the seed: a fail


# The seed itself, declaring a failure it does not have: an unexpected pass.
WRONG = Variant(
    name="wrong",
    factory=unseeded,
    tags={Tag.SEED_EXACT},
    expected_failures={SEED: "(it does not fail)"},
)

# A misspelled expected failure: without the check it would silently declare nothing.
MISSPELLED = Variant.from_layer(
    ScaledQueryAttention,
    name="misspelled",
    tags={Tag.SEED_EXACT},
    expected_failures={"test_layer_equals_seed_bitwsie": "divides the scores by sqrt(D)"},
)
'''


@pytest.fixture(scope="module")
def variants_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("variants") / "cli_variants.py"
    path.write_text(textwrap.dedent(VARIANTS_FILE))
    return path


def _check(capsys: pytest.CaptureFixture[str], spec: str, results: Path) -> tuple[int, str, dict[str, str]]:
    status = cli.main(["check", "--results", str(results), spec, "-k", "seed or same_input", "-p", "no:cacheprovider"])
    out, err = capsys.readouterr()
    assert status in (0, 1), f"iqa check did not run the properties (status {status}): {err}"
    got = {t["function"]: t["outcome"] for t in read_results(results)["tests"]}
    return status, out, got


def _verdict_line(out: str, prop: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prop + " "))


def test_check_end_to_end_pass_expected_failure_not_applicable(
    capsys: pytest.CaptureFixture[str], variants_file: Path, tmp_path: Path
) -> None:
    status, out, outcomes = _check(capsys, f"{variants_file}:HONEST", tmp_path / "honest.json")
    assert outcomes == {
        "test_layer_equals_seed_bitwise": "xfailed",
        "test_same_seed_same_layer": "passed",
        "test_same_input_same_output": "skipped",
    }
    assert status == 0, out
    assert "expected failure" in _verdict_line(out, "test_layer_equals_seed_bitwise")
    assert "divides the scores by sqrt(D)" in _verdict_line(out, "test_layer_equals_seed_bitwise")
    assert " pass " in _verdict_line(out, "test_same_seed_same_layer") + " "
    assert "not applicable" in _verdict_line(out, "test_same_input_same_output")
    assert "honest: 0 fail, 0 unexpected pass, 0 not reached, 1 pass, 1 expected failure, 1 not applicable" in out


def test_check_end_to_end_fail_and_unexpected_pass(
    capsys: pytest.CaptureFixture[str], variants_file: Path, tmp_path: Path
) -> None:
    """A failing property and a declared failure that passes; iqa check prints the verdict the plugin recorded
    for each test (computed once, in iqa.verdicts)."""
    results = tmp_path / "wrong.json"
    status, out, outcomes = _check(capsys, f"{variants_file}:WRONG", results)
    assert outcomes["test_layer_equals_seed_bitwise"] == "failed"  # strict xfail that passed
    assert outcomes["test_same_seed_same_layer"] == "failed"
    assert status == 1, out
    assert "unexpected pass" in _verdict_line(out, "test_layer_equals_seed_bitwise")
    assert "fail" in _verdict_line(out, "test_same_seed_same_layer")
    assert "test_same_seed_same_layer(" in out and "seed=0" in out  # the minimal failing case is shown
    rerun = next(line for line in out.splitlines() if "rerun:" in line and "test_same_seed_same_layer" in line)
    assert f"test_determinism.py::test_same_seed_same_layer[wrong]' --variant {variants_file}:WRONG" in rerun
    recorded = {t["function"]: t["verdict"] for t in read_results(results)["tests"]}
    assert recorded["test_layer_equals_seed_bitwise"] == verdicts.UNEXPECTED_PASS
    assert recorded["test_same_seed_same_layer"] == verdicts.FAIL


def test_check_a_misspelled_expected_failure_is_a_usage_error(
    capfd: pytest.CaptureFixture[str], variants_file: Path, tmp_path: Path
) -> None:
    """Caught when the suite collects the variant (properties/conftest.py), naming the key and the closest name."""
    status = cli.main(["check", "--results", str(tmp_path / "r.json"), f"{variants_file}:MISSPELLED", "-k", "seed"])
    out, err = capfd.readouterr()
    assert status == 2, out + err
    assert "'test_layer_equals_seed_bitwsie'" in err and "did you mean test_layer_equals_seed_bitwise" in err, err
    assert not (tmp_path / "r.json").exists()
