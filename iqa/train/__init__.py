"""``iqa train``: does a variant stay convergent, and do its gradients still train, while it learns?

Small modules with one idea each:

- :mod:`~iqa.train.tasks`: deterministic synthetic tasks (associative recall, set-to-set regression);
- :mod:`~iqa.train.config`: the runs (backward mode, Jacobian-regularisation weight) and sizes;
- :mod:`~iqa.train.loop`: one training run; :mod:`~iqa.train.jacreg`: the Hutchinson regulariser;
  :mod:`~iqa.train.optim`: Adam;
- :mod:`~iqa.train.recorder` and :mod:`~iqa.train.reference`: the diagnostics against a dense reference;
- :mod:`~iqa.train.metrics`: the regression metrics and their declarations (:data:`METRICS`);
- :mod:`~iqa.train.findings`, :mod:`~iqa.train.plots`, :mod:`~iqa.train.page`: the page;
- :mod:`~iqa.train.session` and :mod:`~iqa.train.command`: training a variant, and the CLI.
"""

from iqa.train.command import configure_parser, main
from iqa.train.config import DEFAULT, QUICK, Run, TrainConfig
from iqa.train.metrics import METRICS, MetricSpec, page_metrics
from iqa.train.session import train_variant, training_metrics

__all__ = [
    "DEFAULT",
    "METRICS",
    "QUICK",
    "MetricSpec",
    "Run",
    "TrainConfig",
    "configure_parser",
    "main",
    "page_metrics",
    "train_variant",
    "training_metrics",
]
