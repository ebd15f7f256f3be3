"""The mutation report generator (properties/meta/mutation_report.py) and the run's module arguments.

A fake results set (mutmut 3's ``mutants/**/*.py.meta`` files, with diffs
supplied by the test) goes through the same path as a real run: every mutmut
status lands in its class, equivalent entries match by function and diff (not
by mutant number), stale entries are found, and the two files are written
atomically. Nothing here needs mutmut except the check of the status table
against mutmut's own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from properties.meta import mutation_report as mr
from properties.meta.mutation_run import main as mutation_run_main
from properties.meta.mutation_run import mutant_globs, survivors

ROOT = Path(__file__).resolve().parents[2]

DIFFS = {
    "f_plus": "--- a\n+++ b\n@@ -1,3 +1,3 @@\n def f(x):\n-    return x + 1\n+    return x - 1\n",
    "f_none": "--- a\n+++ b\n@@ -1,3 +1,3 @@\n def f(x):\n-    y = g(x)\n+    y = None\n",
    "h_le": "--- a\n+++ b\n@@ -1,3 +1,3 @@\n     def h(self):\n-        if a <= b:\n+        if a < b:\n",
    "k_str": "--- a\n+++ b\n@@ -1 +1 @@\n-raise ValueError('bad')\n+raise ValueError('XXbadXX')\n",
}

#: (module, mutant name, exit code, diff) of the fake run
RESULTS = [
    ("iqa/m.py", "iqa.m.x_f__mutmut_1", 1, "f_plus"),
    ("iqa/m.py", "iqa.m.x_f__mutmut_2", 0, "f_none"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_1", 0, "k_str"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_2", 36, "k_str"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_3", 33, "f_plus"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_4", 35, "f_none"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_5", -11, "f_none"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_6", -9, "f_none"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_7", 34, "h_le"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_8", 2, "h_le"),
    ("iqa/m.py", "iqa.m.x_k__mutmut_9", 77, "f_plus"),
    ("iqa/p/q.py", "iqa.p.q.xǁCǁh__mutmut_4", 0, "h_le"),
    ("iqa/p/q.py", "iqa.p.q.xǁCǁh__mutmut_5", None, "f_plus"),
]


def _write_results(root: Path, results: list[tuple[str, str, int | None, str]]) -> None:
    by_module: dict[str, dict[str, int | None]] = {}
    for module, name, code, _ in results:
        by_module.setdefault(module, {})[name] = code
    for module, codes in by_module.items():
        meta = root / "mutants" / f"{module}.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps({"exit_code_by_key": codes, "durations_by_key": {}}))


def _fake_diffs(results: list[tuple[str, str, int | None, str]]) -> dict[str, str]:
    return {name: DIFFS[diff] for _, name, _, diff in results}


def _equivalents(path: Path, body: str) -> Path:
    path.write_text(body, encoding="utf-8")
    return path


def _report(tmp_path: Path, results: list[tuple[str, str, int | None, str]], toml: str = "") -> mr.Report:
    _write_results(tmp_path, results)
    entries = mr.load_entries(_equivalents(tmp_path / "equivalent.toml", toml))
    diffs = _fake_diffs(results)
    calls: list[str] = []

    def diff_of(name: str, source: str) -> str:
        calls.append(name)
        return diffs[name]

    report = mr.classify(mr.collect(tmp_path, entries, diff_of), entries)
    report.diff_calls = calls  # type: ignore[attr-defined]
    return report


EQUIVALENT_F = """
[[equivalent]]
module = "iqa/m.py"
function = "f"
before = "y = g(x)"
after = "y = None"
reason = "y is never read"
"""


def test_every_mutmut_status_has_a_class() -> None:
    for code, status in mr.STATUS_BY_EXIT_CODE.items():
        assert mr.class_of(status) in (*mr.CLASSES, mr.NOT_RUN), (code, status)
    assert mr.status_of(77) == "suspicious" and mr.class_of("suspicious") == "survived"
    with pytest.raises(mr.MutationReportError, match="unknown mutmut status 'bogus'"):
        mr.class_of("bogus")


def test_status_table_agrees_with_mutmut() -> None:
    stats = pytest.importorskip("mutmut.stats", reason="mutmut is not installed (pip install -e '.[mutate]')")
    mr.check_status_table(stats.status_by_exit_code, [*mr.STATUS_BY_EXIT_CODE, 77, -15])


def test_a_changed_status_table_is_noticed() -> None:
    from collections import defaultdict

    upstream = defaultdict(lambda: "suspicious", {0: "survived", 1: "killed", 36: "killed"})
    mr.check_status_table(upstream, [0, 1])
    with pytest.raises(mr.MutationReportError, match="exit code 36 'killed'"):
        mr.check_status_table(upstream, [0, 36])


def test_function_names() -> None:
    assert mr.function_of("iqa.analysis.rates.x_empirical_rate__mutmut_12") == "empirical_rate"
    assert mr.function_of("iqa.grad.xǁAdjointOptionsǁ__post_init____mutmut_3") == "AdjointOptions.__post_init__"
    assert mr.function_of("iqa.x__private__mutmut_1") == "_private"
    for bad in ("iqa.grad.fixed_point", "iqa.grad.x_f__mutmut_", "iqa.grad.f__mutmut_2"):
        with pytest.raises(mr.MutationReportError, match="not a mutmut 3 mutant name"):
            mr.function_of(bad)


def test_fake_results_are_classified(tmp_path: Path) -> None:
    report = _report(tmp_path, RESULTS, EQUIVALENT_F)
    expected = {
        "iqa.m.x_f__mutmut_1": "killed",
        "iqa.m.x_f__mutmut_2": "equivalent",
        "iqa.m.x_k__mutmut_1": "survived",
        "iqa.m.x_k__mutmut_2": "timeout",
        "iqa.m.x_k__mutmut_3": "survived",  # no tests
        "iqa.m.x_k__mutmut_4": "survived",  # suspicious
        "iqa.m.x_k__mutmut_5": "killed",  # segfault
        "iqa.m.x_k__mutmut_6": "timeout",  # SIGKILL from the CPU limit
        "iqa.m.x_k__mutmut_7": "survived",  # skipped
        "iqa.m.x_k__mutmut_8": "survived",  # pytest exit 2
        "iqa.m.x_k__mutmut_9": "survived",  # unknown exit code
        "iqa.p.q.xǁCǁh__mutmut_4": "survived",
        "iqa.p.q.xǁCǁh__mutmut_5": mr.NOT_RUN,
    }
    assert report.classes == expected
    assert report.counts() == {
        "killed": 2,
        "survived": 7,
        "equivalent": 1,
        "timeout": 2,
        "total": 12,
        "not_run": 1,
    }
    assert report.counts("iqa/p/q.py") == {
        "killed": 0,
        "survived": 1,
        "equivalent": 0,
        "timeout": 0,
        "total": 1,
        "not_run": 1,
    }
    assert report.partial
    assert report.reasons["iqa.m.x_f__mutmut_2"] == "equivalent: y is never read"
    assert report.reasons["iqa.m.x_k__mutmut_3"] == "gap: no selected property reaches the function"
    assert "rerun" in report.reasons["iqa.m.x_k__mutmut_4"]
    assert "rerun" in report.reasons["iqa.m.x_k__mutmut_8"]
    assert set(report.reasons) == {n for n, c in report.classes.items() if c in ("survived", "equivalent")}
    # diffs only where the report needs them: survivors, timeouts, and killed ones in listed functions
    assert "iqa.m.x_k__mutmut_5" not in report.diff_calls  # type: ignore[attr-defined]
    assert "iqa.m.x_f__mutmut_1" in report.diff_calls  # type: ignore[attr-defined]
    score = mr.render_score(report, {"tool": "mutmut test"})
    assert {k: score[k] for k in (*mr.CLASSES, "total")} == {k: report.counts()[k] for k in (*mr.CLASSES, "total")}
    assert score["score"] == pytest.approx(2 / 11) and score["partial"] is True
    assert score["total"] == sum(score[k] for k in mr.CLASSES)


def test_equivalent_entries_survive_renumbering_but_not_a_changed_line(tmp_path: Path) -> None:
    renumbered = [
        (m, n.replace("x_f__mutmut_2", "x_f__mutmut_40"), c, d) for m, n, c, d in RESULTS if not n.endswith("_5")
    ]
    report = _report(tmp_path, renumbered, EQUIVALENT_F)
    assert report.classes["iqa.m.x_f__mutmut_40"] == "equivalent" and not report.stale
    edited = EQUIVALENT_F.replace('after = "y = None"', 'after = "y = 0"')
    report = _report(tmp_path, renumbered, edited)
    assert report.classes["iqa.m.x_f__mutmut_40"] == "survived"
    assert [why for _, why in report.stale] == ["matches no mutant (the code or the mutation changed)"]


def test_stale_entries(tmp_path: Path) -> None:
    toml = (
        EQUIVALENT_F
        + """
