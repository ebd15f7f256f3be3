"""The slot tags: token permutation invariance and slot permutation equivariance.

A slot layer's state is [B, K, D_y]: K slots that attend over the N tokens of x. Two
claims a slot layer makes, each gated by its tag:

- ``token_permutation_invariant``: permuting the tokens of x leaves the output unchanged.
  Not bitwise: the sums over the tokens run in another order, which rounds differently.
  Both problems are solved by Picard from the layer's own start, each to observation_tol;
  the two maps agree exactly, so the two states are within (defect + defect') /
  sigma_min(I - J(y)) of each other (first order, at an isolated fixed point; defect =
  residual + one evaluation's rounding, as in test_invariances), and the outputs within
  ||dg/dy||_2 times that plus the rounding of two readouts (:func:`readout_rounding`).
- ``slot_permutation_equivariant``: permuting the initial slots permutes the output slots.
  First for the map (and the readout) at the layer's own start and at its first iterate:
  f(P y; x) = P f(y; x) and g(P y, x) = P g(y, x), to two evaluations' rounding; then for
  the solve: Picard from P y0 ends at P y*(y0), within the same first-order bound as above.

A mutant of the toy slot variant (properties/toy_slots.py) that breaks each claim fails here
(properties/meta/test_slot_mutants.py).
"""

from __future__ import annotations

import math

import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor
from torch.func import jacrev, vmap

from iqa import analysis, solve
from iqa.analysis.certified_solution import in_norm, token_norm
from iqa.analysis.rounding import map_rounding
from iqa.layer import FixedPointLayer
from iqa.rejections import reject
from iqa.variants import Tag, Variant
from properties.fixed_points import require_converged
from properties.regimes import observation_tol, observe
from properties.strategies import CONTRACTIVE_SCALES, FACTORED_ELEMENTS, Case, cases
from properties.tags import requires

#: Picard budget of the solves (their tolerance is regimes.observation_tol).
MAX_ITER = 500

#: Contractive scales (a unique fixed point, where a slot-permutation-equivariant map's is symmetric in the slots:
#: a solve from permuted slots must end where the unpermuted one did) and beyond, where slots break symmetry.
SLOT_SCALES = st.one_of(CONTRACTIVE_SCALES, st.floats(1.0, 4.0))
slot_cases = cases(tokens=(2, 6), scales=SLOT_SCALES, max_elements=FACTORED_ELEMENTS)


