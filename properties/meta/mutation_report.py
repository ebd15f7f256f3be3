"""The mutation score of the library: mutmut's results turned into reports/mutation/.

``tox -e mutate`` (:mod:`properties.meta.mutation_run`) runs mutmut over the
library modules named in ``[tool.mutmut]`` of pyproject.toml; this module reads
what mutmut left in ``mutants/`` and writes two files, each atomically, both
rendered in memory before either is written:

- ``score.json``: ``killed``, ``survived``, ``equivalent``, ``timeout``,
  ``total`` (= their sum), the score, the same counts per module, and every
  mutant that was not killed (name, module, function, status, class, reason,
  changed lines) under ``mutants``;
- ``README.md``: the counts per module, every surviving mutant with a one-line
  reason (equivalent, or a gap, with its function and diff), every timed-out
  mutant, and any stale entry of the equivalent list.

Each mutmut status is put in one of the four classes, explicitly
(:data:`CLASS_BY_STATUS`); a status that is not a clean verdict is counted as
survived, never as killed, so it lowers the score until it is rerun:

================================  ==========  ======================================================
mutmut status                     class       why
================================  ==========  ======================================================
killed                            killed      a selected property failed
segfault (exit -11)               killed      the test process crashed: the suite fails
caught by type check              killed      mypy, part of ``tox``, rejects it (not configured here)
timeout (SIGXCPU, SIGKILL -9)     timeout     ran past its limit: (clean time + constant) x multiplier
survived                          survived    every selected property passed
no tests                          survived    no selected property reaches the function: a gap
skipped                           survived    mutmut did not test it: not detected
suspicious, interrupted, unknown  survived    no clean verdict: rerun it (``mutmut run NAME``)
not checked                       not run     not part of this run: the report is partial
================================  ==========  ======================================================

A surviving mutant is *equivalent* when it matches an entry of the
equivalent list (``reports/mutation/equivalent.toml``), which says why no
correct property can tell it from the original. Entries are keyed by module,
function and the changed lines of the diff (stripped), not by mutmut's numbered
name (``module.x_function__mutmut_N``, whose N moves whenever the function is
edited), so they survive unrelated edits. The same file may carry ``[[gap]]``
notes, keyed alike, that give a surviving mutant a more specific reason. An
entry is *stale* when its module was fully run and it matches no survivor: it
matches nothing (the code changed) or only killed or timed-out mutants (the
claim of equivalence is contradicted, or the gap was closed).

A survivor no entry explains gets a reason from the kind of change that
survived (:func:`gap_kind`: only a message's text, a default option, a
comparison's boundary, a constant, a dtype or device argument, a forced branch,
an axis), so that the list reads as a map of what the properties do not pin.

``--rerender`` writes the two files again from the mutants recorded in
``score.json`` with the equivalent list as it is now, without mutmut or
``mutants/``: how a survivor classified after a run (a new entry) reaches the
report. Killed mutants are recorded only as counts, so an entry that matches
no recorded mutant is reported as stale.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import tokenize
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

from iqa.atomic import write_json, write_text

FORMAT = "iqa-library-mutation-score/1"
CLASSES = ("killed", "survived", "equivalent", "timeout")
NOT_RUN = "not run"

#: mutmut 3.8's exit codes (mutmut.stats.status_by_exit_code), restated so that a change
#: upstream is noticed (:func:`check_status_table`), with one deliberate difference: -9
#: (SIGKILL) is what the CPU limit's hard bound sends a mutant that ran past it, so it is
#: a timeout here; mutmut calls it a segfault.
STATUS_BY_EXIT_CODE: dict[int | None, str] = {
    None: "not checked",
    0: "survived",
    1: "killed",
    2: "check was interrupted by user",
    3: "killed",
    5: "no tests",
    33: "no tests",
    34: "skipped",
    35: "suspicious",
    36: "timeout",
    37: "caught by type check",
    24: "timeout",
    -24: "timeout",
    152: "timeout",
    255: "timeout",
    -9: "timeout",
    -11: "segfault",
}
#: mutmut's name for an exit code it does not know.
UNKNOWN_STATUS = "suspicious"

#: Each mutmut status in one class (see the module docstring for why).
CLASS_BY_STATUS: dict[str, str] = {
    "killed": "killed",
    "segfault": "killed",
    "caught by type check": "killed",
    "timeout": "timeout",
    "survived": "survived",
    "no tests": "survived",
    "skipped": "survived",
    "suspicious": "survived",
    "check was interrupted by user": "survived",
    "not checked": NOT_RUN,
}

#: The one-line reason of a survivor that no list entry explains, by status.
GAP_REASON_BY_STATUS: dict[str, str] = {
    "survived": "gap: every property that reaches the function passed",
    "no tests": "gap: no selected property reaches the function",
    "skipped": "gap: mutmut skipped it (not tested)",
    "suspicious": "no clean verdict (suspicious): rerun it",
    "check was interrupted by user": "no clean verdict (pytest exit 2: interrupted or a collection error): rerun it",
}


#: The kinds of surviving change :func:`gap_kind` tells apart, each with the reason it gives.
GAP_KINDS: dict[str, str] = {
    "message": "gap: only the text of a message changes; the properties match a key phrase of it, not all of it",
    "string": "gap: a string literal that is not a message changes (an option or a name); no property observes it",
    "default": "gap: a default option changes; no property pins this default's value",
    "dtype or device": "gap: a dtype or device conversion is dropped or replaced; no property reaches it with inputs "
    "where it matters (float32 or float16, another device)",
    "forced branch": "gap: a condition is forced one way; both branches give results the properties accept",
    "boundary": "gap: a comparison's boundary moves (< and <=, > and >=); no draw lands on it",
    "logic": "gap: a logical operator flips (and/or, ==/!=); no draw makes the two differ where a property looks",
    "axis": "gap: an axis or index changes; every property that reaches it passed (on the drawn shapes both may "
    "name the same values)",
    "constant": "gap: a numeric constant changes; every property that reaches it passed with the new value",
    "operator": "gap: an arithmetic operator changes; every property that reaches it passed",
    "argument dropped": "gap: an argument or term is dropped; every property that reaches it passed without it",
}

#: A string literal, f-strings and prefixes included (one line).
_STRING = re.compile(r"""[rRbBuUfF]{0,2}("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_DIGITS = re.compile(r"\d+(\.\d*)?")
#: A dtype or device conversion: .to(...) or a dtype= / device= argument.
_CONVERSIONS = re.compile(r"\.to\([^()]*\)|, (dtype|device)=[^,()]+")
_COMPARISONS = {"<", "<=", ">", ">="}
_LOGIC = {"and", "or", "==", "!=", "is", "in", "not"}
_ARITHMETIC = {"+", "-", "*", "/", "//", "%", "**", "@"}
_AXIS_NAMES = {"dim", "axis", "dims", "dim1", "dim2"}
_REDUCTIONS = {"sum", "amax", "amin", "max", "min", "mean", "norm", "size", "any", "all", "flatten", "squeeze",
               "unsqueeze", "softmax", "cumsum", "prod", "transpose"}  # fmt: skip


def _tokens(text: str) -> list[str] | None:
    try:
        return [t.string for t in tokenize.generate_tokens(StringIO(text + "\n").readline)
                if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER)]  # fmt: skip
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def _token_kind(old: list[str], i: int, new: str) -> str | None:
    """The kind of the one-token change old[i] -> new."""
    j = i - 1 if i > 0 and old[i] not in "+-" and old[i - 1] in "+-" else i  # a signed number: its context
    before = old[j - 1] if j >= 1 else ""
    axis_context = before == "[" or (before in ("=", "(") and j >= 2 and old[j - 2] in _AXIS_NAMES | _REDUCTIONS)
    if axis_context and (old[i].isdigit() or old[i] in "+-"):
        return "axis"
    if old[i] in _COMPARISONS and new in _COMPARISONS:
        return "boundary"
    if old[i] in _LOGIC or new in _LOGIC:
        return "logic"
    if re.fullmatch(r"\d+(\.\d*)?(e[-+]?\d+)?", old[i]):
        return "constant"
    if old[i] in _ARITHMETIC and new in _ARITHMETIC:
        return "operator"
    return None


