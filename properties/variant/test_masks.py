"""Masks: a causal layer's output at position i ignores the tokens after i, and a padding-invariant layer's
unpadded outputs ignore whatever the padded tokens hold (docs/theory.md#masks).

Both claims rest on one fact: the rows the claim is about (positions <= i; the unpadded tokens) form a
closed subsystem, whose rows of f(y) read only those rows of y and those tokens. So:

- in seed mode (a fixed number of steps from y0 = x) every iterate's subsystem rows are the same
  computation on the same numbers whatever the other tokens hold: equal bit for bit (the masked terms
  are exact zeros);
- in solve mode the solver stops on the residual of *all* rows (and Anderson mixes every row into each
  step), so the two runs may stop at different steps: each endpoint has a subsystem residual <= tol,
  and under a certificate kappa < 1 of the subsystem (the same layer's certificate on the subsystem's
  tokens alone: a masked softmax is a softmax over fewer tokens, whose diameters are no larger) each is
  within (tol + eps_f) / (1 - kappa) of the subsystem's one fixed point (Banach), so the two are within
  twice that, in the certificate's norm.

The other tokens are drawn wild: up to 1e6 times the scale of x, repeated, or copies of the claimed
tokens, so that a mask that leaks even e^-30 of a weight shows.
"""

from __future__ import annotations

import math

import torch
from hypothesis import event, given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis
from iqa.analysis.certified_solution import CERTIFICATE_NORMS, in_norm, token_norm
from iqa.analysis.rounding import map_rounding
from iqa.variants import Tag, Variant
from properties.fixed_points import require_converged
from properties.regimes import require
from properties.strategies import ANY_SCALE, CONTRACTIVE_SCALES, Case, cases
from properties.tags import requires

#: How the tokens a claim says nothing about are refilled: large random, one large token repeated, or copies of
#: the tokens the claim is about (duplicates).
FILLS = ("random", "repeated", "copies")
#: Their size relative to x ~ N(0, 1): far outside x's range, yet far from overflow (scores stay below 1e13
#: in float32 even against the queries of a wild start y0 = x).
MAGNITUDES = (1.0, 1e3, 1e6)
#: Steps in seed mode.
SEED_STEPS = st.integers(0, 12)
#: Solve mode: both solvers, with a tolerance between loose and near the float32 floor.
SOLVERS = st.sampled_from(["picard", "anderson"])
TOL_EXPONENTS = st.sampled_from([3, 5])
#: Solve mode keeps the other tokens within 1e3 of x's scale: the solver's residual covers every row, and a row
#: that adds a token of size m (injection's + x) cannot get its residual below ~m eps (1e-1 in float32 at 1e6).
SOLVE_MAGNITUDES = (1.0, 1e3)
#: Steps allowed to a solve; a run that does not converge is not compared (it has no residual bound).
SOLVE_MAX_ITER = 500


def refill(x: Tensor, where: Tensor, keep: Tensor, fill: str, magnitude: float, seed: int) -> Tensor:
    """x with the tokens at ``where`` ([B, N] bool) replaced by wild content (``fill``, ``magnitude``); copies come
    from the tokens at ``keep`` ([B, N] bool, at least one per element)."""
    g = torch.Generator().manual_seed(seed)
    B, N, D = x.shape
    if fill == "random":
        content = torch.randn(B, N, D, generator=g, dtype=torch.float64) * magnitude
    elif fill == "repeated":
        content = (torch.randn(B, 1, D, generator=g, dtype=torch.float64) * magnitude).expand(B, N, D)
    else:  # copies of kept tokens (drawn per position), times the magnitude
        picks = torch.stack(
            [
                torch.nonzero(keep[b].cpu()).flatten()[torch.randint(int(keep[b].sum()), (N,), generator=g)]
                for b in range(B)
            ]
        )
        content = torch.gather(x.detach().cpu().to(torch.float64), 1, picks[:, :, None].expand(B, N, D)) * magnitude
    content = content.to(dtype=x.dtype, device=x.device)
    return torch.where(where[:, :, None], content, x)


@st.composite
def paddings(draw: st.DrawFn, case: Case) -> Tensor:
    """A key_padding_mask [B, N] (True = padded) with at least one unpadded token per element: trailing
    padding (as a batch of sequences of different lengths) or any pattern."""
    B, N = case.batch, case.tokens
    rows = []
    for _ in range(B):
        if draw(st.booleans(), label="trailing padding"):
            length = draw(st.integers(1, N), label="unpadded length")
            rows.append([k >= length for k in range(N)])
        else:
            row = draw(st.lists(st.booleans(), min_size=N, max_size=N), label="padded tokens")
            row[draw(st.integers(0, N - 1), label="a token kept")] = False
            rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def wild(data: st.DataObject, magnitudes: tuple[float, ...] = MAGNITUDES) -> tuple[str, float]:
    fill = data.draw(st.sampled_from(FILLS), label="fill")
    magnitude = data.draw(st.sampled_from(magnitudes), label="magnitude")
    event(f"fill {fill}, magnitude {magnitude:g}")
    return fill, magnitude


