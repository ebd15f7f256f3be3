"""Meta tests of the ``contractive`` claim (properties/variant/test_claims.py, iqa.rejections.refuted_claim).

The claim's property passes on a claim that holds and refutes false ones with a counterexample: the reference
at weight scales [2, 4] (Picard cycles or runs out of steps there), and a layer that starts on a repelling fixed
point (Picard "converges" at once; only rho(J*) < 1 refutes it). Each runs as the mutant meta tests run a
property (derandomized, the same examples every run). A variant that claims to contract and gives a
property no converged fixed point at its claimed scales fails that property too, instead of "not reached".
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from iqa import Domain, cli
from iqa.pytest_plugin import read_results
from iqa.verdicts import FAIL, property_verdicts
from properties.claim_variants import FALSE_CONTRACTIVE, HONEST_CONTRACTIVE, UNSTABLE_START
from properties.meta.test_mutants import run_property
from properties.strategies import use_domain
from properties.variant.test_claims import test_contractive_claim_holds as claim_holds

#: The claim's property runs derandomized with at least test_mutants.MIN_EXAMPLES examples (run_property).
DEVICE = torch.device("cpu")


def test_an_honest_claim_holds() -> None:
    outcome = run_property(claim_holds, HONEST_CONTRACTIVE, DEVICE)
    assert outcome.kind == "passed", outcome.detail


def test_a_false_claim_is_refuted_with_a_counterexample() -> None:
    """The message is the counterexample: the claim, the draw (scale, shapes, seed), Picard's status, rho."""
    pattern = (
        r"reference-claims-2-4 claims contractive at weight scales \[2, 4\]; at scale [\d.]+ \(B=\d, N=\d, D=\d, "
        r"seed=\d+\) Picard from the layer's own start ended (cycle|max_iter|diverged) after \d+ steps "
        r"\(residual [\d.e+-]+, tol 1\.0e-06\); rho at the last iterate [\d.]+(\n|$)"  # the convergence half
    )
    outcome = run_property(claim_holds, FALSE_CONTRACTIVE, DEVICE)
    assert outcome.matches(pattern), outcome


def test_a_converged_but_unstable_point_refutes_the_claim() -> None:
    with pytest.raises(
        AssertionError, match=r"ended converged .* rho at the last iterate 2\.0000: Picard converged to"
    ):
        claim_holds(variant=UNSTABLE_START, device="cpu")


def test_a_contractive_claim_never_hides_behind_not_reached(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """DRIFTING claiming to contract: the property that finds no converged fixed point fails, naming the claim."""
    results = tmp_path / "results.json"
    spec = f"{Path(__file__).resolve().parents[1] / 'claim_variants.py'}:DRIFTING_CONTRACTIVE"
    selection = "test_picard_follows_its_linearization"
    status = cli.main(["check", "--results", str(results), spec, "-k", selection, "-p", "no:cacheprovider"])
    out = capsys.readouterr().out
    (row,) = property_verdicts(read_results(results)["tests"])
    assert row["verdict"] == FAIL and status == 1, out
    assert re.match(
        r"Failed: the variant claims contractive at weight scales \[0\.05, 4\], yet \d+ draws there had no converged",
        row["detail"],
    ), row["detail"]


def test_the_claim_is_checked_inside_any_domain() -> None:
    """A domain whose smallest width is above the property's usual sizes still gets draws, all inside it (a draw
    outside would make variant.make refuse it; none at all would skip): the claim is never left unchecked."""
    wide = dataclasses.replace(HONEST_CONTRACTIVE, domain=Domain(dim_multiple=3, min_dim=6, min_tokens=5))
    with use_domain(wide.domain):
        outcome = run_property(claim_holds, wide, DEVICE)
    assert outcome.kind == "passed", outcome.detail
    refuted = dataclasses.replace(FALSE_CONTRACTIVE, domain=wide.domain)
    with use_domain(refuted.domain):
        outcome = run_property(claim_holds, refuted, DEVICE)
    assert outcome.matches(r"N=[5-9], D=6,"), outcome
