"""The suite's dense Jacobian helper (properties/jacobian_rows.py) against Jacobians known in closed form, on its
batched path and on the row-by-row path it takes where a backward has no batching rule."""

from __future__ import annotations

import torch

from properties.jacobian_rows import jacobian_rows

F64 = torch.float64
G = torch.Generator().manual_seed(0)
A = torch.randn(5, 3, generator=G, dtype=F64)
B = torch.randn(5, 4, generator=G, dtype=F64)


class Opaque(torch.autograd.Function):
    """y -> A y with a backward through numpy, which autograd's batched (vmapped) backward cannot run."""

    @staticmethod
    def forward(ctx, y):
        return A @ y

    @staticmethod
    def backward(ctx, g):
        return torch.from_numpy(A.numpy().T @ g.numpy())


def test_rows_of_a_linear_map_are_its_matrices() -> None:
    y = torch.randn(3, generator=G, dtype=F64, requires_grad=True)
    z = torch.randn(4, generator=G, dtype=F64, requires_grad=True)
    unused = torch.randn(2, generator=G, dtype=F64, requires_grad=True)
    dy, dz, du = jacobian_rows(A @ y + B @ z, [y, z, unused])
    assert torch.equal(dy, A) and torch.equal(dz, B)
    assert torch.equal(du, torch.zeros(5, 2, dtype=F64))


def test_a_backward_without_a_batching_rule_is_taken_row_by_row() -> None:
    y = torch.randn(3, generator=G, dtype=F64, requires_grad=True)
    out = Opaque.apply(y) ** 2
    try:  # the premise: the batched pass refuses this backward
        torch.autograd.grad(out, [y], torch.eye(5, dtype=F64), retain_graph=True, is_grads_batched=True)
        raise AssertionError("the batched backward ran: this test no longer exercises the fallback")
    except RuntimeError:
        pass
    (rows,) = jacobian_rows(out, [y])
    # entries 2 (A y)_i A_ij of size ~1: a 3-term dot product and two products, each within a few eps
    assert torch.allclose(rows, 2 * (A @ y.detach())[:, None] * A, rtol=0, atol=8 * torch.finfo(F64).eps)


def test_the_shapes_follow_out_and_inputs() -> None:
    y = torch.randn(2, 3, generator=G, dtype=F64, requires_grad=True)
    (rows,) = jacobian_rows((y @ A.T).sin(), [y])  # out [2, 5]: 10 rows of [2, 3]
    assert rows.shape == (10, 2, 3)
    # entries cos((y A^T)_i) A_ij of size <= ~2: a 3-term dot product, a cosine and a product, a few eps each
    expected = torch.zeros(2, 5, 2, 3, dtype=F64)
    for i in range(2):
        expected[i, :, i, :] = torch.cos(y.detach()[i] @ A.T)[:, None] * A
    assert torch.allclose(rows, expected.reshape(10, 2, 3), rtol=0, atol=8 * torch.finfo(F64).eps)
