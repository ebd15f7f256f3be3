"""Bytes that autograd saves for backward, counted deterministically.

The memory a backward mode costs is what the recorded graph keeps alive until
the backward runs: the tensors its operations save (inputs of a matmul, the
output of a softmax, ...). :func:`saved_tensor_bytes` counts them with
``torch.autograd.graph.saved_tensors_hooks`` instead of reading an allocator,
so the count is exact, repeatable and the same on every device.

The counting rule: every tensor packed for backward while ``fn`` runs is
mapped to the storage it views, and each storage is counted once, at its full
size (``untyped_storage().nbytes()``: a view keeps its whole storage alive).
So a weight or an input that many operations save costs its bytes once, not
once per save; storages of the tensors in ``exclude`` (typically the
parameters and inputs, which are alive whether or not a graph is recorded) are
not counted at all. Tensors saved by graph pieces that ``fn`` builds and then
drops are counted too: the count is what a graph reaching all of them would hold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SavedTensors", "count_saved_tensors", "saved_tensor_bytes"]


@dataclass(frozen=True)
class SavedTensors:
    """What ``fn`` saved for backward: ``bytes`` over ``storages`` distinct storages, from ``saves`` packs."""

    bytes: int
    storages: int
    saves: int


def _storage_key(t: Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


def _storage_bytes(t: Tensor) -> int:
    return int(t.untyped_storage().nbytes())


def count_saved_tensors(fn: Callable[[], Any], exclude: Iterable[Tensor] = ()) -> SavedTensors:
    """Run ``fn()`` and count the tensors autograd saves for backward meanwhile (rule: module docstring).

    The packed tensors are held until counting ends, so no storage address is
    freed and reused while ``fn`` runs: equal addresses are the same storage.
    """
    excluded = {_storage_key(t) for t in exclude}
    held: list[Tensor] = []

    def pack(t: Tensor) -> Tensor:
        held.append(t)
        return t

    def unpack(t: Tensor) -> Tensor:
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        fn()
    sizes: dict[tuple[str, int], int] = {}
    for t in held:
        key = _storage_key(t)
        if key not in excluded:
            sizes[key] = max(sizes.get(key, 0), _storage_bytes(t))
    return SavedTensors(bytes=sum(sizes.values()), storages=len(sizes), saves=len(held))


def saved_tensor_bytes(fn: Callable[[], Tensor], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages that autograd saves for backward while ``fn()`` runs.

    Each storage counts once at its full size; storages of ``exclude`` do not
    count (see the module docstring). Under ``torch.no_grad()`` this is 0.
    """
    return count_saved_tensors(fn, exclude).bytes
