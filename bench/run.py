#!/usr/bin/env python3
"""pytest-fast benchmark harness (stdlib only).

    python3 bench/run.py [--quick] [--bin PATH] [--python PY] [--only S1,S2] ...

Creates bench/.work/venv (plain pytest, xdist, ours) and bench/.work/venv-upstream
(the original PyPI pytest-fast), builds our binary against the bench venv's python
(PYTHON=<venv python> ./build.sh), generates the projects (make_app default size, a
one-test project, 5,000 trivial tests, a CPU-bound suite) and measures, interleaved
round-robin, every contender on every scenario:

  full_suite     whole make_app suite
  single_test    one test by node id
  edit_test      edit a test file, then run the suite (edit -> result), watcher off/on
  edit_app       edit an app module at module level (app/services/svc0.py, imported by
                 every svc: every test is affected)
  edit_svc       edit the body of one function of that service (the tests that ran it
                 are affected)
  watch_save     one `pytest-fast --watch` session: save -> first (affected) result and
                 -> the rest done, after each kind of edit
  edit_recollect edit a test file, then run just that test: ours with the incremental
                 re-collect (one test module imported again) vs the collected level
                 rebuilt in full (PYTEST_FAST_INCREMENTAL=0); also the level alone, as
                 the daemon log times it
  cov_full       whole make_app suite with --cov=app: pytest, pytest -n 2, ours warm
                 (CLI and pytest --fast), and ours warm without coverage (its overhead)
  floor          a one-test project
  tp_trivial     5,000 trivial tests at 1..nproc workers
  tp_cpu         CPU-bound suite at 1..nproc workers
  memory         total PSS of the contender's process tree during a run

Writes bench/results.json, bench/results.md and bench/results.png (via bench/plot.py,
run by the venv's python).  Everything else goes under bench/.work/.
"""
import argparse
import datetime
import hashlib
import json
import os
import pickle
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

WATCH_PAUSE = 2.0   # seconds between an edit and the run, for watcher rows

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORK = os.path.join(HERE, ".work")
LOGS = os.path.join(WORK, "logs")
PROJECTS = os.path.join(WORK, "projects")

# Variables removed from every contender's environment.  PYTHONDONTWRITEBYTECODE above
# all: users have .pyc caches, so every contender runs with bytecode caching on.
DROP_ENV = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PYTHONPATH", "PYTHONHOME",
            "PYTHONSTARTUP", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
            "PYTEST_XDIST_AUTO_NUM_WORKERS", "VIRTUAL_ENV", "OUTCOME_DUMP")
DROP_PREFIX = ("PYTEST_FAST_", "PFBENCH_")

RUN_ID = uuid.uuid4().hex[:12]          # tags every process this invocation starts
TTL = "3600"
CPU_LOOP = 1_200_000                    # ~50 ms of pure-Python work on a 2020s x86 core
CPU_TESTS = (8, 5)                      # files x tests per file
TRIVIAL_TESTS = (50, 100)               # files x tests per file = 5,000
SINGLE_NODEID = "tests/test_r3.py::test_get"   # uses the session-scoped TestClient
BUSY = 0.25                             # foreign load (cores) above which results are flagged


def log(msg=""):
    print(msg, flush=True)


def fmt_s(x):
    return "-" if x is None else ("%.3f" % x if x < 10 else "%.2f" % x)


# ----------------------------------------------------------------------------- processes

def _read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


class Procs:
    """A /proc view: pid -> (ppid, starttime), and which bench key a process carries.

    Every contender command gets PFBENCH_RUN=<this invocation> and PFBENCH_KEY=<daemon
    key> in its environment; daemons, zygotes, watchers and workers inherit it, so the
    processes of one contender are found whatever their parentage (detached daemons
    included) and only processes this invocation started are ever signalled."""

    def __init__(self):
        self._tags = {}                 # (pid, starttime) -> (run, key, cmdline)

    @staticmethod
    def snapshot():
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            st = _read("/proc/%s/stat" % name)
            if not st:
                continue
            f = st[st.rfind(")") + 2:].split()
            try:
                out[int(name)] = (int(f[1]), int(f[19]))
            except (IndexError, ValueError):
                pass
        return out

    def tag(self, pid, start):
        k = (pid, start)
        t = self._tags.get(k)
        if t is None:
            env = _read("/proc/%d/environ" % pid, "rb") or b""
            run = key = None
            for kv in env.split(b"\0"):
                if kv.startswith(b"PFBENCH_RUN="):
                    run = kv[12:].decode(errors="replace")
                elif kv.startswith(b"PFBENCH_KEY="):
                    key = kv[12:].decode(errors="replace")
            cmd = (_read("/proc/%d/cmdline" % pid, "rb") or b"").replace(b"\0", b" ")
            t = (run, key, cmd.decode(errors="replace").strip())
            if len(self._tags) > 20000:
                self._tags.clear()
            self._tags[k] = t
        return t

    def ours(self, key=None, address=None, snap=None):
        """pids started by this invocation (optionally: carrying key / naming address)."""
        snap = snap if snap is not None else self.snapshot()
        me = os.getpid()
        pids = []
        for pid, (_ppid, start) in snap.items():
            if pid == me:
                continue
            run, k, cmd = self.tag(pid, start)
            if run != RUN_ID:
                continue
            if key is None or k == key or (address and address in cmd):
                pids.append(pid)
        return pids


PROCS = Procs()


def _pidfd(pid):
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def wait_gone(pids, timeout):
    """Wait (on pidfds, no polling) until all pids have exited; return the survivors."""
    fds = {}
    for pid in pids:
        fd = _pidfd(pid)
        if fd is not None:
            fds[fd] = pid
    deadline = time.monotonic() + timeout
    try:
        while fds:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(fds), [], [], left)
            for fd in ready:
                os.close(fd)
                del fds[fd]
        return list(fds.values())
    finally:
        for fd in fds:
            os.close(fd)


def kill_pids(pids, grace=5.0):
    if not pids:
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    left = wait_gone(pids, grace)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    wait_gone(left, 5.0)


def foreign_load(seconds=1.0):
    """Cores' worth of CPU used system-wide during a 1 s window in which the bench itself is
    idle (between scenarios its daemons sit in accept()): other users of the machine."""
    def read():
        v = [int(x) for x in (_read("/proc/stat") or "cpu 0 0 0 0 0").splitlines()[0].split()[1:9]]
        return sum(v), v[3] + (v[4] if len(v) > 4 else 0)
    t1, i1 = read()
    time.sleep(seconds)                 # a measurement window, not synchronisation
    t2, i2 = read()
    total = t2 - t1
    return round((total - (i2 - i1)) / total * (os.cpu_count() or 1), 2) if total > 0 else 0.0


# ------------------------------------------------------------------------- memory sampler

def smaps_rollup(pid):
    txt = _read("/proc/%d/smaps_rollup" % pid)
    if not txt:
        return None
    pss = priv = 0
    for line in txt.splitlines():
        if line.startswith("Pss:"):
            pss = int(line.split()[1])
        elif line.startswith("Private_Clean:") or line.startswith("Private_Dirty:"):
            priv += int(line.split()[1])
    return pss, priv


