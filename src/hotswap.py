"""pytest-fast: edits inside function bodies, applied to the live zygote.

When app modules (not test modules or conftests) changed only inside
function bodies, the next collected zygote is a fork of the last full
collection in which each changed function gets the new source's code
(``function.__code__``): nothing is imported or collected again.  A fresh
import gives the same only when the old code left nothing behind, so the
swap refuses (and the daemon rebuilds the levels as before) when

* a module changed outside function bodies (its *skeleton*, as affected.py
  defines it), or a lambda outside them moved;
* a changed function ran while the zygote imported and collected (the
  interpreter says so: see ran() in zygote.c): a module constant, a
  registry, a cache or a closure may hold what it made; or a module holds
  a generator of it that has not started yet;
* a changed function's free variables, flags or docstring changed;
* the live function cannot be found (a decorator that keeps no
  ``__wrapped__``), or the module was not loaded from source.

An edit that only moves a function's lines is swapped even where it ran:
its tracebacks then point at the right lines.  Plain Python, no pytest:
the glue (glue.py) gives it the modules, a compiler and ran().
"""

from __future__ import annotations

import ast
import functools
import os
import types
from collections.abc import Callable, Iterable

import _pytest_fast_affected as _affected

CO_NEWLOCALS = 0x0002        # a function's code; module and class bodies lack it
_LIMIT = 64 << 20            # bytes of source kept per zygote chain
_SOURCES: dict[str, bytes] = {}   # real path -> the source its module was imported from
_kept = [0]


class Refused(Exception):
    """Why the edit cannot be swapped in (the daemon re-collects in full)."""


def keep_sources(files: Iterable[str]) -> None:
    """Remember the source of each module file not kept yet, as a level
    freezes (every fork inherits it): a later edit is compared with what
    was imported."""
    for real in files:
        if real in _SOURCES or not real.endswith(".py"):
            continue
        try:
            with open(real, "rb") as f:
                data = f.read(_LIMIT - _kept[0] + 1)
        except OSError:
            continue
        if _kept[0] + len(data) > _LIMIT:
            return
        _SOURCES[real] = data
        _kept[0] += len(data)


def _functions(co: types.CodeType, prefix: str = "") -> dict[str, list[types.CodeType]]:
    """The functions a module's code defines outside function bodies, by
    qualified name, in source order (a property's accessors share one)."""
    out: dict[str, list[types.CodeType]] = {}
    for c in co.co_consts:
        if isinstance(c, types.CodeType) and c.co_name.startswith("<generic parameters of "):
            raise Refused("%s uses type parameters (PEP 695)" % c.co_filename)
        if not isinstance(c, types.CodeType) or c.co_name.startswith("<"):
            continue   # a lambda or comprehension outside function bodies: in the skeleton
        if c.co_flags & CO_NEWLOCALS:
            out.setdefault(prefix + c.co_name, []).append(c)
        else:
            for k, v in _functions(c, prefix + c.co_name + ".").items():
                out.setdefault(k, []).extend(v)
    return out


def _same_behaviour(a: types.CodeType, b: types.CodeType) -> bool:
    """The same code but for line numbers."""
    if (a.co_code, a.co_names, a.co_varnames, a.co_freevars, a.co_cellvars, a.co_flags,
            getattr(a, "co_exceptiontable", None)) != (
            b.co_code, b.co_names, b.co_varnames, b.co_freevars, b.co_cellvars, b.co_flags,
            getattr(b, "co_exceptiontable", None)) or len(a.co_consts) != len(b.co_consts):
        return False
    for x, y in zip(a.co_consts, b.co_consts):
        if isinstance(x, types.CodeType) and isinstance(y, types.CodeType):
            if not _same_behaviour(x, y):
                return False
        elif type(x) is not type(y) or repr(x) != repr(y):
            return False
    return True


def _own(obj: object, name: str) -> object:
    """obj's attribute from its own namespace: no __getattr__ runs."""
    try:
        namespace = object.__getattribute__(obj, "__dict__")
    except Exception:
        return None
    return namespace.get(name) if isinstance(namespace, (dict, types.MappingProxyType)) else None