def gap_kind(before: str, after: str) -> str:
    """The reason for a surviving change (``before`` -> ``after``, stripped lines) that no entry explains: one
    of :data:`GAP_KINDS` where the change is of a recognisable kind, else the generic one."""
    blank_before, blank_after = _STRING.sub('""', before), _STRING.sub('""', after)
    if re.search(r"\bdef \w+\(|^\w+: [^=]+ = ", before) and (
        blank_before == blank_after or _DIGITS.sub("N", before) == _DIGITS.sub("N", after)
    ):
        return GAP_KINDS["default"]
    in_message = re.match(r"""[rRbBuUfF]{0,2}["']""", before) or re.search(r"\braise |\bwarn\(|Error\(", before)
    if in_message and (blank_before == blank_after or re.fullmatch(r"(raise \w+\()?None\)?( from \w+)?,?", after)):
        return GAP_KINDS["message"]
    if blank_before == blank_after:
        return GAP_KINDS["string"]
    if re.search(r"\b(dtype|device)=None|\.to\(None|\.to\((\w+, )?\)|\.to\([^()]*, None\)", after) or (
        re.search(r"\b(dtype|device)=|\.to\(", before) and _CONVERSIONS.sub("", before) == _CONVERSIONS.sub("", after)
    ):
        return GAP_KINDS["dtype or device"]
    if re.search(r"\) (or True|and False)\b", after):
        return GAP_KINDS["forced branch"]
    old, new = _tokens(before), _tokens(after)
    if old is None or new is None:
        return GAP_REASON_BY_STATUS["survived"]
    if len(old) == len(new):
        kinds = {_token_kind(old, i, y) for i, (x, y) in enumerate(zip(old, new)) if x != y}
        if len(kinds) == 1 and None not in kinds:
            return GAP_KINDS[kinds.pop()]
    elif len(new) < len(old):
        ops = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
        dropped = [old[i1:i2] for tag, i1, i2, _, _ in ops if tag != "equal"]
        if all(tag == "delete" for tag, *_ in ops if tag != "equal") and not any(
            set(d) & (_LOGIC | _COMPARISONS) for d in dropped
        ):
            return GAP_KINDS["argument dropped"]
    return GAP_REASON_BY_STATUS["survived"]


