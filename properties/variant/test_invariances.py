"""The invariances of docs/theory.md#invariances, each in the regime where it holds, gated by the variant's tags.

Bitwise in every regime (seed mode, exact operations only): duplicate tokens
give equal rows, (2^k x, W / 2^k) gives 2^k y.

To rounding, where the fixed point is unique: token permutation, batch
independence, orthogonal change of basis, key -> G key with query -> G^-T query
(the weights the layer names with ``weight_roles()``), zero weights give the mean.
Both problems are solved the same way; each solution's defect (residual plus the
rounding of f) bounds its distance to its map's fixed point, and the invariance says those fixed points correspond
exactly, so the outputs may differ by (defect + defect') / divisor:

- a variant claiming ``score_matrix`` is solved under its certificate
  kappa < 1 (divisor 1 - kappa, Banach: rigorous, and the fixed point is unique);
- any other variant by plain Picard at weight scales where it converges, with
  divisor sigma_min(I - J(y)) (first order at an isolated fixed point).

Where the transformed data x R, R^T W R or G W are themselves rounded, one more
rounding of f joins the defect. In the chaotic regime none of this holds to
rounding, and nothing is claimed.

Identical rows give y = x in every regime (the convex hull is one point).

How the weights transform (nn.Linear computes x W^T): for x -> x R, every
weight W -> R^T W R gives K -> K R, Q -> Q R and unchanged scores; for
W_K -> G W_K, Omega -> G^-T Omega the scores x W_K^T G^T G^-T Omega y^T are
unchanged (per head, with G block-diagonal over the heads' row blocks); for
(2^k x, W / 2^k) every product W x is unchanged bitwise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis, solve
from iqa.analysis.certified_solution import certified_solve, in_norm, token_norm
from iqa.analysis.rounding import map_rounding
from iqa.layer import FixedPointLayer
from iqa.solvers import Solution
from iqa.variants import Tag, Variant
from iqa.variants.weights import scaled_parameters
from properties.fixed_points import require_converged
from properties.regimes import observation_tol, observe, require
from properties.strategies import ANY_SCALE, FACTORED_ELEMENTS, Case, cases
from properties.tags import requires

#: Weight scales where most drawn cases have a certificate < 1 (about 95%, measured) and Picard converges.
CERTIFIED_SCALES = st.floats(0.05, 0.7)
#: Picard budget of the solves on the local, uncertified path (their tolerance is regimes.observation_tol).
LOCAL_MAX_ITER = 500


@dataclass(frozen=True)
class Reference:
    """The original problem solved, and how a second solution is compared with it.

    ``defect`` = ||f(y) - y|| + eps_f (computed residual plus the rounding of f) in ``norm``; two
    approximate fixed points of maps that agree exactly are within (defect + defect') / divisor:
    divisor = 1 - kappa under a certificate (Banach, rigorous), or sigma_min(I - J(y)) without
    one (the local, first-order bound at an isolated fixed point).
    """

    y: Tensor
    norm: str
    divisor: Tensor
    defect: Tensor
    certified: bool
    what: str


def solve_reference(variant: Variant, layer: FixedPointLayer, x: Tensor) -> Reference:
    """Solve (layer, x) under a certificate when the variant claims score_matrix, else by plain Picard
    with the local bound; bucket the case by regime. Rejects the rare case without convergence."""
    if variant.has(Tag.SCORE_MATRIX):
        _, kappa = analysis.best_certificate(layer, x)
        require(bool((kappa < 1).all()), "certificate kappa < 1")
        result = certified_solve(layer, x)
        observe(layer, x, result.solution)
        return Reference(
            result.y,
            result.norm,
            1 - kappa,
            result.residual + result.rounding,
            True,
            f"{result.certificate} {kappa.tolist()}",
        )
    y, defect, solution = local_solve(layer, x)
    observe(layer, x, solution)
    J = analysis.jacobian(layer.fixed_point_map(x), y).to(torch.float64)
    eye = torch.eye(J.shape[-1], dtype=torch.float64, device=J.device)
    sigma = torch.linalg.svdvals(eye - J)[..., -1].cpu()
    require(bool((sigma > 0).all()), "an isolated fixed point (sigma_min(I - J) > 0)")
    return Reference(y, "fro", sigma, defect, False, f"local: sigma_min(I - J) {sigma.tolist()}")


def local_solve(layer: FixedPointLayer, x: Tensor, y0: Tensor | None = None) -> tuple[Tensor, Tensor, Solution]:
    """Picard from y0 (default the layer's start) to observation_tol(x) (Frobenius); rejects a case that does
    not converge."""
    f = layer.fixed_point_map(x)
    tol = observation_tol(x)
    with torch.no_grad():
        solution = solve(f, layer.initial_point(x) if y0 is None else y0, tol=tol, max_iter=LOCAL_MAX_ITER)
        require_converged(solution, f)
        y = solution.y
        residual = token_norm(f(y) - y, "fro").cpu()
    return y, residual + in_norm(map_rounding(layer, x, y).cpu(), "fro", y.shape[-2]), solution


def other_defect(
    layer: FixedPointLayer, x: Tensor, reference: Reference, y0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Solve the transformed problem the same way as the reference, from y0 (default the layer's start): (its y,
    its defect in the reference's norm)."""
    if reference.certified:
        second = certified_solve(layer, x, y0)
        # its best certificate is the reference's, up to rounding
        require(second.norm == reference.norm, "the same best certificate norm for both problems")
        return second.y, second.residual + second.rounding
    y, defect, _ = local_solve(layer, x, y0)
    return y, defect


def assert_same_fixed_point(
    reference: Reference, other: Tensor, other_defect: Tensor, extra: Tensor, what: str
) -> None:
    """||y - y'|| <= (defect + defect' + extra) / divisor per batch element, in the reference's norm."""
    gap = token_norm(reference.y - other, reference.norm).cpu()
    bound = (reference.defect + other_defect + extra) / reference.divisor
    note(f"{what}: ||y - y'|| ({reference.norm}) {gap.tolist()}, bound {bound.tolist()}; {reference.what}")
    assert bool((gap <= bound).all()), f"{what}: outputs differ by {gap.tolist()} > bound {bound.tolist()}"


def data_rounding(layer: FixedPointLayer, x: Tensor, y: Tensor, reference: Reference) -> Tensor:
    """Rounded transformed data (x R, R^T W R, G W: products of length D) perturb the scores by no
    more than one evaluation's rounding does: one more eps_f in the defect."""
    return in_norm(map_rounding(layer, x, y).cpu(), reference.norm, y.shape[-2])


@requires(Tag.PERMUTATION_EQUIVARIANT)
@given(case=cases(tokens=(2, 6), scales=CERTIFIED_SCALES, max_elements=FACTORED_ELEMENTS), data=st.data())
def test_token_permutation_equivariance(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    reference = solve_reference(variant, layer, x)
    perm = torch.tensor(data.draw(st.permutations(range(case.tokens)), label="permutation"), device=device)
    y_perm, defect = other_defect(layer, x[:, perm], reference)
    assert_same_fixed_point(
        reference, y_perm[:, torch.argsort(perm)], defect, torch.zeros_like(defect), "y(P x) vs P y(x)"
    )


@requires(Tag.BATCH_INDEPENDENT)
@given(case=cases(batch=(2, 3), scales=CERTIFIED_SCALES, max_elements=FACTORED_ELEMENTS))
def test_batch_independence(variant: Variant, case: Case, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    reference = solve_reference(variant, layer, x)
    # each element alone from its own row of the batch's start (a noise start is drawn for the whole batch)
    y0 = layer.initial_point(x)
    alone = [other_defect(layer, x[b : b + 1], reference, y0[b : b + 1]) for b in range(case.batch)]
    others = torch.cat([y for y, _ in alone])
    defects = torch.cat([d for _, d in alone])
    assert_same_fixed_point(reference, others, defects, torch.zeros_like(defects), "each element alone vs in the batch")


def row_coupling(layer: FixedPointLayer, x: Tensor) -> Tensor:
    """L with ||f_j(Y) - f_k(Y)|| <= L ||y_j - y_k|| when x_j = x_k, per batch element.

    Scores A Y^T: f_j and f_k are the same function of the whole Y (a_j = a_k), so L = 0;
    scores Y A^T: f_j depends on y_j alone, with the per-token bound kappa_inf;
    a relaxation a turns L into 1 - a + a L.
    """
    a = analysis.relaxation(layer)
    if analysis.score_form(layer) == analysis.SCORES_Y_AT:
        inner = analysis.certificates(layer, x).kappa_inf.to(torch.float64).cpu()
    else:
        inner = torch.zeros(x.shape[0], dtype=torch.float64)
    return (1 - a) + a * inner


@requires(Tag.PERMUTATION_EQUIVARIANT, Tag.SCORE_MATRIX)
@given(case=cases(tokens=(2, 6), scales=ANY_SCALE), n_iters=st.integers(0, 12), data=st.data())
def test_duplicate_tokens_give_equal_rows(
    variant: Variant, case: Case, n_iters: int, data: st.DataObject, device
) -> None:
    """Equal tokens j, k give equal rows j, k of y, to rounding.

    Not bitwise: CPU BLAS may round two equal rows differently (measured: ~10% of
    cases in float64). Each step adds at most 2 eps_f (two evaluated rows, eps_f =
    map_rounding) to ||y_j - y_k||, which the next step multiplies by at most
    row_coupling L: after T steps ||y_j - y_k|| <= 2 eps_f sum_{t<T} L^t.
    """
    j, k = data.draw(st.lists(st.integers(0, case.tokens - 1), min_size=2, max_size=2, unique=True), label="j, k")
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)
    x[:, j] = x[:, k]
    with torch.no_grad():
        y, history = layer(x, track=True)
    eps_f = torch.stack([map_rounding(layer, x, y_t) for y_t in history]).amax(dim=0).cpu()
    L = row_coupling(layer, x)
    tolerance = 2 * eps_f * sum(L**t for t in range(n_iters))
    gap = torch.linalg.vector_norm((y[:, j] - y[:, k]).to(torch.float64), dim=-1).cpu()
    note(f"L {L.tolist()}, eps_f {eps_f.tolist()}")
    assert bool((gap <= tolerance).all()), f"rows {j} and {k} differ by {gap.tolist()} > {tolerance.tolist()}"


@requires(Tag.SCALE_COVARIANT)
@given(case=cases(scales=ANY_SCALE), n_iters=st.integers(0, 12), k=st.integers(-3, 3).filter(bool))
def test_power_of_two_rescaling(variant: Variant, case: Case, n_iters: int, k: int, device) -> None:
    """(2^k x, every weight / 2^k) gives 2^k y bit for bit: multiplying by a power of two is exact."""
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)
    scaled = copy.deepcopy(layer)
    with torch.no_grad():
        for p in scaled.parameters():
            p.mul_(2.0**-k)
        y = layer(x)
        y_scaled = scaled(x * 2.0**k)
    difference = (y_scaled - y * 2.0**k).abs().max().item()
    assert torch.equal(y_scaled, y * 2.0**k), f"(2^{k} x, W / 2^{k}) is not 2^{k} y: max difference {difference:.3e}"


def random_orthogonal(dim: int, generator: torch.Generator) -> Tensor:
    Q, R = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


@requires(Tag.ORTHOGONAL_EQUIVARIANT)
@given(case=cases(scales=CERTIFIED_SCALES, max_elements=FACTORED_ELEMENTS))
def test_orthogonal_change_of_basis(variant: Variant, case: Case, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    reference = solve_reference(variant, layer, x)
    R = random_orthogonal(case.dim, case.generator(11)).to(dtype=case.dtype, device=device)
    rotated = copy.deepcopy(layer)
    with torch.no_grad():
        for p in rotated.parameters():
            if p.dim() != 2:
                pytest.fail(f"{variant.name}: a parameter of shape {tuple(p.shape)}; only D x D weights rotate")
            p.copy_(R.T @ p @ R)
    y_rot, defect = other_defect(rotated, x @ R, reference)
    extra = data_rounding(rotated, x @ R, y_rot, reference)
    assert_same_fixed_point(reference, y_rot @ R.T, defect, extra, "y(x R, R^T W R) R^T vs y(x)")


def random_invertible(dim: int, condition: float, generator: torch.Generator) -> Tensor:
    """U diag(s) V^T with singular values spread over [1, condition]."""
    U = random_orthogonal(dim, generator)
    V = random_orthogonal(dim, generator)
    s = torch.logspace(0, math.log10(condition), dim, dtype=torch.float64)
    return U @ torch.diag(s) @ V.T


def key_and_query(layer: FixedPointLayer) -> tuple[Tensor, Tensor, int]:
    """The layer's key and query weights (``weight_roles()``) and its number of heads; not applicable (skip, with
    the reason) for a layer that names no key and query, or names one parameter for both."""
    roles = layer.weight_roles()
    missing = [role for role in ("key", "query") if role not in roles]
    if missing:
        pytest.skip(
            f"{type(layer).__name__}.weight_roles() names no {' and no '.join(missing)} weight: nothing to "
            "reparametrize (a layer declares the roles its scores depend on through W_key^T W_query)"
        )
    key, query = roles["key"], roles["query"]
    heads = int(getattr(layer, "heads", 1))
    if key is query:
        pytest.skip(f"{type(layer).__name__} names one parameter as both key and query: G and G^-T cannot both act")
    if key.dim() != 2 or query.dim() != 2 or key.shape[0] != query.shape[0] or key.shape[0] % heads:
        pytest.fail(
            f"{type(layer).__name__}.weight_roles(): key {tuple(key.shape)} and query {tuple(query.shape)} must be "
            f"matrices with the same number of rows, a multiple of heads = {heads}"
        )
    return key, query, heads


@given(case=cases(scales=CERTIFIED_SCALES, max_elements=FACTORED_ELEMENTS), condition=st.floats(1.0, 10.0))
def test_key_query_reparametrization(variant: Variant, case: Case, condition: float, device) -> None:
    """key -> G key, query -> G^-T query leaves every head's W_key^T W_query, hence every score and y, unchanged:
    G is block-diagonal, one invertible block per head (the rows of each role split into ``heads`` blocks). The
    roles come from ``layer.weight_roles()``; a layer that names none is not applicable."""
    layer = case.layer(variant, device)
    key, query, heads = key_and_query(layer)
    x = case.inputs(device)
    reference = solve_reference(variant, layer, x)
    rows = key.shape[0]
    G = torch.block_diag(
        *(random_invertible(rows // heads, condition, case.generator(13 + h)) for h in range(heads))
    ).to(device)
    moved = copy.deepcopy(layer)
    moved_key, moved_query, _ = key_and_query(moved)
    with torch.no_grad():
        moved_key.copy_((G @ key.to(torch.float64)).to(case.dtype))
        moved_query.copy_((torch.linalg.inv(G).T @ query.to(torch.float64)).to(case.dtype))
    y_moved, defect = other_defect(moved, x, reference)
    extra = data_rounding(moved, x, y_moved, reference)
    assert_same_fixed_point(reference, y_moved, defect, extra, "y with (G key, G^-T query) vs y")


@requires(Tag.SCORE_MATRIX, Tag.CONVEX_HULL)
@given(case=cases(scales=ANY_SCALE))
def test_zero_weights_give_the_mean(variant: Variant, case: Case, device) -> None:
    """Zero every weight the weight scale reaches (``iqa.variants.weights.scaled_parameters``: every weight
    matrix, whatever it is called, but the variant's ``unscaled`` ones): every score is 0, the attention
    uniform, every row the token mean."""
    layer = case.layer(variant, device)
    zeroed = scaled_parameters(layer, variant.unscaled)
    if not zeroed:
        pytest.skip(f"{variant.name}: the weight scale reaches no parameter of {type(layer).__name__}")
    with torch.no_grad():
        for _, p in zeroed:
            p.zero_()
    x = case.inputs(device)
    scores_source = layer.score_matrix(x)  # type: ignore[operator]
    names = ", ".join(name for name, _ in zeroed)
    assert not bool(scores_source.any()), f"zeroing {names} left a nonzero score matrix"
    result = certified_solve(layer, x)  # kappa = 1 - relaxation < 1: the scores no longer depend on y
    observe(layer, x, result.solution)
    eps = torch.finfo(case.dtype).eps
    # the computed mean carries N eps max|x_j| per entry, so N eps max ||x_j|| per row
    mean_rounding = in_norm(case.tokens * eps * token_norm(x, "rows").cpu(), result.norm, case.tokens)
    gap = token_norm(result.y - analysis.consensus_point(x), result.norm).cpu()
    note(f"zero {names}: ||y - 1 mean(x)^T|| {gap.tolist()}, proven {result.error_bound.tolist()}")
    assert bool((gap <= result.error_bound + mean_rounding).all()), f"zero {names}: y is not the token mean"


@requires(Tag.CONVEX_HULL)
@given(case=cases(scales=ANY_SCALE), n_iters=st.integers(0, 12))
def test_identical_rows_are_fixed(variant: Variant, case: Case, n_iters: int, device) -> None:
    """x = 1 c^T: the hull is the single point c, so y = x in every regime, up to the rounding of sum_j p_j c."""
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)[:, :1].expand(-1, case.tokens, -1).contiguous()
    with torch.no_grad():
        y = layer(x)
    eps = torch.finfo(case.dtype).eps
    # each step: sum_j p_j c with sum_j p_j = 1 +- (N + 2) eps, and <= 3 eps more from a relaxation; errors do not grow
    tolerance = max(1, n_iters) * (case.tokens + 5) * eps * token_norm(x, "rows").cpu()
    error = token_norm(y - x, "rows").cpu()
    assert bool((error <= tolerance).all()), f"identical rows moved by {error.tolist()} > {tolerance.tolist()}"
