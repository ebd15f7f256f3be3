"""The contracts of the matrix-free estimates (``spectrum`` by Arnoldi, ``norm_estimate`` by Lanczos and
by power iteration) beyond their accuracy, which test_spectral_scaling.py and test_analysis_helpers.py check:

- the products they report are the products they took, counted by the operator itself (an
  ``autograd.Function`` whose jvp and vjp count their calls);
- each returned residual is the residual of the returned pair, recomputed here from the dense matrix;
  ``converged`` never claims more than the tolerance allows; the fields have the documented shapes and
  dtypes and the method actually used (``auto`` resolved by n);
- the estimates are reproducible: the same seed gives the same bits, torch's global random stream is
  neither read nor advanced, and torch's default dtype does not leak into them;
- bad options are refused with an error that names the option.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import ClassVar

import pytest
import torch
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis
from iqa.analysis.jacobian import DENSE_LIMIT, iterative_rtol
from iqa.analysis.krylov import MIN_KRYLOV, _eig, _kept_columns, krylov_schur, restart_size

F64 = torch.float64
EPS = torch.finfo(F64).eps
SEEDS = st.integers(0, 2**31 - 1)


class _Counted(torch.autograd.Function):
    """y -> M_b y_b whose forward-mode and reverse-mode products count themselves in ``calls``."""

    calls: ClassVar[Counter[str]] = Counter()
    generate_vmap_rule = True  # the dense Jacobian vmaps over it

    @staticmethod
    def forward(M: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        return M @ y

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def,override]
        ctx.M = inputs[0]

    @staticmethod
    def jvp(ctx, dM, dy):  # type: ignore[no-untyped-def,override]
        _Counted.calls["jvp"] += 1
        return ctx.M @ dy

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
        _Counted.calls["vjp"] += 1
        return None, ctx.M.transpose(-1, -2) @ grad


def counted_map(M: Tensor) -> Callable[[Tensor], Tensor]:
    """y [B, n, 1] -> M y, seen only through jvp / vjp, each product counted in ``_Counted.calls``."""

    def f(y: Tensor) -> Tensor:
        return _Counted.apply(M, y)

    return f


def operator(n: int, batch: int, seed: int) -> Tensor:
    """[B, n, n]: a dominant eigenvalue and a top singular value well separated from the rest (so every
    method converges well within its default budget), the rest Gaussian and non-normal."""
    g = torch.Generator().manual_seed(seed)
    rest = 0.5 * torch.randn(batch, n, n, generator=g, dtype=F64) / math.sqrt(n)
    u = torch.randn(batch, n, 1, generator=g, dtype=F64)
    u = u / torch.linalg.vector_norm(u, dim=1, keepdim=True)
    sign = torch.where(torch.rand(batch, 1, 1, generator=g, dtype=F64) < 0.5, -1.0, 1.0)
    return rest + 3.0 * sign * (u @ u.transpose(1, 2))


def low_rank(n: int, rank: int, batch: int, seed: int) -> tuple[Tensor, Tensor]:
    """Gaussian factors U, V [B, n, rank] of M = U V^T, whose Krylov spaces are exhausted after rank + 1 vectors."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n, rank, generator=g, dtype=F64), torch.randn(batch, n, rank, generator=g, dtype=F64)


def rounding(M: Tensor) -> Tensor:
    """[B]: a product with M and the residual norm each carry n eps ||M||_2 (first order, two of them)."""
    return 2 * M.shape[-1] * EPS * torch.linalg.matrix_norm(M, 2)


sizes = st.integers(MIN_KRYLOV + 2, 24)
batches = st.integers(1, 3)


