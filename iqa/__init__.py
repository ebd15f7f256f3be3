"""iqa: a property-based test suite for implicit (fixed-point) attention layers.

The public contract (see DESIGN.md): the seed's layer, the solvers and their
reports, the fixed-point operator with its backward modes, the analysis tools
and the variant registry.
"""

from iqa import analysis
from iqa.grad import (
    BACKWARD_MODES,
    AdjointOptions,
    BackwardConvergenceWarning,
    IQAWarning,
    NonConvergedForwardWarning,
    SolveRecord,
    fixed_point,
)
from iqa.layer import FixedPointLayer, ImplicitQueryAttention
from iqa.runtime import configure_threads
from iqa.solvers import ConvergenceError, Solution, Status, solve
from iqa.variants import Tag, Variant

__version__ = "0.1.0"

__all__ = [
    "BACKWARD_MODES",
    "AdjointOptions",
    "BackwardConvergenceWarning",
    "ConvergenceError",
    "FixedPointLayer",
    "IQAWarning",
    "ImplicitQueryAttention",
    "NonConvergedForwardWarning",
    "Solution",
    "SolveRecord",
    "Status",
    "Tag",
    "Variant",
    "analysis",
    "configure_threads",
    "fixed_point",
    "solve",
]
