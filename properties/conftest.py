"""Suite-wide set-up: Hypothesis profiles, one torch thread, and the options that
choose what is tested (``--variant``, ``--device``).

Every test that takes a ``variant`` argument runs once per selected variant.
A test decorated with :func:`properties.tags.requires` is skipped, with the
reason shown, for variants that do not claim the tags it needs; a test named in
a variant's ``expected_failures`` is marked xfail(strict): it must fail, and an
unexpected pass is reported as a failure. Both carry the plugin's markers
(``iqa_not_applicable``, ``iqa_expected_failure``) so that the reason is recorded
as data. An ``expected_failures`` key that names no property of the suite is a
usage error that names the closest ones. The options ``--variant`` and
``--device`` are defined by :mod:`iqa.pytest_plugin`, loaded here.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from iqa import configure_threads
from iqa.pytest_plugin import EXPECTED_FAILURE_MARK, NOT_APPLICABLE_MARK
from iqa.suite import CI, DEV, LARGE, MUTATION, THOROUGH, VARIANT_FOLDER, SuiteError, profile_from_environment
from iqa.variants import ENV_VARIABLE, Variant, VariantError, resolve_all
from properties.example_pool import freeze_constant_pool
from properties.strategies import use_domain
from properties.tags import required_tags

configure_threads()

#: iqa's plugin (options --variant and --device, per-test records); properties.meta.score prints (and with
#: $IQA_MUTATION_SCORE writes) the mutation score of properties/meta/test_mutants.py.
pytest_plugins = ("iqa.pytest_plugin", "properties.meta.score")

#: Examples per property on the large profile: each one solves at up to N = 256, D = 128.
LARGE_EXAMPLES = 3
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile(DEV, max_examples=10, **_COMMON)
#: ci leaves out Hypothesis's explain phase (which replays a failing example ~100 times to say which arguments
#: matter): 3.8-5.6 s per failing test at cf37d90 (README), paid by every declared expected failure on every run;
#: the shrunk example and print_blob reproduce a failure, and dev and thorough still explain.
#: 20 examples (30 until the tenth session): half the suite's time went to the variant properties' examples, and
#: at 20 every variant, slot and library mutant is still caught by its property with meta tests' MIN_EXAMPLES
#: set to 20 (README, "Where the suite's time goes"); regime coverage is still judged (COVERAGE_MIN_EXAMPLES).
settings.register_profile(
    CI,
    max_examples=20,
    derandomize=True,
    print_blob=True,
    phases=[phase for phase in Phase if phase is not Phase.explain],
    **_COMMON,
)
settings.register_profile(
    THOROUGH,
    max_examples=400,
    phases=[phase for phase in Phase if phase is not Phase.explain],
    print_blob=True,
    **_COMMON,
)
#: Realistic sizes (N up to 256, D up to 128: properties/strategies.py's size_bounds), so few examples and no
#: shrinking (measured: the expected failure test_fixed_point_depends_on_weights took 40 s for reference with
#: shrinking, 1.1 s without); a failure prints its example and blob, to be replayed and shrunk on dev.
settings.register_profile(
    LARGE,
    max_examples=LARGE_EXAMPLES,
    derandomize=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
    print_blob=True,
    **_COMMON,
)
# For `tox -e mutate` (mutmut): every mutant reruns the properties that reach it, so few,
# fixed examples (the clean run and each mutant see the same ones) and no shrinking (a
# failure is all a kill needs).
settings.register_profile(
    MUTATION,
    max_examples=5,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    **_COMMON,
)
try:
    settings.load_profile(profile_from_environment())
except SuiteError as error:
    raise pytest.UsageError(str(error)) from error

_SUITE = Path(__file__).resolve().parent


def selected_variants(config: pytest.Config) -> list[Variant]:
    specs = list(config.getoption("--variant"))
    if not specs and os.environ.get(ENV_VARIABLE):
        specs = [os.environ[ENV_VARIABLE]]
    try:
        return resolve_all(specs)
    except VariantError as error:
        raise pytest.UsageError(str(error)) from error


def property_names(suite: Path = _SUITE) -> set[str]:
    """The names of the suite's properties: every test function in its variant/ folder (in a flat suite
    without one, every test function of its test files but the benchmarks), read from the source.

    Read from the files, not from what this run collects, so that a run of one file or ``-k`` still knows
    every property a variant may declare.
    """
    folder = suite / VARIANT_FOLDER
    files = sorted(folder.rglob("test_*.py")) if folder.is_dir() else sorted(suite.glob("test_*.py"))
    names = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                names.add(node.name)
    return names


def check_expected_failures(variants: list[Variant], names: set[str]) -> None:
    """A declared expected failure must name a property: otherwise a misspelling would silently turn the
    declaration off (the property would then just fail). The error names the key and the closest names."""
    problems = []
    for variant in variants:
        for key in sorted(set(variant.expected_failures) - names):
            close = difflib.get_close_matches(key, sorted(names), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else "; no property has a similar name"
            problems.append(f"variant {variant.name!r} declares an expected failure of {key!r}, no property{hint}")
    if problems:
        raise pytest.UsageError("\n".join(problems))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_tags(*tags): the variant tags a property relies on")
    variants = selected_variants(config)
    check_expected_failures(variants, property_names())
    config._iqa_variants = variants  # type: ignore[attr-defined]


@pytest.hookimpl(trylast=True)  # after Hypothesis's own sessionstart, which ends its initialization phase
def pytest_sessionstart(session: pytest.Session) -> None:
    """Every process that runs tests draws from the same constants, whichever tests it runs first
    (properties/example_pool.py); xdist's controller runs none."""
    if not session.config.pluginmanager.has_plugin("dsession"):
        freeze_constant_pool()


