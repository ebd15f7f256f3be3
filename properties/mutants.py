"""Mutants: variants with seeded bugs that the property suite must catch.

Each :class:`Mutant` is a :class:`~iqa.variants.Variant` carrying one
deliberate bug, plus the property (``module:function`` in ``properties/``)
meant to catch it. ``properties/meta/test_mutants.py`` calls that property
with ``variant=<mutant>`` and requires it to fail; the share of mutants caught
is the suite's mutation score. Each mutant claims the tags of the layer it
pretends to be, so that the suite would run the property on it.

Mutants build on the built-in layers rather than copying them: the bug is the
only difference, which keeps each one honest about what it tests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from iqa.grad import Implicit
from iqa.layer import ImplicitQueryAttention, Tracked
from iqa.solvers import Map, Solution, Solver, Status, StopMode
from iqa.variants import (
    BUILTIN_VARIANTS,
    HopfieldAttention,
    InjectedQueryAttention,
    PositionalQueryAttention,
    ScaledQueryAttention,
    Tag,
    Variant,
)
from iqa.variants.builtin import CONSENSUS_FAILURES, WEIGHTS_MOVE_FIXED_POINT
from iqa.variants.causal import CausalQueryAttention
from iqa.variants.multihead import MultiHeadHopfieldAttention

_BUILTIN = {v.name: v for v in BUILTIN_VARIANTS}
HOPFIELD_TAGS = _BUILTIN["hopfield"].tags
REFERENCE_TAGS = _BUILTIN["reference"].tags
POSITIONAL_TAGS = _BUILTIN["positional"].tags
INJECTION_TAGS = _BUILTIN["injection"].tags
MULTIHEAD_TAGS = _BUILTIN["multihead"].tags
CAUSAL_TAGS = _BUILTIN["causal"].tags

#: The gradient of the "gradient_scaled" mutant is this factor times the true one.
GRADIENT_FACTOR = 1.05
#: The "early_convergence" mutant's solver stops after this many evaluations of f.
EARLY_STEPS = 3
#: Relative size of the random perturbation of the "nondeterministic" mutant's start.
START_NOISE = 1e-2


@dataclass(frozen=True)
class Mutant:
    """A variant with one seeded bug and the property meant to catch it."""

    variant: Variant
    bug: str
    #: "module:function" of the property, the module relative to the ``properties`` package.
    caught_by: str
    #: An honest built-in variant on which that property must pass: the mutant is caught for its bug.
    control: str
    #: A regular expression that the property's own assertion message must match (re.search): the property
    #: must fail by the assertion that guards against this bug, not by any AssertionError.
    message: str

    @property
    def name(self) -> str:
        return self.variant.name


# --- the map is wrong -------------------------------------------------------------------------


class WrongSoftmaxAxis(HopfieldAttention):
    """Hopfield attention normalised over the queries (dim=-2) instead of the keys."""

    def fixed_point_map(self, x: Tensor) -> Map:
        K = self.keys(x)

        def f(y: Tensor) -> Tensor:
            return F.softmax(self.Omega_Q(y) @ K.transpose(-2, -1), dim=-2) @ x  # the bug: dim=-2

        return f


class BatchCoupled(HopfieldAttention):
    """Hopfield attention whose keys see x divided by its RMS over the whole batch."""

    def keys(self, x: Tensor) -> Tensor:
        return self.W_K(x / x.pow(2).mean().sqrt())  # the bug: a statistic across batch elements


class HalvedScoreMatrix(ImplicitQueryAttention):
    """The seed, reporting half its score matrix: certificates come out too small."""

    def score_matrix(self, x: Tensor) -> Tensor:
        return 0.5 * super().score_matrix(x)

    def score_weight_norm(self) -> Tensor:
        return 0.5 * super().score_weight_norm()


class MixedHeads(MultiHeadHopfieldAttention):
    """Multi-head attention whose head h reads the keys of head h + 1 (its certificate hooks stay honest)."""

    def keys(self, x: Tensor) -> Tensor:
        return super().keys(x).roll(1, dims=-3)  # the bug: heads paired with another head's keys

    def head_score_matrices(self, x: Tensor) -> Tensor:
        W_Q = self.W_Q.weight.unflatten(0, (self.heads, self.head_dim))
        return super().keys(x) @ W_Q  # what the layer claims: each head with its own keys


# --- the mask leaks ---------------------------------------------------------------------------


#: The "leaky-padding" mutant subtracts this from a padded key's score instead of setting it to -inf.
LEAK_PENALTY = 30.0


class LeakyPadding(HopfieldAttention):
    """Hopfield attention whose padding mask is a finite penalty: a padded key keeps weight ~e^-30 times its
    share, and its value is read."""

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        K = self.keys(x)
        penalty = 0.0 if key_padding_mask is None else LEAK_PENALTY * key_padding_mask[:, None, :].to(x.dtype)

        def f(y: Tensor) -> Tensor:
            return F.softmax(self.Omega_Q(y) @ K.transpose(-2, -1) - penalty, dim=-1) @ x  # the bug: not -inf

        return f


class OneHeadMasked(MultiHeadHopfieldAttention):
    """Multi-head attention that masks the padded keys in its first head only."""

    def fixed_point_map(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Map:
        if key_padding_mask is None:
            return super().fixed_point_map(x)
        K, V = self.keys(x), self.head_values(x)
        first = torch.arange(self.heads, device=x.device) == 0
        padded = key_padding_mask[:, None, None, :] & first[None, :, None, None]  # the bug: head 0 only

        def f(y: Tensor) -> Tensor:
            scores = (self.split_heads(self.W_Q(y)) @ K.transpose(-2, -1)).masked_fill(padded, float("-inf"))
            return self.W_O((F.softmax(scores, dim=-1) @ V).transpose(-3, -2).flatten(-2))

        return f


class CausalOffByOne(CausalQueryAttention):
    """The causal variant whose mask lets position i see position i + 1."""

    def future(self, tokens: int, device: torch.device) -> Tensor:
        return torch.ones(tokens, tokens, dtype=torch.bool, device=device).triu(2)  # the bug: triu(1) is causal


# --- the gradient is wrong --------------------------------------------------------------------


class JacobianFreeImplicit(HopfieldAttention):
    """Hopfield attention whose implicit backward skips the adjoint solve (g = v).

    The forward solve and f are untouched; the backward carries v^T df/dtheta
    instead of v^T (I - J)^{-1} df/dtheta (the Jacobian term J^T g is dropped).
    """

    def forward(self, x: Tensor, track: bool = False) -> Tensor | Tracked:
        if self.solver is None or not isinstance(self.backward, Implicit):
            return super().forward(x, track)
        with torch.no_grad():
            out = super().forward(x, track)
        y_star = out.y if isinstance(out, Tracked) else out
        if not torch.is_grad_enabled():
            return out
        fy = self.fixed_point_map(x)(y_star)
        y = y_star + (fy - fy.detach())  # the bug: the gradient flows through one f, with g = v
        return out._replace(y=y) if isinstance(out, Tracked) else y


class ScaledGradient(HopfieldAttention):
    """Hopfield attention whose gradients (every backward mode) are GRADIENT_FACTOR times too large."""

    def forward(self, x: Tensor, track: bool = False) -> Tensor | Tracked:
        out = super().forward(x, track)
        y = out.y if isinstance(out, Tracked) else out
        if y.requires_grad:
            y.register_hook(lambda g: GRADIENT_FACTOR * g)  # the bug
        return out


# --- the report is wrong ----------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimsConvergence(Solver):
    """A test double: runs ``inner`` for at most ``steps`` evaluations of f and says CONVERGED (its residuals
    stay honest: only the verdict lies)."""

    inner: Solver
    steps: int

    def run(self, f: Map, y0: Tensor, *, tol: float, max_iter: int, stop: StopMode, keep_iterates: bool) -> Solution:
        solution = self.inner.run(
            f, y0, tol=tol, max_iter=min(max_iter, self.steps), stop=stop, keep_iterates=keep_iterates
        )
        return dataclasses.replace(solution, statuses=(Status.CONVERGED,) * len(solution.statuses))


class EarlyConvergence(ImplicitQueryAttention):
    """The seed in solve mode with a solver that reports CONVERGED after EARLY_STEPS steps."""

    def __init__(self, embed_dim: int, n_iters: int = 10, **options: Any) -> None:
        super().__init__(embed_dim, n_iters, **options)
        if self.solver is not None:
            self.solver = ClaimsConvergence(self.solver, EARLY_STEPS)


# --- the output is not reproducible -----------------------------------------------------------


class RandomStart(HopfieldAttention):
    """Hopfield attention started from a perturbation of x drawn from torch's global RNG."""

    def initial_point(self, x: Tensor) -> Tensor:
        return x + START_NOISE * torch.randn_like(x)  # the bug: an unseeded random start


