"""Solvers and backward modes are objects with their own options, accepted at every entry point.

An option belongs to one solver (Picard: damping; Anderson: history, mixing,
ridge) or one backward mode (implicit: adjoint; phantom: phantom_steps,
phantom_damping). Giving it to another is an error naming the option and its
owner at every entry point (solve, fixed_point, the layer, a variant's make,
AdjointOptions and the adjoint's inheritance), never a silent no-op. The
keyword forms and the objects give bit-for-bit the same solves, and each
option is used: the solves match loops written here from the formulas.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from torch import Tensor

from iqa import (
    AdjointOptions,
    Anderson,
    Implicit,
    ImplicitQueryAttention,
    Map,
    Phantom,
    Picard,
    Solution,
    Solver,
    SolveRecord,
    Tracked,
    Unrolled,
    fixed_point,
    solve,
)
from iqa.solvers import StopMode
from iqa.variants import resolve

F64 = torch.float64

#: A valid value of each solver option, and the solver class it belongs to.
SOLVER_OPTIONS: dict[str, tuple[type[Solver], Any]] = {
    "damping": (Picard, 0.5),
    "history": (Anderson, 3),
    "memory": (Anderson, 3),  # history's old name
    "mixing": (Anderson, 0.5),
    "ridge": (Anderson, 1e-8),
}
NAMES = {Picard: "picard", Anderson: "anderson"}


def contraction(seed: int, batch: int = 2, n: int = 4, q: float = 0.8) -> tuple[Map, Tensor]:
    """y -> tanh(W y + b) with ||W||_2 = q < 1 (a contraction), and a start."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, dtype=F64, generator=g)
    W = q * W / torch.linalg.matrix_norm(W, ord=2)
    b = torch.randn(batch, n, dtype=F64, generator=g)
    return (lambda y: torch.tanh(y @ W.T + b)), torch.randn(batch, n, dtype=F64, generator=g)


foreign = st.sampled_from(
    [(option, other) for option, (owner, _) in SOLVER_OPTIONS.items() for other in NAMES if other is not owner]
)


def owner_message(option: str) -> str:
    owner = SOLVER_OPTIONS[option][0]
    return rf"{option} is an option of {owner.__name__}\b.*not of"


# --- an option of another solver is an error at every entry point --------------------------------------------------


@given(pair=foreign)
def test_solve_rejects_another_solvers_option(pair: tuple[str, type[Solver]]) -> None:
    option, chosen = pair
    value = SOLVER_OPTIONS[option][1]
    f, y0 = contraction(0)
    with pytest.raises(ValueError, match=owner_message(option)):
        solve(f, y0, NAMES[chosen], **{option: value})
    with pytest.raises(ValueError, match=owner_message(option)):
        fixed_point(f, y0, "implicit", method=NAMES[chosen], **{option: value})
    with pytest.raises(ValueError, match=owner_message(option)):
        ImplicitQueryAttention(3, solver=NAMES[chosen], **{option: value})
    with pytest.raises(ValueError, match=owner_message(option)):
        resolve("hopfield").make(3, solver=NAMES[chosen], **{option: value})


@given(option=st.sampled_from(["history", "memory", "mixing", "ridge"]))
def test_layer_without_solver_is_picard_and_rejects_anderson_options(option: str) -> None:
    """A solver option without solver= means Picard (as damping= does), so Anderson's options are errors."""
    with pytest.raises(ValueError, match=owner_message(option)):
        ImplicitQueryAttention(3, **{option: SOLVER_OPTIONS[option][1]})
    assert ImplicitQueryAttention(3, damping=0.5).solver == Picard(damping=0.5)