class MutationReportError(Exception):
    """The results or the equivalent list cannot be turned into a report."""


def status_of(exit_code: int | None) -> str:
    """mutmut's status for a mutant's recorded exit code (None: not run yet)."""
    return STATUS_BY_EXIT_CODE.get(exit_code, UNKNOWN_STATUS)


def class_of(status: str) -> str:
    """The class (killed, survived, timeout, or not run) of a mutmut status."""
    try:
        return CLASS_BY_STATUS[status]
    except KeyError:
        raise MutationReportError(
            f"unknown mutmut status {status!r}: add it to CLASS_BY_STATUS in {__name__} with its class"
        ) from None


def check_status_table(upstream: Mapping[int | None, str], exit_codes: Iterable[int | None]) -> None:
    """Fail if mutmut names any of ``exit_codes`` differently from :data:`STATUS_BY_EXIT_CODE`.

    ``upstream`` is mutmut's own table (a defaultdict: unknown codes are "suspicious").
    The one deliberate difference, -9, is allowed.
    """
    for code in sorted(set(exit_codes), key=lambda c: (c is None, c or 0)):
        theirs, ours = upstream[code], status_of(code)
        if theirs != ours and not (code == -9 and theirs == "segfault"):
            raise MutationReportError(
                f"mutmut calls exit code {code} {theirs!r}, this report {ours!r}: update STATUS_BY_EXIT_CODE"
            )


