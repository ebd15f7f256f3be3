"""The layer's iterations: where the output lives, the exact small cases, and solves with a certificate.

- convex hull: every output row is a convex combination of the rows of x
  (variants tagged ``convex_hull``), up to a rounding bound derived below;
- N = 1 gives y == x, and n_iters = 0 gives the readout of the variant's own start y0, bit for bit (seed mode);
- where a certificate kappa < 1 (docs/theory.md#certificates) proves contraction, Picard converges
  within the a-priori step count and Picard and Anderson reach the same fixed
  point within 2 (tol + delta) / (1 - kappa);
- Picard on the seed's map at weight scale 3 cycles or runs out of steps, never
  CONVERGED; Anderson may converge there, to a point whose residual, recomputed
  from f, really is <= tol.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math

import numpy as np
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import Status, analysis
from iqa.layer import FixedPointLayer
from iqa.solvers import MAX_PERIOD, Map
from iqa.variants import Tag, Variant
from properties.regimes import require, requires_share
from properties.strategies import CONTRACTIVE_SCALES, Case, cases
from properties.tags import requires

# --- convex hull --------------------------------------------------------------------------------------------------


def scale_regime(scale: float) -> str:
    """The regimes of docs/theory.md#regimes by weight scale s (for event buckets): s <= 1 mostly contracts, s ~ 3
    cycles, s >= 10 saturates the attention (and rarely converges from x)."""
    if scale <= 1:
        return "s <= 1 (mostly contractive)"
    return "1 < s <= 4 (multistable, cycling)" if scale <= 4 else "s >= 10 (saturated)"


def hull_distance(points: Tensor, vertices: Tensor) -> Tensor:
    """Distance from each row of ``points`` [M, D] to conv(rows of ``vertices`` [N, D]), in float64.

    The nearest point of the hull lies in the relative interior of a face conv(S), where it is the
    projection of y onto aff(S) (Caratheodory: some S with non-negative barycentric coordinates). Every
    subset S gives a hull point, its least-squares barycentric coordinates clipped at 0 and renormalised;
    the smallest distance over all S is therefore an upper bound that equals the distance up to rounding.
    2^N - 1 subsets: fine for the suite's N <= 6.
    """
    V = vertices.detach().double().cpu().numpy()
    P = points.detach().double().cpu().numpy()
    best = np.full(P.shape[0], np.inf)
    for size in range(1, V.shape[0] + 1):
        for subset in itertools.combinations(range(V.shape[0]), size):
            S = V[list(subset)]
            rest = np.linalg.lstsq((S[1:] - S[0]).T, (P - S[0]).T, rcond=None)[0] if size > 1 else np.zeros((0, len(P)))
            weights = np.clip(np.vstack([1 - rest.sum(axis=0), rest]), 0, None)  # column sums stay >= 1
            nearest = (S.T @ (weights / weights.sum(axis=0))).T
            best = np.minimum(best, np.linalg.norm(nearest - P, axis=1))
    return torch.from_numpy(best)


#: hull_distance visits all 2^N - 1 subsets of tokens: N <= 8 keeps that to 255 least-squares solves.
HULL_TOKENS = 8


@requires(Tag.CONVEX_HULL)
@given(
    case=cases(max_tokens=HULL_TOKENS),
    mode=st.sampled_from(["seed", "picard"]),
    n_iters=st.integers(0, 12),
    damping=st.one_of(st.just(1.0), st.floats(0.25, 1.0)),
)
def test_output_in_convex_hull(variant: Variant, case: Case, mode: str, n_iters: int, damping: float, device):
    """Every row of y is in conv(rows of x), in the seed's loop and in a (damped) Picard solve, at any scale.

    One step y <- P x (P row-stochastic) rounds each coordinate by <= (2N + 2) eps max|x| (N products and
    the sum of P's row); a relaxed step y + a (f - y) adds <= 3 eps max|x| and shrinks older errors by
    1 - a, so the error stays below (2N + 5) eps max|x| / a per coordinate, sqrt(D) times that in norm.
    ``a`` is the damping times the variant's own relaxation (``iqa.analysis.relaxation``).
    """
    options = {"n_iters": n_iters} if mode == "seed" else {"solver": "picard", "damping": damping, "max_iter": 50}
    layer = case.layer(variant, device, **options)
    x = case.inputs(device)
    with torch.no_grad():
        y = layer(x)
    a = analysis.relaxation(layer) * (damping if mode == "picard" else 1.0)
    eps = torch.finfo(case.dtype).eps
    # + the check's own float64 rounding of V^T w - y: (N + 2) eps_64 max|x| per coordinate
    per_coordinate = (2 * case.tokens + 5) * eps / a + (case.tokens + 2) * torch.finfo(torch.float64).eps
    tol = math.sqrt(case.dim) * per_coordinate * float(x.abs().max())
    event(f"{mode}, {scale_regime(case.scale)}")
    for b in range(case.batch):
        distance = hull_distance(y[b], x[b])
        note(f"b={b} distance to the hull={distance.tolist()} tol={tol:.3e}")
        assert bool((distance <= tol).all()), (
            f"row of y outside the convex hull of x: distance {distance.tolist()} > {tol:.3e}"
        )


@requires(Tag.CONVEX_HULL)
@given(case=cases(tokens=(1, 1)), n_iters=st.integers(0, 12))
def test_single_token_is_fixed(variant: Variant, case: Case, n_iters: int, device):
    """With N = 1 the only convex combination of the rows of x is x: y == x and every tracked iterate == x,
    bit for bit (a softmax over one score is exactly 1)."""
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)
    with torch.no_grad():
        y, history = layer(x, track=True)
    assert torch.equal(y, x)
    assert len(history) == n_iters + 1
    assert all(torch.equal(h, x) for h in history)


@given(case=cases())
def test_zero_iterations_return_the_start(variant: Variant, case: Case, device):
    """n_iters = 0 takes no step: the state is the variant's own start y0 = initial_point(x) (x itself for the seed,
    a learned or seeded start for a slot layer), not x's storage, the history is [y0], and the output is the
    readout g(y0, x), bit for bit, in every variant. The start is the same on every call (a noise start draws
    from the layer's start_generator, never from torch's global RNG)."""
    layer = case.layer(variant, device, n_iters=0)
    x = case.inputs(device)
    with torch.no_grad():
        y0 = layer.initial_point(x)
        assert torch.equal(layer.initial_point(x), y0), "initial_point(x) differs between two calls"
        state, history = layer.solve_state(x, track=True)
        y = layer(x)
        readout = layer.readout(y0, x)
    assert torch.equal(state, y0), "n_iters = 0: the state is not the layer's own start initial_point(x)"
    assert state.data_ptr() != x.data_ptr(), "n_iters = 0 returns x's own storage, not a copy"
    assert len(history) == 1 and torch.equal(history[0], y0), "the tracked history is not [y0]"
    assert torch.equal(y, readout), "n_iters = 0: the output is not the readout g(y0, x) of the start"


# --- solves under a certificate -----------------------------------------------------------------------------------


def rows_norm(t: Tensor) -> Tensor:
    """max_i ||t_i||: the "2,inf" norm of each batch element of [B, N, D], in float64."""
    return torch.linalg.vector_norm(t.double(), dim=-1).amax(dim=-1)


def frobenius(t: Tensor) -> Tensor:
    """||t||_F of each batch element of [B, N, D]: the solver's residual norm, in float64."""
    return torch.linalg.vector_norm(t.double(), dim=(-2, -1))


