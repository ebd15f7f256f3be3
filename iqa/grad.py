"""Backward modes for a fixed point y* = f(y*, theta): :class:`Unrolled`, :class:`Implicit`, :class:`Phantom`.

Each mode is a frozen dataclass with its own options; the names "unrolled",
"implicit" and "phantom" are shorthands (with ``adjoint=``, ``phantom_steps=``
and ``phantom_damping=`` as keywords of :func:`fixed_point` and the layers; an
option of another mode is an error naming the mode it belongs to).

- ``unrolled``: autograd records every solver step (memory grows with steps).
- ``implicit`` (``Implicit(adjoint=AdjointOptions(...))``): the solve records nothing; the backward solves the adjoint
  fixed point g = v + J^T g (J = df/dy at y*, v = dL/dy*) and then carries
  g^T df/dtheta through one recorded application of f to every tensor f uses.
  This is dL/dtheta = v^T (I - J)^{-1} df/dtheta, at a memory cost that does not
  depend on the number of forward steps.
- ``phantom`` (``Phantom(steps=k, damping=lam)``): k damped steps z <- (1 - lam) z + lam f(z) from the detached y*
  are recorded; with k = 1, lam = 1 this is the Jacobian-free gradient
  v^T df/dtheta. It approximates (I - J)^{-1} by lam sum_{i<k} ((1 - lam) I + lam J)^i.

In the implicit and phantom modes the forward value is y* itself, and the path
through y0 drops out (the gradient with respect to y0 is zero), as it does at a
unique fixed point.

The implicit backward reports like the forward: its adjoint Solution (whose
residual is ||(I - J^T) g - v|| / ||v + J^T g|| at the returned g) goes to
``record.backward``; an adjoint solve that does not converge warns
(:class:`BackwardConvergenceWarning`) or raises :class:`ConvergenceError`; a
gradient taken after a forward solve that did not converge warns
(:class:`NonConvergedForwardWarning`). Double backward through the implicit mode
raises (the adjoint solve is not itself differentiated); the unrolled and
phantom modes are plain autograd graphs and support it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.autograd.graph import GradientEdge, get_gradient_edge

from iqa.solvers import SHORTHANDS, ConvergenceError, Map, Solution, Solver, as_solver, solve
from iqa.solvers.options import check_solve_options, option_error
from iqa.validation import all_finite, check_positive_int, check_unit_interval

BACKWARD_MODES = ("unrolled", "implicit", "phantom")
#: Keywords of :func:`fixed_point` (and the layers) that every solve has; every other keyword is the solver's.
SOLVE_KEYWORDS = ("tol", "max_iter", "stop", "raise_on_failure", "keep_iterates")


class IQAWarning(UserWarning):
    """Base class of iqa's warnings."""


class BackwardConvergenceWarning(IQAWarning):
    """The adjoint solve of an implicit backward did not converge: the gradient is inexact."""


class NonConvergedForwardWarning(IQAWarning):
    """An implicit or phantom gradient was taken at a point that is not a fixed point."""


@dataclass
class SolveRecord:
    """Where :func:`fixed_point` leaves the Solutions of its forward and backward solves."""

    forward: Solution | None = None
    backward: Solution | None = None


@dataclass(frozen=True)
class AdjointOptions:
    """How the implicit backward solves g = v + J^T g.

    ``method`` is a solver object or name; ``None`` fields take the forward
    solve's value. Without a method, or with the forward's method by name, the
    adjoint uses the forward's solver with its options (Picard's ``damping``,
    Anderson's ``history``/``mixing``/``ridge``): the adjoint iteration has the
    same linearization as the forward one at y*, so it converges where the
    forward iteration converges locally, at the same rate rho(J*), and a forward
    that needed damping needs it here too. ``damping`` overrides Picard's (an
    error for any other solver). The stop mode is relative,
    ||g - v - J^T g|| / ||v + J^T g|| <= tol, so that the accuracy of the
    gradient does not depend on the scale of the loss.
    """

    method: str | Solver | None = None
    tol: float | None = None
    max_iter: int | None = None
    damping: float | None = None
    stop: str = "rel"
    raise_on_failure: bool | None = None

    def __post_init__(self) -> None:
        method = self.method
        if method is not None and not isinstance(method, Solver) and method not in SHORTHANDS:
            raise ValueError(
                f"unknown adjoint method {method!r}; choose one of {', '.join(SHORTHANDS)} or a solver object"
            )
        check_solve_options(self.tol, self.max_iter, self.stop, prefix="adjoint ")
        if self.damping is None:
            return
        check_unit_interval("adjoint damping", self.damping)
        if isinstance(method, Solver):
            raise ValueError(f"adjoint damping= given beside the solver object {method!r}: set it in the object")
        if isinstance(method, str) and "damping" not in SHORTHANDS[method].option_names():
            raise option_error("damping", SHORTHANDS[method], " (the adjoint's method)")

    def solver(self, forward: Solver) -> Solver:
        """The adjoint's solver, given the forward's."""
        method = self.method
        if isinstance(method, Solver):
            return method
        base = forward if method is None or method == forward.name else SHORTHANDS[method]()
        if self.damping is None:
            return base
        if "damping" not in base.option_names():
            raise option_error("damping", type(base), " (AdjointOptions.damping: the adjoint inherits the forward's)")
        return dataclasses.replace(base, damping=self.damping)  # type: ignore[type-var]


