"""The certificates are computed for the whole batch at once, and each element's values are exactly those
of that element computed alone: no element leaks into another's bound, and no per-element loop is needed."""

from __future__ import annotations

import torch
from hypothesis import given

from iqa import analysis
from iqa.variants import Tag, Variant
from properties.strategies import ANY_SCALE, Case, cases
from properties.tags import requires


@requires(Tag.SCORE_MATRIX)
@given(case=cases(batch=(2, 5), scales=ANY_SCALE))
def test_batched_certificates_equal_per_element(variant: Variant, case: Case, device) -> None:
    layer = case.layer(variant, device)
    x = case.inputs(device)
    batched = analysis.certificates(layer, x)
    for b in range(case.batch):  # the reference: one element at a time
        alone = analysis.certificates(layer, x[b : b + 1])
        for name in ("kappa_inf", "kappa_F", "kappa_weights"):
            got, want = getattr(batched, name)[b], getattr(alone, name)[0]
            # the same operations on the same numbers: equal to the last bit (LAPACK's batched SVD runs
            # the same routine per matrix), and a relative 4 eps where a backend reorders a reduction
            eps = torch.finfo(x.dtype).eps
            assert torch.equal(got, want) or bool((got - want).abs() <= 4 * eps * want.abs()), (
                f"{name}[{b}]: batched {float(got)} vs alone {float(want)}"
            )
