"""The Jacobian tools (jvp, the dense blocks, ||J||_2 by power iteration and Lanczos, rho by dense eig and
Arnoldi) where the broader properties rarely look.

Each test here pins a behaviour that a library mutant changed while every other property passed (the mutation
report of ``tox -e mutate`` names them): a point with no entry per element is refused; a direction of another
dtype is cast to y's; power iteration with a zero block beside a live one, and on a Jacobian so small that
J^T J v underflows; its stop, relative per element; ``power_norm`` and ``spectral_radius`` pass their options
on; the Lanczos budget that ``max_iter`` buys; the dense eigen solve in float64 (half precision, blocks of very
different scales, float32's ties) and each element's spectrum as it is alone; Arnoldi's rho and residual in
y's dtype. The references are closed forms (diagonal and dyadic matrices whose Jacobians are exact), numpy's
eigvals in float64, and the same call on one element alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from iqa import analysis
from iqa.analysis.krylov import CHECK_RESTARTS, restart_size

F64 = torch.float64
EPS = torch.finfo(F64).eps

#: Nonsymmetric 4 x 4 blocks with small dyadic entries: y -> A y has the exact Jacobian A in every float dtype
#: down to float16 (and bfloat16), so a test on it sees only what the tool does with J. Each block's max |entry|
#: is 2; WITH_THREE (a 3 in each block's corner, still exact in float16 and bfloat16, the others not multiples of
#: 3) checks that the dense solve's scaling is exact.
DYADIC = torch.tensor(
    [
        [[1.0, 2.0, 0.5, -1.0], [-2.0, -1.0, 0.25, 2.0], [0.5, 1.0, -2.0, 1.0], [1.0, 0.0, 1.5, 0.75]],
        [[0.5, -1.0, 0.0, 2.0], [1.0, 0.25, -0.5, 0.0], [-2.0, 1.0, 1.0, 0.5], [0.0, 1.5, -1.0, -0.25]],
        [[2.0, 0.0, 0.0, 1.0], [-1.0, 1.0, 0.5, 0.0], [0.0, -0.5, 0.75, 1.0], [0.25, 0.0, -1.0, 1.5]],
    ],
    dtype=F64,
)
WITH_THREE = DYADIC.clone()
WITH_THREE[:, 0, 0] = 3.0


def linear(M: Tensor) -> Callable[[Tensor], Tensor]:
    """y -> M_b y_b for y [B, n] (M [B, n, n]; a [n, n] M is shared): the Jacobian is M, seen through jvp / vjp."""
    return lambda y: (M @ y[..., None]).squeeze(-1)


def diagonal(S: Tensor) -> Callable[[Tensor], Tensor]:
    """y -> S * y elementwise: J_b = diag(S_b), ||J_b||_2 = max |S_b|."""
    return lambda y: S * y


def rho_reference(M: Tensor) -> Tensor:
    """max |eigenvalue| of each block by numpy's eigvals in float64: an independent path."""
    return torch.from_numpy(np.abs(np.linalg.eigvals(M.to(F64).numpy())).max(axis=-1))


# --- the point and the direction -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 0), (1, 3, 0), (3, 0, 2)])
@pytest.mark.parametrize("tool", ["jvp", "vjp", "jacobian", "norm_estimate", "spectrum"])
def test_a_point_with_no_entry_per_element_is_refused(shape: tuple[int, ...], tool: str) -> None:
    """B >= 1 elements of no entries each (n = 0) have no Jacobian: every tool refuses them by name."""
    y = torch.zeros(shape, dtype=F64)
    call = {
        "jvp": lambda: analysis.jvp(torch.tanh, y, y),
        "vjp": lambda: analysis.vjp(torch.tanh, y, y),
        "jacobian": lambda: analysis.jacobian(torch.tanh, y),
        "norm_estimate": lambda: analysis.norm_estimate(torch.tanh, y, "lanczos"),
        "spectrum": lambda: analysis.spectrum(torch.tanh, y, "arnoldi"),
    }[tool]
    with pytest.raises(ValueError, match="at least one entry per element"):
        call()


