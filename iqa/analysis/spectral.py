"""The spectral radius rho(J) of the Jacobian of a batched map, with its accuracy.

rho(J(y*)) is the local rate of the iteration at a fixed point (a norm bound >= 1
proves nothing; THEORY.md). The reference layer's dominant eigenvalue is often
negative (2-cycles) or a complex pair, so power iteration on J would not
converge; instead:

- ``dense`` (n <= DENSE_LIMIT): every eigenvalue of the dense block
  (``torch.linalg.eig``);
- ``arnoldi``: a batched Arnoldi process on the matrix-free J (jvp), Krylov
  dimension m, explicitly restarted from the dominant Ritz vector.

Either way the result carries the dominant eigenpair (theta, u), ||u|| = 1, and
its residual r = ||J u - theta u||: theta is an exact eigenvalue of J + E with
||E||_2 = r (backward error), so |theta - lambda| <= r for some eigenvalue
lambda of J when J is normal, and <= cond(lambda) r to first order otherwise.
Arnoldi may in principle miss an eigenvalue whose eigenvector the random start
barely touches; the dense method cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp as _func_jvp

from iqa.analysis.jacobian import DENSE_LIMIT, _check_point, _primal, jacobian
from iqa.solvers import Map

METHODS = ("auto", "dense", "arnoldi")


@dataclass(frozen=True)
class Spectrum:
    """The dominant eigenvalue of J_b for each batch element b.

    ``rho`` = |eigenvalue|; ``residual`` = ||J u - eigenvalue u|| for the unit
    eigenvector estimate u (the backward error); ``converged`` says whether
    Arnoldi reached its tolerance (always True for dense); ``eigenvalues`` holds
    every eigenvalue for the dense method (None for Arnoldi).
    """

    rho: Tensor
    eigenvalue: Tensor
    residual: Tensor
    converged: Tensor
    method: str
    eigenvalues: Tensor | None = None


def spectral_radius(f: Map, y: Tensor, method: str = "auto", **options: Any) -> Tensor:
    """rho(df/dy at y) per batch element, [B]; see :func:`spectrum` for accuracy."""
    return spectrum(f, y, method, **options).rho


def spectrum(
    f: Map,
    y: Tensor,
    method: str = "auto",
    *,
    krylov_dim: int = 40,
    max_restarts: int = 50,
    rtol: float | None = None,
    seed: int = 0,
) -> Spectrum:
    """The dominant eigenpair of J_b = df_b/dy_b at y for every batch element.

    ``method="auto"`` is dense up to n = DENSE_LIMIT entries per element, Arnoldi
    beyond. Arnoldi stops when every element's residual is <= rtol * ||H||_F
    (H the Hessenberg matrix, a lower bound on ||J||_F), or after
    ``max_restarts`` restarts, and says which elements got there; the default
    rtol is max(1e-10, 100 eps) of y's dtype.
    """
    _check_point(y)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    n = math.prod(y.shape[1:])
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "arnoldi"
    if method == "dense":
        return _dense(f, y)
    if not (isinstance(krylov_dim, int) and krylov_dim >= 1):
        raise ValueError(f"krylov_dim must be an integer >= 1, got {krylov_dim!r}")
    if not (isinstance(max_restarts, int) and max_restarts >= 0):
        raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
    if rtol is None:
        rtol = max(1e-10, 100 * torch.finfo(y.dtype).eps)
    return _arnoldi(f, y, min(krylov_dim, n), max_restarts, rtol, seed)


def _dominant(values: Tensor) -> Tensor:
    """Index of the largest |value| per row; among equal moduli, the one with the larger imaginary part."""
    modulus = values.abs()
    top = modulus.amax(dim=-1, keepdim=True)
    near = modulus >= top * (1 - 1e-12)
    imag = torch.where(near, values.imag, torch.full_like(values.imag, -math.inf))
    return imag.argmax(dim=-1)


def eig_blocks(J: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and unit eigenvectors of each block, robust to the tiny entries of saturated attention.

    Each block is scaled to max |entry| 1 and entries below eps of that are set
    to zero (a backward error <= n eps ||J||, within the residual reported), as
    LAPACK's geev can fail to converge on entries 1e-200 apart; a block that
    still fails is retried with numpy's geev.
    """
    size = J.abs().amax(dim=(-2, -1), keepdim=True)
    size = torch.where(size > 0, size, torch.ones_like(size))
    scaled = J / size
    scaled = torch.where(scaled.abs() < torch.finfo(J.dtype).eps, torch.zeros_like(scaled), scaled)
    try:
        values, vectors = torch.linalg.eig(scaled)
    except torch.linalg.LinAlgError:
        import numpy as np

        complex_dtype = torch.complex128 if J.dtype == torch.float64 else torch.complex64
        pairs = [np.linalg.eig(block.cpu().numpy()) for block in scaled]
        values = torch.stack([torch.from_numpy(v.astype(np.complex128)) for v, _ in pairs])
        vectors = torch.stack([torch.from_numpy(u.astype(np.complex128)) for _, u in pairs])
        values, vectors = values.to(J.device, complex_dtype), vectors.to(J.device, complex_dtype)
    return values * size[..., 0], vectors