def test_adjoint_options_reject_another_solvers_option() -> None:
    """AdjointOptions.damping is Picard's: an error with an Anderson adjoint, named or inherited from the forward."""
    with pytest.raises(ValueError, match=owner_message("damping")):
        AdjointOptions(method="anderson", damping=0.5)
    with pytest.raises(ValueError, match=r"damping= given beside the solver object"):
        AdjointOptions(method=Picard(), damping=0.5)
    f, y0 = contraction(1)
    inheriting = AdjointOptions(damping=0.5)
    with pytest.raises(ValueError, match=owner_message("damping")):
        fixed_point(f, y0, "implicit", method="anderson", adjoint=inheriting)
    with pytest.raises(ValueError, match=owner_message("damping")):
        ImplicitQueryAttention(3, solver=Anderson(), backward="implicit", adjoint=inheriting)


@pytest.mark.parametrize(
    ("backward", "options", "owner"),
    [
        ("implicit", {"phantom_steps": 2}, "phantom"),
        ("implicit", {"phantom_damping": 0.5}, "phantom"),
        ("unrolled", {"phantom_steps": 2}, "phantom"),
        ("phantom", {"adjoint": AdjointOptions(tol=1e-9)}, "implicit"),
        ("unrolled", {"adjoint": AdjointOptions(tol=1e-9)}, "implicit"),
    ],
)
def test_backward_options_belong_to_their_mode(backward: str, options: dict[str, Any], owner: str) -> None:
    (option,) = options
    f, y0 = contraction(2)
    message = rf"{option} is an option of the {owner} backward"
    with pytest.raises(ValueError, match=message):
        fixed_point(f, y0, backward, **options)
    with pytest.raises(ValueError, match=message):
        ImplicitQueryAttention(3, solver="picard", backward=backward, **options)


def test_options_beside_an_object_are_errors() -> None:
    f, y0 = contraction(3)
    with pytest.raises(ValueError, match=r"history= given beside the solver object"):
        solve(f, y0, Anderson(), history=4)
    with pytest.raises(ValueError, match=r"damping= given beside the solver object"):
        ImplicitQueryAttention(3, solver=Picard(), damping=0.5)
    with pytest.raises(ValueError, match=r"phantom_steps= given beside the backward object"):
        fixed_point(f, y0, Phantom(), phantom_steps=2)
    with pytest.raises(ValueError, match=r"old name of history="):
        solve(f, y0, "anderson", memory=4, history=4)


def test_unknown_options_are_type_errors() -> None:
    f, y0 = contraction(4)
    with pytest.raises(TypeError, match=r"unknown option 'momentum' for Anderson \(its options: history, mixing"):
        solve(f, y0, "anderson", momentum=0.9)
    with pytest.raises(TypeError, match=r"solver must be a name"):
        solve(f, y0, 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"adjoint must be an iqa.AdjointOptions"):
        Implicit(adjoint=1e-8)  # type: ignore[arg-type]


# --- objects and keyword forms are the same solves, and every option is used ----------------------------------------


def same(a: Solution, b: Solution) -> bool:
    return (
        torch.equal(a.y, b.y)
        and torch.equal(a.residuals, b.residuals)
        and (a.statuses, a.steps, a.fallbacks, a.method) == (b.statuses, b.steps, b.fallbacks, b.method)
    )


@given(
    seed=st.integers(0, 2**20),
    damping=st.floats(0.25, 1.0),
    history=st.integers(1, 6),
    mixing=st.sampled_from([1.0, 0.75, 0.5]),
)
def test_objects_and_keywords_are_the_same_solve(seed: int, damping: float, history: int, mixing: float) -> None:
    f, y0 = contraction(seed)
    kw = dict(tol=1e-12, max_iter=60)
    assert same(solve(f, y0, Picard(damping=damping), **kw), solve(f, y0, "picard", damping=damping, **kw))
    anderson = solve(f, y0, Anderson(history=history, mixing=mixing), **kw)
    assert same(anderson, solve(f, y0, "anderson", history=history, mixing=mixing, **kw))
    assert same(anderson, solve(f, y0, "anderson", memory=history, mixing=mixing, **kw))
    record = SolveRecord()
    y = fixed_point(f, y0, Unrolled(), method=Anderson(history=history, mixing=mixing), record=record, **kw)
    assert record.forward is not None and same(record.forward, anderson) and torch.equal(y, anderson.y)


