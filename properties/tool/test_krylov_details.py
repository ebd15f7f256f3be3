"""The Krylov-Schur iteration's bookkeeping, where the accuracy properties of the estimates rarely look.

Each test here pins a behaviour of :mod:`iqa.analysis.krylov` that a library mutant changed while every other
property passed (the mutation report of ``tox -e mutate`` names them): ``real_basis``, the orthonormal basis of
the invariant plane that the deflated check removes, on nearly parallel real and imaginary parts and in a batch of
very different scales; a run over the whole space, which costs n products and its residual's, stops with
tol = rtol ||A||_F, and finds the dominant eigenvalue even from a start blind to it (a breakdown one step before
the end); the generator, read only for a direction that broke down; a batch element scaled by a power of two,
which runs as it would alone; and the deflated check and the rerun after it, which are judged on the scale of A
that the first run measured, not on the smaller one they see themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import Tensor

from iqa.analysis.krylov import MIN_KRYLOV, checked_dominant, krylov_schur, real_basis
from properties.tool.test_estimate_contracts import operator

F64 = torch.float64
C128 = torch.complex128
EPS = torch.finfo(F64).eps
SEEDS = st.integers(0, 2**31 - 1)
#: iterative_rtol of float64 below n = 2e4: the tolerance the estimates run with.
RTOL = 1e-10
CPU = torch.device("cpu")


def matvec(M: Tensor, calls: list[int] | None = None) -> Callable[[Tensor], Tensor]:
    """v [B, n] -> M_b v_b, each application counted in ``calls[0]`` when given."""

    def op(v: Tensor) -> Tensor:
        if calls is not None:
            calls[0] += 1
        return (M @ v[..., None]).squeeze(-1)

    return op


# --- real_basis -------------------------------------------------------------------------------------------------


def plane_vector(n: int, seed: int, parts: list[tuple[float, float, float]]) -> Tensor:
    """[B, n] complex: per element (sy, sin_t, sx), u = sx x + i sy (cos_t x + sin_t z), x and z orthonormal:
    Im u leaves the line of Re u at angle t (sin_t = 0: u is a real vector times 1 + i sy / sx)."""
    batch = len(parts)
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(batch, n, 2, generator=g, dtype=F64))
    x, z = basis[..., 0], basis[..., 1]
    sy, sin_t, sx = (torch.tensor(column, dtype=F64)[:, None] for column in zip(*parts))
    imag = sy * (torch.sqrt(1 - sin_t**2) * x + sin_t * z)
    return torch.complex(sx * x, imag)


parts = st.tuples(
    st.one_of(st.just(0.0), st.floats(-15, 1).map(lambda e: 10.0**e)),  # |Im u| from 1e-15 to 10, or 0
    st.one_of(st.sampled_from([0.0, 1.0]), st.floats(-8, 0).map(lambda e: 10.0**e)),  # sin of Im's angle to Re
    st.floats(-3, 3).map(lambda e: 10.0**e),  # |Re u|
)


@example(n=5, seed=0, elements=[(1e-14, 1.0, 1.0), (1.0, 1e-6, 3.0), (0.5, 0.0, 3.0)])  # tiny, near-parallel, real
# Im u on Re u's line up to rounding: real, though its distance from the line is not exactly 0 (the mutation
# profile's 5 draws do not reach such a vector; the ci profile's 20 do)
@example(n=2, seed=0, elements=[(1.0, 0.0, 10.0)])
@given(n=st.integers(2, 8), seed=SEEDS, elements=st.lists(parts, min_size=1, max_size=3))
def test_real_basis_is_an_orthonormal_basis_of_the_plane(
    n: int, seed: int, elements: list[tuple[float, float, float]]
) -> None:
    """real_basis(u) [B, n, 2]: the unit Re u, then a unit vector completing span(Re u, Im u) to an orthonormal
    pair, element by element (however the elements' scales differ), or 0 where Im u lies on the line of Re u.
    Im u at an angle t from Re u (down to sin t = 1e-8, far above the 1e3 eps below which it counts as on the
    line) still gets its direction: the second column is Im u's projection off Re u, kept orthogonal to it by a
    second Gram-Schmidt pass (one pass leaves eps / sin t)."""
    u = plane_vector(n, seed, elements)
    Q = real_basis(u)
    plane = torch.tensor([sy > 0 and sin_t > 0 for sy, sin_t, _ in elements])
    unit_re = u.real / torch.linalg.vector_norm(u.real, dim=-1, keepdim=True)
    # the same normalisation, rounded alike: measured 0 over 400 draws; 2 eps allows another summation order
    assert bool(((Q[..., 0] - unit_re).abs() <= 2 * EPS).all()), (Q[..., 0] - unit_re).abs().amax(-1)
    assert bool((Q[~plane][..., 1] == 0).all()), "a second column where Im u lies on the line of Re u"
    gram = Q.transpose(1, 2) @ Q
    expected = torch.diag_embed(torch.stack([torch.ones(len(elements), dtype=F64), plane.to(F64)], dim=-1))
    # two Gram-Schmidt passes leave the pair orthonormal to a few eps: measured <= 2 eps over 400 draws
    assert bool(((gram - expected).abs() <= 8 * EPS).all()), (gram - expected).abs().amax((-2, -1))
    outside = u.imag - (Q @ (Q.transpose(1, 2) @ u.imag[..., None])).squeeze(-1)
    leave = torch.linalg.vector_norm(outside, dim=-1)
    # Im u lies in the span to rounding (measured <= 2.8 eps |Im u| over 400 draws), or on Re u's line by construction
    assert bool((leave <= 8 * EPS * torch.linalg.vector_norm(u.imag, dim=-1)).all()), leave


def test_real_basis_of_a_rotations_eigenvector_is_its_plane() -> None:
    """u = e1 + i e2 (a 2 x 2 rotation's eigenvector, unnormalised): Re u and Im u are already orthonormal, and
    real_basis returns them exactly (Im u's projection off Re u has norm exactly 1)."""
    u = torch.tensor([[1.0, 1j, 0.0]], dtype=C128)
    assert torch.equal(real_basis(u), torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]], dtype=F64))


