"""rho(J) and ||J||_2 at n = N D = 65 536 (N = 1024, D = 64) from Jacobian-vector products only.

Each case runs once (one round: a single estimate takes tens of seconds) on one batch element in float64
and one torch thread, and its summary row holds the wall time, the products used (a deterministic count),
the residuals, whether each estimate converged and was confirmed by its deflated check, and the error
against an independent answer:

- ``blocks``: a block-diagonal linear map (256 blocks of 256 x 256, each Q T Q^T with a known
  quasi-triangular T) applied matrix-free; the reference rho is the largest modulus placed on T's
  diagonal, and ||J||_2 the largest of the blocks' svdvals;
- ``hopfield``: the real attention map at its fixed point; its Jacobian is block diagonal over tokens
  (df_i/dy_i = Cov_{p_i}(v, a), iqa.analysis.certificates), so D jvps give every D x D token block and
  numpy's eigvals / torch's svdvals of the blocks give the dense answer for the whole n = 65 536;
- ``reference``: the seed's map at its fixed point (dense J at this size is out of reach: 65 536 jvps):
  time, residual and check only.

The target (issue 14) is 30 s per batch element for each estimate.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.func import jvp

from iqa import analysis, solve
from iqa.variants import BUILTIN_VARIANTS

N, D = 1024, 64
F64 = torch.float64
TABLE = f"rho(J) and ||J||_2 at n = {N * D} (N = {N}, D = {D}), float64, one element: wall (s), products, error"
BUDGET_S = 30.0


def _block_operator(seed: int = 0, block: int = 256) -> tuple[Tensor, float, float]:
    """[n / block, block, block] blocks Q T Q^T; the rho placed on the diagonals; the largest block svdval."""
    g = torch.Generator().manual_seed(seed)
    count = N * D // block
    T = torch.triu(torch.randn(count, block, block, generator=g, dtype=F64), diagonal=1) * 0.3 / math.sqrt(block)
    diag = 0.9 * (2 * torch.rand(count, block, generator=g, dtype=F64) - 1)
    T.diagonal(dim1=-2, dim2=-1).copy_(diag)
    T[7, 0, 0] = -0.97  # the dominant eigenvalue, negative, in one block (moduli elsewhere up to 0.9)
    Q, R = torch.linalg.qr(torch.randn(count, block, block, generator=g, dtype=F64))
    Q = Q * torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))[:, None, :]
    M = Q @ T @ Q.transpose(1, 2)
    rho = float(T.diagonal(dim1=-2, dim2=-1).abs().max())
    return M, rho, float(torch.linalg.svdvals(M).max())


def _case(name: str) -> tuple[object, Tensor, float | None, float | None]:
    """(the map, the point, the reference rho, the reference ||J||_2) of a named case."""
    if name == "blocks":
        M, rho, norm = _block_operator()

        def f(y: Tensor) -> Tensor:
            return (M @ y.reshape(M.shape[0], M.shape[1], 1)).reshape(y.shape)

        return f, torch.zeros(1, N, D, dtype=F64), rho, norm
    variant = next(v for v in BUILTIN_VARIANTS if v.name == name)
    layer = variant.make(D, scale=1.0, seed=0, dtype=F64)
    x = torch.randn(1, N, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    f = layer.fixed_point_map(x)
    with torch.no_grad():
        y = solve(f, layer.initial_point(x), tol=1e-12, max_iter=500).y
    if name != "hopfield":
        return f, y, None, None
    # column k of every token block at once: the unit vector e_k in every token's slot
    columns = [jvp(f, (y,), (torch.zeros_like(y).index_fill_(-1, torch.tensor([k]), 1.0),))[1] for k in range(D)]
    blocks = torch.stack(columns, dim=-1)[0].detach()  # [N, D (output), D (input)]
    rho = float(np.abs(np.linalg.eigvals(blocks.numpy())).max())
    return f, y, rho, float(torch.linalg.svdvals(blocks).max())


@pytest.mark.parametrize("estimate", ["rho", "norm"])
@pytest.mark.parametrize("name", ["blocks", "hopfield", "reference"])
def test_spectral_estimates_at_scale(benchmark, summary, name: str, estimate: str) -> None:
    f, y, rho, norm = _case(name)
    results: dict[str, object] = {}

    def run() -> None:
        if estimate == "rho":
            results["out"] = analysis.spectrum(f, y, "arnoldi")
        else:
            results["out"] = analysis.norm_estimate(f, y, "lanczos")

    benchmark.group = "spectral-scaling"
    start = time.perf_counter()
    benchmark.pedantic(run, rounds=1, iterations=1)
    wall = time.perf_counter() - start
    out = results["out"]
    row = summary(TABLE)
    if estimate == "rho":
        value, reference = float(out.rho[0]), rho
        row.add(
            f"{name} rho",
            wall_s=wall,
            products=out.jvps,
            value=value,
            residual=float(out.residual[0]),
            converged=bool(out.converged[0]),
            confirmed=bool(out.confirmed[0]),
            error=None if reference is None else abs(value - reference),
        )
    else:
        value, reference = float(out.norm[0]), norm
        row.add(
            f"{name} norm",
            wall_s=wall,
            products=out.products,
            value=value,
            residual=float(out.residual[0]),
            converged=bool(out.converged[0]),
            confirmed=bool(out.converged[0]),
            error=None if reference is None else abs(value - reference),
        )
    benchmark.extra_info.update(wall_s=wall, value=value, reference=reference)
    assert bool(out.converged[0]), f"{name}: the {estimate} estimate did not converge and confirm"
    if reference is not None:
        # rho: within cond * residual of the reference; the constructed blocks are near normal, the token
        # blocks small: 1e3 * residual (plus 1e-10 relative) is loose enough for both and far below 1e-6
        assert abs(value - reference) <= 1e3 * float(out.residual[0]) + 1e-10 * reference
