"""pytest-fast: which tests an edit can change (``--affected``).

Workers record, per test, every project file whose code ran during its
setup, call and teardown and every project file it opened (an audit hook
sees ``open``: data files count).  The run's leader merges those records
into one file, together with a fingerprint of every project file the
collection imported: its size and mtime, the hash of its content, the hash
of its *skeleton* (the module with every function body emptied) and the
project files it imports.  A later ``--affected`` run selects a test when

* it has no record, failed last time, or a file it depends on changed
  since it last ran (its record is then "stale");
* a file it ran or opened changed;
* a Python file changed outside function bodies (a module-level constant, a
  class attribute, a decorator, a signature), or inside the body of a
  function that ran while the collection imported and collected (``X =
  compute()``: its result is module state), and the test's module, or a
  file whose code the test ran (a conftest's fixture, an app module),
  imports it, directly or through other project modules;
* the world changed: the interpreter, the installed packages, the ini file,
  a conftest or the plugins.  Then every test is affected.

A missing, corrupt or foreign record means "everything is affected", never
an error.  This module is plain Python with no pytest in it: the glue
(glue.py) feeds it, and the tests import it directly.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

FORMAT = "pytest-fast-affected 2"


# ------------------------------------------------------------------ files

def _sha(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class _Hollow(ast.NodeTransformer):
    """Empties function bodies: what is left runs at import time."""

    def _hollow(self, node: ast.AST) -> ast.AST:
        node.body = [ast.Pass()]  # type: ignore[attr-defined]
        return node

    visit_FunctionDef = _hollow
    visit_AsyncFunctionDef = _hollow


def _hollow_hash(tree: ast.AST) -> str:
    """The hash of a parsed module's skeleton: the module with its function
    bodies emptied (which it does to the tree)."""
    return _sha(ast.dump(_Hollow().visit(tree)).encode())


class _Defs(ast.NodeVisitor):
    """The functions outside function bodies, by qualified name (as
    co_qualname says it): the hash of each one's body (definitions that
    share a name hash together) and their docstrings in source order; and
    the positions of the lambdas outside function bodies.  The hot swap
    reads all three."""

    def __init__(self, tree: ast.AST) -> None:
        self.bodies: dict[str, str] = {}
        self.docs: dict[str, list[str | None]] = {}
        self.lambdas: list[tuple[int, int]] = []
        self.prefix = ""
        self.visit(tree)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for d in node.decorator_list + node.bases + [k.value for k in node.keywords]:
            self.visit(d)
        outer, self.prefix = self.prefix, self.prefix + node.name + "."
        for stmt in node.body:
            self.visit(stmt)
        self.prefix = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        name = self.prefix + node.name
        body = ast.dump(ast.Module(body=node.body, type_ignores=[]))
        self.bodies[name] = _sha((self.bodies.get(name, "") + body).encode())
        self.docs.setdefault(name, []).append(ast.get_docstring(node, clean=False))
        for d in node.decorator_list + node.args.defaults + [d for d in node.args.kw_defaults if d]:
            self.visit(d)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.lambdas.append((node.lineno, node.col_offset))
        self.generic_visit(node)


def _imported_names(tree: ast.AST, package: str) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                for i in range(1, len(parts) + 1):
                    yield ".".join(parts[:i])
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = package.split(".") if package else []
                if node.level - 1 > len(pkg):
                    continue
                pkg = pkg[:len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            parts = base.split(".") if base else []
            for i in range(1, len(parts) + 1):
                yield ".".join(parts[:i])
            for alias in node.names:
                yield f"{base}.{alias.name}" if base else alias.name


def fingerprint(root: str, rel: str, modules: dict[str, str], names: dict[str, str]) -> dict | None:
    """The fingerprint of one file; modules maps module names to files,
    names maps files back to their module names (for relative imports)."""
    try:
        stat, data = _read(os.path.join(root, rel))
    except OSError:
        return None
    return _fingerprint(rel, stat, data, modules, names)


def _read(path: str) -> tuple[list[int], bytes]:
    """A file's content, and its stat as of that content (a save may
    truncate and write it while it is read)."""
    with open(path, "rb") as f:
        data = f.read()
        st = os.fstat(f.fileno())
    return [st.st_mtime_ns, st.st_size], data


def _fingerprint(rel: str, stat: list[int], data: bytes, modules: dict[str, str], names: dict[str, str]) -> dict:
    fp: dict = {"stat": stat, "sha": _sha(data), "skel": None, "imports": [], "bodies": {}}
    if rel.endswith(".py"):
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            return fp
        name = names.get(rel, "")
        package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
        fp["imports"] = sorted({modules[n] for n in _imported_names(tree, package) if n in modules} - {rel})
        fp["bodies"] = _Defs(tree).bodies
        fp["skel"] = _hollow_hash(tree)   # last: it empties the tree's functions
    return fp


def _changes(root: str, files: dict[str, dict],
             seen: dict[str, tuple[list[int], bytes | None]] | None = None
             ) -> tuple[dict[str, str], dict[str, set[str]]]:
    """Files changed since recorded: 'module' (outside function bodies, or
    gone), 'body' (inside function bodies only) or 'data'; and for the
    'body' ones, the qualified names of the functions whose bodies changed.
    Into seen, each file as found: its stat, and its content where the
    stat is not the recorded one (None: the recorded content)."""
    changed = {}
    bodies: dict[str, set[str]] = {}
    for rel, fp in files.items():
        path = os.path.join(root, rel)
        try:
            st = os.stat(path)
        except OSError:
            changed[rel] = "module"
            continue
        stat = [st.st_mtime_ns, st.st_size]
        if fp.get("stat") == stat:
            if seen is not None:
                seen[rel] = (stat, None)
            continue
        try:
            found, data = _read(path)
        except OSError:
            changed[rel] = "module"
            continue
        if seen is not None:
            seen[rel] = (found, data)
        if _sha(data) == fp.get("sha"):
            continue
        if not rel.endswith(".py"):
            changed[rel] = "data"
            continue
        try:
            tree = ast.parse(data)
        except (SyntaxError, ValueError):
            changed[rel] = "module"
            continue
        now = _Defs(tree).bodies
        if _hollow_hash(tree) != fp.get("skel"):
            changed[rel] = "module"
            continue
        changed[rel] = "body"
        was = fp.get("bodies") or {}
        bodies[rel] = {name for name in set(was) | set(now) if was.get(name) != now.get(name)}
    return changed, bodies


def snapshot(root: str, rels: Iterable[str], seen: dict[str, tuple[list[int], bytes | None]]) -> None:
    """Into seen, each of rels that it lacks, as found now (see _changes)."""
    for rel in rels:
        if rel in seen:
            continue
        try:
            seen[rel] = _read(os.path.join(root, rel))
        except OSError:
            continue


def _importers(files: dict[str, dict], targets: Iterable[str]) -> set[str]:
    """The targets and every file that imports one of them, transitively."""
    reverse: dict[str, list[str]] = {}
    for rel, fp in files.items():
        for dep in fp.get("imports", ()):
            reverse.setdefault(dep, []).append(rel)
    seen = set(targets)
    todo = list(seen)
    while todo:
        for rel in reverse.get(todo.pop(), ()):
            if rel not in seen:
                seen.add(rel)
                todo.append(rel)
    return seen


# ----------------------------------------------------------------- record

def load(path: str) -> dict | None:
    """The record, or None when it is missing, corrupt or foreign."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    ok = (isinstance(data, dict) and data.get("format") == FORMAT and isinstance(data.get("world"), str)
          and isinstance(data.get("files"), dict) and isinstance(data.get("tests"), dict)
          and all(isinstance(v, dict) for v in data["files"].values())
          and all(isinstance(v, dict) and isinstance(v.get("deps"), list) for v in data["tests"].values()))
    return data if ok else None


