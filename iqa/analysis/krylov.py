"""The dominant eigenpair of a batched matrix-free operator: Krylov-Schur with a deflated check.

Used for rho(J) (the operator J, through jvp) and for ||J||_2 (the operator
J^T J, through a jvp and a vjp). Every batch element b has its own n x n
operator A_b; one call of ``op`` applies all of them.

Krylov-Schur (Stewart 2001), batched, in real arithmetic. A cycle extends an
orthonormal basis V to m columns with A V_m = V_m H + v_{m+1} h^T (H the
Rayleigh quotient V_m^T A V_m); the Ritz pairs of H estimate eigenpairs of A,
and the residual of a Ritz vector u = V y is |h^T y| at no extra cost. A
restart keeps the span of ``keep`` Ritz vectors chosen by modulus (thick
restart; a conjugate pair is kept whole, through the real and imaginary parts
of one member, and ``keep`` has m's parity so that the dominant one is always
among them, see ``restart_size``), so every cycle refines a subspace instead of a single vector:
the explicit single-vector restart that this replaces could lock onto a
smaller eigenvalue (m = 2, n = 4, |lambda_2| / |lambda_1| = 0.64 converged on
lambda_2 with a small residual). Hence m >= MIN_KRYLOV unless the basis spans
the whole space (m >= n, where one cycle finds every eigenvalue).

A small residual proves that an eigenpair was found, not that it is the
dominant one. So when the basis did not span the whole space, the estimate is
checked: the converged eigenvector(s) are deflated (P A P with P = I - Q Q^T,
Q an orthonormal basis of the real invariant subspace of theta; its spectrum is
A's without theta, and without its conjugate) and the same iteration runs on
it from a fresh random start, for at most ``CHECK_RESTARTS`` restarts. If it
ends on a Ritz value of larger modulus (beyond theta's own residual), the main
iteration restarts from that direction and is checked again (at most
``MAX_CHECKS`` rounds); otherwise the estimate is ``confirmed``. The check
does not have to converge: the eigenvalues below rho form a continuum on a
real layer, and what it must find is an eigenvalue above |theta|, which is
the dominant one of the deflated operator. So the guarantee is the Krylov
one, twice: a converged, confirmed theta is the dominant eigenvalue unless two
independent random starts both missed it (the lock-on of a small restarted
space is refused outright, see MIN_KRYLOV).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

#: The smallest Krylov dimension that may restart: it keeps a conjugate pair (2) and adds 2 directions per cycle.
MIN_KRYLOV = 4
#: Rounds of (main run, deflated check) before the estimate is reported unconfirmed.
MAX_CHECKS = 3
#: Restarts of the deflated check at most: it need not converge (below rho lies a continuum of eigenvalues on a
#: layer), only show an eigenvalue that the main run missed; one that stands above |theta| is the dominant one
#: of the deflated operator and surfaces as a Ritz value within a few cycles, as in any Krylov run.
CHECK_RESTARTS = 5

Operator = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Eigenpair:
    """Per batch element: the Ritz value theta (complex), its unit Ritz vector u (complex [B, n]), the residual
    ||A u - theta u|| computed with one more application of A, whether it met the tolerance, and how many
    applications of A (each over the whole batch) the estimate took."""

    value: Tensor
    vector: Tensor
    residual: Tensor
    converged: Tensor
    applications: int
    tol: Tensor


def check_krylov_dim(krylov_dim: int, n: int) -> int:
    """The Krylov dimension actually used, min(krylov_dim, n); an error if it cannot restart soundly."""
    if not (isinstance(krylov_dim, int) and not isinstance(krylov_dim, bool) and krylov_dim >= 1):
        raise ValueError(f"krylov_dim must be an integer >= 1, got {krylov_dim!r}")
    m = min(krylov_dim, n)
    if m < n and m < MIN_KRYLOV:
        raise ValueError(
            f"krylov_dim = {krylov_dim} < {MIN_KRYLOV} on n = {n}: a restarted Krylov space that small keeps "
            "a single Ritz vector and can lock onto a smaller eigenvalue; use krylov_dim >= "
            f"{MIN_KRYLOV} (or >= n, which spans the whole space)"
        )
    return m


def _eig(H: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues and eigenvectors of each small block, through numpy's geev (complex128)."""
    values, vectors = np.linalg.eig(H.detach().to("cpu", torch.float64).numpy())
    return (
        torch.from_numpy(np.asarray(values, dtype=np.complex128)).to(H.device),
        torch.from_numpy(np.asarray(vectors, dtype=np.complex128)).to(H.device),
    )