def function_of(mutant_name: str) -> str:
    """The function a mutmut 3 mutant lives in: ``pkg.mod.x_f__mutmut_3`` -> ``f``, methods ``Class.method``."""
    mangled, sep, number = mutant_name.partition("__mutmut_")
    if not sep or not number.isdigit():
        raise MutationReportError(f"{mutant_name!r} is not a mutmut 3 mutant name (module.x_function__mutmut_N)")
    last = mangled.rpartition(".")[2]
    if "ǁ" in last:  # mutmut's class separator: xǁClassǁmethod
        _, cls, method = last.split("ǁ", 2)
        return f"{cls}.{method}"
    if not last.startswith("x_"):
        raise MutationReportError(f"{mutant_name!r} is not a mutmut 3 mutant name (module.x_function__mutmut_N)")
    return last[2:]


def changed_lines(diff: str) -> tuple[str, str]:
    """The removed and the added lines of a unified diff, each stripped, joined by newlines."""
    before, after = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++", "@@")):
            continue
        if line.startswith("-"):
            before.append(line[1:].strip())
        elif line.startswith("+"):
            after.append(line[1:].strip())
    return "\n".join(before), "\n".join(after)


@dataclass(frozen=True)
class Mutant:
    """One mutant: its mutmut name, source file, function, mutmut status and diff ("" when not needed)."""

    name: str
    module: str
    status: str
    diff: str = ""

    @property
    def function(self) -> str:
        return function_of(self.name)

    @property
    def cls(self) -> str:
        return class_of(self.status)

    def key(self) -> tuple[str, str, str, str]:
        return (self.module, self.function, *changed_lines(self.diff))


@dataclass
class Entry:
    """An entry of the equivalent list: ``[[equivalent]]`` (a claim) or ``[[gap]]`` (a note)."""

    kind: str
    module: str
    function: str
    before: str
    after: str
    reason: str
    matched: list[Mutant] = field(default_factory=list)

    def key(self) -> tuple[str, str, str, str]:
        return (self.module, self.function, self.before.strip(), self.after.strip())

    def describe(self) -> str:
        return f"[[{self.kind}]] {self.module} {self.function}: -{self.before.strip()!r} +{self.after.strip()!r}"


def _strip_lines(text: str) -> str:
    return "\n".join(line.strip() for line in text.strip().splitlines())


def load_entries(path: Path) -> list[Entry]:
    """The entries of the equivalent list at ``path`` (none if it does not exist), checked."""
    if not path.exists():
        return []
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise MutationReportError(f"{path}: not valid TOML: {error}") from error
    unknown = set(data) - {"equivalent", "gap"}
    if unknown:
        raise MutationReportError(f"{path}: unknown tables {sorted(unknown)} (expected [[equivalent]], [[gap]])")
    entries, seen = [], {}
    for kind in ("equivalent", "gap"):
        for i, raw in enumerate(data.get(kind, [])):
            where = f"{path}: [[{kind}]] #{i + 1}"
            missing = {"module", "function", "before", "after", "reason"} - set(raw)
            extra = set(raw) - {"module", "function", "before", "after", "reason"}
            if missing or extra:
                raise MutationReportError(f"{where}: missing keys {sorted(missing)}, unknown keys {sorted(extra)}")
            if not all(isinstance(raw[k], str) for k in raw):
                raise MutationReportError(f"{where}: every value must be a string")
            if not raw["reason"].strip() or "\n" in raw["reason"].strip():
                raise MutationReportError(f"{where}: the reason must be one non-empty line")
            entry = Entry(
                kind=kind,
                module=raw["module"],
                function=raw["function"],
                before=_strip_lines(raw["before"]),
                after=_strip_lines(raw["after"]),
                reason=raw["reason"].strip(),
            )
            if entry.key() in seen:
                raise MutationReportError(f"{where}: the same mutation as {seen[entry.key()]}")
            seen[entry.key()] = where
            entries.append(entry)
    return entries


