"""iqa: a property-based test suite for implicit (fixed-point) attention layers.

The public contract: the seed's layer and its base class, the solvers (objects
with their own options: :class:`Picard`, :class:`Anderson`) and their reports,
the fixed-point operator with its backward modes (:class:`Unrolled`,
:class:`Implicit`, :class:`Phantom`), the analysis tools and the variant
registry. :data:`Map` is the type of a fixed-point map f, batched over dimension 0.
"""

from iqa import analysis
from iqa.grad import (
    BACKWARD_MODES,
    AdjointOptions,
    Backward,
    BackwardConvergenceWarning,
    Implicit,
    IQAWarning,
    NonConvergedForwardWarning,
    Phantom,
    SolveRecord,
    Unrolled,
    fixed_point,
)
from iqa.layer import FixedPointLayer, ImplicitQueryAttention, Tracked
from iqa.runtime import configure_threads
from iqa.solvers import Anderson, ConvergenceError, Map, Picard, Solution, Solver, Status, solve
from iqa.variants import Domain, Tag, Variant

__version__ = "0.1.0"

__all__ = [
    "BACKWARD_MODES",
    "AdjointOptions",
    "Anderson",
    "Backward",
    "BackwardConvergenceWarning",
    "ConvergenceError",
    "Domain",
    "FixedPointLayer",
    "IQAWarning",
    "Implicit",
    "ImplicitQueryAttention",
    "Map",
    "NonConvergedForwardWarning",
    "Phantom",
    "Picard",
    "Solution",
    "SolveRecord",
    "Solver",
    "Status",
    "Tag",
    "Tracked",
    "Unrolled",
    "Variant",
    "analysis",
    "configure_threads",
    "fixed_point",
    "solve",
]
