#!/usr/bin/env python3
"""The support matrix: every CPython 3.9-3.13 on this machine x pytest 7.4,
the newest 8.x and the newest 9.x.

For each combination: a fresh venv in build/matrix/<python>-pytest<version>/,
pytest and pytest-xdist installed there, pytest_fast.c compiled against that
venv's interpreter with build.sh's flags (-Werror included, so a warning under
another Python's headers fails the build), then the parity and plugin tests
(test/test_engine.py, test/test_plugin.py) run by that venv's python with
PF_BIN pointing at that binary.  Prints a table; exits 1 if any combination
failed.  Stdlib only: any python3 can run it.

    ./build.sh matrix                       # everything: here 17 combinations, 26 min
                                            # on 2 cores shared with other jobs
    ./build.sh matrix --smoke               # a smoke subset per combination (~5 min)
    ./build.sh matrix --smoke --skip-main   # ... minus the combination of ./.venv,
                                            # which `./build.sh test` runs in full
    ./build.sh matrix --only 3.12 --only 3.9.18-pytest7.4.4 -- -x   # pytest args after --
    ./build.sh matrix --packaging           # also `pip install .` per Python
                                            # (test/test_packaging.py, ~1 min each)

Interpreters are found in $PYENV_ROOT/versions/*, /usr/bin, /usr/local/bin,
/opt/homebrew/bin and PATH; one without a shared libpython or without venv
is listed as excluded, with the reason.  Logs: build/matrix/<combo>/log.txt;
the table also goes to build/matrix/table.md and results.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "matrix"

SUPPORTED = ((3, 9), (3, 13))
# pytest release -> the oldest Python it supports.  7.4: the oldest line we
# support; then the newest 8.x and the newest 9.x.
PYTESTS = {"7.4.4": (3, 9), "8.4.2": (3, 9), "9.2.0": (3, 10)}
XDIST = "pytest-xdist==3.8.0"  # pytest>=7.0, Python>=3.9: fits every combination
SUITE = ["test/test_engine.py", "test/test_plugin.py", "test/test_edit_loop.py", "test/test_affected.py",
         "test/test_watch.py", "test/test_run_options.py", "test/test_debugger.py", "test/test_live_log.py",
         "test/test_controller_hooks.py", "test/test_incremental.py", "test/test_options_table.py",
         "test/test_cli_report.py", "test/test_info_modes.py", "test/test_hotswap.py"]

# The smoke subset (-k, so names match as substrings): cold/warm parity,
# reporting, the venv rule and usage errors through the CLI; through the
# plugin, the parts that lean on pytest's internals most: parity of pytest's
# own reporting (-rA -v, junitxml), conftest options declared from the
# daemon's table (test_app_parity), usage errors, inertness in the zygote;
# preloading through pytest's own assertion-rewriting import hook; and
# what the tests' process inherits from the collection and the client.
SMOKE = [
    "test_stepwise_shares_pytests_cache",   # --sw: pytest's cache across front ends
    "test_parity_cold_then_warm",
    "test_summary_shows_failures_and_counts",
    "test_venv_interpreter",
    "test_usage_errors",  # also test_plugin's test_usage_errors_and_broken_conftest_...
    "test_parity_rA_v_junitxml_cold_and_warm",
    "test_app_parity",
    "test_inert_in_the_zygote_even_with_fast",
    "test_preloads_are_rewritten_as_pytest_would",
    # the run's environment, TZ and sys.argv (PYTEST_VERSION exists from pytest 8.2)
    "test_environment_changes_of_the_collection_reach_the_tests",
    "test_time_zone_argv_and_gc_are_as_in_a_plain_run",
    "test_header_lines_of_the_initial_conftests",
    "test_breakpoint_with_several_workers",   # the debugger on the client's terminal
    # --affected: sys.monitoring on 3.12+, the C profile function before
    "test_cli_selects_what_each_kind_of_edit_can_change",
    "test_plugin_selects_the_same_and_records_too",
    # --watch: the subscription, affected first, then the rest
    "test_a_save_runs_the_affected_tests_first_then_the_rest",
    # the incremental re-collect: splicing leans on pytest's collection internals
    "test_incremental_edits_match_plain_pytest",
    # the hot swap: what ran at import comes from CPython's internals (or
    # sys.monitoring on 3.12+), code from pytest's assertion rewriter
    "test_body_edits_are_swapped_in_and_match_plain_pytest",
    "test_what_the_swap_cannot_make_equal_recollects_in_full",
]

PROBE = r"""
import json, os, sys, sysconfig
v = sysconfig.get_config_var
try:
    import venv, ensurepip
    has_venv = True