class Backward:
    """Base of the backward modes (frozen dataclasses whose fields are their options)."""

    name: ClassVar[str] = ""


@dataclass(frozen=True)
class Unrolled(Backward):
    """Autograd through every solver step: exact for the iterate returned, memory grows with the steps."""

    name = "unrolled"


@dataclass(frozen=True)
class Implicit(Backward):
    """The adjoint fixed point g = v + J^T g, solved as ``adjoint`` says (an AdjointOptions, a solver
    object or a solver name; None: the forward's solver and tolerance)."""

    adjoint: AdjointOptions | Solver | str | None = None

    name = "implicit"

    def __post_init__(self) -> None:
        adjoint = self.adjoint
        if adjoint is None or isinstance(adjoint, (Solver, str)):
            object.__setattr__(self, "adjoint", AdjointOptions(method=adjoint))
        elif not isinstance(adjoint, AdjointOptions):
            raise TypeError(
                f"adjoint must be an iqa.AdjointOptions, a solver object or a solver name, got {type(adjoint).__name__}"
            )

    @property
    def options(self) -> AdjointOptions:
        assert isinstance(self.adjoint, AdjointOptions)
        return self.adjoint


@dataclass(frozen=True)
class Phantom(Backward):
    """``steps`` damped steps z <- (1 - damping) z + damping f(z) from the detached y*, recorded."""

    steps: int = 1
    damping: float = 1.0

    name = "phantom"

    def __post_init__(self) -> None:
        check_positive_int("phantom steps", self.steps)
        check_unit_interval("phantom damping", self.damping)


_MODES: dict[str, type[Backward]] = {"unrolled": Unrolled, "implicit": Implicit, "phantom": Phantom}
#: The keyword form of each backward option, and the mode it belongs to.
_KEYWORDS: dict[str, type[Backward]] = {"adjoint": Implicit, "phantom_steps": Phantom, "phantom_damping": Phantom}


def as_backward(
    backward: str | Backward,
    adjoint: AdjointOptions | Solver | str | None = None,
    phantom_steps: int | None = None,
    phantom_damping: float | None = None,
) -> Backward:
    """The backward object for ``backward`` (an object, or a mode name with that mode's keyword options).

    A keyword option of another mode, or any beside an object, is an error."""
    keywords = {"adjoint": adjoint, "phantom_steps": phantom_steps, "phantom_damping": phantom_damping}
    given = {name: value for name, value in keywords.items() if value is not None}
    if isinstance(backward, Backward):
        if given:
            names = ", ".join(f"{k}=" for k in given)
            raise ValueError(f"{names} given beside the backward object {backward!r}: set the options in the object")
        return backward
    if not isinstance(backward, str) or backward not in _MODES:
        raise ValueError(f"unknown backward mode {backward!r}; choose one of {', '.join(BACKWARD_MODES)}")
    for name in given:
        owner = _KEYWORDS[name]
        if owner.name != backward:
            raise ValueError(f"{name} is an option of the {owner.name} backward ({owner.__name__}), not of {backward}")
    if backward == "unrolled":
        return Unrolled()
    if backward == "implicit":
        return Implicit(adjoint)
    return Phantom(
        steps=1 if phantom_steps is None else phantom_steps, damping=1.0 if phantom_damping is None else phantom_damping
    )


