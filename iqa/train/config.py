"""What a training run is made of: the runs per task, their sizes and the optimiser.

A *run* is one backward mode with one Jacobian-regularisation weight gamma,
trained from the same initial weights, on the same batches, with the same
optimiser as every other run of its task (:class:`TrainConfig`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from iqa.grad import BACKWARD_MODES
from iqa.train.tasks import TASKS


@dataclass(frozen=True)
class Run:
    """One backward mode, optionally Jacobian-regularised with weight ``gamma``."""

    mode: str
    gamma: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in BACKWARD_MODES:
            raise ValueError(f"unknown backward mode {self.mode!r}; choose one of {', '.join(BACKWARD_MODES)}")
        if not self.gamma >= 0:
            raise ValueError(f"gamma must be >= 0, got {self.gamma!r}")

    @property
    def label(self) -> str:
        """``implicit`` or ``implicit+jr`` (regularised)."""
        return self.mode + ("+jr" if self.gamma > 0 else "")


@dataclass(frozen=True)
class TrainConfig:
    """Sizes, solver options and optimiser of a training page (all runs of all tasks share them).

    ``unrolled_steps`` is T, the most Picard steps the unrolled mode differentiates through (it stops
    earlier once the residual is below ``tol``, so with T large enough it is unrolled to convergence);
    ``phantom`` is (k, lambda). The diagnostics of :mod:`iqa.train.recorder` run every
    ``record_every`` steps and at the last step.
    """

    tasks: tuple[str, ...] = TASKS
    runs: tuple[Run, ...] = (Run("unrolled"), Run("implicit"), Run("phantom"), Run("implicit", 0.5))
    tokens: int = 8
    dim: int = 4
    batch: int = 8
    heldout: int = 8
    steps: int = 80
    lr: float = 0.1
    weight_scale: float = 1.0
    solver: str = "picard"
    tol: float = 1e-6
    max_iter: int = 100
    unrolled_steps: int = 100
    phantom: tuple[int, float] = (5, 0.5)
    record_every: int = 4
    reference_tol: float = 1e-12
    reference_max_iter: int = 500

    def __post_init__(self) -> None:
        for name in self.tasks:
            if name not in TASKS:
                raise ValueError(f"unknown task {name!r}; choose among {', '.join(TASKS)}")
        for field in ("tokens", "dim", "batch", "heldout", "steps", "max_iter", "unrolled_steps", "record_every"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field} must be an integer >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if len({run.label for run in self.runs}) != len(self.runs):
            raise ValueError("two runs have the same label (mode and whether gamma > 0)")

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["runs"] = [{"mode": r.mode, "gamma": r.gamma} for r in self.runs]
        out["tasks"] = list(self.tasks)
        out["phantom"] = list(self.phantom)
        return out


#: The page's configuration: 2 tasks x 4 runs x 80 updates at lr 0.1, strong enough that several built-ins
#: drift past rho(J*) = 1 without regularisation; about 25 s of one core per variant (measured: reference).
DEFAULT = TrainConfig()
#: ``--quick``: one task, three runs (unrolled, implicit, implicit regularised), 12 updates.
QUICK = TrainConfig(
    tasks=("regression",), runs=(Run("unrolled"), Run("implicit"), Run("implicit", 0.5)), steps=12, record_every=4
)
