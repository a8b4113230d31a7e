"""pytest --fast: run the session's tests in the pytest-fast daemon.

Registered through the ``pytest11`` entry point (or ``-p plugin``); inert
unless ``--fast`` is given.  The pytest process stays the controller, so all
reporting is pytest's own: the daemon's warm zygote collects (once) and its
forked workers run the tests; this plugin

* keeps the controller from importing any conftest.py (and so the app): it
  sets ``noconftest`` before pytest's own ``pytest_load_initial_conftests``
  runs, and declares the options the conftests add, as the daemon reports
  them, so that they still parse (and shows the header lines they add);
* replaces collection by the daemon's selection (``pytest_collection``) and
  the test loop by republishing the serialized reports the daemon streams
  (``pytest_runtestloop``), through the same hooks xdist's controller uses.

Frames are a 4-byte big-endian length and a pickle; replies are decoded by an
unpickler that refuses every global.
"""
from __future__ import annotations

import argparse
import builtins
import contextlib
import glob
import io
import logging
import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NoReturn

import pytest

try:  # only cosmetic: the short summary line of a collection error
    from _pytest.reports import CollectErrorRepr as _CollectErrorRepr
except ImportError:
    _CollectErrorRepr = None  # type: ignore[assignment,misc]

PROTO = 1
MAX_FRAME = 256 << 20
# Only the zygote embeds this builtin module: there the plugin stays inert.
IN_ZYGOTE = "_pytest_fast" in sys.modules
PLUGIN_NAMES = {__name__, __name__.rpartition(".")[2]}
VALUED = ("--fast-address", "--fast-workers", "--fast-ttl", "--fast-timeout", "--fast-shard")
EXIT_PREFIX = "_pytest.outcomes.Exit: "


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pytest-fast", "pytest-fast (resident fork-based accelerator)")
    group.addoption("--fast", action="store_true", default=False,
                    help="run the tests in the pytest-fast daemon's warm workers")
    group.addoption("--fast-address", metavar="PATH", default=None,
                    help="daemon socket (or $PYTEST_FAST_ADDRESS; default: one per project, "
                         "shared with the pytest-fast CLI)")
    group.addoption("--fast-workers", metavar="N", default=None,
                    help="parallel workers (or $PYTEST_FAST_WORKERS; default: performance cores)")
    group.addoption("--fast-ttl", metavar="SECONDS", default=None,
                    help="idle time before the daemon exits (or $PYTEST_FAST_TTL; default 600)")
    group.addoption("--fast-timeout", metavar="SECONDS", default=None,
                    help="per-test timeout, 0 = off (or $PYTEST_FAST_TIMEOUT)")
    group.addoption("--fast-affected", action="store_true", default=False,
                    help="with --fast: run only the tests an edit since their last run could change, "
                         "those that failed and those never run")
    group.addoption("--fast-shard", metavar="K/N", default=None,
                    help="run only shard K of N, 1-based, split by recorded durations (or "
                         "$PYTEST_FAST_SHARD; GitLab's CI_NODE_INDEX/CI_NODE_TOTAL when set)")
    group.addoption("--fast-store-durations", action="store_true", default=False,
                    help="also merge this run's durations into .test_durations "
                         "(pytest-split's file)")
    group.addoption("--fast-watch", action="store_true", default=False,
                    help="pre-warm: the daemon re-collects in the background as soon as "
                         "files change (or PYTEST_FAST_WATCH=1)")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser) -> None:
    ns = early_config.known_args_namespace
    if IN_ZYGOTE:
        return
    if not getattr(ns, "fast", False):
        if getattr(ns, "fast_affected", False):
            raise pytest.UsageError("--fast-affected selects through the pytest-fast daemon: "
                                    "add --fast (or run pytest-fast --affected)")
        return
    _refuse_unsupported(early_config, ns)
    if _plain_in_process(early_config, ns):
        return
    timeout = _timeout(ns.fast_timeout)
    shard = shard_spec(ns.fast_shard, os.environ)
    daemon = Daemon.ensure(early_config, ns)
    # pytest's own (trylast) implementation now imports no conftest.py.
    ns.noconftest = True
    try:
        reply = daemon.request("options", early_config, timeout)
    except DaemonGone as exc:
        raise pytest.UsageError(str(exc)) from None
    daemon.close()
    if reply["op"] != "options":
        _early_exit(reply)
    _declare_options(parser, reply["options"])
    header = [str(line) for line in reply.get("header") or ()]
    early_config.pluginmanager.register(Controller(early_config, daemon, timeout, header, shard),
                                        "pytest-fast-controller")


