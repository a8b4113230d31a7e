#!/usr/bin/env python3
"""Mutation harness for --affected: random single edits, never a miss.

For each edit (an app function body, a test body, a fixture in a conftest,
a data file a test reads, a module-level constant) it runs plain pytest
(the oracle) and `pytest-fast --affected`, and checks that

* every test whose plain-pytest outcome the edit changed (or that the edit
  created) is in the --affected selection, and
* every selected test has plain pytest's outcome;

then it reverts the edit and checks the run that follows the same way.  It
prints the mean selection ratio (selected / all).  test/test_affected.py
runs a quick mode on make_app; the full mode is a script:

    test/mutate.py make_app [--edits 30]       bench/make_app.py's service
    test/mutate.py parity toolz [--edits 30]   a suite from test/parity
                                               (its venv and sources are
                                               prepared by test/parity/run.py)
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = ("app-body", "test-body", "fixture", "data", "constant")

DATA_TEST = '''\
import json
from pathlib import Path


def test_reads_a_data_file():
    data = json.loads(Path(__file__).with_name("mutation_data.json").read_text())
    assert data["value"] == 1
'''


@dataclass
class Edit:
    kind: str
    path: Path
    before: str
    after: str
    where: str

    def apply(self) -> None:
        self.path.write_text(self.after)

    def revert(self) -> None:
        self.path.write_text(self.before)


@dataclass
class Report:
    edits: int = 0
    checks: int = 0
    ratios: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    swapped: int = 0   # edits whose re-collect swapped function bodies in

    @property
    def mean_ratio(self) -> float:
        return sum(self.ratios) / len(self.ratios) if self.ratios else 0.0


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _insert_first(source: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, stmt: str) -> str | None:
    """source with stmt as the first statement of fn's body (None: one-liner)."""
    first = fn.body[0]
    if first.lineno == fn.lineno or (fn.decorator_list and first.lineno <= fn.decorator_list[-1].lineno):
        return None
    lines = source.splitlines(keepends=True)
    indent = lines[first.lineno - 1][:first.col_offset]
    if indent.strip():
        return None
    lines.insert(first.lineno - 1, f"{indent}{stmt}\n")
    return "".join(lines)


def _module_level_constants(tree: ast.Module) -> list[ast.Constant]:
    """int and str literals that run at import time: outside function bodies
    and docstrings, on one line."""
    found: list[ast.Constant] = []

    def walk(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            return    # a docstring
        if (isinstance(node, ast.Constant) and type(node.value) in (int, str)
                and node.lineno == node.end_lineno and node.value != "__main__"):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            walk(child)

    walk(tree)
    return found


def _is_fixture(fn: ast.AST) -> bool:
    return any("fixture" in ast.unparse(d) for d in getattr(fn, "decorator_list", ()))


class Mutator:
    def __init__(self, root: Path, rng: random.Random, data_files: list[Path]) -> None:
        self.root = root
        self.rng = rng
        self.data_files = data_files
        skip = {".venv", "venv", ".git", ".pytest_cache", "__pycache__", "build", ".tox", "docs"}
        self.py = sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))
        self.tests = [p for p in self.py if p.name.startswith("test_") or p.name.endswith("_test.py")]
        self.conftests = [p for p in self.py if p.name == "conftest.py"]
        self.app = [p for p in self.py if p not in self.tests and p not in self.conftests
                    and "tests" not in p.relative_to(root).parts and p.name != "setup.py"]

    def edit(self, kind: str) -> Edit | None:
        if kind == "data":
            if not self.data_files:
                return None
            path = self.rng.choice(self.data_files)
            before = path.read_text()
            after = before.replace('"value": 1', '"value": 2') if '"value": 1' in before else before + "\n"
            return Edit(kind, path, before, after, str(path.relative_to(self.root)))
        pool = {"app-body": self.app, "constant": self.app, "test-body": self.tests,
                "fixture": self.conftests}[kind]
        for _ in range(50):
            if not pool:
                return None
            path = self.rng.choice(pool)
            before = path.read_text()
            try:
                tree = ast.parse(before)
            except SyntaxError:
                continue
            made = self._edit(kind, path, before, tree)
            if made is not None:
                return made
        return None

    def _edit(self, kind: str, path: Path, before: str, tree: ast.Module) -> Edit | None:
        rel = str(path.relative_to(self.root))
        if kind == "constant":
            consts = _module_level_constants(tree)
            if not consts:
                return None
            node = self.rng.choice(consts)
            value = node.value
            new = value + 1 if isinstance(value, int) else f"{value}~"
            lines = before.splitlines(keepends=True)
            line = lines[node.lineno - 1]
            lines[node.lineno - 1] = line[:node.col_offset] + repr(new) + line[node.end_col_offset:]
            return Edit(kind, path, before, "".join(lines), f"{rel}:{node.lineno} {value!r} -> {new!r}")
        fns = _functions(tree)
        if kind == "test-body":
            fns = [f for f in fns if f.name.startswith("test")]
            stmt = 'assert False, "mutant"'
        elif kind == "fixture":
            fns = [f for f in fns if _is_fixture(f)]
            stmt = 'raise RuntimeError("mutant")'
        else:
            stmt = 'raise RuntimeError("mutant")'
        self.rng.shuffle(fns)
        for fn in fns:
            after = _insert_first(before, fn, stmt)
            if after is not None:
                return Edit(kind, path, before, after, f"{rel}::{fn.name}")
        return None