[[equivalent]]
module = "iqa/m.py"
function = "f"
before = "return x + 1"
after = "return x - 1"
reason = "claimed, but a property kills it"

[[equivalent]]
module = "iqa/m.py"
function = "gone"
before = "a"
after = "b"
reason = "the function was removed"

[[equivalent]]
module = "iqa/p/q.py"
function = "C.h"
before = "if a <= b:"
after = "if a <= c:"
reason = "its module was not fully run: not judged"

[[gap]]
module = "iqa/m.py"
function = "k"
before = "raise ValueError('bad')"
after = "raise ValueError('XXbadXX')"
reason = "no property matches the message"
"""
    )
    report = _report(tmp_path, RESULTS, toml)
    stale = {e.function + ":" + e.after: why for e, why in report.stale}
    assert stale == {
        "f:return x - 1": "contradicted: the mutant it matches was caught (iqa.m.x_f__mutmut_1: killed)",
        "gone:b": "no such function among the mutated modules",
    }
    # the gap note applies to the survivor; the timed-out twin keeps its class
    assert report.reasons["iqa.m.x_k__mutmut_1"] == "gap: no property matches the message"
    assert report.classes["iqa.m.x_k__mutmut_2"] == "timeout"
    # run the not-run mutant: now its module is complete and the unmatched entry is stale
    complete = [(m, n, 0 if c is None else c, d) for m, n, c, d in RESULTS]
    report = _report(tmp_path, complete, toml)
    assert any(e.function == "C.h" and why.startswith("matches no mutant") for e, why in report.stale)
    assert not report.partial


def test_only_survivors_become_equivalent(tmp_path: Path) -> None:
    toml = EQUIVALENT_F.replace('"f"', '"k"').replace('"y is never read"', '"claimed"')
    report = _report(tmp_path, RESULTS, toml)
    # k's f_none mutants: suspicious (no clean verdict), segfault (killed), SIGKILL (timeout)
    assert report.classes["iqa.m.x_k__mutmut_4"] == "survived"
    assert report.classes["iqa.m.x_k__mutmut_5"] == "killed"
    assert report.classes["iqa.m.x_k__mutmut_6"] == "timeout"
    assert report.counts()["equivalent"] == 0


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[equivalent]]\nmodule = "a"\nfunction = "f"\nbefore = "x"\nafter = "y"\n', "missing keys \\['reason'\\]"),
        (
            '[[equivalent]]\nmodule = "a"\nfunction = "f"\nbefore = "x"\nafter = "y"\nreason = "r"\nnote = "n"\n',
            "unknown keys \\['note'\\]",
        ),
        ('[[equivalent]]\nmodule = "a"\nfunction = "f"\nbefore = "x"\nafter = "y"\nreason = "a\\nb"\n', "one non"),
        ('[[equivalent]]\nmodule = "a"\nfunction = "f"\nbefore = "x"\nafter = "y"\nreason = " "\n', "one non-empty"),
        ('[[equivalent]]\nmodule = "a"\nfunction = "f"\nbefore = "x"\nafter = 3\nreason = "r"\n', "must be a string"),
        ('[[equivalents]]\nmodule = "a"\n', "unknown tables \\['equivalents'\\]"),
        ("[[equivalent]\n", "not valid TOML"),
        (EQUIVALENT_F + EQUIVALENT_F.replace("never read", "unused"), "the same mutation as"),
    ],
)
def test_bad_equivalent_lists_are_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(mr.MutationReportError, match=message):
        mr.load_entries(_equivalents(tmp_path / "equivalent.toml", body))


def test_multiline_entries_match_stripped_lines(tmp_path: Path) -> None:
    diff = "--- a\n+++ b\n@@\n def f(x):\n-    y = g(\n-        x, 2\n-    )\n+    y = g(\n+        x, 3\n+    )\n"
    results = [("iqa/m.py", "iqa.m.x_f__mutmut_1", 0, "multi")]
    DIFFS["multi"] = diff
    try:
        toml = (
            '[[equivalent]]\nmodule = "iqa/m.py"\nfunction = "f"\n'
            "before = '''\n  y = g(\n      x, 2\n  )\n'''\nafter = '''\ny = g(\nx, 3\n)'''\nreason = \"r\"\n"
        )
        report = _report(tmp_path, results, toml)
    finally:
        del DIFFS["multi"]
    assert report.classes["iqa.m.x_f__mutmut_1"] == "equivalent"


def test_readme_lists_every_survivor_with_reason_and_diff(tmp_path: Path) -> None:
    report = _report(tmp_path, RESULTS, EQUIVALENT_F)
    text = mr.render_readme(report, {"tool": "mutmut test", "hypothesis_profile": "mutation"})
    assert text.startswith("# Mutation score of the library\n\n> **Partial run**: 1 of 13 mutants were not run")
    for name, cls in report.classes.items():
        if cls in ("survived", "equivalent"):
            line = next(x for x in text.splitlines() if f"`{name}`" in x)
            assert report.reasons[name] in line
    assert "  -y = g(x)\n  +y = None" in text
    assert "| **all** | 2 | 7 | 1 | 2 | 12 | 1 | 18.2% |" in text
    assert "- `iqa.m.x_k__mutmut_2` (iqa/m.py, k)" in text  # timeouts listed


def test_report_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = _report(tmp_path, RESULTS, EQUIVALENT_F)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("old readme")
    (out / "score.json").write_text("{}")

    def broken(*args: object) -> None:
        raise RuntimeError("renderer broke")

    with monkeypatch.context() as m:
        m.setattr(mr, "render_score", broken)
        with pytest.raises(RuntimeError, match="renderer broke"):
            mr.write_report(report, out, {})
    assert (out / "README.md").read_text() == "old readme", "rendering failed, yet the README was replaced"

    def no_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", no_replace)
        with pytest.raises(OSError, match="disk full"):
            mr.write_report(report, out, {})
    assert (out / "README.md").read_text() == "old readme"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "score.json"], "a temporary file was left"
    mr.write_report(report, out, {})
    score = json.loads((out / "score.json").read_text())
    assert score["total"] == 12 and (out / "README.md").read_text().startswith("# Mutation score")


def test_generate_fails_on_stale_entries(tmp_path: Path) -> None:
    _write_results(tmp_path, RESULTS)
    diffs = _fake_diffs(RESULTS)
    toml = _equivalents(tmp_path / "eq.toml", EQUIVALENT_F)
    assert mr.generate(tmp_path, tmp_path / "out", toml, {"tool": "t"}, lambda n, s: diffs[n]) == 0
    _equivalents(toml, EQUIVALENT_F.replace('"f"', '"nowhere"'))
    assert mr.generate(tmp_path, tmp_path / "out", toml, {"tool": "t"}, lambda n, s: diffs[n]) == 1
    assert "## Stale entries" in (tmp_path / "out/README.md").read_text()


def test_missing_results_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(mr.MutationReportError, match="run mutmut first"):
        mr.read_results(tmp_path)
    (tmp_path / "mutants/iqa").mkdir(parents=True)
    (tmp_path / "mutants/iqa/a.py.meta").write_text("{}")
    with pytest.raises(mr.MutationReportError, match="not a mutmut 3 result file"):
        mr.read_results(tmp_path)


def test_module_arguments_map_to_mutant_globs() -> None:
    assert mutant_globs(ROOT, ["iqa/analysis/rates.py", "iqa/grad.py"]) == ["iqa.analysis.rates.*", "iqa.grad.*"]
    assert mutant_globs(ROOT, ["iqa/analysis"]) == ["iqa.analysis.*"]
    assert mutant_globs(ROOT, ["iqa/analysis/__init__.py"]) == ["iqa.analysis.x*"]
    with pytest.raises(SystemExit, match="not among the mutated modules"):
        mutant_globs(ROOT, ["iqa/cli.py"])
    with pytest.raises(SystemExit, match="no such file"):
        mutant_globs(ROOT, ["iqa/nowhere.py"])


def test_survivors_to_rerun_are_the_undecided_and_surviving_ones(tmp_path: Path) -> None:
    """--rerun-survivors runs again what survived or had no test (a property added since may reach it), never a
    killed, timed-out or unrun mutant; module globs narrow it."""
    _write_results(tmp_path, RESULTS)
    assert survivors(tmp_path, []) == [
        "iqa.m.x_f__mutmut_2",
        "iqa.m.x_k__mutmut_1",
        "iqa.m.x_k__mutmut_3",
        "iqa.p.q.xǁCǁh__mutmut_4",
    ]
    assert survivors(tmp_path, ["iqa.p.*"]) == ["iqa.p.q.xǁCǁh__mutmut_4"]


def test_rerunning_survivors_needs_the_earlier_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        mutation_run_main(["--rerun-survivors"])
    assert stopped.value.code == 2
    assert "--rerun-survivors continues an earlier run: give --keep as well" in capsys.readouterr().err


@pytest.mark.parametrize(
    "before, after, kind",
    [
        ('raise ValueError("bad input")', 'raise ValueError("XXbad inputXX")', "message"),
        ('raise TypeError(f"y must be a tensor, got {type(y).__name__}")', "raise TypeError(None)", "message"),
        ('"of the form softmax(A Y^T) V"', '"OF THE FORM SOFTMAX(A Y^T) V"', "message"),
        ('method = "dense" if n <= LIMIT else "arnoldi"', 'method = "dense" if n <= LIMIT else "ARNOLDI"', "string"),
        ("max_iter: int = 500,", "max_iter: int = 501,", "default"),
        ('def f(x, method: str = "auto") -> None:', 'def f(x, method: str = "AUTO") -> None:', "default"),
        ("v = v.to(dtype=y.dtype, device=y.device)", "v = v.to(dtype=y.dtype, )", "dtype or device"),
        ("row = max_row_norm(V.to(torch.float64))", "row = max_row_norm(V.to(None))", "dtype or device"),
        ("y = g(y) if done else h(y)", "y = g(y) if (done) or True else h(y)", "forced branch"),
        ("if a <= b:", "if a < b:", "boundary"),
        ("if a <= b and c:", "if a <= b or c:", "logic"),
        ("if stop == 'rel':", "if stop != 'rel':", "logic"),
        ("n = y.shape[-2]", "n = y.shape[-3]", "axis"),
        ("s = t.sum(dim=-1)", "s = t.sum(dim=+1)", "axis"),
        ("x = y.sum(-1)", "x = y.sum(+1)", "axis"),
        ("noise = 2 * eps", "noise = 3 * eps", "constant"),
        ("d = f(s) - s", "d = f(s) + s", "operator"),
        ("u = u / norm(u, dim=-1, keepdim=True)", "u = u / norm(u, keepdim=True)", "argument dropped"),
        ("handled.add(i)", "handled.add(None)", None),
        ("settled = settled | fresh", "settled = settled & fresh", None),
    ],
)
def test_gap_kinds(before: str, after: str, kind: str | None) -> None:
    """A survivor's reason names the kind of change that survived, where it has a recognisable one."""
    expected = mr.GAP_REASON_BY_STATUS["survived"] if kind is None else mr.GAP_KINDS[kind]
    assert mr.gap_kind(before, after) == expected


