"""Gradients through the fixed point: the backward modes agree with each other and with independent references.

At y* = f(y*, theta) with J = df/dy (docs/theory.md#implicit-differentiation):

    g = v + J^T g,   dL/dtheta = g^T df/dtheta,   v = dL/dy*.

The float64 reference (:mod:`properties.gradient_reference`, with its own meta tests) never goes through
:func:`iqa.fixed_point`'s hook: J is the dense Jacobian from :func:`iqa.analysis.jacobian` (forward-mode
products), g comes from a dense linear solve, and g^T df/dtheta from one plain
vector-Jacobian product at the layer's own y*. Tolerances come from
cond = ||(I - J*)^-1||_2, rho = rho(J*), the solvers' residuals and eps.

Non-vacuity: comparisons of weight gradients run on variants tagged
``weight_dependent`` (their fixed point moves with the weights), and a
comparison whose reference norm is below :data:`~properties.gradient_reference.FLOOR_REL`
(relative to ||v|| max|x|) fails instead of passing.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa.analysis import certificates, saturation_gap, spectral_radius
from iqa.analysis.linearization import matrix_power_norms
from iqa.grad import AdjointOptions, Implicit
from iqa.layer import FixedPointLayer
from iqa.rejections import reject
from iqa.solvers import Solution
from iqa.variants import Tag, Variant
from properties.fixed_points import (
    BAND_LABEL,
    cotangent,
    element_jacobian,
    fixed_map,
    hard_case,
    output_shape,
    require_converged,
    solvable_rho,
    solver_name,
    stable_fixed_point,
)
from properties.gradient_reference import (
    F64,
    MAX_ITER,
    TOL64,
    Analysis,
    adjoint_budget,
    analyse,
    analyse_solved,
    assert_close,
    dense_jacobians,
    eps,
    floor_of,
    layer_grads,
    map_jacobians_along,
    pullback,
    rel_err,
    solve_options,
    token_spread,
)
from properties.regimes import SATURATION_GAP, reached, require, requires_share
from properties.strategies import CONTRACTIVE_SCALES, WEIGHT_JACOBIAN_ELEMENTS, Case, cases
from properties.tags import requires

F32 = torch.float32

#: Issue 3's target for float32 gradients against the float64 reference, asserted as stated on top of the derived
#: bound (F32_SOURCES cond m eps32 (1 + ||J||), ~1e-5 at contractive scales, larger in the hard band).
F32_REL_TOL = 1e-3

#: Small shapes: the dense Jacobian is at most 16 x 16 per batch element.
small_cases = cases(
    batch=(1, 2),
    tokens=(2, 4),
    dim=(1, 4),
    dtypes=(F64,),
    scales=CONTRACTIVE_SCALES,
    max_elements=WEIGHT_JACOBIAN_ELEMENTS,
)
#: Whether an example of a gradient comparison is moved into rho(J*) in [0.7, 0.97] (properties.fixed_points.
#: hard_case), where the adjoint is ill-conditioned; the contractive scales alone give a median rho of 0.01-0.05.
hard_draws = st.booleans()
#: A comparison that moves half its examples into the hard band needs this share of those moves to succeed
#: (a search fails where rho jumps over the band as the scale grows; with BAND_ATTEMPTS seeds, ~70-100% succeed
#: per built-in): below it, the property has not tested the hard regime it exists for.
HARD_SHARE = 0.3


def drawn(case: Case, variant: Variant, hard: bool) -> Case:
    """The case itself, or (hard) the case moved into the hard band."""
    return hard_case(case, variant) if hard else case


def solved(case: Case, variant: Variant, device: torch.device, **options: object) -> tuple[FixedPointLayer, Tensor]:
    """The case's layer in implicit mode (float64, Anderson to TOL64) and its input, at a converged and locally
    stable fixed point (:func:`properties.fixed_points.stable_fixed_point`), not saturated."""
    merged = {**solve_options(), **options}
    layer, x = stable_fixed_point(case, variant, device, max_rho=solvable_rho(merged), backward="implicit", **merged)
    solution = layer.last_solution
    assert solution is not None
    gap = float(saturation_gap(fixed_map(layer, x), solution.y).max())
    event(f"saturated attention: {gap <= SATURATION_GAP}")
    # Nearly one-hot attention (regimes.py's "saturated") has J* ~ 0 and weight gradients at the rounding level:
    # no gradient comparison has a signal there, so those cases are rejected, not compared.
    require(not gap <= SATURATION_GAP, f"attention not saturated (1 - max_j p_ij > {SATURATION_GAP:g})")
    backward = layer.backward
    if isinstance(backward, Implicit) and backward.options.tol is None:
        tol = adjoint_tol(layer, x)
        event(f"adjoint tol above TOL64 (its rounding floor): {tol > TOL64}")
        layer.backward = Implicit(dataclasses.replace(backward.options, tol=tol))
    return layer, x


def adjoint_tol(layer: FixedPointLayer, x: Tensor) -> float:
    """The implicit backward's relative tol: TOL64, or the adjoint's rounding floor where that is higher. One step
    g -> v + J^T g rounds at n eps (||v|| + ||J||_2 ||g||), ~n eps (1 + ||J||_2) of ||g|| (J* dense, by reverse mode,
    not by iqa.analysis); Picard stalled (CYCLE) at 1.25e-13 where that is 3.2e-14 (causal, N = D = 2, weight scale
    12.7, ||J*||_2 = 35, thorough), so the floor is taken 16x above it. The budgets read this tol (adjoint_tol_of)."""
    solution = layer.last_solution
    assert solution is not None
    f = fixed_map(layer, x)
    norm = max(float(torch.linalg.matrix_norm(element_jacobian(f, solution.y, b), ord=2)) for b in range(x.shape[0]))
    n = solution.y[0].numel()
    return max(TOL64, 16 * n * eps(F64) * (1 + norm))


def adjoint_tol_of(layer: FixedPointLayer) -> float:
    """The relative tol the layer's implicit backward solves its adjoint to (:func:`solved` sets it)."""
    backward = layer.backward
    assert isinstance(backward, Implicit)
    tol = backward.options.tol
    return TOL64 if tol is None else tol


# ---------------------------------------------------------------------------------------------------------------
# implicit vs the independent dense reference, and vs unrolled
# ---------------------------------------------------------------------------------------------------------------


