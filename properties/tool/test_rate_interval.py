"""The rate interval of iqa.analysis.linearization, written out again from its module docstring with numpy, on
iterations built here: y_{t+1} = y* + J (y_t - y*) + a quadratic term, so that every part of the interval (the
window, the remainders nu_t, the pairwise bounds and their weighted means, the fitted rate) has work to do.

The soundness of the interval on the layers' own iterations is test_analysis.py's
``test_picard_follows_its_linearization``; this checks that it is the interval the docstring derives.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import event, given, note
from hypothesis import strategies as st

from iqa.analysis.linearization import MAX_WINDOW, SIGNAL_TO_NOISE, _interval
from iqa.analysis.rates import MIN_POINTS

F64 = torch.float64
EPS = float(torch.finfo(F64).eps)


def reference_interval(ys: list[np.ndarray], J: np.ndarray, H: float, eps_f: float, eps: float, N: int):
    """(start, end, rate, lower, upper, rho, worst_ratio, worst_remainder_ratio), or None: the docstring's; and
    the largest share of a remainder bound nu_t that is J d_t's rounding."""
    rows = lambda t: float(np.linalg.norm(t, axis=-1).max())  # noqa: E731  (the 2,inf norm of a [K, D] array)
    n = J.shape[0]
    dY = [ys[t + 1] - ys[t] for t in range(len(ys) - 1)]
    r = [float(np.linalg.norm(t)) for t in dY]
    noise = 2 * math.sqrt(N) * eps_f
    usable = [t for t in range(len(dY) - 1) if r[t] > SIGNAL_TO_NOISE * noise]
    if not usable:
        return None
    end = max(usable)
    length = min(max(MIN_POINTS, end // 2), MAX_WINDOW)
    start = end - length
    if start < 0:
        return None
    J_fro = float(np.linalg.norm(J))
    nu, remainder, share = [], 0.0, 0.0
    for t in range(start, end):
        dist = max(rows(ys[t] - ys[-1]), rows(ys[t + 1] - ys[-1]))
        bound = math.sqrt(N) * (H * dist * rows(dY[t]) + 2 * eps_f) + n * eps * J_fro * r[t]
        measured = float(np.linalg.norm(dY[t + 1].reshape(-1) - J @ dY[t].reshape(-1)))
        remainder = max(remainder, measured / bound)
        share = max(share, n * eps * J_fro * r[t] / bound)  # the rounding part of nu_t, as a share
        nu.append(bound)
    values, left = np.linalg.eig(J.T)
    top = int(np.abs(values).argmax())
    rho = float(abs(values[top]))
    v = left[:, top] / np.linalg.norm(left[:, top])
    power = [float(np.linalg.norm(np.linalg.matrix_power(J, k), 2)) for k in range(length + 1)]
    worst = weights = up = low = 0.0
    finite = True
    for s in range(start, end + 1):
        for t in range(s + 1, end + 1):
            k = t - s
            upper = power[k] * r[s] + sum(power[t - 1 - j] * nu[j - start] for j in range(s, t))
            lower = abs(v @ dY[s].reshape(-1)) * rho**k - sum(rho ** (t - 1 - j) * nu[j - start] for j in range(s, t))
            worst = max(worst, r[t] / upper, lower / r[t])
            weights += k * k
            up += k * math.log(upper / r[s])
            if lower > 0:
                low += k * math.log(lower / r[s])
            else:
                finite = False
    window = np.arange(start, end + 1, dtype=np.float64)
    rate = math.exp(np.polyfit(window, np.log(r[start : end + 1]), 1)[0])
    lower_mean = math.exp(low / weights) if finite else 0.0
    return start, end, rate, lower_mean, math.exp(up / weights), rho, worst, remainder, share


@given(
    tokens=st.integers(1, 3),
    dim=st.integers(1, 3),
    steps=st.integers(6, 60),
    rho=st.floats(0.2, 0.95),
    quadratic=st.sampled_from([0.0, 0.05, 0.5]),
    eps_f=st.sampled_from([0.0, 1e-14, 1e-9]),
    seed=st.integers(0, 2**31 - 1),
)
def test_interval_is_the_documented_one(tokens, dim, steps, rho, quadratic, eps_f, seed) -> None:
    rng = np.random.default_rng(seed)
    n = tokens * dim
    J = rng.normal(size=(n, n))
    J *= rho / np.abs(np.linalg.eigvals(J)).max()
    y_star = rng.normal(size=(tokens, dim))
    ys = [y_star + 0.1 * rng.normal(size=(tokens, dim))]  # close enough for the quadratic term to stay small
    for _ in range(steps):
        e = (ys[-1] - y_star).reshape(-1)
        ys.append(y_star + (J @ e + quadratic * e * e).reshape(tokens, dim))
    H = float(rng.uniform(0.0, 3.0))
    expected = reference_interval(ys, J, H, eps_f, EPS, tokens)
    got = _interval([torch.from_numpy(y) for y in ys], torch.from_numpy(J), H, eps_f, EPS, tokens)
    note(f"expected {expected}, got {got}")
    event("no window above the noise" if expected is None else "an interval")
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.start, got.end) == expected[:2]
    # the same sums in another order (numpy here, torch there): a few eps relative per term, over <= 40^2 terms;
    # the measured remainder ||d_(t+1) - J d_t|| differs by up to 2 n eps ||J||_F r_t between the two, which is
    # twice the rounding share of nu_t in the ratio (it is all rounding when the iteration is linear)
    share = expected[8]
    for name, value, reference, floor in zip(
        ("rate", "lower", "upper", "rho", "worst_ratio", "worst_remainder_ratio"), [got.rate, got.lower, got.upper,
        got.rho, got.worst_ratio, got.worst_remainder_ratio], expected[2:8], [0.0] * 5 + [2 * share]
    ):  # fmt: skip
        assert math.isclose(value, reference, rel_tol=1e-9, abs_tol=floor), (name, value, reference)


def test_no_interval_without_a_window_above_the_noise() -> None:
    """Fewer usable differences than MIN_POINTS, or none above SIGNAL_TO_NOISE times the noise: None."""
    J = np.array([[0.5]])
    ys = [np.array([[0.5**t]]) for t in range(12)]
    args = (torch.from_numpy(J), 0.0, 0.0, EPS, 1)
    # the last difference has no successor: 5 differences end the window at 3, 3 - MIN_POINTS < 0
    assert _interval([torch.from_numpy(y) for y in ys[: MIN_POINTS + 2]], *args) is None
    assert _interval([torch.from_numpy(y) for y in ys[: MIN_POINTS + 3]], *args) is not None  # end 4: start 0
    noisy = (torch.from_numpy(J), 0.0, 1.0, EPS, 1)  # eps_f = 1: every difference is below 1e3 x the noise
    assert _interval([torch.from_numpy(y) for y in ys], *noisy) is None
