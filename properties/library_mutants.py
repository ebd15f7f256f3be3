"""Library mutants: seeded bugs in iqa itself (not in a variant) that the property suite must catch.

Each :class:`LibraryMutant` names one function of the library, a snippet of its
source and the buggy replacement. :func:`applied` recompiles the function's
source with the replacement, in the function's own module globals, and swaps
the function's ``__code__`` for the buggy one while the context is open: every
caller sees the bug, including modules that imported the function by name
(``from iqa.solvers import solve``), and nothing is written to disk.
``properties/meta/test_library_mutants.py`` runs the property named by
``caught_by`` first on the honest library (the control: it must pass), then
under the mutant, and requires the property's OWN assertion: an AssertionError
whose message matches ``message``.

Two groups: :data:`SOLVER_MUTANTS` target the solvers in ``iqa/solvers/``
(status logic, stopping rule, cycle detection, Anderson's safeguards);
:data:`OTHER_MUTANTS` target the adjoint and its hook, phantom damping, the
spectral radius, the certificates, the Jacobian norm, the consensus radius and
the memory count.
"""

from __future__ import annotations

import importlib
import inspect
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FunctionType
from typing import Any


@dataclass(frozen=True)
class LibraryMutant:
    """One seeded bug: in ``module``'s ``function`` (a qualname, "Class.method" for a method), ``old`` -> ``new``."""

    name: str
    bug: str
    module: str
    function: str
    old: str
    new: str
    #: "module:function" of the property, the module relative to the ``properties`` package.
    caught_by: str
    #: A regular expression that the property's own assertion message must match (re.search).
    message: str
    #: The built-in variant the property runs on (None for a tool property without a ``variant`` argument).
    variant: str | None = None


def target_function(mutant: LibraryMutant) -> FunctionType:
    """The library function the mutant patches (a plain function: no closure cells)."""
    owner: Any = importlib.import_module(mutant.module)
    for part in mutant.function.split("."):
        owner = inspect.getattr_static(owner, part)
    if not isinstance(owner, FunctionType):
        raise TypeError(f"{mutant.module}.{mutant.function} is not a plain function: {owner!r}")
    return owner


def buggy_code(mutant: LibraryMutant) -> Any:
    """The mutated function's code object, compiled from its source with ``old`` replaced by ``new``."""
    function = target_function(mutant)
    source = textwrap.dedent(inspect.getsource(function))
    count = source.count(mutant.old)
    if count != 1:
        raise LookupError(
            f"mutant {mutant.name}: {mutant.old!r} occurs {count} times in {mutant.module}.{mutant.function} "
            "(it must occur once: port the mutant to the current source)"
        )
    namespace: dict[str, Any] = {}
    exec(
        compile(source.replace(mutant.old, mutant.new), f"<mutant {mutant.name}>", "exec"),
        function.__globals__,
        namespace,
    )
    mutated = namespace[function.__name__]
    if mutated.__code__.co_freevars != function.__code__.co_freevars:
        raise TypeError(f"mutant {mutant.name}: the mutated function needs other closure cells")
    return mutated.__code__


@contextmanager
def applied(mutant: LibraryMutant) -> Iterator[None]:
    """Run the library with the mutant's bug while the context is open (the function's code swapped in place)."""
    function = target_function(mutant)
    code = buggy_code(mutant)
    honest = function.__code__
    function.__code__ = code
    try:
        yield
    finally:
        function.__code__ = honest


# ---------------------------------------------------------------------------------------------------------------
# SOLVER_MUTANTS: the status logic and stopping rule, cycle detection and Anderson's safeguards (iqa/solvers/)
# ---------------------------------------------------------------------------------------------------------------

_STATUS = "tool.test_solver_status"