@pytest.mark.parametrize(
    "y_dtype, v_dtype", [(F64, torch.float32), (F64, torch.int64), (torch.float32, F64), (torch.float32, torch.int32)]
)
def test_a_direction_of_another_dtype_is_cast_to_y_dtype(y_dtype: torch.dtype, v_dtype: torch.dtype) -> None:
    """jvp and vjp take v in any real dtype and mean v cast to y's: the result is the one for the cast v, in y's
    dtype (forward AD alone refuses an integer tangent, and a float32 one against float64 weights)."""
    M = DYADIC[0].to(y_dtype)
    f = linear(M)
    y = torch.arange(8.0, dtype=y_dtype).reshape(2, 4) / 4
    v = torch.tensor([[1.0, -2.0, 3.0, 0.0], [2.0, 1.0, -1.0, 4.0]]).to(v_dtype)
    for tool in (analysis.jvp, analysis.vjp):
        out = tool(f, y, v)
        assert out.dtype == y_dtype
        assert torch.equal(out, tool(f, y, v.to(y_dtype)))  # the same products on the same (exact) numbers


# --- ||J||_2 by power iteration -----------------------------------------------------------------------------------


def test_power_iteration_beside_a_zero_block() -> None:
    """An element whose Jacobian is 0 has norm 0 and neither stalls nor perturbs the other: that one runs exactly
    as alone (its start is the first row of the same draw), so the batch takes its products and its norm."""
    S = torch.tensor([[1.0, 0.9, 0.5], [0.0, 0.0, 0.0]], dtype=F64)
    y = torch.zeros(2, 3, dtype=F64)
    batch = analysis.norm_estimate(diagonal(S), y, "power")
    alone = analysis.norm_estimate(diagonal(S[:1]), y[:1], "power")
    assert batch.norm[1] == 0 and batch.residual[1] == 0 and bool(batch.converged.all())
    assert torch.equal(batch.norm[:1], alone.norm)  # the same iterates, bit for bit
    assert batch.products == alone.products < 100  # stops when the live element does (the default max_iter is 500)


def test_power_iteration_where_jtj_underflows() -> None:
    """J = 2^-530 I: J v is normal (about 1e-160) but J^T J v underflows to 0 in every element. The iteration must
    stop there with sigma = ||J v||, not go on from a zero direction to sigma = 0."""
    scale = 2.0**-530
    y = torch.zeros(2, 3, dtype=F64)
    norm = analysis.power_norm(lambda y: scale * y, y)
    # ||J v||^2 sums squares near 2^-1060, subnormal with 14 significant bits: the norm is good to ~1e-4 relative
    torch.testing.assert_close(norm, torch.full((2,), scale, dtype=F64), rtol=1e-3, atol=0.0)


def test_power_iteration_stops_relative_to_each_element() -> None:
    """The stop is |sigma_t - sigma_{t-1}| <= rtol sigma_t in every element, whatever its scale: an element 2^-20
    the size of the other converges as far (relative) as it would alone. sigma_t = ||J v_t|| climbs to ||J||_2 by
    the Rayleigh quotient of J^T J, error ratio q = (0.9^2)^2 per step, so a last change of rtol leaves an error of
    about rtol q / (1 - q) = 1.9 rtol (to first order; 4 rtol allows for the rest)."""
    rtol = 1e-8
    S = torch.tensor([[1.0, 0.9, 0.5], [1.0, 0.0, 0.0]], dtype=F64) * torch.tensor([[2.0**-20], [1.0]], dtype=F64)
    norm = analysis.power_norm(diagonal(S), torch.zeros(2, 3, dtype=F64), rtol=rtol)
    top = S[:, 0]
    assert bool((norm <= top * (1 + 4 * EPS)).all())  # ||J u|| for a unit u: never above ||J||_2 beyond rounding
    assert bool((top - norm <= 4 * rtol * top).all()), (top - norm) / top  # seen: 1.7e-8 and 0 relative