def _refuse_unsupported(config: pytest.Config, ns: argparse.Namespace) -> None:
    if getattr(ns, "numprocesses", None) not in (None, 0):
        raise pytest.UsageError("--fast runs its own workers: use --fast-workers N "
                                "instead of pytest-xdist's -n/--numprocesses")
    if getattr(ns, "looponfail", False):
        raise pytest.UsageError("pytest-xdist's -f/--looponfail would loop inside the daemon: "
                                "use `pytest-fast --watch`, which re-runs the tests a save affects, first")


def _plain_in_process(config: pytest.Config, ns: argparse.Namespace) -> bool:
    """--cache-show and --markers collect nothing, and --debug and
    --trace-config trace this process's own start-up and collection: those
    run as plain pytest, here, conftests included, without the daemon."""
    if getattr(ns, "help", False):
        return False
    traced = [flag for flag, on in (("--debug", getattr(ns, "debug", None) not in (None, False)),
                                    ("--trace-config", getattr(ns, "traceconfig", False))) if on]
    if traced:   # said at the end: pytest captures this start-up's output
        note = (f"pytest-fast: {traced[0]} traces pytest's own start-up and collection: "
                "plain pytest ran this, in this process, without the daemon\n")
        config.add_cleanup(lambda: print(note, end="", file=sys.stderr))
    return bool(traced) or getattr(ns, "cacheshow", None) not in (None, False) or bool(getattr(ns, "markers", False))


def _timeout(given: str | None) -> float:
    text = given if given is not None else os.environ.get("PYTEST_FAST_TIMEOUT")
    if text is None:
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise pytest.UsageError(f"invalid timeout '{text}': expected seconds >= 0")
    return value