def float64_twin(layer: FixedPointLayer) -> FixedPointLayer:
    """The same layer (same stored weights) in float64: its certificates are those of the stored weights."""
    return copy.deepcopy(layer).to(torch.float64)


def rescale_to(layer: FixedPointLayer, x: Tensor, target: float) -> tuple[Tensor, Tensor]:
    """x t with the largest best certificate near ``target``, and those certificates.

    The certificates of softmax(A Y^T) V (+ B) grow like t^2 when x is scaled by t (A and V are linear in
    x); a relaxation makes them affine in t^2, so a few rounds of t <- t sqrt(target / kappa) settle it.
    """
    twin = float64_twin(layer)
    t = 1.0
    for _ in range(4):
        kappa = float(analysis.certificates(twin, (x * t).double()).best.max())
        if kappa == 0:  # one token, or all tokens equal: f is constant, nothing to scale
            break
        t *= math.sqrt(target / kappa)
    xt = x * t
    return xt, analysis.certificates(twin, xt.double())


def rounding(layer: FixedPointLayer, x: Tensor, rows: int | None = None) -> Tensor:
    """delta: a bound on ||fl(f(y)) - f(y)||_F for y in the region the iterates visit, per batch element.

    Entry (i, d) of softmax(A (Y + C)^T) V (+ B) sums N products of probabilities and values after D-term
    score sums: it rounds by <= eps (N + D) (1 + max|s|) (max|V| + max|x|), with |s_ij| <= ||a_i|| (max||v|| +
    max||x|| + sqrt(D)) bounding the scores (iterates stay within reach of the values and x; sqrt(D) covers a
    bounded offset C such as sinusoidal positions); sqrt(N D) entries give the Frobenius norm (sqrt(K D) for a
    state of ``rows`` = K rows, scores Y A^T; the sums still run over N).
    """
    twin = float64_twin(layer)
    xd = x.double()
    with torch.no_grad():
        heads_A, heads_V = analysis.head_terms(twin, xd)  # [B, h, N, .]: one head for a single-head layer
    _, n, d = x.shape
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for A, V in zip(heads_A.unbind(-3), heads_V.unbind(-3)):  # a multi-head map rounds by the sum of its heads'
        reach = rows_norm(V) + rows_norm(xd) + math.sqrt(d)
        scores = rows_norm(A) * reach
        magnitude = V.abs().amax(dim=(-2, -1)) + xd.abs().amax(dim=(-2, -1))
        total = total + (1 + scores) * magnitude
    eps = torch.finfo(x.dtype).eps
    # (+ h - 1 additions over the heads per entry: n + d + h - 1 terms in all)
    return math.sqrt((n if rows is None else rows) * d) * (n + d + heads_A.shape[-3] - 1) * eps * total


