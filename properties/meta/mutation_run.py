"""``tox -e mutate``: run mutmut over the library and write reports/mutation/.

Usage (from the project root)::

    python -m properties.meta.mutation_run                         # every module -> reports/mutation/
    python -m properties.meta.mutation_run iqa/analysis/rates.py   # one module -> mutants/report/ (partial)
    python -m properties.meta.mutation_run iqa/grad.py iqa/analysis --out reports/mutation

What is mutated and which properties run is configured in ``[tool.mutmut]`` of
pyproject.toml; each mutant runs only the properties that reached its function
in mutmut's stats run, with ``-x``, on the Hypothesis profile ``mutation``
(properties/conftest.py) and the variants :data:`DEFAULT_VARIANTS` (or
``$IQA_VARIANTS``). Every run starts from an empty ``mutants/`` (``--keep``
reuses it): mutmut caches results by the library's functions, not by the
properties, and the properties are what changes between runs.

``--keep --rerun-survivors`` continues an earlier run after properties were
added: mutmut runs the mutants it has no result for, then every surviving
mutant of the selected modules again, against the properties as they are now.
A mutant killed earlier stays killed, which holds as long as no property was
weakened or removed since (adding properties only kills more); the result then
equals a fresh run's, at a fraction of its cost.

A module argument is a file or folder among the mutated ones (``only_mutate``);
a run over some modules reports the others as not run, and its report is
labelled partial.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from properties.meta.mutation_report import MutationReportError, generate, tool_meta

PROFILE = "mutation"
#: Three of the six built-ins (unless $IQA_VARIANTS names others): half the properties per mutant;
#: on iqa/grad.py they kill the same 242 of 286 mutants as all six.
DEFAULT_VARIANTS = "reference,injection,damped"


def mutated_patterns(root: Path) -> list[str]:
    """``only_mutate`` of ``[tool.mutmut]`` in ``root/pyproject.toml``."""
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    try:
        return list(data["tool"]["mutmut"]["only_mutate"])
    except KeyError:
        raise SystemExit(f"{root / 'pyproject.toml'} has no [tool.mutmut] only_mutate") from None


def mutant_globs(root: Path, modules: Sequence[str]) -> list[str]:
    """mutmut name globs for module arguments: ``iqa/analysis/rates.py`` -> ``iqa.analysis.rates.*``.

    A folder (a package) selects every module under it; its ``__init__.py`` mutants are
    named after the package (``iqa.analysis.x_f__mutmut_1``), which the folder's glob covers.
    """
    patterns = mutated_patterns(root)
    globs = []
    for module in modules:
        path = Path(module)
        rel = (root / path).resolve().relative_to(root.resolve()) if (root / path).exists() else None
        if rel is None:
            raise SystemExit(f"{module}: no such file or folder under {root}")
        top = root.resolve()
        sources = [rel] if rel.suffix == ".py" else sorted(p.relative_to(top) for p in (top / rel).rglob("*.py"))
        if not any(any(fnmatch.fnmatch(s.as_posix(), p) for p in patterns) for s in sources):
            raise SystemExit(f"{module}: not among the mutated modules (pyproject.toml [tool.mutmut] only_mutate)")
        dotted = ".".join(rel.with_suffix("").parts) if rel.suffix == ".py" else ".".join(rel.parts)
        if rel.name == "__init__.py":
            globs.append(f"{dotted.removesuffix('.__init__')}.x*")
        else:
            globs.append(f"{dotted}.*")
    return globs


def run_mutmut(root: Path, globs: Sequence[str], max_children: int) -> int:
    """``mutmut run`` in ``root`` (the console script beside this Python); its exit status."""
    exe = Path(sys.executable).with_name("mutmut")
    if not exe.exists():
        found = shutil.which("mutmut")
        if found is None:
            raise SystemExit("mutmut is not installed: pip install -e '.[mutate]' (or use tox -e mutate)")
        exe = Path(found)
    command = [str(exe), "run", "--max-children", str(max_children), *globs]
    print("+", " ".join(command), flush=True)
    return subprocess.call(command, cwd=root)


#: mutmut exit codes of the mutants that ``--rerun-survivors`` runs again: survived, and no selected test (a
#: property added since may reach the function now).
RERUN_EXIT_CODES = (0, 5, 33)


def survivors(root: Path, globs: Sequence[str]) -> list[str]:
    """The names of the surviving mutants under ``root/mutants`` that match ``globs`` (all when empty)."""
    names = []
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
        names += [
            name
            for name, code in codes.items()
            if code in RERUN_EXIT_CODES and (not globs or any(fnmatch.fnmatch(name, g) for g in globs))
        ]
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="files or folders to mutate (default: all of only_mutate)")
    parser.add_argument(
        "--out", type=Path, help="report folder (default reports/mutation, or mutants/report for some modules)"
    )
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1, help="parallel mutants")
    parser.add_argument("--keep", action="store_true", help="reuse mutants/ and its cached results")
    parser.add_argument("--report-only", action="store_true", help="write the report from mutants/ as it is")
    parser.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="with --keep: after the run, run every surviving mutant again against the current properties",
    )
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.max_children < 1:
        parser.error(f"--max-children must be at least 1, got {args.max_children}")
    if args.rerun_survivors and not args.keep:
        parser.error("--rerun-survivors continues an earlier run: give --keep as well")
    globs = mutant_globs(root, args.modules)
    out = args.out or (root / "reports/mutation" if not args.modules else root / "mutants/report")
    # The clean run and every mutant must see the same examples: the derandomized profile.
    os.environ["HYPOTHESIS_PROFILE"] = PROFILE
    os.environ["IQA_VARIANTS"] = os.environ.get("IQA_VARIANTS") or DEFAULT_VARIANTS
    os.environ.setdefault("IQA_THREADS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    if not args.report_only:
        if not args.keep and (root / "mutants").exists():
            shutil.rmtree(root / "mutants")
        status = run_mutmut(root, globs, args.max_children)
        if status == 0 and args.rerun_survivors:
            again = survivors(root, globs)
            print(f"rerunning {len(again)} surviving mutants against the current properties", flush=True)
            status = run_mutmut(root, again, args.max_children) if again else 0
        if status != 0:
            print(f"mutmut failed (exit status {status}); no report written", file=sys.stderr)
            return status
    try:
        return generate(root, out, root / "reports/mutation/equivalent.toml", tool_meta())
    except MutationReportError as error:
        print(f"mutation report: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
