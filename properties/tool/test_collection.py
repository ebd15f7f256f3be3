"""Meta test: every process collects the same tests, so pytest-xdist can run the suite (``tox -- -n 2``).

xdist starts worker processes, each collecting the suite on its own, and stops
("Different tests were collected between gw0 and gw1") unless every worker
finds the same test ids in the same order. Each worker has its own
PYTHONHASHSEED, so anything that orders tests by iterating a set or dict of
strings, or names them from a random draw, breaks it. This collects the suite in
two subprocesses with different hash seeds and requires identical, unique ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Generous: collection imports torch and every property module (a few seconds on a loaded 2-core machine).
TIMEOUT_S = 300


def _environment(hash_seed: str) -> dict[str, str]:
    """This process's environment with a fixed hash seed and nothing that would make the child an xdist worker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT_TEST"))}
    env["PYTHONHASHSEED"] = hash_seed
    return env


def _start_collection(hash_seed: str, variants: list[str]) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "properties"]
    for spec in variants:
        command += ["--variant", spec]
    return subprocess.Popen(
        command, cwd=ROOT, env=_environment(hash_seed), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _test_ids(process: subprocess.Popen[str], hash_seed: str) -> list[str]:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"collecting the suite (PYTHONHASHSEED={hash_seed}) took over {TIMEOUT_S} s")
    if process.returncode != 0:
        pytest.fail(f"collection failed (PYTHONHASHSEED={hash_seed}, exit {process.returncode}):\n{output[-4000:]}")
    return [line.strip() for line in output.splitlines() if "::" in line and not line.startswith(" ")]


def test_every_process_collects_the_same_tests(pytestconfig: pytest.Config) -> None:
    variants = list(pytestconfig.getoption("--variant"))
    seeds = ("0", "4242")
    processes = [_start_collection(seed, variants) for seed in seeds]  # concurrently: two cores, half the wait
    first, second = (_test_ids(p, s) for p, s in zip(processes, seeds))
    assert first, "the suite collected no tests"
    assert len(set(first)) == len(first), f"duplicate test ids: {sorted({i for i in first if first.count(i) > 1})}"
    missing, extra = sorted(set(first) - set(second)), sorted(set(second) - set(first))
    assert not missing and not extra, (
        f"collections differ: only with seed 0: {missing[:10]}; only with 4242: {extra[:10]}"
    )
    assert first == second, "the same tests, in a different order"