def shard_spec(given: str | None, environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(K, N) from --fast-shard, else $PYTEST_FAST_SHARD, else GitLab's
    CI_NODE_INDEX/CI_NODE_TOTAL; None for no shard."""
    source, text = "--fast-shard", given
    if text is None and environ.get("PYTEST_FAST_SHARD"):   # empty is unset, as for the CLI
        source, text = "PYTEST_FAST_SHARD", environ["PYTEST_FAST_SHARD"]
    if text is None and environ.get("CI_NODE_INDEX") and environ.get("CI_NODE_TOTAL"):
        source = "CI_NODE_INDEX/CI_NODE_TOTAL"
        text = f"{environ['CI_NODE_INDEX']}/{environ['CI_NODE_TOTAL']}"
    if text is None:
        return None
    k, _, n = text.partition("/")
    if k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n) <= 100000:
        return int(k), int(n)
    raise pytest.UsageError(f"invalid {source} '{text}': expected K/N, shard K of N with "
                            f"1 <= K <= N (e.g. 1/3, 2/3 and 3/3 for three jobs)")


def _declare_options(parser: pytest.Parser, table: Sequence[dict[str, Any]]) -> None:
    """Declare the options the zygote's parser has and ours lacks (those of
    conftests), with their arity, so that they parse here.  Their values are
    only used by the daemon, which parses the same arguments itself."""
    groups = [getattr(parser, "_anonymous", None), *getattr(parser, "_groups", ())]
    if groups[0] is None:
        raise pytest.UsageError("pytest-fast: this pytest's Parser has no _anonymous option "
                                "group; conftest options cannot be declared (please report)")
    known = {name for group in groups if group is not None
             for opt in group.options for name in opt.names()}
    for opt in table:
        names = [n for n in opt["names"] if n not in known]
        if not names or len(names) != len(opt["names"]):
            continue
        known.update(names)
        try:
            parser.addoption(*names, **_arity(opt))
        except (ValueError, argparse.ArgumentError):
            continue  # e.g. a reserved lowercase short option: not ours to declare


def _arity(opt: dict[str, Any]) -> dict[str, Any]:
    """addoption() arguments that parse like the zygote's option.  No type and
    no choices: the value is only checked where it is used, in the daemon."""
    kwargs: dict[str, Any] = {"dest": opt["dest"], "default": opt["default"],
                              "help": str(opt.get("help") or "")}
    action, nargs = opt.get("action"), opt.get("nargs")
    if action in ("count", "store_true", "store_false", "store_const", "append_const"):
        kwargs["action"] = action
        if action in ("store_const", "append_const"):
            kwargs["const"] = opt.get("const")
    elif nargs == 0:
        kwargs.update(action="store_const", const=opt.get("const"))
    else:
        kwargs["action"] = action if action in ("append", "extend") else "store"
        if nargs is not None:
            kwargs["nargs"] = nargs
        if opt.get("choices"):
            kwargs["metavar"] = "{%s}" % ",".join(map(str, opt["choices"]))
    return kwargs


def _early_exit(reply: dict[str, Any]) -> NoReturn:
    """The daemon ended the request before running anything (a usage error,
    a conftest that fails to import, --help): say what pytest said."""
    rc = int(reply.get("rc", 3))
    text = str(reply.get("error") or reply.get("summary") or "").rstrip("\n")
    if rc == pytest.ExitCode.USAGE_ERROR and text.startswith("ERROR: "):
        raise pytest.UsageError(text[len("ERROR: "):])
    (sys.stdout if rc == 0 else sys.stderr).write(text + "\n" if text else "")
    raise SystemExit(rc)


class DaemonGone(Exception):
    """The daemon hung up before its final frame."""


class _DataOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> NoReturn:
        raise pickle.UnpicklingError(f"pytest-fast: refusing global {module}.{name}")


class Daemon:
    """The address, environment fingerprint and worker count of a running
    daemon, from `pytest-fast --ensure-daemon`, and requests to it."""

    def __init__(self, address: str, fingerprint: str, workers: int) -> None:
        self.address = address
        self.fingerprint = fingerprint
        self.workers = workers
        self.sock: socket.socket | None = None
        self.reader: io.BufferedReader | None = None
        self.notes: list[str] = []

    @classmethod
    def ensure(cls, config: pytest.Config, ns: argparse.Namespace) -> Daemon:
        cmd = [_binary(), "--ensure-daemon", "--python", sys.executable]
        for flag, value in (("--address", ns.fast_address), ("--workers", ns.fast_workers),
                            ("--ttl", ns.fast_ttl)):
            if value is not None:
                cmd += [flag, value]
        proc = subprocess.run(cmd, cwd=config.invocation_params.dir, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL)
        lines = proc.stdout.splitlines()
        if proc.returncode != 0 or len(lines) < 3:
            text = proc.stderr.strip() or f"{cmd[0]} --ensure-daemon failed ({proc.returncode})"
            if text.startswith("pytest-fast: "):
                text = text[len("pytest-fast: "):]
            raise pytest.UsageError(f"pytest-fast: {text}")
        return cls(lines[0], lines[1], int(lines[2]))

    def request(self, op: str, config: pytest.Config, timeout: float,
                shard: tuple[int, int] | None = None) -> dict[str, Any]:
        """Send one request; return its first reply that is not a note."""
        self.close()   # one request per connection: the previous one is over
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.address)
        except OSError as exc:
            sock.close()
            raise pytest.UsageError(f"pytest-fast: cannot connect to {self.address}: {exc}") from None
        self.sock = sock
        self.reader = sock.makefile("rb")
        args = forwarded_args(config.invocation_params.args)
        if op == "options":  # --help is printed here, with the options the zygote knows
            args = [a for a in args if a not in ("-h", "--help")]
        seed = getattr(config.option, "randomly_seed", None)
        if op == "run" and isinstance(seed, int) and config.pluginmanager.has_plugin("randomly"):
            # pytest-randomly chose (and printed) this run's seed here: the daemon uses it
            cut = args.index("--") if "--" in args else len(args)
            args = [*args[:cut], f"--randomly-seed={seed}", *args[cut:]]
        tw = config.get_terminal_writer() if op == "run" else None
        req = {
            "op": op, "proto": PROTO, "args": args,
            "env": [f"{k}={v}" for k, v in os.environ.items()],
            "cwd": str(config.invocation_params.dir), "fp": self.fingerprint,
            "python": sys.executable, "workers": self.workers, "timeout": timeout,
            "stream": True, "color": bool(tw and tw.hasmarkup),
            "watch": bool(config.getoption("fast_watch", False)),
            "store_durations": bool(config.getoption("fast_store_durations", False)),
        }
        if shard is not None:
            req["shard"] = shard
        body = pickle.dumps(req, protocol=5)
        sys.stdout.flush()
        sys.stderr.flush()
        frame = [struct.pack(">I", len(body)) + body]
        if op == "run":
            socket.send_fds(sock, frame, [_stdin(config), 1, 2])
        else:
            sock.sendall(frame[0])
        try:
            for msg in self.frames():
                if msg.get("op") != "note":
                    return msg
                self.notes.append(str(msg.get("text", "")))
        except BaseException:  # e.g. Ctrl-C during a cold boot
            self.cancel()
            raise
        raise AssertionError("unreachable: frames() ends by raising")

    def frames(self) -> Iterator[dict[str, Any]]:
        stream = self.reader
        assert stream is not None
        while True:
            head = stream.read(4)
            (size,) = struct.unpack(">I", head) if len(head) == 4 else (-1,)
            body = stream.read(size) if 0 <= size <= MAX_FRAME else b""
            msg = _DataOnly(io.BytesIO(body)).load() if 0 <= size == len(body) else None
            if not isinstance(msg, dict):
                self.close()
                raise DaemonGone(f"pytest-fast: the daemon at {self.address} hung up mid-request "
                                 "(see its log; `pytest-fast --status`)")
            yield msg

    def interrupt(self, signum: int = 0, frame: Any = None) -> None:
        """Ctrl-C while a worker's debugger has the terminal: its, as in a
        plain run (the daemon sends it SIGINT)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.send(b"i")

    def made_way(self) -> None:
        """A worker's debugger may take the terminal: nothing of ours is
        left to print before its prompt (the daemon waits for this)."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.send(b"a")

    def cancel(self) -> None:
        if self.sock is not None:
            try:
                self.sock.send(b"x")
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        if self.sock is not None:
            assert self.reader is not None
            self.reader.close()
            self.sock.close()
            self.sock = self.reader = None


def _stdin(config: pytest.Config) -> int:
    """The controller's real stdin, for a worker's debugger: pytest's global
    capture keeps fd 0 on /dev/null between tests (it suspends only stdout
    and stderr) and the original at targetfd_save."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    cap = getattr(getattr(capman, "_global_capturing", None), "in_", None)
    saved = getattr(cap, "targetfd_save", None)
    return saved if isinstance(saved, int) and getattr(cap, "targetfd", None) == 0 else 0