class MemSampler(threading.Thread):
    """Samples, every ~10 ms while a run is in flight, the Pss of every process of one
    contender: the client command's descendants plus every process carrying its daemon
    key (daemon, zygote/forkserver, workers, watcher).  Keeps the maximum total and,
    per process, its maximum private (Private_Clean + Private_Dirty) memory."""

    def __init__(self, root_pid, key, address, resident):
        super().__init__(daemon=True)
        self.root, self.key, self.address = root_pid, key, address
        self.resident = resident        # {(pid, start)} present before the run started
        self.stop_ev = threading.Event()
        self.best = None                # (total_kb, {(pid, start): (pss, priv)})
        self.maxpriv = {}               # (pid, start) -> (priv_kb, cmd)
        self.parents = set()            # (pid, start) seen with a child in the tree
        self.samples = 0

    def members(self, snap):
        kids = {}
        for pid, (ppid, _) in snap.items():
            kids.setdefault(ppid, []).append(pid)
        seeds = {self.root} if self.root in snap else set()
        if self.key:
            seeds.update(PROCS.ours(self.key, self.address, snap))
        out, stack = set(), list(seeds)
        while stack:
            p = stack.pop()
            if p in out:
                continue
            out.add(p)
            stack.extend(kids.get(p, ()))
        return out

    def role(self, k):
        """client: the command itself; resident: there before the run (daemon,
        zygote/forkserver, helpers); leader: created during the run and forked others
        (a per-run leader); worker: created during the run, never forked."""
        if k[0] == self.root:
            return "client"
        if k in self.resident:
            return "resident"
        return "leader" if k in self.parents else "worker"

    def sample(self):
        snap = PROCS.snapshot()
        per, total = {}, 0
        members = self.members(snap)
        for pid in members:
            if snap[pid][0] in members:
                self.parents.add((snap[pid][0], snap[snap[pid][0]][1]))
            r = smaps_rollup(pid)
            if r is None:
                continue
            k = (pid, snap[pid][1])
            per[k] = (r[0], r[1])
            total += r[0]
            if r[1] > self.maxpriv.get(k, (0,))[0]:
                self.maxpriv[k] = (r[1], PROCS.tag(*k)[2][:100])
        self.samples += 1
        if per and (self.best is None or total > self.best[0]):
            self.best = (total, per)

    def run(self):
        while True:
            try:
                self.sample()
            except Exception as e:  # a sampler must never kill the bench
                log("    (memory sampler: %r)" % (e,))
            if self.stop_ev.wait(0.01):
                return


# ------------------------------------------------------------------------------- runner

class Env:
    def __init__(self, venv, upvenv, binpath, nproc, plxvenv=None):
        self.venv, self.upvenv, self.bin, self.nproc = venv, upvenv, binpath, nproc
        self.plxvenv = plxvenv
        self.py = os.path.join(venv, "bin", "python")
        self.uppy = os.path.join(upvenv, "bin", "python")
        base = {k: v for k, v in os.environ.items()
                if k not in DROP_ENV and not k.startswith(DROP_PREFIX)}
        self.base = base
        self.rundir = os.path.join(WORK, "run")
        os.makedirs(self.rundir, exist_ok=True)
        if len(self.rundir) > 80:       # AF_UNIX paths are limited to 107 bytes
            self.rundir = tempfile.mkdtemp(prefix="pfb-")
        self.addresses = {}             # key -> (family, address, project dir)

    def env_for(self, venv, key, extra=None):
        env = dict(self.base)
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
        env["VIRTUAL_ENV"] = venv
        env["PFBENCH_RUN"] = RUN_ID
        env["PFBENCH_KEY"] = key or ""
        env.update(extra or {})
        return env

    def address(self, key, family, proj):
        a = os.path.join(self.rundir, re.sub(r"[^A-Za-z0-9]+", "-", key) + ".sock")
        self.addresses[key] = (family, a, proj)
        return a


class Contender:
    """One way of running tests.  family: pytest | xdist | upstream | ours;
    mode: plain | cli | plugin."""

    def __init__(self, cid, label, family, mode, workers=None, cold=False, watch=False,
                 daemon=None, args=(), env=None, prep=None):
        self.id, self.label, self.family, self.mode = cid, label, family, mode
        self.workers, self.cold, self.watch = workers, cold, watch
        self.daemon = daemon            # daemon identity shared e.g. by ours cold + warm
        self.args = tuple(args)         # arguments of this contender alone (ours: --affected too)
        self.env = dict(env or {})      # ours CLI, plain pytest: variables of this contender alone
        self.prep = prep                # prep(project) before each of its runs, untimed
        self.status, self.reason = "ok", None

    def key(self, proj, workers):
        if self.family not in ("upstream", "ours"):
            return None
        return "%s@%s@w%s" % (self.daemon or self.id, proj.name, workers)


class Project:
    def __init__(self, name, path, watch_dirs):
        self.name, self.path, self.watch_dirs = name, path, watch_dirs