class Harness:
    def __init__(self, root: Path, python: str, binary: str, args: list[str], env: dict[str, str]) -> None:
        self.root = root
        self.python = python
        self.binary = binary
        self.args = args
        self.env = env
        self.work = Path(tempfile.mkdtemp(prefix="pf-mutate-"))
        self.address = str(self.work / "d.sock")

    def oracle(self) -> tuple[dict[str, str], int]:
        """{nodeid: outcome} and the exit code of plain pytest."""
        dump = self.work / "oracle.json"
        dump.unlink(missing_ok=True)
        env = dict(self.env, OUTCOME_DUMP=str(dump),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), self.env.get("PYTHONPATH")])))
        p = subprocess.run([self.python, "-m", "pytest", "-p", "outcome_dump", "-q", "-p", "no:randomly",
                            *self.args], cwd=self.root, env=env, capture_output=True, timeout=1800)
        # a conftest that fails to import stops pytest before any dump
        return (json.loads(dump.read_text()) if dump.exists() else {}), p.returncode

    def fast(self, *extra: str) -> tuple[dict[str, str], str, int]:
        dump = self.work / "fast.json"
        dump.unlink(missing_ok=True)
        p = subprocess.run([self.binary, "--address", self.address, "--python", self.python, "--dump",
                            str(dump), *extra, *self.args], cwd=self.root, env=self.env,
                           capture_output=True, text=True, timeout=1800)
        out = p.stdout + p.stderr
        return (json.loads(dump.read_text()) if dump.exists() else {}), out, p.returncode

    def recollect_path(self) -> str:
        """How the last re-collect went, as --status says."""
        p = subprocess.run([self.binary, "--address", self.address, "--status"], env=self.env,
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"^collected: (.*)$", p.stdout, re.M)
        return m.group(1) if m else "?"

    def stop(self) -> None:
        subprocess.run([self.binary, "--address", self.address, "--stop"], env=self.env,
                       capture_output=True, timeout=60)
        shutil.rmtree(self.work, ignore_errors=True)

    def check(self, report: Report, label: str, before: dict[str, str],
              after: tuple[dict[str, str], int]) -> None:
        after, rc = after
        got, out, fast_rc = self.fast("--affected")
        changed = {n for n, o in after.items() if before.get(n) != o}
        missed = sorted(changed - set(got))
        wrong = sorted(n for n, o in got.items() if after.get(n) != o)
        report.checks += 1
        report.ratios.append(len(got) / max(len(after), 1))
        # pytest's exit codes for an interrupted or broken session must agree
        bad_rc = rc in (2, 3, 4) and fast_rc != rc
        if missed or wrong or bad_rc:
            report.failures.append(f"{label}: missed {missed[:5]} (of {len(missed)}), "
                                   f"wrong outcome {[(n, got[n], after.get(n)) for n in wrong[:5]]}, "
                                   f"exit codes {fast_rc} vs pytest's {rc}\n{out[-2000:]}")

    def run(self, edits: int, seed: int, data_files: list[Path], kinds: tuple[str, ...] = KINDS,
            log=print) -> Report:  # type: ignore[no-untyped-def]
        rng = random.Random(seed)
        mutator = Mutator(self.root, rng, data_files)
        report = Report()
        baseline, base_rc = self.oracle()
        self.fast("--affected")    # no record yet: runs and records every test
        for i in range(edits):
            kind = kinds[i % len(kinds)]
            edit = mutator.edit(kind)
            if edit is None:
                log(f"mutate: no {kind} edit possible here")
                continue
            report.edits += 1
            edit.apply()
            try:
                mutated = self.oracle()
                self.check(report, f"edit {i} {kind} {edit.where}", baseline, mutated)
                path = self.recollect_path()
                report.swapped += "swapped" in path
            finally:
                edit.revert()
            # a test that did not run under the edit (a broken import stops
            # pytest) last ran as in the baseline
            self.check(report, f"revert {i} {kind} {edit.where}", {**baseline, **mutated[0]},
                       (baseline, base_rc))
            log(f"mutate: {i:3d} {kind:9} {edit.where}: selected {report.ratios[-2]:.1%}, "
                f"after revert {report.ratios[-1]:.1%}; re-collect: {path}")
        return report