@given(seed=st.integers(0, 2**20), damping=st.floats(0.25, 1.0), steps=st.integers(1, 30))
def test_picard_damping_is_used(seed: int, damping: float, steps: int) -> None:
    """Picard(damping=a) makes exactly the steps y <- y + a (f(y) - y) of a loop written here."""
    f, y0 = contraction(seed)
    sol = solve(f, y0, Picard(damping=damping), tol=1e-300, max_iter=steps + 1)
    iterates = [y0]
    for _ in range(steps):
        y = iterates[-1]
        iterates.append(y + damping * (f(y) - y) if damping != 1.0 else f(y))
    note(f"statuses={sol.statuses} steps={sol.steps}")
    for b, n in enumerate(sol.steps):
        # the iterate evaluated at the element's last step (an exact fixed point in floats may end it early)
        assert torch.equal(sol.y[b], iterates[n - 1][b])
    assert max(sol.steps) == steps + 1 or sol.converged


@given(seed=st.integers(0, 2**20), mixing=st.sampled_from([1.0, 0.75, 0.5, 0.25]))
def test_anderson_history_one_is_damped_picard(seed: int, mixing: float) -> None:
    """With one pair there is nothing to mix: Anderson(history=1, mixing=b) is Picard(damping=b) bit for bit."""
    f, y0 = contraction(seed)
    kw = dict(tol=1e-10, max_iter=80)
    a = solve(f, y0, Anderson(history=1, mixing=mixing), **kw)
    p = solve(f, y0, Picard(damping=mixing), **kw)
    assert torch.equal(a.residuals, p.residuals) and torch.equal(a.y, p.y) and a.steps == p.steps


@dataclasses.dataclass(frozen=True)
class Counting(Solver):
    """A test double: Picard that counts its runs (passed in as an object, nothing patched)."""

    runs: list[int] = dataclasses.field(default_factory=list, compare=False)

    name = "counting"

    def run(self, f: Map, y0: Tensor, *, tol: float, max_iter: int, stop: StopMode, keep_iterates: bool) -> Solution:
        self.runs.append(max_iter)
        return Picard().run(f, y0, tol=tol, max_iter=max_iter, stop=stop, keep_iterates=keep_iterates)


def test_a_solver_object_reaches_every_solve() -> None:
    """A Solver subclass given to the layer runs the forward and (inherited) the implicit adjoint solve."""
    counting = Counting()
    layer = resolve("hopfield").make(3, solver=counting, tol=1e-10, max_iter=50, backward="implicit")
    x = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(5))
    y = layer(x)
    assert layer.last_solution is not None and layer.last_solution.method == "picard"
    torch.autograd.grad(y.sum(), list(layer.parameters()))
    assert counting.runs == [50, 50]
    layer = resolve("hopfield").make(3, solver="picard", backward=Implicit(adjoint=counting), tol=1e-10)
    torch.autograd.grad(layer(x).sum(), list(layer.parameters()))
    assert counting.runs == [50, 50, 200]  # only the adjoint: its max_iter is the layer's default


def test_backward_objects_equal_their_keyword_forms() -> None:
    f, y0 = contraction(6)
    W = torch.zeros(4, 4, dtype=F64, requires_grad=True)

    def g(y: Tensor) -> Tensor:
        return f(y) + y @ W.T

    kw = dict(tol=1e-12, max_iter=200)
    for obj, keywords in [
        (Phantom(steps=3, damping=0.5), dict(backward="phantom", phantom_steps=3, phantom_damping=0.5)),
        (Implicit(adjoint=AdjointOptions(tol=1e-11)), dict(backward="implicit", adjoint=AdjointOptions(tol=1e-11))),
        (Implicit(adjoint=Anderson()), dict(backward="implicit", adjoint=AdjointOptions(method="anderson"))),
        (Implicit(adjoint=Picard(damping=0.5)), dict(backward="implicit", adjoint=AdjointOptions(damping=0.5))),
    ]:
        (a,) = torch.autograd.grad(fixed_point(g, y0, obj, **kw).sum(), W)
        (b,) = torch.autograd.grad(fixed_point(g, y0, **keywords, **kw).sum(), W)  # type: ignore[arg-type]
        assert torch.equal(a, b), obj
    assert ImplicitQueryAttention(3, backward="phantom", phantom_steps=2).backward == Phantom(steps=2)