SOLVER_MUTANTS: tuple[LibraryMutant, ...] = (
    LibraryMutant(
        "solver-converged-above-tol",
        "an element counts as CONVERGED at a residual up to 1.5 tol",
        "iqa.solvers.tracker",
        "Tracker.__init__",
        "self.tol = tol",
        "self.tol = 1.5 * tol",
        f"{_STATUS}:test_status_flips_exactly_at_tol",
        r"CONVERGED with residual .* above tol",
    ),
    LibraryMutant(
        "solver-stop-mode-ignored",
        "stop='rel' is ignored: the absolute residual is compared with tol",
        "iqa.solvers.tracker",
        "Tracker.observe",
        'metric = r if self.stop == "abs" else [a / max(b, NORM_FLOOR) for a, b in zip(r, ref)]',
        "metric = r",
        f"{_STATUS}:test_status_flips_exactly_at_tol",
        r"CONVERGED",
    ),
    LibraryMutant(
        "solver-max-iter-off-by-one",
        "Picard makes at most max_iter - 1 evaluations of f (the stopping rule's range is one short)",
        "iqa.solvers.picard",
        "Picard.run",
        "for step in range(1, max_iter + 1):",
        "for step in range(1, max(2, max_iter)):",
        f"{_STATUS}:test_status_flips_exactly_at_tol",
        r"MAX_ITER solve made \d+ evaluations|not CONVERGED although residual|CONVERGED at step",
    ),
    LibraryMutant(
        "solver-cycle-detection-off",
        "cycle detection never runs: a Picard cycle is reported as MAX_ITER",
        "iqa.solvers.tracker",
        "Tracker.check_cycles",
        "recent = self.recent\n",
        "recent = self.recent\n    return\n",
        "variant.test_layer_solve:test_picard_cycles_at_scale_three",
        r"independent check found a cycle",
        "reference",
    ),
    LibraryMutant(
        "anderson-alpha-limit-off",
        "Anderson's ill-conditioning safeguard (sum |alpha| <= ALPHA_LIMIT) is dropped",
        "iqa.solvers.anderson",
        "_HostPairs.step",
        "sound = np.abs(alpha).sum(-1) <= ALPHA_LIMIT  # False for a NaN or Inf alpha too",
        "sound = np.isfinite(alpha).all(-1)",
        f"{_STATUS}:test_anderson_falls_back_on_ill_conditioned_system",
        r"Anderson took an ill-conditioned step",
    ),
    LibraryMutant(
        "anderson-never-gives-up",
        "Anderson never gives up on acceleration (the STALL_STEPS rule is dropped)",
        "iqa.solvers.anderson",
        "_AndersonRun.solve",
        "giving_up = self.deviated & ~self.gave_up & (self.stalled >= STALL_STEPS)",
        "giving_up = self.deviated & False",
        f"{_STATUS}:test_anderson_gives_up_and_follows_picard_from_the_start",
        r"Anderson did not fall back to Picard",
    ),
)


# ---------------------------------------------------------------------------------------------------------------
# the adjoint and its hook, phantom damping, analysis, certificates, memory
# ---------------------------------------------------------------------------------------------------------------