except ImportError:
    has_venv = False
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "minor": list(sys.version_info[:2]),
    "implementation": sys.implementation.name,
    "executable": sys.executable,
    "base_prefix": os.path.realpath(sys.base_prefix),
    "in_venv": sys.prefix != sys.base_prefix,
    "shared": bool(v("Py_ENABLE_SHARED")) or bool(v("PYTHONFRAMEWORK")),
    "has_venv": has_venv,
}))
"""

# build.sh's py_flags, from the interpreter's own sysconfig (a venv has no
# python3-config; pyenv shims may point elsewhere).  Keep the two in step.
FLAGS = r"""
import json, sys, sysconfig
v = sysconfig.get_config_var
libdir = v("LIBDIR")
ver = v("LDVERSION") or v("VERSION")
print(json.dumps({
    "cflags": ["-I" + sysconfig.get_paths()["include"]],
    "ldflags": ["-L" + libdir, "-Wl,-rpath," + libdir, "-lpython" + ver]
               + (v("LIBS") or "").split() + (v("SYSLIBS") or "").split() + ["-lm"],
}))
"""


@dataclass
class Python:
    path: str
    version: str
    minor: tuple
    label: str
    base_prefix: str
    excluded: str = ""


@dataclass
class Combo:
    python: Python
    pytest: str
    excluded: str = ""
    dir: str = ""
    build: str = ""        # "ok" or what failed
    result: str = ""       # PASS, FAIL, ERROR, TIMEOUT, excluded, skipped
    counts: dict = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    @property
    def key(self):
        return f"{self.python.label}-pytest{self.pytest}"


def say(msg):
    print(f"matrix: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------ discovery

def candidate_paths():
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    for exe in sorted(glob.glob(str(pyenv / "versions" / "*" / "bin" / "python3"))):
        yield exe
    dirs = ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"]
    dirs += [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and "shims" not in d]
    for d in dirs:
        for minor in range(SUPPORTED[0][1], SUPPORTED[1][1] + 1):
            exe = os.path.join(d, f"python3.{minor}")
            if os.access(exe, os.X_OK):
                yield exe


def label_for(info, pyenv_root):
    """3.11.7 for a pyenv install; 3.11.2-usr for /usr/bin/python3.11."""
    prefix = info["base_prefix"]
    if prefix.startswith(str(pyenv_root) + os.sep):
        return info["version"]
    origin = re.sub(r"[^A-Za-z0-9]+", "-", prefix.strip("/")).strip("-") or "root"
    return f"{info['version']}-{origin}"


def discover():
    pyenv_root = Path(os.path.realpath(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv"))
    found, seen, unsupported = [], set(), []
    for exe in candidate_paths():
        try:
            p = subprocess.run([exe, "-c", PROBE], capture_output=True, text=True, timeout=60,
                               env=clean_env())
            info = json.loads(p.stdout)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue
        if info["implementation"] != "cpython" or info["in_venv"]:
            continue
        ident = (info["base_prefix"], info["version"])
        if ident in seen:
            continue
        seen.add(ident)
        minor = tuple(info["minor"])
        if not SUPPORTED[0] <= minor <= SUPPORTED[1]:
            unsupported.append(info["version"])
            continue
        py = Python(exe, info["version"], minor, label_for(info, pyenv_root), info["base_prefix"])
        if not info["shared"]:
            py.excluded = "no shared libpython (built without --enable-shared)"
        elif not info["has_venv"]:
            py.excluded = "no venv/ensurepip module (e.g. Debian's python3.X-venv missing)"
        found.append(py)
    found.sort(key=lambda p: (p.minor, p.label))
    return found, sorted(set(unsupported), key=lambda v: [int(x) for x in v.split(".")])


def combos_for(pythons, pytests):
    out = []
    for py in pythons:
        for version in pytests:
            c = Combo(py, version)
            if py.excluded:
                c.excluded = py.excluded
            elif py.minor < PYTESTS.get(version, SUPPORTED[0]):
                need = PYTESTS[version]
                c.excluded = f"pytest {version.split('.')[0]} needs Python >= {need[0]}.{need[1]}"
            out.append(c)
    return out


def main_combo_ident():
    """(base prefix, Python version, pytest version) of ./.venv, which
    `./build.sh test` runs the full suite in."""
    py = ROOT / ".venv" / "bin" / "python"
    if not py.exists():
        return None
    code = ("import json, os, sys, pytest; print(json.dumps([os.path.realpath(sys.base_prefix), "
            "'%d.%d.%d' % sys.version_info[:3], pytest.__version__]))")
    p = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=clean_env())
    try:
        return tuple(json.loads(p.stdout))
    except ValueError:
        return None


# ------------------------------------------------------------- running

# What would make one combination's interpreter see another's files.  Other
# PYTHON* settings (PYTHONDONTWRITEBYTECODE, ...) pass, as in `./build.sh test`.
FOREIGN = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE",
           "PYTHONEXECUTABLE", "PYTHONSAFEPATH", "PYTHONNOUSERSITE", "__PYVENV_LAUNCHER__")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PF_")) and k not in FOREIGN}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run_logged(cmd, log, timeout, **kw):
    """Run cmd in its own process group, appending its output to log."""
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(str(c) for c in cmd)}\n")
        f.flush()
        proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, **kw)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            f.write(f"\n[matrix] timed out after {timeout}s\n")
            return None
        except BaseException:  # ^C: take the whole group down with us
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise


def reap(directory):
    """Kill what is left running from a combination's directory (daemons and
    zygotes leave the process group; after a timeout or ^C they may linger)."""
    if not os.path.isdir("/proc"):
        return
    prefix = str(directory) + os.sep
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            if exe.startswith(prefix):
                os.kill(int(pid), signal.SIGKILL)
        except OSError:
            continue


def prepare(c: Combo, cc: str):
    """Fresh venv, pytest + xdist, the binary: fills c.build."""
    d = OUT / c.key
    c.dir = str(d)
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    log = d / "log.txt"
    venv = d / "venv"
    py = venv / "bin" / "python"
    env = clean_env()
    t0 = time.monotonic()
    if run_logged([c.python.path, "-m", "venv", venv], log, 300, env=env) != 0:
        c.build = "venv creation failed"
        return
    rc = run_logged([py, "-m", "pip", "install", "-q", f"pytest=={c.pytest}", XDIST], log, 600, env=env)
    if rc != 0:
        c.build = f"pip install pytest=={c.pytest} failed"
        return
    p = subprocess.run([str(py), "-c", FLAGS], capture_output=True, text=True, env=env)
    flags = json.loads(p.stdout)
    cmd = [cc, "-std=c11", "-Wall", "-Wextra", "-Werror", "-O2", "-g", "-o", d / "pytest-fast",
           ROOT / "pytest_fast.c", *flags["cflags"], f'-DPF_BUILD_PYTHON="{py}"', *flags["ldflags"]]
    if run_logged(cmd, log, 600, env=env) != 0:
        c.build = "compile failed (see log)"
        return
    c.build = "ok"
    c.note = f"prepared in {time.monotonic() - t0:.0f}s"


def run_suite(c: Combo, smoke: bool, pytest_args, timeout, jobs):
    d = Path(c.dir)
    venv = d / "venv"
    files = [f for f in SUITE if (ROOT / f).exists()]
    junit = d / "junit.xml"
    # The test projects must not live under the checkout: its pyproject.toml
    # would become their rootdir.
    basetemp = Path(tempfile.mkdtemp(prefix=f"pf-matrix-{c.key}-"))
    cmd = [venv / "bin" / "python", "-m", "pytest", *files, "-q", "-rfE", "-p", "no:cacheprovider",
           "--basetemp", basetemp, "--junitxml", junit]
    if smoke:
        cmd += ["-k", " or ".join(SMOKE)]
    if jobs > 1:
        cmd += ["-n", str(jobs)]  # pytest-xdist: each test has its own daemon and sockets
    cmd += pytest_args
    env = clean_env(PF_BIN=str(d / "pytest-fast"), PF_BUILD_DIR=str(d), VIRTUAL_ENV=str(venv),
                    PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    t0 = time.monotonic()
    try:
        rc = run_logged(cmd, d / "log.txt", timeout, cwd=ROOT, env=env)
    finally:
        reap(d)
    c.seconds = time.monotonic() - t0
    shutil.rmtree(basetemp, ignore_errors=True)
    c.counts = junit_counts(junit)
    if rc is None:
        c.result = "TIMEOUT"
    elif rc == 0:
        c.result = "PASS"
    elif rc == 1:
        c.result = "FAIL"
    else:
        c.result = f"ERROR (pytest exit {rc})"


def run_packaging(py: Python, timeout):
    """test/test_packaging.py with this base interpreter: pip install of the
    package into a fresh venv.  Runs under the first matrix venv of that
    Python that has a pytest."""
    d = OUT / f"{py.label}-packaging"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    venv = d / "venv"
    log = d / "log.txt"
    env = clean_env()
    if run_logged([py.path, "-m", "venv", venv], log, 300, env=env) != 0 or \
            run_logged([venv / "bin" / "python", "-m", "pip", "install", "-q", "pytest"], log, 600,
                       env=env) != 0:
        return "ERROR (setup)", 0.0
    t0 = time.monotonic()
    basetemp = Path(tempfile.mkdtemp(prefix=f"pf-matrix-{py.label}-packaging-"))
    rc = run_logged([venv / "bin" / "python", "-m", "pytest", "test/test_packaging.py", "-q", "-rfE",
                     "-p", "no:cacheprovider", "--basetemp", basetemp], log, timeout, cwd=ROOT,
                    env=clean_env(PF_PACKAGING_PYTHON=py.path))
    shutil.rmtree(basetemp, ignore_errors=True)
    return ("PASS" if rc == 0 else "TIMEOUT" if rc is None else f"FAIL (exit {rc})"), time.monotonic() - t0


def junit_counts(path):
    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    if suite is None:
        return {}
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    n["passed"] = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    return n


def log_tail(c: Combo, lines=40):
    try:
        text = (Path(c.dir) / "log.txt").read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


# --------------------------------------------------------------- output

def describe(c: Combo):
    n = c.counts
    if c.excluded:
        return "excluded", c.excluded
    if c.result == "skipped":
        return "skipped", c.note
    if c.build != "ok":
        return "FAIL", c.build
    parts = []
    for key, word in (("passed", "passed"), ("failures", "failed"), ("errors", "errors"),
                      ("skipped", "skipped")):
        if n.get(key):
            parts.append(f"{n[key]} {word}")
    return c.result, ", ".join(parts) or "no tests ran"


def table(combos, packaging, mode):
    rows = [("python", "interpreter", "pytest", "result", "tests", "time")]
    for c in combos:
        result, detail = describe(c)
        secs = f"{c.seconds:.0f}s" if c.seconds else ""
        rows.append((c.python.label, c.python.path, c.pytest, result, detail, secs))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out = [f"pytest-fast support matrix ({mode}, {XDIST}, {time.strftime('%Y-%m-%d')}, "
           f"{os.uname().sysname} {os.uname().machine})", ""] + lines
    if packaging:
        out += ["", "| python | pip install . (test/test_packaging.py) | time |", "|---|---|---|"]
        out += [f"| {label} | {res} | {secs:.0f}s |" for label, (res, secs) in packaging.items()]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="run the smoke subset, not the whole suite")
    ap.add_argument("--skip-main", action="store_true",
                    help="skip the combination of ./.venv (./build.sh test runs it in full)")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="only combinations whose name starts with PREFIX (3.12, 3.11.2-usr, "
                         "3.9.18-pytest7.4.4); repeatable")
    ap.add_argument("--pytest", action="append", default=[], metavar="VERSION",
                    help=f"pytest versions (default: {', '.join(PYTESTS)})")
    ap.add_argument("--packaging", action="store_true",
                    help="also run test/test_packaging.py (pip install .) once per Python")
    ap.add_argument("--list", action="store_true", help="list the combinations and exit")
    ap.add_argument("-j", "--jobs", type=int, default=2,
                    help="pytest-xdist workers per combination (default 2; 1: no xdist)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="per-combination test timeout in seconds (default 300 smoke, 1200 full)")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    # The suites test Ctrl-C: the processes they start must not inherit an
    # ignored SIGINT (a non-interactive shell's background job has it ignored).
    # A handled signal is reset to the default across exec; an ignored one is not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cc = os.environ.get("CC", "cc")
    timeout = args.timeout or (300 if args.smoke else 1200)

    pythons, unsupported = discover()
    combos = combos_for(pythons, args.pytest or list(PYTESTS))
    if args.only:
        combos = [c for c in combos if any(c.key.startswith(p) for p in args.only)]
    if args.skip_main:
        ident = main_combo_ident()
        for c in combos:
            if ident and (c.python.base_prefix, c.python.version, c.pytest) == ident and not c.excluded:
                c.result, c.note = "skipped", "./.venv: the full suite runs there (./build.sh test)"
    if args.list:
        for c in combos:
            print(c.key, c.python.path, c.excluded or c.note)
        return 0
    if unsupported:
        say(f"outside the supported 3.9-3.13, not tested: {', '.join(unsupported)}")

    todo = [c for c in combos if not c.excluded and c.result != "skipped"]
    mode = ("smoke subset" if args.smoke else "full parity + plugin suites") + f", -n {args.jobs}"
    say(f"{len(todo)} combination(s) to run ({mode}); logs in {OUT}/<combination>/log.txt")
    OUT.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Prepare (venv, pip, compile) one combination ahead of the one under test.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        futures = {id(c): pool.submit(prepare, c, cc) for c in todo}
        for c in todo:
            futures[id(c)].result()
            if c.build != "ok":
                c.result = "FAIL"
                say(f"{c.key}: {c.build}\n{log_tail(c)}")
                continue
            run_suite(c, args.smoke, args.pytest_args, timeout, args.jobs)
            result, detail = describe(c)
            say(f"{c.key}: {result} {detail} in {c.seconds:.0f}s ({c.note})")
            if result != "PASS":
                print(log_tail(c, 60), file=sys.stderr)

    packaging = {}
    if args.packaging:
        selected = {c.python.label for c in combos if not c.excluded}
        for py in pythons:
            if py.label not in selected:
                continue
            res, secs = run_packaging(py, 900)
            packaging[py.label] = (res, secs)
            say(f"{py.label} packaging: {res} in {secs:.0f}s")

    text = table(combos, packaging, mode)
    elapsed = time.monotonic() - started
    (OUT / "table.md").write_text(text + "\n")
    (OUT / "results.json").write_text(json.dumps([asdict(c) for c in combos], indent=1, default=str))
    print(text)
    if unsupported:
        print(f"\nPresent but outside the supported 3.9-3.13: {', '.join(unsupported)}")
    failed = [c for c in todo if c.result != "PASS"]
    failed += [label for label, (res, _) in packaging.items() if res != "PASS"]
    passed = len(todo) - len([c for c in todo if c.result != "PASS"])
    print(f"\nmatrix wall time {elapsed / 60:.1f} min")
    # A plain closing line CI can read.
    print(f"matrix: {passed} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