def _binary() -> str:
    explicit = os.environ.get("PYTEST_FAST_BIN")
    if explicit:
        return explicit
    beside = os.path.join(os.path.dirname(sys.executable), "pytest-fast")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("pytest-fast")
    if found:
        return found
    raise pytest.UsageError("--fast needs the pytest-fast binary: build it with ./build.sh "
                            "in the pytest-fast checkout and put it on PATH (or set "
                            "PYTEST_FAST_BIN), or install pytest-fast into this environment")


def forwarded_args(args: Sequence[str]) -> list[str]:
    """The invocation's pytest arguments minus this plugin's own."""
    out: list[str] = []
    it = iter(args)
    for arg in it:
        if arg == "--":
            out.append(arg)
            out.extend(it)
            break
        if arg in ("--fast", "--fast-watch", "--fast-store-durations"):
            continue
        if arg.split("=", 1)[0] in VALUED:
            if "=" not in arg:
                next(it, None)
            continue
        if arg == "-p":
            value = next(it, None)
            if value not in PLUGIN_NAMES and value is not None:
                out += [arg, value]
            continue
        if arg.startswith("-p") and not arg.startswith("--") and arg[2:] in PLUGIN_NAMES:
            continue
        out.append(arg)
    return out


class RemoteItem(pytest.Item):
    """A test the daemon collected and runs; the controller only reports it."""

    pf_location: tuple[str, int | None, str] = ("", None, "")

    @property
    def location(self) -> tuple[str, int | None, str]:
        return self.pf_location

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self.pf_location

    def runtest(self) -> None:
        raise RuntimeError("pytest-fast: this test runs in the daemon, not here")

    def __repr__(self) -> str:
        return f"<Function {self.nodeid}>"