@dataclass
class Report:
    """The classified mutants of one run, with the entries of the equivalent list that apply."""

    mutants: list[Mutant]
    entries: list[Entry]
    classes: dict[str, str]  # mutant name -> killed / survived / equivalent / timeout / not run
    reasons: dict[str, str]  # survivor's name -> one-line reason
    stale: list[tuple[Entry, str]]  # (entry, why it is stale)
    #: killed mutants known only as a count per module (a report rendered again from score.json)
    unlisted_killed: dict[str, int] = field(default_factory=dict)
    #: their mutmut statuses, counted
    unlisted_statuses: dict[str, int] = field(default_factory=dict)

    @property
    def partial(self) -> bool:
        return any(c == NOT_RUN for c in self.classes.values())

    def counts(self, module: str | None = None) -> dict[str, int]:
        chosen = [m for m in self.mutants if module is None or m.module == module]
        tally = Counter(self.classes[m.name] for m in chosen)
        tally["killed"] += sum(n for mod, n in self.unlisted_killed.items() if module is None or mod == module)
        counts = {c: tally[c] for c in CLASSES}
        counts["total"] = sum(counts[c] for c in CLASSES)
        counts["not_run"] = tally[NOT_RUN]
        return counts

    def statuses(self) -> dict[str, int]:
        return dict(sorted((Counter(m.status for m in self.mutants) + Counter(self.unlisted_statuses)).items()))

    def modules(self) -> list[str]:
        return sorted({m.module for m in self.mutants} | {mod for mod, n in self.unlisted_killed.items() if n})


def score_of(counts: Mapping[str, int], with_timeouts: bool = False) -> float | None:
    """Killed (with timeouts if asked) over the non-equivalent mutants run; None when there are none."""
    judged = counts["total"] - counts["equivalent"]
    caught = counts["killed"] + (counts["timeout"] if with_timeouts else 0)
    return caught / judged if judged else None


def classify(mutants: Sequence[Mutant], entries: Sequence[Entry]) -> Report:
    """Classify every mutant and match the list's entries against the survivors."""
    names = Counter(m.name for m in mutants)
    doubled = sorted(n for n, k in names.items() if k > 1)
    if doubled:
        raise MutationReportError(f"mutants listed twice: {doubled[:5]}")
    by_key: dict[tuple[str, str, str, str], Entry] = {e.key(): e for e in entries}
    classes: dict[str, str] = {}
    reasons: dict[str, str] = {}
    for m in mutants:
        cls = m.cls
        entry = by_key.get(m.key()) if m.diff else None
        if entry is not None:
            entry.matched.append(m)
        if cls == "survived":
            if entry is not None and entry.kind == "equivalent" and m.status == "survived":
                cls = "equivalent"
                reasons[m.name] = f"equivalent: {entry.reason}"
            elif entry is not None and entry.kind == "gap":
                reasons[m.name] = f"gap: {entry.reason}" if not entry.reason.startswith("gap") else entry.reason
            elif m.status == "survived" and m.diff:
                reasons[m.name] = gap_kind(*changed_lines(m.diff))
            else:
                reasons[m.name] = GAP_REASON_BY_STATUS[m.status]
        classes[m.name] = cls
    complete = {
        module
        for module in {m.module for m in mutants}
        if all(classes[m.name] != NOT_RUN for m in mutants if m.module == module)
    }
    present = {(m.module, m.function) for m in mutants}
    stale: list[tuple[Entry, str]] = []
    for e in entries:
        if (e.module, e.function) not in present:
            stale.append((e, "no such function among the mutated modules"))
        elif e.module not in complete:
            continue  # part of its module was not run: cannot tell
        elif not e.matched:
            stale.append((e, "matches no mutant (the code or the mutation changed)"))
        elif not any(classes[m.name] in ("equivalent", "survived") for m in e.matched):
            outcome = ", ".join(sorted({f"{m.name}: {classes[m.name]}" for m in e.matched}))
            why = "contradicted" if e.kind == "equivalent" else "closed"
            stale.append((e, f"{why}: the mutant it matches was caught ({outcome})"))
    return Report(list(mutants), list(entries), classes, reasons, stale)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_score(report: Report, meta: Mapping[str, Any]) -> dict[str, Any]:
    """score.json: the four classes and their total, the score, and the counts per module."""
    counts = report.counts()
    out: dict[str, Any] = {k: counts[k] for k in (*CLASSES, "total")}
    out.update(
        format=FORMAT,
        not_run=counts["not_run"],
        partial=report.partial,
        score=score_of(counts),
        score_counting_timeouts=score_of(counts, with_timeouts=True),
        stale_entries=len(report.stale),
        statuses=report.statuses(),
        modules={mod: report.counts(mod) for mod in report.modules()},
        mutants=[
            _record(report, m)
            for m in sorted(report.mutants, key=lambda m: (m.module, m.name))
            if report.classes[m.name] != "killed"
        ],
        **meta,
    )
    return out