def differ_bitwise(a: Tensor, b: Tensor) -> Tensor:
    """Per element: does any entry differ (NaN-equal; -0 and +0 are the same number)?"""
    same = (a == b) | (a.isnan() & b.isnan())
    return ~same.reshape(a.shape[0], -1).all(dim=-1)


# --- causal -------------------------------------------------------------------------------------------------------


@requires(Tag.CAUSAL)
@given(case=cases(tokens=(2, 6), scales=ANY_SCALE), n_iters=SEED_STEPS, data=st.data())
def test_causal_output_ignores_later_tokens(variant: Variant, case: Case, n_iters: int, data: st.DataObject, device):
    """Seed mode: changing the tokens after position i leaves outputs 0..i equal bit for bit."""
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)
    cut = data.draw(st.integers(0, case.tokens - 2), label="last position kept")
    later = torch.arange(case.tokens)[None, :].expand(case.batch, -1) > cut
    fill, magnitude = wild(data)
    x2 = refill(x, later.to(device), ~later.to(device), fill, magnitude, case.seed + 11)
    with torch.no_grad():
        y1, y2 = layer(x)[:, : cut + 1], layer(x2)[:, : cut + 1]
    changed = differ_bitwise(y1, y2)
    note(f"cut {cut}: largest change {float((y1 - y2).abs().max()):.3e}")
    assert not bool(changed.any()), (
        f"outputs 0..{cut} changed when only the tokens after {cut} changed ({n_iters} seed steps): "
        f"largest change {float((y1 - y2).abs().max()):.3e} in elements {changed.nonzero().flatten().tolist()}"
    )


@requires(Tag.CAUSAL, Tag.SCORE_MATRIX)
@given(
    case=cases(tokens=(2, 6), scales=CONTRACTIVE_SCALES),
    solver=SOLVERS,
    tol_exponent=TOL_EXPONENTS,
    data=st.data(),
)
def test_causal_solution_ignores_later_tokens(
    variant: Variant, case: Case, solver: str, tol_exponent: int, data: st.DataObject, device
):
    """Solve mode: outputs 0..i of two solves that differ only after i agree within 2 (tol + eps_f) / (1 - kappa),
    kappa the certificate of the layer on x_0..x_i alone (the prefix's map)."""
    x = case.inputs(device)
    cut = data.draw(st.integers(0, case.tokens - 2), label="last position kept")
    later = torch.arange(case.tokens)[None, :].expand(case.batch, -1) > cut
    fill, magnitude = wild(data, SOLVE_MAGNITUDES)
    x2 = refill(x, later.to(device), ~later.to(device), fill, magnitude, case.seed + 11)
    prefix = [x[b : b + 1, : cut + 1] for b in range(case.batch)]
    compare_solutions(variant, case, solver, tol_exponent, x, x2, None, prefix, ~later, device)


# --- padding ------------------------------------------------------------------------------------------------------


@requires(Tag.PADDING_INVARIANT)
@given(case=cases(tokens=(2, 6), scales=ANY_SCALE), n_iters=SEED_STEPS, data=st.data())
def test_padding_content_is_ignored(variant: Variant, case: Case, n_iters: int, data: st.DataObject, device):
    """Seed mode: whatever the padded tokens hold, the unpadded outputs are equal bit for bit."""
    layer = case.layer(variant, device, n_iters=n_iters)
    x = case.inputs(device)
    mask = data.draw(paddings(case), label="key_padding_mask").to(device)
    fill, magnitude = wild(data)
    x2 = refill(x, mask, ~mask, fill, magnitude, case.seed + 11)
    with torch.no_grad():
        y1, y2 = layer(x, key_padding_mask=mask), layer(x2, key_padding_mask=mask)
    kept = (~mask)[:, :, None].expand_as(y1)
    changed = differ_bitwise(torch.where(kept, y1, 0), torch.where(kept, y2, 0))
    note(f"mask {mask.tolist()}: largest change {float(((y1 - y2) * kept).abs().max()):.3e}")
    assert not bool(changed.any()), (
        f"unpadded outputs changed when only the padded tokens changed ({n_iters} seed steps, mask "
        f"{mask.tolist()}): elements {changed.nonzero().flatten().tolist()}"
    )


