"""The metric table (iqa.metrics): every name is declared once, and another module can declare its own."""

from __future__ import annotations

import pytest

from iqa import metrics
from iqa.grad import BACKWARD_MODES
from iqa.metrics import HIGHER, LOWER, Metric, MetricError
from iqa.solvers import METHODS


def every_builder_name() -> list[str]:
    """One name from every name builder of iqa.metrics, for every method, quantile, status and mode."""
    names = [metrics.RUNS, metrics.GRADIENT_CELLS, metrics.RHO_FAILED_RUNS]
    for method in METHODS:
        names += [metrics.iterations(method, q) for q in ("p50", "p95")]
        names += [metrics.rate(method, q) for q in ("p50", "p95")]
        names += [metrics.status_fraction(method, s) for s in metrics.STATUS_FRACTIONS]
        names.append(metrics.time_per_step(method))
    for quantity in (metrics.KAPPA, metrics.RHO, metrics.RHO_CONSENSUS, metrics.CONSENSUS_DISTANCE):
        names += [metrics.quantile(quantity, q) for q in metrics.QUANTILES]
    names += [metrics.quantile(metrics.WEIGHT_GRAD_NORM, q) for q in metrics.QUANTILES]
    names += [metrics.below_one(metrics.KAPPA), metrics.below_one(metrics.RHO_CONSENSUS)]
    names += [metrics.unrolled_error(T, q) for T in (1, 64) for q in ("p50", "p95")]
    names += [metrics.phantom_error(metrics.phantom_name(k, lam), "p95") for k, lam in ((1, 1.0), (5, 0.5))]
    names += [metrics.saved_bytes(mode, 100) for mode in BACKWARD_MODES]
    return names


@pytest.mark.parametrize("name", every_builder_name())
def test_every_built_name_is_declared_exactly_once(name: str) -> None:
    found = [m for m in metrics.TABLE if m.matches(name)]
    assert len(found) == 1, f"{name} matches {[m.pattern for m in found]}"
    assert metrics.lookup(name) is found[0] and found[0].reason


def test_the_resolved_disagreements() -> None:
    """kappa and rho quantiles are judged (lower: a weaker contraction); rho.failed_runs is judged too;
    the token mean's rho (whether the degenerate fixed point attracts) is descriptive."""
    for name in ("kappa.p95", "rho.p50", "rho.failed_runs"):
        assert metrics.metric_info(name)["better"] == LOWER, name
    assert metrics.metric_info("kappa.below_one_fraction")["better"] == HIGHER
    for name in ("rho_consensus.p50", "rho_consensus.below_one_fraction", "consensus_distance.p50"):
        assert metrics.metric_info(name)["better"] is None, name


def test_unknown_names_and_bad_builders_are_errors() -> None:
    with pytest.raises(MetricError, match="not declared"):
        metrics.lookup("picard.iterations.p99")
    with pytest.raises(ValueError, match="quantile"):
        metrics.iterations("picard", "p99")
    with pytest.raises(ValueError, match="status"):
        metrics.status_fraction("picard", "converge")


def test_another_module_declares_its_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "TABLE", list(metrics.TABLE))  # the test's registrations stay here
    loss = Metric(r"train\.loss\.final", LOWER, "nats", "seeded training: one step of noise", relative=0.02)
    metrics.register(loss)
    assert metrics.metric_info("train.loss.final") == {"better": LOWER, "unit": "nats", "deterministic": True}
    with pytest.raises(ValueError, match="already declared"):
        metrics.register(loss)
    metrics.register(Metric(r"train\.loss\..*", None, "nats", "a careless pattern that overlaps"))
    with pytest.raises(MetricError, match="matches 2 entries"):
        metrics.lookup("train.loss.final")
    with pytest.raises(ValueError, match="reason"):
        Metric(r"train\.x", LOWER, "", "")
    with pytest.raises(ValueError, match="better"):
        Metric(r"train\.x", "smaller", "", "why")