@requires(Tag.WEIGHT_DEPENDENT)
@requires_share(BAND_LABEL, HARD_SHARE)
@given(case=small_cases, hard=hard_draws)
def test_implicit_matches_dense_reference(variant: Variant, case: Case, hard: bool, device) -> None:
    """The implicit gradient equals g^T df/dtheta with g from a dense solve of (I - J*^T) g = v; half the
    examples in the hard band rho(J*) in [0.7, 0.97]."""
    case = drawn(case, variant, hard)
    layer, x = solved(case, variant, device)
    v = cotangent(case, device, layer=layer)
    grads = layer_grads(layer, x, v)
    an = analyse_solved(layer, x, v)
    note(an.describe())
    budget, floor = adjoint_budget(an, adjoint_tol_of(layer)), floor_of(x, v)
    assert_close(grads.weights, an.reference.weights, an.scale_weights * budget, floor, "dL/dW implicit vs dense")
    assert_close(grads.x, an.reference.x, an.scale_x * budget, floor, "dL/dx implicit vs dense")


def seed_residuals(layer: FixedPointLayer, x: Tensor, tol: float = TOL64) -> list[float]:
    """Residuals r_t = max_b ||f(y_t) - y_t|| of the seed loop from y_0 = initial_point(x), up to the first t
    with r_t and r_{t-1} both <= tol (so that the last step of an unrolled graph of depth T = len(result)
    starts from a point as converged as its end), or MAX_ITER of them."""
    f = fixed_map(layer, x)
    history: list[float] = []
    with torch.no_grad():
        y = layer.initial_point(x)
        while len(history) < MAX_ITER and not (len(history) >= 2 and max(history[-2:]) <= tol):
            y_next = f(y)
            history.append(float((y_next - y).flatten(1).norm(dim=1).max()))
            y = y_next
    return history


def start_sensitivity(layer: FixedPointLayer, x: Tensor, v: Tensor, T: int) -> float:
    """||dL/dy0|| / ||v|| for L = <v, g(y_T, x)> after T steps of the seed loop from the layer's own start, by plain
    autograd through f (not iqa.grad): what of the start the unrolled gradient still carries, where the implicit
    one carries none. ~rho^T in the linear regime; far more where the path's Jacobians amplify before it settles
    (found on slot attention at D = 3, rho(J*) 0.81: a transient of ~50 steps with residuals ~1 left 2e-9 relative
    at T = 188 and 4e-14 at 1.5 T, while rho^T and r_(T-1) / r_0 were ~1e-17 and ~1e-14)."""
    f = fixed_map(layer, x)
    y0 = layer.initial_point(x).detach().requires_grad_(True)
    with torch.enable_grad():
        y = y0
        for _ in range(T):
            y = f(y)
        (dy0,) = torch.autograd.grad((v * layer.readout(y, x.detach())).sum(), y0)
    return float(dy0.norm() / v.norm())


def path_terms(layer: FixedPointLayer, x: Tensor, an: Analysis, history: list[float], v: Tensor) -> tuple[float, float]:
    """What the unrolled gradient owes to the path, for dL/dtheta and dL/dx: it weighs each step's own
    df/d(theta, x) at y_t where the implicit one has it at y*, a term sum_t ||df(y_t) - df(y*)|| ||g_t|| with
    g_t = J(y_{t+1})^T ... J(y_{T-1})^T v. In the linear regime ||df(y_t) - df(y*)|| ~ L r_t and
    ||g_t|| <= G rho^(T-1-t) ||v|| (G = max_k ||J*^k|| / rho^k), so every step contributes alike and the term is
    G L ||v|| sum_t r_t rho^(T-1-t). L is measured on this path: the largest ratio over every iterate where r_t
    stands far above rounding. (Sampled at four iterates it fell short of that maximum by up to 2.7x on ci draws,
    and a hopfield draw that target() pushed to the edge exceeded a budget built on it by 2%: the ratio peaks in
    the first steps, where the iterates move most, or at the last ones, where the error lines up with the
    slowest mode.)"""
    T = len(history)
    rho = float(an.rho.max())
    f = fixed_map(layer, x)
    sampled = {}
    with torch.no_grad():
        y = layer.initial_point(x)
        for t in range(T):
            if history[t] > 1e6 * eps(F64) * float(y.abs().max()):  # r_t far above its rounding
                sampled[t] = y
            y = f(y)
    ratios_w, ratios_x = [0.0], [0.0]
    for t, (dtheta, dx) in zip(sampled, map_jacobians_along(layer, x, list(sampled.values()))):
        ratios_w.append(float(torch.linalg.matrix_norm(dtheta - an.dtheta, 2)) / history[t])
        ratios_x.append(float(torch.linalg.matrix_norm(dx - an.dx, 2)) / history[t])
    norms = matrix_power_norms(an.J.to(F64).cpu(), T - 1 if rho > 0 else 0).amax(dim=-1).tolist()
    G = max(norm / rho**k for k, norm in enumerate(norms))
    weighted = sum(r * rho ** (T - 1 - t) for t, r in enumerate(history)) * G * float(v.norm())
    return max(ratios_w) * weighted, max(ratios_x) * weighted


def converged_depth(layer: FixedPointLayer, x: Tensor, tol: float = TOL64) -> int:
    return len(seed_residuals(layer, x, tol))


@requires(Tag.WEIGHT_DEPENDENT)
@requires_share(BAND_LABEL, HARD_SHARE)
@given(case=small_cases, hard=hard_draws)
def test_implicit_matches_unrolled(variant: Variant, case: Case, hard: bool, device) -> None:
    """Implicit vs the seed loop unrolled for T steps (T: converged to TOL64): equal within
    cond T rho^T (truncation) + what moving from one y* to the other changes + the adjoint budget + what each
    unrolled step's own df/d(theta, x) at y_t adds (:func:`path_terms`). The implicit
    layer solves by Picard from the same start, so both follow the same iterates to the same branch. Half the
    examples in the hard band rho(J*) in [0.7, 0.97], where T is hundreds of steps (the rho^T budget)."""
    case = drawn(case, variant, hard)
    layer, x = solved(case, variant, device, solver="picard")
    v = cotangent(case, device, layer=layer)
    implicit = layer_grads(layer, x, v)
    history = seed_residuals(layer, x)
    T = len(history)
    require(T < MAX_ITER, f"the seed loop converges within {MAX_ITER} steps")
    unrolled_layer = case.layer(variant, device, n_iters=T)
    unrolled = layer_grads(unrolled_layer, x, v)
    solution = layer.last_solution
    assert solution is not None
    with torch.no_grad():
        y_T = unrolled_layer.solve_state(x)  # the state after T steps (the output is its readout)
    assert isinstance(y_T, Tensor)
    an = analyse(layer, x, solution.y, v)
    an_T = analyse(layer, x, y_T, v)
    rho = float(an.rho.max())
    note(f"{an.describe()}; unrolled steps T = {T}")
    # Same branch: per element, two points with residuals r1, r2 near one fixed point are within cond (r1 + r2),
    # plus the rounding of f (n eps max|x|).
    distance = float((y_T - solution.y).norm())
    per_element = an.cond * (an.residual + an_T.residual) + an.n * eps(F64) * float(x.abs().max())
    same_branch = float(per_element.norm())
    assert distance <= same_branch, f"unrolled and implicit reached different fixed points ({distance:.2e} apart)"
    # The unrolled gradient truncates sum_i (J^T)^i v after T terms, and each of its T factors J(y_t) is off by
    # ~||y_t - y*||: ~T x (how far the iteration got: rho^T, or r_{T-1} / r_0 with transients, or what of the start
    # the unrolled gradient still carries where the path's Jacobians amplify) relative, times cond.
    # The two y* differ by the forward residuals; the dense reference taken at both measures what that moves the
    # gradient. Then the adjoint error and rounding.
    progress = max(rho**T, max(history[-2:]) / history[0], start_sensitivity(layer, x, v, T))
    adjoint = adjoint_budget(an, adjoint_tol_of(layer))
    relative = an.worst_cond * T * progress + adjoint + an.worst_cond * T * an.n * eps(F64)
    floor = floor_of(x, v)
    moved_w = float((an.reference.weights - an_T.reference.weights).norm())
    moved_x = float((an.reference.x - an_T.reference.x).norm())
    # and the path: each unrolled step weighs df/d(theta, x) at its own y_t (path_terms)
    path_w, path_x = path_terms(layer, x, an, history, v)
    budget_w = float(an.scale_weights) * relative + moved_w + path_w
    budget_x = float(an.scale_x) * relative + moved_x + path_x
    assert_close(unrolled.weights, implicit.weights, budget_w, floor, "dL/dW unrolled vs implicit")
    assert_close(unrolled.x, implicit.x, budget_x, floor, "dL/dx unrolled vs implicit")