def _record(report: Report, m: Mutant) -> dict[str, str]:
    before, after = changed_lines(m.diff)
    return dict(
        name=m.name,
        module=m.module,
        function=m.function,
        status=m.status,
        cls=report.classes[m.name],
        reason=report.reasons.get(m.name, ""),
        before=before,
        after=after,
    )


def _diff_block(m: Mutant) -> list[str]:
    lines = _diff_of_lines(*changed_lines(m.diff)).splitlines()
    return ["  ```diff", *(f"  {x}" for x in lines), "  ```"]


def render_readme(report: Report, meta: Mapping[str, Any]) -> str:
    """README.md: counts per module, then every survivor, timeout and stale entry."""
    counts = report.counts()
    out = ["# Mutation score of the library", ""]
    if report.partial:
        run = [mod for mod in report.modules() if report.counts(mod)["not_run"] < len(_of(report, mod))]
        out += [
            f"> **Partial run**: {counts['not_run']} of {counts['total'] + counts['not_run']} mutants were not run "
            f"(modules run: {', '.join(f'`{m}`' for m in run) or 'none'}). This is not the library's score; "
            "`tox -e mutate` with no arguments runs every module.",
            "",
        ]
    out += [
        f"Written by `tox -e mutate` ({meta.get('tool', 'mutmut')}, Hypothesis profile "
        f"`{meta.get('hypothesis_profile', '?')}`, variants: {meta.get('variants', 'all')}) from mutmut's results; "
        "the equivalent list is "
        "`reports/mutation/equivalent.toml`. Score = killed / (total − equivalent); timed-out mutants are "
        "counted apart (not as killed) and shown below."
        + (
            " Classified again after that run (`python -m properties.meta.mutation_report --rerender`) from the "
            "mutants recorded in `score.json`, with the equivalent list as it is now."
            if meta.get("rerendered")
            else ""
        ),
        "",
        f"**Score: {_pct(score_of(counts))}** ({counts['killed']} killed of "
        f"{counts['total'] - counts['equivalent']} non-equivalent mutants; "
        f"{_pct(score_of(counts, with_timeouts=True))} counting timeouts as killed).",
        "",
        "| module | killed | survived | equivalent | timeout | total | not run | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mod in [*report.modules(), None]:
        c = report.counts(mod)
        name = f"`{mod}`" if mod else "**all**"
        out.append(
            f"| {name} | {c['killed']} | {c['survived']} | {c['equivalent']} | {c['timeout']} | {c['total']} "
            f"| {c['not_run']} | {_pct(score_of(c))} |"
        )
    out += [
        "",
        "mutmut statuses: " + ", ".join(f"{s} {n} ({class_of(s)})" for s, n in report.statuses().items()) + ".",
        "",
    ]
    if report.stale:
        out += ["## Stale entries of the equivalent list (remove or rekey them)", ""]
        out += [f"- {e.describe()} — {why}" for e, why in report.stale]
        out.append("")
    for title, wanted in (("Surviving mutants", "survived"), ("Equivalent mutants", "equivalent")):
        chosen = [m for m in report.mutants if report.classes[m.name] == wanted]
        out += [f"## {title} ({len(chosen)})", ""]
        for mod in report.modules():
            mine = sorted((m for m in chosen if m.module == mod), key=lambda m: (m.function, _number(m.name)))
            if not mine:
                continue
            out += [f"### `{mod}`", ""]
            for m in mine:
                out += [f"- `{m.name}` ({m.function}) — {report.reasons[m.name]}", *_diff_block(m)]
            out.append("")
    timeouts = sorted((m for m in report.mutants if report.classes[m.name] == "timeout"), key=lambda m: m.name)
    out += [f"## Timed out ({len(timeouts)})", ""]
    out += [f"- `{m.name}` ({m.module}, {m.function})" for m in timeouts]
    return "\n".join(out).rstrip() + "\n"


def _of(report: Report, module: str) -> list[Mutant]:
    return [m for m in report.mutants if m.module == module]


def _number(name: str) -> int:
    return int(name.rpartition("__mutmut_")[2])


def write_report(report: Report, out_dir: Path, meta: Mapping[str, Any]) -> None:
    """Render README.md and score.json in memory, then write each atomically (README first)."""
    readme, score = render_readme(report, meta), render_score(report, meta)
    write_text(out_dir / "README.md", readme)
    write_json(out_dir / "score.json", score)


# -- mutmut's results -------------------------------------------------------------------


def read_results(root: Path) -> list[tuple[str, str, int | None]]:
    """(source path, mutant name, exit code) for every mutant in ``root/mutants/**/*.py.meta``."""
    base = root / "mutants"
    if not base.is_dir():
        raise MutationReportError(f"{base} does not exist: run mutmut first (tox -e mutate)")
    rows = []
    for meta in sorted(base.rglob("*.py.meta")):
        source = meta.relative_to(base).as_posix()[: -len(".meta")]
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            codes = data["exit_code_by_key"]
        except (ValueError, KeyError) as error:
            raise MutationReportError(f"{meta}: not a mutmut 3 result file ({error})") from error
        rows += [(source, name, code) for name, code in codes.items()]
    if not rows:
        raise MutationReportError(f"no mutants in {base}: run mutmut first (tox -e mutate)")
    return rows


def collect(root: Path, entries: Sequence[Entry], diff_of: Callable[[str, str], str] | None = None) -> list[Mutant]:
    """The mutants mutmut left under ``root``, with the diffs the report needs.

    Diffs are computed for every mutant that is not killed and for killed ones in a
    function an entry names (to tell a contradicted entry). ``diff_of(name, source)``
    defaults to mutmut's own (which reads ``mutants/`` relative to the working directory).
    """
    rows = read_results(root)
    if diff_of is None:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
        from mutmut.stats import status_by_exit_code

        check_status_table(status_by_exit_code, [code for _, _, code in rows])

        def diff_of(name: str, source: str) -> str:
            return str(get_diff_for_mutant(name, path=source))

    named = {(e.module, e.function) for e in entries}
    mutants = []
    for source, name, code in rows:
        status = status_of(code)
        wanted = class_of(status) not in ("killed", NOT_RUN) or (
            class_of(status) == "killed" and (source, function_of(name)) in named
        )
        mutants.append(Mutant(name=name, module=source, status=status, diff=diff_of(name, source) if wanted else ""))
    return mutants


def _diff_of_lines(before: str, after: str) -> str:
    """A unified-diff body whose :func:`changed_lines` are ``before`` and ``after``."""
    return "\n".join([*(f"-{x}" for x in before.splitlines()), *(f"+{x}" for x in after.splitlines())])


def recorded(out: Path) -> tuple[list[Mutant], dict[str, int], dict[str, int], dict[str, Any]]:
    """The mutants recorded in ``out/score.json`` (every one not killed), the killed count per module, the
    killed ones' statuses and the run's meta data."""
    path = out / "score.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MutationReportError(f"{path} does not exist: run tox -e mutate first") from None
    except ValueError as error:
        raise MutationReportError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("mutants"), list):
        raise MutationReportError(f"{path}: not a {FORMAT} file with its mutants recorded (rerun tox -e mutate)")
    try:
        mutants = [
            Mutant(name=r["name"], module=r["module"], status=r["status"], diff=_diff_of_lines(r["before"], r["after"]))
            for r in data["mutants"]
        ]
        killed = {mod: int(c["killed"]) for mod, c in data["modules"].items()}
        listed = Counter(m.status for m in mutants)
        statuses = {s: int(n) - listed[s] for s, n in data["statuses"].items() if int(n) - listed[s]}
    except (KeyError, TypeError, ValueError) as error:
        raise MutationReportError(f"{path}: a recorded mutant or count is malformed ({error!r})") from error
    for m in mutants:
        class_of(m.status)
    meta = {k: data[k] for k in ("tool", "hypothesis_profile", "variants") if k in data}  # not "rerendered"
    return mutants, killed, statuses, meta


