"""The seed document's layer, verbatim: the oracle that the package's layer must equal bit for bit."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SeedImplicitQueryAttention(nn.Module):
    """The seed document's code, unchanged."""

    def __init__(self, embed_dim, n_iters=10):
        super().__init__()
        self.embed_dim = embed_dim
        self.n_iters = n_iters
        self.Omega_Q = nn.Linear(embed_dim, embed_dim, bias=False)
        self.W_K = nn.Linear(embed_dim, embed_dim, bias=False)

    def forward(self, x, track=False):
        K = self.W_K(x)
        y = x.clone()
        y_history = [y.clone()] if track else None

        for _ in range(self.n_iters):
            Q = self.Omega_Q(y)
            attn_scores = torch.matmul(K, Q.transpose(-2, -1))
            attn_probs = F.softmax(attn_scores, dim=-1)
            y = torch.matmul(attn_probs, x)
            if track:
                y_history.append(y.clone())
        return (y, y_history) if track else y