#: Weight scales where rho(J*) is moderate, so that the unrolled error decays over several steps.
#: One batch element: with several, each decays at its own rho and the slowest shows only at the end.
rate_cases = cases(
    batch=(1, 1),
    tokens=(2, 4),
    dim=(1, 4),
    dtypes=(F64,),
    scales=st.floats(1.0, 2.0),
    max_elements=WEIGHT_JACOBIAN_ELEMENTS,
)
#: The rate check uses T where the error is this far above the noise (the reference's own error budget).
SIGNAL_OVER_NOISE = 100.0
#: A complex dominant pair makes e_T oscillate within its envelope; allow the envelope this factor of wobble.
OSCILLATION = 10.0
#: The rate check needs rho(J*) at least this: 13 decades / log10(1 / 0.1) = 13 steps of asymptotic decay.
RATE_RHO_MIN = 0.1
#: The phantom check needs rho(J*) at least this: below it the phantom error is a few ulps of gradients whose
#: terms cancel, and the slack (rounding relative to ||df/dtheta|| ||g||) no longer bounds that cancellation.
PHANTOM_RHO_MIN = 0.05
#: Weight scales up to 2, where rho(J*) mostly clears PHANTOM_RHO_MIN (injection contracts hard below 1).
phantom_cases = cases(
    batch=(1, 2),
    tokens=(2, 4),
    dim=(1, 4),
    dtypes=(F64,),
    scales=st.floats(0.5, 2.0),
    max_elements=WEIGHT_JACOBIAN_ELEMENTS,
)
#: The phantom check's forward tolerance: near float64's rounding floor for these small shapes (N, D <= 4, |x| ~ 1).
PHANTOM_TOL = 1e-15