def rerender(out: Path, equivalent: Path) -> int:
    """Write the report again from ``out/score.json``'s recorded mutants and the equivalent list as it is now;
    1 (after writing) when the list has stale entries."""
    entries = load_entries(equivalent)
    mutants, killed, statuses, meta = recorded(out)
    report = classify(mutants, entries)
    report.unlisted_killed, report.unlisted_statuses = killed, statuses
    return _finish(report, out, equivalent, {**meta, "rerendered": True})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root holding mutants/ (default .)")
    parser.add_argument("--out", type=Path, default=Path("reports/mutation"), help="where to write the two files")
    parser.add_argument(
        "--equivalent", type=Path, default=Path("reports/mutation/equivalent.toml"), help="the equivalent list"
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="write the report again from the mutants recorded in OUT/score.json and the equivalent list as it is "
        "now (no mutmut, no mutants/ needed)",
    )
    args = parser.parse_args(argv)
    try:
        if args.rerender:
            return rerender(args.out, args.equivalent)
        return generate(args.root, args.out, args.equivalent)
    except MutationReportError as error:
        print(f"mutation report: {error}", file=sys.stderr)
        return 2


def generate(
    root: Path,
    out: Path,
    equivalent: Path,
    meta: Mapping[str, Any] | None = None,
    diff_of: Callable[[str, str], str] | None = None,
) -> int:
    """Write the report; 1 (after writing it) when the equivalent list has stale entries."""
    entries = load_entries(equivalent)
    report = classify(collect(root, entries, diff_of), entries)
    return _finish(report, out, equivalent, dict(meta or tool_meta()))


def _finish(report: Report, out: Path, equivalent: Path, meta: Mapping[str, Any]) -> int:
    write_report(report, out, meta)
    c = report.counts()
    print(
        f"mutation report -> {out}: killed {c['killed']}, survived {c['survived']}, equivalent {c['equivalent']}, "
        f"timeout {c['timeout']}, total {c['total']}, not run {c['not_run']}; score {_pct(score_of(c))}"
        + (" (PARTIAL)" if report.partial else "")
    )
    for e, why in report.stale:
        print(f"stale entry in {equivalent}: {e.describe()}: {why}", file=sys.stderr)
    return 1 if report.stale else 0


def tool_meta() -> dict[str, Any]:
    """The tool and profile a report was made with (no timestamps: the report is reproducible)."""
    import os
    from importlib.metadata import PackageNotFoundError, version

    try:
        tool = f"mutmut {version('mutmut')}"
    except PackageNotFoundError:
        tool = "mutmut (version unknown)"
    return {
        "tool": tool,
        "hypothesis_profile": os.environ.get("HYPOTHESIS_PROFILE", ""),
        "variants": os.environ.get("IQA_VARIANTS") or "all",
    }


if __name__ == "__main__":
    raise SystemExit(main())
