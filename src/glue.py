"""pytest-fast: the Python side of the zygote, its run leaders and workers.

The zygote runs pytest's own main with the _Zygote plugin below, so that
configuration and collection happen under all of pytest's hook wrappers.
Its pytest_runtestloop never runs a test: it reports the collection to the
daemon, freezes the heap and waits in C (_pytest_fast.serve) for fork
requests.  A forked *leader* applies one run's options and selection; the
*workers* it forks run items with pytest's real protocol.  Frames to the
daemon are pickles of plain builtins; frames from it are decoded by the C
decoder, which cannot instantiate anything.
"""
import gc
import inspect
import io
import json
import os
import pickle
import sys
import time

import _pytest_fast as _c
import _pytest_fast_affected as _affected
import _pytest_fast_hotswap as _hotswap

_PLAIN = (type(None), bool, int, float, str, bytes)
# The environment and working directory this zygote was started with: what
# preloading, plugins and conftests change in them is part of the collection
# every run inherits.
_BOOT_ENV = dict(os.environ)
_BOOT_CWD = os.getcwd()


class _NotPlain(Exception):
    pass


class _PlainPickler(pickle.Pickler):
    # The C pickler handles exact builtins itself and asks us only about
    # everything else, which the daemon would refuse: bail out and convert.
    def reducer_override(self, obj):
        raise _NotPlain


def _plain(obj, depth=0):
    t = type(obj)
    if t in _PLAIN:
        return obj
    if depth > 150:
        return repr(obj)
    d = depth + 1
    if isinstance(obj, dict):
        return {(k if type(k) in _PLAIN else repr(k)): _plain(v, d) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        seq = [_plain(v, d) for v in obj]
        return seq if isinstance(obj, list) else tuple(seq)
    if isinstance(obj, (set, frozenset)):
        return frozenset(v if type(v) in _PLAIN else repr(v) for v in obj)
    for base in (bool, int, float, str, bytes):
        if isinstance(obj, base):
            return base(obj)
    return repr(obj)


def _dumps(obj):
    buf = io.BytesIO()
    try:
        _PlainPickler(buf, 5).dump(obj)
    except _NotPlain:
        buf = io.BytesIO()
        pickle.Pickler(buf, 5).dump(_plain(obj))
    return buf.getvalue()


def _send(fd, obj):
    _c.send(fd, _dumps(obj))


def _longrepr_text(rep):
    try:
        return rep.longreprtext
    except Exception as exc:  # a plugin's custom longrepr that cannot render
        return "<longrepr not renderable: %r>" % (exc,)


class _Zygote:
    """Registered as a plugin in the zygote's pytest.main()."""

    def __init__(self, fd):
        self.fd = fd
        self.role = "zygote"
        self.collect_errors = []
        self.collect_skips = []
        self.warnings = []
        self.config = None
        self.header = []
        self.worker = None
        self.env_set = {}
        self.env_unset = []
        self.cwd = None
        self.collected_order = None
        self.restore_seed = None
        # For an incremental re-collect: the items in collection order,
        # before pytest_collection_modifyitems; each test module by real
        # path (None: two collectors for one path); where each module's
        # items start in that list, with its rank among the modules.
        self.collected = []
        self.modules = {}
        self.module_start = {}
        # A fork that swapped function bodies in: (how many, the files).
        self.swapped = None
        self.how = None
        # ... and the seconds of it that were pytest's own collection hooks
        # (importing and collecting the changed modules, modifyitems): the
        # floor under an incremental re-collect, which the bench shows.
        self.hooks_s = None
        # What the full collection reported that an incremental re-collect
        # cannot change (no conftest, ini or directory listing changed):
        # the collection's directories and the option table.
        self.unchanged = None
        # The full collection's walks of sys.modules, for its incremental
        # re-collects: a fork that walks every module copies the page of
        # each (4-5 ms of make_app's 23 ms re-collect, per walk).  The
        # names it had and their files; its preload plan; what each
        # project module holds of other modules.
        self.imported = None
        self.plan = None
        self.refs = None
        # ... and, in a project that has an --affected record, what every
        # run's leader asks: (root, the project's modules by name).
        self.project = None

    def pytest_collection_modifyitems(self, items):
        # The order before any plugin's modifyitems: each run's start from
        # it, as a plain run's do (pytest-randomly shuffles it per seed).
        self.collected_order = list(items)
        yield

    def pytest_cmdline_main(self, config):
        self.restore_seed = _keep_randomly_seed(config)   # before pytest_configure

    def pytest_configure(self, config):
        self.config = config
        self.header = _conftest_header(config)

    def pytest_collectreport(self, report):
        # Failed collectors are errors; skipped ones (a module-level skip)
        # count as skipped in pytest's summary.
        if report.failed or report.skipped:
            data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
            path = str(getattr(report, "fspath", "") or report.nodeid.split("::")[0])
            text = _longrepr_text(report) if report.failed else str(report.longrepr[2])
            (self.collect_errors if report.failed else self.collect_skips).append(
                (report.nodeid, path, text, data))

    def pytest_warning_recorded(self, warning_message, when, nodeid, location):
        self.warnings.append(_warning_data(warning_message, when, nodeid, location))

    def pytest_collectstart(self, collector):
        if _is_module(collector):
            path = os.path.realpath(str(collector.path))
            seen = self.modules.get(path, collector)
            self.modules[path] = collector if seen is collector else None
            self.module_start[collector] = (len(self.collected), len(self.module_start))

    def pytest_itemcollected(self, item):
        self.collected.append(item)

    def pytest_collection(self, session):
        """Replay what the preloads warned, inside pytest's warning capture."""
        if self.restore_seed is not None:
            self.restore_seed()
        import warnings
        seen = set()
        for w in _PRELOAD_WARNINGS:
            key = (str(w.message), w.category, w.filename, w.lineno)
            if key in seen:
                continue
            seen.add(key)
            try:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            except Warning:
                pass   # -W error: the module is imported already (see the README)
        return None

    def pytest_runtestloop(self, session):
        while True:
            self.report_ready(session)
            while True:
                got = _c.serve(self.fd)
                if got is None:
                    os._exit(0)
                msg, fds, forked = got
                if not forked:
                    continue
                if msg.get("spare"):
                    # Forked ahead of the next edit, so that its re-collect
                    # does not wait for fork(), nor for the copy of each
                    # page the last one wrote: the daemon sends the files.
                    _c.prefault(msg.get("pages_of", 0))
                    got = _c.serve(fds[0])
                    if got is None or "recollect" not in got[0]:
                        os._exit(0)
                    msg = got[0]
                if "recollect" in msg:
                    # A fork that becomes the next collected zygote.
                    self.fd = fds[0]
                    why = _recollect(self, session, msg["recollect"])
                    if why is None:
                        break
                    _send(self.fd, {"op": "refused", "why": why})
                    os._exit(0)
                self.role = "leader"
                _Leader(session, msg, fds).lead(self)
                return True

    def new_modules(self):
        """The modules imported since the full collection: an incremental
        re-collect's new imports (the test modules it imported again keep
        their names, their files and their place in no plan)."""
        names = self.imported[0]
        return [name for name in sys.modules if name not in names]

    def imported_files(self):
        """_imported_files(exclude=_PRELOADED) as it is now."""
        new = self.new_modules()
        files = self.imported[1]
        return sorted(set(files).union(_imported_files(only=new))) if new else files

    def note_affected_answers(self, config, items):
        """In the full collection of a project that has an --affected
        record: the project's modules and each item's module (the leader
        of a run copied 8-13 ms of module pages walking them)."""
        cachedir = getattr(getattr(config, "cache", None), "_cachedir", None)
        if cachedir is None or not os.path.isfile(os.path.join(str(cachedir), "d", "pytest-fast", "affected.json")):
            return
        root = _affected_root(config)
        self.project = (root, _project_modules(root))
        for item in items:
            _rel_module(item, root)

    def project_modules(self, root):
        """_project_modules(root) as it is now."""
        if self.project is not None and self.project[0] == root and not self.new_modules():
            return self.project[1]
        return _project_modules(root)

    def preload_plan(self, config, cov):
        """_plan(config, cov) as it is now."""
        new = self.new_modules()
        if not new:
            return self.plan
        more = _plan(config, cov, only=new)
        return dict(self.plan, site=self.plan["site"] + more["site"], project=self.plan["project"] + more["project"])

    def unimported_files(self, rootdir):
        """The files that failed to collect or skipped at module level: a
        module whose import raised is not in sys.modules, yet editing it
        must re-collect."""
        paths = {os.path.realpath(os.path.join(rootdir, e[1])) for e in self.collect_errors + self.collect_skips}
        return sorted(p for p in paths if os.path.isfile(p))

    def report_ready(self, session):
        config = session.config
        items = session.items
        rootdir = str(config.rootpath)
        cov = _cov_collected(config)
        locs = []
        for item in items:
            fspath, lineno, domain = item.location
            locs.append((item.nodeid, fspath, lineno, domain))
        forked = self.unchanged is not None
        if not forked:
            self.unchanged = (_collection_dirs(config, session), _option_table(config))
            self.imported = (set(sys.modules), _imported_files(exclude=_PRELOADED))
            self.plan = _plan(config, cov)
            self.refs = _module_refs(rootdir)
        dirs, options = self.unchanged
        _send(self.fd, {
            "op": "ready",
            "items": locs,
            "errors": self.collect_errors,
            "skips": self.collect_skips,
            "warnings": self.warnings,
            "files": self.imported_files() + _cov_watched() + self.unimported_files(rootdir)
            # a module whose import raised (a syntax error in an app module a
            # test module imports) is in no list: while collecting fails,
            # any edit in the project may fix it
            + (_project_files() if self.collect_errors else []),
            "dirs": dirs,
            "rootdir": rootdir,
            "inifile": str(config.inipath) if getattr(config, "inipath", None) else None,
            "options": options,
            "header": self.header,
            "preload": self.preload_plan(config, cov),
            "threads": _threads(),
            "relayer": _COV_STALE,
            "how": self.how,
            "hooks_s": self.hooks_s,
        })
        self.env_set = {k: v for k, v in os.environ.items() if _BOOT_ENV.get(k) != v}
        self.env_unset = [k for k in _BOOT_ENV if k not in os.environ]
        if os.getcwd() != _BOOT_CWD:
            self.cwd = os.getcwd()   # a conftest's os.chdir at import
        # Once here rather than in every run's leader or worker: what the
        # --affected world says of the plugins (their metadata, parsed),
        # and inspect.getmodule's map of files to modules, which a failing
        # test's traceback builds at its first call by resolving the path
        # of every module imported (0.1-0.2 s on make_app, per worker).
        _world_fixed(config)
        inspect.getmodule(_world_fixed.__code__)
        if not forked:
            self.note_affected_answers(config, items)
            _ran_watch(False)
            _hotswap.keep_sources(_module_files_outside())
        gc.collect()
        gc.freeze()


def _keep_randomly_seed(config):
    """pytest-randomly's pytest_configure stores its seed in the cache (for
    --randomly-seed=last); a collection is no run: put back what the last
    run stored.  Returns the function that does."""
    if not config.pluginmanager.has_plugin("randomly"):
        return lambda: None
    try:
        from _pytest.cacheprovider import Cache
        path = Cache.cache_dir_from_config(config, _ispytest=True) / "v" / "randomly_seed"
        before = path.read_bytes() if path.exists() else None
    except Exception:
        return lambda: None

    def restore():
        try:
            if before is None:
                path.unlink()
            else:
                path.write_bytes(before)
        except OSError:
            pass
    return restore


def _conftest_header(config):
    """The lines the initial conftests' pytest_report_header add to pytest's
    header (those loaded before the session starts, as in a plain run), for
    the plugin's controller, which imports no conftest.  Computed with this
    collection's configuration."""
    import inspect
    args = {"config": config, "start_path": config.invocation_params.dir}
    try:
        from _pytest.compat import legacy_path
        args["startdir"] = legacy_path(args["start_path"])
    except ImportError:
        pass
    lines = []
    for _, plugin in config.pluginmanager.list_name_plugin():
        hook = getattr(plugin, "pytest_report_header", None)
        if os.path.basename(getattr(plugin, "__file__", None) or "") != "conftest.py" or not callable(hook):
            continue
        try:
            wanted = inspect.signature(hook).parameters
            got = hook(**{k: v for k, v in args.items() if k in wanted})
        except Exception:
            continue   # its error belongs to the run that shows the header
        lines.extend([got] if isinstance(got, str) else [str(line) for line in got or ()])
    return lines


_FLAG_ACTIONS = ("store_true", "store_false", "store_const", "append_const", "count", "help", "version")


def _option_table(config):
    """Every command-line option the zygote's parser knows, conftests'
    included, for `pytest --fast` controllers that never import them, and
    for the daemon, which must know which options take a value."""
    parser = config._parser
    out = []
    seen = set()
    for group in [parser._anonymous] + list(parser._groups):
        for opt in group.options:
            names = list(opt.names())
            if tuple(names) in seen:
                continue
            seen.add(tuple(names))
            attrs = opt.attrs()
            action = attrs.get("action")
            if not isinstance(action, str):
                # pytest 9 hands out the argparse action's attributes: name
                # the action by what it consumes.
                nargs = attrs.get("nargs")
                action = "store" if nargs != 0 else ("store_const" if "const" in attrs else "store_true")
            nargs = attrs.get("nargs")
            out.append({
                "names": names,
                "action": action,
                "value": action not in _FLAG_ACTIONS and nargs != 0,
                "dest": attrs.get("dest"),
                "default": _plain(attrs.get("default")),
                "const": _plain(attrs.get("const")),
                "nargs": _plain(nargs),
                "choices": _plain(list(attrs["choices"])) if attrs.get("choices") else None,
                "help": str(attrs.get("help") or ""),
            })
    return out


def _warning_data(warning_message, when, nodeid, location):
    msg = warning_message.message
    return {
        "message": str(msg),
        "category": type(msg).__name__ if isinstance(msg, Warning) else warning_message.category.__name__,
        "filename": str(warning_message.filename),
        "lineno": warning_message.lineno,
        "when": when,
        "nodeid": nodeid,
        "location": location,
    }


def _stdlib_dirs():
    import sysconfig
    paths = sysconfig.get_paths()
    out = set()
    for key in ("stdlib", "platstdlib"):
        p = paths.get(key)
        if p:
            out.add(os.path.realpath(p) + os.sep)
    return tuple(out)


_REALPATHS: dict = {}   # path -> its realpath, inherited by every fork


def _module_file(mod):
    """A module's __file__, read from its namespace: getattr would call a
    lazy module's __getattr__, which may import or warn, for every module
    without one (a thousand modules took 7 ms to ask)."""
    namespace = getattr(mod, "__dict__", None)
    f = namespace.get("__file__") if isinstance(namespace, dict) else None
    return f if isinstance(f, str) else None


def _realpath(path):
    """os.path.realpath once per path and zygote chain: every collection,
    re-collect and run asks it of each module's file (about a thousand
    calls, 0.1 s of lstat, on make_app)."""
    real = _REALPATHS.get(path)
    if real is None:
        real = _REALPATHS[path] = os.path.realpath(path)
    return real


def _modules(only=None):
    """sys.modules' (name, module) pairs; only those of the names `only`
    when given."""
    if only is None:
        return list(sys.modules.items())
    return [(name, sys.modules[name]) for name in only if name in sys.modules]


def _imported_files(exclude=(), only=None):
    """The files of the modules imported (or of the modules named `only`),
    but the standard library's."""
    skip = _stdlib_dirs()
    site = tuple(os.path.realpath(p) + os.sep for p in sys.path if "site-packages" in p or "dist-packages" in p)
    files = set()
    items = _modules(only)
    for name, mod in items:
        if name in exclude:
            continue
        f = _module_file(mod)
        if not f:
            continue
        f = _realpath(f)
        if f.startswith(skip) and not f.startswith(site):
            continue
        files.add(f)
    return sorted(files)


def _collection_dirs(config, session):
    """Directories whose listing decides what is collected: a test file
    added or deleted below them must trigger a re-collect."""
    import fnmatch
    try:
        norecurse = list(config.getini("norecursedirs"))
    except Exception:
        norecurse = []
    roots = []
    for arg in config.args or [str(config.rootpath)]:
        path = os.path.abspath(str(arg).split("::")[0])
        roots.append(path if os.path.isdir(path) else os.path.dirname(path))
    out = []
    seen = set()
    for root in roots:
        for dirpath, dirnames, _ in os.walk(root):
            if dirpath in seen:
                dirnames[:] = []
                continue
            seen.add(dirpath)
            out.append(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames
                if not any(fnmatch.fnmatch(d, pat) for pat in norecurse)
                and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))
                and d != "__pycache__"
            )
            if len(out) > 20000:
                return out
    return out