class Bench:
    def __init__(self, env, args):
        self.E, self.args = env, args
        self.results = []
        self.warm = set()               # daemon keys known to be warm
        self.ours_watch_flag = None

    # -- commands
    def spec(self, c, proj, pytest_args=(), workers=None):
        """(argv, env, key, address) for contender c on project proj."""
        E = self.E
        w = workers or c.workers or E.nproc
        key = c.key(proj, w)
        pytest_args = (*pytest_args, *c.args)
        if c.family == "pytest":
            return [E.py, "-m", "pytest", "-q", *pytest_args], E.env_for(E.venv, None, c.env), None, None
        if c.family == "xdist":
            return ([E.py, "-m", "pytest", "-q", "-n", str(c.workers or w), *pytest_args],
                    E.env_for(E.venv, None), None, None)
        if c.family == "parallex":
            # its default mode refuses make_app: a session fixture starts a thread
            return ([os.path.join(E.plxvenv, "bin", "python"), "-m", "pytest", "-q", "--parallel=fork",
                     "--parallel-workers=%d" % w, "--parallex-no-session-scope", *pytest_args],
                    E.env_for(E.plxvenv, None), None, None)
        addr = E.address(key, c.family, proj.path)
        if c.family == "upstream":
            extra = {"PYTEST_FAST_WATCH_DIRS": proj.watch_dirs}
            if c.mode == "cli":
                argv = [os.path.join(E.upvenv, "bin", "pytest-fast"), "--address", addr,
                        "--workers", str(w), "--ttl", TTL]
                if c.watch:
                    argv.append("--with-watcher")
            else:
                extra["PYTEST_FAST_ADDRESS"] = addr
                argv = [E.uppy, "-m", "pytest", "-q", "--fast", "--fast-workers", str(w),
                        "--fast-ttl", TTL, *pytest_args]
            return argv, E.env_for(E.upvenv, key, extra), key, addr
        # ours
        if c.mode == "cli":
            argv = [E.bin, "--address", addr, "--workers", str(w), "--ttl", TTL]
            if c.watch:
                argv.append(self.ours_watch_flag)
            argv += list(pytest_args)
            return argv, E.env_for(E.venv, key, c.env), key, addr
        extra = {"PYTHONPATH": REPO, "PYTEST_FAST_BIN": E.bin, "PYTEST_FAST_ADDRESS": addr,
                 "PYTEST_FAST_WORKERS": str(w), "PYTEST_FAST_TTL": TTL}
        argv = [E.py, "-m", "pytest", "-p", "plugin", "--fast", "-q", *pytest_args]
        return argv, E.env_for(E.venv, key, extra), key, addr

    def run_cmd(self, argv, env, cwd, logpath, sampler_args=None, timeout=None):
        """Run one command, wall-clock timed; returns dict(wall, rc, text[, mem])."""
        timeout = timeout or self.args.timeout
        os.makedirs(os.path.dirname(logpath), exist_ok=True)
        resident = None
        if sampler_args is not None:
            snap = PROCS.snapshot()
            key, addr = sampler_args
            resident = {(p, snap[p][1]) for p in PROCS.ours(key, addr, snap)} if key else set()
        with open(logpath, "wb") as out:
            t0 = time.perf_counter()
            p = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            sampler = None
            if sampler_args is not None:
                sampler = MemSampler(p.pid, sampler_args[0], sampler_args[1], resident)
                sampler.start()
            # A blocking wait: Popen.wait(timeout) polls with sleeps that
            # back off from 0.5 to 50 ms, which would round a 16 ms run up to
            # 32 ms.  The timeout is a timer that kills the process group.
            expired = threading.Event()

            def expire():
                expired.set()
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    pass

            killer = threading.Timer(timeout, expire)
            killer.start()
            rc = p.wait()
            wall = time.perf_counter() - t0
            killer.cancel()
            if expired.is_set():
                rc = "timeout"
            if sampler:
                sampler.stop_ev.set()
                sampler.join()
        text = _read(logpath, "rb").decode(errors="replace")
        res = {"wall": wall, "rc": rc, "text": text}
        if sampler:
            res["sampler"] = sampler
        return res

    # -- daemons
    def stop(self, key):
        """Stop one daemon (and its watcher) and wait until all its processes are gone."""
        if key not in self.E.addresses:
            return
        family, addr, proj = self.E.addresses[key]
        if family == "ours" and os.path.exists(self.E.bin):
            try:
                subprocess.run([self.E.bin, "--stop", "--address", addr], cwd=proj,
                               env=self.E.env_for(self.E.venv, key), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            left = wait_gone(PROCS.ours(key, addr), 10.0)
        elif family == "upstream":
            upstream_shutdown(addr)
            left = PROCS.ours(key, addr)
        else:
            left = []
        kill_pids(left)
        self.warm.discard(key)

    def stop_all(self):
        for key in list(self.E.addresses):
            self.stop(key)
        kill_pids(PROCS.ours())

    def load_check(self):
        v = foreign_load()
        if v > BUSY:
            log("  !! %.2f cores busy outside the bench right now: timings will be noisy" % v)
        return v

    # -- bookkeeping
    def new_row(self, c, extra=None):
        row = {"contender": c.id, "label": c.label, "family": c.family, "mode": c.mode,
               "status": c.status}
        if c.reason:
            row["reason"] = c.reason
        row.update(extra or {})
        return row

    def finish_row(self, row, samples):
        if row["status"] != "ok":
            return row
        walls = [s["wall"] for s in samples]
        row["samples"] = [round(w, 4) for w in walls]
        row["rc"] = [s["rc"] for s in samples]
        if walls:
            row["median"] = round(statistics.median(walls), 4)
            row["min"] = round(min(walls), 4)
            row["max"] = round(max(walls), 4)
        else:
            row["status"] = "error"
            row["reason"] = row.get("reason") or "no sample"
        if samples:
            row["counts"] = parse_counts(samples[-1]["text"])
            pars = [p for p in (parse_par(s["text"]) for s in samples) if p is not None]
            if pars:
                row["par"] = round(statistics.median(pars), 2)
        return row

    def check_outcomes(self, scen):
        """Exit code (and outcome counts where parseable) vs plain pytest's."""
        ref = next((r for r in scen["rows"] if r["contender"] == "pytest" and r["status"] == "ok"),
                   None)
        if not ref:
            return
        want = ref["rc"][0] if ref.get("rc") else None
        mism = []
        for r in scen["rows"]:
            if r["status"] != "ok":
                continue
            r["rc_expected"] = want
            r["rc_match"] = all(x == want for x in r["rc"])
            if not r["rc_match"]:
                mism.append("%s: rc %s, plain pytest %s" % (r["contender"], r["rc"], want))
            if r.get("counts") and ref.get("counts"):
                r["counts_match"] = r["counts"] == ref["counts"]
        scen["rc_mismatches"] = mism

    # -- scenarios
    def timed(self, sid, title, proj, entries, reps, warmups, pytest_args=(), note=None):
        """entries: [(contender, workers, extra_row_fields)]; round-robin, warm-ups dropped."""
        log("\n== %s: %s (%d warm-up + %d rounds)" % (sid, title, warmups, reps))
        t_start = time.perf_counter()
        load = self.load_check()
        rows, samples, specs = [], {}, {}
        for c, w, extra in entries:
            rid = c.id if w is None else "%s@w%d" % (c.id, w)
            row = self.new_row(c, dict(extra or {}, id=rid))
            if w is not None:
                row["workers"] = w
            rows.append(row)
            if row["status"] == "ok":
                specs[rid] = (c, self.spec(c, proj, pytest_args, w))
                samples[rid] = []
        for rnd in range(warmups + reps):
            for rid, (c, (argv, env, key, _addr)) in specs.items():
                if rnd < warmups and self.args.quick and (c.family == "xdist" or c.cold):
                    continue            # quick: warm only .pyc (plain pytest) and daemons
                if c.cold:
                    self.stop(key)
                if c.prep:
                    c.prep(proj)
                res = self.run_cmd(argv, env, proj.path, os.path.join(LOGS, sid, rid + ".log"))
                if key:
                    self.warm.add(key)
                tag = "warm-up" if rnd < warmups else "round %d" % (rnd - warmups + 1)
                log("  %-9s %-34s %8.3fs  rc=%s" % (tag, rid, res["wall"], res["rc"]))
                if rnd >= warmups:
                    samples[rid].append(res)
        for row in rows:
            if row["status"] == "ok":
                self.finish_row(row, samples[row["id"]])
        scen = {"id": sid, "title": title, "project": proj.name, "repetitions": reps,
                "warmups": warmups, "foreign_load_cores": load,
                "pytest_args": list(pytest_args), "rows": rows,
                "elapsed_s": round(time.perf_counter() - t_start, 1)}
        if note:
            scen["note"] = note
        self.check_outcomes(scen)
        self.results.append(scen)
        return scen

    def save_edit(self, proj, kind, marker):
        """The next numbered edit of that kind, written now: (its number, when)."""
        self.edit_seq += 1
        try:
            os.unlink(marker)
        except OSError:
            pass
        t0 = time.perf_counter()
        write_edit(proj, kind, self.edit_seq, marker)
        return self.edit_seq, t0

    def edit(self, sid, title, proj, kind, entries, reps):
        """Edit-to-result: write the edit, then immediately run the suite; the wall clock
        runs from just before the write to the command's exit.  The edited code writes a
        marker, so a stale (unreloaded) result is detected and recorded."""
        log("\n== %s: %s (warm-up + %d rounds)" % (sid, title, reps))
        t_start = time.perf_counter()
        load = self.load_check()
        marker = os.path.join(WORK, "edit-marker")
        rows, samples, specs = [], {}, {}
        for c in entries:
            row = self.new_row(c, {"id": c.id})
            rows.append(row)
            if row["status"] == "ok":
                specs[c.id] = (c, self.spec(c, proj))
                samples[c.id] = []
        watchers = [specs[i][1][2] for i in specs if specs[i][0].watch]
        for rnd in range(1 + reps):
            for rid, (c, (argv, env, key, _addr)) in specs.items():
                logp = os.path.join(LOGS, sid, rid + ".log")
                if rnd == 0 and c.watch:
                    continue            # isolated below before each of its rounds anyway
                for k in watchers:      # a watcher pre-warms on every edit: isolate it
                    if k != key and k in self.warm:
                        self.stop(k)
                warmed = False
                if key and key not in self.warm:
                    # 1st run boots the daemon (and the watcher), 2nd finds them settled
                    for _ in range(2 if c.watch else 1):
                        self.run_cmd(argv, env, proj.path, logp)
                    self.warm.add(key)
                    warmed = True
                if rnd == 0:            # warm-up: pyc caches and daemons, not timed
                    if not warmed:
                        self.run_cmd(argv, env, proj.path, logp)
                    log("  warm-up   %-34s" % rid)
                    continue
                n, t0 = self.save_edit(proj, kind, marker)
                if c.watch:
                    # The watcher scenario: the user saves, then runs
                    # 2 s later; the wall is the run alone.
                    time.sleep(WATCH_PAUSE)
                    t0 = time.perf_counter()
                res = self.run_cmd(argv, env, proj.path, logp)
                res["wall"] = time.perf_counter() - t0
                res["verified"] = edit_seen(marker, kind, n)
                if c.family == "ours":
                    res["level"] = last_level(_addr)
                log("  round %-3d %-34s %8.3fs  rc=%s%s" % (
                    rnd, rid, res["wall"], res["rc"], "" if res["verified"] else "  STALE RESULT"))
                samples[rid].append(res)
        for row in rows:
            if row["status"] == "ok":
                s = samples[row["id"]]
                self.finish_row(row, s)
                row["verified"] = [x["verified"] for x in s]
                row["stale_results"] = sum(1 for x in s if not x["verified"])
                levels = [x["level"] for x in s if x.get("level")]
                if levels:
                    # the collected level this run waited for: (seconds, path) from the daemon log
                    row["level_median"] = statistics.median(t for t, _, _ in levels)
                    row["level_paths"] = sorted({how for _, how, _ in levels})
                    hooks = [h for _, _, h in levels if h is not None]
                    if hooks:
                        row["hooks_median"] = statistics.median(hooks)
        for k in watchers:
            self.stop(k)
        scen = {"id": sid, "title": title, "project": proj.name, "repetitions": reps,
                "warmups": 1, "edit": kind, "foreign_load_cores": load, "rows": rows,
                "elapsed_s": round(time.perf_counter() - t_start, 1),
                "note": "wall = edit write -> command exit, command issued right after the "
                        "edit (no think time); watcher rows: the run is issued %.0f s after the "
                        "edit and the wall is the run alone; full suite; warm daemon before "
                        "each edit" % WATCH_PAUSE}
        self.check_outcomes(scen)
        self.results.append(scen)
        return scen

    def watch_save(self, sid, title, proj, c, kinds, reps):
        """Save -> result under `pytest-fast --watch`: one watch session stays up; each
        round saves an edit of each kind and times, from just before the write, until the
        affected run's closing line (the first result the user sees) and until the rest
        of the selection is done.  Plain pytest's full suite runs in the same rounds, as
        the reference."""
        log("\n== %s: %s (warm-up + %d rounds)" % (sid, title, reps))
        t_start = time.perf_counter()
        load = self.load_check()
        marker = os.path.join(WORK, "edit-marker")
        ref = Contender("pytest", "pytest (full suite, reference)", "pytest", "plain")
        rows = [self.new_row(ref, {"id": "pytest"})]
        for kind in kinds:
            for part, what in (("first", "first result"), ("all", "the rest done")):
                rows.append(self.new_row(c, {"id": "ours_watch_%s_%s" % (part, kind),
                                             "label": "ours --watch: save → %s (%s edit)" % (what, kind)}))
        if c.status != "ok":
            self.results.append({"id": sid, "title": title, "project": proj.name, "rows": rows})
            return
        argv, env, key, _addr = self.spec(c, proj)
        logp = os.path.join(LOGS, sid, "watch.log")
        os.makedirs(os.path.dirname(logp), exist_ok=True)
        proc = subprocess.Popen([*argv, "--watch", "-q"], env=env, cwd=proj.path, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        lines = []                      # (time, line), appended by the reader thread
        cond = threading.Condition()

        def reader():
            with open(logp, "wb") as out:
                for raw in proc.stdout:
                    out.write(raw)
                    with cond:
                        lines.append((time.perf_counter(), raw.decode(errors="replace")))
                        cond.notify_all()
            with cond:
                lines.append((time.perf_counter(), None))
                cond.notify_all()

        def until(pattern, start):
            """(time, index) of the first line from lines[start:] matching pattern."""
            rx = re.compile(pattern)
            deadline = time.monotonic() + self.args.timeout
            i = start
            with cond:
                while True:
                    while i < len(lines):
                        t, text = lines[i]
                        if text is None:
                            raise RuntimeError("pytest-fast --watch exited; see %s" % logp)
                        if rx.search(text):
                            return t, i + 1
                        i += 1
                    if not cond.wait(deadline - time.monotonic()):
                        raise RuntimeError("no %r in time; see %s" % (pattern, logp))

        threading.Thread(target=reader, daemon=True).start()
        samples = {r["id"]: [] for r in rows}
        try:
            _, pos = until(r"waiting for changes", 0)
            for rnd in range(1 + reps):
                ref_argv, ref_env, _, _ = self.spec(ref, proj)
                res = self.run_cmd(ref_argv, ref_env, proj.path, os.path.join(LOGS, sid, "pytest.log"))
                if rnd:
                    samples["pytest"].append(res)
                for kind in kinds:
                    n, t0 = self.save_edit(proj, kind, marker)
                    t_first, p1 = until(r"^= .* in [\d.]+s =$", pos)
                    t_all, pos = until(r"waiting for changes", p1)
                    text = "".join(line for _, line in lines[p1 - 1:p1])
                    ok = edit_seen(marker, kind, n)
                    log("  round %-3d %-5s edit: first result %7.3fs, rest done %7.3fs%s" % (
                        rnd, kind, t_first - t0, t_all - t0, "" if ok else "  STALE RESULT"))
                    if rnd:
                        for part, t in (("first", t_first), ("all", t_all)):
                            samples["ours_watch_%s_%s" % (part, kind)].append(
                                {"wall": t - t0, "rc": 0, "text": text, "verified": ok})
        except RuntimeError as exc:
            for r in rows[1:]:
                r["status"], r["reason"] = "error", str(exc)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
            proc.wait()
            self.stop(key)
        for r in rows:
            if r["status"] == "ok":
                self.finish_row(r, samples[r["id"]])
                r.pop("counts", None)   # one closing line each: not the suite's counts
                if r["id"] != "pytest":
                    r["stale_results"] = sum(1 for x in samples[r["id"]] if not x["verified"])
        first = {r["id"]: r["median"] for r in rows if r["status"] == "ok" and r.get("median")}
        ratios = {}
        if "pytest" in first:
            for kind in kinds:
                k = "ours_watch_first_%s" % kind
                if k in first:
                    ratios["save → first result, %s edit / pytest full suite" % kind] = round(
                        first[k] / first["pytest"], 3)
        for name, v in ratios.items():
            log("  %-52s %.3f" % (name, v))
        self.results.append({"id": sid, "title": title, "project": proj.name, "repetitions": reps,
                             "warmups": 1, "foreign_load_cores": load, "rows": rows, "ratios": ratios,
                             "elapsed_s": round(time.perf_counter() - t_start, 1),
                             "note": "one --watch session; wall = edit write -> the affected run's "
                                     "closing line (first) / the watcher waiting again (all)"})

    def memory(self, proj, entries, samples_n):
        log("\n== memory: total PSS of each contender's processes during a full run "
            "(%d sampled run(s), warm)" % samples_n)
        t_start = time.perf_counter()
        load = self.load_check()
        rows = []
        for c in entries:
            row = self.new_row(c, {"id": c.id})
            rows.append(row)
            if row["status"] != "ok":
                continue
            argv, env, key, addr = self.spec(c, proj)
            logp = os.path.join(LOGS, "memory", c.id + ".log")
            if key and key not in self.warm:                  # warm-up: daemon warm
                self.run_cmd(argv, env, proj.path, logp)
                self.warm.add(key)
            best = None
            for _ in range(samples_n):
                res = self.run_cmd(argv, env, proj.path, logp, sampler_args=(key, addr))
                s = res["sampler"]
                if s.best and (best is None or s.best[0] > best[0][0]):
                    best = (s.best, s.samples, res, s)
            if not best:
                row["status"] = "error"
                row["reason"] = "no memory sample"
                continue
            (total, per), nsamp, res, s = best
            by_role = {}
            for k, (pss, _priv) in per.items():
                r = s.role(k)
                by_role[r] = by_role.get(r, 0) + pss
            procs = [(v[0], s.role(k), v[1]) for k, v in s.maxpriv.items()]
            wpriv = sorted(p for p, r, _ in procs if r == "worker")
            row.update({
                "total_pss_mb": round(total / 1024, 1),
                "processes": len(per),
                "pss_mb_by_role": {k: round(v / 1024, 1) for k, v in sorted(by_role.items())},
                "workers_seen": len(wpriv),
                "worker_private_mb_median": round(statistics.median(wpriv) / 1024, 1) if wpriv else None,
                "worker_private_mb_max": round(max(wpriv) / 1024, 1) if wpriv else None,
                "worker_private_mb": [round(x / 1024, 1) for x in wpriv],
                "samples_taken": nsamp, "rc": [res["rc"]], "wall": round(res["wall"], 3),
                "processes_detail": sorted(
                    ({"private_mb": round(p / 1024, 1), "role": r, "cmd": c}
                     for p, r, c in procs), key=lambda d: -d["private_mb"])[:12],
            })
            log("  %-34s total PSS %7.1f MB in %d procs; workers %d, private median %s MB" % (
                c.id, row["total_pss_mb"], row["processes"], len(wpriv),
                row["worker_private_mb_median"]))
        self.results.append({
            "id": "memory", "title": "Memory: max total PSS during a full-suite run",
            "project": proj.name, "kind": "memory", "rows": rows, "foreign_load_cores": load,
            "elapsed_s": round(time.perf_counter() - t_start, 1),
            "note": "Pss summed over the client, its descendants and every process carrying the "
                    "contender's daemon key (daemon, zygote/forkserver, workers), sampled every "
                    "~10 ms from /proc/PID/smaps_rollup. Roles: client = the command; resident = there "
                    "before the run (daemon, zygote/forkserver); leader = created during the run "
                    "and forked others; worker = created during the run, forked nothing. "
                    "private = Private_Clean + Private_Dirty (max over the run)"})


# ---------------------------------------------------------------------------- upstream io

def upstream_shutdown(addr, timeout=30.0):
    """Send the upstream daemon ("shutdown",) (4-byte BE length + pickle) and wait for its
    reply or EOF.  Best effort."""
    if not os.path.exists(addr):
        return
    payload = pickle.dumps(("shutdown",), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(addr)
            s.sendall(struct.pack("!I", len(payload)) + payload)
            while s.recv(65536):
                pass
    except OSError:
        pass


# ---------------------------------------------------------------------------- parsing

COUNT_RE = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)\b")


def parse_counts(text):
    for line in reversed(text.splitlines()[-60:]):
        found = COUNT_RE.findall(line)
        if found and any(k in ("passed", "failed") for _, k in found):
            out = {}
            for n, k in found:
                k = "error" if k.startswith("error") else k
                out[k] = out.get(k, 0) + int(n)
            return out
    return None


def parse_par(text):
    m = re.findall(r"par\.\s*:\s*([0-9.]+)x", text)
    return float(m[-1]) if m else None


# ---------------------------------------------------------------------------- projects

def w(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


INI = "[pytest]\ntestpaths = tests\nmarkers =\n    slow: slow tests\n"


def make_projects(make_app):
    if os.path.isdir(PROJECTS):
        shutil.rmtree(PROJECTS)
    os.makedirs(PROJECTS)
    projs = {}
    for name in ("app", "app_edit"):
        dest = os.path.join(PROJECTS, name)
        subprocess.run([sys.executable, make_app, dest], check=True)
        projs[name] = Project(name, dest, "app,tests")
    # the edit scenario's extra test: proves the edited code actually ran
    orig = os.path.join(PROJECTS, "app_edit", "app", "services", "svc0.py")
    shutil.copy(orig, orig + ".orig")
    write_edit(projs["app_edit"], "test", 0, os.path.join(WORK, "edit-marker"))

    one = os.path.join(PROJECTS, "one")
    w(os.path.join(one, "pytest.ini"), INI)
    w(os.path.join(one, "tests", "test_one.py"), "def test_one():\n    assert True\n")
    projs["one"] = Project("one", one, "tests")

    triv = os.path.join(PROJECTS, "trivial")
    w(os.path.join(triv, "pytest.ini"), INI)
    files, per = TRIVIAL_TESTS
    for f in range(files):
        w(os.path.join(triv, "tests", "test_t%02d.py" % f),
          "".join("def test_%d():\n    pass\n\n" % i for i in range(per)))
    projs["trivial"] = Project("trivial", triv, "tests")

    cpu = os.path.join(PROJECTS, "cpu")
    w(os.path.join(cpu, "pytest.ini"), INI)
    files, per = CPU_TESTS
    for f in range(files):
        body = ("def work(n):\n    s = 0\n    for i in range(n):\n        s += i * i % 7\n"
                "    return s\n\n" + "".join(
                    "def test_%d():\n    assert work(%d) > 0\n\n" % (i, CPU_LOOP)
                    for i in range(per)))
        w(os.path.join(cpu, "tests", "test_c%d.py" % f), body)
    projs["cpu"] = Project("cpu", cpu, "tests")
    return projs


EDIT_KINDS = ("test", "app", "svc")   # the marker's fields, in this order


LEVEL_LINE = re.compile(r"collected zygote ready: .*, ([\d.]+)s, (incremental|full)"
                        r"(?:.*; pytest's collection hooks ([\d.]+)s)?")


def last_level(address):
    """(seconds, "incremental" | "full", seconds of pytest's own collection
    hooks in it or None) of the last collected level the daemon at address
    built, from its log; None if it has built none."""
    text = _read(address[:-5] + ".log" if address.endswith(".sock") else address + ".log") or ""
    found = LEVEL_LINE.findall(text)
    if not found:
        return None
    secs, how, hooks = found[-1]
    return float(secs), how, float(hooks) if hooks else None


def edit_seen(marker, kind, n):
    """Whether the run saw edit n: its edited code wrote the marker."""
    got = (_read(marker) or "").split()
    return len(got) == len(EDIT_KINDS) and got[EDIT_KINDS.index(kind)] == str(n)


# svc0 gains one function at setup; the "svc" edit changes its body only,
# which is what an edit inside one service is: a module-level change (the
# "app" edit) affects every importer, a body edit the tests that ran it.
SVC_MARK = "\n\ndef bench_mark():\n    return %d\n"


def write_edit(proj, kind, n, marker):
    tests = os.path.join(proj.path, "tests", "test_bench_edit.py")
    svc = os.path.join(proj.path, "app", "services", "svc0.py")
    if kind == "test" or n == 0:
        w(tests, "from app.services import svc0\n\nMARK = %d\n\n\n"
                 "def test_bench_edit():\n"
                 "    with open(%r, 'w') as f:\n"
                 "        f.write('%%s %%s %%s' %% (MARK, getattr(svc0, 'BENCH_EDIT', None), svc0.bench_mark()))\n"
                 % (n, marker))
    # Each kind changes its own line of the current svc0: an edit of one kind
    # never undoes the other's (that would be a module-level change too).
    if n == 0:
        w(svc, _read(svc + ".orig") + SVC_MARK % 0)
    elif kind == "app":
        w(svc, re.sub(r"\nBENCH_EDIT = \d+\n", "", _read(svc)) + "\nBENCH_EDIT = %d\n" % n)
    elif kind == "svc":
        w(svc, re.sub(r"(def bench_mark\(\):\n    return )\d+", r"\g<1>%d" % n, _read(svc)))


# ------------------------------------------------------------------------------- setup

def drop_record(proj):
    """No --affected record: the next recording run records every test."""
    try:
        os.unlink(os.path.join(proj.path, ".pytest_cache", "d", "pytest-fast", "affected.json"))
    except OSError:
        pass


def ratios_of(scen, pairs):
    """{name: median(a) / median(b)} for the (name, a, b) whose rows both ran."""
    med = {r["id"]: r["median"] for r in scen["rows"] if r["status"] == "ok" and r.get("median")}
    out = {}
    for name, a, b in pairs:
        if a in med and b in med:
            out[name] = round(med[a] / med[b], 3)
            log("  %-52s %.3f" % (name, out[name]))
    return out


def sh(argv, logpath, env=None, cwd=None, timeout=1800):
    os.makedirs(os.path.dirname(logpath), exist_ok=True)
    with open(logpath, "ab") as out:
        return subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                              stdin=subprocess.DEVNULL, timeout=timeout).returncode


def ensure_venv(path, python, req, fresh):
    """Create path with `python -m venv` and pip-install req; reuse it while the
    requirement files and the base interpreter are unchanged (stamp file)."""
    h = hashlib.sha256()
    for f in sorted(os.listdir(HERE)):
        if f.startswith("requirements") and f.endswith(".txt"):
            h.update(f.encode() + b"\0" + open(os.path.join(HERE, f), "rb").read())
    h.update(os.path.realpath(python).encode())
    stamp = h.hexdigest()
    stamp_file = os.path.join(path, ".bench-stamp")
    py = os.path.join(path, "bin", "python")
    if not fresh and os.path.exists(py) and _read(stamp_file) == stamp:
        return None
    shutil.rmtree(path, ignore_errors=True)
    logp = os.path.join(LOGS, "setup-%s.log" % os.path.basename(path))
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if sh([python, "-m", "venv", path], logp, env) != 0:
        return "python -m venv failed (see %s)" % logp
    if sh([py, "-m", "pip", "install", "-q", "-r", os.path.join(HERE, req)], logp, env) != 0:
        return "pip install -r %s failed (see %s)" % (req, logp)
    w(stamp_file, stamp)
    return None


def py_info(py, code):
    try:
        return subprocess.run([py, "-c", code], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def machine_info(base_python):
    cpu = "unknown"
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = None
    for line in (_read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    pins = {}
    for line in (_read(os.path.join(HERE, "requirements.txt")) or "").splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return {
        "cpu_model": cpu,
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "mem_gb": mem,
        "kernel": os.uname().release,
        "python": py_info(base_python, "import sys; print(sys.version.split()[0])"),
        "python_path": base_python,
        "pytest": pins.get("pytest"),
    }


def header(m):
    log("=" * 78)
    log("pytest-fast benchmark  %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S"))
    log("  CPU      : %s" % m["cpu_model"])
    log("  cores    : %s (nproc), %s in affinity mask, %s GB RAM, Linux %s" % (
        m["nproc"], m["affinity_cpus"], m["mem_gb"], m["kernel"]))
    log("  Python   : %s (%s)" % (m["python"], m["python_path"]))
    log("  pytest   : %s" % m["pytest"])
    log("  .pyc     : PYTHONDONTWRITEBYTECODE is UNSET for every contender (bytecode caching on);")
    log("             also dropped: %s" % ", ".join(x for x in DROP_ENV if x != "PYTHONDONTWRITEBYTECODE"))
    log("=" * 78)


# ------------------------------------------------------------------------------ output

ORDER = ["full_suite", "cov_full", "single_test", "edit_test", "edit_app", "edit_svc", "edit_recollect",
         "watch_save",
         "floor", "tp_trivial", "tp_cpu"]


def ratio_refs(scen):
    ok = {r["id"]: r for r in scen["rows"] if r["status"] == "ok" and r.get("median")}
    plain = ok.get("pytest") or ok.get("pytest@w1")
    return ok, plain


def write_markdown(data, path):
    m = data["machine"]
    timed = [s for s in data["scenarios"] if s.get("kind") != "memory"]
    L = ["<!-- generated by bench/run.py from bench/results.json; do not edit by hand -->",
         "",
         "Machine: %s, %s cores, Python %s, pytest %s, Linux %s. `.pyc` caching on. "
         "Wall-clock seconds, median (min–max) of %s runs after warm-up%s; contenders "
         "interleaved round-robin." % (
             m["cpu_model"], m["nproc"], m.get("venv_python") or m["python"],
             m.get("venv_pytest") or m["pytest"], m["kernel"],
             data["config"]["reps"], " (quick mode)" if data["config"]["quick"] else ""),
         "",
         "| Scenario | Contender | median s | min s | max s | pytest ÷ this | this ÷ ours warm | notes |",
         "|---|---|---:|---:|---:|---:|---:|---|"]
    loads = [s.get("foreign_load_cores") or 0 for s in data["scenarios"]]
    if loads and max(loads) > BUSY:
        L.insert(3, "")
        L.insert(4, "**Warning:** other processes used up to %.2f of %s cores while this ran "
                 "(`foreign_load_cores` per scenario in results.json): timings are noisy." % (
                     max(loads), m["nproc"]))
    if not timed:
        L = L[:-3]
    for scen in timed:
        ok, plain = ratio_refs(scen)
        for r in scen["rows"]:
            notes = []
            if r["status"] != "ok":
                L.append("| %s | %s | – | – | – | – | – | %s: %s |" % (
                    scen["title"], r["label"], r["status"], r.get("reason", "")))
                continue
            wk = r.get("workers")
            ours = ok.get("ours_cli@w%d" % wk if wk else "ours_cli") or \
                (ok.get("ours_cli@w1") if r["contender"] == "pytest" and wk is None else None)
            vp = "%.2f×" % (plain["median"] / r["median"]) if plain else "–"
            vo = "%.2f×" % (r["median"] / ours["median"]) if ours else "–"
            if r.get("rc_match") is False:
                notes.append("rc %s ≠ pytest %s" % (sorted(set(map(str, r["rc"]))), r["rc_expected"]))
            if r.get("counts_match") is False:
                notes.append("outcomes differ: %s" % r.get("counts"))
            if r.get("par") is not None:
                notes.append("par. %.2f×" % r["par"])
            if r.get("stale_results"):
                notes.append("%d stale result(s)" % r["stale_results"])
            L.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                scen["title"], r["label"], fmt_s(r["median"]), fmt_s(r["min"]), fmt_s(r["max"]),
                vp, vo, "; ".join(notes)))
    for scen in timed:
        if scen.get("ratios"):
            L += ["", "%s, ratios of medians: %s." % (scen["title"], "; ".join(
                "%s %.3f" % kv for kv in scen["ratios"].items()))]
    mem = next((s for s in data["scenarios"] if s.get("kind") == "memory"), None)
    if mem:
        L += ["", "Memory during one full-suite run (max total PSS over ~10 ms samples of "
              "`/proc/PID/smaps_rollup`; worker private = Private_Clean+Private_Dirty):", "",
              "| Contender | total PSS MB | processes | worker private MB (median / max) | PSS by role MB |",
              "|---|---:|---:|---:|---|"]
        for r in mem["rows"]:
            if r["status"] != "ok":
                L.append("| %s | – | – | – | %s: %s |" % (r["label"], r["status"], r.get("reason", "")))
                continue
            wp = ("%s / %s" % (r["worker_private_mb_median"], r["worker_private_mb_max"])
                  if r["workers_seen"] else "–")
            roles = ", ".join("%s %s" % kv for kv in r["pss_mb_by_role"].items())
            L.append("| %s | %.1f | %d | %s | %s |" % (r["label"], r["total_pss_mb"],
                                                      r["processes"], wp, roles))
    L.append("")
    w(path, "\n".join(L))


# -------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=os.environ.get("PYTHON") or sys.executable,
                    help="interpreter for the bench venvs (default: $PYTHON or this python)")
    ap.add_argument("--bin", default=os.path.join(REPO, "pytest-fast"),
                    help="our pytest-fast binary (default: <repo>/pytest-fast)")
    ap.add_argument("--no-build", action="store_true",
                    help="do not run build.sh; use --bin as it is")
    ap.add_argument("--quick", action="store_true", help="~3-minute smoke run")
    ap.add_argument("--reps", type=int, help="timed rounds per scenario (default 5; quick 2)")
    ap.add_argument("--warmup", type=int, help="discarded warm-up rounds (default 1)")
    ap.add_argument("--edit-reps", type=int, help="rounds of the edit scenarios (default 3; quick 1)")
    ap.add_argument("--tp-reps", type=int, help="rounds of the throughput scenarios (default 3; quick 1)")
    ap.add_argument("--mem-samples", type=int, help="sampled runs per memory contender (default 2; quick 1)")
    ap.add_argument("--only", help="comma list of scenarios: " + ",".join(ORDER + ["memory"]))
    ap.add_argument("--skip", help="comma list of scenarios to skip")
    shared = os.path.join(REPO, "..", "shared", "bench", "make_app.py")
    ap.add_argument("--make-app", default=shared if os.path.exists(shared)
                    else os.path.join(HERE, "make_app.py"),
                    help="default: ../shared/bench/make_app.py, else bench/make_app.py")
    ap.add_argument("--fresh", action="store_true", help="recreate the venvs")
    ap.add_argument("--timeout", type=float, default=600, help="per-command timeout, seconds")
    ap.add_argument("--ours-watch-flag", help="our CLI's watcher flag (default: --with-watcher "
                    "or --watch, whichever `pytest-fast --help` lists)")
    ap.add_argument("--out", default=HERE, help="where results.{json,md,png} go")
    args = ap.parse_args()
    q = args.quick
    args.reps = args.reps or (1 if q else 5)
    args.warmup = 1 if args.warmup is None else args.warmup
    args.edit_reps = args.edit_reps or (1 if q else 3)
    args.tp_reps = args.tp_reps or (1 if q else 3)
    args.mem_samples = args.mem_samples or (1 if q else 2)
    args.bin = os.path.abspath(args.bin)
    wanted = set(ORDER + ["memory"])
    if args.only:
        wanted = set(args.only.split(","))
    if args.skip:
        wanted -= set(args.skip.split(","))

    t_all = time.perf_counter()
    os.makedirs(LOGS, exist_ok=True)
    for f in os.listdir(LOGS):
        p = os.path.join(LOGS, f)
        shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    machine = machine_info(args.python)
    header(machine)

    # -- venvs
    venv = os.path.join(WORK, "venv")
    upvenv = os.path.join(WORK, "venv-upstream")
    t0 = time.perf_counter()
    err = ensure_venv(venv, args.python, "requirements.txt", args.fresh)
    if err:
        sys.exit("bench venv: " + err)
    vpy = os.path.join(venv, "bin", "python")
    machine["venv_python"] = py_info(vpy, "import sys; print(sys.version.split()[0])")
    vers = py_info(vpy, "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) "
                        "for p in ('pytest', 'pytest-xdist', 'fastapi', 'sqlalchemy', "
                        "'pydantic', 'httpx', 'matplotlib')}))")
    machine["packages"] = json.loads(vers) if vers else {}
    machine["venv_pytest"] = machine["packages"].get("pytest")
    up_reason = None
    pyver = tuple(int(x) for x in (machine["python"] or "0.0").split(".")[:2])
    if pyver < (3, 11):
        up_reason = "upstream pytest-fast needs Python >= 3.11 (have %s)" % machine["python"]
    else:
        up_reason = ensure_venv(upvenv, args.python, "requirements-upstream.txt", args.fresh)
    if not up_reason:
        machine["packages"]["pytest-fast (upstream)"] = py_info(
            os.path.join(upvenv, "bin", "python"),
            "import importlib.metadata as m; print(m.version('pytest-fast'))")
    plxvenv = os.path.join(WORK, "venv-parallex")
    plx_reason = ensure_venv(plxvenv, args.python, "requirements-parallex.txt", args.fresh)
    log("venvs ready in %.1fs: venv python %s, pytest %s, upstream pytest-fast %s" % (
        time.perf_counter() - t0, machine["venv_python"], machine["venv_pytest"],
        machine["packages"].get("pytest-fast (upstream)") or up_reason))

    # -- our binary, built against the bench venv's python
    ours_reason = None
    build_sh = os.path.join(REPO, "build.sh")
    build = {"ran": False}
    if not args.no_build:
        if not os.path.exists(build_sh):
            ours_reason = "build.sh not found at %s" % build_sh
        else:
            t0 = time.perf_counter()
            logp = os.path.join(LOGS, "build.log")
            benv = dict(os.environ, PYTHON=vpy)
            rc = sh(["bash", build_sh], logp, benv, REPO)
            build = {"ran": True, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                     "log": os.path.relpath(logp, REPO)}
            if rc != 0:
                tail = (_read(logp) or "").strip().splitlines()[-1:] or [""]
                ours_reason = "build.sh failed (rc %s): %s" % (rc, tail[0][:200])
    if not ours_reason and not (os.path.isfile(args.bin) and os.access(args.bin, os.X_OK)):
        ours_reason = "binary not found at %s" % args.bin
    plugin_reason = ours_reason
    if not plugin_reason and not os.path.exists(os.path.join(REPO, "plugin.py")):
        plugin_reason = "plugin.py not found at %s" % REPO
    nproc = os.cpu_count() or 1
    E = Env(venv, upvenv, args.bin, nproc, plxvenv)
    B = Bench(E, args)
    B.edit_seq = 0
    watch_reason = ours_reason
    if not ours_reason:
        helptxt = ""
        try:
            hp = subprocess.run([args.bin, "--help"], capture_output=True, text=True, timeout=30)
            helptxt = hp.stdout + hp.stderr
        except (OSError, subprocess.TimeoutExpired):
            pass
        for flag in ([args.ours_watch_flag] if args.ours_watch_flag else ["--with-watcher", "--watch"]):
            if flag and re.search(re.escape(flag) + r"\b", helptxt):
                B.ours_watch_flag = flag
                break
        if not B.ours_watch_flag:
            watch_reason = "our CLI lists no watcher flag in --help (edit-loop issue not landed)"
    log("ours: %s" % (("binary %s (watcher flag %s)" % (args.bin, B.ours_watch_flag))
                       if not ours_reason else "UNAVAILABLE — " + ours_reason))

    def C(*a, **k):
        c = Contender(*a, **k)
        reason = {"upstream": up_reason, "ours": ours_reason, "parallex": plx_reason}.get(c.family)
        if c.family == "ours" and c.mode == "plugin":
            reason = plugin_reason
        if c.family == "ours" and c.watch:
            reason = watch_reason
        if reason:
            c.status, c.reason = "unavailable", reason
        return c

    pytest_ = C("pytest", "pytest", "pytest", "plain")
    x2 = C("xdist_2", "pytest -n 2", "xdist", "plain", workers=2)
    xa = C("xdist_auto", "pytest -n auto", "xdist", "plain", workers="auto")
    plx = C("parallex", "pytest --parallel=fork (pytest-parallex)", "parallex", "plain")
    up_cli = C("up_cli", "upstream CLI warm", "upstream", "cli")
    up_plug = C("up_plugin", "upstream pytest --fast warm", "upstream", "plugin")
    up_watch = C("up_cli_watch", "upstream CLI warm + watcher", "upstream", "cli", watch=True)
    o_cold = C("ours_cold", "ours CLI cold", "ours", "cli", cold=True, daemon="ours_cli")
    o_cli = C("ours_cli", "ours CLI warm", "ours", "cli")
    o_plug = C("ours_plugin", "ours pytest --fast warm", "ours", "plugin")
    o_watch = C("ours_cli_watch", "ours CLI warm + watcher", "ours", "cli", watch=True)
    rec = {"PYTEST_FAST_RECORD": "1"}
    o_rec = C("ours_cli_rec", "ours CLI warm, recording (records current)", "ours", "cli", env=rec)
    o_rec_all = C("ours_cli_rec_all", "ours CLI warm, recording every test (no record)", "ours", "cli",
                  env=rec, daemon="ours_cli_rec", prep=drop_record)
    # What any profile function costs the interpreter: a C builtin that does
    # nothing set around each test, in plain pytest (see bench/noop_profile.py)
    noprof = C("pytest_noop_profile", "pytest, a do-nothing profile function per test", "pytest", "plain",
               args=["-p", "noop_profile"], env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})
    o_aff = C("ours_cli_affected", "ours CLI warm --affected", "ours", "cli", args=["--affected"])

    projs = make_projects(os.path.abspath(args.make_app))
    R, W = args.reps, args.warmup
    sigs = {}

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    for s in (signal.SIGTERM, signal.SIGHUP):
        sigs[s] = signal.signal(s, on_signal)
    interrupted = False
    try:
        if "full_suite" in wanted:
            scen = B.timed("full_suite", "Full suite (make_app)", projs["app"],
                           [(c, None, None) for c in (pytest_, x2, xa, plx, up_cli, up_plug, o_cold, o_cli,
                                                      o_rec, o_rec_all, o_plug, noprof)],
                           R, W, note="daemon contenders use --workers %d (nproc)" % nproc)
            scen["ratios"] = ratios_of(scen, (
                ("recording overhead, records current (a warm run)", "ours_cli_rec", "ours_cli"),
                ("recording overhead, every test recorded (first run)", "ours_cli_rec_all", "ours_cli"),
                ("a do-nothing profile function, plain pytest (the floor before 3.12)",
                 "pytest_noop_profile", "pytest")))
        if "cov_full" in wanted:
            cov = ("--cov=app",)
            entries = [C("pytest", "pytest --cov", "pytest", "plain", args=cov),
                       C("xdist_2", "pytest --cov -n 2", "xdist", "plain", workers=2, args=cov),
                       C("ours_cli", "ours CLI warm --cov", "ours", "cli", daemon="ours_cli_cov",
                         args=cov),
                       C("ours_plugin", "ours pytest --fast --cov warm", "ours", "plugin",
                         daemon="ours_plugin_cov", args=cov),
                       C("ours_cli_nocov", "ours CLI warm, no coverage", "ours", "cli",
                         daemon="ours_cli")]
            scen = B.timed("cov_full", "Full suite with coverage (make_app)", projs["app"],
                           [(c, None, None) for c in entries], R, W,
                           note="--cov=app (term report); daemon contenders use --workers %d" % nproc)
            med = {r["id"]: r["median"] for r in scen["rows"] if r["status"] == "ok" and r.get("median")}
            ratios = {}
            for name, a, b in (("ours_cli_cov / pytest_cov", "ours_cli", "pytest"),
                               ("ours_cli_cov / pytest_cov_n2", "ours_cli", "xdist_2"),
                               ("ours_plugin_cov / pytest_cov", "ours_plugin", "pytest"),
                               ("coverage overhead, ours CLI warm (with / without)", "ours_cli",
                                "ours_cli_nocov")):
                if a in med and b in med:
                    ratios[name] = round(med[a] / med[b], 3)
                    log("  %-52s %.3f" % (name, ratios[name]))
            scen["ratios"] = ratios
        if "single_test" in wanted:
            up1 = Contender("up_cli", up_cli.label, "upstream", "cli")
            up1.status = "unsupported" if up_cli.status == "ok" else up_cli.status
            up1.reason = up_cli.reason or ("the upstream CLI takes no pytest arguments "
                                           "(selection only via PYTEST_FAST_MARK)")
            B.timed("single_test", "One test by node id", projs["app"],
                    [(c, None, None) for c in (pytest_, x2, up1, up_plug, o_cli, o_plug)],
                    R, W, pytest_args=(SINGLE_NODEID,), note="node id %s" % SINGLE_NODEID)
        for kind, sid, title in (("test", "edit_test", "Edit → result: test file"),
                                 ("app", "edit_app", "Edit → result: app module, module level"),
                                 ("svc", "edit_svc", "Edit → result: one service's function body")):
            if sid in wanted:
                B.edit(sid, title, projs["app_edit"], kind,
                       [pytest_, plx, up_cli, up_watch, o_cli, o_watch, o_aff], args.edit_reps)
        if "watch_save" in wanted:
            B.watch_save("watch_save", "Save → result under --watch", projs["app_edit"],
                         C("ours_watch", "ours --watch", "ours", "cli"), EDIT_KINDS, args.edit_reps)
        if "edit_recollect" in wanted:
            # -k: the run is one test, so the wall is mostly the re-collect
            only = ("-k", "test_bench_edit")
            scen = B.edit("edit_recollect", "Edit → result: test file, incremental vs full re-collect",
                          projs["app_edit"], "test",
                          [C("ours_cli_inc", "ours CLI warm, incremental re-collect", "ours", "cli",
                             args=only),
                           C("ours_cli_full", "ours CLI warm, full re-collect", "ours", "cli",
                             args=only, env={"PYTEST_FAST_INCREMENTAL": "0"})], args.edit_reps)
            scen["ratios"] = ratios_of(scen, (("edit + run, incremental / full", "ours_cli_inc", "ours_cli_full"),))
            rows = {r["id"]: r for r in scen["rows"]}
            inc, full = (rows.get(k, {}).get("level_median") for k in ("ours_cli_inc", "ours_cli_full"))
            hooks = rows.get("ours_cli_inc", {}).get("hooks_median")
            # The floor: pytest's own hooks inside the incremental level
            # (importing and collecting the module, modifyitems over every
            # item), which any re-collect of that module runs.
            for name, part in (("the collected level alone, incremental / full", inc),
                               ("  its floor: pytest's collection hooks in it / full", hooks)):
                if part and full:
                    scen["ratios"][name.strip()] = round(part / full, 3)
                    log("  %-52s %.3f" % (name, part / full))
        B.stop_all()                     # edits invalidated the app_edit daemons anyway
        if "floor" in wanted:
            B.timed("floor", "Overhead floor (1-test project)", projs["one"],
                    [(c, None, None) for c in (pytest_, up_cli, up_plug, o_cli, o_plug)], R, W)
        ws = sorted({1, 2} | (set(range(1, nproc + 1)) if nproc <= 4 else
                              {nproc} | {2 ** i for i in range(nproc.bit_length()) if 2 ** i <= nproc}))
        for sid, title, proj in (
                ("tp_trivial", "Throughput: 5,000 trivial tests", projs["trivial"]),
                ("tp_cpu", "Throughput: CPU-bound (%d × ~50 ms)" % (CPU_TESTS[0] * CPU_TESTS[1]),
                 projs["cpu"])):
            if sid not in wanted:
                continue
            entries = [(pytest_, None, None)]
            for wk in ws:
                xn = Contender("xdist", "pytest -n %d" % wk, "xdist", "plain", workers=wk)
                entries.append((xn, wk, None))
                for base, lab in ((up_cli, "upstream CLI warm"), (o_cli, "ours CLI warm")):
                    cc = Contender(base.id, "%s, %d worker%s" % (lab, wk, "s" if wk > 1 else ""),
                                   base.family, "cli", workers=wk)
                    cc.status, cc.reason = base.status, base.reason
                    entries.append((cc, wk, None))
            scen = B.timed(sid, title, proj, entries, args.tp_reps, W)
            ok = {r["id"]: r for r in scen["rows"] if r["status"] == "ok" and r.get("median")}
            scaling = {}
            for fam in ("xdist", "up_cli", "ours_cli"):
                one = ok.get("%s@w1" % fam)
                if one:
                    scaling[fam] = {str(wk): round(one["median"] / ok["%s@w%d" % (fam, wk)]["median"], 2)
                                    for wk in ws if "%s@w%d" % (fam, wk) in ok}
            scen["scaling_vs_1_worker"] = scaling
            B.stop_all()
        if "memory" in wanted:
            B.memory(projs["app"], [pytest_, x2, up_cli, o_cli], args.mem_samples)
    except KeyboardInterrupt:
        interrupted = True
        log("\ninterrupted — writing what was measured")
    finally:
        B.stop_all()
        for s, h in sigs.items():
            signal.signal(s, h)

    # -- outputs
    data = {
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "config": {"quick": q, "reps": R, "warmup": W, "edit_reps": args.edit_reps,
                   "tp_reps": args.tp_reps, "mem_samples": args.mem_samples,
                   "bin": args.bin, "build": build, "interrupted": interrupted,
                   "pyc": "PYTHONDONTWRITEBYTECODE unset for every contender",
                   "env_dropped": list(DROP_ENV) + [p + "*" for p in DROP_PREFIX],
                   "timing": "time.perf_counter around subprocess (Popen..wait), output to a file",
                   "ttl": TTL, "nproc": nproc},
        "contenders": {c.id: {"label": c.label, "status": c.status, "reason": c.reason}
                       for c in (pytest_, x2, xa, up_cli, up_plug, up_watch, o_cold, o_cli,
                                 o_plug, o_watch)},
        "scenarios": sorted(B.results, key=lambda s: (ORDER + ["memory"]).index(s["id"])),
        "elapsed_s": round(time.perf_counter() - t_all, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    jpath = os.path.join(args.out, "results.json")
    with open(jpath, "w") as f:
        json.dump(data, f, indent=1)
    mpath = os.path.join(args.out, "results.md")
    write_markdown(data, mpath)
    ppath = os.path.join(args.out, "results.png")
    rc = sh([vpy, os.path.join(HERE, "plot.py"), jpath, ppath], os.path.join(LOGS, "plot.log"),
            E.env_for(venv, None))
    log("\n" + (_read(mpath) or ""))
    log("wrote %s, %s%s  (total %.0fs)" % (
        jpath, mpath, ", " + ppath if rc == 0 else " (plot FAILED, see .work/logs/plot.log)",
        time.perf_counter() - t_all))
    mism = [m for s in data["scenarios"] for m in s.get("rc_mismatches", [])]
    if mism:
        log("exit-code mismatches vs plain pytest: " + "; ".join(mism))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