def _orthogonalize(V: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """w minus its projection on the columns of V (classical Gram-Schmidt twice), and the coefficients."""
    h = (V.transpose(1, 2) @ w[..., None]).squeeze(-1)
    w = w - (V @ h[..., None]).squeeze(-1)
    h2 = (V.transpose(1, 2) @ w[..., None]).squeeze(-1)
    return w - (V @ h2[..., None]).squeeze(-1), h + h2


def _dominant_index(values: Tensor) -> Tensor:
    """The largest modulus per row; among equal moduli the larger imaginary part (the +imag member of a pair)."""
    modulus = values.abs()
    top = modulus.amax(dim=-1, keepdim=True)
    imag = torch.where(modulus >= top, values.imag, torch.full_like(values.imag, -math.inf))
    return imag.argmax(dim=-1)


def restart_size(m: int) -> int:
    """How many Ritz directions a restart of an m-dimensional basis keeps: about m / 2, at least 2 (a conjugate
    pair), at most m - 2 (a cycle adds 2 or more), and of m's parity. The parity is what makes a greedy choice by
    modulus always fill it: when one slot is left, the m - keep + 1 values not chosen are an odd count, so one of
    them is real (pairs come in twos). With keep = 2 at m = 5, a dominant real value beside two pairs could only
    be kept by dropping it for a pair, which lost the dominant direction at every restart."""
    keep = m // 2
    if (m - keep) % 2:
        keep = keep + 1 if keep + 1 <= m - 2 else keep - 1
    return max(2, keep)


def _kept_columns(values: Tensor, vectors: Tensor, keep: int) -> Tensor:
    """Real [B, m, keep]: the real and imaginary parts spanning ``keep`` Ritz vectors chosen greedily by modulus,
    conjugate pairs whole (a pair that no longer fits is passed over for the next real value; ``restart_size``
    guarantees one exists), so that their span is an invariant subspace of H that holds the dominant vector."""
    batch, m = values.shape
    out = torch.zeros(batch, m, keep, dtype=torch.float64)
    for b in range(batch):  # index bookkeeping on m <= krylov_dim numbers, not work on the operator
        columns: list[Tensor] = []
        handled: set[int] = set()
        for i in values[b].abs().argsort(descending=True).tolist():
            if len(columns) == keep:
                break
            if i in handled:
                continue
            handled.add(i)
            y = vectors[b, :, i]
            if values[b, i].imag == 0:
                columns.append(y.real)
                continue
            handled.add(_partner(values[b], i))
            if len(columns) + 2 <= keep:
                columns += [y.real, y.imag]
        if len(columns) != keep:
            raise RuntimeError(f"kept {len(columns)} Ritz directions of {m}, not {keep}: keep must have m's parity")
        out[b] = torch.stack(columns, dim=-1)
    return out


def _partner(values: Tensor, i: int) -> int:
    """The index of the conjugate of values[i] (the nearest value to its conjugate)."""
    return int((values - values[i].conj()).abs().argmin())


def krylov_schur(
    op: Operator,
    start: Tensor,
    m: int,
    max_restarts: int,
    rtol: float,
    generator: torch.Generator,
    scale: Tensor | None = None,
) -> Eigenpair:
    """The dominant Ritz pair of each A_b by thick-restarted Arnoldi from ``start`` [B, n] (see the module doc).

    Stops when every element's residual estimate |h^T y| is <= rtol times the largest ||H||_F seen (a lower
    bound on ||A||_F; at least ``scale`` [B] when given), after ``max_restarts`` restarts, or
    when the basis spans the whole space (then every Ritz value is an eigenvalue). With m = n it never stops
    early, so that the whole space is spanned.
    """
    batch, n = start.shape
    dtype, device = start.dtype, start.device
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    keep = restart_size(m) if m < n else 0
    V = torch.zeros(batch, n, m + 1, dtype=dtype, device=device)
    H = torch.zeros(batch, m + 1, m, dtype=dtype, device=device)
    norm = torch.linalg.vector_norm(start, dim=-1, keepdim=True)
    V[:, :, 0] = start / norm.clamp_min(tiny)
    applications, k = 0, 0
    theta = torch.zeros(batch, dtype=torch.complex128, device=device)
    y_dom = torch.zeros(batch, m, dtype=torch.complex128, device=device)
    estimate = torch.full((batch,), math.inf, dtype=torch.float64, device=device)
    size = torch.zeros(batch, dtype=torch.float64, device=device) if scale is None else scale.to(torch.float64)
    tol = rtol * size
    j = 0
    for cycle in range(max_restarts + 1):
        for j in range(k, m):
            w = op(V[:, :, j])
            applications += 1
            w_size = torch.linalg.vector_norm(w, dim=-1)
            w, h = _orthogonalize(V[:, :, : j + 1], w)
            H[:, : j + 1, j] = h
            beta = torch.linalg.vector_norm(w, dim=-1)
            alive = beta > n * eps * w_size
            H[:, j + 1, j] = torch.where(alive, beta, 0.0)
            if j + 1 < n and not bool(alive.all()):
                # an invariant subspace: its eigenvalues are exact, the dominant one may lie outside; go on fresh
                fresh = torch.randn(batch, n, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
                fresh, _ = _orthogonalize(V[:, :, : j + 1], fresh)
                w = torch.where(alive[:, None], w, fresh)
                beta = torch.linalg.vector_norm(w, dim=-1)
            V[:, :, j + 1] = w / beta.clamp_min(tiny)[:, None]
            if m == n and j + 1 < n:
                continue
            values, vectors = _eig(H[:, : j + 1, : j + 1])
            idx = _dominant_index(values)
            theta = values.gather(-1, idx[:, None]).squeeze(-1)
            y = vectors.gather(-1, idx[:, None, None].expand(-1, j + 1, 1)).squeeze(-1)
            y_dom = torch.nn.functional.pad(y, (0, m - j - 1))
            size = torch.maximum(size, torch.linalg.matrix_norm(H[:, : j + 2, : j + 1].to(torch.float64), "fro"))
            tol = rtol * size
            estimate = (H[:, j + 1, : j + 1].to(y.dtype) * y).sum(dim=-1).abs()  # |h_(j+1,j) e_j^T y| per element
            if bool((estimate <= tol).all()) or j + 1 >= n:
                return _finish(op, V, y_dom, theta, tol, applications)
        if cycle == max_restarts:
            break
        Q, _ = torch.linalg.qr(_kept_columns(values.cpu(), vectors.cpu(), keep).to(device))
        Qd = Q.to(dtype)
        T = Q.transpose(1, 2) @ H[:, :m, :m].to(torch.float64) @ Q
        b = H[:, m, :m].to(torch.float64)[:, None, :] @ Q
        last = V[:, :, m].clone()
        V[:, :, :keep] = V[:, :, :m] @ Qd
        V[:, :, keep] = last
        V[:, :, keep + 1 :] = 0
        H.zero_()
        H[:, :keep, :keep] = T.to(dtype)
        H[:, keep, :keep] = b.squeeze(1).to(dtype)
        k = keep
    return _finish(op, V, y_dom, theta, tol, applications)


def _finish(op: Operator, V: Tensor, y: Tensor, theta: Tensor, tol: Tensor, applications: int) -> Eigenpair:
    """The Ritz vector u = V y, normalized, and its residual ||A u - theta u|| computed afresh."""
    m = y.shape[-1]
    u = V[:, :, :m].to(y.dtype) @ y[..., None]
    u = u.squeeze(-1)
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(torch.finfo(V.dtype).tiny)
    Au = op(u.real.to(V.dtype)).to(u.dtype)
    applications += 1
    if bool((u.imag != 0).any()):
        Au = Au + 1j * op(u.imag.to(V.dtype)).to(u.dtype)
        applications += 1
    residual = torch.linalg.vector_norm(Au - theta[:, None] * u, dim=-1)
    return Eigenpair(theta, u, residual, residual <= tol, applications, tol)


def real_basis(u: Tensor) -> Tensor:
    """[B, n, 2]: orthonormal columns spanning Re u and Im u (the second column 0 where u is real)."""
    a = u.real
    a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    c = u.imag - (a * u.imag).sum(dim=-1, keepdim=True) * a
    c = c - (a * c).sum(dim=-1, keepdim=True) * a
    size = torch.linalg.vector_norm(c, dim=-1, keepdim=True)
    real = size <= 1e3 * torch.finfo(a.dtype).eps * torch.linalg.vector_norm(u.imag, dim=-1, keepdim=True).clamp_min(
        torch.finfo(a.dtype).tiny
    )
    c = torch.where(real | (size == 0), torch.zeros_like(c), c / size.clamp_min(torch.finfo(a.dtype).tiny))
    return torch.stack([a, c], dim=-1)


@dataclass(frozen=True)
class CheckedEigenpair:
    """An :class:`Eigenpair` of A and its check: ``confirmed`` says whether the pair converged and a run on A
    with it deflated, from a fresh random start, ended on no larger modulus (``second``; NaN where no check
    ran because the basis spanned the whole space, and then ``confirmed`` is the pair's convergence)."""

    pair: Eigenpair
    confirmed: Tensor
    second: Tensor
    applications: int


def checked_dominant(
    op: Operator,
    batch: int,
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    m: int,
    max_restarts: int,
    rtol: float,
    generator: torch.Generator,
) -> CheckedEigenpair:
    """The dominant eigenpair of each A_b with the deflated check of the module doc."""

    def random() -> Tensor:
        return torch.randn(batch, n, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)

    pair = krylov_schur(op, random(), m, max_restarts, rtol, generator)
    applications = pair.applications
    nan = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
    if m >= n:
        return CheckedEigenpair(pair, pair.converged, nan, applications)
    confirmed = torch.zeros(batch, dtype=torch.bool, device=device)
    settled = torch.zeros(batch, dtype=torch.bool, device=device)
    second = nan
    for _ in range(MAX_CHECKS):
        Q = real_basis(pair.vector).to(dtype)

        def project(v: Tensor, Q: Tensor = Q) -> Tensor:
            return v - (Q @ (Q.transpose(1, 2) @ v[..., None])).squeeze(-1)

        def deflated(v: Tensor, project: Operator = project) -> Tensor:
            return project(op(project(v)))

        budget = min(max_restarts, CHECK_RESTARTS)
        check = krylov_schur(deflated, project(random()), m, budget, rtol, generator, pair.tol / rtol)
        applications += check.applications
        # moduli this close are one modulus, as far as theta is known; the check's own residual is left out: an
        # unconverged check whose Ritz value stands above |theta| may still be short of the eigenvalue it approaches
        # (a start blind to the dominant eigenvector, 1 against 0.9, Krylov dimension 4: the check stopped at 0.93
        # with a residual that, counted, confirmed 0.9); a spurious one only costs one more main run
        tie = pair.residual + pair.tol
        larger = ~settled & (check.value.abs() > pair.value.abs() + tie)
        fresh = ~settled & ~larger
        second = torch.where(settled, second, check.value.abs())
        confirmed = torch.where(fresh, pair.converged, confirmed)
        settled = settled | fresh
        if bool(settled.all()):
            break
        # the check found a larger eigenvalue: start the main iteration again from its direction
        restart = torch.where(larger[:, None], check.vector.real + check.vector.imag, pair.vector.real)
        again = krylov_schur(op, restart.to(dtype), m, max_restarts, rtol, generator, pair.tol / rtol)
        applications += again.applications
        pair = Eigenpair(
            torch.where(larger, again.value, pair.value),
            torch.where(larger[:, None], again.vector, pair.vector),
            torch.where(larger, again.residual, pair.residual),
            torch.where(larger, again.converged, pair.converged),
            applications,
            torch.where(larger, again.tol, pair.tol),
        )
    return CheckedEigenpair(pair, confirmed, second, applications)