# ------------------------------------------------------ incremental re-collect
# When only test modules changed, the next collected zygote is a fork of the
# last full one that re-imports just those modules and splices their items
# into its collection; whatever could make that differ from a fresh
# collection refuses, and the daemon rebuilds the level as before.

# Plugins whose collection hooks are pure functions of the items and the
# options (or only run elsewhere): re-running them on the spliced list gives
# what a fresh collection gives.  Any other implementation of these hooks
# (a conftest's, a third-party plugin's) might keep state or look at more
# than its arguments.  anyio's pytest_collection_finish expands its marked
# coroutine tests from session.items alone.
_SAFE_PLUGINS = ("_pytest", "xdist", "pytest_cov", "anyio", "_pytest_fast_glue", "pytest_fast_plugin")
_COLLECTION_HOOKS = ("pytest_collection", "pytest_collect_file", "pytest_pycollect_makemodule",
                     "pytest_itemcollected", "pytest_collection_modifyitems", "pytest_collection_finish",
                     "pytest_collectstart", "pytest_collectreport", "pytest_make_collect_report",
                     "pytest_deselected")


def _is_module(node):
    """A test module's collector (pytest 7's Package is a Module too)."""
    from _pytest.python import Module, Package
    return isinstance(node, Module) and not isinstance(node, Package)


def _module_of(item):
    node = item.parent
    while node is not None and not _is_module(node):
        node = node.parent
    return node


def _unsafe_hook(config, root):
    import types
    for name in _COLLECTION_HOOKS:
        caller = getattr(config.pluginmanager.hook, name, None)   # pytest 7's config.hook wraps some
        for impl in caller.get_hookimpls() if caller is not None else ():
            plugin = impl.plugin
            mod = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
            if str(mod).split(".")[0] in _SAFE_PLUGINS:
                continue
            where = getattr(plugin, "__file__", None)
            where = (os.path.relpath(where, root) if where and where.startswith(root + os.sep)
                     else impl.plugin_name or mod)
            return "%s implements %s" % (where, name)
    return None


def _under(nodeid, ids):
    return isinstance(nodeid, str) and any(nodeid == i or nodeid.startswith(i + "::") for i in ids)


def _drop_fixtures(fm, olds):
    """Forget the fixtures the old modules (and their classes) defined:
    pytest < 9 keys them by node id, which the new module reuses; pytest 9
    by node.  A name nobody defines any more goes too (None, not [], is
    what pytest answers for a name no fixture has)."""
    ids = [old.nodeid for old in olds]

    def in_old(node):
        return hasattr(node, "listchain") and any(old in node.listchain() for old in olds)

    defs = getattr(fm, "_arg2fixturedefs", None)
    if isinstance(defs, dict):
        for name in list(defs):
            kept = [fd for fd in defs[name] if not _under(getattr(fd, "baseid", None), ids)
                    and not in_old(getattr(fd, "node", None))]
            if kept:
                defs[name] = kept
            else:
                del defs[name]
    for attr, gone in (("_arg2node2fixturedefs", in_old), ("_arg2nodeid2fixturedefs", lambda k: _under(k, ids))):
        table = getattr(fm, attr, None)
        for name in list(table) if isinstance(table, dict) else ():
            for key in [k for k in table[name] if gone(k)]:
                del table[name][key]
            if not table[name]:
                del table[name]
    for attr, gone in (("_node_autousenames", in_old), ("_nodeid_autousenames", lambda k: _under(k, ids))):
        table = getattr(fm, attr, None)
        for key in [k for k in table if gone(k)] if isinstance(table, dict) else ():
            del table[key]


def _recollect(zyg, session, paths):
    """Bring the collection up to the changed files `paths`: swap in the
    function bodies edited in app modules, then import the changed test
    modules again and splice their items in.  None when done, else why not
    (the caller exits and the daemon re-collects in full)."""
    try:
        tests = [p for p in paths if _realpath(p) in zyg.modules]
        apps = [p for p in paths if _realpath(p) not in zyg.modules]
        why = _swap(zyg, session, apps) if apps else None
        if why is None and tests:
            why = _recollect_modules(zyg, session, tests)
        if why is None and zyg.swapped:
            n, files = zyg.swapped
            where = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
            zyg.how = "incremental (%s%s)" % (
                "%d module%s; " % (len(tests), "" if len(tests) == 1 else "s") if tests else "",
                # an edit reverted: the file is new to the project level, not to the collection
                "%d function bod%s swapped in %s" % (n, "y" if n == 1 else "ies", where) if n
                else "%s as the collection imported" % where)
        return why
    except BaseException as exc:
        return ("the incremental re-collect raised %s: %s" % (type(exc).__name__, exc))[:300]


def _swap(zyg, session, paths):
    """Swap in the function bodies edited in the app modules `paths`
    (hotswap.py); None when done, else why not."""
    import linecache
    if _COV is not None:
        return "coverage is measured from the lowest level"
    root = str(session.config.rootpath)
    try:
        n = _hotswap.swap([_realpath(p) for p in paths], _module_files_outside(), _compiler(session.config),
                          _c.ran, root)
    except _hotswap.Refused as exc:
        return str(exc)[:300]
    linecache.checkcache()
    zyg.swapped = (n, [os.path.relpath(_realpath(p), root) for p in paths])
    return None


def _compiler(config):
    """A module's code from its source, as its import made it: pytest's
    assertion rewriter for the modules it rewrites, else what importlib
    does."""
    import ast
    import importlib.machinery

    from _pytest.assertion.rewrite import AssertionRewritingHook, rewrite_asserts

    def compile_module(mod, real, source):
        spec = getattr(mod, "__spec__", None)
        loader = getattr(spec, "loader", None)
        origin = getattr(spec, "origin", None) or _module_file(mod)
        if isinstance(loader, AssertionRewritingHook):
            tree = ast.parse(source, filename=origin)
            rewrite_asserts(tree, source, origin, config)
            return compile(tree, origin, "exec", dont_inherit=True)
        if isinstance(loader, importlib.machinery.SourceFileLoader):
            return compile(source, origin, "exec", dont_inherit=True)
        raise _hotswap.Refused("%s was not imported from its source" % os.path.relpath(real, str(config.rootpath)))
    return compile_module


def _module_files_outside():
    """Module files outside the standard library and site-packages, to
    their module (None: two modules import one file)."""
    skip = _stdlib_dirs() + tuple(d + os.sep for d in _site_dirs())
    out = {}
    for mod in list(sys.modules.values()):
        f = _module_file(mod)
        if not f or not f.endswith(".py"):
            continue
        f = _realpath(f)
        if not f.startswith(skip):
            out[f] = mod if out.get(f, mod) is mod else None
    return out


# sys.monitoring's OPTIMIZER_ID, which no tool here claims: the --affected
# recorder takes 3 or 4, coverage 1, debuggers 0 and profilers 2.
_RAN_TOOL = 5


def _ran_watch(on):
    """3.12+: note what starts while the levels import and collect, for
    ran() (see zygote.c); taken tool id: ran() then says everything ran."""
    mon = getattr(sys, "monitoring", None)
    if mon is None:
        return
    if on and mon.get_tool(_RAN_TOOL) is None:
        mon.use_tool_id(_RAN_TOOL, "pytest-fast import")
        _c.ran_watch(mon.DISABLE)
        mon.register_callback(_RAN_TOOL, mon.events.PY_START, _c.ran_start)
        mon.set_events(_RAN_TOOL, mon.events.PY_START)
    elif not on and mon.get_tool(_RAN_TOOL) == "pytest-fast import":
        mon.set_events(_RAN_TOOL, 0)
        mon.register_callback(_RAN_TOOL, mon.events.PY_START, None)
        mon.free_tool_id(_RAN_TOOL)


def _module_refs(root):
    """What the project's modules hold of other modules: {id(module) or
    module name: [(holder's name, holder's file)]} for the modules they
    hold and the classes and functions they hold that other modules
    define.  A test module that another module holds from cannot be
    imported again alone."""
    import types
    roots = (root + os.sep, os.path.realpath(root) + os.sep)
    refs: dict = {}
    for name, mod in list(sys.modules.items()):
        if name in _PRELOADED:
            continue
        f = _module_file(mod)
        if f is None or not f.startswith(roots):
            continue
        for value in list(getattr(mod, "__dict__", {}).values()):
            if isinstance(value, types.ModuleType):
                key = id(value)
            elif isinstance(value, (type, types.FunctionType)):
                key = getattr(value, "__module__", None)
                if key == name or not isinstance(key, str):
                    continue
            else:
                continue
            refs.setdefault(key, []).append((name, f))
    return refs


