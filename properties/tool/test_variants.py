"""The variant protocol and registry: specs resolve, bad ones say what exists, factories honour seeds.

These are plain tests of ``iqa.variants`` (no variant parametrization): how a
name, a ``package.module:attr``, a ``path/file.py:attr`` and an installed
plug-in (entry-point group ``iqa.variants``) become a :class:`Variant`, and how
each way of getting it wrong is reported.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from iqa import FixedPointLayer, ImplicitQueryAttention
from iqa.variants import (
    BUILTIN_VARIANTS,
    ENTRY_POINT_GROUP,
    HopfieldAttention,
    Tag,
    Variant,
    VariantError,
    as_tags,
    available,
    plugin_variants,
    resolve,
    resolve_all,
)

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_NAMES = [v.name for v in BUILTIN_VARIANTS]

USER_MODULE = '''
import torch
from torch import nn
from iqa import Tag, Variant
from iqa.variants import HopfieldAttention


class MyLayer(HopfieldAttention):
    """My layer: Hopfield attention.

    A second paragraph that is not part of the description.
    """

    variant_name = "mine"
    tags = ("convex_hull", "deterministic")
    expected_failures = {"test_something": "because"}


class WithBias(HopfieldAttention):
    def __init__(self, embed_dim, n_iters=10, **options):
        super().__init__(embed_dim, n_iters, **options)
        self.bias = nn.Parameter(torch.randn(embed_dim))


VARIANT = Variant.from_layer(MyLayer, name="my-variant", tags={Tag.CONVEX_HULL})


def make_variant():
    return VARIANT


def needs_arguments(x):
    return VARIANT


layer = MyLayer(3)
number = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "iqa_test_user_variants.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "iqa_test_user_variants", raising=False)
    return path


def test_builtin_names_resolve() -> None:
    assert list(available())[: len(BUILTIN_NAMES)] == BUILTIN_NAMES
    for name in BUILTIN_NAMES:
        assert resolve(name).name == name
        assert resolve(f"  {name} ").name == name


def test_unknown_name_lists_what_exists() -> None:
    with pytest.raises(VariantError, match="unknown variant 'nope'; available: reference, hopfield") as info:
        resolve("nope")
    assert all(name in str(info.value) for name in BUILTIN_NAMES)
    assert "package.module:attr" in str(info.value)


@pytest.mark.parametrize("spec", ["", "   ", None, 3])
def test_empty_or_non_string_spec(spec: object) -> None:
    with pytest.raises(VariantError, match="non-empty string"):
        resolve(spec)  # type: ignore[arg-type]


def test_module_attr_specs(user_module: Path) -> None:
    assert resolve("iqa_test_user_variants:VARIANT").name == "my-variant"
    assert resolve("iqa_test_user_variants:make_variant").name == "my-variant"
    from_class = resolve("iqa_test_user_variants:MyLayer")
    assert from_class.name == "mine"
    assert from_class.tags == {Tag.CONVEX_HULL, Tag.DETERMINISTIC}
    assert dict(from_class.expected_failures) == {"test_something": "because"}
    assert from_class.description == "My layer: Hopfield attention."
    assert resolve("iqa.variants:HopfieldAttention").name == "HopfieldAttention"


def test_file_spec(user_module: Path) -> None:
    assert resolve(f"{user_module}:VARIANT").name == "my-variant"
    with pytest.raises(VariantError, match="does not exist"):
        resolve(f"{user_module.parent / 'missing.py'}:VARIANT")


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("nothing", "has no attribute 'nothing'"),
        ("layer", "is a layer instance \\(MyLayer\\); point at its class"),
        ("number", "is a int; expected an iqa Variant"),
        ("needs_arguments", "is a function that needs arguments"),
    ],
)
def test_bad_attr_says_why(user_module: Path, attr: str, message: str) -> None:
    with pytest.raises(VariantError, match=message):
        resolve(f"iqa_test_user_variants:{attr}")


def test_missing_module_is_named() -> None:
    with pytest.raises(VariantError, match="cannot import module 'iqa_no_such_module'"):
        resolve("iqa_no_such_module:X")


def test_module_that_raises_on_import_says_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "iqa_test_broken.py").write_text("import torch\n\nx = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec in ("iqa_test_broken:X", f"{tmp_path / 'iqa_test_broken.py'}:X"):
        with pytest.raises(VariantError, match=r"failed at .*iqa_test_broken\.py:3: ZeroDivisionError"):
            resolve(spec)


def test_resolve_all_default_dedup_and_clash(user_module: Path) -> None:
    assert [v.name for v in resolve_all(None)] == list(available())
    assert [v.name for v in resolve_all(["reference,hopfield", "reference", " hopfield "])] == ["reference", "hopfield"]
    twice = ["iqa_test_user_variants:MyLayer", "iqa_test_user_variants:MyLayer"]
    assert [v.name for v in resolve_all(twice)] == ["mine"]
    clash = Variant.from_layer(ImplicitQueryAttention, name="hopfield")
    sys.modules["iqa_test_user_variants"].CLASH = clash  # type: ignore[attr-defined]
    with pytest.raises(VariantError, match="two variants are named 'hopfield'"):
        resolve_all(["hopfield", "iqa_test_user_variants:CLASH"])
    with pytest.raises(VariantError, match="no variant named"):
        resolve_all([" , "])


def _install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entries: str, module: str) -> None:
    """A minimal installed distribution on sys.path: dist-info with entry points, and its module."""
    dist = tmp_path / "iqa_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: iqa-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entries}\n")
    (tmp_path / "iqa_test_plugin.py").write_text(textwrap.dedent(module))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "iqa_test_plugin", raising=False)


def test_entry_point_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = """
        from iqa.variants import HopfieldAttention, Variant
        PLUGGED = Variant.from_layer(HopfieldAttention, name="plugged", tags={"deterministic"})
    """
    _install_plugin(tmp_path, monkeypatch, "plugged = iqa_test_plugin:PLUGGED", module)
    assert list(plugin_variants()) == ["plugged"]
    assert list(available()) == [*BUILTIN_NAMES, "plugged"]
    assert resolve("plugged").tags == {Tag.DETERMINISTIC}


def test_entry_point_clash_and_breakage_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = """
        from iqa.variants import HopfieldAttention, Variant
        SAME = Variant.from_layer(HopfieldAttention, name="reference")
    """
    entries = "reference = iqa_test_plugin:SAME\nbroken = iqa_test_plugin:MISSING"
    _install_plugin(tmp_path, monkeypatch, entries, module)
    with pytest.raises(VariantError, match=r"plug-in variant 'broken' .* failed to load"):
        available()


def test_tags_and_expected_failures_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown tag 'convex'; known tags: convex_hull"):
        as_tags(["convex"])
    with pytest.raises(ValueError, match="expected_failures maps a property's test function name"):
        Variant.from_layer(HopfieldAttention, expected_failures={"convex hull": "why"})
    with pytest.raises(ValueError, match="expected_failures maps"):
        Variant.from_layer(HopfieldAttention, expected_failures={"test_x": ""})
    with pytest.raises(ValueError, match="non-empty name"):
        Variant(name="", factory=HopfieldAttention)
    with pytest.raises(TypeError, match="factory must be callable"):
        Variant(name="x", factory=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seed": -1}, "seed must be an int in \\[0, 2\\*\\*63\\)"),
        ({"seed": True}, "seed must be"),
        ({"seed": 1.5}, "seed must be"),
        ({"scale": float("nan")}, "scale must be a finite number >= 0"),
        ({"scale": -1.0}, "scale must be"),
    ],
)
def test_make_checks_its_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve("hopfield").make(3, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="embed_dim must be an integer >= 1"):
        resolve("hopfield").make(0)


def test_factory_must_return_a_layer() -> None:
    variant = Variant(name="bad", factory=lambda d, **kw: nn.Linear(d, d))
    with pytest.raises(TypeError, match=r"factory returned Linear, not an iqa\.FixedPointLayer"):
        variant.make(3)


def test_make_scale_dtype_seed_and_generator() -> None:
    variant = resolve("hopfield")
    unit, double = variant.make(4, seed=3), variant.make(4, scale=2.0, seed=3, dtype=torch.float32)
    assert double.W_K.weight.dtype == torch.float32
    assert torch.equal(double.W_K.weight, (2.0 * unit.W_K.weight).float())
    from_generator = variant.make(4, seed=torch.Generator().manual_seed(3))
    assert torch.equal(from_generator.Omega_Q.weight, unit.Omega_Q.weight)


def test_factory_seeds_every_parameter_and_leaves_global_rng_alone(user_module: Path) -> None:
    """Parameters drawn in __init__ from the global RNG come from the seed; the caller's RNG is untouched."""
    variant = resolve("iqa_test_user_variants:WithBias")
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a = variant.make(4, seed=11)
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(1)
    b = variant.make(4, seed=11)
    c = variant.make(4, seed=12)
    assert isinstance(a, FixedPointLayer)
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.state_dict()["bias"], c.state_dict()["bias"])