# --- krylov_schur over the whole space ----------------------------------------------------------------------------


@given(n=st.integers(2, 8), batch=st.integers(1, 3), seed=SEEDS, symmetric=st.booleans())
def test_a_run_over_the_whole_space_costs_n_products_and_its_residual(
    n: int, batch: int, seed: int, symmetric: bool
) -> None:
    """With m = n the run spans the space in n products and stops there; the residual of u = Re u + i Im u costs
    one more product, two when some element's dominant eigenvalue is complex (then its Im u is not 0). The Ritz
    matrix H is then A in an orthonormal basis, so tol = rtol ||H||_F = rtol ||A||_F."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(batch, n, n, generator=g, dtype=F64)
    if symmetric:
        M = M + M.transpose(1, 2)
    start = torch.randn(batch, n, generator=g, dtype=F64)
    pair = krylov_schur(matvec(M), start, n, 3, RTOL, g)
    values = torch.linalg.eigvals(M)  # not numpy's geev, which the library uses
    top = values.gather(-1, values.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    complex_top = bool((top.imag.abs() > 1e-8 * top.abs()).any())  # a real eigenvalue's imag is 0 exactly
    assert pair.applications == n + (2 if complex_top else 1), (pair.applications, n, top)
    frobenius = torch.linalg.matrix_norm(M, "fro")
    # ||H||_F of an orthogonal change of basis rounds by ~n eps: measured <= 0.65 n eps relative over 150 draws
    assert bool(((pair.tol - RTOL * frobenius).abs() <= 4 * n * EPS * RTOL * frobenius).all()), (pair.tol, frobenius)


@given(n=st.integers(3, 8), batch=st.integers(1, 3), seed=SEEDS)
def test_a_run_over_the_whole_space_finds_an_eigenvalue_its_start_is_blind_to(n: int, batch: int, seed: int) -> None:
    """A = diag(B, lambda) with lambda = +-1 dominant (B scaled to spectral radius 0.9) and a start whose last entry
    is 0: every Krylov vector keeps that 0 exactly, the space breaks down one step before it is spanned (j = n - 2),
    and the run, with m = n, must continue from a fresh direction and find lambda; not stop on B's eigenvalues,
    nor continue from the rounding left of the broken-down vector, which also has a last entry of 0."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(batch, n - 1, n - 1, generator=g, dtype=F64)
    B = 0.9 * B / torch.linalg.eigvals(B).abs().amax(dim=-1)[:, None, None]
    lam = torch.where(torch.rand(batch, generator=g, dtype=F64) < 0.5, -1.0, 1.0)
    M = torch.zeros(batch, n, n, dtype=F64)
    M[:, :-1, :-1] = B
    M[:, -1, -1] = lam
    start = torch.randn(batch, n, generator=g, dtype=F64)
    start[:, -1] = 0
    pair = krylov_schur(matvec(M), start, n, 3, RTOL, g)
    # a 1 x 1 diagonal block, reached by a fresh direction that is e_n to rounding: measured 0 over 150 draws
    assert bool(((pair.value - lam).abs() <= 8 * EPS).all()), (pair.value, lam)
    assert bool(pair.converged.all()), pair.residual


