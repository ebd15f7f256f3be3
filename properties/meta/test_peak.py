"""The peak-memory helper of the benchmarks (properties/benchmarks/peak.py) on allocations of known size.

A child process allocates a 200 MiB float32 tensor (written, so every page is
resident) inside the measured call; its peak must be 200 MiB within
PEAK_TOLERANCE. The second case first allocates and frees a larger tensor in
the set-up and frees its own tensor before returning: a measurement that read
the current resident set (VmRSS) instead of the high-water mark would see ~0,
and one that did not reset the mark after set-up would report the set-up's
peak, not the call's.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from properties.benchmarks import peak

MIB = 2**20
ALLOCATION_MIB = 200
SETUP_MIB = 300  # larger than the measured allocation, so a mark left from set-up would hide it
#: One 2 MiB page (where transparent huge pages back the tensor, residency moves in 2 MiB steps) plus the
#: interpreter's own allocations between the reset and the read (at most 0.1 MiB seen; the tensor's own
#: mapping is exact to a 4 KiB page, measured error <= 0.01 MiB).
PEAK_TOLERANCE = 2 * MIB


def _fill(mib: int) -> torch.Tensor:
    return torch.ones(mib * MIB // 4, dtype=torch.float32)


def allocation(mib: int) -> Callable[[], torch.Tensor]:
    """Set-up target: the call allocates and returns (so keeps alive) a tensor of ``mib`` MiB.

    The set-up fills a small tensor first: the first use of a kernel maps its code pages (~7 MiB of
    libtorch seen for ``torch.ones``), resident memory that is not the call's (peak.py: warm up in set-up).
    """
    _fill(1)
    return lambda: _fill(mib)


def allocation_after_freed_setup(setup_mib: int, mib: int) -> Callable[[], None]:
    """Set-up target: allocate and free ``setup_mib`` MiB; the call allocates ``mib`` MiB and frees it."""
    del_me = _fill(setup_mib)
    del del_me

    def run() -> None:
        t = _fill(mib)
        del t

    return run


@pytest.mark.skipif(peak.supported("cpu") is not None, reason=str(peak.supported("cpu")))
@pytest.mark.parametrize(
    "target, args",
    [
        ("properties.meta.test_peak:allocation", (ALLOCATION_MIB,)),
        ("properties.meta.test_peak:allocation_after_freed_setup", (SETUP_MIB, ALLOCATION_MIB)),
    ],
    ids=["kept", "freed-after-larger-setup"],
)
def test_peak_of_a_known_allocation(target: str, args: tuple[int, ...]) -> None:
    measured = peak.measure(target, *args)
    expected = ALLOCATION_MIB * MIB
    assert abs(measured.bytes - expected) <= PEAK_TOLERANCE, (
        f"peak {measured.mib:.2f} MiB for a {ALLOCATION_MIB} MiB allocation (tolerance {PEAK_TOLERANCE / MIB} MiB)"
    )
    assert measured.baseline > 0 and measured.device == "cpu"
