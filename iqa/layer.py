"""The seed's layer, and the base class every variant builds on.

A fixed-point layer maps tokens x [B, N, D] to y* with y* = f(y*; x). Each layer
says what f is (:meth:`FixedPointLayer.fixed_point_map`) and where to start
(:meth:`FixedPointLayer.initial_point`); the base class decides how to iterate:

- seed mode (the default, ``solver=None``): exactly ``n_iters`` steps of
  y <- f(y) from y0, autograd through all of them, as in the seed document;
- solve mode (``solver=`` a solver object such as ``Anderson(history=5)`` or a
  name "picard" / "anderson", or any of ``tol``, ``max_iter``, a solver option
  such as ``damping``, or a backward other than unrolled given): a
  tolerance-based :func:`iqa.solve` whose Solution is kept in
  ``layer.last_solution``, with gradients by ``backward``.

``layer(x, track=True)`` returns a :class:`Tracked` ``(y, iterates)``.

The state y need not have x's shape: a slot or latent layer iterates a state
``[B, K, D_y]`` from its own start, and :meth:`FixedPointLayer.readout` turns the
fixed point into the layer's output (by default the state itself).
:meth:`FixedPointLayer.solve_state` returns the fixed-point state, ``forward``
its readout.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from iqa.grad import AdjointOptions, Backward, Implicit, SolveRecord, Unrolled, as_backward, fixed_point
from iqa.solvers import Map, Solution, Solver, as_solver, check_solve_options
from iqa.validation import (
    check_key_padding_mask,
    check_matches_parameters,
    check_nonnegative_int,
    check_positive_int,
    check_tokens,
)

DEFAULT_TOL = 1e-6
DEFAULT_MAX_ITER = 200


class Tracked(NamedTuple):
    """What ``layer(x, track=True)`` returns: the output and the iterates that led to it.

    ``iterates`` are detached copies of the state: y0 and each of the ``n_iters``
    steps in seed mode; every iterate the solver evaluated f at in solve mode.
    ``y`` is the layer's output (its readout of the last state). Unpacks as
    ``y, history = layer(x, track=True)``.
    """

    y: Tensor
    iterates: list[Tensor]


class FixedPointLayer(nn.Module):
    """Base of fixed-point attention layers: subclasses define f and y0.

    Args:
        embed_dim: D, the token width.
        n_iters: steps in seed mode.
        solver: a solver object (``iqa.Picard(...)``, ``iqa.Anderson(...)``) or name ("picard",
            "anderson") for a tolerance-based solve, or None (seed mode unless a solve option is given).
        tol, max_iter, stop: options of :func:`iqa.solve`.
        damping, **solver_options: the named solver's options as keywords (``damping`` is Picard's;
            ``history``, ``mixing``, ``ridge`` are Anderson's); an option of another solver is an error.
        backward: a backward object (``iqa.Implicit(...)``, ``iqa.Phantom(...)``, ``iqa.Unrolled()``) or
            name ("unrolled", "implicit", "phantom").
        adjoint: the implicit backward's adjoint options (or solver); implicit only.
        phantom_steps, phantom_damping: the phantom gradient's k and lambda; phantom only.
        raise_on_failure: raise :class:`iqa.ConvergenceError` when a forward
            solve (or, for implicit, the adjoint solve) does not converge.

    The protocol a subclass may fill in beyond f and y0: :meth:`readout` (the output from the fixed
    point), :meth:`weight_roles` (which parameters are keys, queries, values), :attr:`heads`, and a
    ``key_padding_mask`` keyword of :meth:`fixed_point_map` for layers that take masks.
    """

    #: Attention heads: the rows of the "key" and "query" weights (:meth:`weight_roles`) form this many
    #: contiguous blocks of D / heads, one per head.
    heads: int = 1
    #: Seeds :meth:`start_generator`; the default factory sets it from the variant's seed.
    start_seed: int = 0

    def __init__(
        self,
        embed_dim: int,
        n_iters: int = 10,
        *,
        solver: str | Solver | None = None,
        tol: float | None = None,
        max_iter: int | None = None,
        damping: float | None = None,
        stop: str = "abs",
        backward: str | Backward = "unrolled",
        adjoint: AdjointOptions | Solver | str | None = None,
        phantom_steps: int | None = None,
        phantom_damping: float | None = None,
        raise_on_failure: bool = False,
        **solver_options: Any,
    ) -> None:
        super().__init__()
        check_positive_int("embed_dim", embed_dim)
        check_nonnegative_int("n_iters", n_iters)
        self.backward = as_backward(backward, adjoint, phantom_steps, phantom_damping)
        check_solve_options(tol, max_iter, stop)
        options = solver_options if damping is None else {"damping": damping, **solver_options}
        wants_solve = (
            solver is not None
            or tol is not None
            or max_iter is not None
            or bool(options)
            or not isinstance(self.backward, Unrolled)
        )
        self.embed_dim = embed_dim
        self.n_iters = n_iters
        #: The solver of solve mode (None: seed mode).
        self.solver: Solver | None = as_solver("picard" if solver is None else solver, options) if wants_solve else None
        if isinstance(self.backward, Implicit) and self.solver is not None:
            self.backward.options.solver(self.solver)  # an adjoint option of another solver is an error now
        self.tol = DEFAULT_TOL if tol is None else tol
        self.max_iter = DEFAULT_MAX_ITER if max_iter is None else max_iter
        self.stop = stop
        self.raise_on_failure = raise_on_failure
        self._record = SolveRecord()

    def fixed_point_map(self, x: Tensor) -> Map:
        """Return f(.; x): the map whose fixed point is the layer's output."""
        raise NotImplementedError

    def initial_point(self, x: Tensor) -> Tensor:
        """y0 for the iteration, a state ``[B, K, D_y]``; the seed starts from a copy of x.

        A random start draws from :meth:`start_generator`, never from torch's global RNG, so that the same
        layer starts from the same point on every forward.
        """
        return x.clone()

    def start_generator(self, x: Tensor) -> torch.Generator:
        """A fresh generator on x's device seeded with :attr:`start_seed`: the source of a noise start."""
        return torch.Generator(device=x.device).manual_seed(self.start_seed)

    def readout(self, y: Tensor, x: Tensor) -> Tensor:
        """The layer's output g(y*, x) from its fixed-point state y* (default: y* itself)."""
        return y

    def weight_roles(self) -> dict[str, Tensor]:
        """Which parameter plays which role, for properties that transform weights by role.

        Roles the suite reads: "key" and "query" (a claim that the scores depend on these two only through
        W_key^T W_query, per head block of :attr:`heads`), "value", "output". Default: none declared.
        """
        return {}

    @property
    def last_solution(self) -> Solution | None:
        """The Solution of the last forward in solve mode (None in seed mode)."""
        return self._record.forward

    @property
    def last_backward_solution(self) -> Solution | None:
        """The adjoint Solution of the last implicit backward, once it has run."""
        return self._record.backward

    @overload
    def forward(self, x: Tensor, track: Literal[False] = False, key_padding_mask: Tensor | None = None) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, track: Literal[True], key_padding_mask: Tensor | None = None) -> Tracked: ...

    @overload
    def forward(self, x: Tensor, track: bool, key_padding_mask: Tensor | None = None) -> Tensor | Tracked: ...

    def forward(self, x: Tensor, track: bool = False, key_padding_mask: Tensor | None = None) -> Tensor | Tracked:
        """The output g(y*, x) for tokens x (:meth:`readout`); with ``track``, a :class:`Tracked` (output,
        iterates of the state). ``key_padding_mask`` [B, N] bool, True where a token is padding."""
        result = self.solve_state(x, track, key_padding_mask)
        if isinstance(result, Tracked):
            return Tracked(self.readout(result.y, x), result.iterates)
        return self.readout(result, x)

    @overload
    def solve_state(
        self, x: Tensor, track: Literal[False] = False, key_padding_mask: Tensor | None = None
    ) -> Tensor: ...

    @overload
    def solve_state(self, x: Tensor, track: Literal[True], key_padding_mask: Tensor | None = None) -> Tracked: ...

    @overload
    def solve_state(self, x: Tensor, track: bool, key_padding_mask: Tensor | None = None) -> Tensor | Tracked: ...

    def solve_state(self, x: Tensor, track: bool = False, key_padding_mask: Tensor | None = None) -> Tensor | Tracked:
        """The fixed-point state y* (before :meth:`readout`), with gradients by the layer's backward mode;
        with ``track``, a :class:`Tracked` (y*, iterates)."""
        check_tokens(x, self.embed_dim)
        check_matches_parameters(x, self)
        f = self._map(x, key_padding_mask)
        y0 = self.initial_point(x)
        if self.solver is None:
            self._record = SolveRecord()
            return _iterate(f, y0, self.n_iters, track)
        record = SolveRecord()
        self._record = record
        y = fixed_point(
            f,
            y0,
            self.backward,
            method=self.solver,
            tol=self.tol,
            max_iter=self.max_iter,
            stop=self.stop,
            raise_on_failure=self.raise_on_failure,
            keep_iterates=track,
            record=record,
        )
        if track:
            assert record.forward is not None and record.forward.iterates is not None
            return Tracked(y, list(record.forward.iterates))
        return y

    def _map(self, x: Tensor, key_padding_mask: Tensor | None) -> Map:
        if key_padding_mask is None:
            return self.fixed_point_map(x)
        check_key_padding_mask(key_padding_mask, x)
        try:
            params = inspect.signature(self.fixed_point_map).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        if "key_padding_mask" not in params:
            raise TypeError(
                f"{type(self).__name__} takes no key_padding_mask: its fixed_point_map(x) has no "
                "key_padding_mask keyword"
            )
        return self.fixed_point_map(x, key_padding_mask=key_padding_mask)  # type: ignore[call-arg]