def add_data_test(root: Path, tests: Path | None = None) -> list[Path]:
    """A test that reads a data file, in tests (default root/tests)."""
    tests = tests or root / "tests"
    tests.mkdir(exist_ok=True)
    (tests / "test_mutation_data.py").write_text(DATA_TEST)
    data = tests / "mutation_data.json"
    data.write_text('{"value": 1}\n')
    return [data]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "PYTHON")) and k not in ("VIRTUAL_ENV", "CI")}


def make_app(dest: Path, python: str) -> list[Path]:
    subprocess.run([python, str(ROOT / "bench" / "make_app.py"), str(dest)], check=True, capture_output=True)
    return add_data_test(dest)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=("make_app", "parity"))
    ap.add_argument("package", nargs="?", help="with parity: a name from test/parity/packages.txt")
    ap.add_argument("--edits", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default=os.environ.get("PYTEST_FAST_BIN", str(ROOT / "pytest-fast")))
    ap.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    a = ap.parse_args()
    env = clean_env()
    if a.target == "make_app":
        root = Path(tempfile.mkdtemp(prefix="pf-mutate-app-")) / "app"
        data = make_app(root, a.python)
        harness = Harness(root, a.python, a.bin, [], env)
    else:
        sys.path.insert(0, str(HERE / "parity"))
        import run as parity  # type: ignore[import-not-found]
        pkg = next(p for p in parity.parse_packages(HERE / "parity" / "packages.txt") if p.name == a.package)
        pdir = parity.WORK / pkg.name
        logf = pdir / "mutate-setup.log"
        pdir.mkdir(parents=True, exist_ok=True)
        top = parity.unpack(parity.fetch_sdist(pkg, pdir, logf), pdir / "src")
        root = top / pkg.subdir if pkg.subdir else top
        py = parity.setup_venv(pkg, pdir, root, logf)
        env = dict(parity.base_env(pkg, py, parity.shim_dir()))
        # beside an existing test module, where the suite's own settings collect it
        first = Mutator(root, random.Random(0), []).tests[0]
        data = add_data_test(root, first.parent)
        harness = Harness(root, str(py), a.bin, pkg.args, env)
    try:
        report = harness.run(a.edits, a.seed, data)
    finally:
        harness.stop()
    print(f"mutate: {report.edits} edits, {report.checks} checks, {len(report.failures)} failures, "
          f"mean selection {report.mean_ratio:.1%}, {report.swapped} swapped in without a re-import")
    for f in report.failures:
        print("FAIL", f)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