def save(path: str, record: dict) -> None:
    """Atomically: a reader sees the old record or the new one."""
    tmp = f"{path}.{os.getpid()}.tmp"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, separators=(",", ":"), sort_keys=True)
    os.replace(tmp, path)


def affected(record: dict | None, world: str, root: str, tests: dict[str, str],
             ran_at_import: Callable[[str, set[str]], bool] | None = None,
             seen: dict[str, tuple[list[int], bytes | None]] | None = None) -> tuple[set[str], str]:
    """Of tests ({nodeid: module file, relative to root}), those an edit
    since their last run could change, and why, in a few words.
    ran_at_import(file, qualified names) says whether one of those
    functions of that file ran while the collection imported and collected;
    an edit inside its body then counts as one outside function bodies.
    seen, when given, gets the recorded files as this run finds them
    (see _changes): update() fingerprints from it what is edited later."""
    if record is None:
        return set(tests), "every test: no usable record of earlier runs"
    if record["world"] != world:
        return set(tests), "every test: the interpreter, packages, ini file, conftests or plugins changed"
    files = record["files"]
    changed, bodies = _changes(root, files, seen)
    for rel, names in bodies.items():
        if ran_at_import is not None and ran_at_import(rel, names):
            changed[rel] = "module"
    touched = set(changed)
    imported = _importers(files, [rel for rel, how in changed.items() if how == "module"])
    chosen = set()
    for nodeid, module in tests.items():
        rec = record["tests"].get(nodeid)
        if (rec is None or rec.get("failed") or rec.get("stale") or module in imported
                or module in touched or not touched.isdisjoint(rec["deps"])
                or not imported.isdisjoint(rec["deps"])):
            chosen.add(nodeid)
    n = len(changed)
    return chosen, f"{n} file{'' if n == 1 else 's'} changed since the last runs"


