"""The tool beyond the layer's forward on fixed-point states of their own shape [B, K, D] (slots), K != N.

On the toy slot variant (properties/toy_slots.py: K slots, noise start, readout W_O y):

- analysis: rho and ||J||_2 of the flattened state against numpy's eigenvalues and singular values of a
  Jacobian built independently (reverse mode, one row per output entry); certificates say clearly where the
  score_matrix form does not hold (no form at all; a form whose state does not fit it) and stay sound where it
  does (queries from K slots over N tokens, scores Y A^T);
- memory: the bytes saved for backward on a slot state, implicit constant in depth, unrolled growing by at
  least one state per step;
- measure, report and regress over the toy: runs per K, pages that say what the state is, a baseline that
  the same variant does not regress against.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from iqa import analysis, regress
from iqa.layer import FixedPointLayer
from iqa.measure import DomainError, Sweep, measure_variant
from iqa.memory import saved_tensor_bytes
from iqa.report import Options, build, configure_parser
from iqa.solvers import Map, solve
from iqa.variants import Domain, Tag, Variant
from properties.fixed_points import element_jacobian
from properties.strategies import TINY_SWEEP
from properties.toy_slots import TOY_SLOTS

SPEC = "properties.toy_slots:TOY_SLOTS"
F64 = torch.float64
EPS = torch.finfo(F64).eps


def toy(slots: int = 3, dim: int = 4, scale: float = 0.7, **options: object) -> FixedPointLayer:
    return TOY_SLOTS.make(dim, scale=scale, seed=5, slots=slots, **options)


def tokens(batch: int = 2, n: int = 5, dim: int = 4, seed: int = 1) -> Tensor:
    return torch.randn(batch, n, dim, dtype=F64, generator=torch.Generator().manual_seed(seed))


def fixed_point(layer: FixedPointLayer, x: Tensor) -> tuple[Map, Tensor]:
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        solution = solve(f, layer.initial_point(x), tol=1e-12, max_iter=2000)
    assert solution.converged, solution.statuses
    return f, solution.y


def independent_jacobians(f: Map, y: Tensor) -> list[np.ndarray]:
    """d f_b / d y_b per element, [K D, K D], by reverse mode (not iqa.analysis)."""
    return [element_jacobian(f, y, b).cpu().numpy() for b in range(y.shape[0])]


def test_state_is_not_x_shaped() -> None:
    layer, x = toy(), tokens()
    y0 = layer.initial_point(x)
    assert y0.shape == (2, 3, 4) and x.shape == (2, 5, 4)
    assert layer(x).shape == (2, 3, 4)


def test_spectral_radius_on_a_slot_state_matches_dense_eigenvalues() -> None:
    """rho (dense and Arnoldi) of the [K D, K D] Jacobian of the flattened state equals max |eig| from numpy on an
    independently built Jacobian, within Bauer-Fike: cond(V) times both Jacobians' rounding, 2 (n + 2) eps ||J||_F
    each (n-term sums in the jvp/vjp), plus Arnoldi's own residual."""
    layer, x = toy(scale=1.5), tokens()
    f, y = fixed_point(layer, x)
    dense = analysis.spectrum(f, y, "dense")
    arnoldi = analysis.spectrum(f, y, "arnoldi", krylov_dim=6)
    for b, J in enumerate(independent_jacobians(f, y)):
        values, vectors = np.linalg.eig(J)
        rho = float(np.abs(values).max())
        assert rho > 1e-3, "a vacuous check: the Jacobian at the toy's fixed point vanishes"
        n = J.shape[0]
        backward = 2 * 2 * (n + 2) * EPS * float(np.linalg.norm(J))
        tolerance = float(np.linalg.cond(vectors)) * backward
        assert abs(float(dense.rho[b]) - rho) <= tolerance, (float(dense.rho[b]), rho, tolerance)
        assert bool(arnoldi.converged[b])
        tolerance_a = float(np.linalg.cond(vectors)) * (backward + float(arnoldi.residual[b]))
        assert abs(float(arnoldi.rho[b]) - rho) <= tolerance_a, (float(arnoldi.rho[b]), rho, tolerance_a)


