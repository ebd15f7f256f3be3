"""Where a sweep's cells run: worker processes on this machine, or a Dask cluster.

Both are ``concurrent.futures`` executors, so :func:`iqa.measure.measure_variants`
treats them alike: every cell is one task (the variant's spec, the sweep as a
dict, the cell), results go back into the sweep's cell order, and a cell seeds
its own weights and inputs, so the numbers (and the report's files) do not
depend on which executor, worker or order ran them.

A Dask cluster (``--scheduler ADDRESS``, the optional extra ``dask``) needs
iqa, at the same version, importable on every worker, and a variant given as
``path/file.py:attr`` at the same path there; each task runs torch on one thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
from collections.abc import Iterator

from iqa.runtime import configure_threads

#: How long to wait for a scheduler to answer before giving up (seconds).
CONNECT_TIMEOUT = 10


class SchedulerError(Exception):
    """The Dask scheduler cannot be used: dask.distributed is missing or the address does not answer."""


def _worker_init(environ: dict[str, str]) -> None:
    """Give a forked worker the caller's environment, as spawn would (multiprocessing already gives it the
    caller's working directory and import path), and one torch thread."""
    os.environ.clear()
    os.environ.update(environ)
    configure_threads(1)


#: What the fork server imports once, before it forks any worker.
_PRELOAD = ["torch", "iqa.measure"]


def worker_pool(jobs: int) -> concurrent.futures.ProcessPoolExecutor:
    """``jobs`` worker processes with one torch thread each, forked from Python's fork server.

    The server is a fresh process that has imported torch and iqa and run nothing, so a worker carries none of
    the caller's torch state (threads, RNG, autograd) and starts without importing torch again: the server starts
    once per process and serves every later pool, where spawn imported torch in every worker (4-6 s each, seen in
    the suite on a 2-core machine). Each worker takes the caller's environment of the moment the pool is made.
    Where there is no fork server (Windows), the workers are spawned."""
    context: multiprocessing.context.BaseContext
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
    else:
        context = multiprocessing.get_context("spawn")
    environ = (dict(os.environ),)
    return concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context, initializer=_worker_init, initargs=environ)


@contextlib.contextmanager
def dask_pool(address: str) -> Iterator[concurrent.futures.Executor]:
    """An executor whose tasks run on the Dask cluster at ``address`` (e.g. ``tcp://host:8786``)."""
    try:
        from distributed import Client
    except ImportError as error:
        raise SchedulerError(
            f"--scheduler {address} needs dask.distributed: pip install 'iqa[dask]' ({error})"
        ) from error
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise SchedulerError(f"--scheduler {address}: no Dask scheduler answered ({error})") from error
    with client:
        executor = client.get_executor(pure=False)
        try:
            yield executor
        finally:
            executor.shutdown(wait=False)


def executor(jobs: int, scheduler: str | None) -> contextlib.AbstractContextManager[concurrent.futures.Executor]:
    """The executor of a sweep: the Dask cluster at ``scheduler`` when given, else ``jobs`` local processes."""
    return dask_pool(scheduler) if scheduler is not None else worker_pool(jobs)
