"""The versions a report, a baseline or a results file records, so that a reader can reproduce it."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def package_versions(*packages: str) -> dict[str, str]:
    """Python's version and each named distribution's ("not installed" where it is absent)."""
    out = {"python": sys.version.split()[0]}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out
