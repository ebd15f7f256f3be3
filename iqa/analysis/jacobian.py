"""The Jacobian J = df/dy of a batched map, matrix-free and dense.

f is batched over dimension 0 and its batch elements are independent (the
``batch_independent`` claim), so J is block diagonal with one n x n block per
element, n = prod(y.shape[1:]). ``jvp``/``vjp`` apply every block at once
through :mod:`torch.func`; ``jacobian`` builds the blocks column by column
(n Jacobian-vector products with the k-th unit vector in every element), and
``jacobian_norm`` / ``norm_estimate`` estimate ||J_b||_2 by Lanczos (or power
iteration) on J_b^T J_b.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import jvp as _func_jvp
from torch.func import vjp as _func_vjp
from torch.func import vmap

from iqa.analysis.krylov import check_krylov_dim, checked_dominant, restart_size
from iqa.solvers import Map
from iqa.validation import check_positive

#: Up to this n, ``jacobian_norm(method="auto")`` takes the dense 2-norm (exact to rounding).
DENSE_LIMIT = 256


def iterative_rtol(n: int, dtype: torch.dtype) -> float:
    """The default relative tolerance of the matrix-free estimates on n x n blocks (Arnoldi, power iteration).

    A computed J v is off by up to (n + 2) eps ||J|| ||v|| (length-n sums), so a residual ||J u - theta u||
    or a change in ||J v|| below about 2 (n + 2) eps of ||J|| is rounding: the estimates stop 10x above
    that. Where it is below 1e-10 (float64, n < 2e4), 1e-10 is tight enough: it puts ||J||_2 within
    1e-10 relative, and rho within 1e-10 times its eigenvalue's condition, of the truth, far below the
    4 digits that reports print and the 1% that ``iqa regress`` allows; each further decade costs steps.
    """
    return max(1e-10, 20 * (n + 2) * torch.finfo(dtype).eps)  # 10x the rounding floor 2 (n + 2) eps; 1e-10: enough


def _check_point(y: Tensor) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if not y.is_floating_point():
        raise TypeError(f"y must have a floating dtype, got {y.dtype}")
    if y.dim() < 2 or y.shape[0] == 0 or y.numel() == 0:
        raise ValueError(
            f"y must have shape [B, ...] with B >= 1 and at least one entry per element, got {tuple(y.shape)}"
        )


def _primal(y: Tensor) -> Tensor:
    """y detached and in its own memory (forward AD refuses expanded, overlapping tensors)."""
    return y.detach().contiguous()


def _check_direction(y: Tensor, v: Tensor) -> None:
    if not isinstance(v, Tensor) or v.shape != y.shape:
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"the direction v must have y's shape {tuple(y.shape)}, got {shape}")


def jvp(f: Map, y: Tensor, v: Tensor) -> Tensor:
    """J v: the derivative of f at y in direction v (forward mode), same shape as y."""
    _check_point(y)
    _check_direction(y, v)
    return _func_jvp(f, (_primal(y),), (v.to(y.dtype).contiguous(),))[1].detach()


def vjp(f: Map, y: Tensor, v: Tensor) -> Tensor:
    """J^T v: the cotangent v pulled back through f at y (reverse mode), same shape as y."""
    _check_point(y)
    _check_direction(y, v)
    pullback = _func_vjp(f, _primal(y))[1]
    return pullback(v.to(y.dtype).contiguous())[0].detach()


def jacobian(f: Map, y: Tensor, chunk_size: int | None = 64) -> Tensor:
    """The dense per-element Jacobians, [B, n, n] with n = prod(y.shape[1:]).

    Entry [b, i, k] is d f(y)[b].flatten()[i] / d y[b].flatten()[k]. Column k
    of every block comes from one jvp with the k-th unit vector in every batch
    element, which is exact when batch elements do not interact.
    """
    _check_point(y)
    batch = y.shape[0]
    n = math.prod(y.shape[1:])
    y = _primal(y)
    eye = torch.eye(n, dtype=y.dtype, device=y.device)
    basis = eye[:, None, :].expand(n, batch, n).reshape((n, *y.shape))

    def column(e: Tensor) -> Tensor:
        return _func_jvp(f, (y,), (e,))[1]

    columns = vmap(column, chunk_size=chunk_size)(basis)  # [n(k), B, ...(i)]
    return columns.reshape(n, batch, n).permute(1, 2, 0).detach()


NORM_METHODS = ("auto", "dense", "lanczos", "power")


@dataclass(frozen=True)
class NormEstimate:
    """||J_b||_2 per batch element with its accuracy.

    ``norm`` = sigma; for the matrix-free methods sigma = ||J u|| for a unit u, so it never exceeds ||J||_2
    (beyond rounding), and ``residual`` = ||J^T w - sigma u|| with w = J u / sigma: sigma is then within
    ``residual`` of a singular value of J (Weyl, on the symmetric [[0, J], [J^T, 0]]). ``converged`` says
    whether the method met its tolerance and, for Lanczos, whether the deflated check from a fresh start
    found no larger singular value (:mod:`iqa.analysis.krylov`). Dense: residual 0, always converged.
    ``products``: Jacobian-vector plus vector-Jacobian products (each over the whole batch; 0 for dense).
    """

    norm: Tensor
    residual: Tensor
    converged: Tensor
    method: str
    products: int = 0


def jacobian_norm(
    f: Map,
    y: Tensor,
    method: str = "auto",
    *,
    max_iter: int = 500,
    rtol: float | None = None,
    seed: int = 0,
    krylov_dim: int = 20,
) -> Tensor:
    """||J_b||_2 for each batch element b, [B]; :func:`norm_estimate` has the methods and the residual."""
    return norm_estimate(f, y, method, max_iter=max_iter, rtol=rtol, seed=seed, krylov_dim=krylov_dim).norm


def norm_estimate(
    f: Map,
    y: Tensor,
    method: str = "auto",
    *,
    max_iter: int = 500,
    rtol: float | None = None,
    seed: int = 0,
    krylov_dim: int = 20,
) -> NormEstimate:
    """||J_b||_2 for each batch element b, with its residual.

    ``method="dense"`` takes the largest singular value of the dense block
    (exact to rounding); ``"lanczos"`` runs thick-restarted Lanczos on J^T J
    (one jvp and one vjp per step, Krylov dimension ``krylov_dim``, at most
    ``max_iter`` products of J^T J) with the deflated check of
    :mod:`iqa.analysis.krylov`, stopping at residual <= ``rtol`` times its
    estimate of ||J^T J||_F (default :func:`iterative_rtol`); ``"power"`` runs
    power iteration on J^T J until sigma changes by less than ``rtol`` relative
    (its residual is computed at the end); ``"auto"`` is dense up to
    n = DENSE_LIMIT and Lanczos beyond.
    """
    _check_point(y)
    if method not in NORM_METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(NORM_METHODS)}")
    if rtol is not None:  # refused whatever the method, though only the iterative ones read it
        check_positive("rtol", rtol)
    n = math.prod(y.shape[1:])
    if method == "auto":
        method = "dense" if n <= DENSE_LIMIT else "lanczos"
    batch = y.shape[0]
    if method == "dense":
        norm = torch.linalg.matrix_norm(jacobian(f, y), ord=2)
        zeros = torch.zeros_like(norm)
        return NormEstimate(norm, zeros, torch.ones(batch, dtype=torch.bool, device=y.device), "dense")
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    y = _primal(y)
    if rtol is None:
        rtol = iterative_rtol(n, y.dtype)
    pullback = _func_vjp(f, y)[1]

    def J(v: Tensor) -> Tensor:
        return _func_jvp(f, (y,), (v.reshape(y.shape).contiguous(),))[1].detach().reshape(batch, n)

    def JT(w: Tensor) -> Tensor:
        return pullback(w.reshape(y.shape).contiguous())[0].detach().reshape(batch, n)

    if method == "power":
        sigma, u, steps = _power(J, JT, y, max_iter, rtol, seed)
        converged = torch.ones(batch, dtype=torch.bool, device=y.device)
        products = 2 * steps
    else:
        m = check_krylov_dim(krylov_dim, n)
        generator = torch.Generator().manual_seed(seed)
        keep = restart_size(m) if m < n else 0  # what each restart of the Krylov-Schur run keeps
        restarts = max(0, math.ceil((max_iter - m) / max(1, m - keep)))
        found = checked_dominant(lambda v: JT(J(v)), batch, n, y.dtype, y.device, m, restarts, rtol, generator)
        u = found.pair.vector.real.to(y.dtype)
        u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        converged = found.pair.converged & found.confirmed
        products = 2 * found.applications
    Ju = J(u)
    sigma = torch.linalg.vector_norm(Ju, dim=-1)
    w = Ju / sigma.clamp_min(torch.finfo(y.dtype).tiny)[:, None]
    residual = torch.linalg.vector_norm(JT(w) - sigma[:, None] * u, dim=-1)
    return NormEstimate(sigma, residual, converged, method, products + 2)


def _power(
    J: Callable[[Tensor], Tensor], JT: Callable[[Tensor], Tensor], y: Tensor, max_iter: int, rtol: float, seed: int
) -> tuple[Tensor, Tensor, int]:
    """Power iteration on J^T J (see :func:`power_norm`): sigma, the last unit direction, the steps taken."""
    batch = y.shape[0]
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(y.shape, generator=generator, dtype=torch.float64).to(dtype=y.dtype, device=y.device)
    v = v.reshape(batch, -1)

    def normalize(t: Tensor) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(t, dim=-1)
        safe = torch.where(norm > 0, norm, torch.ones_like(norm))
        return t / safe[:, None], norm

    v, _ = normalize(v)
    sigma = torch.zeros(batch, dtype=y.dtype, device=y.device)
    steps = 0
    for _ in range(max_iter):
        Jv = J(v)
        steps += 1
        new_sigma = torch.linalg.vector_norm(Jv, dim=-1)
        u = v
        v, norm = normalize(JT(Jv))
        done = bool(((new_sigma - sigma).abs() <= rtol * new_sigma).all()) or not bool((norm > 0).any())
        sigma = new_sigma
        if done:
            return sigma, u, steps
    return sigma, v, steps


def power_norm(f: Map, y: Tensor, *, max_iter: int = 500, rtol: float | None = None, seed: int = 0) -> Tensor:
    """Power iteration on J^T J per batch element: sigma_t = ||J v_t|| with v_{t+1} ∝ J^T J v_t.

    sigma_t never exceeds ||J||_2 and increases to it at rate (sigma_2 / sigma_1)^2; the iteration stops
    when it changes by at most ``rtol`` relative (default :func:`iterative_rtol`). The norm of
    :func:`norm_estimate` with ``method="power"``, which also reports its residual.
    """
    return norm_estimate(f, y, "power", max_iter=max_iter, rtol=rtol, seed=seed).norm