def test_a_survivor_without_an_entry_gets_its_kind(tmp_path: Path) -> None:
    report = _report(tmp_path, RESULTS)
    assert report.reasons["iqa.m.x_k__mutmut_1"] == mr.GAP_KINDS["message"]  # k_str
    assert report.reasons["iqa.p.q.xǁCǁh__mutmut_4"] == mr.GAP_KINDS["boundary"]  # h_le
    assert report.reasons["iqa.m.x_k__mutmut_3"] == "gap: no selected property reaches the function"


def test_rerender_gives_the_run_s_report_and_applies_new_entries(tmp_path: Path) -> None:
    """--rerender from score.json's recorded mutants writes the same two files as the run did, and a new entry
    of the list then reclassifies the survivor it matches (the counts move, nothing else)."""
    complete = [r for r in RESULTS if r[2] is not None]
    _write_results(tmp_path, complete)
    out, toml = tmp_path / "out", _equivalents(tmp_path / "equivalent.toml", EQUIVALENT_F)
    meta = {"tool": "mutmut test", "hypothesis_profile": "ci", "variants": "all"}
    assert mr.generate(tmp_path, out, toml, meta, diff_of=lambda name, _: _fake_diffs(complete)[name]) == 0
    score = json.loads((out / "score.json").read_text())
    assert {r["name"] for r in score["mutants"]} == {n for _, n, code, _ in complete if code not in (1, 3, -11)}
    readme = (out / "README.md").read_text()
    assert mr.rerender(out, toml) == 0
    again = json.loads((out / "score.json").read_text())
    assert again == {**score, "rerendered": True}
    assert (out / "README.md").read_text().replace(mr_rerender_note(), "") == readme
    same_text = EQUIVALENT_F.replace('"f"', '"k"').replace("y is never read", "same text")
    toml.write_text(
        EQUIVALENT_F
        + same_text.replace("y = g(x)", "raise ValueError('bad')").replace("y = None", "raise ValueError('XXbadXX')")
    )
    assert mr.rerender(out, toml) == 0
    third = json.loads((out / "score.json").read_text())
    assert (third["equivalent"], third["survived"]) == (score["equivalent"] + 1, score["survived"] - 1)
    assert third["killed"] == score["killed"] and third["total"] == score["total"]
    assert "equivalent: same text" in (out / "README.md").read_text()


def mr_rerender_note() -> str:
    text = mr.render_readme(mr.Report([], [], {}, {}, []), {"rerendered": True})
    start = text.index(" Classified again")
    return text[start : text.index("\n", start)]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{", "not valid JSON"),
        ('{"format": "iqa-library-mutation-score/1"}', "with its mutants recorded"),
        (
            '{"format": "iqa-library-mutation-score/1", "mutants": [{"name": "x"}], "modules": {}, "statuses": {}}',
            "malformed",
        ),
    ],
)
def test_rerender_refuses_a_missing_or_bad_record(tmp_path: Path, content: str | None, message: str) -> None:
    if content is not None:
        (tmp_path / "score.json").write_text(content)
    with pytest.raises(mr.MutationReportError, match=message):
        mr.rerender(tmp_path, tmp_path / "none.toml")
    assert mr.main(["--rerender", "--out", str(tmp_path), "--equivalent", str(tmp_path / "none.toml")]) == 2