@example(n=8, batch=1, seed=2, full=True)  # m = n: the last step breaks down, with nothing left to draw for
@given(n=st.integers(MIN_KRYLOV + 2, 10), batch=st.integers(1, 3), seed=SEEDS, full=st.booleans())
def test_the_generator_is_drawn_from_only_for_a_direction_that_broke_down(
    n: int, batch: int, seed: int, full: bool
) -> None:
    """On a dense operator no Krylov space becomes invariant before it spans the whole space, so krylov_schur
    draws no fresh direction: the caller's generator is left as it was (the deflated check's start, drawn from it
    next, is then where the caller expects it). Also with m = n, whose last step always breaks down (what is left
    of A v after projecting out a basis of the whole space is rounding): the space is spanned, nothing to draw for."""
    M = operator(n, batch, seed)
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, n, generator=g, dtype=F64)
    state = g.get_state()
    m = n if full else MIN_KRYLOV + seed % 2
    krylov_schur(matvec(M), start, m, 20, RTOL, g)
    assert torch.equal(g.get_state(), state), "krylov_schur drew from the generator without a breakdown"


@given(n=st.integers(MIN_KRYLOV + 2, 10), seed=SEEDS, krylov_dim=st.integers(MIN_KRYLOV, 5))
def test_an_element_scaled_by_a_power_of_two_runs_as_it_would_alone(n: int, seed: int, krylov_dim: int) -> None:
    """A batch [2^-70 M, M] from one start: every test the run makes is relative to its own element (the breakdown
    test beta > n eps ||w||, the stop at rtol ||H||_F), so the tiny element runs the same steps as the other, scaled
    exactly, and the batch stops when M alone would: the same eigenvalue times 2^-70, the same unit vector up to
    its phase, and as many products as M alone takes."""
    m = min(krylov_dim, n)
    M = operator(n, 1, seed)
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(1, n, generator=g, dtype=F64)
    scale = 2.0**-70
    pair = krylov_schur(matvec(torch.cat([scale * M, M])), start.expand(2, n), m, 20, RTOL, g)
    alone = krylov_schur(matvec(M), start, m, 20, RTOL, torch.Generator().manual_seed(seed))
    assert pair.applications == alone.applications, (pair.applications, alone.applications)
    assert pair.converged.tolist() == [True, True], pair.residual
    # scaling by 2^-70 is exact, but geev on the scaled block may round differently: measured <= 5.4 eps (150 draws)
    assert abs(complex(pair.value[0]) / scale - complex(pair.value[1])) <= 16 * EPS * abs(complex(pair.value[1]))
    overlap = (pair.vector[0].conj() * pair.vector[1]).sum().abs()
    assert abs(float(overlap) - 1) <= 8 * EPS, overlap  # unit vectors equal up to a sign: measured <= 2 eps


# --- checked_dominant: the check and the rerun are judged on A's scale -------------------------------------------


