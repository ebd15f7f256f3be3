"""Meta tests of the verdict "not reached" (iqa.rejections, properties.regimes, properties.fixed_points).

A property whose draws all lack what it needs ends "not reached" with a one-line reason, not a Hypothesis error:
checked end to end with ``iqa check`` on a layer that has no fixed point (properties/claim_variants.py:
DRIFTING), and piece by piece here: the tally counts the draws Hypothesis runs and why each was rejected, the
reason groups them, ``require`` and ``require_converged`` record why, and ``requires_share`` gives "not reached"
when no example reached its regime but stays a failure when too few did.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.errors import StopTest, UnsatisfiedAssumption

from iqa import cli
from iqa.pytest_plugin import read_results
from iqa.rejections import Rejection, Tally, not_reached_reason, refuted_claim, reject, tallying
from iqa.solvers import solve
from iqa.verdicts import NOT_APPLICABLE, NOT_REACHED, NOT_REACHED_PREFIX, PASS, property_verdicts
from properties.claim_variants import DRIFTING
from properties.fixed_points import fixed_map, require_converged
from properties.regimes import COVERAGE_MIN_EXAMPLES, reached, require, requires_share
from properties.strategies import Case

#: The examples of the Hypothesis tests defined here (enough for requires_share to judge the share).
EXAMPLES = COVERAGE_MIN_EXAMPLES + 10
FIXED = settings(max_examples=EXAMPLES, derandomize=True, database=None)


def picard_out_of_steps(rho: float) -> Rejection:
    return Rejection("no converged fixed point", "Picard", "max_iter", rho, 0.5, convergence=True)


def test_one_reason_reads_as_one_line() -> None:
    tally = Tally(draws=3, rejections=[picard_out_of_steps(r) for r in (0.999, 1.0, 1.004)])
    assert tally.summary() == (
        "no converged fixed point in 3 draws; Picard: 3 out of steps; rho at the last iterate 1.00-1.00; "
        "weight scales 0.50-0.50"
    )
    assert not_reached_reason(tally) == tally.summary()


def test_several_reasons_are_grouped_and_unlabelled_rejections_counted() -> None:
    regime = Rejection("outside the regime rho(J*) >= 0.1", rho=1e-5)
    tally = Tally(draws=5, rejections=[picard_out_of_steps(1.0), regime, regime], unexplained=2)
    assert tally.summary() == (
        "nothing checked in 5 draws: no converged fixed point in 1 (Picard: 1 out of steps; rho at the last "
        "iterate 1.00-1.00; weight scales 0.50-0.50); outside the regime rho(J*) >= 0.1 in 2 (rho(J*) 1e-05 to "
        "1e-05); 2 rejected by an assumption that gave no reason"
    )


def test_nothing_is_not_reached_when_no_rejection_said_why() -> None:
    assert not_reached_reason(Tally(draws=4, unexplained=4)) is None
    assert (
        not_reached_reason(Tally(draws=4, checked=1, rejections=[picard_out_of_steps(1.0)] * 2, unexplained=1)) is None
    )


def test_a_few_checked_draws_among_labelled_rejections_are_too_few() -> None:
    """Hypothesis gives up after 50 rejections even where some draws were checked (found on the Perceiver: 7 of
    57 converged): each held, or Hypothesis would report that failure, so the run is "not reached", saying so."""
    reason = not_reached_reason(Tally(draws=4, checked=1, rejections=[picard_out_of_steps(1.0)] * 3))
    assert reason is not None and reason.startswith(
        "too few draws checked, each held; 3 of 4 draws rejected (1 checked)"
    )


def test_a_contractive_claim_is_refuted_only_by_draws_at_its_scales() -> None:
    inside = Rejection("no converged fixed point", "Picard", "cycle", 1.2, 0.8, convergence=True)
    outside = Rejection("no converged fixed point", "Picard", "cycle", 1.2, 3.0, convergence=True)
    regime = Rejection("outside the regime rho(J*) >= 0.1", rho=0.01, scale=0.8)
    tally = Tally(draws=3, rejections=[inside, outside, regime])
    refuted = refuted_claim(tally, (0.5, 1.0))
    assert refuted is not None and "claims contractive at weight scales [0.5, 1], yet 1 draws there" in refuted
    assert "Picard: 1 cycling" in refuted
    assert refuted_claim(tally, None) is None  # no claim
    assert refuted_claim(tally, (2.0, 2.5)) is None  # no draw at the claimed scales


def test_the_tally_counts_each_draw_and_why_it_was_rejected() -> None:
    @FIXED
    @given(n=st.integers(0, 99))
    def prop(n: int) -> None:
        if n % 3 == 0:
            reject("divisible by 3", status="max_iter", rho=float(n))
        assume(n % 3 != 1)
        assert n >= 0

    with tallying(prop) as tally:
        prop()
    labelled = [r for r in tally.rejections if r.why == "divisible by 3"]
    assert tally.draws == tally.checked + len(labelled) + tally.unexplained
    assert tally.checked >= EXAMPLES and labelled and tally.unexplained
    assert all(r.rho is not None and r.rho % 3 == 0 for r in labelled)
    assert prop.hypothesis.inner_test.__name__ == "prop"  # the handle is given back


def test_a_draw_hypothesis_abandons_is_neither_checked_nor_rejected() -> None:
    """Hypothesis stops a draw whose choices ran out (StopTest) mid-test: counted as checked, it would turn a run
    in which nothing was checked into a Hypothesis error instead of "not reached" (found on the Perceiver)."""
    outcomes = [UnsatisfiedAssumption, StopTest, UnsatisfiedAssumption]

    def draw() -> None:
        outcome = outcomes.pop(0)
        if outcome is StopTest:
            raise StopTest(0)
        reject("no converged fixed point")

    handle = SimpleNamespace(hypothesis=SimpleNamespace(inner_test=draw))
    with tallying(handle) as tally:
        for expected in list(outcomes):
            with pytest.raises(expected):
                handle.hypothesis.inner_test()
    assert (tally.draws, tally.checked, len(tally.rejections)) == (2, 0, 2)
    assert not_reached_reason(tally) == "no converged fixed point in 2 draws"


@settings(max_examples=1, database=None)
@given(st.just(0))  # require() buckets the draw with event(): inside a Hypothesis test
def test_require_records_the_regime_and_rejects(_: int) -> None:
    with tallying(None) as tally:
        require(True, "rho(J*) >= 0.1", rho=0.5)
        with pytest.raises(UnsatisfiedAssumption):
            require(False, "rho(J*) >= 0.1", rho=0.01, scale=2.0)
    assert tally.pending == Rejection("outside the regime rho(J*) >= 0.1", rho=0.01, scale=2.0)


@settings(max_examples=1, database=None)
@given(st.just(0))
def test_require_converged_names_the_solver_status_and_rho(_: int) -> None:
    """rho at the last iterate is recomputed here from the eigenvalues of the dense Jacobian (J = I + ...: ~1)."""
    case = Case(batch=1, tokens=3, dim=2, dtype=torch.float64, scale=1.0, seed=3)
    layer, x = case.layer(DRIFTING), case.inputs()
    f = fixed_map(layer, x)
    with torch.no_grad():
        solution = solve(f, layer.initial_point(x), "picard", tol=1e-10, max_iter=40)
    with tallying(None) as tally, pytest.raises(UnsatisfiedAssumption):
        require_converged(solution, f, case.scale)
    found = tally.pending
    assert found is not None and (found.why, found.solver, found.status) == (
        "no converged fixed point",
        "Picard",
        "max_iter",
    )
    y = solution.y.detach().clone().requires_grad_(True)
    J = torch.autograd.functional.jacobian(lambda z: f(z).flatten(), y).reshape(y.numel(), y.numel())
    rho = float(torch.linalg.eigvals(J).abs().max())
    assert found.rho is not None and math.isclose(found.rho, rho, rel_tol=1e-6), (found.rho, rho)
    assert found.convergence and found.scale == 1.0


def _coverage(hits: int) -> object:
    """A property under requires_share whose first ``hits`` examples reach the regime and the rest do not."""
    seen: list[int] = []

    @requires_share("the regime", 0.3)
    @FIXED
    @given(n=st.integers(0, 10**6))
    def prop(n: int) -> None:
        seen.append(n)
        reached("the regime", len(seen) <= hits)

    return prop


def test_requires_share_none_reached_is_not_reached() -> None:
    with pytest.raises(pytest.skip.Exception, match=re.escape(NOT_REACHED_PREFIX) + r"the regime in 0 of \d+ examples"):
        _coverage(0)()  # type: ignore[operator]


def test_requires_share_too_few_reached_stays_a_failure() -> None:
    with pytest.raises(AssertionError, match=r"regime coverage: 1 of \d+ examples reached 'the regime'"):
        _coverage(1)()  # type: ignore[operator]
    _coverage(EXAMPLES)()  # type: ignore[operator]


def test_check_says_not_reached_for_a_layer_without_fixed_points(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """iqa check on DRIFTING: the property that needs a converged Picard solve is "not reached", with the one-line
    reason (status and rho at the last iterate), counted, and the exit status stays 0 (neither pass nor fail)."""
    results = tmp_path / "results.json"
    spec = f"{Path(__file__).resolve().parents[1] / 'claim_variants.py'}:DRIFTING"
    status = cli.main(
        [
            "check",
            "--results",
            str(results),
            spec,
            "-k",
            "test_picard_follows_its_linearization",
            "-p",
            "no:cacheprovider",
        ]
    )
    out = capsys.readouterr().out
    (row,) = property_verdicts(read_results(results)["tests"])
    assert row["verdict"] == NOT_REACHED, row
    pattern = r"no converged fixed point in (\d+) draws; Picard: \1 out of steps; rho at the last iterate 1\.00-1\.0\d"
    assert re.match(pattern, row["detail"]), row["detail"]
    assert status == 0, out
    assert f"  test_picard_follows_its_linearization: {row['detail']}" in out
    assert "drifting: 0 fail, 0 unexpected pass, 1 not reached, 0 pass" in out


def test_an_honest_builtin_gets_no_new_verdict(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """hopfield, on the property that DRIFTING does not reach, the claim it does not make and the start: it
    passes, the claim does not apply, and the start (x, read out as itself) passes: nothing "not reached"."""
    results = tmp_path / "results.json"
    selection = "test_picard_follows_its_linearization or test_contractive_claim_holds or return_the_start"
    status = cli.main(["check", "--results", str(results), "hopfield", "-k", selection, "-p", "no:cacheprovider"])
    out = capsys.readouterr().out
    verdicts = {row["property"]: row["verdict"] for row in property_verdicts(read_results(results)["tests"])}
    assert verdicts == {
        "test_picard_follows_its_linearization": PASS,
        "test_contractive_claim_holds": NOT_APPLICABLE,
        "test_zero_iterations_return_the_start": PASS,
    }, out
    assert status == 0 and "hopfield: 0 fail, 0 unexpected pass, 0 not reached, 2 pass" in out


def test_check_names_the_regime_no_draw_reached(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """TINY converges to fixed points with rho(J*) ~ 1e-4: the rate and phantom properties, which need rho(J*) >= 0.1
    and >= 0.05, are "not reached", each naming its regime and the rho(J*) its draws had (issue 13: a real Hopfield
    association failed both with FailedHealthCheck)."""
    results = tmp_path / "results.json"
    spec = f"{Path(__file__).resolve().parents[1] / 'claim_variants.py'}:TINY"
    selection = "test_unrolled_error_falls_at_rate_rho or test_phantom_error_within_bound"
    status = cli.main(["check", "--results", str(results), spec, "-k", selection, "-p", "no:cacheprovider"])
    out = capsys.readouterr().out
    rows = {row["property"]: row for row in property_verdicts(read_results(results)["tests"])}
    assert status == 0 and {name: row["verdict"] for name, row in rows.items()} == {
        "test_unrolled_error_falls_at_rate_rho": NOT_REACHED,
        "test_phantom_error_within_bound": NOT_REACHED,
    }, out
    for name, regime in (("test_unrolled_error_falls_at_rate_rho", "0.1"), ("test_phantom_error_within_bound", "0.05")):
        pattern = rf"outside the regime rho\(J\*\) >= {regime} in \d+ draws; rho\(J\*\) [\d.e-]+ to [\d.e-]+$"
        assert re.match(pattern, rows[name]["detail"]), rows[name]["detail"]


def test_variant_properties_reject_only_with_a_reason() -> None:
    """A bare ``assume`` in a variant property gives the tally no reason: a layer whose draws it rejects ends in
    Hypothesis's health-check error instead of "not reached" (issue 13's false alarms). Every rejection in
    properties/variant/ goes through reject, require or require_converged."""
    folder = Path(__file__).resolve().parents[1] / "variant"
    bare = [
        f"{path.name}:{number}: {line.strip()}"
        for path in sorted(folder.glob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bassume\(", line)
    ]
    assert not bare, "bare assume() in variant properties:\n" + "\n".join(bare)