def update(record: dict | None, world: str, root: str, ran: dict[str, dict], project: Iterable[str],
           modules: dict[str, str], started_ns: int,
           seen: dict[str, tuple[list[int], bytes | None]] | None = None) -> dict:
    """The record after a run, a new one (the given record is left as it
    was, for the caller to compare with): ran maps each test that ran to
    {"module", "deps", "failed"} (deps None: not recorded, because its
    record was current: the recorded deps stand); project lists the project files the
    collection imported; modules maps module names to those files.  A file
    modified after the run started (a save as soon as the result arrives,
    while this record is written) is fingerprinted as the run found it, from
    seen (see affected()); else as unknown, so that the tests that ran
    against its older content, and the tests of every module that imports
    it, are selected again."""
    if record is None or record["world"] != world:
        record = {"format": FORMAT, "world": world, "files": {}, "tests": {}}
    tests = dict(record["tests"])
    names = {rel: name for name, rel in modules.items()}
    ran = {nodeid: rec if rec["deps"] is not None
           else dict(rec, deps=record["tests"].get(nodeid, {}).get("deps", []))
           for nodeid, rec in ran.items()}
    old = record["files"]
    wanted = set(project)
    for rec in [*ran.values(), *record["tests"].values()]:
        wanted.update(rec["deps"])
    files: dict[str, dict] = {}
    for rel in sorted(wanted):
        fp = old.get(rel)
        current = None
        try:
            st = os.stat(os.path.join(root, rel))
            current = [st.st_mtime_ns, st.st_size]
        except OSError:
            pass
        if current is None:
            continue
        if fp is None or fp.get("stat") != current:
            fp = fingerprint(root, rel, modules, names)
            if fp is None:
                continue
        if max(current[0], fp["stat"][0]) > started_ns:
            found = (seen or {}).get(rel)
            if found is not None and found[1] is not None:
                fp = _fingerprint(rel, found[0], found[1], modules, names)
            elif found is not None and old.get(rel, {}).get("stat") == found[0]:
                fp = old[rel]
            else:
                fp = dict(fp, stat=None, sha=None, skel=None, bodies={})
        files[rel] = fp
    # Tests that did not run keep their record, but not against a file
    # whose fingerprint is now replaced: they ran against the old content.
    replaced = {rel for rel, fp in files.items() if rel in old and old[rel].get("sha") != fp.get("sha")}
    replaced |= {rel for rel in old if rel not in files}
    if replaced:
        module_level = {rel for rel in replaced
                        if rel not in files or old[rel].get("skel") != files[rel].get("skel")}
        imported = _importers(old, module_level)
        for nodeid, rec in tests.items():
            if nodeid not in ran and (rec.get("module") in imported or not replaced.isdisjoint(rec["deps"])
                                      or not imported.isdisjoint(rec["deps"])):
                tests[nodeid] = dict(rec, stale=True)
    for nodeid, rec in ran.items():
        tests[nodeid] = {"module": rec["module"], "deps": sorted(rec["deps"]),
                         "failed": bool(rec["failed"]), "stale": False}
    return {"format": FORMAT, "world": world, "files": files, "tests": tests}


# -------------------------------------------------------------- recording

