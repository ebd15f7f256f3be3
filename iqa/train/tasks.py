"""Deterministic synthetic tasks that an attention fixed point can fit.

Each task draws (x, target) pairs of shape [B, N, D] from a ``torch.Generator``,
so the same seed gives the same bits:

- ``recall`` (associative recall, the Hopfield use): each set holds N - Q
  stored patterns and Q queries, each query a noisy copy of one stored
  pattern; every token's target is its clean pattern (a stored pattern is its
  own target), so the layer must pull each query onto the pattern it came from.
- ``regression`` (set-to-set regression under a hidden metric): the target of
  token i is its softmax-weighted neighbour average under a hidden metric M,
  t_i = sum_j softmax_j(x_i^T M x_j) x_j, with M = beta G G^T / D drawn once per
  task seed, so every target depends on the whole set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

TASKS = ("recall", "regression")


@dataclass(frozen=True)
class Task:
    """A task's fixed parameters: name, tokens N, width D, and its own hidden draws (from ``seed``)."""

    name: str
    tokens: int
    dim: int
    seed: int
    queries: int = 2
    noise: float = 0.5
    metric_strength: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in TASKS:
            raise ValueError(f"unknown task {self.name!r}; choose one of {', '.join(TASKS)}")
        if self.name == "recall" and not 1 <= self.queries < self.tokens:
            raise ValueError(f"recall needs 1 <= queries < tokens, got queries={self.queries}, tokens={self.tokens}")

    def hidden_metric(self) -> Tensor:
        """M = beta G G^T / D (positive semi-definite), drawn from the task seed alone."""
        g = torch.Generator().manual_seed(self.seed + 7919)
        G = torch.randn(self.dim, self.dim, generator=g, dtype=torch.float64)
        return self.metric_strength * (G @ G.T) / self.dim

    def sample(self, batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(x, target), float64 [batch, N, D], drawn from ``generator``."""
        if self.name == "recall":
            return _recall(batch, self.tokens, self.dim, self.queries, self.noise, generator)
        return _regression(batch, self.tokens, self.dim, self.hidden_metric(), generator)


def _recall(batch: int, tokens: int, dim: int, queries: int, noise: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
    stored = tokens - queries
    patterns = torch.randn(batch, stored, dim, generator=g, dtype=torch.float64)
    which = torch.randint(0, stored, (batch, queries), generator=g)
    clean = torch.gather(patterns, 1, which[..., None].expand(batch, queries, dim))
    noisy = clean + noise * torch.randn(batch, queries, dim, generator=g, dtype=torch.float64)
    x = torch.cat([patterns, noisy], dim=1)
    target = torch.cat([patterns, clean], dim=1)
    return x, target


def _regression(batch: int, tokens: int, dim: int, metric: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
    x = torch.randn(batch, tokens, dim, generator=g, dtype=torch.float64)
    scores = x @ metric @ x.transpose(-2, -1)
    target = torch.softmax(scores, dim=-1) @ x
    return x, target