def fixed_point(
    f: Map,
    y0: Tensor,
    backward: str | Backward = "implicit",
    *,
    method: str | Solver = "picard",
    adjoint: AdjointOptions | Solver | str | None = None,
    phantom_steps: int | None = None,
    phantom_damping: float | None = None,
    record: SolveRecord | None = None,
    **solve_options: Any,
) -> Tensor:
    """Solve y* = f(y*) from y0 and return y* with gradients by ``backward``.

    ``f`` closes over its parameters (and inputs); the returned tensor carries
    gradients to every tensor f uses. ``backward`` is a mode object
    (``Implicit(adjoint=...)``, ``Phantom(steps=..., damping=...)``,
    ``Unrolled()``) or its name, with ``adjoint`` (implicit) and
    ``phantom_steps``/``phantom_damping`` (phantom) as keywords. ``method`` is
    a solver object or name; ``solve_options`` are :func:`iqa.solve`'s
    (``tol``, ``max_iter``, ``stop``, ``raise_on_failure``, ``keep_iterates``)
    and, with a name, the solver's own options. ``record`` (if given) receives
    the forward Solution and, once the backward has run, the adjoint Solution.
    """
    mode = as_backward(backward, adjoint, phantom_steps, phantom_damping)
    generic = {k: v for k, v in solve_options.items() if k in SOLVE_KEYWORDS}
    solver = as_solver(method, {k: v for k, v in solve_options.items() if k not in SOLVE_KEYWORDS})
    record = record if record is not None else SolveRecord()
    if isinstance(mode, Unrolled):
        solution = solve(f, y0, solver, **generic)
        record.forward = solution
        return solution.y
    # An option error of the adjoint surfaces here, before the forward solve.
    adjoint_solver = mode.options.solver(solver) if isinstance(mode, Implicit) else None
    with torch.no_grad():
        solution = solve(f, y0.detach(), solver, **generic)
    record.forward = solution
    y_star = solution.y.detach()
    if not torch.is_grad_enabled():
        return y_star
    if isinstance(mode, Phantom):
        z = y_star
        for _ in range(mode.steps):
            z = z + mode.damping * (f(z) - z)
        if not z.requires_grad:
            return y_star
        z.register_hook(_warn_if_not_converged(solution))
        return y_star + (z - z.detach())
    assert isinstance(mode, Implicit) and adjoint_solver is not None
    # One recorded application of f serves both the adjoint's products J^T g (its path to y_req) and the
    # gradient g^T df/dtheta (its path to f's other tensors): a second recording at backward time would hold
    # a second copy of f's saved activations while the adjoint solve runs.
    y_req = y_star.detach().requires_grad_(True)
    fy = f(y_req)
    if not _uses_other_tensors(fy, y_req):
        return y_star
    # The outer backward also reaches y_req (a leaf): drop that gradient, which nothing reads.
    y_req.register_post_accumulate_grad_hook(_drop_grad)
    keywords = _adjoint_keywords(mode.options, generic)
    hook = _adjoint_hook(solution, adjoint_solver, keywords, record)
    # The value is exactly y*; the gradient flows through one application of f.
    out: Tensor = _ImplicitOutput.apply(fy, y_req, y_star, hook)
    return out


class _ImplicitOutput(torch.autograd.Function):
    """Value y* (a copy); backward: the incoming v replaced by the adjoint solution g (``hook(v, f(y*), y*)``)
    as the gradient of f(y*), whose graph then carries g^T df/dtheta. None for y*: its path drops out.

    f(y*) is kept as its gradient edge (its graph node), not as a tensor, where torch accepts an edge as an
    output of autograd.grad: its values are never read, so they are not kept alive until the backward."""

    @staticmethod
    def forward(ctx: Any, fy: Tensor, y_req: Tensor, y_star: Tensor, hook: Any) -> Tensor:
        ctx.edge = _keeps_edges()
        if ctx.edge:
            ctx.save_for_backward(y_req)
            ctx.fy = get_gradient_edge(fy)
        else:
            ctx.save_for_backward(y_req, fy)
        ctx.hook = hook
        return y_star.clone()

    @staticmethod
    def backward(ctx: Any, v: Tensor) -> tuple[Tensor, None, None, None]:
        saved = ctx.saved_tensors
        fy = ctx.fy if ctx.edge else saved[1]
        return ctx.hook(v, fy, saved[0]), None, None, None


def _edge_outputs() -> bool:
    """Whether this torch's autograd.grad takes a GradientEdge as an output (recent versions; iqa allows older
    ones, which keep f(y*) as a tensor instead)."""
    try:
        with torch.enable_grad():  # asked first inside an autograd.Function's forward, where grad is off
            y = torch.ones(1, requires_grad=True)
            edge = get_gradient_edge(y * 2)
            (grad,) = torch.autograd.grad(edge, y, torch.ones(1))
    except (AttributeError, TypeError, RuntimeError):
        return False
    return bool(grad.item() == 2.0)


#: :func:`_edge_outputs`' answer, asked at the first implicit output, not at import: the probe's autograd.grad
#: imports torch.fx's symbolic shapes and sympy (0.31-0.38 s, against 1.1-1.2 s for ``import iqa`` without it, on
#: the 2-core VM), which a process that never differentiates (``iqa --help``, a collection-only pytest) would pay
#: for nothing.
_EDGE_OUTPUTS: bool | None = None


