"""Picard iteration y <- (1 - a) y + a f(y), the damping a in (0, 1] (a = 1: y <- f(y))."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from iqa.solvers.options import Solver
from iqa.solvers.result import Map, Solution, StopMode
from iqa.solvers.tracker import Tracker, freeze, relaxed
from iqa.validation import check_unit_interval


@dataclass(frozen=True)
class Picard(Solver):
    """Damped Picard iteration: y <- y + damping (f(y) - y), exactly f(y) at damping = 1.

    Converges where f contracts (locally: where rho(J*) < 1 for the damped map
    (1 - a) I + a J*); each step costs one evaluation of f and two norms.
    """

    damping: float = 1.0

    name = "picard"
    relaxation = "damping"

    def __post_init__(self) -> None:
        check_unit_interval("damping", self.damping)

    def run(self, f: Map, y0: Tensor, *, tol: float, max_iter: int, stop: StopMode, keep_iterates: bool) -> Solution:
        track = Tracker(y0, tol, stop, keep_iterates)
        batch = y0.shape[0]
        y = y0
        step = 0
        for step in range(1, max_iter + 1):
            fy = f(y)
            track.observe(y, fy, step)
            if track.n_decided == batch or step == max_iter:
                break
            y_next = relaxed(y, fy, self.damping)
            y = freeze(track.decided, y, y_next) if track.any_decided else y_next
        track.finish(step)
        return track.solution(y, self.name)