@requires(Tag.SCORE_MATRIX)
@given(
    case=cases(scales=CONTRACTIVE_SCALES),
    target=st.floats(0.05, 0.95),
    tol_exponent=st.floats(0.5, 5.0),
)
def test_solvers_agree_under_certificate(variant: Variant, case: Case, target: float, tol_exponent: float, device):
    """Where a certificate kappa < 1, Picard converges within the a-priori step count and Picard and Anderson
    reach the same fixed point: ||y_P - y_A|| <= 2 (tol + delta) / (1 - kappa) in the certificate's norm.

    kappa_F bounds the map in the Frobenius norm, the solver's residual norm: r_k <= kappa^k r_0. kappa_inf
    and kappa_weights bound it in the "2,inf" norm (max row norm): r_k <= sqrt(N) kappa^k max_i ||r_0,i||.
    Rounding adds delta per evaluation, so the residual floor is 2 delta / (1 - kappa); tol is drawn above it.
    """
    layer = case.layer(variant, device)
    x, certs = rescale_to(layer, case.inputs(device), target)
    require(bool((certs.best < 1).all()), "certificate kappa < 1")
    f = layer.fixed_point_map(x)
    y0 = layer.initial_point(x)
    with torch.no_grad():
        r0 = f(y0) - y0
    tokens = y0.shape[-2]  # the state's rows: N, or a slot state's K
    delta = rounding(layer, x, tokens).cpu()
    # each certificate below 1 bounds the Frobenius residual as kappa^k R0 + its floor 2 delta / (1 - kappa)
    chains = [
        (certs.kappa_F.double().cpu(), frobenius(r0).cpu() + delta),
        (certs.kappa_inf.double().cpu(), math.sqrt(tokens) * rows_norm(r0).cpu() + delta),
        (certs.kappa_weights.double().cpu(), math.sqrt(tokens) * rows_norm(r0).cpu() + delta),
    ]
    kappa = certs.best.double().cpu()
    tol = float((2 * delta / (1 - kappa)).max()) * 10**tol_exponent
    steps_bound = torch.full_like(kappa, math.inf)
    which = ["none"] * case.batch
    for name, (k, start) in zip(("kappa_F", "kappa_inf", "kappa_weights"), chains):
        margin = tol - 2 * delta / (1 - k)  # > 0 only where this certificate's floor is below tol
        usable = (k < 1) & (margin > 0)
        k_steps = torch.ceil(torch.log(start / margin) / -torch.log(k)).clamp_min(1)
        k_steps = torch.where(start <= margin, torch.zeros_like(k_steps), k_steps)
        better = usable & (k_steps < steps_bound)
        which = [name if bool(u) else w for u, w in zip(better, which)]
        steps_bound = torch.where(better, k_steps, steps_bound)
    max_iter = int(steps_bound.max()) + 1
    event(f"kappa {'< 0.5' if float(kappa.max()) < 0.5 else 'in [0.5, 1)'}, bound from {which[0]}, {case.dtype}")
    with torch.no_grad():
        picard_layer = case.layer(variant, device, solver="picard", tol=tol, max_iter=max_iter)
        y_p = picard_layer.solve_state(x)
        anderson_layer = case.layer(variant, device, solver="anderson", tol=tol, max_iter=max_iter)
        y_a = anderson_layer.solve_state(x)
    picard, anderson = picard_layer.last_solution, anderson_layer.last_solution
    assert picard is not None and anderson is not None
    note(
        f"kappa_F={certs.kappa_F.tolist()} kappa_inf={certs.kappa_inf.tolist()} tol={tol:.3e} "
        f"bound={steps_bound.tolist()} picard={picard.statuses}/{picard.steps} "
        f"anderson={anderson.statuses}/{anderson.steps}"
    )
    assert picard.status is Status.CONVERGED, f"certified: Picard did not converge within the bound: {picard.statuses}"
    assert all(s <= k + 1 for s, k in zip(picard.steps, steps_bound.tolist())), (
        f"certified: Picard took {picard.steps} steps, more than the certificate's {steps_bound.tolist()}"
    )
    assert anderson.status is Status.CONVERGED, f"certified: Anderson did not converge: {anderson.statuses}"
    # both returned points are honest: their residuals, recomputed from f, are <= tol (up to the norm's rounding)
    slack = 1 + tokens * case.dim * torch.finfo(case.dtype).eps
    with torch.no_grad():
        for y in (y_p, y_a):
            recomputed = frobenius(f(y) - y).cpu()
            assert bool((recomputed <= tol * slack).all()), (
                f"certified: a CONVERGED point has recomputed residual {recomputed.tolist()} > tol {tol:.3e}"
            )
    gap = y_p - y_a
    radius = 2 * (tol + delta)
    frob_ok = certs.kappa_F.double().cpu() < 1
    assert bool((frobenius(gap).cpu() <= radius / (1 - certs.kappa_F.double().cpu()))[frob_ok].all()), (
        f"certified: Picard and Anderson reached different fixed points ({frobenius(gap).tolist()} apart)"
    )
    for k in (certs.kappa_inf, certs.kappa_weights):
        k = k.double().cpu()
        assert bool((rows_norm(gap).cpu() <= radius / (1 - k))[k < 1].all()), (
            f"certified: Picard and Anderson reached different fixed points ({rows_norm(gap).tolist()} apart)"
        )


