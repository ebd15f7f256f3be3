"""The certificates are computed for the whole batch at once, and each element's values are exactly those
of that element computed alone: no element leaks into another's bound, and no per-element loop is needed."""

from __future__ import annotations

import torch
from hypothesis import given
from torch import Tensor

from iqa import analysis
from iqa.analysis.certificates import SCORES_A_YT, head_terms, score_form
from iqa.variants import Tag, Variant
from properties.gradient_reference import token_spread
from properties.strategies import ANY_SCALE, Case, cases
from properties.tags import requires


def row_spread(t: Tensor) -> Tensor:
    """[B]: the largest over heads of :func:`token_spread`, max ||row|| / diameter, for t [B, h, N, .]."""
    return token_spread(t.flatten(0, 1)).view(t.shape[0], -1).amax(dim=-1)


@requires(Tag.SCORE_MATRIX)
@given(case=cases(batch=(2, 5), scales=ANY_SCALE))
def test_batched_certificates_equal_per_element(variant: Variant, case: Case, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    batched = analysis.certificates(layer, x)
    with torch.no_grad():
        A, U = head_terms(layer, x)  # [B, h, N, .]: what the certificates take norms and diameters of
        # the diameters taken: the values' always; the score matrix's and the input's only in the form that
        # takes them (a spread of rows whose diameter a certificate does not take would only loosen the bound)
        spreads = [row_spread(U)]
        if score_form(layer) != SCORES_A_YT:
            spreads += [row_spread(A), row_spread(x[:, None])]
        spread = torch.stack(spreads).amax(dim=0)
    for b in range(case.batch):  # the reference: one element at a time
        alone = analysis.certificates(layer, x[b : b + 1])
        for name in ("kappa_inf", "kappa_F", "kappa_weights"):
            got, want = getattr(batched, name)[b], getattr(alone, name)[0]
            # the same operations on the same numbers: mostly equal to the last bit, but a batched and a single
            # matrix product may run different kernels, which order each n-term dot product differently (each
            # within n eps of the rows' size), and a certificate multiplies up to four such factors: 4 (n + 1) eps,
            # n the widest axis, times 1 + 2 s where a factor is a diameter, a difference of rows, whose rounding
            # is relative to the largest row, s = max ||row|| / diameter (thorough found 13.7 eps at N = D = 2,
            # scale 10, where the values' rows were 2.7 times their diameter)
            eps = torch.finfo(x.dtype).eps
            n = max(x.shape[-2], x.shape[-1])
            bound = 4 * (n + 1) * eps * (1 + 2 * spread[b]) * want.abs()
            assert torch.equal(got, want) or bool((got - want).abs() <= bound), (
                f"{name}[{b}]: batched {float(got)} vs alone {float(want)} (allowed {float(bound):.3e})"
            )
