"""Memory of the backward modes, as deterministic counts of bytes saved for backward.

:func:`iqa.memory.saved_tensor_bytes` counts, while the forward runs, the
distinct storages that autograd keeps for the backward (the parameters and the
input are alive anyway and are excluded). The unrolled mode keeps every step's
activations, so its count grows linearly with the number of forward steps; the
implicit and phantom modes keep one application of f whatever the depth.
"""

from __future__ import annotations

import torch

from iqa.memory import count_saved_tensors, saved_tensor_bytes


def test_count_rule_on_known_graph() -> None:
    """The counting rule on a graph whose saves are known: x @ W @ W with W requiring grad saves
    x, W and x @ W; W @ W saves W twice (as each operand), which counts once; a saved view counts its whole
    storage; excluded storages and no_grad count nothing."""
    W = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, dtype=torch.float64)
    element = torch.finfo(torch.float64).bits // 8
    counted = count_saved_tensors(lambda: x @ W @ W)
    # mm(x, W) saves x (for dW); mm(xW, W) saves xW and W (for dW and d(xW))
    assert counted.saves == 4 - 1, f"counted saves {counted.saves}, expected 3"
    assert counted.storages == 3, f"counted storages {counted.storages}, expected 3"
    expected = (x.numel() + W.numel() + x.numel()) * element
    assert counted.bytes == expected, f"counted bytes {counted.bytes}, expected {expected} (W once)"
    excluded = saved_tensor_bytes(lambda: x @ W @ W, exclude=[W, x])
    assert excluded == x.numel() * element, f"counted bytes {excluded} with W and x excluded, expected xW's alone"
    twice = count_saved_tensors(lambda: W @ W)
    assert (twice.saves, twice.storages) == (2, 1), f"W @ W: {twice.saves} saves of {twice.storages} storages"
    assert twice.bytes == W.numel() * element, f"counted bytes {twice.bytes} for W saved twice, expected W once"
    x_leaf = x.clone().requires_grad_(True)
    # mm(x, W[:, :2]) saves the view W[:, :2] (for dx): it keeps all of W's storage alive, so all of it counts.
    assert saved_tensor_bytes(lambda: x_leaf @ W[:, :2], exclude=[x_leaf]) == W.numel() * element
    with torch.no_grad():
        assert saved_tensor_bytes(lambda: x @ W @ W) == 0
