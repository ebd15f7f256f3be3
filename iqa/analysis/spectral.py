"""The spectral radius rho(J) of the Jacobian of a batched map, with its accuracy.

rho(J(y*)) is the local rate of the iteration at a fixed point (a norm bound >= 1
proves nothing; docs/theory.md#local-rate). The reference layer's dominant eigenvalue is often
negative (2-cycles) or a complex pair, so power iteration on J would not
converge; instead:

- ``dense`` (n <= DENSE_LIMIT): every eigenvalue of the dense block
  (LAPACK geev through numpy, :func:`eig_blocks`);
- ``arnoldi``: thick-restarted (Krylov-Schur) Arnoldi on the matrix-free J
  (jvp), Krylov dimension m >= 4 (or >= n), whose answer is checked by a run on
  J with that eigenvalue deflated, from a fresh random start
  (:mod:`iqa.analysis.krylov`); it scales to n = N D = 65 536.

Either way the result carries the dominant eigenpair (theta, u), ||u|| = 1, and
its residual r = ||J u - theta u||: theta is an exact eigenvalue of J + E with
||E||_2 = r (backward error), so |theta - lambda| <= r for some eigenvalue
lambda of J when J is normal, and <= cond(lambda) r to first order otherwise.
A small residual only proves that an eigenpair was found, not the dominant
one; Arnoldi reports ``converged`` only when its check (the same iteration on
J with theta deflated, from a fresh random start, a few cycles) ended on no
larger modulus, and restarts from the larger one when it found one: theta is
then the dominant eigenvalue unless two independent random starts missed it. The
dense method has no such blind spot and is the default up to n = DENSE_LIMIT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import jvp as _func_jvp

from iqa.analysis.jacobian import DENSE_LIMIT, _check_point, _primal, iterative_rtol, jacobian
from iqa.analysis.krylov import check_krylov_dim, checked_dominant
from iqa.solvers import Map
from iqa.validation import all_finite, check_positive

METHODS = ("auto", "dense", "arnoldi")

#: Moduli within this relative gap of the largest count as equal, and the larger imaginary part wins (a conjugate
#: pair reports its +imag member). It breaks ties, it does not set accuracy: the choice moves rho by < 1e-12
#: relative, far below the 4 digits reports print and the 1% regress allows; and 1e-12 = 4500 eps64 keeps the copies
#: of a multiple eigenvalue together while geev's split of them, cond (n + 2) eps ||J|| / rho, stays below that.
#: Not scaled by eps: in float32, 1 - TIE rounds to 1, so only exact ties (conjugate pairs) count there.
TIE = 1e-12


@dataclass(frozen=True)
class Spectrum:
    """The dominant eigenvalue of J_b for each batch element b.

    ``rho`` = |eigenvalue|; ``residual`` = ||J u - eigenvalue u|| for the unit
    eigenvector estimate u (the backward error); both methods report rho and
    residual in float64 for a float64 y and in float32 otherwise, the
    eigenvalues in complex128 or complex64 (:func:`result_dtypes`); ``converged`` says whether
    Arnoldi reached its tolerance and its check confirmed that the eigenvalue is
    the dominant one (always True for dense); ``eigenvalues`` holds every
    eigenvalue for the dense method (None for Arnoldi). Arnoldi only:
    ``confirmed`` (the deflated check from a fresh start ended on no larger
    modulus, or the basis spanned the whole space), ``second`` (the modulus that
    check found; NaN without a check) and ``jvps`` (Jacobian-vector products used,
    each over the whole batch).
    """

    rho: Tensor
    eigenvalue: Tensor
    residual: Tensor
    converged: Tensor
    method: str
    eigenvalues: Tensor | None = None
    confirmed: Tensor | None = None
    second: Tensor | None = None
    jvps: int | None = None


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
    rtol is :func:`iqa.analysis.jacobian.iterative_rtol` of n and y's dtype.
    """
    _check_point(y)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if rtol is not None:  # refused whatever the method, though only the iterative ones read it
        check_positive("rtol", rtol)
    n = math.prod(y.shape[1:])
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "arnoldi"
    if method == "dense":
        return _dense(f, y)
    if not (isinstance(max_restarts, int) and max_restarts >= 0):
        raise ValueError(f"max_restarts must be an integer >= 0, got {max_restarts!r}")
    if rtol is None:
        rtol = iterative_rtol(n, y.dtype)
    return _arnoldi(f, y, check_krylov_dim(krylov_dim, n), max_restarts, rtol, seed)


def result_dtypes(dtype: torch.dtype) -> tuple[torch.dtype, torch.dtype]:
    """(real, complex) dtypes of a spectrum of a ``dtype`` Jacobian: float64 and complex128 for float64, float32 and
    complex64 otherwise (a float16 or bfloat16 rho would keep only 3 or 2 of the digits the float64 eigen solve
    found)."""
    if dtype == torch.float64:
        return torch.float64, torch.complex128
    return torch.float32, torch.complex64


def _dominant(values: Tensor) -> Tensor:
    """Index of the largest |value| per row; among equal moduli, the one with the larger imaginary part."""
    modulus = values.abs()
    top = modulus.amax(dim=-1, keepdim=True)
    near = modulus >= top * (1 - TIE)
    imag = torch.where(near, values.imag, torch.full_like(values.imag, -math.inf))
    return imag.argmax(dim=-1)


def eig_blocks(J: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and unit eigenvectors of each block [B, n, n], through numpy's geev on the CPU.

    Not torch.linalg.eig: on the Jacobians of saturated attention (entries from 1
    down to 1e-300 in one block) torch 2.13's CPU eig aborts the process or
    fails to converge, where numpy's converges. Each block is taken to float64
    and scaled by the power of two that brings its largest |entry| into
    [1/2, 1) (exact, so the eigenvalues scale back exactly; a scale in J's own
    dtype rounded half-precision entries first); entries are not flushed to zero,
    which on a defective block would move the eigenvalues by far more than the
    entries themselves.
    """
    import numpy as np

    J64 = J.detach().to("cpu", torch.float64)
    _, exponent = torch.frexp(J64.abs().amax(dim=(-2, -1), keepdim=True))  # 0 for a zero block: scale 1
    size = torch.ldexp(torch.ones_like(J64[..., :1, :1]), exponent)
    scaled = (J64 / size).numpy()
    try:
        values, vectors = np.linalg.eig(scaled)
    except np.linalg.LinAlgError as error:
        raise ValueError(f"the eigenvalue solver failed on a Jacobian block: {error}") from error
    complex_dtype = result_dtypes(J.dtype)[1]
    values_t = torch.from_numpy(np.asarray(values, dtype=np.complex128)).to(J.device, complex_dtype)
    vectors_t = torch.from_numpy(np.asarray(vectors, dtype=np.complex128)).to(J.device, complex_dtype)
    return values_t * size[..., 0].to(J.device, complex_dtype), vectors_t


def _dense(f: Map, y: Tensor) -> Spectrum:
    J = jacobian(f, y)
    if not all_finite(J):
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
    found = checked_dominant(matvec, batch, n, y.dtype, y.device, m, max_restarts, rtol, generator)
    pair = found.pair
    real, complex_ = result_dtypes(y.dtype)
    return Spectrum(
        pair.value.abs().to(real),
        pair.value.to(complex_),
        pair.residual.to(real),
        pair.converged & found.confirmed,
        "arnoldi",
        confirmed=found.confirmed,
        second=found.second.to(real),
        jvps=found.applications,
    )