@example(n=MIN_KRYLOV + 2, batch=2, seed=0, krylov_dim=MIN_KRYLOV + 2)  # m = n: no check, second is NaN
@example(n=12, batch=2, seed=1, krylov_dim=MIN_KRYLOV)  # m < n: the deflated check runs
@example(n=6, batch=2, seed=5, krylov_dim=5)  # thorough: keep = 2 at m = 5 dropped the dominant real Ritz vector
@given(n=sizes, batch=batches, seed=SEEDS, krylov_dim=st.integers(MIN_KRYLOV, 8))
def test_arnoldi_reports_its_products_and_its_own_residual(n: int, batch: int, seed: int, krylov_dim: int) -> None:
    """``jvps`` is the number of Jacobian-vector products taken (vjps: none); theta is within cond times its
    residual of an eigenvalue of M, and that is the dominant one; converged implies confirmed; ``second`` (the
    modulus the deflated check found) is below rho, or NaN when no check ran (m >= n)."""
    M = operator(n, batch, seed)
    y = torch.zeros(batch, n, 1, dtype=F64)
    _Counted.calls.clear()
    s = analysis.spectrum(counted_map(M), y, "arnoldi", krylov_dim=krylov_dim)
    assert s.jvps == _Counted.calls["jvp"] and _Counted.calls["vjp"] == 0, (s.jvps, dict(_Counted.calls))
    assert s.method == "arnoldi" and s.eigenvalues is None
    assert s.rho.shape == s.residual.shape == s.converged.shape == (batch,)
    assert s.rho.dtype == s.residual.dtype == F64 and s.converged.dtype == torch.bool
    assert s.second is not None and s.second.dtype == F64 and s.confirmed is not None
    assert bool((s.converged <= s.confirmed).all())
    # Spectrum keeps no eigenvector: the residual is checked through what it bounds (Bauer-Fike)
    assert torch.equal(s.rho, s.eigenvalue.abs().to(F64))
    dense = torch.linalg.eigvals(M)
    nearest = (dense - s.eigenvalue[:, None]).abs().amin(dim=-1)
    # M is diagonalizable with cond(eigvecs) <= ~10 here (a rank-one spike on a small Gaussian part)
    cond = torch.linalg.cond(torch.linalg.eig(M)[1])
    assert bool((nearest <= cond * (s.residual + rounding(M))).all()), (nearest, s.residual, cond)
    assert bool(s.converged.all()), "a spike of 3 over a Gaussian part of radius ~0.5 must converge"
    assert bool((s.rho >= dense.abs().amax(dim=-1) - cond * (s.residual + rounding(M))).all())
    if krylov_dim >= n:  # the basis spans the space: no check runs, and nothing is left to confirm
        assert bool(s.second.isnan().all()) and torch.equal(s.confirmed, s.converged)
    else:  # confirmed: the deflated run found no larger modulus (a spike of 3 over a rest of norm ~1: no tie)
        assert bool((s.second < s.rho).all()), (s.second, s.rho)


def hidden_from(start: Tensor, seed: int) -> Tensor:
    """[B, n, n]: M symmetric with its dominant eigenvalue 1 on a unit u orthogonal to ``start`` [B, n], the rest of
    its spectrum in [-0.9, 0.9] on u's complement. M maps that complement to itself, so a Krylov space built from
    the start never holds u (up to rounding, which grows by 1 / 0.9 a product): a run from it converges on 0.9."""
    batch, n = start.shape
    g = torch.Generator().manual_seed(seed + 1)
    s = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)
    u = torch.randn(batch, n, generator=g, dtype=F64)
    u = u - (u * s).sum(dim=-1, keepdim=True) * s
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    outside = torch.eye(n, dtype=F64) - u[:, :, None] * u[:, None, :]
    R = torch.randn(batch, n, n, generator=g, dtype=F64)
    R = outside @ (R + R.transpose(1, 2)) @ outside
    R = 0.9 * R / torch.linalg.eigvalsh(R).abs().amax(dim=-1)[:, None, None]
    return R + u[:, :, None] * u[:, None, :]


