"""The suite runner (iqa.suite) and the suite's own checks of what a variant declares."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

import iqa
from iqa import suite
from iqa.variants import Variant, builtin_variants, resolve
from properties.conftest import check_expected_failures, property_names
from properties.mutants import MUTANTS

SUITE = Path(__file__).resolve().parents[1]


def test_the_suite_is_found_beside_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert suite.locate() == SUITE == Path(iqa.__file__).resolve().parents[1] / "properties"
    assert suite.locate(SUITE) == SUITE
    with pytest.raises(suite.SuiteError, match="not the property suite"):
        suite.locate(tmp_path)


def test_without_a_suite_beside_the_package_the_current_directory_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(iqa, "__file__", str(tmp_path / "site-packages" / "iqa" / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(suite.SuiteError, match="--suite DIR"):
        suite.locate()
    (tmp_path / "properties").mkdir()
    (tmp_path / "properties" / "conftest.py").write_text("")
    assert suite.locate() == (tmp_path / "properties").resolve()


def test_variant_properties_are_selected_by_location(tmp_path: Path) -> None:
    with pytest.raises(suite.SuiteError, match="no variant/ folder"):
        suite.selection(tmp_path)
    (tmp_path / "variant").mkdir()
    assert suite.selection(tmp_path) == [str(tmp_path / "variant")]


def test_one_command_line(tmp_path: Path) -> None:
    (tmp_path / "variant").mkdir()
    results = tmp_path / "r.json"
    command = suite.pytest_command(tmp_path, ["a", "b:c"], results, max_examples=3, shrink=False, options=["-x"])
    assert command[:4] == [sys.executable, "-m", "pytest", str(tmp_path / "variant")]
    for part in (
        ["-p", "iqa.pytest_plugin"],
        ["--iqa-results", str(results)],
        ["--variant", "a"],
        ["--variant", "b:c"],
    ):
        i = command.index(part[0], command.index(part[0]) if part[0] != "--variant" else 0)
        assert part[1] in command[i:], part
    assert "--iqa-max-examples=3" in command and "--iqa-no-shrink" in command and command[-1] == "-x"
    shown = suite.shown(command, tmp_path)
    assert shown.startswith("python -m pytest variant -p iqa.pytest_plugin --variant a")
    assert "--iqa-results" not in shown and str(results) not in shown


def test_profiles_are_defined_once() -> None:
    """The suite registers exactly the runner's profiles; the environment picks one, a wrong name is an error."""
    for name in suite.PROFILES:
        settings.get_profile(name)  # registered by properties/conftest.py under the runner's names
    assert suite.profile_from_environment({}) == suite.DEV
    assert suite.profile_from_environment({"CI": "1"}) == suite.CI
    assert suite.profile_from_environment({"HYPOTHESIS_PROFILE": "thorough", "CI": "1"}) == suite.THOROUGH
    with pytest.raises(suite.SuiteError, match="'nightly' is not a profile"):
        suite.profile_from_environment({"HYPOTHESIS_PROFILE": "nightly"})


def test_a_misspelled_expected_failure_names_the_closest_properties() -> None:
    names = property_names()
    assert {"test_layer_equals_seed_bitwise", "test_fixed_point_depends_on_weights"} <= names
    reference = resolve("reference")
    typo = Variant(
        name="typo",
        factory=reference.factory,
        tags=reference.tags,
        expected_failures={"test_fixed_point_depend_on_weights": "why", "test_zzzzqqqq": "why"},
    )
    with pytest.raises(pytest.UsageError) as raised:
        check_expected_failures([reference, typo], names)
    message = str(raised.value)
    assert "'test_fixed_point_depend_on_weights'" in message
    assert "did you mean test_fixed_point_depends_on_weights" in message
    assert "'test_zzzzqqqq', no property; no property has a similar name" in message
    assert "reference" not in message  # its declarations are right


def test_property_names_come_from_the_variant_folder(tmp_path: Path) -> None:
    (tmp_path / "test_tool.py").write_text("def test_cli():\n    pass\n")
    assert property_names(tmp_path) == {"test_cli"}  # a flat suite: every test file
    (tmp_path / "variant").mkdir()
    (tmp_path / "variant" / "test_p.py").write_text("class TestX:\n    def test_method(self, variant):\n        pass\n")
    assert property_names(tmp_path) == {"test_method"}


def test_every_declared_expected_failure_names_a_property() -> None:
    """The built-ins' and the mutants' declarations (the mutants run through the meta tests, not --variant)."""
    check_expected_failures([*builtin_variants().values(), *(m.variant for m in MUTANTS)], property_names())
