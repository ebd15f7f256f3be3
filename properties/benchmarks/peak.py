"""Peak memory of one call, measured by the allocator (CUDA) or the operating system (CPU), in a fresh process.

``measure(target, *args)`` starts ``python -m properties.benchmarks.peak`` in a
new interpreter, which imports ``target`` ("package.module:function"), calls
``function(*args)`` to set up (build the problem, warm up) and gets back the
zero-argument callable to measure. Then:

- CPU: it resets the process's resident-set high-water mark (Linux: writing
  "5" to /proc/self/clear_refs sets VmHWM to the current VmRSS), runs the
  callable, and reports VmHWM minus the VmRSS at the reset: the most resident
  memory the call added at any moment. A fresh process per measurement keeps
  earlier measurements (and their freed-but-kept heap) out of it, and the
  child runs with glibc's mmap and trim thresholds fixed at 128 KiB
  (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) so that every
  tensor above that size is mapped on allocation and unmapped on free: the
  peak then follows the live tensors, not glibc's heap growth policy (which
  otherwise keeps freed chunks of up to 32 MiB and can hide a reuse of them).
- CUDA: ``torch.cuda.reset_peak_memory_stats()``, then
  ``max_memory_allocated()`` minus ``memory_allocated()`` before the call.

The resident set also counts code: the first call of a kernel maps its pages
of libtorch (~7 MiB for the first ``torch.ones``), so the set-up must warm up
what the call will run (on a small problem: the code is the same), or the peak
includes them.

The result is in bytes; resolution is a 4 KiB page on CPU (a 2 MiB page where
transparent huge pages back the memory).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MMAP_THRESHOLD = 128 * 1024  # glibc's default static threshold: tensors above it are mapped on their own
_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"
_MARKER = "IQA-PEAK-RESULT "
#: The directory holding the ``properties`` package: the child runs there, with it first on its path.
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True)
class Peak:
    """The peak memory a call added over what was resident (CPU) or allocated (CUDA) when it started."""

    bytes: int
    baseline: int  # resident (CPU) or allocated (CUDA) bytes at the start of the call
    device: str
    how: str  # "VmHWM - VmRSS (fresh process)" or "cuda max_memory_allocated"

    @property
    def mib(self) -> float:
        return self.bytes / 2**20


def supported(device: str = "cpu") -> str | None:
    """None when peaks can be measured on ``device`` here, else the reason they cannot."""
    if device.startswith("cuda"):
        return None  # checked in the child: torch.cuda raises a clear error without a GPU
    if not os.path.exists(_CLEAR_REFS):
        return "measuring a CPU peak needs Linux's /proc/self/clear_refs (resetting VmHWM)"
    return None


def _status_kib(field: str) -> int:
    with open(_STATUS) as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_STATUS} has no {field} line")
    return int(match.group(1))


def _cpu_peak(run: Callable[[], Any]) -> Peak:
    with open(_CLEAR_REFS, "w") as clear:
        clear.write("5")  # VmHWM := VmRSS
    baseline = _status_kib("VmRSS")
    result = run()
    peak = _status_kib("VmHWM")
    del result
    return Peak(bytes=(peak - baseline) * 1024, baseline=baseline * 1024, device="cpu", how="VmHWM - VmRSS")


def _cuda_peak(run: Callable[[], Any], device: str) -> Peak:
    import torch

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    result = run()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return Peak(bytes=peak - baseline, baseline=baseline, device=device, how="cuda max_memory_allocated")


def _resolve(target: str) -> Callable[..., Callable[[], Any]]:
    module, _, name = target.partition(":")
    if not module or not name:
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def measure(target: str, *args: Any, device: str = "cpu", timeout: float = 1800.0) -> Peak:
    """The peak memory of the callable that ``target(*args)`` returns, run once in a fresh process.

    ``args`` must be JSON-serialisable; ``device`` selects CUDA's counter ("cuda", "cuda:1") or the
    process's resident set ("cpu"). The child inherits the environment (IQA_THREADS, ...), with the
    repository root first on PYTHONPATH so that ``properties`` imports.
    """
    reason = supported(device)
    if reason is not None:
        raise RuntimeError(reason)
    path = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path)
    env.update(MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD), MALLOC_TRIM_THRESHOLD_=str(MMAP_THRESHOLD))
    command = [sys.executable, "-m", "properties.benchmarks.peak", target, json.dumps(list(args)), device]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=_ROOT, timeout=timeout, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith(_MARKER)]
    if done.returncode != 0 or len(lines) != 1:
        raise RuntimeError(
            f"peak measurement of {target}{tuple(args)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
        )
    return Peak(**json.loads(lines[0][len(_MARKER) :]))


def _child(target: str, args_json: str, device: str) -> None:
    from iqa import configure_threads

    configure_threads()
    run = _resolve(target)(*json.loads(args_json))
    peak = _cuda_peak(run, device) if device.startswith("cuda") else _cpu_peak(run)
    print(_MARKER + json.dumps(peak.__dict__), flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
