"""``iqa train``'s own tests: the CLI, byte-identical pages, the page as a function of its recorded data,
atomic writes, the metric declarations, and bad input."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import iqa.atomic
from iqa import cli
from iqa.metrics import HIGHER, LOWER
from iqa.train import METRICS, command, page_metrics
from iqa.train.config import Run, TrainConfig
from iqa.train.metrics import spec_for
from iqa.train.page import page_markdown

#: A smoke configuration: two runs (one regularised), a few updates, so that a CLI call takes about a second.
TINY = TrainConfig(
    tasks=("regression",),
    runs=(Run("unrolled"), Run("implicit", 0.5)),
    tokens=4,
    dim=4,
    batch=4,
    heldout=4,
    steps=4,
    record_every=2,
)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quick`` trains the TINY configuration."""
    monkeypatch.setattr(command, "QUICK", TINY)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_train_writes_the_page_index_and_metrics(tiny: None, tmp_path: Path) -> None:
    assert cli.main(["train", "hopfield", "--quick", "--out", str(tmp_path), "--seed", "2"]) == 0
    page = tmp_path / "hopfield"
    names = {p.name for p in page.iterdir()}
    assert {
        "README.md",
        "history.json",
        "metrics.json",
        "loss.png",
        "forward_steps.png",
        "rho.png",
        "nonconverged.png",
        "gradient_cosine.png",
    } <= names
    text = (page / "README.md").read_text()
    assert "iqa train hopfield --quick --seed 2" in text and "Seed 2." in text and "torch " in text
    assert "(hopfield/README.md)" in (tmp_path / "README.md").read_text()
    assert not [p for p in tmp_path.rglob(".*.tmp")], "no temporary files are left behind"


