"""Benchmarks (pytest-benchmark): run with ``tox -e bench``; never under xdist."""
