"""Sweeps on a Dask cluster (``--scheduler``): the same files and the same metrics as on local processes.

Runs a ``distributed.LocalCluster`` of two worker processes (one thread each) on
this machine; skipped where dask.distributed is not installed (``tox -e dask``
installs it).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from iqa import cli, regress
from iqa.report import Options, build, configure_parser, main
from properties.strategies import TINY_SWEEP as TINY

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=40
    ) as cluster:
        yield cluster.scheduler_address


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_report_made_on_a_cluster_is_byte_identical(scheduler: str, tmp_path: Path) -> None:
    common = {"variants": ("reference", "hopfield"), "properties": False, "progress": False}
    build(Options(out=tmp_path / "local", **common), sweep=TINY)  # type: ignore[arg-type]
    build(Options(out=tmp_path / "dask", scheduler=scheduler, **common), sweep=TINY)  # type: ignore[arg-type]
    with distributed.Client(scheduler) as client:  # the cells and figures did run on the cluster
        ran = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert {"worker", "render_figures"} <= set(ran), ran  # key prefixes of iqa.measure._worker and the figures
    local, dask = _files(tmp_path / "local"), _files(tmp_path / "dask")
    assert sorted(local) == sorted(dask) and any(name.endswith(".png") for name in local)
    assert [name for name in local if local[name] != dask[name]] == []


def test_regress_on_a_cluster_matches_its_local_baseline(scheduler: str, tmp_path: Path, capsys) -> None:
    path = tmp_path / "reference.json"
    regress.update("reference", path, sweep=TINY, verdicts=lambda spec, profile: {})
    assert cli.main(["regress", "reference", "--baseline", str(path), "--scheduler", scheduler]) == 0
    out = capsys.readouterr().out
    assert "**no regression**" in out
    verdicts = {line.rstrip(" |").rsplit("|", 1)[-1].strip() for line in out.splitlines() if line.startswith("| ")}
    assert verdicts - {"verdict"} <= {regress.OK, regress.SHOWN}, verdicts  # the same values: never "better"


def test_an_unreachable_scheduler_is_a_usage_error(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    address = "tcp://127.0.0.1:9"  # the discard port: nothing listens there
    args = parser.parse_args(["--out", str(tmp_path / "r"), "--no-properties", "--scheduler", address])
    assert main(args) == 2
    assert "no Dask scheduler answered" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
