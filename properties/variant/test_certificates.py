"""The certificates are sound, and a certificate < 1 delivers what it promises.

Soundness: at any points y1, y2 (drawn in the convex hull of the tokens, where
the iterates live, by attention-like mixing weights that Hypothesis controls),

    ||f(y1) - f(y2)|| <= kappa ||y1 - y2||      in each certificate's own norm,
    ||J(y)||_2 <= kappa_F                        (dense 2-norm of the Jacobian),

up to a rounding slack derived in :mod:`iqa.analysis.rounding`. ``target()``
pushes the ratio observed / (certified + slack) up, so the ``thorough`` profile
searches for the worst case (docs/theory.md#certificates: the bounds are attained, so ratios near
1 are expected; above 1 the property fails).

Consequences of kappa < 1 (Banach): one fixed point, reached from any start;
||y_{t+1} - y_t|| <= kappa^t ||y_1 - y_0|| and ||y_t - y*|| <= kappa^t ||y_0 - y*||.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from hypothesis import event, given, note, target
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis, solve
from iqa.analysis.certified_solution import CERTIFICATE_NORMS, in_norm, steps_needed, token_norm
from iqa.analysis.rounding import jacobian_rounding, map_rounding
from iqa.layer import FixedPointLayer
from iqa.variants import Tag, Variant
from properties.fixed_points import element_jacobian
from properties.regimes import require, solve_and_observe
from properties.strategies import ANY_SCALE, FACTORED_ELEMENTS, Case, active_domain, cases
from properties.tags import requires

#: hull_points draws B N^2 logits through Hypothesis: N <= 16 keeps that under 800 values (3 x 16^2).
HULL_TOKENS = 16


@st.composite
def hull_points(draw: st.DrawFn, case: Case, count: int, rows: int | None = None) -> list[Tensor]:
    """``count`` points W x with W [rows, N] row-stochastic (rows: the state's, N by default): logits
    (Hypothesis-controlled) times a temperature, from near-uniform mixing to nearly one-hot rows, so corners and
    interiors of the hull both occur."""
    B, N = case.batch, case.tokens
    K = N if rows is None else rows
    points = []
    for _ in range(count):
        logits = draw(st.lists(st.floats(-4, 4), min_size=B * K * N, max_size=B * K * N))
        temperature = draw(st.sampled_from([0.1, 1.0, 3.0, 10.0]))
        points.append(torch.tensor(logits, dtype=torch.float64).reshape(B, K, N) * temperature)
    return points


def state_rows(layer: FixedPointLayer, x: Tensor) -> int:
    """The rows of the layer's state for x: N, or K for a slot state (scores Y A^T)."""
    with torch.no_grad():
        return int(layer.initial_point(x).shape[-2])


def mix(logits: Tensor, x: Tensor) -> Tensor:
    return (torch.softmax(logits, dim=-1).to(x.dtype)) @ x


def certificate_rounding(case: Case) -> float:
    """Relative rounding of a computed certificate: norms, a cdist and an SVD of N x D data (sums of up to N + D
    terms: (N + D) eps), then at most six roundings that combine them (kappa_F's product, quotient and constant
    2 sqrt 2; a relaxation's 1 - a, a kappa and their sum; the factors 1/2 and 1/4 are exact)."""
    return (case.tokens + case.dim + 6) * torch.finfo(case.dtype).eps


@requires(Tag.SCORE_MATRIX)
@given(case=cases(scales=ANY_SCALE, max_elements=FACTORED_ELEMENTS, max_tokens=HULL_TOKENS), data=st.data())
def test_lipschitz_certificates_are_sound(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    """Soundness at drawn pairs of the hull; a quarter of the examples on the extremal configuration (two antipodal
    one-dimensional tokens, y1 at uniform attention, a step along J's top singular vector: see
    test_certificates_are_tight_on_extremal_configurations), where the ratio is ~1 and a certificate that
    is too small by any factor fails."""
    extremal = data.draw(st.integers(0, 3), label="extremal configuration") == 0
    event(f"extremal configuration: {extremal}")
    if extremal:  # in the narrowest width the variant's domain allows (D = 1, or the number of heads)
        case = dataclasses.replace(case, batch=1, tokens=2, dim=active_domain().smallest_dim(1) or 1)
    layer = case.layer(variant, device)
    x = extremal_tokens(1.0, case.dtype, device, case.dim) if extremal else case.inputs(device)
    solve_and_observe(layer, x)
    rows = state_rows(layer, x)
    logits1, logits2 = data.draw(hull_points(case, 2, rows), label="mixing logits")
    shrink = data.draw(st.sampled_from([1.0, 1e-1, 1e-2]), label="y2 - y1 shrink")
    along_top = extremal or data.draw(st.booleans(), label="step along J's top singular vector")
    f = layer.fixed_point_map(x)
    y1 = torch.zeros_like(x[:, :1]).expand(-1, rows, -1).contiguous() if extremal else mix(logits1, x)
    if along_top:
        # the direction that J(y1) stretches most: there ||f(y2) - f(y1)|| ~ ||J(y1)||_2 ||y2 - y1||
        _, _, Vh = torch.linalg.svd(analysis.jacobian(f, y1))
        top = Vh[:, 0, :].reshape(y1.shape)
        y2 = y1 + shrink * token_norm(x, "fro").to(x.dtype)[:, None, None] * top
    else:
        y2 = y1 + shrink * (mix(logits2, x) - y1)
    with torch.no_grad():
        df = f(y2) - f(y1)
    certs = analysis.certificates(layer, x)
    rounding = map_rounding(layer, x, y1).maximum(map_rounding(layer, x, y2))
    for name, which in CERTIFICATE_NORMS.items():
        kappa = getattr(certs, name).to(torch.float64).cpu()
        if not bool(torch.isfinite(kappa).all()):
            continue
        lhs, dy = token_norm(df, which).cpu(), token_norm(y2 - y1, which).cpu()
        # two evaluations of f each off by `rounding` per row; kappa itself carries a relative rounding
        slack = 2 * in_norm(rounding, which, rows).cpu() + kappa * certificate_rounding(case) * dy
        allowed = kappa * dy + slack
        ratio = torch.where(allowed > 0, lhs / allowed, torch.zeros_like(dy))
        target(float(ratio.max()), label=f"{name}: observed / (certified + slack)")
        note(f"{name}: ||f(y1) - f(y2)|| {lhs.tolist()} vs kappa ||y1 - y2|| {(kappa * dy).tolist()}")
        assert bool((lhs <= allowed).all()), f"{name} is not a Lipschitz bound: ratio {ratio.tolist()}"


@requires(Tag.SCORE_MATRIX)
@given(case=cases(scales=ANY_SCALE, max_elements=FACTORED_ELEMENTS, max_tokens=HULL_TOKENS), data=st.data())
def test_jacobian_norm_within_kappa_F(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    solve_and_observe(layer, x)
    (logits,) = data.draw(hull_points(case, 1, state_rows(layer, x)), label="mixing logits")
    y = mix(logits, x)
    J_norm = analysis.jacobian_norm(layer.fixed_point_map(x), y, method="dense").to(torch.float64).cpu()
    # jacobian_norm itself is the largest singular value of J, here from a Jacobian built by reverse mode
    # (independent of iqa.analysis): singular values are perfectly conditioned (Weyl: |sigma(J + E) - sigma(J)|
    # <= ||E||_2), so the two differ by at most both Jacobians' rounding and the SVDs' (n + 2) eps ||J||.
    f = layer.fixed_point_map(x)
    n = y[0].numel()  # the state's size
    eps = torch.finfo(case.dtype).eps
    for b in range(case.batch):
        J_b = element_jacobian(f, y, b).cpu()
        sigma = float(torch.linalg.svdvals(J_b)[0])
        tolerance = 2 * float(jacobian_rounding(layer, x, y).cpu()[b]) + 2 * (n + 2) * eps * sigma
        assert abs(float(J_norm[b]) - sigma) <= tolerance, (
            f"jacobian_norm {float(J_norm[b])} vs the largest singular value {sigma} of J: "
            f"off by {abs(float(J_norm[b]) - sigma):.3e} > {tolerance:.3e}"
        )

    kappa_F = analysis.certificates(layer, x).kappa_F.to(torch.float64).cpu()
    # the computed J is off by jacobian_rounding in the 2-norm; kappa_F by its own relative rounding
    slack = jacobian_rounding(layer, x, y).cpu() + kappa_F * certificate_rounding(case)
    allowed = kappa_F + slack
    ratio = torch.where(allowed > 0, J_norm / allowed, torch.zeros_like(J_norm))
    target(float(ratio.max()), label="||J||_2 / (kappa_F + slack)")
    note(f"||J(y)||_2 {J_norm.tolist()}, kappa_F {kappa_F.tolist()}")
    assert bool((J_norm <= allowed).all()), f"||J||_2 exceeds kappa_F: ratio {ratio.tolist()}"


@requires(Tag.SCORE_MATRIX)
@given(case=cases(scales=st.floats(0.05, 0.7)), data=st.data())
def test_contraction_gives_one_fixed_point(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    """Under kappa < 1: solves from x and from a far start meet, and both trajectories obey
    the a-priori bounds of the certificate, in its norm."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    certs = analysis.certificates(layer, x)
    best = certs.best.to(torch.float64).cpu()
    require(bool((best < 1).all()), "certificate kappa < 1")  # about 5% of these scales have none
    solve_and_observe(layer, x)
    spread = data.draw(st.sampled_from([1.0, 10.0]), label="far start spread")
    y0 = layer.initial_point(x)
    far = spread * torch.randn(y0.shape, generator=case.generator(7), dtype=torch.float64).to(x.dtype).to(device)
    f = layer.fixed_point_map(x)
    starts = (y0, far)
    rows = y0.shape[-2]  # the state's rows: N, or a slot state's K
    # the largest per-row rounding of f along either trajectory (it grows with ||y||, largest at a start)
    eps_rows = torch.stack([map_rounding(layer, x, y0) for y0 in starts]).amax(dim=0).cpu()
    for name, which in CERTIFICATE_NORMS.items():
        kappa = getattr(certs, name).to(torch.float64).cpu()
        if not bool((kappa < 1).all()):
            continue
        k = float(kappa.max())
        # the Frobenius residual can sink to about sqrt(N) 2 eps_f / (1 - kappa) (rounding); stop 10x above that
        tol = 10 * math.sqrt(rows) * 2 * float(eps_rows.max()) / (1 - k)
        with torch.no_grad():
            start_gap = max(float(token_norm(f(y0) - y0, "fro").max()) for y0 in starts)
            budget = steps_needed(k, math.sqrt(rows) * start_gap, tol)
            runs = [solve(f, y0, tol=tol, max_iter=budget, keep_iterates=True) for y0 in starts]
        for run in runs:
            assert run.converged, f"{name} = {k:.3g} < 1 but Picard did not converge in {budget} steps: {run.statuses}"
        ys = [run.y for run in runs]
        eps_f = in_norm(eps_rows, which, rows)
        with torch.no_grad():
            residual = [token_norm(f(y) - y, which).cpu() for y in ys]
        # Banach: ||y - y*|| <= (r + eps_f) / (1 - kappa) for each computed endpoint
        to_star = [(r + eps_f) / (1 - kappa) for r in residual]
        gap = token_norm(ys[0] - ys[1], which).cpu()
        note(f"{name} {kappa.tolist()}: endpoints differ by {gap.tolist()}, bound {(to_star[0] + to_star[1]).tolist()}")
        assert bool((gap <= to_star[0] + to_star[1]).all()), f"two fixed points under {name} < 1"
        for run, y_end, bound_end in zip(runs, ys, to_star):
            assert run.iterates is not None
            check_a_priori_bounds(run.iterates, y_end, bound_end, kappa, eps_f, which, name)


def check_a_priori_bounds(
    iterates: list[Tensor], y_end: Tensor, end_to_star: Tensor, kappa: Tensor, eps_f: Tensor, which: str, name: str
) -> None:
    """||y_{t+1} - y_t|| <= kappa^t ||y_1 - y_0|| and ||y_t - y*|| <= kappa^t ||y_0 - y*||, with y* known
    to within end_to_star of y_end. A computed step is f(y_t) + e_t with ||e_t|| <= eps_f: the distance to y*
    gains eps_f per step, which accumulates to eps_f / (1 - kappa); a difference of two steps gains
    e_{t+1} - e_t, 2 eps_f per step, which accumulates to 2 eps_f / (1 - kappa)."""
    y0 = iterates[0]
    first_step = token_norm(iterates[1] - y0, which).cpu() if len(iterates) > 1 else None
    y0_to_star = token_norm(y0 - y_end, which).cpu() + end_to_star
    to_star_rounding = eps_f / (1 - kappa)  # ||y_{t+1} - y*|| <= kappa ||y_t - y*|| + eps_f, summed geometrically
    step_rounding = 2 * eps_f / (1 - kappa)  # ||d_{t+1}|| <= kappa ||d_t|| + 2 eps_f (two evaluations), the same
    for t, y_t in enumerate(iterates):
        power = kappa**t
        dist = token_norm(y_t - y_end, which).cpu()
        # ||y_t - y_end|| <= ||y_t - y*|| + ||y* - y_end||, the second at most end_to_star
        assert bool((dist <= power * y0_to_star + end_to_star + to_star_rounding).all()), (
            f"{name}: ||y_{t} - y*|| exceeds kappa^t ||y_0 - y*||: {dist.tolist()} vs {(power * y0_to_star).tolist()}"
        )
        if first_step is not None and t + 1 < len(iterates):
            step = token_norm(iterates[t + 1] - y_t, which).cpu()
            assert bool((step <= power * first_step + step_rounding).all()), (
                f"{name}: step {t} {step.tolist()} exceeds kappa^t ||y_1 - y_0|| {(power * first_step).tolist()}"
            )


#: A certificate whose observed Lipschitz ratio stays below this on its extremal configuration is not tight: it
#: may be sound and still useless (every certificate doubled passes the soundness properties).
TIGHTNESS = 0.5
#: Grid points per axis of the hull [-c, c]^2 of the two-token, one-dimensional configuration (odd: 0 is on it).
TIGHT_GRID = 41


def extremal_tokens(c: float, dtype: torch.dtype, device: torch.device | str, dim: int = 1) -> Tensor:
    """x = (c e_1, -c e_1): two antipodal tokens along the first axis, [1, 2, dim]."""
    x = torch.zeros(1, 2, dim, dtype=torch.float64)
    x[0, :, 0] = torch.tensor([c, -c], dtype=torch.float64)
    return x.to(dtype=dtype, device=device)


def local_lipschitz(layer, x: Tensor, grid: int, a: float = 1.0) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """max over y in a grid of the hull [-c, c]^2 of ||J_g(y)||_(2,inf -> 2,inf) and of ||J_g(y)||_2, with
    J_g = (J - (1 - a) I) / a the Jacobian of the unrelaxed map g of f = (1 - a) Y + a g(Y): for D = 1 the row
    norm is |.|, so the induced norm is the largest absolute row sum of the 2 x 2 Jacobian. Each is a limit of
    ratios ||f(y + h) - f(y)|| / ||h||, so a lower bound on the Lipschitz constant that kappa_inf (kappa_F) bounds
    above. The Jacobian rows come from reverse mode, one per output token, for all grid points at once."""
    c = float(x.abs().max())
    axis = torch.linspace(-c, c, grid, dtype=torch.float64)
    Y = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2, 1).to(x)
    X = x.expand(Y.shape[0], -1, -1)
    y = Y.clone().requires_grad_(True)
    with torch.enable_grad():
        fy = layer.fixed_point_map(X)(y)
        rows = [torch.autograd.grad(fy[:, i, 0].sum(), y, retain_graph=True)[0][:, :, 0] for i in range(2)]
    J = torch.stack(rows, dim=1).to(torch.float64)  # [G, 2, 2]
    J_g = (J - (1 - a) * torch.eye(2, dtype=J.dtype, device=J.device)) / a
    row_sums = float(J_g.abs().sum(dim=-1).amax(dim=-1).max().cpu())
    return row_sums, float(torch.linalg.matrix_norm(J_g, 2).max().cpu())


@requires(Tag.SCORE_MATRIX)
@given(case=cases(batch=(1, 1), tokens=(2, 2), dim=(1, 1), scales=st.floats(0.25, 2.0)), c=st.floats(0.5, 2.0))
def test_certificates_are_tight_on_extremal_configurations(variant: Variant, case: Case, c: float, device) -> None:
    """kappa_inf and kappa_F are attained: on two antipodal one-dimensional tokens x = (c, -c) (N = 2, D = 1), at
    the point where attention is uniform (scores equal: y_1 = y_2 for scores A Y^T, y_i = 0 for Y A^T), the
    Jacobian is (diam(V) / 4) a (1, -1)^T for scores A Y^T (a = the column of A): its largest absolute row sum
    is 0.5 diam(V) max|a_i| and its 2-norm diam(V) ||a|| / (2 sqrt 2), the bounds' values; for Y A^T it is
    diagonal with entries diam(V) diam(A) / 4, both bounds' value. Every inequality in their derivations
    (|p_ij (v_j - f_i)| summed over j <= diam(V) / 2 at p = (1/2, 1/2), the Cauchy-Schwarz on a_i . dy) is an
    equality there. A relaxation a gives kappa = 1 - a + a kappa_g, attained only where J_g's diagonal is
    >= 0, so the unrelaxed part is compared: (kappa - (1 - a)) / a against J_g's. So the observed local
    Lipschitz constant over a grid of the hull, in each norm, is at least TIGHTNESS times its certificate."""
    layer = case.layer(variant, device)
    x = extremal_tokens(c, case.dtype, device)
    a = analysis.relaxation(layer)
    certificates = analysis.certificates(layer, x)
    observed = dict(zip(("kappa_inf", "kappa_F"), local_lipschitz(layer, x, TIGHT_GRID, a)))
    for name, seen in observed.items():
        kappa = (float(getattr(certificates, name).to(torch.float64).cpu()[0]) - (1 - a)) / a
        ratio = seen / kappa if kappa > 0 else math.inf
        event(f"observed / {name} in [{math.floor(ratio * 10) / 10:.1f}, {math.floor(ratio * 10) / 10 + 0.1:.1f})")
        note(f"{name} {kappa:.6g}, observed max local Lipschitz constant {seen:.6g}, ratio {ratio:.4f}")
        assert ratio >= TIGHTNESS, (
            f"{name} = {kappa:.4g} is not tight: the largest observed Lipschitz ratio on its extremal configuration "
            f"is {seen:.4g}, ratio {ratio:.3f} < {TIGHTNESS}"
        )
