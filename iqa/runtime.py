"""Process-wide thread settings for tests, benchmarks and sweeps.

On small tensors extra threads only cost time (on a 2-core machine two torch
threads make a 64x64 matmul ~1000x slower than one), so iqa's entry points run
with one thread unless ``IQA_THREADS`` (or an explicit argument) says otherwise.
The same holds for numpy's BLAS (OpenBLAS spins its threads while it waits: a
200 x 200 ``numpy.linalg.eig`` took twice as long with its default two threads
as with one on this project's 2-core machine, and far longer beside a second
busy process), whose pool is capped with threadpoolctl. Importing iqa changes
nothing; the CLI, the property suite and the sweep workers call
:func:`configure_threads`.
"""

from __future__ import annotations

import os

import torch
from threadpoolctl import threadpool_limits

THREADS_VARIABLE = "IQA_THREADS"


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and the BLAS pools numpy loaded: ``threads``, else $IQA_THREADS, else 1."""
    if threads is None:
        raw = os.environ.get(THREADS_VARIABLE, "1")
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_VARIABLE} must be an integer >= 1, got {raw!r}") from None
    if threads < 1:
        raise ValueError(f"torch threads must be >= 1, got {threads}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    import numpy  # noqa: F401  (its BLAS must be loaded for threadpoolctl to find it)

    threadpool_limits(limits=threads, user_api="blas")
    return threads