def _recollect_modules(zyg, session, paths):
    import importlib
    import linecache
    import types
    config = session.config
    root = str(config.rootpath)
    why = _unsafe_hook(config, root)
    if why:
        return why
    if _COV is not None:
        return "coverage is measured from the lowest level"
    if any("::" in str(arg) for arg in config.args):
        return "the collection arguments name tests"
    olds = []
    for path in paths:
        real = os.path.realpath(path)
        rel = os.path.relpath(real, root)
        old = zyg.modules.get(real)
        if old is None or old not in zyg.module_start:
            return "%s is not a test module" % rel
        if os.path.basename(real) == "__init__.py":
            return "%s is a package's" % rel
        mod = old.__dict__.get("_obj")
        if mod is not None and not isinstance(mod, types.ModuleType):
            return "%s: its collector holds no module" % rel
        if getattr(mod, "pytest_plugins", None):
            return "%s sets pytest_plugins" % rel
        if any(os.path.realpath(str(w.get("filename") or "")) == real for w in zyg.warnings):
            return "%s warned when it was collected" % rel
        olds.append((old, mod, real))
    names = {mod.__name__ for _, mod, _ in olds if mod is not None}
    keys = [id(mod) for _, mod, _ in olds if mod is not None] + sorted(names)
    holders = sorted(h for key in keys for h in zyg.refs.get(key, ()) if h[0] not in names)
    if holders:
        return "%s imports from a changed test module" % os.path.relpath(holders[0][1], root)

    pre = zyg.collected
    spans = []
    for old, mod, real in olds:
        start, rank = zyg.module_start.pop(old)
        end = start
        while end < len(pre) and _module_of(pre[end]) is old:
            end += 1
        spans.append((start, end, rank))
        del zyg.modules[real]
        if mod is not None:
            sys.modules.pop(mod.__name__, None)
        linecache.cache.pop(str(old.path), None)
        linecache.cache.pop(real, None)
    importlib.invalidate_caches()
    _drop_fixtures(session._fixturemanager, [old for old, _, _ in olds])
    ids = [old.nodeid for old, _, _ in olds]
    removed = [e for e in zyg.collect_errors if _under(e[0], ids)]
    zyg.collect_errors = [e for e in zyg.collect_errors if not _under(e[0], ids)]
    skips = [e for e in zyg.collect_skips if not _under(e[0], ids)]
    zyg.collect_skips = []
    nerrors, nwarnings = len(zyg.collect_errors), len(zyg.warnings)

    from _pytest.warnings import catch_warnings_for_item
    news = []
    started = time.perf_counter()
    with catch_warnings_for_item(config, ihook=config.hook, when="collect", item=None):
        for old, _, real in olds:
            got = list(session.gethookproxy(old.path).pytest_collect_file(file_path=old.path, parent=old.parent))
            if len(got) != 1 or not _is_module(got[0]) or got[0].nodeid != old.nodeid:
                return "%s: not one test module collected from it" % os.path.relpath(real, root)
            first = len(zyg.collected)
            items = list(session.genitems(got[0]))
            del zyg.collected[first:]
            news.append((got[0], items))
    hooks_s = time.perf_counter() - started
    if hasattr(session, "_collection_cache"):
        session._collection_cache = {}
    if len(zyg.collect_errors) != nerrors:
        return "collecting %s failed" % ", ".join(e[0] for e in zyg.collect_errors[nerrors:])
    if len(zyg.warnings) != nwarnings:
        return "collecting %s warned" % ", ".join(os.path.relpath(r, root) for _, _, r in olds)

    # Splice, from the last span back so that the earlier ones stay put;
    # the modules after a span move by its change in length.
    for (start, end, rank), (new, items) in sorted(zip(spans, news), key=lambda x: x[0], reverse=True):
        pre[start:end] = items
        delta = len(items) - (end - start)
        for node, (s, r) in list(zyg.module_start.items()):
            if s > start or (s == start and r > rank):
                zyg.module_start[node] = (s + delta, r)
        zyg.module_start[new] = (start, rank)
    # Module-level skips: the new ones where their module stands.
    order = {node.nodeid: key for node, key in zyg.module_start.items()}
    for entry in zyg.collect_skips:
        key = order.get(entry[0].split("::")[0])
        at = len(skips)
        if key is not None:
            at = next((i for i, e in enumerate(skips)
                       if order.get(e[0].split("::")[0], (-1, -1)) > key), len(skips))
        skips.insert(at, entry)
    zyg.collect_skips = skips

    session.items = list(pre)
    hook = config.hook
    started = time.perf_counter()
    hook.pytest_collection_modifyitems(session=session, config=config, items=session.items)
    hook.pytest_collection_finish(session=session)
    zyg.hooks_s = hooks_s + time.perf_counter() - started
    session.testscollected = len(session.items)
    session.testsfailed = max(0, session.testsfailed - len(removed))
    return None


def _clear_cache(config):
    """--cache-clear, per run: what Cache.for_config does as a plain run
    configures, before --lf, --nf or --sw read the cache."""
    cache = getattr(config, "cache", None)
    if cache is not None and config.getoption("cacheclear", False) and cache._cachedir.is_dir():
        type(cache).clear_cache(cache._cachedir, _ispytest=True)


class _Leader:
    """One run: applies its options and selection, forks its workers."""

    def __init__(self, session, msg, fds):
        self.session = session
        self.config = session.config
        self.msg = msg
        self.fd = fds[0]
        self.stdio = fds[1:4]
        self.scoped_errors = None
        self.pool = []            # the selection's node ids before --shard
        self.group_starts = None  # where --dist groups start, None: no groups
        self.stepwise = None      # this run's StepwisePlugin (--sw)
        self.stale = None         # recording: the node ids to record, None: every test
        self.stale_fixtures = None   # ... and the fixtures they use, None: every fixture
        self.seen = {}            # ... and the recorded files as the run found them
        self.zygote = None        # the collection it was forked from

    def lead(self, zygote):
        self.zygote = zygote
        msg = self.msg
        self.started_ns = time.time_ns()
        os.setpgid(0, 0)
        _adopt_stdio(self.stdio)
        # The client's environment, then what the collection changed in the
        # zygote's own (a conftest's os.environ[...] = ..., PYTEST_VERSION),
        # as a plain run's tests see both.
        os.environ.clear()
        os.environ.update(kv.split("=", 1) for kv in msg["env"] if "=" in kv)
        os.environ.update(zygote.env_set)
        for name in zygote.env_unset:
            os.environ.pop(name, None)
        time.tzset()   # the C library read TZ when the zygote started
        sys.argv[1:] = msg["argv"]
        os.chdir(msg["cwd"])
        try:
            selected, deselected = self.select(msg["args"], zygote.collected_order)
        except Exception as exc:
            _send(self.fd, {"op": "usage", "message": _usage_message(exc)})
            os._exit(0)
        try:
            coverage = _cov_run_start(self.config, msg.get("stream"))
        except Exception as exc:
            _send(self.fd, {"op": "usage", "message": _usage_message(exc)})
            os._exit(0)
        try:
            text = _info_text(self.config, self.session, [self.session.items[i] for i in selected],
                              self.config.option.file_or_dir or [])
        except Exception as exc:
            _send(self.fd, {"op": "usage", "message": _usage_message(exc)})
            os._exit(0)
        _send(self.fd, {"op": "selected", "indices": selected, "deselected": deselected, "text": text,
                        "stepwise": self.stepwise_seen(),
                        "pool": len(self.pool), "watch_list": self.watch_list(),
                        "max_warnings": _max_warnings(self.config),
                        "scoped_errors": self.scoped_errors, "group_starts": self.group_starts,
                        "coverage": coverage})
        if zygote.cwd:
            # The arguments were the client's to resolve; the tests run where
            # the collection left the working directory, as in a plain run.
            try:
                os.chdir(zygote.cwd)
            except OSError:
                pass
        while True:
            got = _c.serve(self.fd)
            if got is None:
                os._exit(0)
            req, fds, forked = got
            if forked:
                zygote.worker = _Worker(self.session, msg, req, fds, self.stale, self.stale_fixtures)
                zygote.role = "worker"
                return zygote.worker.work()
            if req.get("op") == "finish":
                if msg.get("stream"):
                    self.conftest_terminal_summary(req)
                self.finish(req)
                if req.get("coverage") is not None:
                    self.finish_coverage(req["coverage"])
                # The client may go on: what it runs next reads .pytest_cache,
                # while the --affected record is read by this daemon's next
                # runs only, which start once this process is gone.
                _send(self.fd, {"op": "cached"})
                _release_stdio()   # a pipe the client's output goes to ends with the client
                self.record_dependencies_or_say(req)
                os._exit(0)

    def select(self, args, collected_order=None):
        config, session = self.config, self.session
        args = list(args)
        cut = args.index("--") if "--" in args else len(args)
        self.affected = _affected_asked(args)
        # The world as this run starts: what the finish records its tests
        # against (a conftest edited during the run must still count).
        self.world = _world(config) if _recording(args) else None
        excluded = [a.split("=", 1)[1] for a in args[:cut] if a.startswith(EXCLUDE_ARG + "=")]
        args = [a for i, a in enumerate(args)
                if i >= cut or (a != AFFECTED_ARG and not a.startswith(EXCLUDE_ARG + "="))]
        randomly = config.pluginmanager.get_plugin("randomly")
        if randomly is not None and hasattr(config.option, "randomly_seed"):
            config.option.randomly_seed = "default"   # the zygote's seed is not this run's
        config._parser.parse_known_args(args, namespace=config.option)
        _clear_cache(config)
        _setup_show_options(config.option)
        _log_formatter(config)
        seed_line = _randomly_seed(config, randomly)
        if seed_line and not self.msg.get("stream"):
            sys.stdout.write(seed_line + "\n")   # the controller prints its own header
            sys.stdout.flush()
        _debugging_plugins(config)
        index = {id(item): i for i, item in enumerate(session.items)}
        items = list(session.items)
        if collected_order is not None:
            present = set(index)
            base = [item for item in collected_order if id(item) in present]
            if len(base) == len(items):
                items = base
        paths = [a for a in (config.option.file_or_dir or []) if a]
        self.scoped_errors = None
        if paths:
            items, self.scoped_errors = _select_by_args(config, items, paths, self.collect_error_paths())
        pm = config.pluginmanager
        from _pytest import cacheprovider
        for name, cls in (("lfplugin", cacheprovider.LFPlugin), ("nfplugin", cacheprovider.NFPlugin)):
            old = pm.get_plugin(name)
            if old is not None:
                pm.unregister(old)
                pm.register(cls(config), name)
        coll = pm.get_plugin("lfplugin-collwrapper")
        if coll is not None:
            pm.unregister(coll)
        counter = _DeselectCounter()
        self.stepwise = _stepwise_plugin(config, counter)
        pm.register(counter, "pytest-fast-deselect-counter")
        try:
            config.hook.pytest_collection_modifyitems(session=session, config=config, items=items)
            if self.stepwise is not None and not self.msg.get("stream"):
                # The CLI's lean output has no header: the status goes first.
                for line in _stepwise_status(config, self.stepwise):
                    sys.stdout.write(line + "\n")
                sys.stdout.flush()
            self.pool = [item.nodeid for item in items]
            shard = self.msg.get("shard")
            if shard:
                k, n = shard
                kept = _shard(items, k, n, _durations_basis(config, self.msg["cwd"]))
                if len(kept) < len(items):
                    chosen = set(map(id, kept))
                    config.hook.pytest_deselected(items=[i for i in items if id(i) not in chosen])
                items = kept
            # within the shard: shards stay a partition of the same selection
            if excluded:
                items = self.exclude(items, excluded[-1])
            if self.affected:
                items = self.select_affected(items)
            elif self.world is not None:
                self.stale = self.out_of_date(items)[0]
                self.stale_fixtures = {name for item in items if item.nodeid in self.stale
                                       for name in getattr(item, "fixturenames", ())}
        finally:
            pm.unregister(counter)
        items, self.group_starts = _dist_groups(items, getattr(config.option, "dist", "no"))
        # pytest --fast: the controller's StepwisePlugin deselects its part again
        own = counter.stepwise_count if self.msg.get("stream") else 0
        return [index[id(item)] for item in items], counter.count - own

    def exclude(self, items, path):
        """--watch's second run: the selection but the tests its first
        (affected) run reported, as listed in that run's --dump file."""
        with open(path, encoding="utf-8") as f:
            done = json.load(f)
        if not isinstance(done, dict):
            raise ValueError("%s: expected a JSON object of node ids" % path)
        dropped = [item for item in items if item.nodeid in done]
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
        return [item for item in items if item.nodeid not in done]

    def out_of_date(self, items):
        """The node ids of items an edit since their last run could change
        (see affected.py), and why, in a few words."""
        root = _affected_root(self.config)
        path = _affected_record(self.config)
        record = _affected.load(path) if path else None
        tests = {item.nodeid: _rel_module(item, root) for item in items}
        chosen = _affected.affected(record, self.world, root, tests, self.ran_at_import, self.seen)
        # the project files no record names yet (all of them, the first time)
        _affected.snapshot(root, self.zygote.project_modules(root).values(), self.seen)
        return chosen

    def ran_at_import(self, rel, names):
        """Whether one of the functions `names` of the project file `rel`
        ran while the collection imported and collected (the zygote's
        ran(), as for the hot swap).  A function it cannot find may have:
        yes.  A file the collection did not import ran nothing."""
        for name, file in self.zygote.project_modules(_affected_root(self.config)).items():
            mod = sys.modules.get(name) if file == rel else None
            filename = _module_file(mod) if mod is not None else None
            if filename is None:
                continue
            for qualname in names:
                try:
                    functions = _hotswap._resolve(mod, qualname, filename)
                except _hotswap.Refused:
                    return True
                if not functions or any(_c.ran(f.__code__) for f in functions):
                    return True
        return False

    def select_affected(self, items):
        """--affected: only what an edit since the last run could change."""
        chosen, why = self.out_of_date(items)
        sys.stderr.write("pytest-fast: --affected: %d of %d tests (%s)\n" % (len(chosen), len(items), why))
        sys.stderr.flush()
        dropped = [item for item in items if item.nodeid not in chosen]
        if dropped:
            self.config.hook.pytest_deselected(items=dropped)
        return [item for item in items if item.nodeid in chosen]

    def watch_list(self):
        """Where a recording run lists the data files its tests read, for
        --watch to watch beside the Python files (None: not recording)."""
        path = _affected_record(self.config) if self.world is not None else None
        return os.path.join(os.path.dirname(path), WATCH_LIST) if path else None

    def collect_error_paths(self):
        rootdir = str(self.config.rootpath)
        return [os.path.join(rootdir, nodeid.split("::")[0]) for nodeid in self.msg.get("error_nodeids", [])]

    def finish_coverage(self, report):
        """Combine and report the run's coverage (report is false when
        pytest-cov would not have: -x stopped the run, a collection error
        interrupted it) and say whether --cov-fail-under failed it."""
        try:
            if report:
                text, fail = _cov_finish(self.config, report == "failed")
            else:   # nothing combines them: a later plain pytest --cov must not either
                _cov_drop_worker_files()
                text, fail = "", False
        except Exception as exc:
            text, fail = "pytest-fast: coverage: %s: %s\n" % (type(exc).__name__, exc), True
        _send(self.fd, {"op": "coverage", "text": text, "fail": fail})

    def conftest_terminal_summary(self, req):
        """The conftests' pytest_terminal_summary, for the `pytest --fast`
        controller, which imports no conftest: run here against a terminal
        reporter that records what it is asked to print (replayed there),
        with stats made of the run's reports as the daemon kept them."""
        config = self.config
        pm = config.pluginmanager
        conftests = [p for p in pm.get_plugins()
                     if os.path.basename(getattr(p, "__file__", None) or "") == "conftest.py"
                     and hasattr(p, "pytest_terminal_summary")]
        if not conftests:
            return
        from _pytest.reports import TestReport
        stats = {}
        recorder = _RecordingReporter(config, stats)
        others = [p for p in pm.get_plugins() if p not in conftests]
        try:   # a conftest that raises must not cost the cache update that follows
            for nodeid, when, outcome in req.get("reports", ()):
                rep = TestReport(nodeid, (nodeid.split("::")[0], None, nodeid), {}, outcome, None, when)
                category = config.hook.pytest_report_teststatus(report=rep, config=config)[0]
                stats.setdefault(category, []).append(rep)
            pm.subset_hook_caller("pytest_terminal_summary", remove_plugins=others)(
                terminalreporter=recorder, exitstatus=int(req.get("rc", 0)), config=config)
        except Exception as exc:
            recorder.calls.append(("write_line", ["pytest-fast: a conftest's pytest_terminal_summary "
                                                  "failed: %r" % (exc,)], {}))
        _send(self.fd, {"op": "terminal_summary", "calls": recorder.calls})

    def finish(self, req):
        """Update .pytest_cache the way the session would have, and record
        the run's durations."""
        config = self.config
        if getattr(config, "cache", None) is None:
            return
        _record_durations(config, req.get("durations") or {}, self.msg.get("shard"), self.pool,
                          self.msg["cwd"] if self.msg.get("store_durations") else None)
        if not req.get("lastfailed", True):
            return   # pytest --fast: the controller's own plugins keep lastfailed
        self.finish_stepwise(req)
        lf = config.pluginmanager.get_plugin("lfplugin")
        nf = config.pluginmanager.get_plugin("nfplugin")
        if lf is not None:
            from _pytest.reports import TestReport
            for nodeid, when, outcome in req.get("reports", ()):
                rep = TestReport(nodeid, (nodeid.split("::")[0], None, nodeid), {}, outcome, None, when)
                lf.pytest_runtest_logreport(rep)
            for nodeid in req.get("collect_errors", ()):
                lf.lastfailed[nodeid] = True
            for nodeid in req.get("collected_ok", ()):
                if nodeid in lf.lastfailed:
                    lf.lastfailed.pop(nodeid)
                    prefix = nodeid + ("/" if "::" not in nodeid and not nodeid.endswith(".py") else "::")
                    lf.lastfailed.update((i.nodeid, True) for i in self.session.items
                                         if i.nodeid.startswith(prefix))
            lf.pytest_sessionfinish(self.session)
        if nf is not None and not config.getoption("collectonly"):
            nf.pytest_sessionfinish()

    def stepwise_seen(self):
        """For the controller's own StepwisePlugin (pytest --fast): the
        items it saw, as node ids, and how many of them it deselected, so
        that it can say what plain pytest's says.  None without --sw."""
        counter = self.stepwise and self.stepwise.pytest_fast_counter
        if counter is None or counter.stepwise_seen is None:
            return None
        return {"seen": counter.stepwise_seen, "skipped": counter.stepwise_count}

    def finish_stepwise(self, req):
        """cache/stepwise as the session would have left it: the reports
        go through the run's StepwisePlugin (or, without --sw, pytest's
        module hook, which clears the entry on pytest < 8)."""
        from _pytest.reports import TestReport
        sw = self.stepwise
        if sw is None:
            module = self.config.pluginmanager.get_plugin("stepwise")
            if module is not None and hasattr(module, "pytest_sessionfinish"):
                module.pytest_sessionfinish(self.session)
            return
        sw.session = self.session
        for nodeid, when, outcome in req.get("reports", ()):
            sw.pytest_runtest_logreport(
                TestReport(nodeid, (nodeid.split("::")[0], None, nodeid), {}, outcome, None, when))
        sw.pytest_sessionfinish()

    def record_dependencies_or_say(self, req):
        """The record is a convenience, lastfailed is not: a failure goes to
        the daemon's log (the client has its reply), and the next --affected
        run, finding the record older than its files, runs more, never less."""
        try:
            self.record_dependencies(req)
        except Exception as exc:
            _send(self.fd, {"op": "log", "text": "could not record run dependencies for --affected: %r" % (exc,)})

    def record_dependencies(self, req):
        """Merge what this run's workers recorded into the --affected record."""
        path = _affected_record(self.config)
        if not path or self.world is None:
            return
        prefix = "run-%s-" % self.msg.get("runid", "")
        folder = os.path.dirname(path)
        deps = {}
        now = time.time()
        for name in os.listdir(folder):
            if not name.startswith(prefix):
                if name.startswith("run-"):
                    try:
                        if now - os.stat(os.path.join(folder, name)).st_mtime > _RUN_FILE_MAX_AGE:
                            os.unlink(os.path.join(folder, name))
                    except OSError:
                        pass
                continue
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    for line in f:
                        try:
                            nodeid, files = json.loads(line)
                        except ValueError:
                            continue   # a worker died mid-line: that test has no record
                        deps[nodeid] = files
                os.unlink(os.path.join(folder, name))
            except OSError:
                continue
        failed = {}
        for nodeid, _when, outcome in req.get("reports", ()):
            failed[nodeid] = failed.get(nodeid, False) or outcome == "failed"
        root = _affected_root(self.config)
        modules = {item.nodeid: item for item in self.session.items}
        ran = {}
        for nodeid, bad in failed.items():
            item = modules.get(nodeid)
            if item is None or (nodeid not in deps and not bad):
                continue    # not recorded: its record (or its absence) stands
            # deps None: its record was current, so the run did not record it
            ran[nodeid] = {"module": _rel_module(item, root), "deps": deps.get(nodeid), "failed": bad}
        if not ran:
            return
        project = self.zygote.project_modules(root)
        try:
            old = _affected.load(path)
            record = _affected.update(old, self.world, root, ran, project.values(), project, self.started_ns,
                                      self.seen)
            if record == old:
                return   # the usual steady state: the failing tests re-recorded alike
            _affected.save(path, record)
            _write_lines(os.path.join(folder, WATCH_LIST),
                         sorted(os.path.join(root, rel) for rel in record["files"] if not rel.endswith(".py")))
        except OSError as exc:
            _send(self.fd, {"op": "log", "text": "cannot write %s (%s): --affected runs more" % (path, exc)})


