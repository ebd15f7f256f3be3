"""Train one variant on every task and run of a configuration: the data behind its page and its metrics."""

from __future__ import annotations

from typing import Any

import iqa
from iqa.train.config import DEFAULT, QUICK, TrainConfig
from iqa.train.loop import train_run
from iqa.train.metrics import page_metrics
from iqa.train.tasks import Task
from iqa.variants import Variant, resolve
from iqa.versions import package_versions


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**61:
        raise ValueError(f"seed must be an integer in [0, 2**61), got {seed!r}")
    return seed


def versions() -> dict[str, str]:
    return {"iqa": iqa.__version__, **package_versions("torch", "numpy", "matplotlib")}


def train_variant(
    variant: Variant | str, config: TrainConfig = DEFAULT, seed: int = 0, command: str = ""
) -> dict[str, Any]:
    """Every run of every task of ``config`` for ``variant``: the content of its ``history.json``."""
    check_seed(seed)
    resolved = resolve(variant)
    runs = []
    for name in config.tasks:
        task = Task(name, config.tokens, config.dim, seed)
        runs += [train_run(resolved, task, run, config, seed) for run in config.runs]
    return {
        "variant": resolved.name,
        "description": resolved.description,
        "seed": seed,
        "command": command,
        "versions": versions(),
        "config": config.as_dict(),
        "runs": runs,
    }


def training_metrics(variant: Variant | str, *, seed: int = 0, quick: bool = False) -> dict[str, float | None]:
    """The regression metrics of ``variant``'s training (``train.<task>.<run>.<metric>``), for ``iqa regress``.

    The same numbers as the page's ``metrics.json`` for the same seed and ``--quick`` setting.
    """
    return page_metrics(train_variant(variant, QUICK if quick else DEFAULT, seed)["runs"])
