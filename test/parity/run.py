#!/usr/bin/env python3
"""Real-world parity harness for pytest-fast.

For every package listed in packages.txt (one line each) it fetches the
package's sdist from PyPI with pip, unpacks it, installs it and its test
requirements into a private Python 3.11 venv, and runs its test suite with

  pytest     python -m pytest                 (twice: the oracle, and a
                                               second run that finds tests
                                               plain pytest itself is flaky on)
  xdist      python -m pytest -n 2
  fast       pytest-fast --workers 2          (cold, then warm)
  plugin     python -m pytest --fast          (cold, then warm)

It compares every contender's {nodeid: outcome} map and exit code with the
oracle's and prints a table (also written to results.md).  Mismatches listed
in known.txt are "explained"; any other one is a bug until proven otherwise.

    test/parity/run.py                      all packages
    test/parity/run.py attrs toolz          only these (by name)
    test/parity/run.py --contenders fast    only the oracle + pytest-fast
    test/parity/run.py --list               show the parsed package list

Work files (sdists, venvs, unpacked sources, logs, dumps) live under
$PARITY_WORK (default /tmp/pytest-fast-parity); venvs are reused while the
package's line and constraints.txt are unchanged.  Exit status: 0 when no
unexplained mismatch for pytest-fast / pytest --fast, 1 otherwise, 2 on a
setup failure.
"""
from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BINARY = Path(os.environ.get("PYTEST_FAST_BIN", REPO / "pytest-fast"))
PLUGIN = REPO / "plugin.py"
OUTCOME_DUMP = REPO / "test" / "outcome_dump.py"
BASE_PYTHON = os.environ.get("PARITY_PYTHON", "/root/.pyenv/versions/3.11.7/bin/python")
WORK = Path(os.environ.get("PARITY_WORK", "/tmp/pytest-fast-parity"))
# What every venv gets besides the package's own test requirements: the
# versions the repo's own suite uses (test/requirements.txt).
RUNNER_REQS = ["pytest==9.2.0", "pytest-xdist==3.8.0"]
# --cov: every contender also runs with `--cov --cov-branch`; each run's data
# file is compared per file (lines and arcs) with the oracle's.
COV_REQS = ["pytest-cov", "coverage"]
COV_ARGS = ["--cov", "--cov-branch"]
COV_DUMP = """
import coverage, json, os, sys
data = coverage.CoverageData(basename=sys.argv[1])
data.read()
root = os.getcwd()
rel = {f: os.path.relpath(f, root) for f in data.measured_files()}
# the suite's files only: the harness's plugins (parity_dump) run in the controller
json.dump({r: [sorted(data.lines(f) or ()), sorted(data.arcs(f) or ())]
           for f, r in rel.items() if not r.startswith("..")}, open(sys.argv[2], "w"))
"""

# contender key -> column title; "pytest" is the oracle
COLUMNS = [
    ("pytest", "pytest"),
    ("pytest2", "pytest (2nd)"),
    ("xdist", "pytest -n 2"),
    ("fast-cold", "pytest-fast cold"),
    ("fast-warm", "pytest-fast warm"),
    ("plugin-cold", "pytest --fast cold"),
    ("plugin-warm", "pytest --fast warm"),
]
OURS = ("fast-cold", "fast-warm", "plugin-cold", "plugin-warm")
COV = False
MAX_LISTED = 8  # mismatches listed per package and contender; the rest go to a file


# --------------------------------------------------------------------------- #
# packages.txt and known.txt
# --------------------------------------------------------------------------- #

