"""The implicit backward records f once: the forward's recording of f(y*) serves the adjoint's J^T g products and
the gradient g^T df/dtheta, so the backward evaluates f zero times and holds one copy of f's activations.

Whether the output carries a gradient at all is decided by what f uses: a tensor that requires grad other than
y (a parameter, or a tensor computed from one), as ``f(y*).requires_grad`` says with y* detached. The gradients
themselves are checked against dense references in properties/variant/test_gradients.py.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from iqa import fixed_point

F64 = torch.float64
#: Tolerance of every solve here; the gradients compared below are exact to about TOL / (1 - rho), rho <= 0.5.
TOL = 1e-12


def counting(f: Callable[[Tensor], Tensor]) -> tuple[Callable[[Tensor], Tensor], list[bool]]:
    """f, and a list that gets torch.is_grad_enabled() at each of its calls."""
    calls: list[bool] = []

    def counted(y: Tensor) -> Tensor:
        calls.append(torch.is_grad_enabled())
        return f(y)

    return counted, calls


def contraction(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """W [n, n] with ||W||_2 = 0.5 (tanh(y W^T + x) contracts at rate <= 0.5) and x [2, n]."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, dtype=F64, generator=generator)
    W = 0.5 * W / torch.linalg.matrix_norm(W, ord=2)
    return W, torch.randn(2, n, dtype=F64, generator=generator)


@given(n=st.integers(2, 6), seed=st.integers(0, 2**31 - 1), method=st.sampled_from(["picard", "anderson"]))
def test_backward_evaluates_f_zero_times(n: int, seed: int, method: str) -> None:
    """The forward records f(y*) once (f's only call with grad enabled); the backward calls f never, and its
    gradient equals the one through a second, independent recording of f (the former design, written out:
    g solved by fixed-point iteration on the dense J^T, then g^T df/dW by autograd)."""
    W0, x = contraction(n, seed)
    W = W0.clone().requires_grad_(True)
    f, calls = counting(lambda y: torch.tanh(y @ W.T + x))
    y = fixed_point(f, torch.zeros_like(x), "implicit", method=method, tol=TOL, max_iter=500)
    assert calls.count(True) == 1, f"the forward recorded f {calls.count(True)} times, expected once"
    recorded = len(calls)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    (grad,) = torch.autograd.grad((v * y).sum(), W)
    assert len(calls) == recorded, f"the backward evaluated f {len(calls) - recorded} times, expected none"
    # Reference: J = diag(1 - tanh^2) W per row at y*; g = v + J^T g by 200 dense steps (error 0.5^200).
    y_star = y.detach()
    s = 1 - torch.tanh(y_star @ W0.T + x) ** 2
    g = v.clone()
    for _ in range(200):
        g = v + (g * s) @ W0
    W_leaf = W0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(torch.tanh(y_star @ W_leaf.T + x), W_leaf, g)
    # Both are g^T df/dW with g solved to TOL (relative): they agree to a few TOL / (1 - rho), rho <= 0.5.
    error = float((grad - expected).norm() / expected.norm().clamp_min(1e-300))
    assert error <= 8 * TOL, f"gradient {error:.2e} from the independent recording's"


def test_output_needs_grad_exactly_when_f_uses_a_tensor_that_requires_grad() -> None:
    """No such tensor (f uses y alone, even with y0 requiring grad): y* is returned without a graph. A parameter,
    directly or through a non-leaf computed from it: the output requires grad, and the gradient reaches it."""
    W0, x = contraction(3, 0)
    y0 = torch.zeros_like(x).requires_grad_(True)
    alone = fixed_point(lambda y: torch.tanh(y @ W0.T + x), y0, "implicit", tol=TOL)
    assert not alone.requires_grad and alone.grad_fn is None, "f uses y alone, yet the output has a graph"
    leaf = (2 * W0).requires_grad_(True)
    derived = leaf / 2  # a non-leaf: the walk must go through its graph to the leaf
    through = fixed_point(lambda y: torch.tanh(y @ derived.T + x), y0.detach(), "implicit", tol=TOL)
    assert through.requires_grad, "f uses a tensor computed from a parameter, yet the output has no graph"
    through.sum().backward()
    assert leaf.grad is not None and bool(leaf.grad.abs().sum() > 0), "no gradient reached the parameter"
    assert torch.equal(through.detach(), alone.detach()), "the same map gave another fixed point"


def test_backward_leaves_no_gradient_on_the_fixed_point() -> None:
    """loss.backward() also reaches y* (the recorded f's input, a leaf of the graph): that gradient is dropped,
    not kept alive beside the output. The parameter's gradient is the same as autograd.grad's."""
    W0, x = contraction(4, 1)
    W = W0.clone().requires_grad_(True)
    y = fixed_point(lambda y: torch.tanh(y @ W.T + x), torch.zeros_like(x), "implicit", tol=TOL)
    fy_node = y.grad_fn.next_functions[0][0]  # the recording of f(y*): its graph ends at y*'s AccumulateGrad
    leaves = []
    stack = [fy_node]
    while stack:
        node = stack.pop()
        if node is None:
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(child for child, _ in node.next_functions)
    (y_leaf,) = [t for t in leaves if t is not W]
    (expected,) = torch.autograd.grad(y.sum(), W, retain_graph=True)
    y.sum().backward()
    assert y_leaf.grad is None, "the backward left a gradient on y*"
    assert W.grad is not None and torch.equal(W.grad, expected), "backward() and autograd.grad() disagree"


def test_gradient_edge_probe_matches_this_torch() -> None:
    """The probe that picks how the backward keeps f(y*) (a GradientEdge where autograd.grad accepts one as an
    output, the tensor otherwise; iqa allows torch >= 2.2) says what this torch does: autograd.grad is asked
    here for the gradient of 3 y through an edge, and the module's choice, made once where an implicit output is
    first made (inside an autograd.Function's forward, with grad off), is the probe's."""
    from torch.autograd.graph import get_gradient_edge

    from iqa import grad

    y = torch.ones(3, requires_grad=True)
    try:
        (direct,) = torch.autograd.grad(get_gradient_edge(y * 3), y, torch.ones(3))
        takes_edges = torch.equal(direct, torch.full((3,), 3.0))
    except (TypeError, RuntimeError):
        takes_edges = False
    assert grad._edge_outputs() is takes_edges
    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(grad, "_EDGE_OUTPUTS", None)  # asked afresh, as at the first implicit output: grad off
        assert grad._keeps_edges() is takes_edges


@given(n=st.integers(2, 5), seed=st.integers(0, 2**31 - 1))
def test_both_ways_of_keeping_f_give_the_same_gradient(n: int, seed: int) -> None:
    """The path older torch takes (f(y*) saved as a tensor) is run here too, by switching the probe's answer off:
    the same adjoint and the same gradient, bit for bit, as through the gradient edge."""
    import pytest

    from iqa import grad

    W0, x = contraction(n, seed)
    v = torch.randn(x.shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))

    def gradient() -> Tensor:
        W = W0.clone().requires_grad_(True)
        y = fixed_point(lambda y: torch.tanh(y @ W.T + x), torch.zeros_like(x), "implicit", tol=TOL, max_iter=500)
        return torch.autograd.grad((v * y).sum(), W)[0]

    through_edge = gradient()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(grad, "_EDGE_OUTPUTS", not grad._keeps_edges())
        through_tensor = gradient()
    assert torch.equal(through_edge, through_tensor)
