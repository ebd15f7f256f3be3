"""What Anderson keeps alive changes nothing it computes.

- The tracker's cycle check keeps the last MAX_PERIOD + 1 iterates; Anderson drops them (Tracker.forget_recent)
  while no open element may be declared CYCLE at the next check. The same solve with the iterates always kept
  (forget_recent a no-op: the tracker's plain rule) must give the same statuses, steps, fallbacks, residuals
  and output, bit for bit, on maps where Anderson gives up and Picard cycles.
- The history buffers keep every stored pair in its slot. On the device path (a graph recorded, or a GPU) they
  grow with the pairs stored: never above what the pushes so far need (the next power of two, at most m), and a
  push that grows them keeps the stored pairs. On the host they hold all m slots from the start (no growth
  copies), and a solve takes over the buffers the last solve of its shape left (SPARE_BUFFERS): only slots it
  wrote are read, so a solve in buffers full of NaN gives what it gives in fresh ones, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, event, given
from hypothesis import strategies as st
from torch import Tensor

from iqa import Anderson, Status, solve
from iqa.solvers import MAX_PERIOD, STALL_STEPS, Map
from iqa.solvers.anderson import SPARE_BUFFERS, SpareBuffers, _AndersonRun, make_pairs
from iqa.solvers.result import Solution
from iqa.solvers.tracker import Tracker
from iqa.variants import resolve
from properties.strategies import Case

F64 = torch.float64


def problem(name: str, case: Case) -> tuple[Map, Tensor]:
    """The built-in ``name``'s map f(.; x) and start y0 on the case's weights and input."""
    layer = case.layer(resolve(name))
    x = case.inputs()
    return layer.fixed_point_map(x), layer.initial_point(x)


def solve_both(name, batch, tokens, dim, scale, seed, history, mixing):
    """Anderson's solve as it is, and with every iterate kept for the cycle check (forget_recent a no-op)."""
    f, y0 = problem(name, Case(batch=batch, tokens=tokens, dim=dim, dtype=F64, scale=scale, seed=seed))
    solver = Anderson(history=history, mixing=mixing)
    with torch.no_grad():
        ours = solve(f, y0, solver, tol=1e-10, max_iter=150)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Tracker, "forget_recent", lambda self: None)
            kept = solve(f, y0, solver, tol=1e-10, max_iter=150)
    return ours, kept


def assert_same(ours, kept) -> None:
    assert (ours.statuses, ours.steps, ours.fallbacks) == (kept.statuses, kept.steps, kept.fallbacks), (
        f"forgetting the cycle window changed a decision: {ours.statuses} {ours.steps} {ours.fallbacks} "
        f"against {kept.statuses} {kept.steps} {kept.fallbacks} with every iterate kept"
    )
    assert torch.equal(ours.residuals, kept.residuals) and torch.equal(ours.y, kept.y)


@given(
    name=st.sampled_from(["hopfield", "positional", "injection", "reference", "scaled", "damped"]),
    batch=st.integers(1, 3),
    tokens=st.integers(2, 6),
    dim=st.integers(2, 6),
    scale=st.floats(1.5, 3.0),
    seed=st.integers(0, 10**6),
    history=st.integers(1, 8),
    mixing=st.sampled_from([1.0, 0.5]),
)
def test_forgetting_the_cycle_window_changes_no_decision(
    name, batch, tokens, dim, scale, seed, history, mixing
) -> None:
    ours, kept = solve_both(name, batch, tokens, dim, scale, seed, history, mixing)
    event(f"statuses {sorted({s.name for s in kept.statuses})}, fallbacks {'>0' if kept.fallbacks else '0'}")
    assert_same(ours, kept)


@pytest.mark.parametrize(("name", "scale", "seed"), [("hopfield", 3.0, 3), ("positional", 2.0, 13)])
def test_forgetting_keeps_cycles_found_after_giving_up(name, scale, seed) -> None:
    """Maps (found by a search over seeds) where Anderson gives up and the tracker then declares CYCLE, which
    needs the iterates kept: the property above on cases where forgetting them too early shows."""
    ours, kept = solve_both(name, 3, 4, 4, scale, seed, 8, 1.0)
    assert Status.CYCLE in kept.statuses and kept.fallbacks > 0, (kept.statuses, kept.fallbacks)
    assert_same(ours, kept)