def _iterate(f: Map, y0: Tensor, n_iters: int, track: bool) -> Tensor | Tracked:
    """The seed's loop: n_iters steps of y <- f(y), keeping clones when tracking."""
    y = y0
    history = [y.clone()] if track else None
    for _ in range(n_iters):
        y = f(y)
        if history is not None:
            history.append(y.clone())
    return Tracked(y, history) if history is not None else y


def linear_init_(linear: nn.Linear, scale: float = 1.0, generator: torch.Generator | None = None) -> nn.Linear:
    """nn.Linear's default weight init (Kaiming-uniform, a = sqrt(5)), drawn from
    ``generator`` and multiplied by ``scale``: the "weight scale" of docs/theory.md#the-layer."""
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

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        """f(y) = softmax(K Q(y)^T, -1) V; with ``key_padding_mask`` ([B, N], True = padded), the padded
        tokens are dropped from the softmax axis (score -inf, value 0). That axis indexes both y (the queries:
        this is the seed's orientation) and the values, so a padded token enters no unpadded row, and the
        unpadded rows of y evolve on their own."""
        K = self.keys(x)
        V = self.values(x)  # x itself for the seed: the same tensor, so the same bits
        padded = None if key_padding_mask is None else key_padding_mask[:, None, :]
        if key_padding_mask is not None:
            V = V.masked_fill(key_padding_mask[:, :, None], 0.0)  # padded content never enters a sum

        def f(y: Tensor) -> Tensor:
            Q = self.Omega_Q(y)
            attn_scores = torch.matmul(K, Q.transpose(-2, -1))
            if padded is not None:
                attn_scores = attn_scores.masked_fill(padded, float("-inf"))
            attn_probs = F.softmax(attn_scores, dim=-1)
            return torch.matmul(attn_probs, V)

        return f

    def score_matrix(self, x: Tensor) -> Tensor:
        """A with scores = A y^T: row a_i = Omega^T W_K x_i (A = X W_K^T Omega, docs/theory.md#the-layer)."""
        return self.keys(x) @ self.Omega_Q.weight

    def weight_roles(self) -> dict[str, Tensor]:
        """Keys W_K and queries Omega_Q: the scores depend on them only through W_K^T Omega_Q."""
        return {"key": self.W_K.weight, "query": self.Omega_Q.weight}

    def score_weight_norm(self) -> Tensor:
        """||M||_2 for A = X M, M = W_K^T Omega: bounds ||a_i|| <= ||M||_2 ||x_i||."""
        return torch.linalg.matrix_norm(self.W_K.weight.T @ self.Omega_Q.weight, ord=2)