# --- the named type of a tracked forward -------------------------------------------------------------------------


@given(mode=st.sampled_from(["seed", "picard", "anderson"]), n_iters=st.integers(0, 6))
def test_track_returns_a_tracked(mode: str, n_iters: int) -> None:
    """layer(x, track=True) is a Tracked (y, iterates) that unpacks as a pair; y is the untracked output and
    the iterates are y0 and every step (seed mode) or every iterate f was evaluated at (solve mode)."""
    options: dict[str, Any] = {"n_iters": n_iters} if mode == "seed" else {"solver": mode, "tol": 1e-8}
    layer = resolve("hopfield").make(3, **options)
    x = torch.randn(2, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(n_iters))
    with torch.no_grad():
        out = layer(x, track=True)
        plain = layer(x)
    assert isinstance(out, Tracked)
    y, history = out
    assert torch.equal(y, plain) and y is out.y and history is out.iterates
    if mode == "seed":
        assert len(history) == n_iters + 1 and torch.equal(history[-1], y) and torch.equal(history[0], x)
    else:
        assert layer.last_solution is not None and len(history) == layer.last_solution.n_steps


@pytest.mark.parametrize("method", ["picard", "anderson"])
def test_a_one_dimensional_start_is_one_scalar_per_element(method: str) -> None:
    """y0 of shape [B] (one scalar per batch element) is solved as [B, 1] and read back as [B]: the solution,
    every kept iterate and the report equal, bit for bit, those of the same problem posed as [B, 1]."""
    y0 = torch.tensor([0.0, 1.0, -2.0], dtype=F64)
    flat = solve(torch.cos, y0, method, tol=1e-12, keep_iterates=True)
    column = solve(torch.cos, y0[:, None], method, tol=1e-12, keep_iterates=True)
    assert flat.y.shape == y0.shape and torch.equal(flat.y, column.y[:, 0])
    assert flat.iterates is not None and column.iterates is not None
    assert len(flat.iterates) == len(column.iterates) > 1
    assert all(a.shape == y0.shape and torch.equal(a, b[:, 0]) for a, b in zip(flat.iterates, column.iterates))
    assert flat.statuses == column.statuses and flat.steps == column.steps
    assert torch.equal(flat.residuals, column.residuals)


def test_solve_defaults_are_the_documented_ones() -> None:
    """solve(f, y0) is Picard with tol 1e-6, max_iter 200, the absolute stop, no kept iterates: on a map slow
    enough to run out of steps (y -> 0.9999 y from 1 needs ~46 000 steps to reach 1e-6) and on one that
    converges, the default call and the explicit one give the same report and point."""
    slow = solve(lambda y: 0.9999 * y, torch.ones(2, 3, dtype=F64))
    assert list(slow.steps) == [200, 200] and not slow.converged
    f, y0 = contraction(seed=0)
    default = solve(f, y0)
    explicit = solve(f, y0, Picard(), tol=1e-6, max_iter=200, stop="abs", keep_iterates=False)
    assert default.iterates is None
    assert default.statuses == explicit.statuses and default.steps == explicit.steps
    assert torch.equal(default.y, explicit.y) and torch.equal(default.residuals, explicit.residuals)
    one_step_short = solve(f, y0, tol=1e-6, max_iter=max(default.steps) - 1)
    assert float(default.residual.max()) <= 1e-6 < float(one_step_short.residual.max())