class Recorder:
    """Per test, the project files whose code ran or that were opened.

    sys.monitoring (3.12+): PY_START, disabled for good at the first call of
    code outside the project, kept for the project's own functions (far
    fewer calls; re-arming every code object per test cost make_app 70 %
    of a warm run).  Once on, the events stay on between recorded tests:
    each switch makes every function run afterwards instrumented again,
    which cost more than a C call per call of a project function.  With
    native, the callback is its mon_start, in C.
    Before 3.12 native, when given, is the zygote's C profile function
    (calls_start, calls_here, calls_stop: one set insertion per call);
    without it, a global trace function that asks for no line events,
    which is far slower.  Opened files come from an audit hook: native's,
    in C (opens_start, opens_stop), else one in Python."""

    def __init__(self, root: str, excluded: Iterable[str], native: Any = None) -> None:
        self.native = native
        self.root = os.path.join(os.path.realpath(root), "")
        self.excluded = tuple(os.path.join(os.path.realpath(d), "") for d in excluded)
        self.seen: set[str] = set()
        self.rel: dict[str, str | None] = {}
        self.active = False
        self.tool: int | None = None
        self.chained: Any = None
        if native is None:
            sys.addaudithook(self._audit)   # the zygote's is in C: far cheaper

    def relative(self, filename: str) -> str | None:
        try:
            return self.rel[filename]
        except KeyError:
            pass
        path = os.path.realpath(filename) if filename and not filename.startswith("<") else ""
        rel = None
        if path.startswith(self.root) and not path.startswith(self.excluded) and os.path.isfile(path):
            rel = path[len(self.root):]
            if "__pycache__" in rel.split(os.sep) or rel.startswith(".pytest_cache" + os.sep):
                rel = None
        self.rel[filename] = rel
        return rel

    def _audit(self, event: str, args: tuple) -> None:
        if self.active and event == "open" and isinstance(args[0], str):
            mode, flags = args[1], args[2]
            if isinstance(mode, str):
                reading = not any(c in mode for c in "wax+")
            else:
                reading = isinstance(flags, int) and not flags & (os.O_WRONLY | os.O_RDWR)
            if reading:
                self.seen.add(os.path.abspath(args[0]))

    def _trace(self, frame, event, arg):  # type: ignore[no-untyped-def]
        self.seen.add(frame.f_code.co_filename)
        return self.chained(frame, event, arg) if self.chained is not None else None

    def _thread_started(self, frame, event, arg):  # type: ignore[no-untyped-def]
        self.native.calls_here()   # replaces this Python hook in the new thread

    def _on_start(self, code, offset):  # type: ignore[no-untyped-def]
        if self.relative(code.co_filename) is None:
            return sys.monitoring.DISABLE
        if self.active:
            self.seen.add(code.co_filename)
        return None

    def start(self) -> None:
        self.seen = set()
        self.active = True
        if self.native is not None:
            self.native.opens_start()
        mon = getattr(sys, "monitoring", None)
        if self.native is not None:
            if mon is not None and self.tool is None:
                self.tool = self._use_tool(mon, self.native.mon_start)
                if self.tool is not None:
                    self.native.mon_setup(lambda filename: self.relative(filename) is not None, mon.DISABLE)
            self.native.calls_start()
            if self.tool is None:   # no free tool id: the profile function, in every thread
                threading.setprofile(self._thread_started)
            return
        if mon is None:
            # a tracer already there (coverage, a debugger) keeps working
            self.chained = sys.gettrace()
            sys.settrace(self._trace)
            threading.settrace(self._trace)
            return
        if self.tool is None:
            self.tool = self._use_tool(mon, self._on_start)

    @staticmethod
    def _use_tool(mon: Any, callback: Any) -> int | None:
        """A free sys.monitoring tool id, PY_START events to callback."""
        for tool in (4, 3):
            if mon.get_tool(tool) is None:
                mon.use_tool_id(tool, "pytest-fast")
                mon.register_callback(tool, mon.events.PY_START, callback)
                mon.set_events(tool, mon.events.PY_START)
                return tool
        return None

    def stop(self) -> set[str]:
        """The project files seen since start, relative to the root."""
        self.active = False
        if self.native is not None:
            self.seen |= self.native.opens_stop()
        mon = getattr(sys, "monitoring", None)
        if self.native is not None:
            if self.tool is None:
                threading.setprofile(None)  # type: ignore[arg-type]
            self.seen |= self.native.calls_stop()
            return self.project(self.seen)
        if mon is None:
            sys.settrace(self.chained)
            threading.settrace(self.chained)  # type: ignore[arg-type]
        return self.project(self.seen)

    def so_far(self) -> set[str]:
        """The project files seen since start, recording on."""
        if self.native is not None:
            self.seen |= self.native.opens_stop()
            self.native.opens_start()
            self.seen |= self.native.calls_stop()
            self.native.calls_start()
        return self.project(self.seen)

    def project(self, filenames: Iterable[str]) -> set[str]:
        """The project files among filenames, relative to the root."""
        out = set()
        for filename in list(filenames):
            rel = self.relative(filename)
            if rel is not None:
                out.add(rel)
        return out