@requires(Tag.WEIGHT_DEPENDENT)
@given(case=rate_cases)
def test_unrolled_error_falls_at_rate_rho(variant: Variant, case: Case, device) -> None:
    """e_T = ||grad unrolled-T - grad implicit|| falls like C(T) rho^T with C of low degree: the slope of
    log e_T over the asymptotic window matches log rho(J*). Picard from the seed's start: the same branch."""
    layer, x = solved(case, variant, device, solver="picard")
    v = cotangent(case, device, layer=layer)
    an = analyse_solved(layer, x, v)
    rho = float(an.rho.max())
    event(f"rho in [{math.floor(rho * 5) / 5:.1f}, {math.floor(rho * 5) / 5 + 0.2:.1f})")
    note(an.describe())
    require(rho >= RATE_RHO_MIN, f"rho(J*) >= {RATE_RHO_MIN}", rho=rho)  # checked first: no floor is tested for it
    reference = an.reference.weights
    floor = floor_of(x, v)
    ref_norm = float(torch.linalg.vector_norm(reference))
    assert ref_norm >= floor, f"reference weight gradient {ref_norm:.3e} below the floor {floor:.3e}"
    noise = ref_norm * adjoint_budget(an, adjoint_tol_of(layer))
    # Two errors above SIGNAL_OVER_NOISE x noise need rho >= SIGNAL_OVER_NOISE x noise / ||ref||; rho <= 0.8 keeps
    # the depth (log(TOL64) / log(rho) ~ 134 steps) affordable.
    # Below RATE_RHO_MIN the error falls through the ~13 decades above rounding in a handful of steps, all of
    # them in the forward's nonlinear transient, where C(T) is not yet of low degree: no asymptotic slope to fit.
    low = max(RATE_RHO_MIN, SIGNAL_OVER_NOISE * noise / ref_norm)
    require(low <= rho <= 0.8, "rho(J*) in [max(0.1, 100 x the noise), 0.8]", rho=rho)
    # Past the depth where the seed loop has converged, e_T sits at the noise; a few steps more show the floor.
    t_max = converged_depth(layer, x) + 5
    require(t_max <= MAX_ITER, f"the seed loop converges within {MAX_ITER} steps", rho=rho)
    stride = max(1, t_max // 15)
    errors: dict[int, float] = {}
    for T in range(1, t_max + 1, stride):
        unrolled = case.layer(variant, device, n_iters=T)
        errors[T] = float(torch.linalg.vector_norm(layer_grads(unrolled, x, v).weights - reference))
    steps = sorted(errors)
    # The unrolled gradient rounds too (T chained VJPs): past the converged depth e_T sits on that floor, so the
    # noise is the larger of the reference's budget and the measured plateau at t_max.
    noise = max(noise, errors[steps[-1]])
    # Envelope from the right removes the dips of an oscillating error; keep T well above the noise.
    envelope = {T: max(errors[s] for s in steps if s >= T) for T in steps}
    window = [T for T in steps if envelope[T] >= SIGNAL_OVER_NOISE * noise]
    note(f"e_T: {[(T, f'{errors[T]:.1e}') for T in steps]}; noise {noise:.1e}; window {window}")
    assert window, "the unrolled error never rose above the noise: unrolled equals implicit at T = 1?"
    # One point above the noise: the error fell through it in one step (rho tiny), too few points to fit a rate.
    require(len(window) >= 2, "two or more depths with the error above the noise", rho=rho)
    # The local rate holds once the iterates are near y*: past the error's peak (a transient may first grow),
    # fit the later half of the window (>= 3 points where there are).
    peak = max(steps, key=lambda T: errors[T])
    after = [T for T in window if peak <= T]
    assert len(after) >= 2, f"the unrolled error peaks at T = {peak} and never falls above the noise"
    tail = after[min(len(after) // 2, max(0, len(after) - 3)) :]
    ts = torch.tensor(tail, dtype=F64)
    logs = torch.tensor([math.log(envelope[T]) for T in tail], dtype=F64)
    slope = float(((ts - ts.mean()) * (logs - logs.mean())).sum() / ((ts - ts.mean()) ** 2).sum())
    t1, t2 = tail[0], tail[-1]
    # log C(T) grows by at most degree 2 x log(t2/t1) over the window (Neumann truncation x forward error), and
    # wobbles by at most log(OSCILLATION): the slope may exceed log rho by their sum over t2 - t1, fall short by
    # the wobble alone.
    # C(T) may also fall like T^-2 (a subdominant mode decaying out of the window): the same allowance below.
    upper = math.log(rho) + (2 * math.log(t2 / t1) + math.log(OSCILLATION)) / (t2 - t1)
    lower = math.log(rho) - (2 * math.log(t2 / t1) + math.log(OSCILLATION)) / (t2 - t1)
    note(
        f"fitted rate {math.exp(slope):.4f} on T in [{t1}, {t2}]; rho {rho:.4f}; allowed "
        f"[{math.exp(lower):.4f}, {math.exp(upper):.4f}]"
    )
    assert slope <= upper, f"unrolled error falls at rate {math.exp(slope):.4f}, slower than rho(J*) = {rho:.4f}"
    # Faster than rho: the error is a sum of modes, each falling at its own |lambda| of J* (J* is block diagonal
    # over the batch, and over the tokens where queries come from y alone), and a subdominant mode with a larger
    # coefficient can hold the whole window before the dominant one takes over below the noise (found on
    # thorough, multihead: 0.075 a step with rho 0.196). So the rate must still be some eigenvalue's modulus.
    moduli = torch.linalg.eigvals(an.J).abs().flatten()
    margin = upper - math.log(rho)
    nearest = float((torch.log(moduli.clamp_min(torch.finfo(F64).tiny)) - slope).abs().min())
    assert slope >= lower or nearest <= margin, (
        f"unrolled error falls at rate {math.exp(slope):.4f}, faster than rho(J*) = {rho:.4f} and at no "
        f"eigenvalue's modulus (nearest log-distance {nearest:.3f} > {margin:.3f})"
    )


# ---------------------------------------------------------------------------------------------------------------
# finite differences, phantom, float32
# ---------------------------------------------------------------------------------------------------------------


#: The perturbed solves' absolute stop, 10x below TOL64 so that their error stays below the forward's.
FD_TOL = TOL64 / 10
#: A perturbed solve may stall at its residual's rounding floor a little above FD_TOL (seen: 1.9e-14 and 1.6e-13 at
#: rho(J*) 0.77-0.83, ||y|| 2-10); the budget then uses the residual it reached, which must stay below this.
FD_RESIDUAL_LIMIT = 1e-10


def perturbed_loss(
    layer: FixedPointLayer, x: Tensor, v: Tensor, y_start: Tensor, directions: list[Tensor], dx: Tensor, h: float
) -> tuple[float, Solution]:
    """<v, g(y*(theta + h d, x + h dx), x + h dx)> (g the readout, at the perturbed weights too), solved warm
    from y_start (the unperturbed y*: the same branch)."""
    from iqa.solvers import solve

    params = list(layer.parameters())
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(d, alpha=h)
        try:
            f = layer.fixed_point_map(x + h * dx)
            # Picard, warm from y*: a contraction at rate rho < 1 reaches FD_TOL in log(FD_TOL / r0) / log(rho)
            # steps, while Anderson's least-squares step can stall at this tol's rounding floor (|y| ~ 4, n = 2).
            solution = solve(f, y_start, "picard", tol=FD_TOL, max_iter=MAX_ITER)
            loss = float((v * layer.readout(solution.y, x + h * dx)).sum())
        finally:
            for p, d in zip(params, directions):
                p.sub_(d, alpha=h)
    return loss, solution


def probe_direction(reference: Tensor, generator: torch.Generator, floor: float, what: str) -> Tensor:
    """The unit direction (2 u + r) / ||2 u + r||, u = reference / ||reference||, r a random unit vector: since
    <u, r> >= -1 and ||2 u + r|| <= 3, <reference, d> >= ||reference|| / 3, so a difference along d carries a
    third of the gradient (a random direction's share, ~||reference|| / sqrt(p), can vanish), while r still
    probes errors off the reference's direction. A reference below ``floor`` fails: nothing to probe."""
    ref_norm = float(torch.linalg.vector_norm(reference))
    assert ref_norm >= floor, f"{what}: reference norm {ref_norm:.3e} is below the floor {floor:.3e}; nothing to probe"
    r = torch.randn(reference.shape, dtype=F64, generator=generator).to(reference.device)
    d = 2 * reference / ref_norm + r / torch.linalg.vector_norm(r)
    return d / torch.linalg.vector_norm(d)


def check_central_difference(
    layer: FixedPointLayer,
    x: Tensor,
    v: Tensor,
    an: Analysis,
    directions: list[Tensor],
    dx: Tensor,
    analytic: float,
    gradient_error: float,
    what: str,
) -> None:
    """analytic (= <gradient, (directions, dx)>, a unit direction) against the central difference
    (L(+h) - L(-h)) / 2h, with Richardson's estimate of the difference's own truncation error; ``gradient_error``
    bounds ||gradient - exact|| (so |analytic - exact| too)."""
    h = eps(F64) ** (1 / 3)  # balances the O(h^2) truncation against the O(eps / h) rounding of a central difference

    reached = [FD_TOL]  # the largest residual a perturbed solve stopped at

    def central(step: float) -> float:
        plus, s_plus = perturbed_loss(layer, x, v, an.y, directions, dx, step)
        minus, s_minus = perturbed_loss(layer, x, v, an.y, directions, dx, -step)
        for s in (s_plus, s_minus):
            residual = float(s.residual.max())
            assert s.converged or residual <= FD_RESIDUAL_LIMIT, (
                f"{what}: a perturbed solve did not converge ({s.status.name}, residual {residual:.2e})"
            )
            reached.append(residual)
        return (plus - minus) / (2 * step)

    d_h, d_2h = central(h), central(2 * h)
    with torch.no_grad():
        loss_scale = float((v.abs() * layer.readout(an.y, x).abs()).sum())
    # L sums v.numel() products (v.numel() eps sum|v y|); each solve's y is within cond sqrt(B) r of its y*, r the
    # residual it stopped at (FD_TOL, or the rounding floor it stalled at just above it).
    error_L = v.numel() * eps(F64) * loss_scale + an.worst_cond * math.sqrt(v.shape[0]) * max(reached) * float(v.norm())
    rounding = error_L / h  # two losses, each off by error_L, over 2h
    truncation = abs(d_2h - d_h) / 3 + 2 * rounding  # Richardson: D(2h) - D(h) = 3 c h^2 + rounding of both
    tolerance = truncation + rounding + gradient_error
    note(f"{what}: analytic {analytic:.12e}, D(h) {d_h:.12e}, D(2h) {d_2h:.12e}, tolerance {tolerance:.2e}")
    assert abs(d_h - analytic) <= tolerance, f"{what}: analytic {analytic:.12e} vs central difference {d_h:.12e}"


@requires(Tag.WEIGHT_DEPENDENT)
@requires_share(BAND_LABEL, HARD_SHARE)
@given(case=small_cases, hard=hard_draws)
def test_implicit_matches_finite_differences(variant: Variant, case: Case, hard: bool, device) -> None:
    """The weight part and the x part of the implicit gradient, each on its own, against central differences
    along a unit direction of that part alone (:func:`probe_direction`: leaning on the dense reference, whose
    norm must clear the floor, so that each difference carries at least a third of that part's gradient).
    Half the examples in the hard band rho(J*) in [0.7, 0.97]."""
    case = drawn(case, variant, hard)
    layer, x = solved(case, variant, device)
    v = cotangent(case, device, layer=layer)
    grads = layer_grads(layer, x, v)
    an = analyse_solved(layer, x, v)
    note(an.describe())
    params = list(layer.parameters())
    budget, floor = adjoint_budget(an, adjoint_tol_of(layer)), floor_of(x, v)
    generator = case.generator(3)
    d_w = probe_direction(an.reference.weights, generator, floor, "dL/dW")
    directions = [d.view_as(p) for d, p in zip(d_w.split([p.numel() for p in params]), params)]
    zero_w, zero_x = [torch.zeros_like(p) for p in params], torch.zeros_like(x)
    # ||dL/dW - exact|| <= scale_weights x the adjoint's relative error, the same for x (Analysis.scale_*).
    w_error, x_error = an.scale_weights * budget, an.scale_x * budget
    analytic_w = float(grads.weights @ d_w)
    check_central_difference(layer, x, v, an, directions, zero_x, analytic_w, w_error, "dL/dW")
    d_x = probe_direction(an.reference.x, generator, floor, "dL/dx")
    analytic_x = float((grads.x * d_x).sum())
    check_central_difference(layer, x, v, an, zero_w, d_x, analytic_x, x_error, "dL/dx")


@requires(Tag.WEIGHT_DEPENDENT)
@given(case=phantom_cases, k=st.integers(1, 4), damping=st.sampled_from([1.0, 0.5]))
def test_phantom_error_within_bound(variant: Variant, case: Case, k: int, damping: float, device) -> None:
    """Phantom(k, lam) computes v^T lam sum_{i<k} B^i df/dtheta with B = (1 - lam) I + lam J*, so its error
    is exactly -e^T df/dtheta, e = (B^T)^k g, and ||error|| <= ||df/dtheta||_2 ||e||."""
    # The k phantom steps start from y*, whose residual r moves them (measured: the identity below is off by
    # ~0.6 r at r = 1e-13, ~1e-16 at r = 1e-16), so this property solves to PHANTOM_TOL, 100x below TOL64.
    # The adjoint keeps TOL64 (a relative 1e-15 is not always reachable; the slack below budgets TOL64).
    layer, x = solved(case, variant, device, tol=PHANTOM_TOL, adjoint=AdjointOptions(tol=TOL64))
    v = cotangent(case, device, layer=layer)
    implicit = layer_grads(layer, x, v).weights
    phantom_layer = case.layer(
        variant,
        device,
        backward="phantom",
        phantom_steps=k,
        phantom_damping=damping,
        **solve_options(tol=PHANTOM_TOL),
    )
    phantom = layer_grads(phantom_layer, x, v).weights
    an = analyse_solved(layer, x, v)
    require(float(an.rho.max()) >= PHANTOM_RHO_MIN, f"rho(J*) >= {PHANTOM_RHO_MIN}", rho=float(an.rho.max()))
    eye = torch.eye(an.n, dtype=F64, device=an.J.device)
    B_T = ((1 - damping) * eye + damping * an.J).transpose(1, 2)
    e = (torch.linalg.matrix_power(B_T, k) @ an.g.flatten(1).unsqueeze(-1)).reshape(an.y.shape)
    predicted = pullback(layer, x, an.y, e).weights
    bound = float(torch.linalg.matrix_norm(an.dtheta, ord=2)) * float(e.norm())
    error = phantom - implicit
    # Both gradients and the prediction are taken at the same y*; what is left is the implicit one's adjoint error,
    # the forward's (y* to TOL64, amplified by cond like the adjoint's: a second budget) and rounding (the phantom's
    # k steps round like k more terms of the adjoint, the two pullbacks like 2 more).
    slack = float(an.scale_weights) * (2 * adjoint_budget(an, TOL64) + an.worst_cond * (k + 2) * an.n * eps(F64))
    note(f"{an.describe()}; ||error|| {float(error.norm()):.3e}, bound {bound:.3e}, slack {slack:.1e}")
    assert float(error.norm()) <= bound + slack, (
        f"phantom error {float(error.norm()):.3e} exceeds ||df/dtheta|| ||(B^T)^k g|| {bound:.3e} + {slack:.1e}"
    )
    # The identity is checked against the dense reference gradient (independent of iqa.grad's hook), so no error
    # of the implicit gradient can widen or narrow it: what is left is rounding and the forward's residual.
    mismatch = float((phantom - an.reference.weights + predicted).norm())
    assert mismatch <= slack, f"the phantom error is not -(B^T)^k g df/dtheta: off by {mismatch:.2e} > {slack:.2e}"


def round_to_float32(layer: FixedPointLayer) -> None:
    """Round every floating parameter and buffer to float32 and back, in place: the float32 copy of the layer
    is then exactly the float64 one, so the float64 reference sees the very problem float32 solves."""
    with torch.no_grad():
        for t in [*layer.parameters(), *layer.buffers()]:
            if t.is_floating_point():
                t.copy_(t.to(F32).to(t.dtype))


#: The float32 error's sources, each bounded by cond m eps32 (1 + ||J||) relative: the forward's stop (relative
#: n eps32: y* moves by cond n eps32 ||y*||, which moves J* and df/dtheta), the adjoint's stop (relative n eps32,
#: amplified by cond (1 + ||J||), adjoint_budget), the rounding of its products J^T g (m eps32 each, amplified alike)
#: and of the final pullback g^T df/dtheta (m eps32); m = max(n, rounding_chain(x)).
F32_SOURCES = 4


def rounding_chain(x: Tensor) -> int:
    """How many roundings one pullback through f chains at most, as iqa.analysis.rounding counts them for J:
    the scores' D-term sums, exp and the N-term normalisation, the N-term weighted sum, both ways (2N + 2D + 8).
    For tiny states it exceeds n = N D (found on thorough, hopfield N = 2, D = 1, rho 0: dL/dW error 4.3e-9 against
    a bound of 1.8e-9 counted with n = 2)."""
    return 2 * x.shape[-2] + 2 * x.shape[-1] + 8


def mixed_derivative_norm(layer: FixedPointLayer, x: Tensor, y: Tensor, g: Tensor) -> float:
    """||d/dy (g^T df(y; x)/dtheta)||_2 at y, dense (float64 autograd, a double backward): how fast the weight
    gradient's pullback moves when the point it is taken at moves."""
    params = list(layer.parameters())
    f = layer.fixed_point_map(x.detach())

    def pullback_at(z: Tensor) -> Tensor:
        grads = torch.autograd.grad(f(z), params, g.detach(), create_graph=True, materialize_grads=True)
        return torch.cat([t.flatten() for t in grads])

    with torch.enable_grad():
        M = torch.autograd.functional.jacobian(pullback_at, y.detach().clone())
    return float(torch.linalg.matrix_norm(M.reshape(M.shape[0], -1), ord=2))


def require_same_fixed_point(layer: FixedPointLayer, x: Tensor, an: Analysis, solution32: Solution) -> None:
    """Reject the draw (reason recorded) where the float32 solve converged to another fixed point than y*: then the
    two gradients are of two different problems. Near y*, f(y) - y = (J* - I)(y - y*) + O(||y - y*||^2), so a point
    of float64 residual r is within cond r of y* (cond = ||(I - J*)^-1||_2); y32 and y* within cond (r32 + r64),
    doubled for the second-order rest. A y32 farther than that whose own float64 residual is at float32's rounding
    (its stop n eps32 ||y|| plus f's rounding, n eps32 ||f(y)||: F32_SOURCES n eps32 ||y32||) is another fixed point
    (deq-post, seed 10958: 2.78 away, rho 0.986 there against 0.81 at y*). One that is not, the float32 solve
    called converged wrongly: it is left to the comparisons below, which fail it."""
    f = fixed_map(layer, x)
    y32 = solution32.y.detach().to(F64)
    with torch.no_grad():
        r32 = torch.linalg.vector_norm((f(y32) - y32).flatten(1), dim=1)
    distance = torch.linalg.vector_norm((y32 - an.y).flatten(1), dim=1)
    same = 2 * an.cond * (r32 + an.residual)
    rounding = F32_SOURCES * an.n * eps(F32) * torch.linalg.vector_norm(y32.flatten(1), dim=1)
    other = (distance > same) & (r32 <= rounding)
    note(f"||y32 - y64|| {distance.tolist()}, same-point bound {same.tolist()}, float64 residual of y32 {r32.tolist()}")
    event(f"float32 reached another fixed point: {bool(other.any())}")
    if bool(other.any()):
        reject(
            "the float32 solve reached another fixed point than the float64 one",
            solver=solver_name(solution32),
            status=solution32.status.value,
            rho=float(spectral_radius(f, y32).max()),
        )


@requires(Tag.WEIGHT_DEPENDENT)
@given(case=small_cases)
def test_float32_gradients_match_float64(variant: Variant, case: Case, device) -> None:
    """The implicit gradient computed in float32 equals the independent dense float64 reference g^T df/dtheta
    (g from a dense solve of (I - J*^T) g = v, no iqa.grad) of the same problem (weights and x rounded to
    float32, so the two solve the same equation), within F32_SOURCES cond m eps32 (1 + ||J||) (max|x| / diam)^2
    relative to ||df/dtheta|| ||g||, plus the float32 fixed point's offset; and within issue 3's target F32_REL_TOL
    relative."""
    layer = case.layer(variant, device, backward="implicit", **solve_options())
    round_to_float32(layer)
    x = case.inputs(device).to(F32).to(F64)
    with torch.no_grad():
        layer(x)
    solution = layer.last_solution
    assert solution is not None
    event(f"forward {solution.status.name}")
    f = fixed_map(layer, x)
    require_converged(solution, f, case.scale)
    rho = float(spectral_radius(f, solution.y).max())
    if not rho < 1:  # the implicit gradient is defined at a locally stable fixed point (properties.fixed_points)
        reject("no locally stable fixed point (rho(J*) >= 1)", rho=rho, scale=case.scale, convergence=True)
    gap = float(saturation_gap(f, solution.y).max())
    require(not gap <= SATURATION_GAP, f"attention not saturated (1 - max_j p_ij > {SATURATION_GAP:g})")
    v = cotangent(case, device, layer=layer).to(F32).to(F64)
    an = analyse_solved(layer, x, v)
    n = an.n
    layer32 = copy.deepcopy(layer).to(F32)
    # Relative stop at n eps32: the rounding level of f(y) (sums of n terms), reachable in float32.
    layer32.stop, layer32.tol = "rel", n * eps(F32)
    with torch.no_grad():  # the forward first: a gradient at a float32 solve that did not converge would warn
        layer32(x.to(F32))
    solution32 = layer32.last_solution
    assert solution32 is not None
    note(f"{an.describe()}; float32 forward {solution32.status.name}, residual {float(solution32.residual.max()):.2e}")
    if not solution32.converged:  # a float32 forward that stalls above n eps32 has no fixed point to compare at
        reject(
            "the float32 solve stalled above its rounding-level stop",
            solver=solver_name(solution32),
            status=solution32.status.value,
            scale=case.scale,
        )
    require_same_fixed_point(layer, x, an, solution32)  # a multistable map: float32 may reach another fixed point
    grads32 = layer_grads(layer32, x.to(F32), v.to(F32))  # the same solve again (deterministic), now recorded
    chain = max(n, rounding_chain(x))
    # float32 resolves the gradient only to ~chain eps32 of the terms it combines (g times x, in products of x): a
    # gradient below that is cancellation at float32's rounding level, nothing to compare (found on thorough,
    # hopfield N = 2, D = 1 with x_1 - x_2 = 2e-3: dL/dW 1.3e-7 with a 2.4% float32 error).
    x_max = float(x.abs().max())
    resolution = chain * eps(F32) * float(an.g.norm()) * x_max * max(1.0, x_max)
    smallest = min(float(an.reference.weights.norm()), float(an.reference.x.norm()))
    require(smallest > resolution, "gradients above float32's resolution of their terms (chain eps32 ||g|| max|x|)")
    # Attention sees the tokens through their differences (softmax is shift-invariant, and its pullback weighs
    # x_j - sum_k p_k x_k), twice in a weight derivative (scores, then values): the derivative is ~diam^2 while
    # its terms round at ~max||x_i||^2, so the pullback's rounding is (max||x_i|| / diam(x))^2 times its result
    # (gradient_reference.token_spread, max||x_i|| / diam; hopfield N = 2, D = 1, spread 27: 1.09x the bound with the
    # factor to the first power). Where that alone exceeds issue 3's target, float32 cannot resolve the problem.
    spread = float(token_spread(x).max())
    require(
        spread**2 * chain * eps(F32) <= F32_REL_TOL,
        "tokens spread enough for float32 to resolve their differences ((max||x_i|| / diam(x))^2 chain eps32 <= 1e-3)",
    )
    relative = F32_SOURCES * float((an.cond * chain * eps(F32) * (1 + torch.linalg.matrix_norm(an.J, ord=2))).max())
    relative *= max(1.0, spread) ** 2
    floor = floor_of(x, v)
    # The float32 fixed point sits up to cond chain eps32 times the size of f's terms from y* (its stop and f's
    # rounding, then the conditioning), and g^T df/dtheta moves with y by the mixed derivative d/dy (g^T df/dtheta):
    # near uniform attention df/dtheta is small while that derivative is not (found on causal, N = 2, D = 1,
    # p = (0.498, 0.502): 3x the budget without it). f sums the values p_ij x_j, so its terms are ~||x|| even where
    # they cancel to a small y* (hopfield, N = 2, D = 1, opposite tokens: ||y*|| = 5.6e-4, ||x|| = 0.91, y32 2.8e-8
    # from y*, 8x an offset sized by ||y*||).
    size = max(float(solution.y.norm()), float(x.norm()))
    offset = F32_SOURCES * float((an.cond * chain * eps(F32)).max()) * size
    budget_w = an.scale_weights * relative + mixed_derivative_norm(layer, x, solution.y, an.g) * offset
    budget_x = an.scale_x * relative
    assert_close(grads32.weights, an.reference.weights, budget_w, floor, "dL/dW float32 vs dense float64")
    assert_close(grads32.x, an.reference.x, budget_x, floor, "dL/dx float32 vs dense float64")
    # Issue 3's target, where the derived bound says float32 can meet it (near cancellation it cannot: found on
    # thorough, hopfield N = 2, D = 1, dL/dW 1.4e-5 with a float32 error of 1.05e-3 relative, inside its bound).
    for label, ours, reference, budget in (
        ("dL/dW", grads32.weights, an.reference.weights, budget_w),
        ("dL/dx", grads32.x, an.reference.x, budget_x),
    ):
        if reached(f"{label}: float32 bound within issue 3's target", budget <= F32_REL_TOL * float(reference.norm())):
            assert rel_err(ours, reference, floor, f"{label} float32") <= F32_REL_TOL, f"{label}: issue 3 target"


# ---------------------------------------------------------------------------------------------------------------
# exact structure: linearity in the loss, y0 drops out, the consensus layer
# ---------------------------------------------------------------------------------------------------------------


#: Loss scales near float64's ends (~1e-289 and ~1e289, powers of two so that dividing by them is exact): there
#: ||alpha v|| underflows to 0 or overflows to inf in torch's vector_norm (no rescaling inside), so the relative
#: adjoint stop is meaningless unless the hook rescales v; 2^-960 leaves the gradients (~alpha) clear of subnormals
#: and 2^960 leaves 1e19 of headroom below float64's largest value.
EXTREME_LOSS_SCALES = (2.0**-960, 2.0**960)


@given(
    case=small_cases,
    alpha=st.one_of(st.sampled_from((1e-12, 1e12)), st.floats(1e-3, 1e3)),
    extreme=st.sampled_from(EXTREME_LOSS_SCALES),
)
def test_gradient_is_linear_in_the_loss(variant: Variant, case: Case, alpha: float, extreme: float, device) -> None:
    """grad(alpha L) / alpha equals the dense reference gradient of L (not the hook's own grad L: the hook
    compared with itself would pass any wrong but linear adjoint), for a drawn alpha from 1e-12 to 1e12 and, in
    every example, at 2^-960 or 2^960, where the relative adjoint stop meets the solver's absolute floors, or
    ||alpha v|| under- or overflows, unless the hook rescales v."""
    layer, x = solved(case, variant, device)
    v = cotangent(case, device, layer=layer)
    an = analyse_solved(layer, x, v)
    reference = torch.cat([an.reference.weights, an.reference.x.flatten()])
    # The adjoint solve is within the adjoint budget of the exact (linear) answer; dividing by alpha is one rounding.
    budget = float(an.scale_all) * (adjoint_budget(an, adjoint_tol_of(layer)) + eps(F64))
    event(f"extreme loss scale 2^{math.frexp(extreme)[1] - 1}")
    for scale in (alpha, extreme):
        scaled = layer_grads(layer, x, scale * v).all
        assert bool(torch.isfinite(scaled).all()), f"grad({scale:g} L) is not finite"
        label = f"grad({scale:g} L) / {scale:g} vs dense grad L"
        assert_close(scaled / scale, reference, budget, floor_of(x, v), label)


@given(case=small_cases, backward=st.sampled_from(["implicit", "phantom", "unrolled"]))
def test_zero_cotangent_gives_zero_gradient(variant: Variant, case: Case, backward: str, device) -> None:
    """A loss that ignores y*: every gradient is exactly zero and finite, and the adjoint solve converged."""
    layer = case.layer(variant, device, backward=backward, **solve_options())
    x = case.inputs(device)
    with torch.no_grad():
        layer(x)
    assert layer.last_solution is not None
    require_converged(layer.last_solution, fixed_map(layer, x), case.scale)
    grads = layer_grads(layer, x, torch.zeros(output_shape(layer, x), dtype=case.dtype, device=device)).all
    assert bool((grads == 0).all())
    if backward == "implicit":
        adjoint = layer.last_backward_solution
        assert adjoint is not None and adjoint.converged


@requires(Tag.WEIGHT_DEPENDENT)
@given(case=small_cases, spread=st.sampled_from([1e-3, 1e-1]))
def test_gradient_does_not_depend_on_y0(variant: Variant, case: Case, spread: float, device) -> None:
    """y0 only picks the branch: started from the layer's own y0 and from a perturbation of y* (the same
    branch), the implicit gradient is the dense reference at that branch both times, and none of it reaches y0
    (zero, not absent: y0 requires grad). A hook that used y0 (or the start's own f(y0)) in place of y* fails the
    first part. The loss is on the layer's output, its readout g(y*, x)."""
    from iqa import fixed_point

    layer, x = solved(case, variant, device)
    v = cotangent(case, device, layer=layer)
    an = analyse_solved(layer, x, v)
    noise = torch.randn(an.y.shape, dtype=F64, generator=case.generator(5)).to(an.y)
    floor = floor_of(x, v)
    params = list(layer.parameters())
    for label, start in (("from y0", layer.initial_point(x)), ("near y*", an.y + spread * noise)):
        y0 = start.detach().clone().requires_grad_(True)
        y = fixed_point(layer.fixed_point_map(x), y0, "implicit", method="anderson", tol=TOL64, max_iter=MAX_ITER)
        distance = float((y.detach() - an.y).norm())
        same_branch = float((an.cond * (an.residual + TOL64)).norm()) * 2
        note(f"{label}: ||y* - y*_layer|| = {distance:.2e}")
        # this start reached the layer's branch (a perturbation may leave it)
        require(distance <= same_branch, "a start near y* that stays on its branch")
        grads = torch.autograd.grad((v * layer.readout(y, x)).sum(), [y0, *params], materialize_grads=True)
        assert bool((grads[0] == 0).all()), f"{label}: the gradient reaches y0"
        weights = torch.cat([g.flatten() for g in grads[1:]])
        # the dense reference at this solve's own y* (within TOL64 of the layer's: the same fixed point, but a
        # gradient taken 1e-13 away differs by more than the adjoint budget)
        own = analyse(layer, x, y.detach(), v)
        budget = adjoint_budget(own, TOL64)
        assert_close(weights, own.reference.weights, own.scale_weights * budget, floor, f"dL/dW {label} vs dense")


@requires(Tag.MEAN_FIXED_POINT, Tag.SCORE_MATRIX)
@given(case=small_cases)
def test_consensus_gradients_where_contractive(variant: Variant, case: Case, device) -> None:
    """Where a certificate proves contraction, y* = 1 mean(x)^T: weight gradients vanish and dL/dx is the
    broadcast row mean of dL/dy*, up to the spread of y*'s rows and rounding."""
    layer, x = solved(case, variant, device)
    kappa = certificates(layer, x).best
    event(f"certificate < 1: {bool((kappa < 1).all())}")
    require(bool((kappa < 1).all()), "certificate kappa < 1")
    v = cotangent(case, device, layer=layer)
    grads = layer_grads(layer, x, v)
    solution, adjoint = layer.last_solution, layer.last_backward_solution
    assert solution is not None and adjoint is not None and adjoint.converged
    y, g = solution.y, adjoint.y
    N, D = case.tokens, case.dim
    with torch.no_grad():
        A, V = layer.score_matrix(x), layer.values(x)  # type: ignore[operator]
        spread = float(torch.linalg.vector_norm(y - y.mean(-2, keepdim=True), dim=-1).max())
        diam = float(torch.cdist(V, V).max())
        a_max = float(torch.linalg.vector_norm(A, dim=-1).max())
        x_max = float(torch.linalg.vector_norm(x, dim=-1).max())
        y_mean = float(torch.linalg.vector_norm(y.mean(-2), dim=-1).max())
        g_norm = float(g.norm())
    # dL/dA_i = sum_j c_ij y_j with sum_j c_ij = 0 and |c_ij| <= p_ij ||g_i|| diam(V), so
    # ||dL/dA||_F <= ||g||_F (diam(V) spread + (N + D) eps max||x_j|| ||mean y||) (the second: rounding of sum_j c_ij).
    gamma = g_norm * (diam * spread + (N + D) * eps(F64) * x_max * y_mean)
    jac_theta, jac_x = score_jacobians(layer, x)
    weight_bound = jac_theta * gamma
    # dL/dx = (keys path, <= ||dA/dx|| gamma) + sum_i p_ij g_i; |p_ij - 1/N| <= (e^{2 a_max spread} - 1)/N, and
    # mean_i g_i = mean_i v_i + mean_i(adjoint residual) since sum_j (J^T g)_j = 0 for f = softmax(A Y^T) V.
    r_adj = float(torch.linalg.vector_norm(adjoint.residuals[-1]))
    x_bound = jac_x * gamma + g_norm * math.expm1(2 * a_max * spread) + r_adj + N * eps(F64) * g_norm
    mean_v = v.mean(-2, keepdim=True).expand_as(v)
    note(f"kappa {kappa.tolist()}, spread {spread:.2e}, weight bound {weight_bound:.2e}, x bound {x_bound:.2e}")
    assert float(grads.weights.norm()) <= weight_bound, f"weight gradient {float(grads.weights.norm()):.3e}"
    assert float((grads.x - mean_v).norm()) <= x_bound, f"dL/dx - mean(v): {float((grads.x - mean_v).norm()):.3e}"


def score_jacobians(layer: FixedPointLayer, x: Tensor) -> tuple[float, float]:
    """||dA/dtheta||_2 and ||dA/dx||_2 for A = layer.score_matrix(x), from dense Jacobians."""
    jac_theta, jac_x = dense_jacobians(layer, x, layer.score_matrix)  # type: ignore[arg-type]
    norm = torch.linalg.matrix_norm
    return float(norm(jac_theta, ord=2)), float(norm(jac_x, ord=2))


# ---------------------------------------------------------------------------------------------------------------
# non-vacuity: the fixed point moves with the weights
# ---------------------------------------------------------------------------------------------------------------


@given(case=small_cases)
def test_fixed_point_depends_on_weights(variant: Variant, case: Case, device) -> None:
    """In the contractive regime ||dy*/dW|| is not negligible: the weight gradient of a random-cotangent loss
    is above the floor. Consensus variants (reference, scaled, damped) declare this an expected failure."""
    layer, x = solved(case, variant, device)
    solution = layer.last_solution
    assert solution is not None
    if variant.has(Tag.SCORE_MATRIX):
        kappa = certificates(layer, x).best
        note(f"kappa {kappa.tolist()}")
        require(bool((kappa < 1).all()), "certificate kappa < 1")
    else:
        rho = spectral_radius(fixed_map(layer, x), solution.y)
        note(f"rho {rho.tolist()}")
        require(bool((rho < 1).all()), "rho(J*) < 1")
    v = cotangent(case, device, layer=layer)
    weights = layer_grads(layer, x, v).weights
    norm, floor = float(weights.norm()), floor_of(x, v)
    note(f"||dL/dW|| = {norm:.3e}, floor {floor:.3e}")
    assert norm >= floor, f"the weight gradient {norm:.3e} is below {floor:.3e}: the fixed point ignores the weights"
