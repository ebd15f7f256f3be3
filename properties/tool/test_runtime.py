"""configure_threads sets torch's threads and numpy's BLAS pools alike, and refuses a bad IQA_THREADS."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from iqa import configure_threads


def blas_threads() -> set[int]:
    np.linalg.eigvals(np.eye(2))  # numpy's BLAS is loaded
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.fixture
def restored():
    suite_setting = int(os.environ.get("IQA_THREADS", "1"))  # read before a test changes the environment
    yield
    configure_threads(suite_setting)


@pytest.mark.parametrize("threads", [2, 1])
def test_torch_and_blas_get_the_same_threads(threads: int, restored) -> None:
    assert configure_threads(threads) == threads
    assert torch.get_num_threads() == threads
    assert blas_threads() == {threads}


def test_the_environment_sets_the_default(monkeypatch: pytest.MonkeyPatch, restored) -> None:
    monkeypatch.setenv("IQA_THREADS", "2")
    assert configure_threads() == 2 and blas_threads() == {2}
    monkeypatch.delenv("IQA_THREADS")
    assert configure_threads() == 1 and torch.get_num_threads() == 1 and blas_threads() == {1}


@pytest.mark.parametrize(
    "raw, message", [("two", "IQA_THREADS must be an integer >= 1, got 'two'"), ("0", "torch threads must be >= 1")]
)
def test_a_bad_thread_count_is_refused(raw: str, message: str, monkeypatch: pytest.MonkeyPatch, restored) -> None:
    monkeypatch.setenv("IQA_THREADS", raw)
    with pytest.raises(ValueError, match=message):
        configure_threads()
