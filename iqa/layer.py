"""The seed's layer, and the base class every variant builds on.

A fixed-point layer maps tokens x [B, N, D] to y* with y* = f(y*; x). Each layer
says what f is (:meth:`FixedPointLayer.fixed_point_map`) and where to start
(:meth:`FixedPointLayer.initial_point`); the base class decides how to iterate:

- seed mode (the default, ``solver=None``): exactly ``n_iters`` steps of
  y <- f(y) from y0, autograd through all of them, as in the seed document;
- solve mode (``solver="picard"`` or ``"anderson"``, or any of ``tol``,
  ``max_iter``, ``damping`` or a non-unrolled ``backward`` given): a
  tolerance-based :func:`iqa.solve` whose Solution is kept in
  ``layer.last_solution``, with gradients by ``backward``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.checks import (
    check_matches_parameters,
    check_nonnegative_int,
    check_positive,
    check_positive_int,
    check_tokens,
    check_unit_interval,
)
from iqa.grad import AdjointOptions, SolveRecord, check_backward_mode, fixed_point
from iqa.solvers import METHODS, STOP_MODES, Map, Solution

DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 200


class FixedPointLayer(nn.Module):
    """Base of fixed-point attention layers: subclasses define f and y0.

    Args:
        embed_dim: D, the token width.
        n_iters: steps in seed mode.
        solver: "picard" or "anderson" for a tolerance-based solve, or None.
        tol, max_iter, damping, stop: options of :func:`iqa.solve`.
        backward: "unrolled", "implicit" or "phantom" (solve mode).
        adjoint: options of the implicit backward's adjoint solve.
        phantom_steps, phantom_damping: the phantom gradient's k and lambda.
        raise_on_failure: raise :class:`iqa.ConvergenceError` when a forward
            solve (or, for implicit, the adjoint solve) does not converge.
    """

    def __init__(
        self,
        embed_dim: int,
        n_iters: int = 10,
        *,
        solver: str | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        damping: float | None = None,
        stop: str = "abs",
        backward: str = "unrolled",
        adjoint: AdjointOptions | None = None,
        phantom_steps: int = 1,
        phantom_damping: float = 1.0,
        raise_on_failure: bool = False,
        **solver_options: Any,
    ) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_nonnegative_int("n_iters", n_iters)
        check_backward_mode(backward)
        if solver is not None and solver not in METHODS:
            raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(METHODS)} (or None for seed mode)")
        if tol is not None:
            check_positive("tol", tol)
        if max_iter is not None:
            check_positive_int("max_iter", max_iter)
        if damping is not None:
            check_unit_interval("damping", damping)
            if solver == "anderson":
                raise ValueError("damping is Picard's relaxation; Anderson's is mixing= (pass mixing=... instead)")
        if stop not in STOP_MODES:
            raise ValueError(f"unknown stop mode {stop!r}; choose 'abs' or 'rel'")
        self.embed_dim = embed_dim
        self.n_iters = n_iters
        wants_solve = any(v is not None for v in (tol, max_iter, damping)) or backward != "unrolled"
        self.solver = solver if solver is not None else ("picard" if wants_solve else None)
        self.tol = DEFAULT_TOL if tol is None else tol
        self.max_iter = DEFAULT_MAX_ITER if max_iter is None else max_iter
        self.damping = 1.0 if damping is None else damping
        self.stop = stop
        self.backward = backward
        self.adjoint = adjoint
        self.phantom_steps = phantom_steps
        self.phantom_damping = phantom_damping
        self.raise_on_failure = raise_on_failure
        self.solver_options = solver_options
        self._record = SolveRecord()

    def fixed_point_map(self, x: Tensor) -> Map:
        """Return f(.; x): the map whose fixed point is the layer's output."""
        raise NotImplementedError

    def initial_point(self, x: Tensor) -> Tensor:
        """y0 for the iteration; the seed starts from a copy of x."""
        return x.clone()

    @property
    def last_solution(self) -> Solution | None:
        """The Solution of the last forward in solve mode (None in seed mode)."""
        return self._record.forward

    @property
    def last_backward_solution(self) -> Solution | None:
        """The adjoint Solution of the last implicit backward, once it has run."""
        return self._record.backward

    def forward(self, x: Tensor, track: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        check_tokens(x, self.embed_dim)
        check_matches_parameters(x, self)
        f = self.fixed_point_map(x)
        y0 = self.initial_point(x)
        if self.solver is None:
            self._record = SolveRecord()
            return _iterate(f, y0, self.n_iters, track)
        record = SolveRecord()
        self._record = record
        options: dict[str, Any] = dict(
            method=self.solver,
            tol=self.tol,
            max_iter=self.max_iter,
            stop=self.stop,
            raise_on_failure=self.raise_on_failure,
            keep_iterates=track,
            **self.solver_options,
        )
        if self.solver == "picard":
            options["damping"] = self.damping
        y = fixed_point(
            f,
            y0,
            self.backward,
            adjoint=self.adjoint,
            phantom_steps=self.phantom_steps,
            phantom_damping=self.phantom_damping,
            record=record,
            **options,
        )
        if track:
            assert record.forward is not None and record.forward.iterates is not None
            return y, list(record.forward.iterates)
        return y


def _iterate(f: Map, y0: Tensor, n_iters: int, track: bool) -> Tensor | tuple[Tensor, list[Tensor]]:
    """The seed's loop: n_iters steps of y <- f(y), keeping clones when tracking."""
    y = y0
    history = [y.clone()] if track else None
    for _ in range(n_iters):
        y = f(y)
        if history is not None:
            history.append(y.clone())
    return (y, history) if history is not None else y


def linear_init_(linear: nn.Linear, scale: float = 1.0, generator: torch.Generator | None = None) -> nn.Linear:
    """nn.Linear's default weight init (Kaiming-uniform, a = sqrt(5)), drawn from
    ``generator`` and multiplied by ``scale``: the "weight scale" of THEORY.md."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
        linear.weight.mul_(scale)
    return linear


class ImplicitQueryAttention(FixedPointLayer):
    """The seed's layer: y <- softmax(W_K(x) Omega_Q(y)^T, -1) x, from y = x.

    Score s_ij = k_i . (Omega_Q y_j) with k_i = W_K x_i; row i of the output is
    the softmax_j(s_i.)-weighted mean of the tokens x_j. In seed mode its output
    equals the seed document's code bit for bit.
    """

    def __init__(self, embed_dim: int, n_iters: int = 10, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        self.Omega_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)

    def keys(self, x: Tensor) -> Tensor:
        """k_i = W_K x_i."""
        return self.W_K(x)

    def values(self, x: Tensor) -> Tensor:
        """The rows that attention averages: x itself for the seed."""
        return x

    def fixed_point_map(self, x: Tensor) -> Map:
        K = self.keys(x)
        V = self.values(x)  # x itself for the seed: the same tensor, so the same bits

        def f(y: Tensor) -> Tensor:
            Q = self.Omega_Q(y)
            attn_scores = torch.matmul(K, Q.transpose(-2, -1))
            attn_probs = F.softmax(attn_scores, dim=-1)
            return torch.matmul(attn_probs, V)

        return f

    def score_matrix(self, x: Tensor) -> Tensor:
        """A with scores = A y^T: row a_i = Omega^T W_K x_i (THEORY.md's A = X W_K^T Omega)."""
        return self.keys(x) @ self.Omega_Q.weight

    def score_weight_norm(self) -> Tensor:
        """||M||_2 for A = X M, M = W_K^T Omega: bounds ||a_i|| <= ||M||_2 ||x_i||."""
        return torch.linalg.matrix_norm(self.W_K.weight.T @ self.Omega_Q.weight, ord=2)