# --- the cycling regime -------------------------------------------------------------------------------------------

#: Shapes where "s ~ 3 never converges" (docs/theory.md#regimes) holds: measured, Picard at s = 3 converged 0 times in
#: 600 draws of N, D in 10..14 (float32 and float64, 200 steps); at N = D = 8 it converged 4 times in 150, to
#: attracting fixed points (rho 0.5-0.7) that are not the repelling consensus.
CYCLING_SHAPES = (10, 14)


#: The independent cycle check: y_t is periodic when ||y_t - y_(t-p)|| <= PERIODIC_GAP ||f(y_t) - y_t|| for some
#: p in 2..MAX_PERIOD (1e3 below the solver's own 1e-3: a cycle the check finds, the solver must find).
PERIODIC_GAP = 1e-6
CYCLE_LABEL = "independent check: a periodic orbit found"
#: Cycling draws search this many seeds (the drawn one, then offsets) for an orbit periodic from t0 <= CYCLE_START:
#: measured at N, D in 10..14, scale 3, ~15% of seeds have one within 400 steps, so ~85% of searches succeed.
CYCLE_ATTEMPTS, CYCLE_START = 12, 200
#: The most Picard steps drawn for the other draws (the claim in docs/theory.md#regimes is about any budget).
CYCLE_MAX_ITER = 200