AFFECTED_ARG = "--fast-affected"   # the CLI's --affected; the daemon passes it per run
EXCLUDE_ARG = "--fast-exclude"      # --watch: =PATH, a --dump file of tests not to run again
WATCH_LIST = "watch.txt"            # beside the record: the data files tests read
_RUN_FILE_MAX_AGE = 3600.0           # seconds: a killed run's worker files go after this


def _affected_asked(args):
    cut = args.index("--") if "--" in args else len(args)
    return AFFECTED_ARG in args[:cut]


def _recording(args):
    """Whether this run's workers record what each test runs: in --affected
    runs (the tests they run are the ones whose record is out of date) or
    with PYTEST_FAST_RECORD=1.  Not in every run: before 3.12 any profile
    function puts CPython's whole eval loop on its slow path."""
    return _affected_asked(args) or os.environ.get("PYTEST_FAST_RECORD") == "1"


def _affected_root(config):
    return os.path.realpath(str(config.rootpath))


def _affected_record(config):
    """The --affected record in pytest's cache (None: no cache)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    try:
        folder = str(cache.mkdir("pytest-fast"))
    except OSError:
        return None
    return os.path.join(folder, "affected.json")


_REL_MODULES: dict = {}   # (item path, root) -> _rel_module's answer, inherited by every fork


def _rel_module(item, root):
    key = (str(item.path), root)
    rel = _REL_MODULES.get(key)
    if rel is None:
        real = _realpath(key[0])
        rel = _REL_MODULES[key] = (os.path.relpath(real, root) if real.startswith(os.path.join(root, ""))
                                   else real)
    return rel


def _outside_project(root):
    """The stdlib, the environment's packages and the interpreter's prefixes:
    their files are the world's, not the project's, even under the root."""
    dirs = set(_stdlib_dirs()) | {d + os.sep for d in _site_dirs()}
    for p in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        dirs.add(os.path.realpath(p) + os.sep)
    root = os.path.join(root, "")
    return sorted(d for d in dirs if not root.startswith(d))


def _project_modules(root):
    """{module name: file relative to root} for the project's imported modules."""
    outside = tuple(_outside_project(root))
    base = os.path.join(root, "")
    out = {}
    for name, mod in list(sys.modules.items()):
        f = _module_file(mod)
        if not f or not f.endswith(".py"):
            continue
        f = _realpath(f)
        if f.startswith(base) and not f.startswith(outside):
            out[name] = f[len(base):]
    return out


_WORLD_FIXED: list = []   # what _world_fixed found, for the zygote's lifetime


def _world_fixed(config):
    """The part of the world a zygote cannot see change: the interpreter,
    pytest, the collection's arguments and the plugins' versions."""
    if not _WORLD_FIXED:
        import pytest
        plugins = sorted("%s %s" % (dist.project_name, dist.version)
                         for _, dist in config.pluginmanager.list_plugin_distinfo())
        _WORLD_FIXED.extend([sys.executable, sys.version, pytest.__version__,
                             list(config.invocation_params.args), plugins])
    return _WORLD_FIXED


def _world(config):
    """What makes every test affected when it changes: the interpreter, the
    installed packages (their directories' listings), pytest and its
    plugins, the collection's arguments, the ini file and the conftests."""
    import hashlib
    import types

    pm = config.pluginmanager
    parts = list(_world_fixed(config))
    for d in _site_dirs():
        try:
            parts.append([d, os.stat(d).st_mtime_ns])
        except OSError:
            parts.append([d, None])
    files = [str(config.inipath)] if getattr(config, "inipath", None) else []
    for plugin in pm.get_plugins():
        f = getattr(plugin, "__file__", None) if isinstance(plugin, types.ModuleType) else None
        if f and os.path.basename(f) == "conftest.py":
            files.append(f)
    h = hashlib.sha1(json.dumps(parts, default=str).encode())
    for f in sorted(files):
        try:
            with open(f, "rb") as fh:
                h.update(f.encode() + b"\0" + hashlib.sha1(fh.read()).digest())
        except OSError:
            h.update(f.encode() + b"\0missing")
    return h.hexdigest()


# Shards.  The split is a pure function of the selection (after -k/-m,
# paths and every plugin's modifyitems) and the durations: every CI job
# computes the same partition.  Units that must not be split: an
# xdist_group, else a module, unless that module alone is more than a
# shard's share.  With durations, the units go longest first to the lightest
# shard; without any, by a stable hash of their name.

DURATIONS_KEY = "pytest-fast/durations"
# What shard runs measured since the durations were last complete: shards of
# one round must all split by the same durations, so a shard run's figures
# join the record only once the round has run every test of the selection.
PENDING_KEY = "pytest-fast/durations-pending"
SPLIT_FILE = ".test_durations"   # pytest-split's, in the client's working directory


def _read_split_file(path):
    """pytest-split's .test_durations: {nodeid: seconds} (old versions wrote
    [[nodeid, seconds], ...]).  None when absent or unreadable."""
    import json
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    pairs = data.items() if isinstance(data, dict) else data if isinstance(data, list) else ()
    return _seconds(pair for pair in pairs if isinstance(pair, (tuple, list)) and len(pair) == 2)


def _seconds(pairs):
    """{nodeid: seconds} of the pairs whose seconds are a number >= 0 (a
    hand-edited file may hold anything)."""
    import math
    out = {}
    for nodeid, seconds in pairs:
        if isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0:
            out[str(nodeid)] = float(seconds)
    return out


def _durations_basis(config, cwd):
    """The durations a split uses: a .test_durations (the file teams commit,
    the same on every job) when there is one, else the daemon's record."""
    found = _read_split_file(os.path.join(cwd, SPLIT_FILE))
    if found is not None:
        return found
    cache = getattr(config, "cache", None)
    got = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
    return _seconds(got.items()) if isinstance(got, dict) else {}