def _remote_item(session: pytest.Session, nodeid: str, fspath: str, lineno: int | None,
                 domain: str) -> RemoteItem:
    name = nodeid.rpartition("::")[2] or nodeid
    item = RemoteItem.from_parent(session, name=name, nodeid=nodeid,
                                  path=session.config.rootpath / fspath)
    item.pf_location = (fspath, lineno, domain)
    return item


class Controller:
    """Stands in for collection and the test loop while --fast is on."""

    def __init__(self, config: pytest.Config, daemon: Daemon, timeout: float,
                 header: list[str], shard: tuple[int, int] | None) -> None:
        self.config = config
        self.daemon = daemon
        self.timeout = timeout
        self.header = header
        self.shard = shard
        self.pool = 0   # the selection before --fast-shard / --fast-affected took their part
        self.summary_calls: list[Any] = []   # the conftests' pytest_terminal_summary output
        self.text: str | None = None   # what the daemon's leader rendered (see glue.py's _info_text)

    def pytest_report_header(self) -> list[str]:
        """What the conftests (imported by the daemon, not here) add."""
        return self.header

    @pytest.hookimpl(tryfirst=True)
    def pytest_cmdline_main(self, config: pytest.Config) -> Any:
        """--fixtures, --fixtures-per-test: pytest's own listing, rendered
        by the daemon's leader (where the conftests and modules are), in
        a session like the one pytest runs for them."""
        opt = config.option
        if not (opt.showfixtures or opt.show_fixtures_per_test) or opt.help or opt.version:
            return None
        from _pytest.main import wrap_session
        return wrap_session(config, self._show)

    def _show(self, config: pytest.Config, session: pytest.Session) -> None:
        self.pytest_collection(session)   # pytest calls perform_collect(), not the hook
        try:
            for msg in self.daemon.frames():
                if msg.get("op") == "done":
                    break
        except DaemonGone as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.INTERNAL_ERROR)
        self.daemon.close()
        sys.stdout.write(self.text or "")
        sys.stdout.flush()

    @pytest.hookimpl(trylast=True)
    def pytest_configure(self, config: pytest.Config) -> None:
        if config.getoption("stepwise", False):
            self.daemon.workers = 1   # the daemon runs --sw in order on one worker
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self.daemon.workers > 1:
            reporter.showfspath = False  # as xdist: parallel results interleave files

    def _notes(self) -> None:
        for text in self.daemon.notes:
            sys.stderr.write(f"pytest-fast: {text}\n")
        self.daemon.notes = []

    def _coverage_from_daemon(self) -> None:
        """pytest-cov measures this process like a plain run's; but here no
        test runs: the daemon's workers write the data files, which its
        finish() combines as pytest-cov's DistMaster combines xdist's.  So
        this process stops measuring and, like DistMaster, does not warn
        that it saw no data."""
        plugin = self.config.pluginmanager.get_plugin("_cov")
        cov = getattr(getattr(plugin, "cov_controller", None), "cov", None)
        if cov is None:
            return
        cov.stop()
        if cov._collector is not None:
            cov._collector.reset()   # what it saw of this process is not the tests'
        cov._warn_no_data = False
        cov._warn_unimported_source = False
        cov._warn_preimported_source = False

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        # Not "no tests ran" but good news: --fast-affected with nothing to
        # re-run, or a shard that got none of a non-empty selection.
        if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and (
                self.config.option.fast_affected or (self.shard and self.shard[1] > 1 and self.pool)):
            session.exitstatus = pytest.ExitCode.OK
        # pytest-cov combines the workers' data files when the test loop ends
        # normally; after -x, pytest.exit() or a collection error it does not,
        # and a later plain `pytest --cov` must not combine them either.
        ctl = getattr(self.config.pluginmanager.get_plugin("_cov"), "cov_controller", None)
        cov = getattr(ctl, "cov", None)
        if cov is None:
            return
        base = os.path.join(getattr(ctl, "topdir", "."), cov.config.data_file)
        for path in glob.glob(glob.escape(os.path.abspath(base)) + ".pytest-fast.*"):
            with contextlib.suppress(OSError):
                os.unlink(path)

    def pytest_collection(self, session: pytest.Session) -> bool:
        config = self.config
        self._coverage_from_daemon()
        self._notes()
        try:
            reply = self.daemon.request("run", config, self.timeout, self.shard)
        except DaemonGone as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.INTERNAL_ERROR)
        self._notes()
        if reply["op"] != "collected":
            self.daemon.close()
            self._collected(session, [], 0)
            self._ended_early(reply)
        for data in [*reply["errors"], *reply.get("skips", [])]:
            config.hook.pytest_collectreport(report=self._report(data))
        for data in reply["warnings"]:
            self._warning(data)
        items: list[pytest.Item] = [_remote_item(session, *loc) for loc in reply["items"]]
        self.pool = int(reply.get("pool", 0))
        self.text = reply.get("text")
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if self.text is not None and reporter is not None and config.option.collectonly:
            # --collect-only: pytest's tree of the daemon's nodes, as it rendered it
            reporter._printcollecteditems = lambda items: reporter._tw.write(self.text)
        self._collected(session, items, int(reply["deselected"]), reply.get("stepwise"))
        return True

    def _collected(self, session: pytest.Session, items: list[pytest.Item], deselected: int,
                   stepwise: dict[str, Any] | None = None) -> None:
        """Tell the other plugins what pytest's own collection would have
        (but for what --sw skipped: see _stepwise)."""
        hook = self.config.hook
        dropped = [_remote_item(session, "<deselected>", "", None, "")
                   for _ in range(deselected + (int(stepwise["skipped"]) if stepwise else 0))]
        hook.pytest_collectreport(report=pytest.CollectReport(
            nodeid="", outcome="passed", longrepr=None, result=[*items, *dropped]))
        dropped = dropped[:deselected]
        if dropped:
            hook.pytest_deselected(items=dropped)
        # The daemon applied --lf/--ff/--nf already; the cache plugins here
        # still need to see the selection for their status line and cache.
        pm = self.config.pluginmanager
        keep = [p for p in map(pm.get_plugin, ("lfplugin", "nfplugin")) if p is not None]
        if keep:
            others = [p for p in pm.get_plugins() if p not in keep]
            pm.subset_hook_caller("pytest_collection_modifyitems", remove_plugins=others)(
                session=session, config=self.config, items=list(items))
        self._stepwise(session, stepwise, items)
        session.items = items
        session.testscollected = len(items)
        hook.pytest_collection_finish(session=session)

    def _stepwise(self, session: pytest.Session, seen: dict[str, Any] | None,
                  items: list[pytest.Item]) -> None:
        """--sw: the daemon skipped what pytest's StepwisePlugin skipped
        there; ours sees the same items, skips the same (its deselection is
        the one the daemon did not count) and keeps cache/stepwise."""
        plugin = self.config.pluginmanager.get_plugin("stepwiseplugin")
        if plugin is None or seen is None:
            return
        mine = {item.nodeid: item for item in items}
        saw = [mine.get(n) or _remote_item(session, n, n.split("::")[0], None, n)
               for n in seen["seen"]]
        plugin.pytest_collection_modifyitems(config=self.config, items=saw)

    def _ended_early(self, reply: dict[str, Any]) -> NoReturn:
        rc = int(reply.get("rc", 3))
        text = str(reply.get("error") or reply.get("summary") or "").rstrip("\n")
        if rc == pytest.ExitCode.USAGE_ERROR and text.startswith("ERROR: "):
            raise pytest.UsageError(text[len("ERROR: "):])
        if text:
            sys.stderr.write(text + "\n")
        pytest.exit(f"pytest-fast: the daemon ended the run ({rc})", returncode=rc)

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> Any:
        """What the test process said: its conftests may answer this hook
        (a conftest's letter and word for an outcome), and this process
        imports none."""
        return getattr(report, "pf_teststatus", None)

    def _report(self, data: dict[str, Any]) -> Any:
        status = data.pop("pf_teststatus", None)
        text_repr = data.pop("pf_text_repr", False)
        rep = self.config.hook.pytest_report_from_serializable(config=self.config, data=data)
        if text_repr and isinstance(rep.longrepr, str):
            rep.longrepr = _TextRepr(rep.longrepr)
        context = data.get("_subtest.context")
        if isinstance(context, dict) and hasattr(rep, "context"):
            # pytest 9's SubtestContext repr()s its kwargs again as it is
            # read back ("i='1'"): they were made text (i=1) in the worker.
            with contextlib.suppress(AttributeError, TypeError):
                object.__setattr__(rep.context, "kwargs", dict(context.get("kwargs") or {}))
        if status is not None:
            rep.pf_teststatus = tuple(status)
        wrap = _CollectErrorRepr
        if wrap is not None and isinstance(rep, pytest.CollectReport) and isinstance(rep.longrepr, str):
            rep.longrepr = wrap(rep.longrepr)  # what it was before serialization
        return rep

    def _warning(self, data: dict[str, Any]) -> None:
        category = _warning_class(str(data.get("category") or "UserWarning"))
        try:
            message: Warning | str = category(data["message"])
        except Exception:
            message = str(data["message"])
        record = warnings.WarningMessage(message, category, str(data.get("filename") or ""),
                                         int(data.get("lineno") or 0))
        location = data.get("location")
        self.config.hook.pytest_warning_recorded.call_historic(kwargs=dict(
            warning_message=record, when=data.get("when") or "runtest",
            nodeid=data.get("nodeid") or "", location=tuple(location) if location else None))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        hook = self.config.hook
        collect_errors = session.testsfailed
        done: dict[str, Any] = {}
        reported: set[str] = set()
        held: list[dict[str, Any]] = []   # reports that came while a debugger was open
        sigint: Any = None
        try:
            for msg in self._frames(held):
                op = msg.get("op")
                if op == "done":
                    done = msg
                    break
                if op == "debugger":
                    # A worker's debugger has the terminal: Ctrl-C is its,
                    # and the other workers' reports wait for it to close.
                    if msg.get("open"):
                        self.daemon.made_way()   # what came before is shown: it may write
                    if msg.get("open") and sigint is None:
                        sigint = signal.signal(signal.SIGINT, self.daemon.interrupt)
                    elif not msg.get("open") and sigint is not None:
                        signal.signal(signal.SIGINT, sigint)
                        sigint = None
                elif sigint is not None and op == "report":
                    held.append(msg)
                elif op == "note":
                    sys.stderr.write(f"pytest-fast: {msg.get('text', '')}\n")
                elif op == "report" and msg["reports"]:
                    # --setup-show: what pytest wrote to the terminal before each report
                    shown = [data.pop("pytest_fast_shown", None) for data in msg["reports"]]
                    logs = [data.pop("pf_live_log", None) for data in msg["reports"]]
                    reports = [self._report(data) for data in msg["reports"]]
                    nodeid, location = reports[0].nodeid, reports[0].location
                    reported.add(nodeid)
                    hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
                    for rep, text, log in zip(reports, shown, logs):
                        if text:
                            self.config.get_terminal_writer().write(str(text))
                        if log:
                            self._live_log(rep.when, log)
                        hook.pytest_runtest_logreport(report=rep)
                    hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
                    for data in msg.get("warnings") or ():
                        self._warning(data)
                    if session.shouldstop and not session.shouldfail:
                        self.daemon.cancel()  # a plugin asked to stop: do not wait
                        raise session.Interrupted(session.shouldstop)
        except DaemonGone as exc:
            pytest.exit(str(exc), returncode=pytest.ExitCode.INTERNAL_ERROR)
        except BaseException:
            self.daemon.cancel()
            raise
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
        self.daemon.close()
        return self._finish(session, done, reported, collect_errors)

    def _frames(self, held: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """The daemon's frames, and those held back while a debugger was
        open as soon as it closes."""
        for msg in self.daemon.frames():
            if msg.get("op") == "done" and held:   # the run ended with a debugger open
                yield {"op": "debugger", "open": False}
                while held:
                    yield held.pop(0)
            yield msg
            if msg.get("op") == "debugger" and not msg.get("open"):
                while held:
                    yield held.pop(0)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """Replay what the conftests' pytest_terminal_summary printed in the
        daemon (see glue.py's _RecordingReporter)."""
        for name, args, kwargs in self.summary_calls:
            target = terminalreporter
            if name.startswith("_tw."):
                target, name = terminalreporter._tw, name[len("_tw."):]
            method = getattr(target, str(name), None)
            if callable(method):
                method(*args, **kwargs)

    def _live_log(self, when: str, records: list[dict[str, Any]]) -> None:
        """A phase's live-log records (--log-cli-level, log_cli), through
        this process's live-log handler, where a plain run emits them: after
        the test's start, before the phase's report."""
        plugin = self.config.pluginmanager.get_plugin("logging-plugin")
        handler = getattr(plugin, "log_cli_handler", None)
        if handler is None or not hasattr(handler, "set_when"):
            return
        handler.set_when(when)
        for fields in records:
            handler.handle(logging.makeLogRecord(fields))

    def _finish(self, session: pytest.Session, done: dict[str, Any], reported: set[str],
                collect_errors: int) -> bool:
        rc = int(done.get("rc", 0))
        exit_msg = done.get("exit_msg")
        self.summary_calls = list(done.get("terminal_summary") or ())
        if done.get("error"):
            sys.stderr.write(f"pytest-fast: {done['error']}\n")
        if collect_errors and not self.config.option.continue_on_collection_errors:
            n = collect_errors
            raise session.Interrupted(f"{n} error{'s' if n != 1 else ''} during collection")
        if self.config.option.collectonly:
            return True
        if exit_msg and exit_msg.startswith(EXIT_PREFIX):
            pytest.exit(exit_msg[len(EXIT_PREFIX):], returncode=rc)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        missing = [item.nodeid for item in session.items if item.nodeid not in reported]
        if missing or rc not in (0, 1, 5):
            pytest.exit(f"pytest-fast: the daemon ended the run with exit code {rc} and "
                        f"{len(missing)} selected test(s) not run, e.g. {missing[:3]} "
                        f"(see its log; `pytest-fast --status`)",
                        returncode=rc if rc not in (0, 1) else pytest.ExitCode.INTERNAL_ERROR)
        return True


class _TextRepr:
    """The text of a longrepr that had no crash line (a fixture lookup
    error): not a str, so that the short summary adds no message to its
    line, as for the object it was."""

    def __init__(self, text: str) -> None:
        self.text = text

    def toterminal(self, out: Any) -> None:
        out.line(self.text)

    def __str__(self) -> str:
        return self.text


def _warning_class(name: str) -> type[Warning]:
    found = getattr(builtins, name, None) or getattr(pytest, name, None)
    if isinstance(found, type) and issubclass(found, Warning):
        return found
    return type(name, (UserWarning,), {"__module__": "pytest_fast.remote"})
