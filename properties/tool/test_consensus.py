"""The consensus eigenvalues (iqa.analysis.consensus) are the eigenvalues of the dense Jacobian at the consensus
point, as a set: for the seed and for relaxed maps (eigenvalues 1 - a + a lambda), with tokens to spare (N > D),
so that the Jacobian's spectrum holds every mu_i, every +-sqrt(mu_i mu_j) and the 0 that the formula lists.

The reference is numpy's eig of the Jacobian from torch.func (iqa.analysis.jacobian), independent of P.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

from iqa import analysis
from properties.tool.layers import relaxed_seed

F64 = torch.float64
EPS = torch.finfo(F64).eps


@given(
    dim=st.integers(1, 3),
    extra=st.integers(1, 3),
    relaxation=st.sampled_from([1.0, 0.75, 0.5, 0.3]),
    scale=st.floats(0.3, 1.5),
    seed=st.integers(0, 2**31 - 1),
)
def test_consensus_eigenvalues_are_the_jacobians(dim: int, extra: int, relaxation: float, scale: float, seed: int):
    tokens = dim + extra
    g = torch.Generator().manual_seed(seed)
    layer = relaxed_seed(dim, relaxation, scale, g)
    x = torch.randn(1, tokens, dim, generator=g, dtype=F64)
    values = analysis.consensus_eigenvalues(layer, x)[0].numpy()
    assert values.shape == (dim * dim + 1,)
    J = analysis.jacobian(layer.fixed_point_map(x), analysis.consensus_point(x))[0]
    dense = np.linalg.eigvals(J.numpy())
    # Both sides carry rounding of order n eps (||J|| + 1) times an eigenvalue's condition (the repeated 0 is
    # semisimple here, L(1 w^T) = 0 for every w, so it does not split by sqrt(eps)); measured on 300 draws: at
    # most 30 n eps (||J|| + 1), so 300 n eps (||J|| + 1).
    n = tokens * dim
    tol = 300 * n * EPS * (float(np.linalg.norm(J.numpy(), 2)) + 1.0)
    gap_dense = np.abs(dense[:, None] - values[None, :]).min(axis=1)
    gap_formula = np.abs(values[:, None] - dense[None, :]).min(axis=1)
    note(f"formula {np.sort_complex(values)}, dense {np.sort_complex(dense)}, tol {tol:.1e}")
    assert gap_dense.max() <= tol, "an eigenvalue of the Jacobian is missing from the formula's list"
    assert gap_formula.max() <= tol, "the formula lists a value that is not an eigenvalue of the Jacobian"
    rho = float(analysis.consensus_radius(layer, x)[0])
    assert abs(rho - np.abs(dense).max()) <= tol
    # and in particular the relaxed radius is max(1 - a, |1 - a + a lambda|) over P's eigenvalues and their roots
    assert rho >= 1 - relaxation - 4 * EPS


def test_consensus_needs_a_map_that_fixes_the_mean() -> None:
    """The check runs by default (positional's equal rows do not give uniform attention), and check=False
    skips it; a map without scores A Y^T or without a score form is refused by name."""
    from iqa.variants import resolve

    x = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    positional = resolve("positional").make(3, scale=1.0)
    with pytest.raises(ValueError, match=r"PositionalQueryAttention's map does not fix 1 mean\(V\)\^T \(deviation"):
        analysis.consensus_eigenvalues(positional, x)
    assert analysis.consensus_eigenvalues(positional, x, check=False).shape == (2, 10)
    with pytest.raises(TypeError, match=re.escape("HopfieldAttention has scores Y A^T: equal rows do not give")):
        analysis.consensus_matrix(resolve("hopfield").make(3, scale=1.0), x)
    with pytest.raises(TypeError, match=re.escape("has no score_matrix(x)/values(x): the consensus analysis needs")):
        analysis.consensus_matrix(resolve("multihead").make(4, scale=1.0), torch.zeros(1, 3, 4, dtype=F64))
    y = torch.zeros(2, 3, 3, dtype=F64)
    with pytest.raises(ValueError, match=re.escape("got a state of shape (2, 3, 3) for x of shape (2, 4, 3)")):
        analysis.consensus_distance(y, x)