@dataclass
class Package:
    """One line of packages.txt:

        SPEC | PYTEST ARGS | EXTRA TEST REQUIREMENTS | OPTIONS

    SPEC is a pinned requirement (name==version); the other fields are
    optional.  OPTIONS are shell words KEY=VALUE:
      name=N        the row's name (default: the project name)
      dir=D         run (and install) from this subdirectory of the sdist
      install=S     what to pip install, relative to the run dir (default "-e .")
      env=K=V       an environment variable for every contender (repeatable)
      timeout=S     per-run timeout in seconds (default 900)
    """
    spec: str
    args: list[str]
    reqs: list[str]
    name: str
    dist: str
    version: str
    subdir: str = ""
    install: list[str] = field(default_factory=lambda: ["-e", "."])
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 900.0
    line: str = ""


def parse_packages(path: Path) -> list[Package]:
    out = []
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        parts = [p.strip() for p in line.split("|")]
        parts += [""] * (4 - len(parts))
        spec, args, reqs, opts = parts[:4]
        if "==" not in spec:
            sys.exit(f"{path}:{lineno}: pin the version: {spec!r} (name==version)")
        dist, version = (s.strip() for s in spec.split("==", 1))
        pkg = Package(spec=spec, args=shlex.split(args), reqs=shlex.split(reqs),
                      name=dist, dist=dist, version=version, line=line)
        for word in shlex.split(opts):
            key, _, value = word.partition("=")
            if key == "name":
                pkg.name = value
            elif key == "dir":
                pkg.subdir = value
            elif key == "install":
                pkg.install = shlex.split(value)
            elif key == "env":
                k, _, v = value.partition("=")
                pkg.env[k] = v
            elif key == "timeout":
                pkg.timeout = float(value)
            else:
                sys.exit(f"{path}:{lineno}: unknown option {key!r}")
        out.append(pkg)
    names = [p.name for p in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        sys.exit(f"{path}: duplicate names {sorted(dup)}: add name=... to tell them apart")
    return out


@dataclass
class Known:
    package: str
    contenders: list[str]
    nodeid: str  # fnmatch pattern
    reason: str

    def covers(self, package: str, contender: str, nodeid: str) -> bool:
        return (fnmatch.fnmatchcase(package, self.package)
                and any(fnmatch.fnmatchcase(contender, c) for c in self.contenders)
                and fnmatch.fnmatchcase(nodeid, self.nodeid))


def parse_known(path: Path) -> list[Known]:
    """known.txt: PACKAGE | CONTENDERS (comma list, globs) | NODEID (glob) | REASON"""
    out = []
    if not path.exists():
        return out
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in raw.split("|", 3)]
        if len(parts) != 4:
            sys.exit(f"{path}:{lineno}: expected PACKAGE | CONTENDERS | NODEID | REASON")
        out.append(Known(parts[0], [c.strip() for c in parts[1].split(",")], parts[2], parts[3]))
    return out


# --------------------------------------------------------------------------- #
# setup: sdist, venv, install
# --------------------------------------------------------------------------- #

def log(msg: str) -> None:
    print(f"parity: {msg}", file=sys.stderr, flush=True)


