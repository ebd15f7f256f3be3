"""The README's "Writing a variant" examples run as written: each Python block of that section, in order, is one
module; every variant it defines resolves, builds inside its shape domain and solves a small input."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

from iqa import FixedPointLayer, Status, Variant
from iqa.variants.registry import as_variant

README = Path(__file__).resolve().parents[2] / "README.md"


def section_code(title: str) -> str:
    """The Python blocks of the README section ``title`` (up to the next section of the same level), joined."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start : end if end > 0 else None], flags=re.S)
    assert blocks, f"no python block in README section {title!r}"
    return "\n".join(blocks)


def test_writing_a_variant_examples_build_and_solve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module_file = tmp_path / "readme_variants.py"
    module_file.write_text(section_code("Writing a variant"), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("readme_variants")
    finally:
        sys.modules.pop("readme_variants", None)
    found = [
        as_variant(obj, name)
        for name, obj in vars(module).items()
        if isinstance(obj, Variant)
        or (isinstance(obj, type) and issubclass(obj, FixedPointLayer) and obj.__module__ == module.__name__)
    ]
    assert {"tempered", "tempered-seed", "mini-slots"} <= {v.name for v in found}, [v.name for v in found]
    for variant in found:
        dim = variant.domain.dims(4, 8)[0]
        slots = {"slots": variant.domain.slots[0]} if variant.domain.slots else {}
        layer = variant.make(dim, scale=0.5, seed=1, solver="picard", tol=1e-9, max_iter=500, **slots)
        x = torch.randn(2, 5, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y = layer(x)
        assert torch.isfinite(y).all(), variant.name
        assert layer.last_solution is not None and layer.last_solution.status == Status.CONVERGED, variant.name