def test_jacobian_norm_on_a_slot_state_matches_singular_values() -> None:
    """||J||_2 (dense and Lanczos) equals numpy's largest singular value of the independent Jacobian (Weyl:
    within both Jacobians' rounding, plus Lanczos's residual). Lanczos is asked for rtol 1e-14: the top singular
    value here is double (two slots alike), and at the default rtol (1e-10) its estimate stopped 1.55e-13 below
    it with a reported residual of 1.3e-13."""
    layer, x = toy(scale=1.5), tokens()
    f, y = fixed_point(layer, x)
    dense = analysis.norm_estimate(f, y, "dense")
    lanczos = analysis.norm_estimate(f, y, "lanczos", krylov_dim=6, rtol=1e-14)
    for b, J in enumerate(independent_jacobians(f, y)):
        sigma = float(np.linalg.svd(J, compute_uv=False)[0])
        rounding = 2 * 2 * (J.shape[0] + 2) * EPS * float(np.linalg.norm(J))
        assert abs(float(dense.norm[b]) - sigma) <= rounding
        assert abs(float(lanczos.norm[b]) - sigma) <= rounding + float(lanczos.residual[b])


def test_certificates_say_the_toy_has_no_score_form() -> None:
    layer, x = toy(), tokens()
    assert not analysis.supports_certificates(layer)
    with pytest.raises(TypeError, match="no certificate applies"):
        analysis.certificates(layer, x)


class SlotHopfield(FixedPointLayer):
    """K query slots attend over N tokens: y_k <- sum_j softmax_j(W_Q y_k . W_K x_j) x_j (scores Y A^T)."""

    score_form = "Y A^T"
    domain = Domain(slots=(1, 4))

    def __init__(self, embed_dim: int, n_iters: int = 10, *, slots: int = 2, **options: object) -> None:
        super().__init__(embed_dim, n_iters, **options)  # type: ignore[arg-type]
        self.slots = slots
        self.W_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)

    def initial_point(self, x: Tensor) -> Tensor:
        shape = (x.shape[0], self.slots, x.shape[-1])
        return torch.randn(shape, generator=self.start_generator(x), dtype=x.dtype, device=x.device)

    def fixed_point_map(self, x: Tensor) -> Map:
        keys = self.W_K(x)
        return lambda y: torch.softmax(self.W_Q(y) @ keys.transpose(-2, -1), dim=-1) @ x

    def score_matrix(self, x: Tensor) -> Tensor:
        return self.W_K(x) @ self.W_Q.weight

    def values(self, x: Tensor) -> Tensor:
        return x


class MisdeclaredSlots(SlotHopfield):
    """The same map declared in the seed's form A Y^T, which needs one state row per token: not this state."""

    score_form = "A Y^T"


def test_certificates_are_sound_on_a_slot_state_with_scores_y_at() -> None:
    """With scores Y A^T, K query slots fit the certificates: ||J(y)||_2 <= kappa_F at the fixed point and at the
    start (dense J of the [K D] state, plus its rounding)."""
    variant = Variant.from_layer(SlotHopfield, name="slot-hopfield", tags={Tag.SCORE_MATRIX})
    for scale in (0.3, 1.0, 3.0):
        layer = variant.make(4, scale=scale, seed=2, slots=3)
        x = tokens()
        kappa_F = analysis.certificates(layer, x).kappa_F
        f = layer.fixed_point_map(x)
        for y in (layer.initial_point(x), f(layer.initial_point(x))):
            norm = analysis.jacobian_norm(f, y, "dense")
            slack = analysis.jacobian_rounding(layer, x, y) + 8 * EPS * kappa_F
            assert bool((norm <= kappa_F + slack).all()), (scale, norm.tolist(), kappa_F.tolist())