@example(n=16, batch=3, seed=3, krylov_dim=4)  # thorough: 0.9999 after the budget, reported unconverged
@example(n=13, batch=3, seed=4, krylov_dim=4)  # an unconverged check at 0.93 once confirmed 0.9 (its residual counted)
@given(n=st.integers(10, 24), batch=batches, seed=st.integers(0, 2**31 - 2), krylov_dim=st.integers(MIN_KRYLOV, 8))
def test_a_start_blind_to_the_dominant_eigenvector_is_rescued_by_the_check(
    n: int, batch: int, seed: int, krylov_dim: int
) -> None:
    """Where the main run, from its own start, converges on 0.9 (the start is orthogonal to the dominant
    eigenvector, see ``hidden_from``), the deflated check from a fresh start finds 1, the main run
    restarts from there, and ``spectrum`` returns rho = 1, converged and confirmed (or, with a Krylov dimension too
    small to converge within its budget, says it did not converge; never converged on 0.9). The main run is repeated
    here, with the same start and generator, to show that it alone misses (examples where rounding let it see u are
    rejected)."""
    generator = torch.Generator().manual_seed(seed)  # as spectrum(seed=seed) seeds it
    start = torch.randn(batch, n, generator=generator, dtype=F64)  # its first draw: checked_dominant's start
    M = hidden_from(start, seed)
    y = torch.zeros(batch, n, 1, dtype=F64)
    max_restarts = 50  # spectrum's default
    alone = krylov_schur(
        lambda v: (M @ v[..., None]).squeeze(-1), start, krylov_dim, max_restarts, iterative_rtol(n, F64), generator
    )
    missed = alone.value.abs() < 0.95  # converged on 0.9 (rtol ~1e-10 of ||M||), not on 1: halfway is unambiguous
    assume(bool(missed.any()))
    event(f"elements whose main run missed rho: {int(missed.sum())} of {batch}")
    _Counted.calls.clear()
    s = analysis.spectrum(counted_map(M), y, "arnoldi", krylov_dim=krylov_dim, seed=seed)
    # the products of the main run, the checks and the main run restarted from the check's direction, all counted
    assert s.jvps == _Counted.calls["jvp"] and _Counted.calls["vjp"] == 0, (s.jvps, dict(_Counted.calls))
    # M is symmetric (eigenvalues perfectly conditioned): a converged rho is within its residual and the products'
    # rounding of an eigenvalue, and it must be the dominant one, 1, not the 0.9 the main run alone settled on
    dominant = (s.rho - 1).abs() <= s.residual + rounding(M)
    assert bool((dominant | ~s.converged).all()), (s.rho, s.residual, s.converged, alone.value.abs())
    assert bool((s.second[s.converged] < s.rho[s.converged]).all()), (s.second, s.rho)
    # 1 against 0.9 converges within the default 50 restarts for krylov_dim >= 6 (4 and 5 add two directions a
    # cycle and can run out: thorough, n = 16, krylov_dim = 4 stopped at 0.9999, reported unconverged)
    if krylov_dim >= 6:
        assert bool(s.converged.all()) and bool(s.confirmed.all()), (s.rho, s.converged, s.confirmed)


def real_over_pairs(m: int, batch: int, g: torch.Generator) -> Tensor:
    """[B, m, m]: S B S^-1 with B a dominant real eigenvalue (+-2) and conjugate pairs of modulus < 1 (one more
    small real value when m is even), S well conditioned: the spectrum on which a restart that must keep pairs
    whole is tempted to give the dominant real direction away for a pair."""
    blocks = torch.zeros(batch, m, m, dtype=F64)
    blocks[:, 0, 0] = torch.where(torch.rand(batch, generator=g, dtype=F64) < 0.5, -2.0, 2.0)
    start = 1
    if m % 2 == 0:
        blocks[:, 1, 1] = 0.9 * torch.rand(batch, generator=g, dtype=F64)
        start = 2
    for i in range(start, m, 2):
        radius = 0.95 * torch.rand(batch, generator=g, dtype=F64)
        angle = math.pi * (0.05 + 0.9 * torch.rand(batch, generator=g, dtype=F64))
        c, s = radius * torch.cos(angle), radius * torch.sin(angle)
        blocks[:, i, i], blocks[:, i, i + 1], blocks[:, i + 1, i], blocks[:, i + 1, i + 1] = c, -s, s, c
    S = torch.eye(m, dtype=F64) + 0.3 * torch.randn(batch, m, m, generator=g, dtype=F64) / math.sqrt(m)
    return S @ blocks @ torch.linalg.inv(S)


