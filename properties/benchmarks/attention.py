"""The realistic-size benchmark problem: multi-head hopfield-style implicit attention, and its workloads.

The map, for x and y of shape [B, N, D] split into h heads of width d = D / h:

    f(y) = W_O concat_h( softmax(Q_h K_h^T / sqrt(d)) X_h ),  Q = y W_Q^T,  K = x W_K^T,

queries from y attending to keys from x over the tokens of x (a modern-Hopfield
update per head, the ``hopfield`` variant's orientation with a temperature and
an output projection). The attention is written out (matmul, softmax, matmul)
as iqa's variants write it, so a recorded step saves its [B, h, N, N]
probabilities; a fused kernel (``scaled_dot_product_attention``) would save
less and change the unrolled mode's memory, not the implicit mode's.

The weights are at nn.Linear's default init (weight scale 1,
:func:`iqa.layer.linear_init_`), x ~ N(0, 1), float32, y0 = x. The layer is a
:class:`iqa.FixedPointLayer`, so ``layer(x)`` in seed mode (``n_iters`` = T) is
the unrolled mode at T steps.

A workload is a pair (set-up, run): set-up builds the problem and what the run
needs; run does the measured thing. The benchmarks time ``run``;
:mod:`properties.benchmarks.peak` measures its peak memory in a fresh process
through :func:`peak_workload`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from iqa import AdjointOptions, FixedPointLayer, SolveRecord, fixed_point, solve
from iqa.layer import linear_init_
from iqa.solvers import DEFAULT_HISTORY, Map

TOL = 1e-4  # relative residual ||f(y) - y|| / ||f(y)||, forward and adjoint, both libraries (issue 14)
STOP = "rel"
MAX_ITER = 200  # far above the ~15-40 steps these problems take: reaching it is a failure, not a stop
MEMORY = DEFAULT_HISTORY  # Anderson's history length, both libraries: iqa's default
UNROLLED_T = 50  # the unrolled mode's depth (issue 14)
SEED = 0


@dataclass(frozen=True)
class Size:
    """One benchmark shape: B sequences of N tokens of width D, h heads."""

    batch: int
    tokens: int
    dim: int
    heads: int

    def __post_init__(self) -> None:
        for name, value in (("B", self.batch), ("N", self.tokens), ("D", self.dim), ("h", self.heads)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"size {name} must be a positive integer, got {value!r}")
        if self.dim % self.heads:
            raise ValueError(f"D = {self.dim} is not divisible by h = {self.heads}")

    @property
    def id(self) -> str:
        return f"B{self.batch}-N{self.tokens}-D{self.dim}-h{self.heads}"

    @classmethod
    def parse(cls, text: str) -> Size:
        """The inverse of :attr:`id`: "B8-N256-D64-h4" (fields in any order); ValueError naming what is wrong."""
        match = re.fullmatch(r"(?:[BNDh]\d+)(?:-[BNDh]\d+){3}", text.strip())
        fields = {part[0]: int(part[1:]) for part in text.strip().split("-")} if match else {}
        if sorted(fields) != sorted("BNDh"):
            raise ValueError(f"{text!r} is not a size like B8-N256-D64-h4 (B, N, D and h once each)")
        return cls(fields["B"], fields["N"], fields["D"], fields["h"])


class MultiHeadHopfield(FixedPointLayer):
    """y <- W_O concat_h softmax(Q_h K_h^T / sqrt(d)) X_h with Q = y W_Q^T, K = x W_K^T (module docstring)."""

    def __init__(self, embed_dim: int, heads: int, n_iters: int = 10, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        if embed_dim % heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by heads {heads}")
        self.heads = heads
        self.W_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_O = nn.Linear(embed_dim, embed_dim, bias=False)

    def fixed_point_map(self, x: Tensor) -> Map:
        B, N, D = x.shape
        h, d = self.heads, D // self.heads

        def split(t: Tensor) -> Tensor:  # [B, N, D] -> [B, h, N, d]
            return t.reshape(B, N, h, d).transpose(1, 2)

        K = split(self.W_K(x))
        V = split(x)
        temperature = 1.0 / math.sqrt(d)

        def f(y: Tensor) -> Tensor:
            scores = split(self.W_Q(y)) @ K.transpose(-2, -1) * temperature
            heads = F.softmax(scores, dim=-1) @ V
            return self.W_O(heads.transpose(1, 2).reshape(B, N, D))

        return f


@dataclass
class Problem:
    """A layer, its input, and the loss's weight: L = sum(y * weight), so dL/dy is dense and asymmetric."""

    size: Size
    layer: MultiHeadHopfield
    x: Tensor
    weight: Tensor

    @property
    def wrt(self) -> list[Tensor]:
        return [*self.layer.parameters(), self.x]

    def map(self) -> Map:
        return self.layer.fixed_point_map(self.x)

    def start(self) -> Tensor:
        return self.layer.initial_point(self.x).detach()

    def loss(self, y: Tensor) -> Tensor:
        return (y * self.weight).sum()

    def gradient(self, y: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad(self.loss(y), self.wrt))


