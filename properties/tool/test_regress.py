"""``iqa regress`` and its baselines: regressions fail, improvements and noise do not, files stay safe.

The sweeps here are tiny (one shape, three weight scales, batch 2: a tenth of
a second per measurement); the built-in baselines use :data:`iqa.regress.REGRESS`.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from iqa import baseline as baseline_io
from iqa import cli, metrics, regress
from iqa.baseline import Baseline, BaselineError
from iqa.measure import Sweep, measure_variant
from iqa.metrics import LOWER
from iqa.verdicts import EXPECTED_FAILURE, FAIL, NOT_APPLICABLE, NOT_REACHED, PASS, UNEXPECTED_PASS

TINY = Sweep(
    tokens=(4,),
    dims=(4,),
    scales=(0.5, 1.0, 2.0),
    seeds=(0,),
    batch=2,
    unrolled_T=(1, 8),
    phantom=((1, 1.0),),
    saved_bytes_shape=(4, 4),
)

SLOW_VARIANT = '''
"""Written outside the project: the seed relaxed by 0.2, y <- y + 0.2 (f(y) - y): same fixed points, slower."""
from iqa.variants import resolve
from iqa.variants.builtin import DampedQueryAttention
from iqa.variants import Variant


class SlowAttention(DampedQueryAttention):
    def __init__(self, embed_dim, n_iters=10, **options):
        super().__init__(embed_dim, n_iters, relaxation=0.2, **options)


SLOW = Variant.from_layer(SlowAttention, name="slow", tags=resolve("reference").tags)
'''


def no_verdicts(spec: str, profile: str) -> dict[str, str]:
    raise AssertionError("these baselines hold no property verdicts, so the suite must not run")


@pytest.fixture(scope="module")
def reference_baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("baselines") / "reference.json"
    regress.update("reference", path, sweep=TINY, verdicts=no_verdicts)
    return path


@pytest.fixture
def slow_spec(tmp_path: Path) -> str:
    module = tmp_path / "slow_variant.py"
    module.write_text(textwrap.dedent(SLOW_VARIANT), encoding="utf-8")
    return f"{module}:SLOW"


def test_slower_variant_fails_against_the_reference_baseline(reference_baseline: Path, slow_spec: str, capsys) -> None:
    before = reference_baseline.read_bytes()
    status = cli.main(["regress", slow_spec, "--baseline", str(reference_baseline)])
    out = capsys.readouterr().out
    assert status == 1, out
    report = regress.check(slow_spec, reference_baseline, verdicts=no_verdicts)
    worse = {r.name for r in report.regressions}
    assert "picard.iterations.p50" in worse, out
    assert "| picard.iterations.p50" in out and "WORSE" in out
    assert reference_baseline.read_bytes() == before, "a comparison must never write the baseline"


def test_the_same_variant_against_its_own_fresh_baseline_passes(tmp_path: Path, slow_spec: str, capsys) -> None:
    path = tmp_path / "slow.json"
    assert cli.main(["regress", slow_spec, "--baseline", str(path), "--update", "--sweep", "quick"]) == 0
    stored = baseline_io.load(path)
    assert stored.variant == "slow" and stored.sweep == regress.SWEEPS["quick"]
    assert cli.main(["regress", slow_spec, "--baseline", str(path)]) == 0, capsys.readouterr().out
    assert "**no regression**" in capsys.readouterr().out


def test_a_faster_variant_passes_against_a_slower_baseline(tmp_path: Path, slow_spec: str) -> None:
    """Only worse fails: the reference converges faster than its 0.2-relaxed copy."""
    path = tmp_path / "slow.json"
    regress.update(slow_spec, path, sweep=TINY, verdicts=no_verdicts)
    report = regress.check("reference", path, verdicts=no_verdicts)
    assert not [r for r in report.regressions if ".iterations." in r.name], report.markdown()
    assert any(r.name == "picard.iterations.p50" and r.status == regress.BETTER for r in report.rows)


CORRUPTIONS = {
    "garbage": b"\x00\xffnot json at all",
    "truncated": b'{"schema": "iqa-baseline", "schema_version": 1, "metrics": {',
    "a list": b"[1, 2, 3]",
    "NaN": None,  # built from a valid file below
    "schema version 2": None,
    "missing metrics": None,
    "metric is text": None,
    "bad sweep": None,
    "unknown verdict": None,
    "other measure format": None,
}


def corrupt(kind: str, valid: dict) -> bytes:
    data = json.loads(json.dumps(valid))
    if CORRUPTIONS[kind] is not None:
        return CORRUPTIONS[kind]
    if kind == "NaN":
        return json.dumps(valid).replace('"picard.iterations.p50": ', '"picard.iterations.p50": NaN, "x": ').encode()
    if kind == "schema version 2":
        data["schema_version"] = 2
    elif kind == "missing metrics":
        del data["metrics"]
    elif kind == "metric is text":
        data["metrics"]["picard.iterations.p50"] = "17"
    elif kind == "bad sweep":
        data["sweep"]["tokens"] = [0]
    elif kind == "unknown verdict":
        data["properties"] = {"profile": "ci", "verdicts": {"test_x::test_y": "maybe"}}
    elif kind == "other measure format":
        data["measure_format"] = "iqa-measure/0"
    return json.dumps(data).encode()


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_baseline_is_a_clear_error_and_stays_untouched(
    kind: str, reference_baseline: Path, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "reference.json"
    content = corrupt(kind, json.loads(reference_baseline.read_text()))
    path.write_bytes(content)
    for extra in ([], ["--update"]):
        status = cli.main(["regress", "reference", "--baseline", str(path), *extra])
        err = capsys.readouterr().err
        assert status == 2, err
        assert str(path) in err and "error" in err
        assert path.read_bytes() == content, f"{kind}: the file changed ({extra})"
    with pytest.raises(BaselineError) as raised:
        baseline_io.load(path)
    words = {"corrupt", "schema version", "measured as"}
    assert any(w in str(raised.value) for w in words), str(raised.value)


def test_a_missing_baseline_is_an_error_and_nothing_is_created(tmp_path: Path, capsys) -> None:
    path = tmp_path / "none.json"
    assert cli.main(["regress", "reference", "--baseline", str(path)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "--update" in err
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_update_writes_atomically(reference_baseline: Path, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "reference.json"
    path.write_bytes(reference_baseline.read_bytes())
    before = path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full (simulated, at the final rename)")

    monkeypatch.setattr("iqa.atomic.os.replace", fail)
    with pytest.raises(OSError, match="simulated"):
        regress.update("damped", path, verdicts=no_verdicts)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.json"], "a temporary file was left behind"
    monkeypatch.undo()
    _, new, old = regress.update("damped", path, verdicts=no_verdicts)
    assert old is not None and old.variant == "reference" and old.sweep == new.sweep == TINY
    assert baseline_io.load(path) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference.json"]


def test_baseline_round_trip_is_exact(reference_baseline: Path, tmp_path: Path) -> None:
    stored = baseline_io.load(reference_baseline)
    copy = tmp_path / "copy.json"
    baseline_io.save(copy, stored)
    assert copy.read_bytes() == reference_baseline.read_bytes()
    with_verdicts = Baseline(stored.variant, stored.sweep, stored.metrics, verdicts={"f::p": PASS}, profile="ci")
    baseline_io.save(copy, with_verdicts)
    assert baseline_io.load(copy) == with_verdicts


@pytest.mark.parametrize(
    "argv",
    [
        ["regress", "reference", "hopfield", "--baseline", "x.json"],
        ["regress", "reference", "--sweep", "quick"],
        ["regress", "reference", "--properties"],
        ["regress", "reference", "--max-time-ratio", "0"],
        ["regress", "reference", "--jobs", "0"],
    ],
)
def test_usage_errors(argv: list[str], capsys) -> None:
    assert cli.main(argv) == 2
    assert "error" in capsys.readouterr().err


def test_an_unknown_variant_is_an_error(capsys) -> None:
    assert cli.main(["regress", "no_such_variant"]) == 2
    assert "unknown variant" in capsys.readouterr().err


# --- the rules, on synthetic metrics -------------------------------------------------------------------------------

DIRECTED = [
    "picard.iterations.p50",
    "anderson.iterations.p95",
    "picard.converged_fraction",
    "anderson.cycle_fraction",
    "picard.max_iter_fraction",
    "anderson.rate.p50",
    "kappa.p95",
    "rho.p50",
    "rho.failed_runs",
    "kappa.below_one_fraction",
    "unrolled_error.T8.p50",
    "phantom_error.k1_lam1.p95",
    "saved_bytes.implicit.T8",
    "gradient_cells",
]
RUNS = 6.0


def synthetic(metrics: dict[str, float | None]) -> Baseline:
    return Baseline("synthetic", TINY, {"runs": RUNS, **metrics})


@given(name=st.sampled_from(DIRECTED), before=st.floats(0.0, 1e3), step=st.floats(0.0, 1e3))
def test_only_worse_fails(name: str, before: float, step: float) -> None:
    rule = regress.rule_for(name, runs=int(RUNS), tol=TINY.tol)
    sign = 1.0 if rule.better == LOWER else -1.0
    limit = rule.limit(before)
    note(f"{name}: rule {rule}, before {before}, limit {limit}")
    better = before - sign * step
    rows = regress.compare_metrics(synthetic({name: before}), {"runs": RUNS, name: better})
    assert rows[0].status in (regress.OK, regress.BETTER)
    within = before + (limit - before) * 0.5
    assert regress.compare_metrics(synthetic({name: before}), {"runs": RUNS, name: within})[0].status != regress.WORSE
    # Beyond the limit by a margin far above rounding of the limit itself.
    beyond = limit + sign * (step + 1e-6 * max(1.0, abs(limit)))
    assert regress.compare_metrics(synthetic({name: before}), {"runs": RUNS, name: beyond})[0].status == regress.WORSE


def test_losing_a_value_is_worse_and_gaining_one_is_not() -> None:
    base = synthetic({"picard.iterations.p50": 12.0, "anderson.iterations.p50": None})
    rows = {r.name: r for r in regress.compare_metrics(base, {"runs": RUNS, "anderson.iterations.p50": 9.0})}
    assert rows["picard.iterations.p50"].status == regress.MISSING  # not measured any more
    assert rows["anderson.iterations.p50"].status == regress.BETTER
    rows = {r.name: r for r in regress.compare_metrics(base, {"runs": RUNS, "picard.iterations.p50": None})}
    assert rows["picard.iterations.p50"].status == regress.WORSE  # e.g. no run converges any more


def test_wall_time_fails_only_beyond_an_explicit_ratio() -> None:
    base = synthetic({"picard.time_per_step_us": 10.0})
    slower = {"runs": RUNS, "picard.time_per_step_us": 1000.0}
    assert regress.compare_metrics(base, slower)[0].status == regress.SHOWN
    assert regress.compare_metrics(base, slower, max_time_ratio=200.0)[0].status == regress.OK
    assert regress.compare_metrics(base, slower, max_time_ratio=2.0)[0].status == regress.WORSE


def test_descriptive_metrics_never_fail() -> None:
    base = synthetic({"weight_grad_norm.p50": 1.0, "consensus_distance.p95": 0.0, "rho_consensus.p50": 0.5})
    after = {"runs": RUNS, "weight_grad_norm.p50": 0.0, "consensus_distance.p95": 9.0, "rho_consensus.p50": 2.0}
    rows = regress.compare_metrics(base, after)
    assert {r.status for r in rows} == {regress.SHOWN}


def test_equal_values_and_changes_within_the_noise_are_ok_never_better() -> None:
    """The case seen: anderson.rate.p95 printed "better" at 0.4889 -> 0.4889 (a change in the 5th digit)."""
    for before, after in ((0.48891, 0.48891), (0.48891, 0.48889), (0.48891, 0.48893)):
        (row,) = regress.compare_metrics(
            synthetic({"anderson.rate.p95": before}), {"runs": RUNS, "anderson.rate.p95": after}
        )
        assert row.status == regress.OK, (before, after, row)
    (row,) = regress.compare_metrics(synthetic({"anderson.rate.p95": 0.6}), {"runs": RUNS, "anderson.rate.p95": 0.4})
    assert row.status == regress.BETTER  # beyond the 0.01 allowance the other way: a real improvement


def test_directions_in_metrics_json_are_what_regress_flags(tmp_path: Path) -> None:
    """For every metric a real measurement produces: the direction measure writes into metrics.json
    (metric_info) is the one iqa regress judges by, shown by what regress flags for each name."""
    measurement = measure_variant("reference", TINY, progress=False)
    base = Baseline.from_measurement(measurement)
    names = sorted(measurement["metrics"])
    assert set(measurement["metric_info"]) == set(names)
    swept = {m.pattern for m in metrics.TABLE if m.better and m not in metrics.TRAINING_TABLE}
    assert {metrics.lookup(n).pattern for n in names} >= swept, "the sweep must exercise every judged family"
    for name in names:
        info = measurement["metric_info"][name]
        if name == metrics.RUNS:
            assert info["better"] is None  # a different count is a mismatch error, not a verdict
            continue
        before = measurement["metrics"][name]
        if before is None:
            continue
        rule = regress.baseline_rule(base, name)
        step = 10.0 * (abs(before) + 1.0)  # far beyond any allowance (at most 100% + 10 tol + one run)

        def judged(after: float, name: str = name) -> str:
            (row,) = [
                r for r in regress.compare_metrics(base, {**measurement["metrics"], name: after}) if r.name == name
            ]
            return row.status

        # a relative allowance is a factor: the way down, divide (errors and counts stay >= 0)
        up, down = judged(before + step), judged(before / 100 if before > 0 else before - step)
        assert judged(before) in (regress.OK, regress.SHOWN), name
        if info["better"] is None or not info["deterministic"]:
            assert up == down == regress.SHOWN, (name, info, rule)
        elif info["better"] == LOWER:  # "better" only where the change exceeds the allowance (tiny errors)
            assert up == regress.WORSE and down in (regress.BETTER, regress.OK), (name, info, rule)
        else:
            assert up in (regress.BETTER, regress.OK) and down == regress.WORSE, (name, info, rule)


def test_a_different_number_of_runs_is_a_mismatch() -> None:
    with pytest.raises(BaselineError, match="runs"):
        regress.compare_metrics(synthetic({"rho.p50": 0.5}), {"runs": RUNS + 1, "rho.p50": 0.5})


def test_property_verdicts_fail_only_when_they_turn_bad() -> None:
    before = {"a": PASS, "b": PASS, "c": FAIL, "d": EXPECTED_FAILURE, "e": NOT_APPLICABLE, "f": PASS}
    after = {"a": FAIL, "b": PASS, "c": PASS, "d": UNEXPECTED_PASS, "e": PASS, "g": FAIL}
    rows = {r.name.split()[-1]: r.status for r in regress.compare_verdicts(before, after)}
    assert rows == {
        "a": regress.WORSE,
        "b": regress.OK,
        "c": regress.BETTER,
        "d": regress.WORSE,
        "e": regress.OK,
        "f": regress.SHOWN,  # gone from the suite: not the variant's doing
        "g": regress.WORSE,  # a new property that fails
    }


def test_a_property_that_is_no_longer_reached_regresses() -> None:
    """Reached in the baseline (even failing), "not reached" now: the property lost what it checks. Reached again
    (pass or as declared): better. Not reached on both sides, or not applicable before: nothing to judge."""
    before = {"a": PASS, "b": FAIL, "c": EXPECTED_FAILURE, "d": NOT_REACHED, "e": NOT_REACHED, "f": NOT_APPLICABLE}
    after = {"a": NOT_REACHED, "b": NOT_REACHED, "c": NOT_REACHED, "d": PASS, "e": NOT_REACHED, "f": NOT_REACHED}
    rows = {r.name.split()[-1]: r for r in regress.compare_verdicts(before, after)}
    assert {name: row.status for name, row in rows.items()} == {
        "a": regress.WORSE,
        "b": regress.WORSE,
        "c": regress.WORSE,
        "d": regress.BETTER,
        "e": regress.OK,
        "f": regress.OK,
    }
    assert rows["a"].reason == "reached in the baseline, nothing to check now"
