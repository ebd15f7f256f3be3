"""Suite-wide set-up: Hypothesis profiles, one torch thread, and the options that
choose what is tested (``--variant``, ``--device``).

Every test that takes a ``variant`` argument runs once per selected variant.
A test decorated with :func:`properties.tags.requires` is skipped, with the
reason shown, for variants that do not claim the tags it needs; a test named in
a variant's ``expected_failures`` is marked xfail(strict): it must fail, and an
unexpected pass is reported as a failure.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from iqa import configure_threads
from iqa.variants import ENV_VARIABLE, Variant, VariantError, resolve_all
from properties.tags import required_tags

configure_threads()

#: Prints (and with $IQA_MUTATION_SCORE writes) the mutation score of properties/meta/test_mutants.py.
pytest_plugins = ("properties.meta.score",)

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors])
settings.register_profile("dev", max_examples=10, **_COMMON)
settings.register_profile("ci", max_examples=30, derandomize=True, print_blob=True, **_COMMON)
settings.register_profile(
    "thorough",
    max_examples=400,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    print_blob=True,
    **_COMMON,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("iqa")
    group.addoption(
        "--variant",
        action="append",
        default=[],
        help="variant to test: a registered name, package.module:attr or path/file.py:attr; "
        f"repeatable; default: ${ENV_VARIABLE} (comma-separated), else every available variant",
    )
    group.addoption("--device", default="cpu", help="torch device for the properties (default cpu; e.g. cuda)")


def selected_variants(config: pytest.Config) -> list[Variant]:
    specs = list(config.getoption("--variant"))
    if not specs and os.environ.get(ENV_VARIABLE):
        specs = [os.environ[ENV_VARIABLE]]
    try:
        return resolve_all(specs)
    except VariantError as error:
        raise pytest.UsageError(str(error)) from error


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires_tags(*tags): the variant tags a property relies on")
    config._iqa_variants = selected_variants(config)  # type: ignore[attr-defined]


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
            marks.append(pytest.mark.skip(reason=f"{variant.name} does not claim {', '.join(missing)}"))
        reason = variant.expected_failures.get(metafunc.function.__name__)
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=f"expected failure of {variant.name}: {reason}"))
        params.append(pytest.param(variant, id=variant.name, marks=marks))
    metafunc.parametrize("variant", params)


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