@given(m=st.integers(MIN_KRYLOV, 12), batch=batches, seed=SEEDS, structured=st.booleans())
def test_restart_keeps_an_invariant_subspace_holding_the_dominant_vector(
    m: int, batch: int, seed: int, structured: bool
) -> None:
    """A thick restart keeps ``restart_size(m)`` directions (2 <= keep <= m - 2) whose span is invariant under
    H (so the Krylov-Schur relation survives it) and holds H's dominant eigenvector (so a restart never loses
    what the run converges to). H is Gaussian (most eigenvalues in conjugate pairs) or a dominant real value
    over pairs only, where a pair that does not fit must not push the dominant direction out."""
    keep = restart_size(m)
    assert 2 <= keep <= m - 2, (m, keep)
    g = torch.Generator().manual_seed(seed)
    H = real_over_pairs(m, batch, g) if structured else torch.randn(batch, m, m, generator=g, dtype=F64)
    values, vectors = _eig(H)
    Q, _ = torch.linalg.qr(_kept_columns(values, vectors, keep))
    outside = torch.eye(m, dtype=F64) - Q @ Q.transpose(1, 2)
    # Ritz vectors carry geev's backward error over the eigenvalue gap: measured <= 8.6 m eps ||H|| (leak) and
    # <= 13.7 m eps (missed) over 27 000 Gaussian draws, m = 4..12; 100 m eps is 7x the worst, a lost vector is O(1)
    size = torch.linalg.matrix_norm(H, 2)
    leak = torch.linalg.matrix_norm(outside @ H @ Q, 2)
    assert bool((leak <= 100 * m * EPS * size).all()), (leak / size, keep)
    reference, eigenvectors = torch.linalg.eig(H)  # independent of numpy's geev path used by the library
    top = reference.abs().argmax(dim=-1)
    u = eigenvectors.gather(-1, top[:, None, None].expand(-1, m, 1))
    missed = torch.linalg.vector_norm(outside.to(u.dtype) @ u, dim=(-2, -1))
    assert bool((missed <= 100 * m * EPS).all()), (missed, keep, reference.abs())


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("method", ["lanczos", "power"])
@given(n=sizes, batch=batches, seed=SEEDS)
def test_norm_estimate_reports_its_products_and_its_own_residual(
    method: str, dtype: torch.dtype, n: int, batch: int, seed: int
) -> None:
    """``products`` = jvps + vjps taken; ``norm`` = ||M u|| and ``residual`` = ||M^T w - sigma u||
    (w = M u / sigma) for some unit u, which pins u down: sigma is then within the residual of a singular
    value and at most ||M||_2 (a Rayleigh quotient); ``converged`` and the resolved method are reported, in y's
    dtype. (Each method and dtype is a parameter, not a draw, so that a profile with few examples sees each.)"""
    M = operator(n, batch, seed).to(dtype)
    y = torch.zeros(batch, n, 1, dtype=dtype)
    _Counted.calls.clear()
    est = analysis.norm_estimate(counted_map(M), y, method)
    assert est.products == _Counted.calls["jvp"] + _Counted.calls["vjp"], (est.products, dict(_Counted.calls))
    assert _Counted.calls["jvp"] == _Counted.calls["vjp"], "each step of J^T J is one jvp and one vjp"
    assert est.method == method
    assert est.norm.shape == est.residual.shape == est.converged.shape == (batch,)
    assert est.norm.dtype == est.residual.dtype == dtype and est.converged.dtype == torch.bool
    sigma = torch.linalg.svdvals(M.to(F64))
    # M's products and the residual's norm round in M's dtype: 2 n eps ||M|| (first order)
    floor = rounding(M.to(F64)) * (torch.finfo(dtype).eps / EPS)
    norm, residual = est.norm.to(F64), est.residual.to(F64)
    nearest = (sigma - norm[:, None]).abs().amin(dim=-1)
    assert bool((nearest <= residual + floor).all()), (nearest, residual)
    assert bool((norm <= sigma[:, 0] + floor).all())
    assert bool(est.converged.all())
    # the top singular value is 3 + O(0.5) against a Gaussian rest of norm <= ~1.5: residual < gap / 2
    gap = sigma[:, 0] - sigma[:, 1]
    assert bool((residual <= 0.5 * gap).all()), "a converged estimate resolves sigma_1"
    # power_norm passes each option on: 2 steps stop it before 1e-3 (it takes 4 or more), 1e-3 before 1e-10
    for options in (dict(max_iter=2, seed=3), dict(rtol=1e-3, seed=3)):
        expected = analysis.norm_estimate(counted_map(M), y, "power", **options).norm  # type: ignore[arg-type]
        assert torch.equal(analysis.power_norm(counted_map(M), y, **options), expected)  # type: ignore[arg-type]


