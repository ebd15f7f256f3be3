"""Baselines: a variant's metrics on a sweep, stored to compare later runs against.

A baseline file is strict JSON (sorted keys, no NaN)::

    {
      "schema": "iqa-baseline",
      "schema_version": 1,
      "variant": name,                  # the variant it was measured on
      "measure_format": "iqa-measure/1",# the iqa.measure output it summarises
      "sweep": Sweep.to_dict(),         # regressions re-measure on exactly this sweep
      "metrics": {name: float | null},  # iqa.measure's scalar metrics
      "properties": null | {"profile": str, "verdicts": {property: verdict}},
      "versions": {"python", "torch", "numpy", "iqa"},
      "training": null | {"seed": int, "quick": bool, "metrics": {name: float | null}}
    }

``training`` (optional; an older file without it reads as null) holds the
metrics of ``iqa train`` (iqa.train.training_metrics) for its seed and set-up.

:func:`load` checks all of it and raises :class:`BaselineError`, naming the file
and what is wrong, for a missing, unreadable, corrupt or mismatched file (a
schema or measure format this iqa does not read). :func:`save` writes
atomically (a temporary file renamed over the target), so a reader, or a
crash half-way, never sees half a baseline.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iqa.atomic import write_json
from iqa.measure import FORMAT as MEASURE_FORMAT
from iqa.measure import Sweep
from iqa.verdicts import VERDICTS

SCHEMA = "iqa-baseline"
SCHEMA_VERSION = 1
_FIELDS = {"schema", "schema_version", "variant", "measure_format", "sweep", "metrics", "properties", "versions"}
#: Fields a baseline may omit (written by newer iqa; an older file without them reads as None).
_OPTIONAL = {"training"}


@dataclass(frozen=True)
class Training:
    """The training metrics of a baseline (``iqa train``'s, :func:`iqa.train.training_metrics`) and how they
    were made: the seed and whether the ``--quick`` set-up ran."""

    seed: int
    quick: bool
    metrics: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "quick": self.quick, "metrics": dict(self.metrics)}


class BaselineError(Exception):
    """A baseline file that is missing, unreadable, corrupt or of another schema; the message says which."""


@dataclass(frozen=True)
class Baseline:
    """What a baseline holds (module docstring); ``verdicts`` is None when properties were not recorded."""

    variant: str
    sweep: Sweep
    metrics: dict[str, float | None]
    measure_format: str = MEASURE_FORMAT
    verdicts: dict[str, str] | None = None
    profile: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    training: Training | None = None

    def to_dict(self) -> dict[str, Any]:
        properties = None if self.verdicts is None else {"profile": self.profile, "verdicts": dict(self.verdicts)}
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "variant": self.variant,
            "measure_format": self.measure_format,
            "sweep": self.sweep.to_dict(),
            "metrics": dict(self.metrics),
            "properties": properties,
            "versions": dict(self.versions),
            "training": None if self.training is None else self.training.to_dict(),
        }

    @classmethod
    def from_measurement(
        cls, measurement: dict[str, Any], verdicts: dict[str, str] | None = None, profile: str | None = None
    ) -> Baseline:
        """A baseline from :func:`iqa.measure.measure_variant`'s result (and optionally property verdicts)."""
        return cls(
            variant=measurement["variant"],
            sweep=Sweep.from_dict(measurement["sweep"]),
            metrics=dict(measurement["metrics"]),
            measure_format=measurement["format"],
            verdicts=verdicts,
            profile=profile,
            versions=dict(measurement.get("versions", {})),
        )


def _fail(path: Path, problem: str) -> BaselineError:
    return BaselineError(f"baseline {path}: {problem}")


def parse(data: Any, path: Path) -> Baseline:
    """Check the decoded JSON of a baseline file and build the Baseline (``path`` names it in errors)."""
    if not isinstance(data, dict):
        raise _fail(path, f"corrupt: expected a JSON object, found {type(data).__name__}")
    if data.get("schema") != SCHEMA:
        raise _fail(path, f"not an iqa baseline (schema {data.get('schema')!r}, expected {SCHEMA!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise _fail(
            path,
            f"schema version {version!r}, but this iqa reads version {SCHEMA_VERSION}; "
            "recreate it with `iqa regress VARIANT --update` after removing it",
        )
    missing, unknown = sorted(_FIELDS - set(data)), sorted(set(data) - _FIELDS - _OPTIONAL)
    if missing or unknown:
        raise _fail(path, f"corrupt: missing field(s) {missing or '-'}, unknown field(s) {unknown or '-'}")
    if data["measure_format"] != MEASURE_FORMAT:
        raise _fail(
            path,
            f"measured as {data['measure_format']!r}, but this iqa measures {MEASURE_FORMAT!r}: the metrics are not "
            "comparable; recreate it with `iqa regress VARIANT --update` after removing it",
        )
    if not isinstance(data["variant"], str) or not data["variant"]:
        raise _fail(path, f"corrupt: 'variant' must be a non-empty string, got {data['variant']!r}")
    try:
        sweep = Sweep.from_dict(data["sweep"]) if isinstance(data["sweep"], dict) else None
    except (TypeError, ValueError) as error:
        raise _fail(path, f"corrupt sweep: {error}") from error
    if sweep is None:
        raise _fail(path, f"corrupt: 'sweep' must be an object, got {type(data['sweep']).__name__}")
    metrics = data["metrics"]
    if not isinstance(metrics, dict) or not metrics:
        raise _fail(path, "corrupt: 'metrics' must be a non-empty object of numbers")
    for name, value in metrics.items():
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))
        if not ok:
            raise _fail(path, f"corrupt: metric {name!r} is {value!r}, not a finite number or null")
    verdicts, profile = _parse_properties(data["properties"], path)
    training = _parse_training(data.get("training"), path)
    versions = data["versions"]
    if not isinstance(versions, dict) or not all(isinstance(v, str) for v in versions.values()):
        raise _fail(path, "corrupt: 'versions' must be an object of strings")
    return Baseline(
        variant=data["variant"],
        sweep=sweep,
        metrics={k: None if v is None else float(v) for k, v in metrics.items()},
        measure_format=data["measure_format"],
        verdicts=verdicts,
        profile=profile,
        versions=dict(versions),
        training=training,
    )


