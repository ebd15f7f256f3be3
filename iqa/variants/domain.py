"""The shapes a variant supports: its shape domain.

A layer with h heads needs D to be a multiple of h; a LayerNorm-based layer is
constant at D = 1; a slot layer has K slots drawn independently of the N tokens.
A :class:`Domain` states such constraints once, so that the suite draws only
shapes inside it (a layer that raises or returns non-finite values inside its
declared domain fails; outside it, nothing is drawn) and ``iqa variants`` can
show them.
"""

from __future__ import annotations

from dataclasses import dataclass

from iqa.validation import check_positive_int


@dataclass(frozen=True)
class Domain:
    """Shapes a variant supports: x is ``[B, N, D]``, the fixed-point state ``[B, K, D_y]``.

    Args:
        dim_multiple: D must be a multiple of this (the number of heads).
        min_dim, max_dim: D's range (``max_dim=None``: unbounded).
        min_tokens, max_tokens: N's range.
        slots: ``None`` when the state has one row per token (K = N); a range ``(lo, hi)`` when K is the
            layer's own number of slots or latents, drawn from that range independently of N and given to
            the factory as the layer option ``slots=K``.
    """

    dim_multiple: int = 1
    min_dim: int = 1
    max_dim: int | None = None
    min_tokens: int = 1
    max_tokens: int | None = None
    slots: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        check_positive_int("Domain.dim_multiple", self.dim_multiple)
        check_positive_int("Domain.min_dim", self.min_dim)
        check_positive_int("Domain.min_tokens", self.min_tokens)
        for name, low, high in (("dim", self.min_dim, self.max_dim), ("tokens", self.min_tokens, self.max_tokens)):
            if high is not None:
                check_positive_int(f"Domain.max_{name}", high)
                if high < low:
                    raise ValueError(f"Domain: max_{name}={high} is below min_{name}={low}")
        if self.smallest_dim(self.min_dim) is None:
            raise ValueError(f"Domain: no multiple of {self.dim_multiple} lies in D's range {self._dim_range()}")
        if self.slots is not None:
            if not (isinstance(self.slots, tuple) and len(self.slots) == 2):
                raise ValueError(f"Domain.slots must be None or a (low, high) pair, got {self.slots!r}")
            low, high = self.slots
            check_positive_int("Domain.slots low", low)
            check_positive_int("Domain.slots high", high)
            if high < low:
                raise ValueError(f"Domain.slots: high {high} is below low {low}")

    def dims(self, low: int, high: int) -> list[int]:
        """The widths D in [low, high] (a test's range) that the domain allows, ascending."""
        low = max(low, self.min_dim)
        if self.max_dim is not None:
            high = min(high, self.max_dim)
        first = -(-low // self.dim_multiple) * self.dim_multiple
        return list(range(first, high + 1, self.dim_multiple))

    def smallest_dim(self, low: int) -> int | None:
        """The smallest width D >= ``low`` that the domain allows (None: there is none)."""
        first = -(-max(low, self.min_dim) // self.dim_multiple) * self.dim_multiple
        return first if self.max_dim is None or first <= self.max_dim else None

    def tokens(self, low: int, high: int) -> tuple[int, int] | None:
        """The token range [low, high] cut to the domain's, or None when they do not meet."""
        low = max(low, self.min_tokens)
        if self.max_tokens is not None:
            high = min(high, self.max_tokens)
        return (low, high) if low <= high else None

    def contains(self, tokens: int, dim: int, slots: int | None = None) -> bool:
        """Whether N = ``tokens``, D = ``dim`` (and K = ``slots`` for a slot domain) lie inside the domain."""
        if dim not in self.dims(dim, dim) or self.tokens(tokens, tokens) is None:
            return False
        if self.slots is None:
            return slots is None
        return slots is not None and self.slots[0] <= slots <= self.slots[1]

    def _dim_range(self) -> str:
        return f"[{self.min_dim}, {'inf' if self.max_dim is None else self.max_dim}]"

    def describe(self) -> str:
        """One line for ``iqa variants``, e.g. "D multiple of 2, D >= 2; N >= 1; K in [2, 5] slots"."""
        dim = [f"D multiple of {self.dim_multiple}"] if self.dim_multiple > 1 else []
        if self.max_dim is not None:
            dim.append(f"{self.min_dim} <= D <= {self.max_dim}")
        elif self.min_dim > 1:
            dim.append(f"D >= {self.min_dim}")
        tokens = (
            f"{self.min_tokens} <= N <= {self.max_tokens}" if self.max_tokens is not None else f"N >= {self.min_tokens}"
        )
        state = "K = N" if self.slots is None else f"K in [{self.slots[0]}, {self.slots[1]}] slots"
        return "; ".join([", ".join(dim) or "any D", tokens, state])


#: The domain of a variant that declares none: any D >= 1, any N >= 1, one state row per token.
ANY_SHAPE = Domain()