def test_certificates_refuse_a_state_that_does_not_fit_its_form() -> None:
    layer = Variant.from_layer(MisdeclaredSlots, name="misdeclared").make(4, seed=2, slots=3)
    with pytest.raises(ValueError, match="one row per token"):
        analysis.certificates(layer, tokens())
    with pytest.raises(ValueError, match="one row per token"):
        analysis.consensus_radius(layer, tokens())


def test_consensus_distance_refuses_a_slot_state() -> None:
    x = tokens()
    with pytest.raises(ValueError, match="state of shape"):
        analysis.consensus_distance(toy().initial_point(x), x)


# --- memory --------------------------------------------------------------------------------------------------------


def saved(backward: str, steps: int, slots: int = 3) -> int:
    """Bytes saved by one forward of exactly ``steps`` steps (unrolled: the seed loop; implicit: a Picard solve
    that cannot reach its tolerance), the weights and x excluded."""
    if backward == "unrolled":
        layer = toy(slots, n_iters=steps)
    else:
        layer = toy(slots, backward=backward, damping=0.5, tol=1e-300, max_iter=steps)
    x = tokens()
    with torch.enable_grad():
        return saved_tensor_bytes(lambda: layer(x), exclude=[*layer.parameters(), x])  # type: ignore[arg-type, return-value]


def test_bytes_saved_on_a_slot_state() -> None:
    """Implicit: the same count whatever the depth (one application of f and the readout). Unrolled: affine in
    the depth, each step keeping at least its iterate, a [B, K, D] state (2 x 3 x 4 float64 = 192 bytes)."""
    depths = (2, 4, 8)
    implicit = [saved("implicit", t) for t in depths]
    unrolled = [saved("unrolled", t) for t in depths]
    assert implicit[0] == implicit[1] == implicit[2] > 0, implicit
    per_step = (unrolled[1] - unrolled[0]) / 2
    assert unrolled[2] - unrolled[1] == 4 * per_step, unrolled
    assert per_step >= 2 * 3 * 4 * 8, per_step
    assert saved("unrolled", 4, slots=1) < unrolled[1], "the count does not follow the state's K"


# --- measure, report, regress --------------------------------------------------------------------------------------

SLOT_SWEEP = dataclasses.replace(TINY_SWEEP, tokens=(2, 5), saved_bytes_shape=(3, 2))


@pytest.fixture(scope="module")
def measured() -> dict[str, object]:
    return measure_variant(SPEC, SLOT_SWEEP, progress=False)


def test_measure_runs_one_cell_per_slot_count(measured: dict[str, object]) -> None:
    """The domain's K range (1, 4) gives K = 1 and K = 4 per (N, D, s, seed); rho is about the state, the
    consensus distance (a property of x-shaped states) is absent, and the gradients were compared."""
    runs = measured["runs"]
    assert isinstance(runs, list)
    assert sorted({run["slots"] for run in runs}) == [1, 4]
    assert len(runs) == 2 * 1 * 2 * 1 * 2 * SLOT_SWEEP.batch  # N, D, K, s, seed, elements
    assert all(run["consensus_distance"] is None and run["kappa"] is None for run in runs)
    assert any(run["rho"] is not None for run in runs)
    gradients = measured["gradients"]
    assert isinstance(gradients, list) and gradients
    assert all(g["implicit_norm"] is not None for g in gradients)
    saved_bytes = measured["saved_bytes"]
    assert isinstance(saved_bytes, dict) and saved_bytes["slots"] == 4


def test_measure_is_deterministic_on_a_slot_variant(measured: dict[str, object]) -> None:
    again = measure_variant(SPEC, SLOT_SWEEP, progress=False)
    keep = ("runs", "gradients", "saved_bytes")
    assert {k: measured[k] for k in keep} == {k: again[k] for k in keep}