def test_power_norm_is_the_power_estimate() -> None:
    """power_norm with its defaults is norm_estimate(method="power") with its defaults, bit for bit (the random
    start is drawn from the same seed); jacobian_norm likewise with method="auto"."""
    g = torch.Generator().manual_seed(5)
    M = torch.randn(2, 6, 6, generator=g, dtype=F64)
    y = torch.zeros(2, 6, dtype=F64)
    assert torch.equal(analysis.power_norm(linear(M), y), analysis.norm_estimate(linear(M), y, "power").norm)
    assert torch.equal(analysis.jacobian_norm(linear(M), y), analysis.norm_estimate(linear(M), y).norm)


# --- ||J||_2 by Lanczos: the budget ----------------------------------------------------------------------------


@pytest.mark.parametrize("krylov_dim, max_iter", [(4, 1), (4, 4), (4, 6), (4, 8), (8, 13), (6, 13), (10, 23)])
def test_lanczos_spends_max_iter_in_whole_restart_cycles(krylov_dim: int, max_iter: int) -> None:
    """``max_iter`` bounds the main Lanczos run's products of J^T J: the first cycle takes m = krylov_dim, each
    restart m - keep more (keep = restart_size(m)), and the run gets the fewest restarts that reach max_iter,
    none when the first cycle does. With rtol = 1e-300 (never met) on a clustered spectrum it spends all of
    them; then one product for its residual, and the deflated check the same with at most CHECK_RESTARTS
    restarts. ``products`` counts a jvp and a vjp per product of J^T J, plus 2 for the final residual.
    At m = 6 and 10, keep = restart_size(m) is m / 2 + 1 (m's parity), not m / 2: the budget once assumed
    (m / 2) rounded down to even and gave the run about half of max_iter."""
    n = 16
    S = torch.linspace(1.0, 0.85, n, dtype=F64)[None]
    m, keep = krylov_dim, restart_size(krylov_dim)
    restarts = max(0, math.ceil((max_iter - m) / (m - keep)))
    main = m + restarts * (m - keep) + 1
    check = m + min(restarts, CHECK_RESTARTS) * (m - keep) + 1
    found = analysis.norm_estimate(
        diagonal(S), torch.zeros(1, n, dtype=F64), "lanczos", krylov_dim=m, max_iter=max_iter, rtol=1e-300
    )
    assert not bool(found.converged.any())
    assert found.products == 2 * (main + check) + 2


# --- the deflated check that never settles --------------------------------------------------------------------


def blind_starts(seed: int, n: int) -> Tensor:
    """Q [n, n] orthogonal whose first three columns the Krylov runs' random starts cannot see: the runs draw their
    starts d0 (main run), d1, d2, d3 (the deflated checks) from torch.Generator().manual_seed(seed), randn(1, n)
    each, in that order; q1 is orthogonal to d0, d1, d2, q2 to d0, d1 and q3 to d0."""
    g = torch.Generator().manual_seed(seed)
    d = [torch.randn(n, generator=g, dtype=F64) for _ in range(3)]
    other = torch.Generator().manual_seed(seed + 1)

    def orthogonal_to(*vectors: Tensor) -> Tensor:
        Q, _ = torch.linalg.qr(torch.stack([*vectors, torch.randn(n, generator=other, dtype=F64)], dim=1))
        return Q[:, -1]

    q1 = orthogonal_to(d[0], d[1], d[2])
    q2 = orthogonal_to(d[0], d[1], q1)
    q3 = orthogonal_to(d[0], q1, q2)
    Q, _ = torch.linalg.qr(
        torch.cat([torch.stack([q1, q2, q3], dim=1), torch.randn(n, n - 3, generator=other, dtype=F64)], 1)
    )
    return Q  # its first columns are +-q1, q2, q3: the sign does not change Q diag Q^T