@given(
    m=st.integers(1, 9),
    pushes=st.integers(1, 20),
    n=st.integers(1, 5),
    store_x=st.booleans(),
    on_device=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_buffers_keep_the_pairs(m, pushes, n, store_x, on_device, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(pushes, 2, n, dtype=F64, generator=g)
    F = X + torch.randn(pushes, 2, n, dtype=F64, generator=g)
    pairs = make_pairs(X[0], m, differentiable=on_device, store_x=store_x)
    for t in range(pushes):
        pairs.push(X[t], F[t], F[t] - X[t], np.ones(2))
        capacity = pairs.F.shape[1]
        assert pairs.capacity == capacity, f"the ring counts {pairs.capacity} slots, its buffers hold {capacity}"
        # F, G and X (where kept) hold the same slots
        assert pairs.G.shape == pairs.F.shape and (pairs.X is None or pairs.X.shape == pairs.F.shape)
        needed = min(t + 1, m)
        if on_device:  # grown with the pairs
            assert needed <= capacity <= min(m, 1 << (needed - 1).bit_length()), f"{capacity} slots, {needed} pairs"
        else:  # every slot from the first push: no growth copy
            assert capacity == m, f"{capacity} host slots for a history of {m}"
        assert (pairs.X is not None) == store_x
        for age in range(needed):  # the pair pushed `age` pushes ago sits in slot (head - age) mod m
            slot = (pairs.head - age) % m
            stored_f, stored_g = torch.as_tensor(pairs.F[:, slot]), torch.as_tensor(pairs.G[:, slot])
            assert torch.equal(stored_f, F[t - age]) and torch.equal(stored_g, F[t - age] - X[t - age])
            if pairs.X is not None:
                assert torch.equal(torch.as_tensor(pairs.X[:, slot]), X[t - age])


#: Solves at cycling scales, where elements stall and give up: what the cycle-window rule has to get right.
cycling_draws = given(
    name=st.sampled_from(["hopfield", "positional", "injection", "reference"]),
    scale=st.floats(1.5, 3.0),
    seed=st.integers(0, 10**6),
    history=st.integers(2, 8),
)


def solve_cycling(name: str, scale: float, seed: int, history: int) -> Solution:
    """Anderson (history m) on a drawn three-element built-in problem at a cycling scale, 150 steps, no graph."""
    f, y0 = problem(name, Case(batch=3, tokens=4, dim=4, dtype=F64, scale=scale, seed=seed))
    with torch.no_grad():
        return solve(f, y0, Anderson(history=history), max_iter=150)


@cycling_draws
def test_forgetting_only_where_no_element_may_cycle(name, scale, seed, history) -> None:
    """The rule behind forget_recent, checked step by step: where Anderson says at step s that the next check
    (at t, the next multiple of MAX_PERIOD) can mark no element, the tracker's check at t finds every open
    element refused by may_cycle. Giving up inside the window is what makes this fail if the rule ignores the
    stall counter; the draws are at cycling scales, where elements give up."""
    said: dict[int, bool] = {}
    checked: dict[int, list[bool]] = {}
    rule, check = _AndersonRun.may_cycle_at_next_check, Tracker.check_cycles

    def recording_rule(self: _AndersonRun, step: int) -> bool:
        said[step] = rule(self, step)
        return said[step]

    def recording_check(self: Tracker, step: int) -> None:
        may = self.may_cycle if self.may_cycle is not None else np.ones(len(self.statuses), dtype=bool)
        checked[step] = [s is None and bool(m) for s, m in zip(self.statuses, may)]
        check(self, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_AndersonRun, "may_cycle_at_next_check", recording_rule)
        patch.setattr(Tracker, "check_cycles", recording_check)
        solution = solve_cycling(name, scale, seed, history)
    event(f"fallbacks {'>0' if solution.fallbacks else '0'}")
    for step, may in said.items():
        t = (step // MAX_PERIOD + 1) * MAX_PERIOD
        if not may and t in checked:
            assert not any(checked[t]), f"step {step} said no element may cycle at {t}, but {checked[t]} may"


@cycling_draws
def test_every_forgetting_step_is_one_where_no_element_may_cycle(name, scale, seed, history) -> None:
    """Anderson does not evaluate the rule at every step: once it said no element may be CYCLE at the next check,
    it forgets until that check without asking again. Each time the tracker forgets (at step s), the rule taken
    afresh from the solve's state must say so: no open element is on Picard's trajectory, and none has a stall
    counter that can reach STALL_STEPS by the step before the check. A skip that outlived its window forgets
    where an element may give up and cycle; the draws are at cycling scales, where elements give up."""
    runs: list[_AndersonRun] = []
    start, forget = _AndersonRun.__init__, Tracker.forget_recent
    forgotten: list[int] = []

    def recording_start(self: _AndersonRun, *args, **kwargs) -> None:
        start(self, *args, **kwargs)
        runs.append(self)

    def checked_forget(self: Tracker) -> None:
        (run,) = runs
        step = len(self.abs_history)
        check = (step // MAX_PERIOD + 1) * MAX_PERIOD
        may = run.gave_up | ~run.deviated | (run.stalled + (check - 1 - step) >= STALL_STEPS)
        assert not (may & self.open).any(), f"forgot at step {step}, but {may & self.open} may be CYCLE at {check}"
        forgotten.append(step)
        forget(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_AndersonRun, "__init__", recording_start)
        patch.setattr(Tracker, "forget_recent", checked_forget)
        solve_cycling(name, scale, seed, history)
    event(f"forgot at {'some' if forgotten else 'no'} steps")
    assume(forgotten)  # a solve that never forgot checked nothing


@given(name=st.sampled_from(["hopfield", "positional", "injection"]), seed=st.integers(0, 10**6))
def test_accelerated_solve_keeps_one_iterate_for_the_cycle_check(name, seed) -> None:
    """The memory the rule saves: once every element takes accelerated steps (from step 2) and none can give up
    before the next check, the tracker holds only the iterate it was just given, not MAX_PERIOD + 1 of them."""
    f, y0 = problem(name, Case(batch=2, tokens=4, dim=4, dtype=F64, scale=0.5, seed=seed))
    kept: list[int] = []
    observe = Tracker.observe

    def recording(self: Tracker, *args, **kwargs):
        out = observe(self, *args, **kwargs)
        kept.append(len(self.recent))
        return out

    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(Tracker, "observe", recording)
        solution = solve(f, y0, Anderson(), tol=1e-12, max_iter=100)
    assume(solution.fallbacks == 0 and len(kept) > MAX_PERIOD)  # every element accelerated throughout
    assert max(kept[2:]) == 1, f"iterates kept per step: {kept}"


@given(
    name=st.sampled_from(["hopfield", "positional", "injection", "damped"]),
    batch=st.integers(1, 3),
    tokens=st.integers(2, 6),
    dim=st.integers(2, 6),
    scale=st.floats(0.5, 3.0),
    seed=st.integers(0, 10**6),
    history=st.integers(2, 6),
    mixing=st.sampled_from([1.0, 0.7]),
    dtype=st.sampled_from([F64, torch.float32]),
)
def test_a_solve_in_taken_over_buffers_reads_only_what_it_wrote(
    name, batch, tokens, dim, scale, seed, history, mixing, dtype
) -> None:
    """The same solve in fresh buffers and in the buffers the first one left, after filling them with NaN: the
    same output, residuals, statuses, steps and fallbacks, bit for bit; and the second solve did take them over.
    The set left holds F and G, and X only where the mix needs it (mixing < 1)."""
    f, y0 = problem(name, Case(batch=batch, tokens=tokens, dim=dim, dtype=dtype, scale=scale, seed=seed))
    solver = Anderson(history=history, mixing=mixing)
    SPARE_BUFFERS.clear()
    with torch.no_grad():
        fresh = solve(f, y0, solver, tol=1e-10, max_iter=60)
        (left,) = SPARE_BUFFERS._kept.values()
        assert len(left) == (2 if mixing == 1.0 else 3), f"{len(left)} buffers kept at mixing {mixing}"
        for buffer in left:
            buffer.fill(np.nan)
        reused = solve(f, y0, solver, tol=1e-10, max_iter=60)
    (again,) = SPARE_BUFFERS._kept.values()
    assert all(a is b for a, b in zip(again, left, strict=True)), "the second solve allocated its own buffers"
    assert (reused.statuses, reused.steps, reused.fallbacks) == (fresh.statuses, fresh.steps, fresh.fallbacks)
    assert torch.equal(reused.residuals, fresh.residuals) and torch.equal(reused.y, fresh.y)


def test_spare_buffers_keep_one_set_within_their_limit() -> None:
    spare = SpareBuffers(limit=64)
    small, other = (np.zeros(4), np.zeros(4)), (np.zeros(2),)
    assert spare.take(("a",)) is None  # nothing kept yet
    spare.keep(("a",), small)
    spare.keep(("b",), other)  # replaces the first set: one set at most
    assert spare.take(("a",)) is None and spare.take(("b",)) is other
    assert spare.take(("b",)) is None  # taken: no longer kept
    spare.keep(("c",), (np.zeros(9),))  # 72 bytes > 64: not kept
    assert spare.take(("c",)) is None
    spare.keep(("d",), (np.zeros(8),))  # 64 bytes: kept
    assert spare.take(("d",)) is not None