def _dense(f: Map, y: Tensor) -> Spectrum:
    J = jacobian(f, y)
    if not bool(torch.isfinite(J).all()):
        raise ValueError("the Jacobian at y has non-finite entries: no spectrum to compute")
    values, vectors = eig_blocks(J)
    idx = _dominant(values)
    theta = values.gather(-1, idx[:, None]).squeeze(-1)
    u = vectors.gather(-1, idx[:, None, None].expand(-1, J.shape[-1], 1)).squeeze(-1)
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    residual = torch.linalg.vector_norm((J.to(u.dtype) @ u[..., None]).squeeze(-1) - theta[:, None] * u, dim=-1)
    converged = torch.ones(y.shape[0], dtype=torch.bool, device=y.device)
    return Spectrum(theta.abs(), theta, residual, converged, "dense", values)


def _arnoldi(f: Map, y: Tensor, m: int, max_restarts: int, rtol: float, seed: int) -> Spectrum:
    y = _primal(y)
    batch = y.shape[0]
    n = math.prod(y.shape[1:])

    def matvec(v: Tensor) -> Tensor:
        return _func_jvp(f, (y,), (v.reshape(y.shape).contiguous(),))[1].detach().reshape(batch, n)

    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, n, generator=generator, dtype=torch.float64).to(dtype=y.dtype, device=y.device)
    theta = torch.zeros(batch, dtype=torch.complex128, device=y.device)
    residual = torch.full((batch,), math.inf, dtype=y.dtype, device=y.device)
    converged = torch.zeros(batch, dtype=torch.bool, device=y.device)
    for _ in range(max_restarts + 1):
        V, H = _arnoldi_basis(matvec, start, m)
        values, vectors = torch.linalg.eig(H[:, :m, :m])
        idx = _dominant(values)
        theta = values.gather(-1, idx[:, None]).squeeze(-1)
        s = vectors.gather(-1, idx[:, None, None].expand(-1, m, 1))
        u = (V[:, :, :m].to(s.dtype) @ s).squeeze(-1)
        u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        Ju = matvec(u.real).to(u.dtype) + 1j * matvec(u.imag).to(u.dtype)
        residual = torch.linalg.vector_norm(Ju - theta[:, None] * u, dim=-1).to(y.dtype)
        scale = torch.linalg.matrix_norm(H, ord="fro")
        converged = residual <= rtol * scale
        if bool(converged.all()):
            break
        start = u.real + u.imag
    return Spectrum(theta.abs().to(y.dtype), theta, residual, converged, "arnoldi")


def _arnoldi_basis(matvec: Map, start: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Orthonormal Krylov basis V [B, n, m + 1] and Hessenberg H [B, m + 1, m] with J V_m = V_{m+1} H.

    Classical Gram-Schmidt applied twice; on breakdown (an invariant subspace
    found) the next basis vector is zero, which adds only zero eigenvalues to H.
    """
    batch, n = start.shape
    V = torch.zeros(batch, n, m + 1, dtype=start.dtype, device=start.device)
    H = torch.zeros(batch, m + 1, m, dtype=start.dtype, device=start.device)
    eps = torch.finfo(start.dtype).eps
    norm = torch.linalg.vector_norm(start, dim=-1, keepdim=True)
    V[:, :, 0] = torch.where(norm > 0, start / norm.clamp_min(torch.finfo(start.dtype).tiny), 0.0)
    for k in range(m):
        w = matvec(V[:, :, k])
        scale = torch.linalg.vector_norm(w, dim=-1)
        basis = V[:, :, : k + 1]
        h = (basis.transpose(1, 2) @ w[..., None]).squeeze(-1)
        w = w - (basis @ h[..., None]).squeeze(-1)
        h2 = (basis.transpose(1, 2) @ w[..., None]).squeeze(-1)
        w = w - (basis @ h2[..., None]).squeeze(-1)
        H[:, : k + 1, k] = h + h2
        beta = torch.linalg.vector_norm(w, dim=-1)
        alive = beta > n * eps * scale
        H[:, k + 1, k] = torch.where(alive, beta, 0.0)
        V[:, :, k + 1] = torch.where(alive[:, None], w / beta.clamp_min(torch.finfo(start.dtype).tiny)[:, None], 0.0)
    return V, H