OTHER_MUTANTS: tuple[LibraryMutant, ...] = (
    LibraryMutant(
        "adjoint-uses-J",
        "the adjoint iteration g = v + J g uses J instead of J^T",
        "iqa.grad",
        "_adjoint_hook",
        "(jtg,) = torch.autograd.grad(fy, y_req, g, retain_graph=True, materialize_grads=True)",
        # J g as the vjp of the vjp w -> J^T w (linear in w), through the graph of f(y*) the hook is given
        "w = torch.zeros_like(v_hat, requires_grad=True)\n"
        "            (jtw,) = torch.autograd.grad(fy, y_req, w, create_graph=True)\n"
        "            (jtg,) = torch.autograd.grad(jtw, w, g, retain_graph=True)",
        "variant.test_gradients:test_float32_gradients_match_float64",
        r"float32 vs dense float64.*exceeds",
        "hopfield",
    ),
    LibraryMutant(
        "adjoint-drops-jacobian-term",
        "the adjoint map drops J^T g (g = v: the Jacobian-free gradient), and reports CONVERGED",
        "iqa.grad",
        "_adjoint_hook",
        "return v_hat + jtg",
        "return v_hat + 0 * jtg",
        "variant.test_gradients:test_float32_gradients_match_float64",
        r"float32 vs dense float64.*exceeds",
        "injection",
    ),
    LibraryMutant(
        "adjoint-hook-returns-v",
        "the hook returns the incoming v, while the recorded adjoint Solution is the converged g",
        "iqa.grad",
        "_adjoint_hook",
        "        return solution.y\n",
        "        return v\n",
        "variant.test_backward_reports:test_adjoint_solution_is_kept_and_its_residual_holds",
        r"the gradient the hook returned is not the pullback of the recorded adjoint",
        "hopfield",
    ),
    LibraryMutant(
        "adjoint-scale-not-restored",
        "the adjoint is solved for v / s but g is not scaled back by s",
        "iqa.grad",
        "_rescaled",
        "y=solution.y * scale",
        "y=solution.y",
        "variant.test_gradients:test_gradient_is_linear_in_the_loss",
        r"grad\(.* L\) / .* vs dense",
        "hopfield",
    ),
    LibraryMutant(
        "phantom-damping-ignored",
        "the phantom steps ignore phantom_damping (always lam = 1)",
        "iqa.grad",
        "fixed_point",
        "z = z + mode.damping * (f(z) - z)",
        "z = f(z)",
        "variant.test_gradients:test_phantom_error_within_bound",
        r"phantom error",
        "hopfield",
    ),
    LibraryMutant(
        "spectral-radius-real-part",
        "the dense spectral radius is |Re lambda| instead of |lambda|",
        "iqa.analysis.spectral",
        "_dense",
        'return Spectrum(theta.abs(), theta, residual, converged, "dense", values)',
        'return Spectrum(theta.real.abs(), theta, residual, converged, "dense", values)',
        "variant.test_analysis:test_spectral_radius_is_the_largest_eigenvalue_modulus",
        r"spectral_radius .* vs max \|eigvals\(J\)\|",
        "damped",  # only a complex dominant eigenvalue tells |Re| from ||: 40% of damped's ci draws, 0-15% elsewhere
    ),
    LibraryMutant(
        "certificates-doubled",
        "every certificate is twice the true Lipschitz bound (sound, but useless)",
        "iqa.analysis.certificates",
        "certificates",
        "return Certificates(kappa_inf=kappa_inf, kappa_F=kappa_F, kappa_weights=kappa_w)",
        "return Certificates(kappa_inf=2 * kappa_inf, kappa_F=2 * kappa_F, kappa_weights=2 * kappa_w)",
        "variant.test_certificates:test_certificates_are_tight_on_extremal_configurations",
        r"is not tight",
        "reference",
    ),
    LibraryMutant(
        "jacobian-norm-frobenius",
        "jacobian_norm returns the Frobenius norm instead of the spectral norm",
        "iqa.analysis.jacobian",
        "norm_estimate",
        "norm = torch.linalg.matrix_norm(jacobian(f, y), ord=2)",
        'norm = torch.linalg.matrix_norm(jacobian(f, y), ord="fro")',
        "variant.test_certificates:test_jacobian_norm_within_kappa_F",
        r"jacobian_norm .* vs the largest singular value",
        "hopfield",
    ),
    LibraryMutant(
        "consensus-matrix-scale",
        "the consensus matrix divides by N + 1 instead of N",
        "iqa.analysis.consensus",
        "consensus_matrix",
        "return A.transpose(-2, -1) @ Vc / x.shape[-2]",
        "return A.transpose(-2, -1) @ Vc / (x.shape[-2] + 1)",
        "variant.test_analysis:test_consensus_spectral_radius",
        r"rho at the consensus point",
        "reference",
    ),
    LibraryMutant(
        "memory-counts-storage-twice",
        "a storage saved twice is counted twice",
        "iqa.memory",
        "count_saved_tensors",
        "sizes[key] = max(sizes.get(key, 0), _storage_bytes(t))",
        "sizes[key] = sizes.get(key, 0) + _storage_bytes(t)",
        "tool.test_memory_count:test_count_rule_on_known_graph",
        r"counted bytes",
    ),
)

LIBRARY_MUTANTS: tuple[LibraryMutant, ...] = SOLVER_MUTANTS + OTHER_MUTANTS