@pytest.mark.parametrize("tool", ["spectrum", "norm_estimate"])
def test_a_check_that_finds_a_larger_eigenvalue_every_round_is_not_converged(tool: str) -> None:
    """A = Q diag(1, 0.9, 0.8, 0.7, small) Q^T with the top three eigenvectors hidden from the starts (see
    blind_starts): the main run converges on 0.7, each check finds the next larger (0.8, 0.9, then 1), and the
    main run restarted from it converges there, MAX_CHECKS = 3 times. The last run found rho = 1 with a small
    residual, but no check confirmed it: ``converged`` is False, as ``confirmed`` is. Arnoldi on A; Lanczos on
    J^T J = A with J = Q diag(sqrt) Q^T."""
    n, seed = 8, 0
    Q = blind_starts(seed, n)
    eigenvalues = torch.tensor([1.0, 0.9, 0.8, 0.7, 0.1, 0.05, 0.02, 0.01], dtype=F64)
    y = torch.zeros(1, n, dtype=F64)
    if tool == "spectrum":
        found = analysis.spectrum(linear(Q @ torch.diag(eigenvalues) @ Q.T), y, "arnoldi", krylov_dim=4, seed=seed)
        assert not bool(found.confirmed.any())
        rho, residual = found.rho, found.residual
    else:
        J = Q @ torch.diag(eigenvalues.sqrt()) @ Q.T
        found = analysis.norm_estimate(linear(J), y, "lanczos", krylov_dim=4, seed=seed)
        rho, residual = found.norm**2, found.residual
    torch.testing.assert_close(rho, torch.ones(1, dtype=F64), rtol=1e-9, atol=0.0)  # rtol 1e-10 by default: seen 1e-16
    assert bool((residual < 1e-9).all())  # the last run converged (default tolerance 1e-10 ||H||_F)
    assert not bool(found.converged.any())


# --- rho by the dense eigen solve ------------------------------------------------------------------------------


def test_each_element_has_its_spectrum_alone() -> None:
    """Element b's dense spectrum, its residual ||J_b u - theta u|| for a unit u included, is what J_b gives
    alone: the blocks are exact (dyadic), and each is solved and checked on its own."""
    y = torch.zeros(3, 4, dtype=F64)
    batch = analysis.spectrum(linear(DYADIC), y, "dense")
    torch.testing.assert_close(batch.rho, rho_reference(DYADIC), rtol=1e-13, atol=0.0)  # cond ~ 10, 4 eps each
    for b in range(3):
        alone = analysis.spectrum(linear(DYADIC[b : b + 1]), y[b : b + 1], "dense")
        assert torch.equal(batch.eigenvalue[b : b + 1], alone.eigenvalue)
        # the same computation on the same block: equal to the bit (a residual of a non-unit u would scale)
        assert alone.residual[0] > 0 and torch.equal(batch.residual[b : b + 1], alone.residual)