def _finite_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


def _parse_training(training: Any, path: Path) -> Training | None:
    if training is None:
        return None
    if not isinstance(training, dict) or set(training) != {"seed", "quick", "metrics"}:
        raise _fail(path, "corrupt: 'training' must be null or an object with 'seed', 'quick' and 'metrics'")
    seed, quick, metrics = training["seed"], training["quick"], training["metrics"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not isinstance(quick, bool):
        raise _fail(path, "corrupt: 'training.seed' must be an integer and 'training.quick' a boolean")
    if not isinstance(metrics, dict) or not metrics:
        raise _fail(path, "corrupt: 'training.metrics' must be a non-empty object of numbers")
    for name, value in metrics.items():
        if not _finite_or_null(value):
            raise _fail(path, f"corrupt: training metric {name!r} is {value!r}, not a finite number or null")
    return Training(seed, quick, {k: None if v is None else float(v) for k, v in metrics.items()})


def _parse_properties(properties: Any, path: Path) -> tuple[dict[str, str] | None, str | None]:
    if properties is None:
        return None, None
    if not isinstance(properties, dict) or set(properties) != {"profile", "verdicts"}:
        raise _fail(path, "corrupt: 'properties' must be null or an object with 'profile' and 'verdicts'")
    profile, verdicts = properties["profile"], properties["verdicts"]
    if not isinstance(profile, str) or not isinstance(verdicts, dict):
        raise _fail(path, "corrupt: 'properties.profile' must be a string and 'properties.verdicts' an object")
    for name, verdict in verdicts.items():
        if verdict not in VERDICTS:
            raise _fail(path, f"corrupt: property {name!r} has verdict {verdict!r}, not one of {', '.join(VERDICTS)}")
    return dict(verdicts), profile


def load(path: str | os.PathLike[str]) -> Baseline:
    """Read and check a baseline file; :class:`BaselineError` says what is wrong with it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _fail(path, "does not exist; create it with `iqa regress VARIANT --update`") from None
    except (OSError, UnicodeDecodeError) as error:
        raise _fail(path, f"cannot be read: {error}") from error
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise _fail(path, f"corrupt: not valid JSON ({error})") from error
    except ValueError as error:
        raise _fail(path, f"corrupt: {error}") from error
    return parse(data, path)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def save(path: str | os.PathLike[str], baseline: Baseline) -> None:
    """Write the baseline atomically (the old file, if any, stays whole until the new one replaces it)."""
    write_json(path, baseline.to_dict())