def test_variants_pickle() -> None:
    """Variants travel to worker processes (report sweeps with --jobs)."""
    for variant in BUILTIN_VARIANTS:
        copy = pickle.loads(pickle.dumps(variant))
        assert (copy.name, copy.tags, dict(copy.expected_failures)) == (
            variant.name,
            variant.tags,
            dict(variant.expected_failures),
        )
        D = variant.domain.smallest_dim(3)  # 3, or the next width the variant's domain allows
        assert torch.equal(copy.make(D, seed=1).state_dict()["W_K.weight"], variant.make(D, seed=1).W_K.weight)


def _collect(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "properties/variant/test_seed.py",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )


def test_pytest_selects_variants_by_option_and_environment() -> None:
    """--variant (repeatable, comma-separated) wins over $IQA_VARIANTS; a bad name is a usage error."""
    by_env = _collect(env={"IQA_VARIANTS": "hopfield,positional"})
    assert by_env.returncode == 0, by_env.stdout + by_env.stderr
    assert "test_layer_equals_seed_bitwise[hopfield]" in by_env.stdout
    assert "test_layer_equals_seed_bitwise[positional]" in by_env.stdout
    assert "[reference]" not in by_env.stdout
    bad = _collect("--variant", "nope", env={"IQA_VARIANTS": "hopfield"})  # the option wins over the variable
    assert bad.returncode == 4
    assert "unknown variant 'nope'; available: reference, hopfield" in bad.stderr
