"""The multi-head certificates (docs/theory.md#multi-head) on multi-head layers built to order: the sum over heads
of the single-head certificates is sound for any number of heads and widths, and attained when the heads are
copies of each other on the extremal two-token configuration.

The references are independent of iqa.analysis.certificates: the Jacobian from torch.autograd (dense, per
element), its largest singular value and largest absolute row-block gain computed here.
"""

from __future__ import annotations

import torch
from hypothesis import example, given, note, target
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis
from iqa.layer import linear_init_
from iqa.variants.multihead import MultiHeadHopfieldAttention

F64 = torch.float64
EPS = torch.finfo(F64).eps


def layer_of(heads: int, width: int, scale: float, seed: int) -> MultiHeadHopfieldAttention:
    layer = MultiHeadHopfieldAttention(heads * width, heads=heads).to(F64)
    generator = torch.Generator().manual_seed(seed)
    for linear in (layer.W_Q, layer.W_K, layer.W_V, layer.W_O):
        linear_init_(linear, scale, generator)
    return layer


def dense_jacobian(layer: MultiHeadHopfieldAttention, x: Tensor, y: Tensor) -> Tensor:
    """[N D, N D] for one element, by torch.autograd.functional.jacobian of f on that element alone."""
    f = layer.fixed_point_map(x)
    n = y.numel()
    return torch.autograd.functional.jacobian(lambda z: f(z[None])[0], y[0]).reshape(n, n)


def cancellation(layer: MultiHeadHopfieldAttention, x: Tensor) -> float:
    """max over heads of max_j ||p_j|| / diam(p) for the output-space values U_h = V_h W_O^hT and the score rows
    A_h: a difference of two rows, which both the Jacobian and the certificate take, rounds to eps times the rows'
    size, so relative to the difference it costs this factor (near 1 for spread rows, large for close ones)."""
    with torch.no_grad():
        points = [layer.head_values(x) @ layer.head_outputs(), layer.head_score_matrices(x)]  # [1, h, N, .] each
    return max(float((p.norm(dim=-1).amax(-1) / torch.cdist(p, p).amax((-2, -1))).max()) for p in points)


def row_gain(J: Tensor, tokens: int, dim: int) -> Tensor:
    """||J||_(2,inf -> 2,inf) of a block-diagonal J (Hopfield scores): the largest 2-norm of a diagonal block."""
    blocks = J.reshape(tokens, dim, tokens, dim)
    return torch.stack([torch.linalg.matrix_norm(blocks[i, :, i, :], ord=2) for i in range(tokens)]).max()


@given(
    heads=st.integers(1, 4),
    width=st.integers(1, 3),
    tokens=st.integers(2, 5),
    scale=st.floats(0.1, 4.0),
    temperature=st.sampled_from([0.1, 1.0, 3.0, 10.0]),
    seed=st.integers(0, 2**31 - 1),
)
@example(heads=1, width=1, tokens=2, scale=0.5, temperature=0.1, seed=7330981)  # thorough: ratio 1 + 116 eps
def test_head_sum_bounds_the_jacobian(
    heads: int, width: int, tokens: int, scale: float, temperature: float, seed: int
) -> None:
    """||J(y)||_2 <= kappa_F and the largest block gain <= kappa_inf at points of the hull, for any h and d; target()
    pushes the ratio up. The Jacobian's and the certificate's rounding: (N D + 8) eps relative, times the
    cancellation in the row differences both take (thorough: 116 eps over the bound at N = 2, D = 1, where the
    bound is attained)."""
    layer = layer_of(heads, width, scale, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, tokens, heads * width, generator=g, dtype=F64)
    y = torch.softmax(temperature * torch.randn(tokens, tokens, generator=g, dtype=F64), -1) @ x
    J = dense_jacobian(layer, x, y)
    certs = analysis.certificates(layer, x)
    slack = 1 + (tokens * heads * width + 8) * EPS * (1 + cancellation(layer, x))
    ratio_F = float(torch.linalg.matrix_norm(J, ord=2) / (certs.kappa_F[0] * slack))
    ratio_inf = float(row_gain(J, tokens, heads * width) / (certs.kappa_inf[0] * slack))
    target(ratio_F, label="||J||_2 / kappa_F")
    target(ratio_inf, label="block gain / kappa_inf")
    note(f"kappa_F {float(certs.kappa_F[0]):.4g}: ratios {ratio_F:.4f} (F), {ratio_inf:.4f} (rows)")
    assert ratio_F <= 1, f"||J||_2 exceeds kappa_F for {heads} heads: ratio {ratio_F:.6f}"
    assert ratio_inf <= 1, f"a block of J exceeds kappa_inf for {heads} heads: ratio {ratio_inf:.6f}"


@given(
    heads=st.integers(1, 4),
    width=st.integers(1, 3),
    c=st.floats(0.25, 2.0),
    scale=st.floats(0.25, 2.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_head_sum_is_attained_by_identical_heads(heads: int, width: int, c: float, scale: float, seed: int) -> None:
    """Heads that are copies of one head (the same blocks of W_Q, W_K, W_V and the same column block of W_O), on
    x = (c u, -c u) (u a unit vector) at y = 0 (all scores 0: uniform attention in every head): J = h J_1 and
    J_1 attains the single-head bound there (docs/theory.md#both-are-attained), so ||J||_2 = kappa_F = kappa_inf
    = sum_h kappa_h. Both sides are computed in float64 from the same weights: equal to (N D + 8) eps."""
    one = layer_of(1, width, scale, seed)
    D = heads * width
    layer = MultiHeadHopfieldAttention(D, heads=heads).to(F64)
    g = torch.Generator().manual_seed(seed + 1)
    lift = torch.randn(width, D, generator=g, dtype=F64)  # head inputs: each head reads x through the same map
    with torch.no_grad():
        for name in ("W_Q", "W_K", "W_V"):
            block = getattr(one, name).weight @ lift  # [d, D]: the head's rows, the same in every head
            getattr(layer, name).weight.copy_(block.repeat(heads, 1))
        out = torch.randn(D, width, generator=g, dtype=F64) * one.W_O.weight.norm()
        layer.W_O.weight.copy_(out.repeat(1, heads))  # the same column block for every head
    u = torch.randn(D, generator=g, dtype=F64)
    x = torch.stack([c * u / u.norm(), -c * u / u.norm()])[None]
    J = dense_jacobian(layer, x, torch.zeros_like(x))
    certs = analysis.certificates(layer, x)
    sigma = float(torch.linalg.matrix_norm(J, ord=2))
    kappa_F, kappa_inf = float(certs.kappa_F[0]), float(certs.kappa_inf[0])
    tolerance = (2 * D + 8) * EPS * kappa_F
    note(f"||J||_2 {sigma:.6g}, kappa_F {kappa_F:.6g}, kappa_inf {kappa_inf:.6g}")
    assert abs(sigma - kappa_F) <= tolerance, (
        f"{heads} identical heads: ||J||_2 = {sigma:.6g} is not the certificate {kappa_F:.6g}: the sum is not tight"
    )
    assert abs(float(row_gain(J, 2, D)) - kappa_inf) <= tolerance, "kappa_inf is not attained by identical heads"