def test_unrolled_gradient_reaches_the_implicit_one_on_a_slot_variant(measured: dict[str, object]) -> None:
    """At s = 0.5 the toy contracts (rho ~ 0.03): with K = 4 slots the unrolled-T gradient of the output (the
    readout of the T-th state) approaches the implicit one like rho^T (a readout left out of either side would
    stall the error at O(1)); with K = 1 the map is constant (a softmax over one slot is 1), so one step is exact."""
    gradients = [g for g in measured["gradients"] if g["key"][2] == 0.5]  # type: ignore[union-attr]
    assert {g["key"][4] for g in gradients} == {1, 4}
    for g in gradients:
        errors = g["unrolled_error"]
        if g["key"][4] == 1:
            assert errors == {"1": 0.0, "4": 0.0}, errors
        else:
            assert errors["1"] > 0.01 and errors["4"] < 1e-3 * errors["1"], errors


def test_report_writes_a_page_for_a_slot_variant(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args(["--variant", SPEC, "--out", str(tmp_path), "--no-properties", "--no-progress"])
    written, error = build(Options.from_args(args), sweep=SLOT_SWEEP)
    assert error is None and written
    pages = [p for p in tmp_path.rglob("README.md") if p.parent != tmp_path]
    assert len(pages) == 1
    page = pages[0].read_text()
    assert "K ∈ {1, 4} slots" in page
    assert all((pages[0].parent / name).is_file() for name in ("iterations.png", "saved_bytes.png"))


def test_regress_against_its_own_baseline(tmp_path: Path) -> None:
    """A baseline of the toy, then a check of the same toy against it: every metric ok, none worse."""
    path = tmp_path / "toy_slots.json"

    def no_verdicts(spec: str, profile: str) -> dict[str, str]:
        raise AssertionError("no property verdicts were recorded")

    regress.update(SPEC, path, sweep=SLOT_SWEEP, verdicts=no_verdicts)
    report = regress.check(SPEC, path, verdicts=no_verdicts)
    assert report.rows and not report.regressions, report.regressions
    assert all(row.status in (regress.OK, regress.SHOWN) for row in report.rows), report.markdown()
    assert report.baseline.metrics["runs"] == 2 * 2 * 2 * SLOT_SWEEP.batch  # N, K, s, elements


def test_measure_leaves_out_the_shapes_outside_the_domain() -> None:
    """A domain of even D and K = 2 only: the D = 3 cells are not measured (and say so), the bytes-saved
    measurement moves from D = 3 to the nearest allowed width, and every cell has K = 2."""
    from properties.toy_slots import ToySlots

    variant = Variant.from_layer(ToySlots, name="even-slots", domain=Domain(dim_multiple=2, slots=(2, 2)))
    sweep = Sweep(
        tokens=(2,),
        dims=(2, 3),
        scales=(0.5,),
        seeds=(0,),
        batch=1,
        max_iter=30,
        unrolled_T=(1,),
        phantom=((1, 1.0),),
        saved_bytes_shape=(2, 3),
    )
    result = measure_variant(variant, sweep, progress=False)
    assert {(run["dim"], run["slots"]) for run in result["runs"]} == {(2, 2)}
    assert result["outside_domain"] == [[2, 3]]
    assert result["domain"] == variant.domain.describe()
    assert (result["saved_bytes"]["dim"], result["saved_bytes"]["slots"]) == (4, 2)
    from iqa.report.markdown import _state_lines

    lines = "\n".join(_state_lines(result))
    assert "K ∈ {2} slots" in lines and "(N = 2, D = 3)" in lines


def test_a_sweep_without_a_cell_in_the_domain_is_an_error() -> None:
    from properties.toy_slots import ToySlots

    variant = Variant.from_layer(ToySlots, name="wide-slots", domain=Domain(min_dim=16, slots=(2, 2)))
    with pytest.raises(DomainError, match="no cell of the sweep"):
        measure_variant(variant, SLOT_SWEEP, progress=False)