@requires(Tag.PADDING_INVARIANT, Tag.SCORE_MATRIX)
@given(
    case=cases(tokens=(2, 6), scales=CONTRACTIVE_SCALES),
    solver=SOLVERS,
    tol_exponent=TOL_EXPONENTS,
    data=st.data(),
)
def test_padding_content_is_ignored_at_the_solution(
    variant: Variant, case: Case, solver: str, tol_exponent: int, data: st.DataObject, device
):
    """Solve mode: the unpadded outputs of two solves that differ only in padded content agree within
    2 (tol + eps_f) / (1 - kappa), kappa the certificate of the layer on the unpadded tokens alone."""
    x = case.inputs(device)
    mask = data.draw(paddings(case), label="key_padding_mask").to(device)
    fill, magnitude = wild(data, SOLVE_MAGNITUDES)
    x2 = refill(x, mask, ~mask, fill, magnitude, case.seed + 11)
    kept = [x[b : b + 1, ~mask[b]] for b in range(case.batch)]
    compare_solutions(variant, case, solver, tol_exponent, x, x2, mask, kept, ~mask.cpu(), device)


def compare_solutions(
    variant: Variant,
    case: Case,
    solver: str,
    tol_exponent: int,
    x: Tensor,
    x2: Tensor,
    mask: Tensor | None,
    subsystems: list[Tensor],
    claimed: Tensor,
    device,  # type: ignore[no-untyped-def]
) -> None:
    """Solve (x, mask) and (x2, mask) and compare the ``claimed`` rows ([B, N] bool) within the Banach bound of
    each element's subsystem (its tokens ``subsystems[b]``, [1, n_b, D])."""
    probe = case.layer(variant, device)
    names, kappas, eps_rows = [], [], []
    for tokens in subsystems:
        name, kappa = analysis.best_certificate(probe, tokens)
        names.append(name)
        kappas.append(float(kappa[0]))
        # the rounding of one evaluation of the subsystem's rows at its start (again at the endpoints below)
        eps_rows.append(float(map_rounding(probe, tokens, tokens)[0]))
    event(f"subsystem certificate < 1: {all(k < 1 for k in kappas)}")
    require(all(k < 1 for k in kappas), "subsystem certificates kappa < 1")  # else no unique fixed point
    floor = 2 * max(e * math.sqrt(case.tokens) / (1 - k) for e, k in zip(eps_rows, kappas))
    tol = floor * 10.0**tol_exponent  # above the rounding floor of the full residual
    layer = case.layer(variant, device, solver=solver, tol=tol, max_iter=SOLVE_MAX_ITER)
    with torch.no_grad():
        y1 = layer(x) if mask is None else layer(x, key_padding_mask=mask)
        first = layer.last_solution
        y2 = layer(x2) if mask is None else layer(x2, key_padding_mask=mask)
        second = layer.last_solution
    assert first is not None and second is not None
    event(f"both solves converged: {first.converged and second.converged}")
    for solution, inputs in ((first, x), (second, x2)):  # a run that did not converge has no residual bound
        f = layer.fixed_point_map(inputs) if mask is None else layer.fixed_point_map(inputs, key_padding_mask=mask)
        require_converged(solution, f, case.scale)
    claimed = claimed.to(y1.device)
    for b, (name, kappa, eps_start) in enumerate(zip(names, kappas, eps_rows)):
        which = CERTIFICATE_NORMS[name]
        n_b = subsystems[b].shape[-2]
        rows = claimed[b]
        # the rounding bound grows with ||y||: take it at the start and at both endpoints (iterates lie between)
        ends = [y[b : b + 1, rows] for y in (y1, y2)]
        eps_f = max([eps_start] + [float(map_rounding(probe, subsystems[b], end)[0]) for end in ends])
        gap = float(token_norm((y1[b, rows] - y2[b, rows])[None], which)[0])
        # each endpoint's subsystem residual is <= its whole residual <= tol (the solver's Frobenius norm bounds the
        # row norm too); the computed residual is off by eps_f per row; kappa is computed to (n + D + 6) eps
        slack = kappa * (n_b + case.dim + 6) * torch.finfo(case.dtype).eps
        bound = 2 * (tol + float(in_norm(torch.tensor(eps_f), which, n_b))) / (1 - kappa - slack)
        note(f"element {b}: {name} {kappa:.3g} on {n_b} tokens, ||dy|| {gap:.3e}, bound {bound:.3e}")
        assert gap <= bound, (
            f"element {b}: the claimed outputs of two solves differ by {gap:.3e} > 2 (tol + eps_f) / (1 - {name}) "
            f"= {bound:.3e} ({solver}, tol {tol:.2e})"
        )