def pytest_report_header(config: pytest.Config) -> list[str]:
    names = ", ".join(v.name for v in config._iqa_variants)  # type: ignore[attr-defined]
    return [
        f"iqa: variants {names}; device {config.getoption('--device')}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); hypothesis profile {settings._current_profile}"
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" not in metafunc.fixturenames:
        return
    needs = required_tags(metafunc.function)
    params = []
    for variant in metafunc.config._iqa_variants:  # type: ignore[attr-defined]
        marks = []
        missing = sorted(t.value for t in needs if t not in variant.tags)
        if missing:
            why = f"{variant.name} does not claim {', '.join(missing)}"
            marks += [pytest.mark.skip(reason=why), getattr(pytest.mark, NOT_APPLICABLE_MARK)(reason=why)]
        reason = variant.expected_failures.get(metafunc.function.__name__)
        if reason is not None:
            marks += [
                pytest.mark.xfail(strict=True, reason=reason),
                getattr(pytest.mark, EXPECTED_FAILURE_MARK)(reason=reason),
            ]
        params.append(pytest.param(variant, id=variant.name, marks=marks))
    metafunc.parametrize("variant", params)


@pytest.fixture(autouse=True)
def _variant_domain(request: pytest.FixtureRequest) -> Iterator[None]:
    """While a test that takes a variant runs, strategies.cases draws only inside the variant's shape domain."""
    callspec = getattr(request.node, "callspec", None)
    variant = callspec.params.get("variant") if callspec is not None else None
    if not isinstance(variant, Variant):
        yield
        return
    with use_domain(variant.domain):
        yield


@pytest.fixture(scope="session")
def device(pytestconfig: pytest.Config) -> torch.device:
    """The device under test: cpu by default; a requested CUDA device that is absent skips."""
    name = pytestconfig.getoption("--device")
    try:
        dev = torch.device(name)
    except RuntimeError as error:
        raise pytest.UsageError(f"--device {name!r} is not a torch device: {error}") from error
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"--device {name}: CUDA is not available here")
    return dev