def _keeps_edges() -> bool:
    """Whether implicit outputs keep f(y*) as its gradient edge (:func:`_edge_outputs`, asked once)."""
    global _EDGE_OUTPUTS
    if _EDGE_OUTPUTS is None:
        _EDGE_OUTPUTS = _edge_outputs()
    return _EDGE_OUTPUTS


def _uses_other_tensors(out: Tensor, leaf: Tensor) -> bool:
    """Whether ``out``'s graph reaches a tensor that requires grad other than ``leaf``: what f(y*).requires_grad
    says with y* detached. Every path of a graph ends at a leaf's AccumulateGrad, so the walk stops at the
    first other leaf; it explores all of f's own graph only when f uses nothing else."""
    stack = [out.grad_fn]
    seen = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # set on AccumulateGrad nodes only
        if variable is not None:
            if variable is not leaf:
                return True
            continue
        stack.extend(child for child, _ in node.next_functions)
    return False


def _drop_grad(t: Tensor) -> None:
    t.grad = None


def _adjoint_keywords(options: AdjointOptions, forward: dict[str, Any]) -> dict[str, Any]:
    """The adjoint's tol, max_iter, stop and raise_on_failure: AdjointOptions' where set, else the forward's."""
    out: dict[str, Any] = {k: forward[k] for k in ("tol", "max_iter", "raise_on_failure") if k in forward}
    for name in ("tol", "max_iter", "raise_on_failure"):
        value = getattr(options, name)
        if value is not None:
            out[name] = value
    out["stop"] = options.stop
    return out


def _warn_if_not_converged(solution: Solution) -> Any:
    def hook(v: Tensor) -> Tensor:
        if not solution.converged:
            warnings.warn(
                f"gradient taken at a point that is not a fixed point (forward status "
                f"{solution.status.name}, residual {float(solution.residual.max()):.3e}): it is meaningless",
                NonConvergedForwardWarning,
                stacklevel=2,
            )
        return v

    return hook


def _power_of_two_scale(v: Tensor) -> Tensor:
    """2^e per batch element with 2^(e-1) <= max|v_b| < 2^e (1 where v_b = 0), broadcastable against v."""
    peak = v.detach().reshape(v.shape[0], -1).abs().amax(dim=1)
    scale = torch.ldexp(torch.ones_like(peak), torch.frexp(peak).exponent)
    return scale.reshape((-1,) + (1,) * (v.dim() - 1))


def _rescaled(solution: Solution, scale: Tensor) -> Solution:
    """The Solution of g = v + J^T g from that of g/s = v/s + J^T (g/s), solved with a relative stop: y and the
    absolute residuals times s; the relative residual (``residual`` under that stop) is scale-free, and the
    adjoint solve keeps no iterates."""
    s = scale.reshape(-1).to(torch.float64).cpu()
    return dataclasses.replace(solution, y=solution.y * scale, residuals=solution.residuals * s)


def _adjoint_hook(
    forward: Solution,
    solver: Solver,
    kwargs: dict[str, Any],
    record: SolveRecord,
) -> Any:
    """The backward of f(y*) (given fy = f(y_req), y_req = y* detached): its incoming gradient v replaced by
    the solution g of g = v + J^T g."""
    kwargs = dict(kwargs)
    raise_on_failure = bool(kwargs.pop("raise_on_failure", False))

    def hook(v: Tensor, fy: Tensor | GradientEdge, y_req: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through an implicit fixed point is not supported; "
                "use backward='unrolled' or 'phantom' for higher-order gradients"
            )
        if not all_finite(v):
            raise ValueError(
                "the gradient arriving at the implicit fixed point (dL/dy*) contains NaN or Inf; "
                "the adjoint equation g = dL/dy* + J^T g has no finite solution"
            )
        _warn_if_not_converged(forward)(v)

        # With a relative stop the equation is scale-free; solve it for v / s (s a power of two near max|v|
        # per batch element, so the division is exact) so that a tiny or huge loss scale never meets the
        # solver's absolute floors, then scale g back by s.
        scale = _power_of_two_scale(v) if kwargs["stop"] == "rel" else None
        v_hat = v / scale if scale is not None else v

        def adjoint_map(g: Tensor) -> Tensor:
            # materialize_grads: a map that ignores y has J = 0 (g = v), not an error.
            (jtg,) = torch.autograd.grad(fy, y_req, g, retain_graph=True, materialize_grads=True)
            return v_hat + jtg

        solution = solve(adjoint_map, v_hat, solver, **kwargs)
        if scale is not None:
            solution = _rescaled(solution, scale)
        record.backward = solution
        if not solution.converged:
            error = ConvergenceError(solution, "adjoint solve g = v + J^T g of the implicit backward")
            if raise_on_failure:
                raise error
            warnings.warn(f"{error}; the gradient is inexact", BackwardConvergenceWarning, stacklevel=2)
        return solution.y

    return hook