def _record_durations(config, measured, shard, pool, store_in):
    """Merge the run's durations into the record (see PENDING_KEY), and into
    the .test_durations in the directory store_in when it is given."""
    measured = _seconds(measured.items())
    if store_in:
        path = os.path.join(store_in, SPLIT_FILE)
        merged = _read_split_file(path) or {}
        merged.update(measured)
        _write_json(path, merged)
    if not measured:
        return
    cache = config.cache
    record = cache.get(DURATIONS_KEY, {})
    record = record if isinstance(record, dict) else {}
    pending = cache.get(PENDING_KEY, {})
    pending = pending if isinstance(pending, dict) else {}
    pending.update(measured)
    if not shard or shard[1] == 1 or all(nodeid in pending for nodeid in pool):
        record.update(pending)
        pending = {}
        cache.set(DURATIONS_KEY, record)
    cache.set(PENDING_KEY, pending)


def _max_warnings(config):
    """pytest 9's --max-warnings or ini max_warnings; None: unset (or an
    older pytest)."""
    value = getattr(config.option, "max_warnings", None)
    if value is None:
        try:
            value = config.getini("max_warnings")
        except ValueError:
            return None
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _write_lines(path, lines):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


def _write_json(path, data):
    """As pytest-split writes it: sorted, indented; replaced atomically."""
    import json
    tmp = "%s.%d.tmp" % (path, os.getpid())
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=4, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as exc:
        sys.stderr.write("pytest-fast: cannot write %s: %s\n" % (path, exc))


def _xdist_group(item):
    mark = item.get_closest_marker("xdist_group")
    if mark is None:
        return None
    name = mark.args[0] if mark.args else mark.kwargs.get("name", "default")
    return str(name)


def _shard_units(items, weights, share):
    """[(key, [item, ...]), ...] in first-item order: xdist groups whole,
    each module whole unless it weighs more than a shard's share, then cut
    into consecutive chunks of about a share."""
    units = {}
    for item in items:
        group = _xdist_group(item)
        key = ("group:" + group) if group is not None else item.nodeid.split("::", 1)[0]
        units.setdefault(key, []).append(item)
    out = []
    for key, members in units.items():
        total = sum(weights[id(i)] for i in members)
        if key.startswith("group:") or total <= share or len(members) == 1:
            out.append((key, members))
            continue
        chunk, acc = [], 0.0
        for item in members:
            w = weights[id(item)]
            if chunk and acc + w > share:
                out.append(("%s#%d" % (key, len(out)), chunk))
                chunk, acc = [], 0.0
            chunk.append(item)
            acc += w
        out.append(("%s#%d" % (key, len(out)), chunk))
    return out


def _shard(items, k, n, durations):
    """The items of shard k (1-based) of n, in their run order."""
    import hashlib
    if n <= 1:
        return list(items)
    known = [durations[i.nodeid] for i in items if i.nodeid in durations]
    mean = sum(known) / len(known) if known else 1.0
    weights = {id(i): durations.get(i.nodeid, mean) for i in items}
    share = sum(weights.values()) / n
    units = _shard_units(items, weights, share)
    if known:
        loads = [0.0] * n
        mine = set()
        order = sorted(range(len(units)), key=lambda u: (-sum(weights[id(i)] for i in units[u][1]), u))
        for u in order:
            target = min(range(n), key=lambda s: (loads[s], s))
            loads[target] += sum(weights[id(i)] for i in units[u][1])
            if target == k - 1:
                mine.add(u)
    else:
        mine = {u for u, (key, _) in enumerate(units)
                if int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % n == k - 1}
    chosen = {id(i) for u in mine for i in units[u][1]}
    return [i for i in items if id(i) in chosen]


def _dist_groups(items, dist):
    """pytest-xdist's --dist modes inside one run: the items of a group
    (loadgroup: an xdist_group; loadscope: a module or class; loadfile: a
    file) made contiguous, at the first one's place, and the positions where
    a group starts, which the dispatcher never splits.  (items, None) for the
    other modes: any item may go to any worker."""
    if dist == "loadgroup":
        def key(i):
            group = _xdist_group(i)
            return ("g", group) if group is not None else ("i", id(i))
    elif dist == "loadscope":
        def key(i):
            return i.nodeid.rsplit("::", 1)[0]
    elif dist == "loadfile":
        def key(i):
            return i.nodeid.split("::", 1)[0]
    else:
        return items, None
    groups = {}
    for item in items:
        groups.setdefault(key(item), []).append(item)
    out, starts = [], []
    for members in groups.values():
        starts.append(len(out))
        out.extend(members)
    return out, starts


def _randomly_seed(config, module):
    """pytest-randomly chooses its seed (a new one, --randomly-seed N or
    `last`) in its pytest_configure, which ran in the zygote: choose again,
    for this run.  Returns its header line, or None without the plugin."""
    if module is None or not hasattr(module, "default_seed") or not hasattr(module, "pytest_configure"):
        return None
    import random
    module.default_seed = random.Random().getrandbits(32)
    module.pytest_configure(config)
    header = getattr(module, "pytest_report_header", None)
    line = header(config) if header is not None else None
    return line if isinstance(line, str) else None


def _info_text(config, session, items, paths):
    """What pytest prints for --collect-only (the tree), --fixtures,
    --fixtures-per-test or --cache-show, with this run's options and
    selection; None for a run of tests.  Rendered here, where the collected
    nodes and the conftests' fixtures live, as pytest's own code renders
    it, for a terminal like the client's (its stdout is ours)."""
    import _pytest.config
    opt = config.option
    showfixtures = getattr(opt, "showfixtures", False)
    per_test = getattr(opt, "show_fixtures_per_test", False)
    cacheshow = getattr(opt, "cacheshow", False)
    if not (opt.collectonly or showfixtures or per_test or cacheshow) or getattr(opt, "help", False):
        return None
    out = io.StringIO()
    tw = _pytest.config.create_terminal_writer(config, out)
    client = _pytest.config.create_terminal_writer(config)
    tw.hasmarkup, tw.fullwidth = client.hasmarkup, client.fullwidth
    if hasattr(client, "code_highlight"):
        tw.code_highlight = client.code_highlight
    if cacheshow:
        from _pytest import cacheprovider
        saved, sys.stdout = sys.stdout, out   # it writes to a TerminalWriter() of its own
        try:
            cacheprovider.cacheshow(config, session)
        finally:
            sys.stdout = saved
        return out.getvalue()
    if not (showfixtures or per_test):
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:   # -p no:terminal
            return None
        saved, reporter._tw = reporter._tw, tw
        try:
            reporter._printcollecteditems(items)
        finally:
            reporter._tw = saved
        return out.getvalue()
    from _pytest import fixtures, python
    name = "_show_fixtures_per_test" if per_test else "_showfixtures_main"
    show = getattr(fixtures, name, None) or getattr(python, name)
    fm = session._fixturemanager
    undo = []
    if not per_test:
        undo = _fixtures_under(fm, _arg_nodeids(config, paths))
    saved_items, session.items = session.items, list(items)
    session.perform_collect = lambda *a, **k: session.items   # collected already
    saved_writer = _pytest.config.create_terminal_writer
    _pytest.config.create_terminal_writer = lambda *a, **k: tw
    try:
        show(config, session)
    finally:
        _pytest.config.create_terminal_writer = saved_writer
        del session.perform_collect
        session.items = saved_items
        for restore in undo:
            restore()
    return out.getvalue()


