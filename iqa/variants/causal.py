"""The built-in causal variant: the seed with a causal mask over positions.

    y_i <- sum_{k <= i} softmax_k(W_K(x_i) . Omega_Q(y_k)) x_k

In the seed's orientation the softmax runs over the y index k, which is also the index of the values
x_k; row i's own key W_K x_i is the only other thing it reads. Masking k > i on that axis makes row i
of f(y) depend on y_{<=i} and x_{<=i} only, so by induction every iterate y_t from y_0 = x has rows
<= i that depend on x_{<=i} only: in seed mode (a fixed number of steps) output i does not depend on
the tokens after i at all. At a fixed point this holds wherever the fixed point is unique (a
certificate kappa < 1 of the prefix: the prefix rows are the fixed point of the prefix's own map, the
same layer on x_{<=i}). A solve stops on the residual of all rows, so the step at which it stops, and
with Anderson the mixing of every step, depends on the later tokens: in solve mode output i is
independent of them up to the solver's tolerance (docs/theory.md#masks).

The mask breaks the consensus fixed point (equal rows of y give row i the mean of x_{<=i}, not of x),
so the fixed point moves with the weights.
"""

from __future__ import annotations

import torch
from torch import Tensor

from iqa.layer import ImplicitQueryAttention
from iqa.solvers import Map


def causal_mask(tokens: int, device: torch.device | str = "cpu") -> Tensor:
    """[N, N] bool, True where k > i: the entries of row i that the causal mask removes."""
    return torch.ones(tokens, tokens, dtype=torch.bool, device=device).triu(1)


class CausalQueryAttention(ImplicitQueryAttention):
    """The seed with a causal mask on the softmax axis: y_i <- softmax_{k <= i}(K_i . Q(y_k)) x_k."""

    def future(self, tokens: int, device: torch.device) -> Tensor:
        """[N, N] bool, True where k > i (:func:`causal_mask`)."""
        return causal_mask(tokens, device)

    def attention_mask(self, x: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        """[B or 1, N, N] bool, True = removed: k > i, and padded tokens. A row with nothing left (every
        token <= i padded: a padded row, whose output is not claimed) keeps its own position, so that
        its softmax stays finite."""
        N = x.shape[-2]
        mask = self.future(N, x.device)[None]
        if key_padding_mask is not None:
            mask = mask | key_padding_mask[:, None, :]
            empty = mask.all(dim=-1, keepdim=True)
            mask = mask & ~(empty & torch.eye(N, dtype=torch.bool, device=x.device))
        return mask

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        K = self.keys(x)
        V = self.values(x)
        if key_padding_mask is not None:
            V = V.masked_fill(key_padding_mask[:, :, None], 0.0)  # padded content never enters a sum
        mask = self.attention_mask(x, key_padding_mask)

        def f(y: Tensor) -> Tensor:
            scores = (K @ self.Omega_Q(y).transpose(-2, -1)).masked_fill(mask, float("-inf"))
            return torch.softmax(scores, dim=-1) @ V

        return f
