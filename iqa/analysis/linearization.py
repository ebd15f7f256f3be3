"""How closely an observed Picard iteration follows its linearization at the fixed point.

Picard differences d_t = y_{t+1} - y_t (the residual vectors) obey
d_{t+1} = f(y_{t+1}) - f(y_t) = J d_t + nu_t with J = J(y*) (taken at the last
iterate) and, by Taylor, ||nu_t|| <= H max(||y_t - y*||, ||y_{t+1} - y*||) ||d_t||
where H bounds the second derivative of f. For f_i = sum_j p_ij v_j with
p_i = softmax(s_i), the Hessian of sum_j p_j v_j in the scores is bounded by
3 diam(V) (half the range of the score change)^2, and a change dY moves the
scores of row i by a range of at most 2 max_j ||a_j|| ||dY||_(2,inf), so per row

    H = 3 a diam(V) max_j ||a_j||^2      (a = the relaxation, 1 if none)

(summed over heads for a multi-head map, each with its own A_h and U_h)

(+ rounding: 2 eps_f for the two evaluations, n eps ||J||_F ||d_t|| for J d_t).
Unrolling, for s < t and v the unit left eigenvector of the dominant eigenvalue
mu (|mu| = rho), v^T J = mu v^T:

    ||d_t|| <= ||J^(t-s)||_2 ||d_s|| + sum_{j=s}^{t-1} ||J^(t-1-j)||_2 nu_j
    ||d_t|| >= |v^T d_s| rho^(t-s) - sum_{j=s}^{t-1} rho^(t-1-j) nu_j

The least-squares slope of log ||d_t|| (what :func:`empirical_rate` fits) is a
weighted mean of the pairwise slopes with weights (t - s)^2, so it lies
between the same means of the pairwise bounds: an interval that shrinks to
rho as the window grows (Gelfand: ||J^k||^(1/k) -> rho). A map that is not the
one whose Jacobian was analysed, or a solver that does not iterate f, leaves it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from iqa.analysis.certificates import (
    diameter,
    head_sum,
    head_terms,
    max_row_norm,
    relaxation,
    supports_certificates,
)
from iqa.analysis.jacobian import jacobian
from iqa.analysis.rates import MIN_POINTS, empirical_rate
from iqa.analysis.rounding import map_rounding
from iqa.analysis.spectral import eig_blocks
from iqa.layer import FixedPointLayer

#: The fitted window ends where ||d_t|| is still this many times above its rounding floor.
SIGNAL_TO_NOISE = 1e3
#: At most this many differences are fitted (the bounds cost O(window^3)).
MAX_WINDOW = 40


def second_order_constant(layer: FixedPointLayer, x: Tensor) -> Tensor:
    """H per batch element: ||f(y + d) - f(y) - J(y) d||_row <= H/2 ||d||^2_(2,inf) and J is H-Lipschitz, [B]."""
    if not supports_certificates(layer):
        raise TypeError(f"{type(layer).__name__} has no score_matrix(x)/values(x): no second-order bound")
    with torch.no_grad():
        A, U = (t.to(torch.float64) for t in head_terms(layer, x))
    # a sum of heads has the sum of their Taylor remainders: sum_h 3 diam(U_h) max_j ||a^h_j||^2 (one head: H)
    H = head_sum(3 * diameter(U[..., h, :, :]) * max_row_norm(A[..., h, :, :]) ** 2 for h in range(A.shape[-3]))
    return (relaxation(layer) * H).cpu()


@dataclass(frozen=True)
class RateInterval:
    """For one batch element: the fitted window [start, end] of differences, the observed rate
    (``empirical_rate`` of ||d_t|| over it), the interval the linearization allows for it,
    rho, and the largest ratio of an observed difference to its pairwise bound (<= 1 when consistent)."""

    start: int
    end: int
    rate: float
    lower: float
    upper: float
    rho: float
    worst_ratio: float
    worst_remainder_ratio: float

    @property
    def consistent(self) -> bool:
        return self.worst_ratio <= 1 and self.worst_remainder_ratio <= 1 and self.lower <= self.rate <= self.upper


def rate_intervals(layer: FixedPointLayer, x: Tensor, iterates: list[Tensor]) -> list[RateInterval | None]:
    """The :class:`RateInterval` of each batch element of a Picard run (undamped, iterates y_0..y_T);
    None where fewer than MIN_POINTS differences stand above the rounding floor. A ValueError where two
    consecutive iterates are equal and later ones move again (no Picard run of one map does that)."""
    f = layer.fixed_point_map(x)
    y_end = iterates[-1]
    J_all = jacobian(f, y_end).to(torch.float64)
    H_all = second_order_constant(layer, x)
    eps = torch.finfo(x.dtype).eps
    N = y_end.shape[-2]  # the state's rows: the Frobenius norm of a per-row bound is sqrt(rows) times it
    eps_f_all = torch.stack([map_rounding(layer, x, y) for y in (iterates[0], y_end)]).amax(dim=0).cpu()
    out: list[RateInterval | None] = []
    for b in range(x.shape[0]):
        ys = [y[b].to(torch.float64).cpu() for y in iterates]
        out.append(_interval(ys, J_all[b].cpu(), float(H_all[b]), float(eps_f_all[b]), eps, N))
    return out


def matrix_power_norms(J: Tensor, length: int) -> Tensor:
    """||J^k||_2 for k = 0..length, [length + 1, *batch] (J is [..., n, n]): how far the powers of J stray
    above rho^k (transient growth of a non-normal J) over a window of that many steps."""
    norms = [torch.ones(J.shape[:-2], dtype=J.dtype, device=J.device)]
    power = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device).expand_as(J)
    for _ in range(length):
        power = power @ J
        norms.append(torch.linalg.matrix_norm(power, 2))
    return torch.stack(norms)


def _interval(ys: list[Tensor], J: Tensor, H: float, eps_f: float, eps: float, N: int) -> RateInterval | None:
    n = J.shape[0]
    dY = [ys[t + 1] - ys[t] for t in range(len(ys) - 1)]
    d = [t.reshape(-1) for t in dY]
    r = [float(torch.linalg.vector_norm(v)) for v in d]
    J_fro = float(torch.linalg.matrix_norm(J, "fro"))
    noise = 2 * math.sqrt(N) * eps_f
    usable = [t for t in range(len(d) - 1) if r[t] > SIGNAL_TO_NOISE * noise]
    if not usable:
        return None
    end = max(usable)
    length = min(max(MIN_POINTS, end // 2), MAX_WINDOW)
    start = end - length
    if start < 0:
        return None
    # Picard from y_t = y_{t+1} stays there, so a zero difference inside the window is not one map's iteration (and
    # the pairwise bounds would divide by it).
    still = next((t for t in range(start, end + 1) if r[t] == 0), None)
    if still is not None:
        raise ValueError(
            f"iterates y_{still} and y_{still + 1} are equal but y_{end} and y_{end + 1} differ: "
            "not the iterates of one Picard run"
        )
    # the a-priori remainder nu_t (Taylor with H, rounding of f twice and of J d_t) and the measured one
    nu, remainder_ratio = [], 0.0
    for t in range(start, end):
        dist = max(float(max_row_norm(ys[t] - ys[-1])), float(max_row_norm(ys[t + 1] - ys[-1])))
        bound = math.sqrt(N) * (H * dist * float(max_row_norm(dY[t])) + 2 * eps_f) + n * eps * J_fro * r[t]
        measured = float(torch.linalg.vector_norm(d[t + 1] - J @ d[t]))
        remainder_ratio = max(remainder_ratio, measured / bound)
        nu.append(bound)
    values, vectors = (t[0] for t in eig_blocks(J.T[None]))
    top = int(values.abs().argmax())
    rho = float(values[top].abs())
    v = vectors[:, top] / torch.linalg.vector_norm(vectors[:, top])
    projection = [float((v @ d[t].to(v.dtype)).abs()) for t in range(start, end + 1)]
    power_norms = matrix_power_norms(J, length).tolist()
    worst, weight_sum, upper_sum, lower_sum, lower_finite = 0.0, 0.0, 0.0, 0.0, True
    for s in range(start, end + 1):
        for t in range(s + 1, end + 1):
            k = t - s
            tail = range(s, t)
            upper = power_norms[k] * r[s] + sum(power_norms[t - 1 - j] * nu[j - start] for j in tail)
            lower = projection[s - start] * rho**k - sum(rho ** (t - 1 - j) * nu[j - start] for j in tail)
            worst = max(worst, r[t] / upper, lower / r[t])
            weight_sum += k * k
            upper_sum += k * k * math.log(upper / r[s]) / k
            if lower > 0:
                lower_sum += k * k * math.log(lower / r[s]) / k
            else:
                lower_finite = False
    rate = float(empirical_rate(torch.tensor(r[start : end + 1], dtype=torch.float64), tail=1.0, min_points=2))
    return RateInterval(
        start=start,
        end=end,
        rate=rate,
        lower=math.exp(lower_sum / weight_sum) if lower_finite else 0.0,
        upper=math.exp(upper_sum / weight_sum),
        rho=rho,
        worst_ratio=worst,
        worst_remainder_ratio=remainder_ratio,
    )
