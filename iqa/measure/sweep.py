"""What a sweep measures: the grid of shapes, weight scales and seeds, and the solver settings.

A :class:`Sweep` is plain data (it travels to worker processes as a dict and
is stored with the results). Every case of the grid is a :class:`Cell`
(tokens N, dim D, weight scale s, seed, and K for a variant with slots); its
weights and inputs come from seeds derived from the cell alone
(:meth:`Cell.weight_seed`, :meth:`Cell.input_seed`), so a cell gives the same
numbers whichever process measures it and in whatever order.

A variant measures only the cells inside its shape domain (:meth:`Sweep.cells`
with the variant's :class:`~iqa.variants.domain.Domain`): a D that is not a
multiple of its heads, or an N it does not take, is not drawn. A slot variant
(``Domain.slots = (lo, hi)``) gets one cell per slot count K of ``Sweep.slots``
inside (lo, hi), or, when the sweep names none, K = lo and K = hi.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from iqa.solvers import METHODS
from iqa.validation import check_positive, check_positive_int
from iqa.variants.domain import Domain

DTYPES = {"float64": torch.float64, "float32": torch.float32}
#: Sweep fields renamed since stored files were written: old name -> new name.
RENAMED = {"memory_shape": "saved_bytes_shape", "memory_scale": "saved_bytes_scale"}


@dataclass(frozen=True)
class Sweep:
    """The grid and the settings of one measurement.

    Attributes:
        tokens: the token counts N.
        dims: the embedding widths D.
        scales: weight scales s (nn.Linear's default init times s; docs/theory.md#regimes:
            s <= 1 mostly contracts, s ~ 3 cycles, s >= 10 saturates the attention and rarely converges from x).
        seeds: one layer and one input batch per seed and (N, D, s).
        batch: input sequences per cell (each is one "run").
        dtype: "float64" or "float32".
        methods: solvers compared ("picard", "anderson").
        tol: absolute residual ||f(y) - y|| at which a solve has converged.
        max_iter: the most steps of a solve ("out of steps" beyond).
        unrolled_T: depths T at which unrolled gradients are compared with the implicit one.
        phantom: (k, lambda) settings of the phantom gradient compared with the implicit one.
        gradient_seeds: how many of ``seeds`` (the first ones) also get the gradient checks.
        saved_bytes_shape: (N, D) of the bytes-saved-for-backward measurement.
        saved_bytes_scale: its weight scale.
        slots: the slot counts K of a slot variant's cells (empty: the ends of its domain's range). Stored
            only when given, so that sweeps without it keep their stored form.
    """

    tokens: tuple[int, ...]
    dims: tuple[int, ...]
    scales: tuple[float, ...]
    seeds: tuple[int, ...]
    batch: int = 4
    dtype: str = "float64"
    methods: tuple[str, ...] = METHODS
    tol: float = 1e-10
    max_iter: int = 200
    unrolled_T: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    phantom: tuple[tuple[int, float], ...] = ((1, 1.0), (5, 0.5))
    gradient_seeds: int = 1
    saved_bytes_shape: tuple[int, int] = (8, 8)
    saved_bytes_scale: float = 0.5
    slots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("tokens", "dims", "scales", "seeds", "methods", "unrolled_T"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or not values:
                raise ValueError(f"Sweep.{name} must be a non-empty tuple, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"Sweep.{name} has repeated values: {values!r}")
        for n in self.tokens:
            check_positive_int("Sweep.tokens entry", n)
        for d in self.dims:
            check_positive_int("Sweep.dims entry", d)
        for s in self.scales:
            check_positive("Sweep.scales entry", s)
        for seed in self.seeds:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"Sweep.seeds entries must be integers >= 0, got {seed!r}")
        for T in self.unrolled_T:
            check_positive_int("Sweep.unrolled_T entry", T)
        for method in self.methods:
            if method not in METHODS:
                raise ValueError(f"unknown solver method {method!r} in Sweep.methods; choose from {', '.join(METHODS)}")
        for k, lam in self.phantom:
            check_positive_int("Sweep.phantom steps k", k)
            if not 0 < lam <= 1:
                raise ValueError(f"Sweep.phantom damping must be in (0, 1], got {lam!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"Sweep.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        check_positive_int("Sweep.batch", self.batch)
        check_positive("Sweep.tol", self.tol)
        check_positive_int("Sweep.max_iter", self.max_iter)
        if isinstance(self.gradient_seeds, bool) or not isinstance(self.gradient_seeds, int) or self.gradient_seeds < 0:
            raise ValueError(f"Sweep.gradient_seeds must be an integer >= 0, got {self.gradient_seeds!r}")
        check_positive_int("Sweep.saved_bytes_shape N", self.saved_bytes_shape[0])
        check_positive_int("Sweep.saved_bytes_shape D", self.saved_bytes_shape[1])
        check_positive("Sweep.saved_bytes_scale", self.saved_bytes_scale)
        if not isinstance(self.slots, tuple) or len(set(self.slots)) != len(self.slots):
            raise ValueError(f"Sweep.slots must be a tuple without repeats, got {self.slots!r}")
        for k in self.slots:
            check_positive_int("Sweep.slots entry", k)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def with_seed(self, seed: int) -> Sweep:
        """The same sweep with seeds seed, seed + 1, ...: ``iqa report --seed`` picks the first."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        return dataclasses.replace(self, seeds=tuple(seed + i for i in range(len(self.seeds))))

    def slot_counts(self, domain: Domain | None) -> tuple[int | None, ...]:
        """The K values of a variant with this domain: (None,) without slots; else ``slots`` inside the
        domain's range, or the range's ends when ``slots`` is empty."""
        if domain is None or domain.slots is None:
            return (None,)
        low, high = domain.slots
        if not self.slots:
            return tuple(sorted({low, high}))
        return tuple(k for k in self.slots if low <= k <= high)

    def cells(self, domain: Domain | None = None) -> Iterator[Cell]:
        """Every (N, D, s, seed[, K]) of the grid inside ``domain`` (default: every shape), in a fixed order."""
        for n in self.tokens:
            for d in self.dims:
                for k in self.slot_counts(domain):
                    if domain is not None and not domain.contains(n, d, k):
                        continue
                    for s in self.scales:
                        for i, seed in enumerate(self.seeds):
                            yield Cell(n, d, s, seed, gradients=i < self.gradient_seeds, slots=k)

    def outside(self, domain: Domain | None) -> list[tuple[int, int]]:
        """The (N, D) of the grid that ``domain`` excludes (not measured), in grid order."""
        if domain is None:
            return []
        return [
            (n, d)
            for n in self.tokens
            for d in self.dims
            if not any(domain.contains(n, d, k) for k in self.slot_counts(domain))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not (f.name == "slots" and not self.slots)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        """The inverse of :meth:`to_dict`; the old field names (``memory_shape``,
        ``memory_scale``: :data:`RENAMED`) are read too, so older baselines still load."""
        data = dict(data)
        for old, new in RENAMED.items():
            if old in data:
                if new in data:
                    raise ValueError(f"Sweep fields {old!r} and {new!r} (its new name) are both given")
                data[new] = data.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown Sweep field(s): {', '.join(unknown)}")
        return cls(**{k: _tuple(v) for k, v in data.items()})


@dataclass(frozen=True)
class Cell:
    """One point of the grid; ``gradients`` says whether it also gets the gradient checks; ``slots`` is K for
    a slot variant (None: the state has one row per token)."""

    tokens: int
    dim: int
    scale: float
    seed: int
    gradients: bool = False
    slots: int | None = None

    @property
    def key(self) -> tuple[int, int, float, int] | tuple[int, int, float, int, int]:
        base = (self.tokens, self.dim, self.scale, self.seed)
        return base if self.slots is None else (*base, self.slots)

    def _derived(self, purpose: str) -> int:
        # crc32 of the cell's text: stable across processes and Python runs (hash() is salted).
        slots = "" if self.slots is None else f":K{self.slots}"
        return zlib.crc32(f"{purpose}:{self.tokens}:{self.dim}:{self.scale!r}:{self.seed}{slots}".encode())

    @property
    def weight_seed(self) -> int:
        return self._derived("weights")

    @property
    def input_seed(self) -> int:
        return self._derived("inputs")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuple(v) for v in value)
    return value