def problem(size: Size, device: torch.device | str = "cpu", seed: int = SEED) -> Problem:
    """The problem of ``size``: weights, x and the loss weight drawn from generators seeded by ``seed``."""
    layer = MultiHeadHopfield(size.dim, size.heads, n_iters=UNROLLED_T)
    for k, linear in enumerate((layer.W_Q, layer.W_K, layer.W_O)):
        linear_init_(linear, 1.0, torch.Generator().manual_seed(seed + k))
    layer.to(device)
    shape = (size.batch, size.tokens, size.dim)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 10)).to(device).requires_grad_(True)
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 11)).to(device)
    return Problem(size, layer, x, weight)


# --- the forward solves (no graph), each library on the same f, y0, tol and memory ---------------------------


def iqa_forward(f: Map, y0: Tensor, method: str) -> Tensor:
    with torch.no_grad():
        history = {"history": MEMORY} if method == "anderson" else {}
        solution = solve(f, y0, method, tol=TOL, stop=STOP, max_iter=MAX_ITER, **history)
    if not solution.converged:
        raise AssertionError(f"iqa {method} did not converge: {solution.status.name} after {solution.n_steps}")
    return solution.y


def torchdeq_forward(f: Map, y0: Tensor) -> Tensor:
    from properties.benchmarks import peers

    return peers.torchdeq_forward("anderson", f, y0, tol=TOL, stop=STOP, max_iter=MAX_ITER, memory=MEMORY)


#: runner name -> (library, method) of the timed forwards.
FORWARDS = {"iqa-picard": ("iqa", "picard"), "iqa-anderson": ("iqa", "anderson"), "tdq-anderson": ("tdq", "anderson")}


def forward(problem: Problem, runner: str, f: Map | None = None) -> Tensor:
    """The fixed point by ``runner`` (a key of FORWARDS), without a graph."""
    library, method = FORWARDS[runner]
    f = f if f is not None else problem.map()
    y0 = problem.start()
    return torchdeq_forward(f, y0) if library == "tdq" else iqa_forward(f, y0, method)


# --- forward with a graph for each backward mode; the backward is problem.gradient(output) ------------------

#: The backward modes: iqa's implicit, phantom and unrolled (T = UNROLLED_T), and torchdeq's implicit (IFT).
BACKWARDS = ("tdq-implicit", "implicit", "phantom", "unrolled")


def output(problem: Problem, mode: str, record: SolveRecord | None = None) -> Tensor:
    """The layer's output y with the graph that ``mode`` records; implicit and phantom solve with Anderson."""
    if mode == "unrolled":
        return problem.layer(problem.x)  # seed mode: T = UNROLLED_T steps of y <- f(y), all recorded
    f = problem.map()
    if mode == "tdq-implicit":
        from properties.benchmarks import peers

        z = torchdeq_forward(f, problem.start())
        ift = peers.torchdeq_ift("anderson", tol=TOL, stop=STOP, max_iter=MAX_ITER, memory=MEMORY)
        return ift(None, f, z)[0]
    options: dict[str, Any] = dict(method="anderson", tol=TOL, stop=STOP, max_iter=MAX_ITER, history=MEMORY)
    if mode == "implicit":
        options["adjoint"] = AdjointOptions(tol=TOL)
    return fixed_point(f, problem.start(), mode, record=record, **options)


def forward_backward(problem: Problem, mode: str) -> list[Tensor]:
    """Forward with ``mode``'s graph, then the gradient of the loss with respect to the weights and x."""
    return problem.gradient(output(problem, mode))


WARM_UP = Size(batch=2, tokens=8, dim=8, heads=1)


def peak_workload(size_id: str, mode: str, device: str = "cpu") -> Callable[[], Any]:
    """Set-up for :mod:`properties.benchmarks.peak`: build the problem, run ``mode`` once on a small problem
    with the same number of heads (so that the kernels' code is loaded before the measurement: peak.py), and
    return forward + backward on the problem."""
    size = Size.parse(size_id)
    small = problem(Size(WARM_UP.batch, WARM_UP.tokens, WARM_UP.dim * size.heads, size.heads), device)
    forward_backward(small, mode)
    p = problem(size, device)
    return lambda: forward_backward(p, mode)