def test_blocks_of_very_different_scales() -> None:
    """Each block is scaled to max |entry| 1 on its own before the eigen solve: blocks 2^600 and 2^-600 times a
    dyadic matrix in one batch both get rho exactly scaled (a scale shared by the batch flushes the small one)."""
    scale = torch.tensor([2.0**600, 2.0**-600, 1.0], dtype=F64)[:, None, None]
    M = DYADIC * scale
    rho = analysis.spectrum(linear(M), torch.zeros(3, 4, dtype=F64), "dense").rho
    # powers of two scale the eigenvalues exactly; geev on the unit-scaled block, cond ~ 10: 1e-13 relative
    torch.testing.assert_close(rho / scale[:, 0, 0], rho_reference(DYADIC), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("blocks", [DYADIC, WITH_THREE], ids=["dyadic", "with-three"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_the_dense_eigen_solve_runs_in_float64(dtype: torch.dtype, blocks: Tensor) -> None:
    """The blocks go to numpy in float64 whatever y's dtype (numpy has no half-precision eig): the exact
    float16 / bfloat16 / float32 Jacobian of a dyadic map gets rho to the rounding of its complex64 result, also
    when its largest entry is 3 (a scaling to max 1 in J's own dtype rounded the entries: rho 2.4e-4 off in
    float16, 1.9e-3 in bfloat16)."""
    y = torch.zeros(3, 4, dtype=dtype)
    rho = analysis.spectrum(linear(blocks.to(dtype)), y, "dense").rho
    # complex64 eigenvalues: |theta| to a few float32 eps (1.2e-7), over a float64 solve good to 1e-14
    torch.testing.assert_close(rho.to(F64), rho_reference(blocks), rtol=1e-6, atol=0.0)


def test_float32_dominant_eigenvalue_wherever_geev_puts_it() -> None:
    """In float32, 1 - TIE rounds to 1: only exact ties count, and the dominant eigenvalue must still be chosen
    when geev lists it second (diagonal blocks keep their order)."""
    D = torch.tensor([[[0.1, 0.0], [0.0, 0.9]], [[-0.9, 0.0], [0.0, 0.1]]])
    found = analysis.spectrum(linear(D), torch.zeros(2, 2), "dense")
    assert torch.equal(found.eigenvalue, torch.tensor([0.9, -0.9], dtype=torch.complex64))


# --- rho by Arnoldi, and the options --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, F64])
def test_both_methods_report_in_the_same_dtypes(dtype: torch.dtype) -> None:
    """Dense and Arnoldi give rho, residual (and Arnoldi's second modulus) as real tensors of y's dtype for float32
    and float64 and as float32 for float16 and bfloat16 (a half-precision Arnoldi rho had been rounded to float16,
    the dense one not), the eigenvalue as the matching complex dtype."""
    real = F64 if dtype == F64 else torch.float32
    y = torch.zeros(3, 4, dtype=dtype)
    found = {method: analysis.spectrum(linear(DYADIC.to(dtype)), y, method) for method in ("arnoldi", "dense")}
    for method, spectrum in found.items():
        assert spectrum.rho.dtype == spectrum.residual.dtype == real, method
        assert spectrum.eigenvalue.dtype == (torch.complex128 if real == F64 else torch.complex64), method
    second = found["arnoldi"].second
    assert second is not None and second.dtype == real
    if dtype in (torch.float32, F64):
        # Arnoldi's products run in y's dtype: in float32 both methods agree to a few float32 eps (half precision
        # products leave ~6 eps of theirs, 0.6% in float16, 4% in bfloat16, against the float64 dense solve)
        torch.testing.assert_close(found["arnoldi"].rho, found["dense"].rho, rtol=1e-6, atol=0.0)


def test_spectral_radius_passes_its_options_on() -> None:
    """spectral_radius(f, y, method, **options) is spectrum(...).rho with those options: a Krylov dimension that
    cannot restart soundly is refused, and a short run gives the short run's rho, bit for bit."""
    g = torch.Generator().manual_seed(2)
    M = torch.randn(1, 12, 12, generator=g, dtype=F64)
    y = torch.zeros(1, 12, dtype=F64)
    with pytest.raises(ValueError, match="krylov_dim = 2 < 4"):
        analysis.spectral_radius(linear(M), y, "arnoldi", krylov_dim=2)
    options = dict(krylov_dim=4, max_restarts=1, seed=3)
    short = analysis.spectrum(linear(M), y, "arnoldi", **options)
    assert not bool(short.converged.any())  # a different answer from the default run, which converges
    assert torch.equal(analysis.spectral_radius(linear(M), y, "arnoldi", **options), short.rho)


@pytest.mark.parametrize("rtol", [0.0, -1e-8, math.nan, math.inf, True, "1e-8"])
@pytest.mark.parametrize(
    "estimate",
    [
        lambda f, y, rtol: analysis.spectrum(f, y, "arnoldi", krylov_dim=6, rtol=rtol),
        lambda f, y, rtol: analysis.spectrum(f, y, "dense", rtol=rtol),
        lambda f, y, rtol: analysis.norm_estimate(f, y, "lanczos", krylov_dim=6, rtol=rtol),
        lambda f, y, rtol: analysis.norm_estimate(f, y, "power", rtol=rtol),
    ],
    ids=["arnoldi", "dense", "lanczos", "power"],
)
def test_a_relative_tolerance_must_be_a_finite_positive_number(estimate: Callable, rtol: object) -> None:
    """rtol = 0 made the deflated check's scale 0 / 0 (NaN); a negative or NaN one was taken silently and the
    estimate reported unconverged. Each is refused by name, also by the dense method, which does not read it."""
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        estimate(linear(DYADIC[0]), torch.zeros(1, 4, dtype=F64), rtol)