def cycling_case(case: Case, variant: Variant) -> Case:
    """A case (the drawn one, or a seed offset of it, batch 1) whose Picard orbit the independent check finds
    periodic from t0 <= CYCLE_START; rejected when none of CYCLE_ATTEMPTS is (counted under CYCLE_LABEL, named as
    the reason: properties.regimes.require)."""
    for attempt in range(CYCLE_ATTEMPTS):
        candidate = dataclasses.replace(case, batch=1, seed=case.seed + 7919 * attempt)
        layer, x = candidate.layer(variant), candidate.inputs()
        (found,) = periodic_from(layer.fixed_point_map(x), layer.initial_point(x), CYCLE_START + 2 * MAX_PERIOD)
        if found is not None and found[0] <= CYCLE_START:
            break
    else:
        found = None
    require(found is not None, CYCLE_LABEL)
    return candidate


def periodic_from(f: Map, y0: Tensor, steps: int) -> list[tuple[int, int] | None]:
    """Per batch element, (t0, p): from iterate t0 on, every iterate y_t (t0 <= t < steps) of y <- f(y) is within
    PERIODIC_GAP ||f(y_t) - y_t|| of y_(t-p), p in 2..MAX_PERIOD the smallest such period; None if no such t0.
    Computed here from the map alone, independent of the solver's bookkeeping."""
    ys = [y0]
    with torch.no_grad():
        for _ in range(steps):
            ys.append(f(ys[-1]))
    orbit = torch.stack(ys).flatten(2)  # [steps + 1, batch, n]
    r = torch.linalg.vector_norm(orbit[1:] - orbit[:-1], dim=-1).double()  # r[t] = ||f(y_t) - y_t||

    def gap(p: int) -> Tensor:  # gap(p)[t - p] = ||y_t - y_(t-p)||, t in p..steps-1 (none when p >= steps)
        return torch.linalg.vector_norm(orbit[p:steps] - orbit[: max(steps - p, 0)], dim=-1).double()

    # ok[p][b][t - p]: y_t is within PERIODIC_GAP r[t] of y_(t-p)
    ok = {p: ((r[p:] > 0) & (gap(p) <= PERIODIC_GAP * r[p:])).T.tolist() for p in range(2, MAX_PERIOD + 1)}
    found: list[tuple[int, int] | None] = []
    for b in range(y0.shape[0]):
        best = None
        for p in range(2, MAX_PERIOD + 1):
            # the latest start from which the orbit stays periodic to the end
            t0 = steps
            while t0 - 1 >= p and ok[p][b][t0 - 1 - p]:
                t0 -= 1
            if t0 < steps and (best is None or t0 < best[0]):
                best = (t0, p)
        found.append(best)
    return found