def _arg_nodeids(config, paths):
    """The node ids the path arguments name ("" for the rootdir), None when
    one lies outside it."""
    ids = []
    root = str(config.rootpath)
    for arg in paths:
        strpath, sep, rest = str(arg).partition("::")
        rel = os.path.relpath(os.path.abspath(strpath), root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            return None
        rel = "" if rel == os.curdir else rel.replace(os.sep, "/")
        ids.append(rel + sep + rest)
    return ids


def _fixtures_under(fm, ids):
    """--fixtures PATH: plain pytest loads only the conftests along the
    path and imports only the modules under it, so it shows the fixtures
    of plugins, of the rootdir and of the nodes above or below a path
    argument.  Hide the others; returns how to undo that."""
    if not ids:
        return []

    def shown(fixturedef):
        base = getattr(fixturedef, "baseid", "") or ""
        return not base or any(_node_within(base, i) or _node_within(i, base) for i in ids)

    if hasattr(fm, "_get_all_fixture_defs"):   # pytest 9
        every = fm._get_all_fixture_defs
        fm._get_all_fixture_defs = lambda: [d for d in every() if shown(d)]
        return [lambda: delattr(fm, "_get_all_fixture_defs")]
    saved = fm._arg2fixturedefs
    fm._arg2fixturedefs = {name: [d for d in defs if shown(d)] for name, defs in saved.items()}
    return [lambda: setattr(fm, "_arg2fixturedefs", saved)]


def _node_within(nodeid, above):
    """Whether nodeid is the node `above` or under it."""
    return not above or nodeid == above or nodeid.startswith((above + "/", above + "::"))


def _log_formatter(config):
    """--color is per run: the captured log lines' formatter colours their
    level names (pytest makes it at configure, for the zygote's terminal)."""
    from _pytest.logging import get_option_ini
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    if plugin is None or not hasattr(plugin, "_create_formatter"):
        return
    plugin.formatter = plugin._create_formatter(get_option_ini(config, "log_format"),
                                                get_option_ini(config, "log_date_format"),
                                                get_option_ini(config, "log_auto_indent"))
    for handler in (plugin.caplog_handler, plugin.report_handler):
        handler.setFormatter(plugin.formatter)


def _setup_show_options(opt):
    """What setupplan's and setuponly's pytest_cmdline_main do, which ran
    in the zygote, before this run's options."""
    if getattr(opt, "setupplan", False):
        opt.setuponly = opt.setupshow = True
    if getattr(opt, "setuponly", False):
        opt.setupshow = True


class _DeselectCounter:
    def __init__(self):
        self.count = 0
        self.in_stepwise = False
        self.stepwise_count = 0    # of count, what --sw skipped
        self.stepwise_seen = None  # the node ids --sw chose from

    def pytest_deselected(self, items):
        self.count += len(items)
        if self.in_stepwise:
            self.stepwise_count += len(items)


def _stepwise_plugin(config, counter):
    """--sw/--stepwise-skip: pytest's own StepwisePlugin, made per run (it
    reads cache/stepwise as it starts); the counter learns what it skipped."""
    pm = config.pluginmanager
    old = pm.get_plugin("stepwiseplugin")
    if old is not None:
        pm.unregister(old)
    module = pm.get_plugin("stepwise")
    if module is None:   # -p no:stepwise
        return None
    module.pytest_configure(config)
    sw = pm.get_plugin("stepwiseplugin")
    if sw is None:
        return None
    pm.unregister(sw)
    modify = sw.pytest_collection_modifyitems

    def pytest_collection_modifyitems(config, items):
        counter.stepwise_seen = [item.nodeid for item in items]
        counter.in_stepwise = True
        try:
            modify(config=config, items=items)
        finally:
            counter.in_stepwise = False

    sw.pytest_collection_modifyitems = pytest_collection_modifyitems
    sw.pytest_fast_counter = counter
    pm.register(sw, "stepwiseplugin")
    return sw


def _stepwise_status(config, sw):
    lines = sw.pytest_report_collectionfinish()
    return [lines] if isinstance(lines, str) else list(lines or ())


def _usage_message(exc):
    if type(exc).__name__ == "UsageError":
        return "ERROR: " + str(exc)
    import traceback
    return "INTERNALERROR> " + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def _select_by_args(config, items, args, error_paths):
    """Restrict items to the given paths / node ids, in argument order, with
    pytest's matching rules; also say which collection errors are in scope."""
    cwd = os.getcwd()
    chosen = []
    seen = set()
    scoped = set()
    for arg in args:
        strpath, sep, rest = str(arg).partition("::")
        parts = rest.split("::") if sep else []
        path = os.path.abspath(os.path.join(cwd, strpath))
        if not os.path.exists(path):
            from _pytest.config import UsageError
            raise UsageError("file or directory not found: %s" % arg)
        isdir = os.path.isdir(path)
        matched = 0
        for item in items:
            ipath = str(item.path)
            if isdir:
                ok = ipath.startswith(path.rstrip(os.sep) + os.sep)
            else:
                ok = ipath == path and _parts_match(item.nodeid, parts)
            if ok:
                matched += 1
                if id(item) not in seen:
                    seen.add(id(item))
                    chosen.append(item)
                elif getattr(config.option, "keepduplicates", False):
                    from _pytest.config import UsageError
                    raise UsageError(
                        "--keep-duplicates: %s names %s again, which pytest would then run more than "
                        "once; pytest-fast runs each test once: run plain `python -m pytest "
                        "--keep-duplicates` for that" % (arg, item.nodeid))
        for i, epath in enumerate(error_paths):
            if epath == path or (isdir and epath.startswith(path.rstrip(os.sep) + os.sep)):
                scoped.add(i)
        if not matched and parts and not scoped:
            from _pytest.config import UsageError
            raise UsageError("not found: %s\n(no match in any of the collected items)" % arg)
    return chosen, sorted(scoped)


def _parts_match(nodeid, parts):
    if not parts:
        return True
    have = nodeid.split("::")[1:]
    if len(have) < len(parts):
        return False
    for i, want in enumerate(parts):
        got = have[i]
        if got == want:
            continue
        if i == len(parts) - 1 and "[" not in want and got.split("[", 1)[0] == want and len(have) == len(parts):
            continue
        return False
    return True


# The client's stdin, kept aside for a debugger (see _Worker.take_terminal),
# and whether its stdout is a terminal; -1: none.
_client_stdin = -1
_client_tty = False


def _debugging_plugins(config):
    """--pdb and --trace are per run: register what pytest's configure
    would have, had the collection been given them."""
    from _pytest import debugging
    pm = config.pluginmanager
    if config.getvalue("usepdb") and not pm.has_plugin("pdbinvoke"):
        pm.register(debugging.PdbInvoke(), "pdbinvoke")
    if config.getvalue("trace") and not pm.has_plugin("pdbtrace"):
        pm.register(debugging.PdbTrace(), "pdbtrace")


def _adopt_stdio(fds):
    """The client's stdout and stderr become ours (so `-s` output reaches its
    terminal); stdin is /dev/null, as tests must not wait for input, except
    while a debugger has the terminal."""
    global _client_stdin, _client_tty
    if len(fds) >= 3:
        _client_stdin = os.dup(fds[0])
        _client_tty = os.isatty(fds[1])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(fds[1], 1)
        os.dup2(fds[2], 2)
        for fd in fds:
            if fd > 2:
                os.close(fd)


def _release_stdio():
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


class _Worker:
    """Runs items handed out by the daemon, one claimed item ahead."""

    def __init__(self, session, run, req, fds, stale=None, stale_fixtures=None):
        self.session = session
        self.config = session.config
        self.run = run
        self.wid = req["wid"]
        self.fd = fds[0]
        self.fault = os.fdopen(fds[1], "w", buffering=1)
        self.full = run.get("full", False)
        self.timeout = float(run.get("timeout") or 0)
        self.reports = []
        self.warnings = []
        self.recorder = None
        self.stale = stale   # the tests to record (None: all): a current record stands
        self.stale_fixtures = stale_fixtures   # the fixtures those use (None: all)
        self.deps_out = None
        self.fixture_seen = {}
        self.shown = None   # --setup-show: what pytest wrote to its terminal
        self.saved_tw = None   # the terminal writer a debugger session replaced
        self.debugging = False
        self.sigint = None
        self.live_log = None

    def start_recording(self, name):
        """What each test runs and opens, for --affected (see affected.py)."""
        path = _affected_record(self.config)
        if path is None or not _recording(self.run["args"]):
            return
        root = _affected_root(self.config)
        try:
            self.deps_out = open(os.path.join(os.path.dirname(path), "run-%s-%s.jsonl"
                                              % (self.run.get("runid", ""), name)), "a", encoding="utf-8")
        except OSError:
            return
        self.recorder = _affected.Recorder(root, _outside_project(root), native=_c)

    def record(self, item):
        files = self.recorder.stop()
        info = getattr(item, "_fixtureinfo", None)
        for defs in (info.name2fixturedefs.values() if info is not None else ()):
            for fixturedef in defs:
                seen = self.fixture_seen.get(id(fixturedef))
                if seen is not None:
                    files |= seen
        self.deps_out.write(json.dumps([item.nodeid, sorted(files)]) + "\n")
        self.deps_out.flush()

    def pytest_fixture_setup(self, fixturedef, request):
        # A higher-scoped fixture is set up by the first test that needs it
        # and used by the others: they depend on what its setup ran, too,
        # even when that first test is one whose record was current.  Only
        # for the tests recorded: recording switches sys.monitoring on, and
        # a module-scoped fixture in every module made that once per module.
        rec = self.recorder
        if rec is None or fixturedef.scope == "function" or (
                self.stale_fixtures is not None and fixturedef.argname not in self.stale_fixtures):
            yield
            return
        alone = not rec.active
        if alone:
            rec.start()
        try:
            yield
        finally:
            self.fixture_seen[id(fixturedef)] = rec.stop() if alone else rec.so_far()

    def work(self):
        import faulthandler
        config = self.config
        name = "gw%d" % self.wid
        os.environ["PYTEST_XDIST_WORKER"] = name
        os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(self.run.get("workers", 1))
        os.environ["PYTEST_XDIST_TESTRUNUID"] = self.run.get("runid", "")
        faulthandler.enable(file=self.fault, all_threads=True)
        self.quiet_controller_plugins()
        self.reset_capture()
        if getattr(config.option, "setupshow", False):
            # The SETUP/TEARDOWN lines go to the terminal writer: keep them,
            # per report, for the controller (or, CLI, per test to stdout).
            from _pytest._io import TerminalWriter
            self.shown = io.StringIO()
            config.pluginmanager.get_plugin("terminalreporter")._tw = TerminalWriter(self.shown)
        # tmp_path: like plain pytest, a numbered basetemp made on first use
        # (pytest's own locking keeps concurrent workers apart); a given
        # --basetemp gets one subdirectory per worker, as under xdist.
        factory = getattr(config, "_tmp_path_factory", None)
        if factory is not None:
            if factory._given_basetemp is not None:
                os.makedirs(factory._given_basetemp, exist_ok=True)
                factory._given_basetemp = factory._given_basetemp / ("popen-" + name)
            factory._basetemp = None
        self.start_recording(name)
        self.debugger_setup()
        self.live_logging()
        config.pluginmanager.register(self, "pytest-fast-worker")
        self.warnings = []   # registering replayed the collection's warnings
        cov = _cov_worker_start(self.wid) if _cov_plugin(config) else None
        try:
            self.loop(cov)
        finally:
            if cov is not None:
                _cov_worker_end(config, cov)

    def loop(self, cov):
        import faulthandler
        config, session = self.config, self.session
        items = session.items
        # A reply is an item's index, None (no item left for this worker) or
        # -1: the run is stopping (-x, pytest.exit in another worker), so
        # nothing more runs here, not even an item claimed ahead.  -1 is no
        # index: items[-1] would run the last test, unasked and unreported.
        cur = self.ask(("n",))
        nxt = self.ask(("n",)) if cur is not None and cur != -1 else None
        if -1 in (cur, nxt):
            cur = None
        try:
            while cur is not None:
                item = items[cur]
                nextitem = items[nxt] if nxt is not None else None
                if self.timeout > 0:
                    faulthandler.dump_traceback_later(self.timeout, exit=True, file=self.fault)
                recording = self.recorder is not None and (self.stale is None or item.nodeid in self.stale)
                if recording:
                    self.recorder.start()
                config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                self.release_terminal()   # a debugger stepped out of the test
                if self.shown is not None and not self.full:
                    self.show_on_stdout()
                if recording:
                    self.record(item)
                if self.timeout > 0:
                    faulthandler.cancel_dump_traceback_later()
                if cov is not None:
                    _cov_flush(cov)
                stop = session.shouldfail or session.shouldstop
                reply = self.done(cur, want=nxt is not None and not stop)
                if stop or reply == -1:
                    break
                cur, nxt = nxt, reply
        except BaseException as exc:
            if type(exc).__name__ == "Exit" or isinstance(exc, KeyboardInterrupt):
                code = getattr(exc, "returncode", None)
                self.flush_reports(cur)
                _send(self.fd, ("x", 2 if code is None else int(code), str(getattr(exc, "msg", exc))))
            raise

    def take_shown(self):
        text = self.shown.getvalue()
        self.shown.seek(0)
        self.shown.truncate()
        return text

    def show_on_stdout(self):
        """The CLI: one test's --setup-show lines, in one write."""
        lines = [line.rstrip() for line in self.take_shown().split("\n") if line.strip()]
        if lines:
            sys.stdout.flush()
            data = ("\n".join(lines) + "\n").encode()
            while data:
                data = data[os.write(1, data):]
    def debugger_setup(self):
        """breakpoint(), pdb.set_trace(), --pdb and --trace all open pytest's
        debugger through pytestPDB._init_pdb (--pdb first prints the
        failure, see pytest_exception_interact): before it writes anything,
        the worker takes the client's terminal, waiting while another
        worker's debugger has it."""
        from _pytest import debugging
        init = debugging.pytestPDB.__dict__.get("_init_pdb")
        if _client_stdin < 0 or not isinstance(init, classmethod):
            return
        worker, original = self, init.__func__

        def _init_pdb(cls, method, *args, **kwargs):
            worker.take_terminal()
            return original(cls, method, *args, **kwargs)

        debugging.pytestPDB._init_pdb = classmethod(_init_pdb)

    def live_logging(self):
        """--log-cli-level / log_cli: the zygote's logging plugin was made
        without them (or with the zygote's terminal reporter).  Under
        `pytest --fast` each phase's records travel with its report and the
        controller's own live-log handler shows them; in the CLI they go to
        the client's terminal as they happen."""
        import logging

        from _pytest import logging as pytest_logging
        config = self.config
        lp = config.pluginmanager.get_plugin("logging-plugin")
        try:
            enabled = config.getoption("log_cli_level", None) is not None or config.getini("log_cli")
        except ValueError:
            enabled = False
        if lp is None or not enabled:
            return
        if self.run.get("stream"):
            handler = self.live_log = _log_records()
        else:
            capman = config.pluginmanager.get_plugin("capturemanager")
            handler = pytest_logging._LiveLoggingStreamHandler(_TerminalLines(config), capman)
            handler.setFormatter(lp._create_formatter(
                pytest_logging.get_option_ini(config, "log_cli_format", "log_format"),
                pytest_logging.get_option_ini(config, "log_cli_date_format", "log_date_format"),
                pytest_logging.get_option_ini(config, "log_auto_indent")))
        level = pytest_logging.get_log_level_for_setting(config, "log_cli_level", "log_level")
        root = logging.getLogger()
        if level is not None:
            handler.setLevel(level)
            root.setLevel(min(root.level, level))
        # The test loop's catching_logs attached the zygote's handler to the
        # root logger before the fork: this one replaces it there too.
        root.removeHandler(lp.log_cli_handler)
        root.addHandler(handler)
        lp.log_cli_handler = handler

    def take_terminal(self):
        if self.debugging or _client_stdin < 0:
            return
        import faulthandler
        import signal
        sys.stdout.flush()
        sys.stderr.flush()
        self.ask(("p", True))   # the daemon's answer: the terminal is ours
        self.debugging = True
        if _client_tty:   # pdb prints to it between prompts
            try:
                sys.__stdout__.reconfigure(line_buffering=True)
            except Exception:
                pass
        if self.timeout > 0:
            faulthandler.cancel_dump_traceback_later()   # the user is debugging
        # The client forwards the terminal's Ctrl-C as SIGINT: pdb's own.
        self.sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if isinstance(tr, _QuietTerminal):
            # --pdb shows the failure on the terminal reporter's writer;
            # fd 1 is the client's again by the time it writes.
            from _pytest.config import create_terminal_writer
            self.saved_tw = tr._tw   # the quiet one, or --setup-show's
            tw = create_terminal_writer(self.config, open(1, "w", closefd=False))
            if self.config.option.color == "auto" and _client_tty and not os.environ.get("NO_COLOR"):
                tw.hasmarkup = True   # fd 1 was not the terminal when it was made
            tr._tw = tw

    def release_terminal(self):
        if not self.debugging:
            return
        import signal
        self.debugging = False
        for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:
            try:
                stream.flush()   # what pdb wrote, before the other workers' output
            except Exception:
                pass
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        signal.signal(signal.SIGINT, self.sigint)
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if isinstance(tr, _QuietTerminal):
            tr._tw = self.saved_tw
        _send(self.fd, ("p", False))

    def pytest_exception_interact(self, node, call, report):
        if self.config.getvalue("usepdb"):
            self.take_terminal()

    def pytest_enter_pdb(self, config, pdb):
        # Now that pytest suspended capturing (which put /dev/null back).
        if self.debugging:
            os.dup2(_client_stdin, 0)

    def pytest_leave_pdb(self, config, pdb):
        from _pytest import debugging
        if debugging.pytestPDB._recursive_debug == 0:   # not an inner `debug` session
            self.release_terminal()

    def finish(self, rc):
        """After pytest's session teardown ran in this worker."""
        sys.stdout.flush()
        sys.stderr.flush()
        _send(self.fd, ("f", int(rc)))
        os._exit(0)

    def ask(self, frame):
        _send(self.fd, frame)
        return _c.recv(self.fd)

    def done(self, idx, want):
        frame = ("d", idx, self.reports, self.warnings, want)
        self.reports = []
        self.warnings = []
        if want:
            return self.ask(frame)
        _send(self.fd, frame)
        return None

    def flush_reports(self, idx):
        if self.reports or self.warnings:
            self.done(idx, False)

    def quiet_controller_plugins(self):
        """The daemon and the client own reporting, caches and junit."""
        pm = self.config.pluginmanager
        for name in ("lfplugin", "nfplugin", "stepwiseplugin", "lfplugin-collwrapper"):
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
        for plugin in list(pm.get_plugins()):
            if type(plugin).__name__ == "LogXML":
                pm.unregister(plugin)
        tr = pm.get_plugin("terminalreporter")
        if tr is not None:
            # Its session summary (and what plugins do for it) would only
            # be thrown away here: a silent stand-in keeps the name alive.
            pm.unregister(tr)
            pm.register(_QuietTerminal(self.config), "terminalreporter")

    def reset_capture(self):
        capman = self.config.pluginmanager.get_plugin("capturemanager")
        if capman is None:
            return
        # Stopping restores the zygote's own stdout/stderr (the daemon's
        # log) over the client's: put the client's back before restarting.
        client = os.dup(1), os.dup(2)
        capman.stop_global_capturing()
        os.dup2(client[0], 1)
        os.dup2(client[1], 2)
        os.close(client[0])
        os.close(client[1])
        method = getattr(self.config.option, "capture", None)
        if method:
            capman._method = method
        capman.start_global_capturing()
        capman.suspend_global_capture()
        if method == "no" and os.isatty(1):
            try:
                sys.stdout.reconfigure(line_buffering=True)
            except Exception:
                pass

    def pytest_runtest_logreport(self, report):
        config = self.config
        status = config.hook.pytest_report_teststatus(report=report, config=config)
        category = status[0]
        if self.full:
            data = config.hook.pytest_report_to_serializable(config=config, report=report)
            if self.shown is not None:
                data["pytest_fast_shown"] = self.take_shown()
            # What this test process's plugins and conftests say, for the
            # `pytest --fast` controller, which imports no conftest.
            data["pf_teststatus"] = _plain(tuple(status))
            if hasattr(report.longrepr, "toterminal") and not hasattr(report.longrepr, "reprcrash"):
                # serialized as its text (a fixture lookup error): no crash message
                data["pf_text_repr"] = True
            if self.live_log is not None and self.live_log.records.get(report.when):
                data["pf_live_log"] = self.live_log.records.pop(report.when)
            self.reports.append((report.when, report.outcome, category, report.duration,
                                 _longrepr_text(report) if report.failed else None,
                                 report.sections if report.failed else None,
                                 getattr(report, "wasxfail", None), data))
            return
        text = sections = None
        if report.failed:
            text = _longrepr_text(report)
            sections = report.sections
        elif report.skipped and isinstance(report.longrepr, tuple):
            text = str(report.longrepr[2])
        wasxfail = getattr(report, "wasxfail", None)
        self.reports.append((report.when, report.outcome, category, report.duration, text, sections,
                             wasxfail, None))

    def pytest_warning_recorded(self, warning_message, when, nodeid, location):
        self.warnings.append(_warning_data(warning_message, when, nodeid, location))


def _log_records():
    """Stands in for pytest's live-log handler in a worker under `pytest
    --fast`: keeps each phase's records, as plain data, for its report."""
    import logging

    class LogRecords(logging.Handler):
        def __init__(self):
            super().__init__()
            self.when = None
            self.records = {}

        def reset(self):
            self.records = {}

        def set_when(self, when):
            self.when = when

        def emit(self, record):
            fields = {k: v for k, v in vars(record).items() if type(v) in _PLAIN}
            fields["msg"] = record.getMessage()
            fields["args"] = None
            if record.exc_info and not record.exc_text:
                fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
            self.records.setdefault(self.when, []).append(fields)

    return LogRecords()


class _TerminalLines:
    """What pytest's live-log handler uses of a TerminalReporter, on the
    client's terminal (the CLI renders no pytest output of its own)."""

    def __init__(self, config):
        from _pytest.config import create_terminal_writer
        self._tw = create_terminal_writer(config, open(1, "w", closefd=False))

    def write(self, text, **markup):
        self._tw.write(text, **markup)
        self._tw.flush()

    def section(self, title, sep="=", **markup):
        self._tw.sep(sep, title, **markup)
        self._tw.flush()

    def flush(self):
        self._tw.flush()


class _RecordingReporter:
    """A terminal reporter that records its output calls (write_sep,
    write_line, section, _tw.write ...) as plain data, for the plugin's
    controller to replay on its own."""

    def __init__(self, config, stats, prefix="", calls=None):
        self.config = config
        self.stats = stats
        self.verbosity = config.get_verbosity() if hasattr(config, "get_verbosity") else config.option.verbose
        self.calls = [] if calls is None else calls
        self._prefix = prefix
        self.fullwidth = 80

    @property
    def _tw(self):
        return _RecordingReporter(self.config, self.stats, "_tw.", self.calls)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(*args, **kwargs):
            self.calls.append((self._prefix + name, _plain(list(args)), _plain(kwargs)))
        return call


class _QuietTerminal:
    """Stands in for the TerminalReporter in workers: every call is a no-op."""

    def __init__(self, config):
        from _pytest._io import TerminalWriter
        self.config = config
        self.stats = {}
        self._tw = self.quiet_tw = TerminalWriter(open(os.devnull, "w"))

    def __getattr__(self, name):
        if name.startswith("pytest_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def main(fd, args):
    plan = _c.recv(fd)
    level = plan["level"] if isinstance(plan, dict) else 2
    # What `python -m pytest` does: the working directory is importable.
    sys.path.insert(0, os.getcwd())
    _ran_watch(True)
    while level < 2:
        # A site or project zygote: preload, report, then wait to be forked
        # into the level above.
        gc.disable()   # one collection at the end, not one per few imports
        if level == 0:
            _cov_boot(plan.get("rewrite") or ())
        new, failed = _preload(plan["modules"], plan.get("rewrite") or ())
        tainted = level == 1 and _warm_up(plan.get("warmup", True))
        if level == 1:
            _cov_warm_parse()
            _hotswap.keep_sources(_module_files_outside())
        _freeze_level()
        _send(fd, {"op": "level", "level": level, "files": _module_files(new), "failed": failed,
                   "tainted": tainted, "threads": _threads(),
                   "dirs": _site_dirs() if level == 0 else []})
        fd, plan = _await_fork(fd)
        level = plan["level"]
    try:
        import pytest
    except ImportError as exc:
        sys.stderr.write("pytest-fast: pytest is not importable by %s (%s).\n"
                         "Install it there: %s -m pip install pytest\n"
                         % (sys.executable, exc, sys.executable))
        _send(fd, {"op": "exited", "rc": 4, "files": [], "dirs": []})
        return 4
    sys.argv = [os.path.join(os.path.dirname(pytest.__file__), "__main__.py")] + list(args)
    _cov_patch()
    plugin = _Zygote(fd)
    _Zygote.pytest_runtestloop = pytest.hookimpl(tryfirst=True)(_Zygote.pytest_runtestloop)
    _Zygote.pytest_collection = pytest.hookimpl(tryfirst=True)(_Zygote.pytest_collection)
    _Zygote.pytest_cmdline_main = pytest.hookimpl(tryfirst=True)(_Zygote.pytest_cmdline_main)
    _Zygote.pytest_collection_modifyitems = pytest.hookimpl(hookwrapper=True)(
        _Zygote.pytest_collection_modifyitems)
    _Worker.pytest_fixture_setup = pytest.hookimpl(hookwrapper=True)(_Worker.pytest_fixture_setup)
    _Worker.pytest_exception_interact = pytest.hookimpl(tryfirst=True)(_Worker.pytest_exception_interact)
    rc = pytest.main(list(args), plugins=[plugin])
    if plugin.role == "worker":
        plugin.worker.finish(rc)
    sys.stdout.flush()
    sys.stderr.flush()
    _send(fd, {"op": "exited", "rc": int(rc), "files": _imported_files() + _project_files(),
               "dirs": _project_dirs()})
    return int(rc)


def _await_fork(fd):
    while True:
        got = _c.serve(fd)
        if got is None:
            os._exit(0)
        msg, fds, forked = got
        if forked:
            return fds[0], msg


# Modules the lower levels imported, and the warnings they raised: pytest
# did not see those imports, so the warnings are replayed at collection.
_PRELOADED: set = set()
_PRELOAD_WARNINGS: list = []


class _Blocker:
    """While preloading, when pytest's import hook cannot be reproduced (a
    pytest whose internals differ), modules it would rewrite must not be
    imported: a preload that needs one fails and is left to pytest."""

    def __init__(self, marked):
        self.marked = tuple(marked)

    def find_spec(self, name, path=None, target=None):
        if _is_marked(name, self.marked):
            raise ImportError("pytest-fast: %s is left to pytest's assertion rewriting" % name)
        return None


def _is_marked(name, marked):
    return any(name == m or name.startswith(m + ".") for m in marked)


def _marked_names(rewrite):
    """The names pytest marked for rewriting, in the plan's rewrite list
    (whose settings start with ":")."""
    return [m for m in rewrite if not m.startswith(":")]


class _RewriteConfig:
    """What pytest's import hook reads of a Config, as the collection that
    wrote the plan had it; it is also the hook's (silent) assertion state."""

    def __init__(self, fnpats, pass_hook, key):
        self.stash = {key: self}
        self.ini = {"python_files": fnpats, "enable_assertion_pass_hook": pass_hook}

    def getini(self, name):
        return self.ini[name]

    def trace(self, *args):
        pass


def _preload_hook(rewrite):
    """The finder that imports preloads the way pytest's session would:
    modules pytest rewrites (plugins' packages, register_assert_rewrite
    names, test-like files) go through pytest's own AssertionRewritingHook,
    set up as the last collection's was, so the code, the cached pyc and the
    module's loader are what pytest's import makes (and pytest does not warn
    that it cannot rewrite them).  None when pytest does not rewrite."""
    if ":rewrite" not in rewrite:
        return None
    marked = _marked_names(rewrite)
    try:
        from _pytest.assertion.rewrite import AssertionRewritingHook, assertstate_key
        fnpats = [m[len(":python_files "):] for m in rewrite if m.startswith(":python_files ")]
        hook = AssertionRewritingHook(_RewriteConfig(fnpats, ":assertion_pass_hook" in rewrite,
                                                     assertstate_key))
        hook._must_rewrite.update(marked)
        return hook
    except Exception:
        return _Blocker(marked)


def _rewrite_settings(config):
    """How this session's assertion rewriting is set up, for the next
    boot's preloads: [] when pytest rewrites nothing (--assert=plain)."""
    from _pytest.assertion.rewrite import AssertionRewritingHook
    for hook in sys.meta_path:
        if isinstance(hook, AssertionRewritingHook):
            out = [":rewrite"]
            if config.getini("enable_assertion_pass_hook"):
                out.append(":assertion_pass_hook")
            out += [":python_files " + p for p in hook.fnpats]
            return out + sorted(hook._must_rewrite)
    return []


def _preload(names, rewrite):
    import importlib
    import warnings
    before = set(sys.modules)
    failed = 0
    hook = _preload_hook(rewrite)
    if hook is not None:
        sys.meta_path.insert(0, hook)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in names:
                if name in sys.modules:
                    continue
                try:
                    importlib.import_module(name)
                except BaseException:
                    failed += 1   # left to the normal import
    finally:
        if hook is not None:
            sys.meta_path.remove(hook)
    _PRELOAD_WARNINGS.extend(caught)
    new = [name for name in sys.modules if name not in before]
    _PRELOADED.update(new)
    return new, failed


def _threads():
    """The threads besides this one that are running: none of them survives
    the fork into the level above or into a worker."""
    threading = sys.modules.get("threading")
    if threading is None:
        return []
    out = []
    for thread in threading.enumerate():
        if thread is threading.current_thread() or not thread.is_alive():
            continue
        target = getattr(thread, "_target", None)
        where = ".".join(filter(None, (getattr(target, "__module__", None),
                                       getattr(target, "__qualname__", None))))
        out.append("%s (%s)" % (thread.name, where) if where else thread.name)
    return out


def _freeze_level():
    """Collect what the level left behind (a finalizer's warning is replayed
    at collection like the imports' own), then freeze the rest: the levels
    above never traverse it again, so their collections, and the one before
    the collected level forks (on the critical path of every re-collect),
    only walk what came after."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.enable()
        gc.collect()
    _PRELOAD_WARNINGS.extend(caught)
    gc.freeze()


def _warm_up(allowed):
    """Do once, in the project level, what every worker would otherwise do
    first: configure SQLAlchemy's mappers (a large share of a worker's time
    in an app with many models).  True when that raised or warned: a mapping
    problem must reach the first test that meets it, as in plain pytest, so
    the daemon then builds the level again without the warm-up (`allowed`
    is false from then on).  PYTEST_FAST_WARMUP=0 turns it off."""
    orm = sys.modules.get("sqlalchemy.orm")
    if not allowed or os.environ.get("PYTEST_FAST_WARMUP") == "0" or not hasattr(orm, "configure_mappers"):
        return False
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            orm.configure_mappers()
        except Exception:
            return True
    return bool(caught)


def _module_files(names):
    files = set()
    for name in names:
        f = _module_file(sys.modules.get(name))
        if f:
            files.add(_realpath(f))
    return sorted(files)


def _site_dirs():
    """Where `pip install` lands: a changed listing restarts the site level."""
    return sorted({os.path.realpath(p) for p in sys.path
                   if p and os.path.isdir(p) and p.rstrip(os.sep).endswith(("site-packages", "dist-packages"))})


def _plan(config, cov=(), only=None):
    """The modules this collection imported (or those named `only`), in
    first-import order, split into what the site and project levels may
    preload next time.  Test modules and conftests stay with the
    collection: pytest imports them."""
    import fnmatch

    from _pytest.assertion.rewrite import AssertionRewritingHook
    site_dirs = tuple(p + os.sep for p in _site_dirs())
    std = _stdlib_dirs()
    try:
        patterns = list(config.getini("python_files"))
    except Exception:
        patterns = ["test_*.py", "*_test.py"]
    rewrite = _rewrite_settings(config)
    marked = _marked_names(rewrite)

    def kind(name, mod):
        if name in ("__main__", "__mp_main__") or name.startswith("_pytest_fast"):
            return None
        namespace = getattr(mod, "__dict__", None)
        loader = namespace.get("__loader__") if isinstance(namespace, dict) else None
        if isinstance(loader, AssertionRewritingHook) and not _is_marked(name, marked):
            return None   # rewritten as a test module, a conftest or a file named on the command line
        f = _module_file(mod)
        if not f:
            return "site"
        f = _realpath(f)
        base = os.path.basename(f)
        if f.startswith(site_dirs) or f.startswith(std):
            return "site"
        if base != "conftest.py" and not any(fnmatch.fnmatch(base, pat) for pat in patterns):
            return "project"
        return None

    out: dict = {"site": [], "project": [], None: []}
    items = _modules(only)
    for name, mod in items:
        out[kind(name, mod)].append(name)
    return {"site": out["site"], "project": out["project"], "rewrite": rewrite + list(cov)}


_NORECURSE = ("*.egg", ".*", "_darcs", "build", "CVS", "dist", "node_modules", "venv", "{arch}",
              "__pycache__")


def _walk_project(limit=20000):
    """pytest stopped before collecting (a broken conftest, a usage error):
    whatever the user edits next under the working directory may fix it."""
    import fnmatch
    for dirpath, dirnames, filenames in os.walk(os.getcwd()):
        dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in _NORECURSE)
                       and not os.path.exists(os.path.join(dirpath, d, "pyvenv.cfg"))]
        yield dirpath, filenames
        limit -= 1 + len(filenames)
        if limit <= 0:
            return


def _project_files():
    return [os.path.join(d, f) for d, names in _walk_project() for f in names
            if f.endswith((".py", ".ini", ".toml", ".cfg"))]


def _project_dirs():
    return [d for d, _ in _walk_project()]


# -------------------------------------------------------------- coverage
# pytest-cov runs in the zygote as in a plain run (its no_cover marker, its
# cov fixture, --cov-context=test), with one Coverage for the whole chain:
# started in the lowest level, before the measured code is imported, and
# never saved there (a save opens SQLite, which a fork must not inherit).
# Every worker inherits what the levels measured and writes its own file;
# the CLI's leader or the plugin's pytest-cov combines them.

_COV = None           # the running coverage.Coverage of this chain
_COV_KEY = None       # the settings it was started with
_COV_STALE = False    # a level below measured with other settings (or none)
_COV_FILES = ".pytest-fast."   # the suffix of the workers' data files


def _cov_config_files(config_file):
    """The files coverage.py reads its configuration from."""
    if config_file in (True, ".coveragerc") and os.environ.get("COVERAGE_RCFILE"):
        config_file = os.environ["COVERAGE_RCFILE"]
    names = [config_file if isinstance(config_file, str) else ".coveragerc"]
    names += [".coveragerc.toml", "setup.cfg", "tox.ini", "pyproject.toml"]
    return [os.path.abspath(n) for n in names if os.path.isfile(n)]


def _cov_key(source, branch, config_file, context):
    """What decides how a Coverage measures: its arguments, the state of its
    configuration files and the COVERAGE_* environment."""
    stamps = []
    for path in _cov_config_files(config_file):
        st = os.stat(path)
        stamps.append([path, st.st_size, st.st_mtime_ns])
    env = sorted(kv for kv in os.environ.items() if kv[0].startswith("COVERAGE_"))
    return [sorted(source) if source is not None else None, branch, config_file, context, stamps, env]


def _cov_new(source, branch, config_file, context=None):
    import coverage
    cov = coverage.Coverage(source=source, branch=branch, data_suffix=True, config_file=config_file)
    _cov_core(cov, context)
    return cov


def _cov_core(cov, context):
    """sys.monitoring (3.12+) instead of the C tracer where the user chose
    no core and nothing asks for what sysmon cannot do: the same lines,
    for less time in every worker.  Branches need 3.14, contexts the
    tracer."""
    cfg = cov.config
    if (sys.version_info < (3, 12) or cfg.core or os.environ.get("COVERAGE_CORE") or cfg.timid
            or (cfg.branch and sys.version_info < (3, 14)) or context or cfg.dynamic_context
            or cfg.plugins or set(cfg.concurrency or ()) - {"thread"}):
        return
    cfg.core = "sysmon"


def _cov_boot(rewrite):
    """The site level: start measuring before anything is preloaded, with
    the settings the last collection used (kept with the preload plan)."""
    global _COV, _COV_KEY
    import json
    for entry in rewrite:
        if entry.startswith(":cov "):
            try:
                source, branch, config_file, context = json.loads(entry[5:])
                cov = _cov_new(source, branch, config_file, context)
                cov.start()
            except Exception:
                return   # the collected level sees no coverage and asks for new levels
            _COV, _COV_KEY = cov, _cov_key(source, branch, config_file, context)
            return


def _cov_adopt(ctl):
    """Replaces pytest-cov's Central.start in the zygote: measure with the
    chain's Coverage (start one if the levels below did not), and never
    erase here (a zygote boots at any time; the run erases)."""
    global _COV, _COV_KEY, _COV_STALE
    import warnings
    key = _cov_key(ctl.cov_source, ctl.cov_branch, ctl.cov_config,
                   getattr(ctl.config.option, "cov_context", None))
    if _COV is not None and _COV_KEY != key:
        _COV.stop()
        _COV = None
    if _COV is None:
        # What the levels below imported was not measured as asked.
        _COV_STALE = bool(_PRELOADED)
        context = getattr(ctl.config.option, "cov_context", None)
        _COV, _COV_KEY = _cov_new(ctl.cov_source, ctl.cov_branch, ctl.cov_config, context), key
        _COV.start()
    ctl.cov = _COV
    if _COV.config.dynamic_context == "test_function":
        from pytest_cov import CentralCovContextWarning
        warnings.warn(CentralCovContextWarning(
            "Detected dynamic_context=test_function in coverage configuration. This is unnecessary "
            "as this plugin provides the more complete --cov-context option."), stacklevel=1)
    ctl.started = True


def _cov_patch():
    try:
        from pytest_cov import engine
    except ImportError:
        return
    engine.Central.start = engine._ensure_topdir(_cov_adopt)


# Parsed sources for the reports, made in the zygote: each run's report
# otherwise parses every measured file again (plain pytest --cov does, on
# every run).  Keyed by the file's state, so an edit is never served stale.
_COV_PARSED: dict = {}


def _cov_parser(reporter):
    """PythonFileReporter.parser, served from _COV_PARSED when the file is
    unchanged (a parser computes its statements, exclusions and arcs once)."""
    from coverage.parser import PythonParser
    if reporter._parser is None:
        exclude = reporter.coverage._exclude_regex("exclude")
        try:
            st = os.stat(reporter.filename)
            key = (reporter.filename, exclude, st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        parser = _COV_PARSED.get(key) if key else None
        if parser is None:
            parser = PythonParser(filename=reporter.filename, exclude=exclude)
            parser.parse_source()
            if key:
                _COV_PARSED[key] = parser
        reporter._parser = parser
    return reporter._parser


def _cov_warm_parse():
    """Parse (and, for branch coverage, analyse the arcs of) the Python
    files measured so far, as the report will; a file that fails to parse
    is left to the report, which says so as in a plain run."""
    if _COV is None or _COV._collector is None:
        return
    from coverage.python import PythonFileReporter
    PythonFileReporter.parser = property(_cov_parser)
    for filename in list(_COV._collector.data):
        if not str(filename).endswith(".py"):
            continue
        try:
            reporter = PythonFileReporter(filename, _COV)
            reporter.lines()
            if _COV.config.branch:
                reporter.arcs()
                reporter.exit_counts()
        except Exception:
            continue


def _cov_plugin(config):
    """pytest-cov's plugin when it measures this collection, else None."""
    plugin = config.pluginmanager.get_plugin("_cov")
    if plugin is None or getattr(plugin, "_disabled", True) or plugin.cov_controller is None:
        return None
    return plugin


def _cov_collected(config):
    """At the end of collection: drop a tracer nobody asked for; say what
    the next boot's site level must start."""
    global _COV
    plugin = _cov_plugin(config)
    if plugin is None:
        if _COV is not None:
            _COV.stop()
            _COV = None
        return []
    ctl = plugin.cov_controller
    _cov_warm_parse()
    import json
    context = getattr(config.option, "cov_context", None)
    return [":cov " + json.dumps([ctl.cov_source, ctl.cov_branch, ctl.cov_config, context])]


def _cov_watched():
    return _cov_config_files(_COV_KEY[2]) if _COV is not None else []


def _cov_worker_files():
    return os.path.abspath(_COV.config.data_file) + _COV_FILES


def _cov_drop_worker_files():
    import glob
    for path in glob.glob(glob.escape(_cov_worker_files()) + "*"):
        try:
            os.unlink(path)
        except OSError:
            pass


def _cov_run_start(config, stream):
    """In the leader, before any worker exists: no worker file of an
    earlier run may reach this run's combine; the CLI also erases what
    pytest-cov's Central.start erases (the plugin's pytest-cov did)."""
    plugin = _cov_plugin(config)
    if plugin is None or _COV is None:
        return False
    _cov_drop_worker_files()
    if not stream and not config.option.cov_append:
        ctl = plugin.cov_controller
        _cov_new(ctl.cov_source, ctl.cov_branch, ctl.cov_config).erase()
    return True


def _cov_worker_start(wid):
    """This worker's data file, named so that a later run can tell it from
    the user's own parallel files."""
    if _COV is None:
        return None
    _COV._warn_unimported_source = False   # as pytest-cov's DistWorker: the combine warns
    _COV._warn_no_data = False
    _COV._data._suffix = "pytest-fast.gw%d.%d" % (wid, os.getpid())
    return _COV


def _cov_flush(cov):
    """After each test: what it executed is on disk, so a crash or a
    timeout loses that test's data only."""
    collector = cov._collector
    if collector is not None:
        collector.flush_data()


def _cov_worker_end(config, cov):
    """The worker is done: save, and keep pytest-cov from combining and
    reporting here (the leader or the controller does that once)."""
    cov.stop()
    cov.save()
    plugin = _cov_plugin(config)
    if plugin is not None:
        plugin.cov_controller = None
        plugin.options.cov_report = {}
        plugin.options.cov_fail_under = None


def _cov_finish(config, failed):
    """The CLI's end of a coverage run, in the leader: combine the workers'
    files into the data file, as pytest-cov's Central.finish does, and
    report as its plugin does (its own report code).  Returns the text for
    the terminal and whether --cov-fail-under failed the run."""
    from coverage.exceptions import CoverageException
    from coverage.results import display_covered, should_fail_under
    from pytest_cov.engine import Central
    plugin = _cov_plugin(config)
    opts, opt = plugin.options, config.option
    report = opt.cov_report
    opts.cov_report = ["term"] if not report else {} if len(report) == 1 and "" in report else report
    for name in ("cov_fail_under", "cov_precision", "no_cov_on_fail"):
        setattr(opts, name, getattr(opt, name))
    ctl = Central(opts, None, None)
    cov = ctl.cov = _cov_new(ctl.cov_source, ctl.cov_branch, ctl.cov_config)
    if opts.cov_fail_under is None and hasattr(cov.config, "fail_under"):
        opts.cov_fail_under = cov.config.fail_under
    if opts.cov_precision is None:
        opts.cov_precision = getattr(cov.config, "precision", 0)
    ctl.cov_precision = opts.cov_precision
    cov.load()
    cov.combine()
    cov.save()
    ctl.node_descs.add(ctl.get_node_desc(sys.platform, sys.version_info))
    if not (opts.cov_report or opts.cov_fail_under) or (failed and opts.no_cov_on_fail):
        return "", False
    out = io.StringIO()
    body = io.StringIO()
    try:
        total = ctl.summary(body)
    except CoverageException as exc:
        out.write("\nWARNING: Failed to generate report: %s\n\n" % exc)
        total = 0
    under = opts.cov_fail_under
    fail = under is not None and not opt.collectonly and should_fail_under(total, under, opts.cov_precision)
    if fail:
        out.write("\nERROR: Coverage failure: total of %s is less than fail-under=%.*f\n"
                  % (display_covered(total, opts.cov_precision), opts.cov_precision, under))
    text = body.getvalue()
    if text or (under or 0) > 0:
        out.write(_sep("=", "tests coverage"))
    out.write(text)
    if (under or 0) > 0 and not opt.collectonly:
        out.write("%sRequired test coverage of %s%% %s. Total coverage: %.2f%%\n"
                  % ("FAIL " if total < under else "", under,
                     "not reached" if total < under else "reached", total))
    return out.getvalue(), fail


def _sep(char, title):
    import shutil
    width = max(shutil.get_terminal_size(fallback=(80, 24))[0], 40)
    fill = char * max((width - len(title) - 2) // 2, 1)
    return "%s %s %s\n" % (fill, title, fill)