def picard(layer: FixedPointLayer, x: Tensor, y0: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Picard from y0 to observation_tol(x); (y, defect) with defect = ||f(y) - y||_F + the rounding of one
    evaluation of f (map_rounding per row, sqrt(K) times for Frobenius), per batch element. Rejects a case
    that does not converge, with the reason recorded (a layer that never converges gets "not reached")."""
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        solution = solve(f, y0, tol=observation_tol(x), max_iter=MAX_ITER)
        event(f"slots: Picard {solution.status.name}")
        require_converged(solution, f, scale)
        y = solution.y
        residual = token_norm(f(y) - y, "fro").cpu()
    observe(layer, x, solution)
    return y, residual + in_norm(map_rounding(layer, x, y).cpu(), "fro", y.shape[-2])


def isolation(layer: FixedPointLayer, x: Tensor, y: Tensor) -> Tensor:
    """sigma_min(I - J(y)) per batch element: two approximate fixed points of the same map near y are within
    (defect + defect') / sigma_min of each other, to first order. Rejects a case where it is 0."""
    J = analysis.jacobian(layer.fixed_point_map(x), y).to(torch.float64)
    eye = torch.eye(J.shape[-1], dtype=torch.float64, device=J.device)
    sigma = torch.linalg.svdvals(eye - J)[..., -1].cpu()
    if not bool((sigma > 0).all()):
        reject("no isolated fixed point (sigma_min(I - J) = 0)")
    return sigma


def readout_jacobians(layer: FixedPointLayer, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """||dg/dy||_2 and ||dg/dx||_2 of the readout g(y, x) per batch element (dense, by reverse mode), float64."""

    def one(y_b: Tensor, x_b: Tensor) -> Tensor:
        return layer.readout(y_b[None], x_b[None])[0]

    with torch.no_grad():
        d_y, d_x = vmap(jacrev(one, argnums=(0, 1)))(y.detach(), x.detach())
    batch = y.shape[0]
    norms = [
        torch.linalg.matrix_norm(d.reshape(batch, -1, int(math.prod(shape))).to(torch.float64), ord=2).cpu()
        for d, shape in ((d_y, y.shape[1:]), (d_x, x.shape[1:]))
    ]
    return norms[0], norms[1]


def readout_rounding(layer: FixedPointLayer, x: Tensor, y: Tensor, dg_dy: Tensor, dg_dx: Tensor) -> Tensor:
    """A first-order bound on the rounding of one readout g(y, x) in the Frobenius norm, per batch element:
    (n + 2) sqrt(n) eps (||dg/dy||_2 ||y||_F + ||dg/dx||_2 ||x||_F) with n = K + N + D the longest sum a readout
    of sums over slots, tokens or features runs: a computed sum of n products errs by gamma_n times the sum of
    their moduli (|W| |y| for a linear readout W y), and || |W| ||_2 <= sqrt(n) ||W||_2; the readout's own
    Jacobian stands for W. The identity readout (the default) is exact: 0."""
    with torch.no_grad():
        if layer.readout(y, x) is y:
            return torch.zeros(y.shape[0], dtype=torch.float64)
    eps = torch.finfo(y.dtype).eps
    n = y.shape[-2] + x.shape[-2] + max(x.shape[-1], y.shape[-1])
    return (n + 2) * math.sqrt(n) * eps * (dg_dy * token_norm(y, "fro").cpu() + dg_dx * token_norm(x, "fro").cpu())


def output_gap(layer: FixedPointLayer, x: Tensor, y: Tensor, x2: Tensor, y2: Tensor) -> Tensor:
    """||g(y2, x2) - g(y, x)||_F per batch element, in float64."""
    with torch.no_grad():
        return token_norm(layer.readout(y2, x2) - layer.readout(y, x), "fro").cpu()


# ---------------------------------------------------------------------------------------------------------------
# token permutation invariance
# ---------------------------------------------------------------------------------------------------------------


@requires(Tag.TOKEN_PERMUTATION_INVARIANT)
@given(case=slot_cases, data=st.data())
def test_token_permutation_invariance(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    """g(y*(P x), P x) = g(y*(x), x): the state within (defect + defect') / sigma_min(I - J), the output within
    ||dg/dy|| times that plus two readouts' rounding (module docstring)."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    perm = torch.tensor(data.draw(st.permutations(range(case.tokens)), label="permutation"), device=device)
    if not bool((perm != torch.arange(case.tokens, device=device)).any()):
        reject("the identity permutation of the tokens (it proves nothing)")
    x_perm = x[:, perm]
    y, defect = picard(layer, x, layer.initial_point(x), case.scale)
    y_perm, defect_perm = picard(layer, x_perm, layer.initial_point(x_perm), case.scale)
    sigma = isolation(layer, x, y)
    state_bound = (defect + defect_perm) / sigma
    state_gap = token_norm(y_perm - y, "fro").cpu()
    dg_dy, dg_dx = readout_jacobians(layer, x, y)
    bound = (
        dg_dy * state_bound
        + readout_rounding(layer, x, y, dg_dy, dg_dx)
        + readout_rounding(layer, x_perm, y_perm, dg_dy, dg_dx)
    )
    gap = output_gap(layer, x, y, x_perm, y_perm)
    note(f"state gap {state_gap.tolist()} (bound {state_bound.tolist()}); output gap {gap.tolist()}, bound {bound}")
    assert bool((state_gap <= state_bound).all()), (
        f"permuting the tokens moved the fixed point state by {state_gap.tolist()} > {state_bound.tolist()}"
    )
    assert bool((gap <= bound).all()), f"permuting the tokens changed the output by {gap.tolist()} > {bound.tolist()}"


# ---------------------------------------------------------------------------------------------------------------
# slot permutation equivariance
# ---------------------------------------------------------------------------------------------------------------


def slot_permutation(data: st.DataObject, slots: int, device: torch.device | str) -> Tensor:
    """A permutation of the K slots other than the identity (K >= 2; with one slot there is nothing to permute,
    and the case is rejected)."""
    event(f"slots: K = {slots}")
    if slots < 2:
        reject("one slot: no permutation of the slots to apply")
    perm = data.draw(st.permutations(range(slots)).filter(lambda p: list(p) != sorted(p)), label="slot permutation")
    return torch.tensor(perm, device=device)


@requires(Tag.SLOT_PERMUTATION_EQUIVARIANT)
@given(case=cases(tokens=(1, 6), max_elements=FACTORED_ELEMENTS), data=st.data())
def test_map_is_slot_permutation_equivariant(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    """f(P y; x) = P f(y; x) and g(P y, x) = P g(y, x) at the layer's own start y0 and at f(y0), in every regime:
    each side is one evaluation, so they differ by at most two evaluations' rounding (map_rounding per row; for
    the readout, readout_rounding)."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        y0 = layer.initial_point(x)
        perm = slot_permutation(data, y0.shape[-2], device)
        for label, y in (("y0", y0), ("f(y0)", f(y0))):
            moved = f(y[:, perm])
            expected = f(y)[:, perm]
            gap = token_norm(moved - expected, "rows").cpu()
            # two evaluations, at y and at P y (the same rows), each within map_rounding per row
            bound = 2 * map_rounding(layer, x, y).cpu()
            note(f"{label}: ||f(P y) - P f(y)||_(2,inf) {gap.tolist()}, bound {bound.tolist()}")
            assert bool((gap <= bound).all()), (
                f"f(P y; x) != P f(y; x) at {label}: rows differ by {gap.tolist()} > {bound.tolist()}"
            )
            dg_dy, dg_dx = readout_jacobians(layer, x, y)
            out_gap = token_norm(layer.readout(y[:, perm], x) - layer.readout(y, x)[:, perm], "fro").cpu()
            out_bound = 2 * readout_rounding(layer, x, y, dg_dy, dg_dx)
            assert bool((out_gap <= out_bound).all()), (
                f"g(P y, x) != P g(y, x) at {label}: differ by {out_gap.tolist()} > {out_bound.tolist()}"
            )


@requires(Tag.SLOT_PERMUTATION_EQUIVARIANT)
@given(case=slot_cases, data=st.data())
def test_solve_from_permuted_slots(variant: Variant, case: Case, data: st.DataObject, device) -> None:
    """Picard from P y0 ends at P y*(y0): the two states within (defect + defect') / sigma_min(I - J) (the maps
    agree exactly, and P y* is a fixed point of the same map), the outputs within ||dg/dy|| times that plus two
    readouts' rounding."""
    layer = case.layer(variant, device)
    x = case.inputs(device)
    y0 = layer.initial_point(x)
    perm = slot_permutation(data, y0.shape[-2], device)
    y, defect = picard(layer, x, y0, case.scale)
    y_perm, defect_perm = picard(layer, x, y0[:, perm], case.scale)
    sigma = isolation(layer, x, y)
    state_bound = (defect + defect_perm) / sigma
    state_gap = token_norm(y_perm - y[:, perm], "fro").cpu()
    dg_dy, dg_dx = readout_jacobians(layer, x, y)
    bound = dg_dy * state_bound + 2 * readout_rounding(layer, x, y, dg_dy, dg_dx)
    with torch.no_grad():
        gap = token_norm(layer.readout(y_perm, x) - layer.readout(y, x)[:, perm], "fro").cpu()
    note(f"state gap {state_gap.tolist()} (bound {state_bound.tolist()}); output gap {gap.tolist()}")
    assert bool((state_gap <= state_bound).all()), (
        f"the solve from permuted slots did not end at the permuted fixed point: {state_gap.tolist()} > "
        f"{state_bound.tolist()}"
    )
    assert bool((gap <= bound).all()), f"the output slots are not permuted alike: {gap.tolist()} > {bound.tolist()}"