def run_logged(cmd: list[str], logfile: Path, **kw) -> int:
    with open(logfile, "a") as f:
        f.write(f"\n$ {shlex.join(map(str, cmd))}\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, **kw).returncode


def fetch_sdist(pkg: Package, pdir: Path, logfile: Path) -> Path:
    dl = pdir / "sdist"
    dl.mkdir(parents=True, exist_ok=True)
    have = [p for p in dl.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2"))]
    if not have:
        rc = run_logged([BASE_PYTHON, "-m", "pip", "download", "--no-deps",
                         "--no-binary", pkg.dist, "-d", str(dl), pkg.spec], logfile)
        have = [p for p in dl.iterdir() if p.name.endswith((".tar.gz", ".zip", ".tar.bz2"))]
        if rc != 0 or not have:
            raise SetupError(f"pip download {pkg.spec} failed (see {logfile})")
    return have[0]


def unpack(archive: Path, dest: Path) -> Path:
    """A fresh copy of the sdist's tree: every harness run starts from it."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(dest)
    else:
        with tarfile.open(archive) as t:
            t.extractall(dest, filter="data")
    (top,) = [p for p in dest.iterdir()]
    return top


def setup_venv(pkg: Package, pdir: Path, rundir: Path, logfile: Path) -> Path:
    venv = pdir / "venv"
    py = venv / "bin" / "python"
    constraints = HERE / "constraints.txt"
    key = hashlib.sha256("\n".join([
        pkg.line, BASE_PYTHON, " ".join(RUNNER_REQS),
        constraints.read_text() if constraints.exists() else "",
    ]).encode()).hexdigest()
    stamp = venv / ".parity-stamp"
    if py.exists() and stamp.exists() and stamp.read_text() == key:
        # an editable install points at rundir, which was just re-unpacked at
        # the same path; a non-editable one does not care
        return py
    if venv.exists():
        shutil.rmtree(venv)
    log(f"{pkg.name}: creating venv and installing (log: {logfile})")
    if run_logged([BASE_PYTHON, "-m", "venv", str(venv)], logfile) != 0:
        raise SetupError(f"venv creation failed (see {logfile})")
    cflags = ["-c", str(constraints)] if constraints.exists() else []
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *cflags]
    if run_logged([*pip, *runner_reqs(pkg), *pkg.reqs], logfile) != 0:
        raise SetupError(f"installing the test requirements failed (see {logfile})")
    if pkg.install and run_logged([*pip, *pkg.install], logfile, cwd=rundir) != 0:
        raise SetupError(f"pip install {shlex.join(pkg.install)} failed (see {logfile})")
    run_logged([str(py), "-m", "pip", "freeze", "--all"], logfile)
    stamp.write_text(key)
    return py


class SetupError(Exception):
    pass


def req_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def runner_reqs(pkg: Package) -> list[str]:
    """RUNNER_REQS, minus those the package's line pins itself (e.g. an older
    pytest for a suite that needs one)."""
    own = {req_name(r) for r in pkg.reqs}
    return [r for r in RUNNER_REQS if req_name(r) not in own]


# --------------------------------------------------------------------------- #
# running the contenders
# --------------------------------------------------------------------------- #

@dataclass
class Result:
    rc: int | None = None          # None: not run / timed out
    wall: float = 0.0
    outcomes: dict[str, str] | None = None
    coverage: dict[str, list] | None = None   # --cov: file -> [lines, arcs]
    note: str = ""                 # why there is no result
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)  # nodeid, oracle, ours
    explained: list[tuple[str, str, str, str]] = field(default_factory=list)  # + reason
    rc_mismatch: bool = False


def plugin_available() -> str:
    """"" if `pytest --fast` can be run, else why not."""
    if not PLUGIN.exists():
        return "plugin.py missing"
    return ""


def shim_dir() -> Path:
    """A directory for PYTHONPATH with just what the harness loads: plugin.py
    (for `-p plugin`), test/outcome_dump.py and parity_dump.py."""
    d = WORK / "shim"
    d.mkdir(parents=True, exist_ok=True)
    for src in (OUTCOME_DUMP, PLUGIN, HERE / "parity_dump.py"):
        link = d / src.name
        if link.is_symlink() or link.exists():
            link.unlink()
        if src.exists():
            link.symlink_to(src)
    return d


def base_env(pkg: Package, venv_python: Path, shim: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PYTHONPATH", "VIRTUAL_ENV", "HYPOTHESIS_"))
           and k not in ("OUTCOME_DUMP", "PARITY_DUMP", "PYTHONHOME")}
    venv = venv_python.parent.parent
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(shim)
    env["PYTEST_FAST_BIN"] = str(BINARY)
    env.update(pkg.env)
    return env


def run_one(cmd: list[str], env: dict[str, str], cwd: Path, dump: Path, logfile: Path,
            timeout: float) -> Result:
    if dump.exists():
        dump.unlink()
    res = Result()
    with open(logfile, "w") as f:
        f.write(f"$ cd {cwd}\n$ {shlex.join(map(str, cmd))}\n")
        f.flush()
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            res.rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            res.note = f"timeout {timeout:.0f}s"
        res.wall = time.monotonic() - t0
        f.write(f"\n[parity] rc={res.rc} wall={res.wall:.2f}s\n")
    if res.rc is not None:
        try:
            res.outcomes = json.loads(dump.read_text())
        except (OSError, ValueError):
            res.note = f"no outcomes; log: {last_line(logfile)}"
    return res


def last_line(logfile: Path) -> str:
    """The log's last line that says something, e.g. the exception a run died of."""
    lines = [l.strip() for l in logfile.read_text(errors="replace").splitlines()
             if l.strip() and not l.startswith("[parity]") and not l.lstrip().startswith("^")]
    raised = [l for l in lines if re.match(r"[\w.]*(Error|Warning|Exception|Exit)\b", l)]
    text = (raised or lines or [""])[-1]
    return text if len(text) <= 140 else text[:137] + "..."


def daemon_files(address: str) -> list[Path]:
    """The socket and what the daemon keeps beside it (log, lock, layers plan)."""
    sock = Path(address)
    stem = sock.with_suffix("")
    return [sock] + [stem.with_suffix(s) for s in (".log", ".lock", ".layers", ".pid")]


def stop_daemon(address: str, env: dict[str, str], cwd: Path, logfile: Path,
                keep_log: Path | None = None) -> None:
    """Stop the daemon at address and remove its files, so that the next cold
    run is cold: no daemon, and no layers plan left by an earlier one."""
    with open(logfile, "a") as f:
        try:
            subprocess.run([str(BINARY), "--address", address, "--stop"], cwd=cwd, env=env,
                           stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           timeout=60)
        except subprocess.TimeoutExpired:
            f.write("--stop timed out\n")
    files = daemon_files(address)
    if keep_log is not None and files[1].exists():
        shutil.copyfile(files[1], keep_log)
    for p in files:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def settle(address: str, env: dict[str, str], cwd: Path, limit: float = 120.0) -> None:
    """Before a warm run: pause as a person would between two runs, then wait
    until the daemon is idle and done with any background re-build (its
    --status unchanged for a second), so that "warm" means warm."""
    time.sleep(2.0)
    deadline = time.monotonic() + limit
    last = None
    while time.monotonic() < deadline:
        try:
            proc = subprocess.run([str(BINARY), "--address", address, "--status"], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=30,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            continue
        if proc.returncode != 0:
            return  # no daemon (the cold run's died): the warm run will say so
        out = proc.stdout
        text = "\n".join(line for line in out.splitlines() if not line.startswith("idle"))
        if text and text == last and "booting" not in text:
            return
        last = text
        time.sleep(1.0)


def run_package(pkg: Package, contenders: set[str], known: list[Known]) -> dict:
    pdir = WORK / pkg.name
    logs = pdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    setup_log = logs / "setup.log"
    setup_log.write_text("")
    t_setup = time.monotonic()
    archive = fetch_sdist(pkg, pdir, setup_log)
    top = unpack(archive, pdir / "src")
    rundir = top / pkg.subdir if pkg.subdir else top
    if not rundir.is_dir():
        raise SetupError(f"{pkg.subdir} is not in the sdist")
    py = setup_venv(pkg, pdir, rundir, setup_log)
    t_setup = time.monotonic() - t_setup
    shim = shim_dir()
    env = base_env(pkg, py, shim)
    digest = hashlib.sha1(str(pdir).encode()).hexdigest()[:8]
    addr_cli = f"/tmp/pfp-{digest}-c.sock"
    addr_plugin = f"/tmp/pfp-{digest}-p.sock"
    dumps = pdir / "dumps"
    dumps.mkdir(exist_ok=True)
    dump_env = lambda key: {**env, "PARITY_DUMP": str(dumps / f"{key}.json")}  # noqa: E731

    pytest_cmd = [str(py), "-m", "pytest", "-p", "parity_dump"]
    cmds = {
        "pytest": (pytest_cmd + pkg.args, dump_env("pytest")),
        "pytest2": (pytest_cmd + pkg.args, dump_env("pytest2")),
        "xdist": (pytest_cmd + ["-n", "2"] + pkg.args, dump_env("xdist")),
    }
    for key in ("fast-cold", "fast-warm"):
        cmds[key] = ([str(BINARY), "--address", addr_cli, "--workers", "2",
                      "--python", str(py), "--dump", str(dumps / f"{key}.json"), *pkg.args], env)
    for key in ("plugin-cold", "plugin-warm"):
        cmds[key] = ([str(py), "-m", "pytest", "-p", "plugin", "--fast",
                      "--fast-address", addr_plugin, "--fast-workers", "2",
                      "-p", "parity_dump", *pkg.args], dump_env(key))

    if COV:
        for cmd, _ in cmds.values():
            cmd += COV_ARGS
    why_no_plugin = plugin_available()
    results: dict[str, Result] = {}
    # a daemon left over from an interrupted harness run would make "cold" warm
    daemons = {"fast": addr_cli, "plugin": addr_plugin}
    for addr in daemons.values():
        stop_daemon(addr, env, rundir, logs / "stop.log")
    try:
        for key, _title in COLUMNS:
            if key not in contenders and key not in ("pytest",):
                continue
            if key.startswith("plugin") and why_no_plugin:
                results[key] = Result(note=why_no_plugin)
                continue
            cmd, cenv = cmds[key]
            if key.endswith("-warm") and results.get(key.replace("-warm", "-cold")):
                settle(daemons[key.split("-")[0]], env, rundir)
            log(f"{pkg.name}: {key} ...")
            if COV:
                for old in rundir.glob(".coverage*"):
                    old.unlink()
            results[key] = run_one(cmd, cenv, rundir, dumps / f"{key}.json",
                                   logs / f"{key}.log", pkg.timeout)
            r = results[key]
            if COV:
                r.coverage = dump_coverage(py, rundir, dumps / f"{key}.cov.json", logs / f"{key}.log")
            log(f"{pkg.name}: {key} rc={r.rc} {r.wall:.1f}s "
                f"{len(r.outcomes or {})} outcomes {r.note}")
    finally:
        for name, addr in daemons.items():
            stop_daemon(addr, env, rundir, logs / "stop.log", logs / f"daemon-{name}.log")

    (pdir / "results.json").write_text(json.dumps(
        {k: {"rc": r.rc, "wall": r.wall, "note": r.note} for k, r in results.items()}, indent=1))
    row = compare(pkg, results, known)
    row["setup"] = t_setup
    return row


def dump_coverage(py: Path, rundir: Path, out: Path, logfile: Path) -> dict[str, list] | None:
    """The run's combined .coverage as {file: [lines, arcs]} (through the
    venv's coverage.py); None when there is none, or worker files remain."""
    if out.exists():
        out.unlink()
    left = sorted(p.name for p in rundir.glob(".coverage.*"))
    if left or not (rundir / ".coverage").exists():
        with open(logfile, "a") as f:
            f.write(f"[parity] coverage: no combined .coverage, or files left over: {left}\n")
        return None
    if run_logged([str(py), "-c", COV_DUMP, str(rundir / ".coverage"), str(out)], logfile,
                  cwd=rundir) != 0:
        return None
    return json.loads(out.read_text())


def compare_coverage(results: dict[str, Result], flaky_files: set[str]) -> None:
    """Per file, the lines and arcs of every contender against the oracle's."""
    want = results["pytest"].coverage
    for key, r in results.items():
        if key in ("pytest", "pytest2") or r.rc is None:
            continue
        if want is None or r.coverage is None:
            r.mismatches.append(("[coverage]", "data" if want else "none", "data" if r.coverage else "none"))
            continue
        for f in sorted(set(want) | set(r.coverage)):
            if f in flaky_files:
                continue
            a, b = want.get(f), r.coverage.get(f)
            if a != b:
                what = "absent" if a is None or b is None else \
                    f"{len(set(map(tuple, a[1])) ^ set(map(tuple, b[1])))} arcs, " \
                    f"{len(set(a[0]) ^ set(b[0]))} lines differ"
                r.mismatches.append((f"[coverage] {f}", "pytest --cov", what))


def load_results(pkg: Package) -> dict[str, Result]:
    """The last run's results of pkg, for --report."""
    pdir = WORK / pkg.name
    saved = json.loads((pdir / "results.json").read_text())
    results = {}
    for key, d in saved.items():
        r = Result(rc=d["rc"], wall=d["wall"], note=d["note"])
        dump = pdir / "dumps" / f"{key}.json"
        if r.rc is not None and dump.exists():
            r.outcomes = json.loads(dump.read_text())
        results[key] = r
    return results


def compare(pkg: Package, results: dict[str, Result], known: list[Known]) -> dict:
    oracle = results["pytest"]
    flaky: dict[str, tuple[str, str]] = {}
    rc_flaky = False
    if "pytest2" in results and results["pytest2"].outcomes is not None and oracle.outcomes:
        o2 = results["pytest2"]
        for nid in set(oracle.outcomes) | set(o2.outcomes):
            a, b = oracle.outcomes.get(nid, "absent"), o2.outcomes.get(nid, "absent")
            if a != b:
                flaky[nid] = (a, b)
        rc_flaky = o2.rc != oracle.rc
    if oracle.outcomes is not None:
        for key, r in results.items():
            if key == "pytest" or r.outcomes is None:
                continue
            for nid in sorted(set(oracle.outcomes) | set(r.outcomes)):
                if nid in flaky and key != "pytest2":
                    continue
                a, b = oracle.outcomes.get(nid, "absent"), r.outcomes.get(nid, "absent")
                if a == b:
                    continue
                k = next((k for k in known if k.covers(pkg.name, key, nid)), None)
                if k is not None:
                    r.explained.append((nid, a, b, k.reason))
                elif key != "pytest2":
                    r.mismatches.append((nid, a, b))
            r.rc_mismatch = r.rc != oracle.rc and not rc_flaky
    if COV:
        # files whose data differ between two plain runs (hypothesis, timing)
        o1, o2 = oracle.coverage or {}, (results.get("pytest2") or Result()).coverage or {}
        compare_coverage(results, {f for f in set(o1) | set(o2) if o1.get(f) != o2.get(f)}
                         if "pytest2" in results else set())
    for key, r in results.items():
        if key != "pytest":
            (WORK / pkg.name / "logs" / f"{key}.mismatches").write_text(
                "".join(f"{nid}\t{a}\t{b}\n" for nid, a, b in r.mismatches))
    return {"pkg": pkg, "results": results, "flaky": flaky, "rc_flaky": rc_flaky}


# --------------------------------------------------------------------------- #
# report
# --------------------------------------------------------------------------- #

def cell(key: str, r: Result | None) -> str:
    if r is None:
        return "–"
    if r.rc is None or r.outcomes is None:
        return f"**no result** (rc={r.rc})" if key in OURS else f"no result (rc={r.rc})"
    text = f"{r.wall:.1f}s"
    if key == "pytest":
        return f"{text} rc={r.rc}"
    if key == "pytest2":
        return text
    marks = []
    strong = "**" if key in OURS else ""
    if r.mismatches:
        marks.append(f"{strong}{len(r.mismatches)} mismatch{strong}")
    if r.rc_mismatch:
        marks.append(f"{strong}rc={r.rc}{strong}")
    if r.explained:
        marks.append(f"{len(r.explained)} known")
    return f"{text} " + (", ".join(marks) if marks else "✓")


def render(rows: list[dict], setup_failures: list[tuple[str, str]], total: float | None) -> str:
    head = ["package", "version", "tests", "flaky"] + [t for _k, t in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        pkg, res = row["pkg"], row["results"]
        oracle = res["pytest"]
        n = len(oracle.outcomes or {})
        lines.append("| " + " | ".join(
            [pkg.name, pkg.version, str(n), str(len(row["flaky"]))]
            + [cell(k, res.get(k)) for k, _t in COLUMNS]) + " |")
    out = ["# pytest-fast parity results", "",
           f"pytest-fast: `{BINARY}`; Python: `{BASE_PYTHON}`; "
           f"{' '.join(RUNNER_REQS)}; workers: 2. Cells: wall time, then ✓ (same "
           "{nodeid: outcome} map and exit code as the oracle, the first `python -m pytest`), "
           "or the count of unexplained mismatches / a differing exit code, and of known "
           "(explained, see known.txt) differences.", "", *lines, ""]
    details = []
    for row in rows:
        pkg, res = row["pkg"], row["results"]
        if row["flaky"]:
            details.append(f"* {pkg.name}: plain pytest disagrees with itself (excluded): "
                           + ", ".join(f"`{n}` ({a}/{b})" for n, (a, b) in sorted(row["flaky"].items())))
        for key, title in COLUMNS:
            r = res.get(key)
            if r is None:
                continue
            verdict = "**unexplained**" if key in OURS else "differs (xdist, not ours)"
            for nid, a, b in r.mismatches[:MAX_LISTED]:
                details.append(f"* {pkg.name} / {title}: `{nid}`: pytest {a}, this {b} — {verdict}")
            if len(r.mismatches) > MAX_LISTED:
                details.append(f"* {pkg.name} / {title}: ... and {len(r.mismatches) - MAX_LISTED} "
                               f"more (all in {WORK / pkg.name / 'logs' / (key + '.mismatches')})")
            if r.rc_mismatch:
                log_file = WORK / pkg.name / "logs" / f"{key}.log"
                said = last_line(log_file) if log_file.exists() else ""
                details.append(f"* {pkg.name} / {title}: exit code {r.rc}, pytest {res['pytest'].rc}"
                               f" — {verdict}" + (f"; log: `{said}`" if said else ""))
            for nid, a, b, why in r.explained:
                details.append(f"* {pkg.name} / {title}: `{nid}`: pytest {a}, this {b} — known: {why}")
            if r.note and (r.rc is None or r.outcomes is None):
                details.append(f"* {pkg.name} / {title}: no result (rc={r.rc}): {r.note} "
                               f"(log: {WORK / pkg.name / 'logs' / (key + '.log')})")
    for name, why in setup_failures:
        details.append(f"* {name}: setup failed: {why}")
    if details:
        out += ["## Details", "", *details, ""]
    if total is not None:
        setup = sum(row.get("setup", 0.0) for row in rows)
        out.append(f"Total harness time: {total:.0f}s, of which {setup:.0f}s fetching "
                   "and installing (venvs are reused while their line is unchanged).")
    return "\n".join(out) + "\n"


def freeze(pkgs: list[Package]) -> int:
    """Write constraints.txt: every distribution the packages' venvs hold, at
    the version they hold, except the runner (pytest, pytest-xdist: pinned per
    line) and the projects under test (pinned by their SPEC)."""
    skip = {"pip", "setuptools", "wheel", *(req_name(r) for r in RUNNER_REQS)}
    pins: dict[str, set[str]] = {}
    for pkg in pkgs:
        py = WORK / pkg.name / "venv" / "bin" / "python"
        if not py.exists():
            log(f"{pkg.name}: no venv yet; run the harness first")
            continue
        out = subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            if "==" not in line or line.startswith(("-e", "#")):
                continue
            name, version = line.split("==", 1)
            if req_name(name) in skip or req_name(name) == req_name(pkg.dist):
                continue
            pins.setdefault(req_name(name), set()).add(version.strip())
    lines = []
    for name in sorted(pins):
        if len(pins[name]) > 1:
            log(f"{name}: venvs disagree ({', '.join(sorted(pins[name]))}): not pinned")
            continue
        lines.append(f"{name}=={next(iter(pins[name]))}")
    path = HERE / "constraints.txt"
    path.write_text("# Test dependencies of the parity packages, pinned (run.py --freeze).\n"
                    + "\n".join(lines) + "\n")
    log(f"wrote {path} ({len(lines)} pins)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="only these packages (by name)")
    ap.add_argument("--packages", type=Path, default=HERE / "packages.txt")
    ap.add_argument("--known", type=Path, default=HERE / "known.txt")
    ap.add_argument("--contenders", default="pytest2,xdist,fast,plugin",
                    help="comma list of pytest2, xdist, fast, plugin (default: all)")
    ap.add_argument("--results", type=Path, default=HERE / "results.md",
                    help="where to write the table ('-' not to write it)")
    ap.add_argument("--extra-args", default="",
                    help="pytest arguments appended for every package and contender "
                         "(diagnostics: e.g. to see past one known failure)")
    ap.add_argument("--list", action="store_true", help="print the parsed package list")
    ap.add_argument("--report", action="store_true",
                    help="run nothing: compare and print the last run's results again")
    ap.add_argument("--cov", action="store_true",
                    help="every contender also runs with --cov --cov-branch; compare the "
                         "per-file lines and arcs with plain pytest --cov's")
    ap.add_argument("--freeze", action="store_true",
                    help="write constraints.txt from the venvs the last run made")
    opts = ap.parse_args()
    global COV
    COV = opts.cov
    if COV:
        RUNNER_REQS.extend(COV_REQS)

    pkgs = parse_packages(opts.packages)
    for p in pkgs:
        p.args += shlex.split(opts.extra_args)
    if opts.names:
        unknown = set(opts.names) - {p.name for p in pkgs}
        if unknown:
            sys.exit(f"parity: not in {opts.packages}: {', '.join(sorted(unknown))}")
        pkgs = [p for p in pkgs if p.name in opts.names]
    if opts.list:
        for p in pkgs:
            print(f"{p.name}: {p.spec} dir={p.subdir or '.'} args={p.args} reqs={p.reqs} "
                  f"install={p.install} env={p.env}")
        return 0
    if opts.freeze:
        return freeze(pkgs)
    if not BINARY.exists():
        sys.exit(f"parity: no binary at {BINARY} (./build.sh)")
    wanted = {c.strip() for c in opts.contenders.split(",") if c.strip()}
    contenders = {"pytest"}
    for c in wanted:
        if c in ("fast", "plugin"):
            contenders |= {f"{c}-cold", f"{c}-warm"}
        elif c in ("pytest2", "xdist"):
            contenders.add(c)
        else:
            sys.exit(f"parity: unknown contender {c!r}")
    known = parse_known(opts.known)
    WORK.mkdir(parents=True, exist_ok=True)

    t0 = time.monotonic()
    rows, failures = [], []
    for pkg in pkgs:
        if opts.report:
            if (WORK / pkg.name / "results.json").exists():
                rows.append(compare(pkg, load_results(pkg), known))
            continue
        try:
            rows.append(run_package(pkg, contenders, known))
        except SetupError as exc:
            log(f"{pkg.name}: {exc}")
            failures.append((pkg.name, str(exc)))
    text = render(rows, failures, None if opts.report else time.monotonic() - t0)
    print(text)
    if str(opts.results) != "-":
        opts.results.write_text(text)
    bad = any(r.mismatches or r.rc_mismatch or (r.outcomes is None and r.note != "plugin.py missing")
              for row in rows for k, r in row["results"].items() if k in OURS)
    if failures:
        return 2
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