@requires(Tag.SEED_EXACT)
@requires_share(CYCLE_LABEL, 0.3)
@given(
    case=cases(batch=(1, 2), tokens=CYCLING_SHAPES, dim=CYCLING_SHAPES, scales=st.just(3.0)),
    max_iter=st.integers(1, CYCLE_MAX_ITER),
    tol_exponent=st.floats(2.0, 4.0),
    cycling=st.booleans(),
)
def test_picard_cycles_at_scale_three(
    variant: Variant, case: Case, max_iter: int, tol_exponent: float, cycling: bool, device
):
    """The seed's map at weight scale 3: the consensus repels (rho_c ~ s^2 / 3 = 3), Picard cycles or wanders;
    it must say CYCLE or MAX_ITER, or CONVERGED only where f, recomputed at the y it returns, really moves it by
    <= tol (rarely an attracting fixed point off the consensus exists: thorough found one on reference, N = D =
    10, seed 565, reached at Picard's last step), and CYCLE wherever an independent check finds the orbit
    periodic (period p <= MAX_PERIOD) from iterate t0 with t0 + MAX_PERIOD (p + 2) <= max_iter: the solver looks
    every MAX_PERIOD steps, needs the residual stalled against MAX_PERIOD steps earlier (a periodic residual
    compared at shifts of MAX_PERIOD passes within p looks) and the gap below 1e-3 of the residual.
    Anderson may land on a fixed point (even an unstable one): then its residual, recomputed from f at the
    returned y, really is <= tol. Half the draws are moved to a seed whose orbit is periodic (cycling_case)."""
    if cycling:
        case = cycling_case(case, variant)
        # past the latest detection the check allows: t0 <= CYCLE_START, then MAX_PERIOD (p + 2) steps, p <= 8
        max_iter = CYCLE_START + MAX_PERIOD * (MAX_PERIOD + 2) + max_iter % MAX_PERIOD
    x = case.inputs(device)
    eps = torch.finfo(case.dtype).eps
    tol = eps * float(x.abs().max()) * 10**tol_exponent
    picard_layer = case.layer(variant, device, solver="picard", tol=tol, max_iter=max_iter)
    anderson_layer = case.layer(variant, device, solver="anderson", tol=tol, max_iter=max_iter)
    with torch.no_grad():
        y_p = picard_layer(x)
        y_a = anderson_layer(x)
    picard, anderson = picard_layer.last_solution, anderson_layer.last_solution
    assert picard is not None and anderson is not None
    rho_c = analysis.consensus_radius(picard_layer, x).double().cpu()
    periodic = periodic_from(picard_layer.fixed_point_map(x), picard_layer.initial_point(x), max_iter)
    note(
        f"rho_c={rho_c.tolist()} picard={picard.statuses}/{picard.steps} "
        f"anderson={anderson.statuses}/{anderson.steps} tol={tol:.3e} independent (t0, p)={periodic}"
    )
    event(f"consensus {'repels (rho_c > 1)' if bool((rho_c > 1).all()) else 'attracts somewhere (rho_c <= 1)'}")
    event(f"picard {sorted({s.name for s in picard.statuses})}, anderson {sorted({s.name for s in anderson.statuses})}")
    f = anderson_layer.fixed_point_map(x)
    slack = 1 + case.tokens * case.dim * eps  # the float64 norm of the same difference, vs the solver's
    with torch.no_grad():
        recomputed_p, recomputed = frobenius(f(y_p) - y_p).cpu(), frobenius(f(y_a) - y_a).cpu()
    for b, status in enumerate(picard.statuses):
        if status is Status.CONVERGED:
            assert float(recomputed_p[b]) <= tol * slack, f"Picard CONVERGED at recomputed residual {recomputed_p[b]}"
        else:
            assert status in (Status.CYCLE, Status.MAX_ITER), f"Picard said {picard.statuses}"
    due = [found is not None and found[0] + MAX_PERIOD * (found[1] + 2) <= max_iter for found in periodic]
    event(f"CYCLE required for some element: {any(due)}")
    for b, required in enumerate(due):
        if required:
            assert picard.statuses[b] is Status.CYCLE, (
                f"element {b}: the independent check found a cycle (t0, p) = {periodic[b]} within max_iter "
                f"{max_iter}, but Picard said {picard.statuses[b].name}"
            )
    for b, status in enumerate(anderson.statuses):
        if status is Status.CONVERGED:
            assert float(recomputed[b]) <= tol * slack, f"Anderson CONVERGED at recomputed residual {recomputed[b]}"
        else:
            assert not float(recomputed[b]) <= tol / slack, f"Anderson said {status.name} at residual within tol"
