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
            # the same operations on the same numbers: mostly equal to the last bit, but a batched and a single
            # matrix product may run different kernels, which order each n-term dot product differently (each
            # within n eps relative), and a certificate multiplies up to four such factors: 4 (n + 1) eps, n the
            # widest axis (measured on thorough: up to 6.8 eps at N = D = 2, where this allows 12)
            eps = torch.finfo(x.dtype).eps
            n = max(x.shape[-2], x.shape[-1])
            assert torch.equal(got, want) or bool((got - want).abs() <= 4 * (n + 1) * eps * want.abs()), (
                f"{name}[{b}]: batched {float(got)} vs alone {float(want)}"
            )