@given(n=st.integers(1, 12), batch=batches, seed=SEEDS)
def test_dense_methods_are_exact_and_say_so(n: int, batch: int, seed: int) -> None:
    """Dense: ``auto`` resolves to it up to DENSE_LIMIT; residual exactly 0, converged, no products; the
    values are LAPACK's (eigvals, svdvals) of the block to rounding."""
    M = torch.randn(batch, n, n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    f, y = counted_map(M), torch.zeros(batch, n, 1, dtype=F64)
    est = analysis.norm_estimate(f, y)
    assert est.method == "dense" and est.products == 0
    assert torch.equal(est.residual, torch.zeros(batch, dtype=F64)) and est.converged.dtype == torch.bool
    assert bool(est.converged.all())
    assert torch.allclose(est.norm, torch.linalg.matrix_norm(M, 2), rtol=4 * n * EPS, atol=0)
    s = analysis.spectrum(f, y)
    assert s.method == "dense" and s.eigenvalues is not None and bool(s.converged.all())
    assert s.converged.dtype == torch.bool and s.converged.shape == s.residual.shape == (batch,)
    # the residual ||M u - theta u|| of a unit eigenvector from geev: backward stable, n eps ||M|| or so
    assert bool((s.residual <= 8 * n * EPS * torch.linalg.matrix_norm(M, 2)).all()), s.residual
    assert torch.equal(analysis.spectral_radius(f, y), s.rho)
    arnoldi = analysis.spectrum(f, y, "arnoldi", krylov_dim=n).rho
    assert torch.equal(analysis.spectral_radius(f, y, "arnoldi", krylov_dim=n), arnoldi)
    # two geev runs (numpy on the scaled block, torch here) on a Gaussian M of n <= 12: rho agrees to ~n eps cond;
    # 1e-10 relative covers cond up to ~1e4, and atol 1e-300 only keeps rho = 0 (n = 1, M = 0) comparable
    assert torch.allclose(s.rho, torch.linalg.eigvals(M).abs().amax(-1), rtol=1e-10, atol=1e-300)


def test_auto_switches_to_matrix_free_above_the_dense_limit() -> None:
    """n = DENSE_LIMIT is dense, n = DENSE_LIMIT + 1 is matrix-free (Lanczos, Arnoldi), per the docstrings."""
    for n, norm_method, spectrum_method in ((DENSE_LIMIT, "dense", "dense"), (DENSE_LIMIT + 1, "lanczos", "arnoldi")):
        M = operator(n, 1, n)
        y = torch.zeros(1, n, 1, dtype=F64)
        assert analysis.norm_estimate(counted_map(M), y).method == norm_method
        assert analysis.spectrum(counted_map(M), y).method == spectrum_method


def _run_all(f: Callable[[Tensor], Tensor], y: Tensor) -> list[Tensor]:
    s = analysis.spectrum(f, y, "arnoldi", krylov_dim=MIN_KRYLOV)
    lanczos = analysis.norm_estimate(f, y, "lanczos", krylov_dim=MIN_KRYLOV)
    power = analysis.norm_estimate(f, y, "power")
    assert s.second is not None
    return [
        s.eigenvalue,
        s.residual,
        s.second,
        lanczos.norm,
        lanczos.residual,
        power.norm,
        power.residual,
        torch.tensor([s.jvps, lanczos.products, power.products]),
    ]


# a rank-1 operator: the Krylov run breaks down and draws a fresh direction, whose dtype must not follow torch's
# default (the mutation profile's 5 draws do not reach such a breakdown; the ci profile's 20 do)
@example(n=6, batch=3, seed=0, rank=1)
@given(n=st.integers(MIN_KRYLOV + 1, 12), batch=batches, seed=SEEDS, rank=st.sampled_from([None, 1, 2]))
def test_estimates_are_reproducible_and_leave_torch_state_alone(n: int, batch: int, seed: int, rank) -> None:
    """The same call gives the same bits; torch's global random stream is not used (its state is unchanged,
    and a different global state changes nothing); torch's default dtype does not reach the estimates. Also on
    operators of rank 1 or 2, whose Krylov spaces break down and are continued from fresh random directions: those
    come from the estimate's own seeded generator too."""
    if rank is None:
        M = operator(n, batch, seed)
    else:
        U, V = low_rank(n, rank, batch, seed)
        M = U @ V.transpose(1, 2)
    f, y = counted_map(M), torch.zeros(batch, n, 1, dtype=F64)
    torch.manual_seed(seed)
    state = torch.get_rng_state()
    first = _run_all(f, y)
    assert torch.equal(torch.get_rng_state(), state), "an estimate drew from torch's global random stream"
    torch.manual_seed(seed + 1)  # another global stream and another default dtype: the same bits
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(F64 if default != F64 else torch.float32)
        again = _run_all(f, y)
    finally:
        torch.set_default_dtype(default)
    for a, b in zip(first, again):
        assert a.dtype == b.dtype
        assert torch.equal(a, b) or bool(torch.isnan(a).all() and torch.isnan(b).all()), (a, b)


def test_bad_options_are_refused_by_name() -> None:
    M = operator(8, 1, 0)
    f, y = counted_map(M), torch.zeros(1, 8, 1, dtype=F64)
    with pytest.raises(ValueError, match="unknown method 'qr'; choose one of auto, dense, lanczos, power"):
        analysis.norm_estimate(f, y, "qr")
    with pytest.raises(ValueError, match="unknown method 'power'; choose one of auto, dense, arnoldi"):
        analysis.spectrum(f, y, "power")
    for bad in (0, -1, 2.0, None):
        for method in ("lanczos", "power"):
            with pytest.raises(ValueError, match=rf"max_iter must be an integer >= 1, got {bad!r}"):
                analysis.norm_estimate(f, y, method, max_iter=bad)  # type: ignore[arg-type]
    for bad in (-1, 2.0, None):
        with pytest.raises(ValueError, match=rf"max_restarts must be an integer >= 0, got {bad!r}"):
            analysis.spectrum(f, y, "arnoldi", max_restarts=bad)  # type: ignore[arg-type]
    poisoned = counted_map(torch.full_like(M, math.nan))
    with pytest.raises(ValueError, match="the Jacobian at y has non-finite entries: no spectrum to compute"):
        analysis.spectrum(poisoned, y, "dense")
    # the smallest budgets are accepted: one product of J^T J, no restart
    assert analysis.norm_estimate(f, y, "power", max_iter=1).products == 4
    assert analysis.spectrum(f, y, "arnoldi", max_restarts=0, krylov_dim=MIN_KRYLOV).jvps is not None


def test_the_defaults_are_the_documented_ones() -> None:
    """What the signatures document (and the README's scaling figures were measured with): Lanczos with Krylov
    dimension 20, at most 500 products of J^T J, seed 0; Arnoldi with dimension 40, 50 restarts, seed 0. A run
    with them spelt out gives the same bits (n = 60, above both Krylov dimensions)."""
    M = operator(60, 2, 7)
    f, y = counted_map(M), torch.zeros(2, 60, 1, dtype=F64)
    for method in ("lanczos", "power"):
        implicit = analysis.norm_estimate(f, y, method)
        explicit = analysis.norm_estimate(f, y, method, max_iter=500, seed=0, krylov_dim=20)
        assert torch.equal(implicit.norm, explicit.norm) and torch.equal(implicit.residual, explicit.residual)
        assert implicit.products == explicit.products
    implicit_s = analysis.spectrum(f, y, "arnoldi")
    explicit_s = analysis.spectrum(f, y, "arnoldi", krylov_dim=40, max_restarts=50, seed=0)
    assert torch.equal(implicit_s.eigenvalue, explicit_s.eigenvalue) and implicit_s.jvps == explicit_s.jvps
    other = analysis.norm_estimate(f, y, "lanczos", seed=1)
    assert not torch.equal(other.residual, analysis.norm_estimate(f, y, "lanczos").residual)  # the seed matters


@given(
    n=st.integers(MIN_KRYLOV + 2, 16),
    rank=st.integers(1, 3),
    batch=batches,
    seed=SEEDS,
    krylov_dim=st.integers(MIN_KRYLOV, 8),
)
@example(n=6, rank=1, batch=3, seed=5515, krylov_dim=4)  # thorough: rho 0.067 beside ||M|| ~ 3 (kappa large)
def test_low_rank_operators_are_solved_past_their_invariant_subspace(n, rank, batch, seed, krylov_dim) -> None:
    """M = U V^T of rank r < m: the Krylov space from any start is exhausted after r + 1 vectors (beta = 0), where
    Arnoldi and Lanczos continue from a fresh random direction. Their answers are still numpy's (rho within its
    residual times cond; sigma within its residual), converged, from the products counted."""
    U, V = low_rank(n, rank, batch, seed)
    M = U @ V.transpose(1, 2)
    f, y = counted_map(M), torch.zeros(batch, n, 1, dtype=F64)
    _Counted.calls.clear()
    s = analysis.spectrum(f, y, "arnoldi", krylov_dim=krylov_dim)
    assert s.jvps == _Counted.calls["jvp"]
    dense = torch.linalg.eigvals(M)
    rho = dense.abs().amax(dim=-1)
    # The nonzero eigenvalues are those of V^T U (r x r), with right eigenvectors U z and left ones V w in M. The
    # dominant one's condition number in M, kappa = ||U z|| ||V w|| / |(V w)^H U z|, carries both errors to it:
    # Arnoldi's residual and the dense reference's own rounding (kappa ||E||, E ~ rounding(M); at rank 1 kappa is
    # ||u|| ||v|| / |v^T u|, large where the dominant eigenvalue is small beside ||M||: a thorough draw had
    # rho 0.067 with ||M|| ~ 3, outside a bound that used the conditioning inside V^T U alone).
    small = (V.transpose(1, 2) @ U).to(torch.complex128)
    values, right = torch.linalg.eig(small)
    top = values.abs().argmax(dim=-1)
    z = right[torch.arange(batch), :, top]  # [B, r]
    mu, left = torch.linalg.eig(small.transpose(1, 2))  # eigenvectors of (V^T U)^T: the left ones of V^T U
    w = left[torch.arange(batch), :, (mu - values[torch.arange(batch), top][:, None]).abs().argmin(dim=-1)]
    x_right = (U.to(torch.complex128) @ z[..., None])[..., 0]
    x_left = (V.to(torch.complex128) @ w[..., None])[..., 0]
    kappa = x_right.norm(dim=-1) * x_left.norm(dim=-1) / (x_left.conj() * x_right).sum(-1).abs()
    bound = kappa * (s.residual + 2 * rounding(M))
    assert bool(s.converged.all()), f"Arnoldi did not converge on a rank-{rank} operator"
    assert bool(((s.rho - rho).abs() <= bound).all()), (s.rho, rho, bound)
    est = analysis.norm_estimate(f, y, "lanczos", krylov_dim=krylov_dim)
    sigma = torch.linalg.svdvals(M)[:, 0]
    assert bool(est.converged.all())
    assert bool(((est.norm - sigma).abs() <= est.residual + rounding(M)).all()), (est.norm, sigma)


def test_thin_wrappers_pass_every_option_on() -> None:
    """jacobian_norm is the norm of norm_estimate with the same options, each of which changes the norm here (so
    a dropped one shows): a budget of 6 products (no restart, not converged) with a seed and a Krylov dimension of
    its own; then a loose rtol, which stops a run that the default would continue."""
    M = operator(30, 2, 3)
    f, y = counted_map(M), torch.zeros(2, 30, 1, dtype=F64)
    defaults = {"max_iter": 500, "rtol": None, "seed": 0, "krylov_dim": 20}
    for options in (dict(max_iter=6, seed=5, krylov_dim=6), dict(rtol=1e-4, krylov_dim=6)):
        expected = analysis.norm_estimate(f, y, "lanczos", **options).norm  # type: ignore[arg-type]
        assert torch.equal(analysis.jacobian_norm(f, y, "lanczos", **options), expected)  # type: ignore[arg-type]
        for name in options:
            if name == "krylov_dim" and "rtol" in options:
                continue
            other = analysis.norm_estimate(f, y, "lanczos", **{**options, name: defaults[name]})  # type: ignore[arg-type]
            assert not torch.equal(other.norm, expected), name


def test_iterative_rtol_is_ten_times_the_rounding_floor_or_1e10() -> None:
    """max(1e-10, 20 (n + 2) eps): float32 is always above 1e-10, float64 from n = 22 516 on."""
    eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(F64).eps
    for n in (1, 7, 1000):
        assert iterative_rtol(n, torch.float32) == 20 * (n + 2) * eps32
        assert iterative_rtol(n, F64) == 1e-10
    assert iterative_rtol(30_000, F64) == 20 * 30_002 * eps64


def test_bad_krylov_dims_and_directions_are_refused_by_name() -> None:
    f, y = counted_map(operator(8, 1, 0)), torch.zeros(1, 8, 1, dtype=F64)
    for bad in (0, -3, 2.0, True, None):
        with pytest.raises(ValueError, match=re.escape(f"krylov_dim must be an integer >= 1, got {bad!r}")):
            analysis.norm_estimate(f, y, "lanczos", krylov_dim=bad)  # type: ignore[arg-type]
    message = (
        f"krylov_dim = 2 < {MIN_KRYLOV} on n = 8: a restarted Krylov space that small keeps a single Ritz vector and "
        f"can lock onto a smaller eigenvalue; use krylov_dim >= {MIN_KRYLOV} (or >= n, which spans the whole space)"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        analysis.spectrum(f, y, "arnoldi", krylov_dim=2)
    with pytest.raises(ValueError, match=re.escape("the direction v must have y's shape (1, 8, 1), got list")):
        analysis.jvp(f, y, [1.0] * 8)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("the direction v must have y's shape (1, 8, 1), got (8, 1)")):
        analysis.vjp(f, y, torch.zeros(8, 1, dtype=F64))


@given(n=st.integers(MIN_KRYLOV + 1, 14), batch=st.integers(2, 3), seed=SEEDS, krylov_dim=st.integers(MIN_KRYLOV, 8))
def test_the_ritz_pair_is_a_unit_vector_with_its_own_residual(n: int, batch: int, seed: int, krylov_dim: int) -> None:
    """krylov_schur returns, per batch element, a Ritz vector of norm 1 (normalised element by element, not over
    the batch) and the residual ||M u - theta u|| of that very pair, recomputed here densely."""
    M = operator(n, batch, seed)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, n, generator=generator, dtype=F64)
    rtol = iterative_rtol(n, F64)
    pair = krylov_schur(lambda v: (M @ v[..., None]).squeeze(-1), start, krylov_dim, 50, rtol, generator)
    u = pair.vector
    norms = torch.linalg.vector_norm(u, dim=-1)
    assert bool(((norms - 1).abs() <= 4 * n * EPS).all()), norms  # a normalisation rounds each entry once
    Mu = (M.to(u.dtype) @ u[..., None]).squeeze(-1)
    residual = torch.linalg.vector_norm(Mu - pair.value[:, None] * u, dim=-1)
    assert bool(((pair.residual - residual).abs() <= rounding(M)).all()), (pair.residual, residual)