def _live(value: object, name: str, filename: str) -> list[types.FunctionType]:
    """The function objects named `name` from `filename` that value is or
    wraps (decorators that keep __wrapped__ or a closure, static and class
    methods, properties, partials, pytest fixtures)."""
    found: dict[int, types.FunctionType] = {}
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(value, 0)]
    while todo:
        v, depth = todo.pop()
        if v is None or id(v) in seen or depth > 4:
            continue
        seen.add(id(v))
        nexts: list[object] = [_own(v, k) for k in ("__wrapped__", "_fixture_function")]
        nexts.append(_own(_own(v, "__pytest_wrapped__"), "obj"))
        if isinstance(v, types.FunctionType):
            if v.__code__.co_name == name and v.__code__.co_filename == filename:
                found[id(v)] = v
            for cell in v.__closure__ or ():
                try:
                    nexts.append(cell.cell_contents)
                except ValueError:   # an empty cell
                    pass
        elif isinstance(v, (staticmethod, classmethod, types.MethodType)):
            nexts.append(v.__func__)
        elif isinstance(v, property):
            nexts += [v.fget, v.fset, v.fdel]
        elif isinstance(v, functools.partial):
            nexts.append(v.func)
        todo += [(n, depth + 1) for n in nexts]
    return list(found.values())


def _resolve(mod: types.ModuleType, qualname: str, filename: str) -> list[types.FunctionType]:
    obj: object = mod
    parts = qualname.split(".")
    for part in parts[:-1]:
        obj = _own(obj, part)
        if not isinstance(obj, type):
            raise Refused("cannot find the class of %s" % qualname)
    return _live(_own(obj, parts[-1]), parts[-1], filename)


_SUSPENDABLE = {types.GeneratorType: "gi_code", types.CoroutineType: "cr_code", types.AsyncGeneratorType: "ag_code"}


def _suspended(code: types.CodeType, modules: dict[str, types.ModuleType | None]) -> bool:
    """A generator or coroutine of code that a module holds: made at
    import, it has not started (so ran() cannot tell), yet it runs the old
    body when a test resumes it."""
    if not code.co_flags & 0x3A0:   # a generator, a coroutine, an async generator
        return False
    for mod in modules.values():
        namespace = getattr(mod, "__dict__", None)
        for value in list(namespace.values()) if isinstance(namespace, dict) else ():
            attr = _SUSPENDABLE.get(type(value))
            if attr is not None and getattr(value, attr) is code:
                return True
    return False


Compiler = Callable[[types.ModuleType, str, bytes], types.CodeType]


def swap(files: Iterable[str], modules: dict[str, types.ModuleType | None], compile_module: Compiler,
         ran: Callable[[types.CodeType], bool], root: str) -> int:
    """Swap in the edited function bodies of the module `files`
    (real paths; `modules` maps module files to their module, None when
    two modules share one).  Returns how many functions changed behaviour;
    raises Refused before touching anything when the edit cannot be
    swapped in."""
    swaps: list[tuple[list[types.FunctionType], types.CodeType]] = []
    sources: dict[str, bytes] = {}
    changed = 0
    for real in files:
        rel = os.path.relpath(real, root)
        old = _SOURCES.get(real)
        mod = modules.get(real)
        if old is None or mod is None:
            raise Refused("%s: not an app module the zygote imported" % rel)
        try:
            with open(real, "rb") as source:
                new = source.read()
        except OSError as exc:
            raise Refused("%s: %s" % (rel, exc.strerror)) from None
        try:
            otree, ntree = ast.parse(old), ast.parse(new)
        except (SyntaxError, ValueError):
            raise Refused("%s does not parse" % rel) from None
        odefs, ndefs = _affected._Defs(otree), _affected._Defs(ntree)
        if _affected._hollow_hash(otree) != _affected._hollow_hash(ntree):
            raise Refused("%s changed outside function bodies" % rel)
        if odefs.lambdas != ndefs.lambdas:
            raise Refused("%s: a lambda outside function bodies moved" % rel)
        code = compile_module(mod, real, new)
        sources[real] = new
        for qualname, codes in _functions(code).items():
            lives = _resolve(mod, qualname, code.co_filename)
            olds = sorted({id(f.__code__): f.__code__ for f in lives}.values(), key=lambda c: c.co_firstlineno)
            if len(olds) != len(codes):
                raise Refused("%s: cannot find the function %s the zygote runs" % (rel, qualname))
            for i, (was, now) in enumerate(zip(olds, codes)):
                targets = [f for f in lives if f.__code__ is was]
                if not _same_behaviour(was, now):
                    if was.co_freevars != now.co_freevars or was.co_flags != now.co_flags:
                        raise Refused("%s: %s now closes over other names, or is now a generator "
                                      "or not" % (rel, qualname))
                    if odefs.docs.get(qualname, [])[i:i + 1] != ndefs.docs.get(qualname, [])[i:i + 1]:
                        raise Refused("%s: the docstring of %s changed" % (rel, qualname))
                    if ran(was):
                        raise Refused("%s: %s ran while the zygote imported and collected"
                                      % (rel, qualname))
                    if _suspended(was, modules):
                        raise Refused("%s: a module holds a generator of %s" % (rel, qualname))
                    changed += 1
                swaps.append((targets, now))
    for targets, now in swaps:
        for function in targets:
            function.__code__ = now
    _SOURCES.update(sources)
    return changed

