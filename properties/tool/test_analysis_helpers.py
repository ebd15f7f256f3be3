"""Meta tests of iqa.analysis and properties.regimes: the helpers against exact answers.

Every helper is run where the answer is known by construction: linear maps with
chosen singular values and eigenvalues (negative and complex dominant ones
included), residual histories that are sums of geometric sequences, float32
evaluations checked against float64 ones for the rounding bounds, and regimes
built to order.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import event, given, note, target
from hypothesis import strategies as st
from torch import Tensor

from iqa import analysis, solve
from iqa.analysis.krylov import MIN_KRYLOV
from iqa.analysis.rounding import jacobian_rounding, map_rounding
from iqa.analysis.spectral import eig_blocks
from iqa.solvers import Status
from properties import regimes
from properties.strategies import ANY_SCALE, Case, cases

SEEDS = st.integers(0, 2**31 - 1)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_map(M: Tensor, shape: tuple[int, ...]):
    """y -> M_b y_b (flattened) for each batch element b: its Jacobian is M."""

    def f(y: Tensor) -> Tensor:
        return (M @ y.reshape(y.shape[0], -1, 1)).reshape(y.shape)

    return f


def orthogonal(n: int, g: torch.Generator) -> Tensor:
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q * torch.sign(torch.diagonal(R))


@given(seed=SEEDS, batch=st.integers(1, 3), tokens=st.integers(1, 4), dim=st.integers(1, 4))
def test_jacobian_jvp_vjp_of_linear_map(seed: int, batch: int, tokens: int, dim: int) -> None:
    n = tokens * dim
    g = generator(seed)
    M = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    y = torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64)
    f = linear_map(M, y.shape)
    # a jvp of y -> M y with a unit vector selects a column of M: no rounding at all
    assert torch.equal(analysis.jacobian(f, y), M)
    u, v = torch.randn(2, batch, tokens, dim, generator=g, dtype=torch.float64)
    Jv, JTu = analysis.jvp(f, y, v), analysis.vjp(f, y, u)
    lhs, rhs = (u * Jv).sum(dim=(1, 2)), (JTu * v).sum(dim=(1, 2))
    # <u, M v> and <M^T u, v> are two orders of n^2 products: each within n^2 eps sum|u||M||v| of the truth
    scale = torch.einsum("bi,bij,bj->b", u.reshape(batch, n).abs(), M.abs(), v.reshape(batch, n).abs())
    assert bool(((lhs - rhs).abs() <= 2 * n * n * torch.finfo(torch.float64).eps * scale).all())
    with pytest.raises(ValueError, match="direction v must have y's shape"):
        analysis.jvp(f, y, v[None])


@given(seed=SEEDS, n=st.integers(2, 12), gap=st.floats(0.05, 0.9), top=st.floats(1e-3, 1e3))
def test_jacobian_norm_power_and_dense(seed: int, n: int, gap: float, top: float) -> None:
    """M = U diag(s) V^T with s_1 = top and s_2 = gap * top: power iteration stops when its estimate
    changes by <= rtol; its error then shrinks by q = gap^2 per step, so it is within rtol / (1 - q)."""
    g = generator(seed)
    s = torch.cat([torch.tensor([1.0, gap]), gap * torch.rand(n - 2, generator=g, dtype=torch.float64)]) * top
    M = (orthogonal(n, g) @ torch.diag(s) @ orthogonal(n, g).T)[None]
    y = torch.zeros(1, n, 1, dtype=torch.float64)
    f = linear_map(M, y.shape)
    eps = torch.finfo(torch.float64).eps
    dense = float(analysis.jacobian_norm(f, y, "dense"))
    assert abs(dense - top) <= 4 * n * eps * top  # SVD backward stable; M itself carries n eps ||M|| from its product
    rtol = 1e-10
    power = float(analysis.jacobian_norm(f, y, "power", rtol=rtol, max_iter=10_000))
    note(f"s_1 {top}, dense {dense}, power {power}")
    assert power <= top * (1 + 4 * n * eps)  # a Rayleigh quotient never exceeds s_1
    assert power >= top * (1 - rtol / (1 - gap**2) - 4 * n * eps)


@st.composite
def spectra(draw: st.DrawFn) -> tuple[Tensor, Tensor, str, float]:
    """(M, its eigenvector matrix S, the dominant kind, rho): M = S blockdiag(Lambda) S^-1 with a dominant
    eigenvalue -rho, +rho, or the pair rho e^{+-i phi}, every other eigenvalue of modulus <= ratio rho."""
    n = draw(st.integers(3, 10), label="n")
    kind = draw(st.sampled_from(["negative", "complex", "positive"]), label="dominant kind")
    rho = draw(st.floats(1e-3, 10.0), label="rho")
    ratio = draw(st.floats(0.05, 0.95), label="second modulus / rho")
    condition = draw(st.floats(1.0, 100.0), label="cond(S)")
    g = generator(draw(SEEDS, label="seed"))
    blocks = torch.zeros(n, n, dtype=torch.float64)
    if kind == "complex":
        phi = draw(st.floats(0.1, math.pi - 0.1), label="phi")
        blocks[:2, :2] = rho * torch.tensor(
            [[math.cos(phi), -math.sin(phi)], [math.sin(phi), math.cos(phi)]], dtype=torch.float64
        )
        start = 2
    else:
        blocks[0, 0] = -rho if kind == "negative" else rho
        start = 1
    rest = (2 * torch.rand(n - start, generator=g, dtype=torch.float64) - 1) * ratio * rho
    blocks[start:, start:] = torch.diag(rest)
    singular = torch.logspace(0, math.log10(condition), n, dtype=torch.float64)
    S = orthogonal(n, g) @ torch.diag(singular) @ orthogonal(n, g).T
    return S @ blocks @ torch.linalg.inv(S), S, kind, rho


@given(spec=spectra(), krylov_fraction=st.sampled_from([1.0, 0.5]))
def test_spectral_radius_of_constructed_spectra(
    spec: tuple[Tensor, Tensor, str, float], krylov_fraction: float
) -> None:
    """Dense and Arnoldi find rho of M for negative, complex and positive dominant eigenvalues.

    Bauer-Fike: an eigenvalue of M + E lies within cond(S') ||E|| of one of M's, with S' the
    eigenvector matrix of M (the real 2 x 2 rotation block is normal, so cond(S') = cond(S));
    each method's dominant value is an exact eigenvalue of M + E with ||E|| = its residual, plus
    the rounding of the computed residual and of M = S Lambda S^-1 itself."""
    M, S, kind, rho = spec
    event(f"dominant eigenvalue {kind}")
    n = M.shape[0]
    y = torch.zeros(1, n, 1, dtype=torch.float64)
    f = linear_map(M[None], y.shape)
    eps = torch.finfo(torch.float64).eps
    cond = float(torch.linalg.cond(S))
    norm_M = float(torch.linalg.matrix_norm(M, 2))
    rounding = 4 * n * eps * (norm_M + rho) + 4 * n * eps * cond * float(
        torch.linalg.matrix_norm(torch.linalg.inv(S) @ M @ S, 2)
    )
    # Krylov dimension n: one cycle spans everything; n / 2: the restarts must find the dominant eigenvalue
    # (at least MIN_KRYLOV: smaller restarted spaces are refused, they could lock onto a smaller eigenvalue)
    krylov_dim = max(MIN_KRYLOV, int(krylov_fraction * n))
    for method in ("dense", "arnoldi"):
        result = analysis.spectrum(f, y, method, krylov_dim=krylov_dim)
        if not bool(result.converged.all()):
            assert method == "arnoldi" and krylov_dim < n, f"{method} did not converge"
            event("arnoldi with restarts: not converged in max_restarts (reported, not asserted)")
            continue
        theta = complex(result.eigenvalue[0])
        tolerance = cond * (float(result.residual[0]) + rounding)
        note(f"{method}: theta {theta}, rho {rho}, tolerance {tolerance:.3e}")
        assert abs(float(result.rho[0]) - rho) <= tolerance, f"{method}: rho {float(result.rho[0])} != {rho}"
        if kind == "negative":
            assert theta.real < 0 and abs(theta.imag) <= tolerance
        elif kind == "complex":
            assert abs(theta.imag) > tolerance, f"{method} lost the imaginary part: {theta}"


def test_spectrum_survives_subnormal_entries() -> None:
    """Saturated attention gives Jacobian entries 1e-200 apart; eig must not fail there."""
    J = torch.tensor(
        [[[3.9e-209, -9.7e-209, 0.0], [0.0, 9.7e-35, 3.1e-35], [0.0, 2.4e-35, 7.7e-36]]], dtype=torch.float64
    )
    values, _ = eig_blocks(J)
    block = J[0, 1:, 1:]  # J is block upper triangular: its dominant eigenvalue is this block's
    block_values, vectors = torch.linalg.eig(block)
    expected = float(block_values.abs().max())
    n, eps = J.shape[-1], torch.finfo(torch.float64).eps
    # Both eigensolvers are backward stable (||E|| <= n eps ||block||_2): each |lambda| within cond(V) of that.
    rel_tol = 2 * n * eps * float(torch.linalg.cond(vectors)) * float(torch.linalg.matrix_norm(block, 2)) / expected
    assert math.isclose(float(values.abs().max()), expected, rel_tol=rel_tol)


def fit_rounding(r: Tensor, relative: float, rate: float) -> float:
    """A bound on the relative rounding of empirical_rate(r, tail=1.0) = exp(slope), for r_t each within
    ``relative`` of its exact value: log r_t is then off by relative + eps |log r_t| (log's own rounding), the
    centring adds eps |log r_t - mean|, and a least-squares slope moves by at most sum|t - mean| / sum (t - mean)^2
    times the largest of those; its products and sums add (m + 2) eps |slope|, exp one more eps."""
    eps = torch.finfo(torch.float64).eps
    logs = r.log()
    t = torch.arange(r.numel(), dtype=torch.float64)
    leverage = float((t - t.mean()).abs().sum() / ((t - t.mean()) ** 2).sum())
    per_point = float((relative + eps * logs.abs() + eps * (logs - logs.mean()).abs()).max())
    return leverage * per_point + (r.numel() + 2) * eps * abs(math.log(rate)) + eps


@given(
    q=st.floats(0.01, 0.99),
    ratio=st.floats(0.0, 0.99),
    weights=st.tuples(st.floats(1e-3, 1e3), st.floats(0.0, 1e3)),
    length=st.integers(4, 60),
)
def test_empirical_rate_of_geometric_sums(q: float, ratio: float, weights: tuple[float, float], length: int) -> None:
    """r_t = c1 q^t + c2 (ratio q)^t: log r_t is convex with slopes between log(ratio q) and log q, so the
    least-squares slope (a weighted mean of pairwise slopes) gives a rate in [ratio q, q]."""
    c1, c2 = weights
    t = torch.arange(length, dtype=torch.float64)
    r = c1 * q**t + c2 * (ratio * q) ** t  # > 0: c1 q^t >= 1e-3 x 0.01^59, far above the smallest float64
    rate = float(analysis.empirical_rate(r, tail=1.0))
    lower = ratio * q if c2 > 0 else q
    # r_t carries the rounding of two powers, two products and a sum: within 4 eps of c1 q^t + c2 (ratio q)^t.
    slack = fit_rounding(r, 4 * torch.finfo(torch.float64).eps, rate)
    note(f"rate {rate}, interval [{lower}, {q}], slack {slack:.2e}")
    assert lower * (1 - slack) <= rate <= q * (1 + slack)


def test_empirical_rate_edges() -> None:
    eps = torch.finfo(torch.float64).eps
    r = torch.tensor([1.0, 0.5, 0.25, 0.125, 0.0625, 7.0, 7.0], dtype=torch.float64)
    history = torch.stack([r, r], dim=1)
    rates = analysis.empirical_rate(history, steps=[5, 3], tail=1.0)
    # the frozen rows past steps[0] are ignored: the fit of 2^-t (exact in binary) up to the rounding of the fit
    assert math.isclose(float(rates[0]), 0.5, rel_tol=fit_rounding(r[:5], 0.0, 0.5))
    assert math.isnan(float(rates[1]))  # 3 points: too little tail
    decades = torch.tensor([1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-17, 1e-17], dtype=torch.float64)
    floored = analysis.empirical_rate(decades, floor=1e-15, tail=1.0)
    # rounding-level residuals end the history; 10^-t is stored to eps / 2, then the fit of those five rounds
    assert math.isclose(float(floored), 0.1, rel_tol=fit_rounding(decades[:5], eps / 2, 0.1))
    with pytest.raises(ValueError, match="tail"):
        analysis.empirical_rate(r, tail=0.0)
    with pytest.raises(ValueError, match="steps"):
        analysis.empirical_rate(history, steps=[9, 9])


@given(case=cases(scales=ANY_SCALE))
def test_consensus_helpers(case: Case) -> None:
    x = case.inputs()
    point = analysis.consensus_point(x)
    assert torch.equal(analysis.consensus_distance(point, x), torch.zeros(case.batch, dtype=case.dtype))
    y = torch.randn(x.shape, generator=case.generator(5), dtype=torch.float64).to(case.dtype)
    expected = torch.linalg.vector_norm((y - x.mean(dim=1, keepdim=True)).reshape(case.batch, -1), dim=-1)
    assert torch.equal(analysis.consensus_distance(y, x), expected)


def test_consensus_refuses_maps_without_a_consensus_point() -> None:
    from iqa.variants import resolve

    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=generator(0))
    with pytest.raises(ValueError, match="does not fix"):
        analysis.consensus_radius(resolve("positional").make(3, scale=1.0), x)
    with pytest.raises(TypeError, match="Y A\\^T"):
        analysis.consensus_radius(resolve("hopfield").make(3, scale=1.0), x)


@given(case=cases(dtypes=(torch.float32,), scales=ANY_SCALE), data=st.data())
def test_rounding_bounds_hold_against_float64(case: Case, data: st.DataObject) -> None:
    """map_rounding and jacobian_rounding of a float32 layer bound its distance to the same layer in
    float64 (same float32 weights and inputs, exactly representable), whose own rounding is 2^-29 smaller."""
    from iqa.variants import resolve

    variant = resolve(data.draw(st.sampled_from(["reference", "hopfield", "positional", "injection", "damped"])))
    layer = case.layer(variant)
    wide = case.layer(variant)
    wide.load_state_dict(layer.state_dict())
    wide = wide.to(torch.float64)
    x = case.inputs()
    mixing = torch.softmax(3 * torch.randn(case.tokens, case.tokens, generator=case.generator(9)), dim=-1)
    y = mixing @ x
    with torch.no_grad():
        f_error = analysis.token_norm(
            layer.fixed_point_map(x)(y) - wide.fixed_point_map(x.double())(y.double()), "rows"
        )
    bound = map_rounding(layer, x, y)
    target(float((f_error / bound).max()), label="f rounding / map_rounding")
    assert bool((f_error <= bound).all()), f"f rounding {f_error.tolist()} > bound {bound.tolist()}"
    J32 = analysis.jacobian(layer.fixed_point_map(x), y).double()
    J64 = analysis.jacobian(wide.fixed_point_map(x.double()), y.double())
    J_error = torch.linalg.matrix_norm(J32 - J64, 2)
    J_bound = jacobian_rounding(layer, x, y)
    target(float((J_error / J_bound).max()), label="J rounding / jacobian_rounding")
    assert bool((J_error <= J_bound).all()), f"J rounding {J_error.tolist()} > bound {J_bound.tolist()}"


@given(case=cases(scales=ANY_SCALE))
def test_classify_follows_its_order(case: Case) -> None:
    """contractive (a certificate < 1) before cycling (a CYCLE status) before saturated before multistable."""
    from iqa.variants import resolve

    layer = case.layer(resolve("reference"))
    x = case.inputs()
    with torch.no_grad():
        solution = solve(layer.fixed_point_map(x), x, tol=1e-6, max_iter=50)
    best = regimes.best_certificate(layer, x)
    cycling = dataclasses.replace(solution, statuses=(Status.CYCLE,) * case.batch)
    converged = dataclasses.replace(solution, statuses=(Status.CONVERGED,) * case.batch)
    saturated = bool((analysis.saturation_gap(layer.fixed_point_map(x), solution.y) <= regimes.SATURATION_GAP).all())
    if bool((best < 1).all()):
        assert regimes.classify(layer, x, cycling) == "contractive"
    else:
        assert regimes.classify(layer, x, cycling) == "cycling"
        assert regimes.classify(layer, x, converged) == ("saturated" if saturated else "multistable")
    assert regimes.observe(layer, x, solution) == regimes.classify(layer, x, solution)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eig_blocks_solves_in_float64_and_answers_in_the_input_precision(dtype: torch.dtype) -> None:
    """[[1, 1], [d, 1]] has eigenvalues 1 +- sqrt(d), each moving by ~e / sqrt(d) when an entry moves by e. With
    d = 1e-6 stored in the input's dtype, an eigensolver run in float32 would be off by ~eps32 / (2 sqrt d)
    ~ 3e-5; eig_blocks's geev runs in float64 (off by ~eps64 / sqrt d; numpy computes in double even for a
    float32 array) and its answer is rounded once to the input's complex dtype: within 2 eps of that dtype of
    1 +- sqrt(d) (d as stored), complex64 for float32 input and complex128 for float64."""
    d = torch.tensor(1e-6, dtype=dtype)
    J = torch.tensor([[1.0, 1.0], [0.0, 1.0]], dtype=dtype)
    J[1, 0] = d
    values, vectors = eig_blocks(J[None])
    complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    assert values.dtype == complex_dtype and vectors.dtype == complex_dtype
    split = math.sqrt(float(d))
    expected = sorted([1 - split, 1 + split])
    got = sorted(complex(v).real for v in values[0])
    eps = torch.finfo(dtype).eps
    assert all(abs(g - e) <= 2 * eps + 1e3 * torch.finfo(torch.float64).eps for g, e in zip(got, expected)), got
    assert max(abs(complex(v).imag) for v in values[0]) <= 2 * eps


def test_eig_blocks_names_a_failure_of_the_eigensolver() -> None:
    """numpy's geev refuses NaN: eig_blocks raises ValueError saying the eigenvalue solver failed on a block."""
    with pytest.raises(ValueError, match="the eigenvalue solver failed on a Jacobian block"):
        eig_blocks(torch.tensor([[[1.0, float("nan")], [0.0, 1.0]]], dtype=torch.float64))