def test_same_seed_gives_the_same_bytes(tiny: None, tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert cli.main(["train", "injection", "--quick", "--out", str(tmp_path / out)]) == 0
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert cli.main(["train", "injection", "--quick", "--out", str(tmp_path / "c"), "--seed", "1"]) == 0
    assert _files(tmp_path / "c")["injection/history.json"] != _files(tmp_path / "a")["injection/history.json"]


def test_page_and_metrics_are_computed_from_the_recorded_data(tiny: None, tmp_path: Path) -> None:
    assert cli.main(["train", "positional", "--quick", "--out", str(tmp_path)]) == 0
    page = tmp_path / "positional"
    history = json.loads((page / "history.json").read_text())
    assert page_markdown("positional", history) == (page / "README.md").read_text()
    metrics = json.loads((page / "metrics.json").read_text())["metrics"]
    assert metrics == page_metrics(history["runs"])
    # A number on the page comes from the record: the held-out loss after the last update.
    end = history["runs"][0]["records"][-1]["heldout_loss"]
    assert f"-> {end:.3g} after {TINY.steps} updates" in (page / "README.md").read_text()


def test_every_metric_is_declared_once(tiny: None, tmp_path: Path) -> None:
    assert cli.main(["train", "reference", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "reference" / "metrics.json").read_text())["metrics"]
    assert metrics
    for name in metrics:
        matching = [s for s in METRICS if re.fullmatch(s.pattern, name)]
        assert len(matching) == 1, f"{name} is declared by {len(matching)} entries of METRICS"
        assert spec_for(name) is matching[0]
    for spec in METRICS:
        assert spec.better in (LOWER, HIGHER) and spec.reason and spec.unit
        assert spec.absolute >= 0 and spec.relative >= 0


def test_a_failed_write_leaves_the_old_page(tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.main(["train", "hopfield", "--quick", "--out", str(tmp_path)]) == 0
    before = _files(tmp_path)
    real_replace = os.replace

    def failing_replace(src: str, dst: str) -> None:
        if str(dst).endswith("README.md"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(iqa.atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        cli.main(["train", "hopfield", "--quick", "--out", str(tmp_path), "--seed", "5"])
    after = _files(tmp_path)
    assert after["hopfield/README.md"] == before["hopfield/README.md"]
    assert not [p for p in tmp_path.rglob(".*.tmp")], "the temporary file is removed"


def test_unknown_variant_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli.main(["train", "no-such-variant", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown variant 'no-such-variant'" in err and "hopfield" in err
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize("seed", ["-1", "abc", "1.5", str(2**61)])
def test_bad_seed_is_a_clear_error(seed: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "hopfield", "--seed", seed, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--seed" in capsys.readouterr().err


def test_bad_training_configuration_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backward mode"):
        Run("adjoint")
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        Run("implicit", -1.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="unknown task"):
        TrainConfig(tasks=("sorting",))


VARIANT_FILE = """
from iqa.variants import HopfieldAttention, Tag, Variant

MINE = Variant.from_layer(HopfieldAttention, name="my hopfield", tags={Tag.BATCH_INDEPENDENT})
"""


def test_a_variant_from_a_file(tiny: None, tmp_path: Path) -> None:
    spec_file = tmp_path / "my_variants.py"
    spec_file.write_text(VARIANT_FILE)
    assert cli.main(["train", f"{spec_file}:MINE", "--quick", "--out", str(tmp_path / "out")]) == 0
    page = tmp_path / "out" / "my_hopfield"
    assert (page / "README.md").read_text().startswith("# Training stability: `my hopfield`")


def test_worse_training_regresses(tiny: None, tmp_path: Path) -> None:
    """``iqa regress`` retrains a baseline's variant: a rerun passes every declared allowance, a run whose
    held-out loss is 20% higher regresses, and the baseline keeps its training section through a round trip."""
    from iqa import baseline, regress
    from iqa.train import training_metrics
    from properties.strategies import TINY_SWEEP

    def quick(spec: object, *, seed: int, quick: bool) -> dict[str, float | None]:
        return training_metrics(spec, seed=seed, quick=True)  # type: ignore[arg-type]

    def no_verdicts(spec: str, profile: str) -> dict[str, str]:
        return {}

    path = tmp_path / "injection.json"
    regress.update("injection", path, sweep=TINY_SWEEP, verdicts=no_verdicts, training=True, trainer=quick)
    stored = baseline.load(path)
    assert stored.training is not None and stored.training.seed == 0 and stored.training.metrics
    assert baseline.load(path) == stored
    rerun = regress.check("injection", path, verdicts=no_verdicts, trainer=quick)
    training_rows = [r for r in rerun.rows if r.name.startswith("train.")]
    assert len(training_rows) == len(stored.training.metrics)
    assert not rerun.regressions, [r.name for r in rerun.regressions]
    for row in training_rows:
        assert row.status in (regress.OK, regress.SHOWN), row
    name = next(n for n, v in stored.training.metrics.items() if n.endswith("heldout_loss.end") and v)

    def worse(spec: object, *, seed: int, quick: bool) -> dict[str, float | None]:
        measured = training_metrics(spec, seed=seed, quick=True)  # type: ignore[arg-type]
        value = measured[name]
        assert value is not None
        return {**measured, name: 1.2 * value}

    report = regress.check("injection", path, verdicts=no_verdicts, trainer=worse)
    assert [r.name for r in report.regressions] == [name]
    assert "`train." in report.markdown() or "train." in report.markdown()


def test_a_corrupt_training_section_is_a_clear_error(tmp_path: Path) -> None:
    from iqa import baseline

    path = tmp_path / "b.json"
    good = json.loads((Path(__file__).resolve().parents[2] / "reports" / "baselines" / "reference.json").read_text())
    for bad, message in (
        ({"seed": 0, "quick": False}, "'training' must be null or an object"),
        ({"seed": "0", "quick": False, "metrics": {"a": 1.0}}, "'training.seed' must be an integer"),
        ({"seed": 0, "quick": False, "metrics": {"a": "x"}}, "training metric 'a'"),
    ):
        path.write_text(json.dumps({**good, "training": bad}))
        with pytest.raises(baseline.BaselineError, match=re.escape(message)):
            baseline.load(path)


UNSTABLE_FILE = '''
from torch import nn
from iqa import FixedPointLayer, Tag, Variant


class Unstable(FixedPointLayer):
    """y <- 3 W y + x: rho(J) = 3 rho(W), above 1 at these weights, so Picard diverges."""

    def __init__(self, embed_dim, n_iters=10, **options):
        super().__init__(embed_dim, n_iters, **options)
        self.W = nn.Linear(embed_dim, embed_dim, bias=False)

    def fixed_point_map(self, x):
        return lambda y: 3.0 * self.W(y) + x


UNSTABLE = Variant.from_layer(Unstable, name="unstable", tags={Tag.BATCH_INDEPENDENT})
'''


def test_a_diverging_variant_gets_a_page_that_says_so(tiny: None, tmp_path: Path) -> None:
    spec_file = tmp_path / "unstable.py"
    spec_file.write_text(UNSTABLE_FILE)
    assert cli.main(["train", f"{spec_file}:UNSTABLE", "--quick", "--out", str(tmp_path / "out")]) == 0
    text = (tmp_path / "out" / "unstable" / "README.md").read_text()
    assert "a forward solve first failed to converge at update 1" in text
    assert "first >= 1 at update 0" in text
    metrics = json.loads((tmp_path / "out" / "unstable" / "metrics.json").read_text())["metrics"]
    shares = [v for name, v in metrics.items() if name.endswith(".nonconverged_share") and v is not None]
    assert max(shares) > 0.5, f"the page records the failed solves: {shares}"