def _unseeded_factory(
    embed_dim: int, *, scale: float = 1.0, generator: Any = None, **options: Any
) -> HopfieldAttention:
    """Ignores the generator (and the scale): weights come from torch's global RNG."""
    return HopfieldAttention(embed_dim, **options)


def _variant(layer: type, name: str, tags: frozenset[Tag], failures: dict[str, str] | None = None) -> Variant:
    return Variant.from_layer(layer, name=f"mutant-{name}", tags=tags, expected_failures=failures or {})


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        _variant(WrongSoftmaxAxis, "softmax-axis", HOPFIELD_TAGS),
        "softmax over the queries (dim=-2) instead of the keys: attention rows no longer sum to 1",
        "variant.test_layer_solve:test_output_in_convex_hull",
        "hopfield",
        r"outside the convex hull",
    ),
    Mutant(
        _variant(JacobianFreeImplicit, "jacobian-free-implicit", HOPFIELD_TAGS),
        "implicit backward uses g = v, dropping the J^T g term of the adjoint fixed point",
        "variant.test_gradients:test_implicit_matches_unrolled",
        "hopfield",
        r"unrolled vs implicit|different fixed points",
    ),
    Mutant(
        _variant(ScaledGradient, "scaled-gradient", HOPFIELD_TAGS),
        f"every gradient is {GRADIENT_FACTOR} times the true one, in every backward mode",
        "variant.test_gradients:test_implicit_matches_finite_differences",
        "hopfield",
        r"vs central difference",
    ),
    Mutant(
        _variant(EarlyConvergence, "early-convergence", REFERENCE_TAGS, CONSENSUS_FAILURES),
        f"the solver reports CONVERGED after {EARLY_STEPS} steps, whatever the residual",
        "variant.test_layer_solve:test_solvers_agree_under_certificate",
        "reference",
        r"^certified: ",
    ),
    Mutant(
        _variant(PositionalQueryAttention, "permutation-lie", POSITIONAL_TAGS | {Tag.PERMUTATION_EQUIVARIANT}),
        "claims permutation equivariance, but positions make it depend on token order",
        "variant.test_invariances:test_token_permutation_equivariance",
        "hopfield",
        r"y\(P x\) vs P y\(x\)",
    ),
    Mutant(
        _variant(
            PositionalQueryAttention,
            "permutation-lie-uncertified",
            (POSITIONAL_TAGS - {Tag.SCORE_MATRIX}) | {Tag.PERMUTATION_EQUIVARIANT},
        ),
        "as permutation-lie, for a layer that does not claim score_matrix (no certificate): "
        "a layer of a form the certificates do not cover",
        "variant.test_invariances:test_token_permutation_equivariance",
        "hopfield",
        r"y\(P x\) vs P y\(x\)",
    ),
    Mutant(
        _variant(RandomStart, "random-start", HOPFIELD_TAGS),
        "starts from x plus noise from the global RNG: the same input gives different outputs",
        "variant.test_determinism:test_same_input_same_output",
        "hopfield",
        r"different outputs|not reproducible",
    ),
    Mutant(
        Variant(
            name="mutant-unseeded-weights",
            factory=_unseeded_factory,
            tags=HOPFIELD_TAGS,
            description="Hopfield attention whose factory ignores the seed",
        ),
        "the factory ignores the generator: the same seed gives different weights",
        "variant.test_determinism:test_same_seed_same_layer",
        "hopfield",
        r"differs between two builds from one seed",
    ),
    Mutant(
        _variant(BatchCoupled, "batch-coupled", HOPFIELD_TAGS),
        "keys normalised by a statistic of the whole batch: batch elements interact",
        "variant.test_invariances:test_batch_independence",
        "hopfield",
        r"each element alone vs in the batch",
    ),
    Mutant(
        _variant(BatchCoupled, "batch-coupled-uncertified", HOPFIELD_TAGS - {Tag.SCORE_MATRIX}),
        "as batch-coupled, for a layer that does not claim score_matrix (no certificate)",
        "variant.test_invariances:test_batch_independence",
        "hopfield",
        r"each element alone vs in the batch",
    ),
    Mutant(
        _variant(HopfieldAttention, "mean-fixed-point-lie", HOPFIELD_TAGS | {Tag.MEAN_FIXED_POINT}),
        "claims the token mean is a fixed point; in the Hopfield orientation it is not",
        "variant.test_analysis:test_consensus_is_fixed_point",
        "reference",
        r"is not a fixed point",
    ),
    Mutant(
        _variant(PositionalQueryAttention, "scale-lie", POSITIONAL_TAGS | {Tag.SCALE_COVARIANT}),
        "claims (2^k x, W / 2^k) gives 2^k y; the positions do not scale",
        "variant.test_invariances:test_power_of_two_rescaling",
        "hopfield",
        r"is not 2\^",
    ),
    Mutant(
        _variant(HalvedScoreMatrix, "halved-certificate", REFERENCE_TAGS, CONSENSUS_FAILURES),
        "score_matrix reports A / 2, so every certificate is half the true Lipschitz bound",
        "variant.test_certificates:test_lipschitz_certificates_are_sound",
        "reference",
        r"is not a Lipschitz bound",
    ),
    Mutant(
        _variant(ImplicitQueryAttention, "weights-matter-lie", REFERENCE_TAGS | {Tag.WEIGHT_DEPENDENT}),
        "the seed without its declared expected failure: its fixed point is the token mean",
        f"variant.test_gradients:{WEIGHTS_MOVE_FIXED_POINT}",
        "hopfield",
        r"the fixed point ignores the weights",
    ),
    Mutant(
        _variant(ScaledQueryAttention, "seed-lie", _BUILTIN["scaled"].tags | {Tag.SEED_EXACT}, CONSENSUS_FAILURES),
        "claims to be the seed bit for bit, but divides the scores by sqrt(D)",
        "variant.test_seed:test_layer_equals_seed_bitwise",
        "reference",
        r"differs from the seed",
    ),
    Mutant(
        _variant(InjectedQueryAttention, "hull-lie", INJECTION_TAGS | {Tag.CONVEX_HULL}),
        "claims the output is in the convex hull of x; input injection adds x to the attention output",
        "variant.test_layer_solve:test_output_in_convex_hull",
        "hopfield",
        r"outside the convex hull",
    ),
    Mutant(
        _variant(LeakyPadding, "leaky-padding", HOPFIELD_TAGS | {Tag.PADDING_INVARIANT}),
        f"padded keys get their score minus {LEAK_PENALTY:g} instead of -inf: their weight is tiny, not zero",
        "variant.test_masks:test_padding_content_is_ignored",
        "multihead",
        r"unpadded outputs changed",
    ),
    Mutant(
        _variant(OneHeadMasked, "one-head-masked", MULTIHEAD_TAGS),
        "the padding mask reaches the first head only: the other heads read the padded tokens",
        "variant.test_masks:test_padding_content_is_ignored",
        "multihead",
        r"unpadded outputs changed",
    ),
    Mutant(
        _variant(CausalOffByOne, "causal-off-by-one", CAUSAL_TAGS, dict(_BUILTIN["causal"].expected_failures)),
        "the causal mask is off by one (triu(2)): position i sees position i + 1",
        "variant.test_masks:test_causal_output_ignores_later_tokens",
        "causal",
        r"changed when only the tokens after",
    ),
    Mutant(
        _variant(MixedHeads, "mixed-heads", MULTIHEAD_TAGS),
        "head h's queries read head h + 1's keys, while its score matrices say each head reads its own",
        "variant.test_analysis:test_analytic_jacobian_matches_autograd",
        "multihead",
        r"autograd and the analytic Jacobian differ",
    ),
)

#: Mutants by name.
BY_NAME: dict[str, Mutant] = {m.name: m for m in MUTANTS}