def hidden_low_rank(seed: int, batch: int, n: int, rest: list[float]) -> Tensor:
    """[B, n, n] symmetric: eigenvalue 1 on a unit u orthogonal to checked_dominant's start (the first draw of a
    generator seeded with ``seed``), the eigenvalues ``rest`` on orthonormal directions that the start sees, 0 on
    the others. The start's Krylov space is invariant after len(rest) + 1 vectors and holds only ``rest``."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, n, generator=g, dtype=F64)
    R = torch.randn(batch, n, n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    R[:, :, 0] = start
    Q, _ = torch.linalg.qr(R)  # column 0 along the start, the others orthogonal to it
    u = Q[:, :, 1]
    W, _ = torch.linalg.qr(Q[:, :, :1] + Q[:, :, 2 : 2 + len(rest)])  # orthonormal, orthogonal to u, seen by start
    M = u[:, :, None] * u[:, None, :]
    for k, value in enumerate(rest):
        M = M + value * W[:, :, k, None] * W[:, None, :, k]
    return M


@given(seed=SEEDS, batch=st.integers(1, 2), n=st.integers(MIN_KRYLOV + 4, 10))
def test_the_rerun_after_a_check_keeps_the_first_runs_scale(seed: int, batch: int, n: int) -> None:
    """The main run sees only 0.9, 0.8, 0.7 (its space is invariant after 4 vectors) and returns 0.9; the check
    finds 1, and the main iteration reruns from that direction, where its own space is invariant at once (||H||_F
    = 1). The rerun is judged on the largest scale seen, the first run's: tol = rtol sqrt(0.9^2 + 0.8^2 + 0.7^2)
    (||A||_F on an invariant subspace, in closed form), not rtol * 1. Its breakdown draws its fresh direction from
    the estimate's generator, never from torch's global stream."""
    rest = [0.9, 0.8, 0.7]
    M = hidden_low_rank(seed, batch, n, rest)
    torch.manual_seed(seed)
    state = torch.get_rng_state()
    found = checked_dominant(matvec(M), batch, n, F64, CPU, MIN_KRYLOV, 50, RTOL, torch.Generator().manual_seed(seed))
    assert torch.equal(torch.get_rng_state(), state), "the rerun drew from torch's global random stream"
    # symmetric, eigenvalue 1 isolated by 0.1: found to rounding; measured <= 3.5 eps over 50 draws
    assert bool(((found.pair.value - 1).abs() <= 16 * EPS).all()), found.pair.value
    assert bool(found.confirmed.all()), found.second
    seen = math.sqrt(sum(value * value for value in rest))
    # ||H||_F of a 4 x 4 Rayleigh quotient in an orthonormal basis rounds by a few eps: measured <= 3 eps relative
    assert bool(((found.pair.tol / (RTOL * seen) - 1).abs() <= 16 * EPS).all()), found.pair.tol / (RTOL * seen)


@given(seed=SEEDS, batch=st.integers(1, 3), n=st.integers(MIN_KRYLOV + 3, 10), krylov_dim=st.integers(MIN_KRYLOV, 5))
def test_a_check_with_nothing_left_above_the_tolerance_stops_at_once(
    seed: int, batch: int, n: int, krylov_dim: int
) -> None:
    """A = O diag(1, 1e-12 S) O^T (S symmetric, ||S||_2 = 1): once the eigenvalue 1 is deflated, what is left is
    1e-12, below rtol ||A|| = 1e-10. The check is judged on A's scale (the main run's, passed on), so its first
    Ritz value is converged and it stops: one product and its residual's one. Judged on its own scale (1e-12), it
    would refine that remainder for several restarts. The main run is repeated here from checked_dominant's start
    (its generator's first draw) to count its own products."""
    g = torch.Generator().manual_seed(seed + 1)
    S = torch.randn(batch, n - 1, n - 1, generator=g, dtype=F64)
    S = S + S.transpose(1, 2)
    D = torch.zeros(batch, n, n, dtype=F64)
    D[:, 0, 0] = 1.0
    D[:, 1:, 1:] = 1e-12 * S / torch.linalg.matrix_norm(S, 2)[:, None, None]
    O, _ = torch.linalg.qr(torch.randn(batch, n, n, generator=g, dtype=F64))
    M = O @ D @ O.transpose(1, 2)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(batch, n, generator=generator, dtype=F64)
    main = krylov_schur(matvec(M), start, krylov_dim, 50, RTOL, generator)
    calls = [0]
    found = checked_dominant(
        matvec(M, calls), batch, n, F64, CPU, krylov_dim, 50, RTOL, torch.Generator().manual_seed(seed)
    )
    assert found.applications == calls[0] == main.applications + 2, (found.applications, main.applications)
    assert bool(found.confirmed.all()), (found.pair.value, found.second)
    assert bool((found.second <= 2e-12).all()), found.second  # a Ritz value of the 1e-12 remainder (+ its leak)