#: The committed reports' sweep: 3 regimes of scale on both sides of the cycling band.
DEFAULT = Sweep(
    tokens=(2, 4, 8, 16),
    dims=(4, 8),
    scales=(0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0),
    seeds=(0, 1, 2),
)

#: A smoke run: a few cells per regime, short gradient depths.
QUICK = Sweep(
    tokens=(2, 8),
    dims=(4,),
    scales=(0.5, 1.0, 3.0, 10.0),
    seeds=(0,),
    batch=2,
    max_iter=100,
    unrolled_T=(1, 4, 16),
    phantom=((1, 1.0),),
    saved_bytes_shape=(4, 4),
)

#: Realistic sizes: N up to 256, D up to 64, float32, batch 2, one seed, a short gradient ladder.
#: tol: Picard in float32 stalls at residuals of 0.5-1.8e-6 (measured: reference and hopfield, N = 256,
#: D = 64, s = 0.5 and 1; ~ eps_32 ||y*||_F with ||y*||_F ~ 8), so 1e-4 is reachable with a margin of ~50.
LARGE = Sweep(
    tokens=(64, 256),
    dims=(32, 64),
    scales=(0.5, 1.0, 3.0),
    seeds=(0,),
    batch=2,
    dtype="float32",
    tol=1e-4,
    max_iter=100,
    unrolled_T=(1, 4, 16),
    phantom=((1, 1.0),),
    saved_bytes_shape=(256, 64),
)

PRESETS = {"default": DEFAULT, "quick": QUICK, "large": LARGE}


def rounded(value: float, digits: int = 4) -> float | None:
    """value to ``digits`` significant digits, or None when it is not finite (JSON has no NaN)."""
    value = float(value)
    if not math.isfinite(value):
        return None
    out = float(f"{value:.{digits - 1}e}")
    return out if math.isfinite(out) else value  # rounding up near the largest float overflows
