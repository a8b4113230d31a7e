"""Reliability and security: faults, hostile tests, hostile peers, load.

Every test drives the real binary (conftest.BIN) against a throwaway project;
the `project` fixture stops the daemon and fails on orphans at teardown.

Synchronisation is by events, never by blind sleeps: a test inside the
project writes a marker file (its pid) into a sync directory and blocks until
the suite creates `release` there; the suite polls for markers, for process
death or for the daemon's state, each with a deadline.

Run: .venv/bin/python -m pytest test/test_reliability.py
Knobs: REL_FUZZ_SEED (default 20240601), REL_FUZZ_FRAMES (connections per batch,
default 12000), REL_FUZZ_SECONDS (keep the idle phase going with fresh batches,
seeds SEED+1, SEED+2, ..., for this long: a soak run; default 0, one batch).
"""
import array
import json
import os
import pickle
import pickletools
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import conftest
import pytest
from conftest import BIN, HERE, copies_of_the_binary

pytestmark = pytest.mark.reliability

# ASan's quarantine holds freed memory back (RSS grows by design): under it,
# only the open-fd bounds of the resource tests are meaningful
SANITIZED = bool(os.environ.get("PF_SANITIZED"))
CLEAR_WITHIN = 2.0          # a live client reports a fault within this many seconds
NOBODY = "nobody"
SETPRIV = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
IS_ROOT = os.geteuid() == 0
CORPUS = HERE / "corpus"

needs_root = pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"),
                                reason="needs root and setpriv to act as another uid")


# ---------------------------------------------------------------- helpers

def wait_for(cond, timeout, what, interval=0.02):
    """Poll cond() until it returns something truthy; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def alive(pid):
    """A process that exists and is not a zombie (pid 1 here may not reap)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def marked(project):
    return set(conftest._marked_pids(project.marker))


def nobody_uid():
    return pwd.getpwnam(NOBODY).pw_uid


def world_dir(prefix="pfrel"):
    """A directory outside root's 0700 pytest tmp dir, reachable by nobody."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    return d


def summary_counts(text):
    """{'failed': 2, 'passed': 5, ...} from the last '=== ... in Xs ===' line."""
    lines = [l for l in text.splitlines() if re.search(r"\d+ \w+.* in [\d.]+s", l)]
    assert lines, text
    return {w: int(n) for n, w in re.findall(r"(\d+) (failed|passed|skipped|xfailed|xpassed|errors?)\b",
                                             lines[-1])}


# ------------------------------------------------------- the wire protocol

def frame(obj, protocol=4):
    payload = pickle.dumps(obj, protocol=protocol)
    return struct.pack(">I", len(payload)) + payload


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def safe_loads(data):
    import io
    return _NoGlobals(io.BytesIO(data)).load()


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def read_frame(sock):
    head = recv_exact(sock, 4)
    if head is None:
        return None
    body = recv_exact(sock, struct.unpack(">I", head)[0])
    return None if body is None else safe_loads(body)


def request(address, obj, timeout=5.0):
    """Send one request frame, return the first reply (a dict) or None."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        s.sendall(frame(obj))
        return read_frame(s)
    except OSError:
        return None
    finally:
        s.close()


def status(project, timeout=5.0):
    st = request(project.address, {"op": "status", "proto": 1}, timeout)
    assert isinstance(st, dict) and st.get("op") == "status", f"no status from the daemon: {st!r}"
    return st


# ------------------------------------------------------ sync inside projects

SYNC_MODULE = '''
    """Written by test_reliability.py: markers and a release gate."""
    import os
    import pathlib
    import time

    SYNC = pathlib.Path({sync!r})


    def mark(name, text=None):
        if text is None:
            text = "%d %s" % (os.getpid(), os.environ.get("PYTEST_XDIST_WORKER", "-"))
        tmp = SYNC / (name + ".tmp%d" % os.getpid())
        tmp.write_text(text)
        os.replace(tmp, SYNC / name)


    def block(name, limit=90):
        """Say where we are, then wait for the suite's release (bounded)."""
        mark(name)
        deadline = time.monotonic() + limit
        while not (SYNC / "release").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("never released")
            time.sleep(0.01)
'''


class Sync:
    def __init__(self, project):
        self.dir = project.path.parent / "sync"
        self.dir.mkdir()
        project.write("tests/relsync.py", SYNC_MODULE.format(sync=str(self.dir)))

    def read(self, name):
        p = self.dir / name
        return p.read_text().split() if p.exists() else None

    def wait(self, name, timeout=60):
        """(pid, worker name) once the project's test wrote the marker."""
        pid, worker = wait_for(lambda: self.read(name), timeout, f"marker {name!r}")
        return int(pid), worker

    def release(self):
        (self.dir / "release").write_text("go")

    def clear(self, name):
        (self.dir / name).unlink(missing_ok=True)


class Client:
    """A pytest-fast client in the background, its output in files (not pipes:
    workers hold the client's stdio, so a pipe's EOF says nothing about the
    client), in a session of its own so that Ctrl-C can go to its group."""

    def __init__(self, project, *args, env=None, tag="client"):
        base = project.path.parent
        self.dump_path = base / f"{tag}.dump.json"
        self.out_path, self.err_path = base / f"{tag}.out", base / f"{tag}.err"
        for p in (self.dump_path, self.out_path, self.err_path):
            p.unlink(missing_ok=True)
        cmd = [str(BIN), "--address", project.address, "--dump", str(self.dump_path), *args]
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.p = subprocess.Popen(cmd, cwd=project.path, env=project.env(env), stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=err, start_new_session=True)

    def wait(self, timeout=60):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise AssertionError(f"the client did not finish within {timeout}s:\n{self}") from None

    @property
    def out(self):
        return self.out_path.read_text()

    @property
    def err(self):
        return self.err_path.read_text()

    @property
    def dump(self):
        return json.loads(self.dump_path.read_text()) if self.dump_path.exists() else None

    def __repr__(self):
        return f"<client rc={self.p.returncode}\n--- stdout\n{self.out}\n--- stderr\n{self.err}>"


def run_files(cmd, cwd, env, timeout=120, preexec_fn=None):
    """Run to completion with stdout/stderr in files; (rc, out, err, seconds)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                           timeout=timeout, preexec_fn=preexec_fn)
        took = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read(), err.read(), took


def fast_files(project, *args, env=None, timeout=120):
    dump = project.path.parent / "fast-files.dump.json"
    dump.unlink(missing_ok=True)
    rc, out, err, took = run_files([str(BIN), "--address", project.address, "--dump", str(dump), *args],
                                   project.path, project.env(env), timeout)
    return conftest.Result(rc, out, err, json.loads(dump.read_text()) if dump.exists() else None), took


def pytest_files(project, *args, timeout=120):
    dump = project.path.parent / "oracle-files.dump.json"
    dump.unlink(missing_ok=True)
    env = project.env({"OUTCOME_DUMP": str(dump)})
    rc, out, err, took = run_files([sys.executable, "-m", "pytest", "-p", "outcome_dump", *args],
                                   project.path, env, timeout)
    return conftest.Result(rc, out, err, json.loads(dump.read_text()) if dump.exists() else None), took


def client(project, *args, env=None, unset=(), address=True, cwd=None, preexec_fn=None, user=None,
           timeout=60):
    """One synchronous client run with full control of env, uid and rlimits."""
    e = project.env(env)
    for k in unset:
        e.pop(k, None)
    cmd = [str(BIN)] + (["--address", project.address] if address else []) + list(args)
    if user:
        cmd = SETPRIV + cmd
    rc, out, err, took = run_files(cmd, cwd or project.path, e, timeout, preexec_fn)
    return conftest.Result(rc, out, err, None), took


def proc_stat(pid):
    """(ppid, pgrp) of a live process, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def resident_split(project):
    """(status, resident pids, other pids) among the processes with our marker.
    Resident: the daemon and its zygote tree(s) — every process in the process
    group of a direct child of the daemon (a zygote, or the site level of a
    layered chain, and the levels forked from it).  Run leaders take a group
    of their own and workers share their leader's, so whatever else carries
    the marker is a leader, a worker, or something they left behind."""
    st = status(project)
    d = st["pid"]
    info = {p: proc_stat(p) for p in marked(project)}
    info = {p: v for p, v in info.items() if v}
    groups = {pgrp for p, (ppid, pgrp) in info.items() if ppid == d}
    resident = {p for p, (ppid, pgrp) in info.items() if p == d or pgrp in groups}
    return st, resident, set(info) - resident


def only_resident_left(project, timeout=10):
    """After a run: no leader, worker or stray child of the run remains."""
    def settled():
        st, resident, others = resident_split(project)
        return (st, resident) if not others and st["zygote_pid"] in resident and not st["running"] else None

    try:
        st, resident = wait_for(settled, timeout, "the run's processes to go")
    except AssertionError:
        st, resident, others = resident_split(project)
        raise AssertionError(f"left behind after the run: {sorted(others)} "
                             f"(resident: {sorted(resident)}, status: {st})") from None
    return st


# =================================================================== faults

FAULT_FILES = {
    "tests/test_fault.py": """
        from relsync import block

        def test_before():
            pass

        def test_victim():
            block("victim")

        def test_after():
            pass
    """,
    "tests/test_more.py": """
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_more(i):
            pass
    """,
}
ALL_PASS = {"tests/test_fault.py::test_before": "passed", "tests/test_fault.py::test_victim": "passed",
            "tests/test_fault.py::test_after": "passed",
            **{f"tests/test_more.py::test_more[{i}]": "passed" for i in range(6)}}


def fault_project(project):
    sync = Sync(project)
    for rel, text in FAULT_FILES.items():
        project.write(rel, text)
    # warm it, so that the fault below hits a warm daemon mid-run
    sync.release()
    warm = project.fast("--workers", "2")
    assert warm.dump == ALL_PASS, warm
    (sync.dir / "release").unlink()
    sync.clear("victim")
    return sync


def start_victim_run(project, sync, *args):
    c = Client(project, "--workers", "2", *args)
    pid, worker = sync.wait("victim")
    assert worker.startswith("gw"), worker
    assert c.p.poll() is None, c
    return c, pid


def wait_client(c, t0, limit=CLEAR_WITHIN):
    rc = c.wait(60)
    took = time.monotonic() - t0
    assert took < limit, f"the client needed {took:.2f}s (> {limit}s) to report:\n{c}"
    return rc


def next_run_works(project, sync, warm):
    sync.release()
    r = project.fast("--workers", "2")
    assert r.rc == 0 and r.dump == ALL_PASS, r
    if warm is not None:
        assert ("(warm)" if warm else "(cold)") in r.out, r
    return r


def test_kill9_worker_mid_test(project):
    sync = fault_project(project)
    daemon = status(project)["pid"]
    c, victim = start_victim_run(project, sync)
    os.kill(victim, signal.SIGKILL)
    rc = wait_client(c, time.monotonic())
    assert rc == 1, c
    assert c.dump == {**ALL_PASS, "tests/test_fault.py::test_victim": "failed"}, c
    assert "signal 9" in c.out and "test_victim" in c.out, c
    only_resident_left(project)
    next_run_works(project, sync, warm=True)
    assert status(project)["pid"] == daemon


def zygote_chain(project, st):
    """The serving zygote and its ancestors below the daemon, root first
    (one process for a single zygote; site, project, collected for layers)."""
    chain, pid = [], st["zygote_pid"]
    while pid and pid != st["pid"]:
        chain.insert(0, pid)
        ps = proc_stat(pid)
        assert ps, f"zygote {pid} vanished"
        pid = ps[0]
    assert pid == st["pid"], (chain, st)
    return chain


@pytest.mark.parametrize("which", ["serving", "chain-root"])
def test_kill9_zygote_mid_run(project, which):
    sync = fault_project(project)
    c, victim = start_victim_run(project, sync)
    st = status(project)
    chain = zygote_chain(project, st)
    target = chain[-1] if which == "serving" else chain[0]
    os.kill(target, signal.SIGKILL)
    rc = wait_client(c, time.monotonic())
    assert rc not in (0, 1), c          # not a verdict on the tests: the engine failed
    assert re.search(r"zygote|leader", c.out + c.err), c
    wait_for(lambda: not alive(victim), CLEAR_WITHIN, "the victim worker to die with its zygote")
    for pid in chain[chain.index(target):]:
        wait_for(lambda pid=pid: not alive(pid), CLEAR_WITHIN, f"zygote {pid} to die with {target}")
    next_run_works(project, sync, warm=None)       # a fresh zygote: re-collected, or re-forked in time
    st2 = status(project)
    assert st2["pid"] == st["pid"] and st2["zygote_pid"] != st["zygote_pid"], (st, st2)
    only_resident_left(project)


def test_kill9_run_leader_mid_run(project):
    sync = fault_project(project)
    c, victim = start_victim_run(project, sync)
    st = status(project)
    leader = proc_stat(victim)[0]                  # workers are forked from the run's leader
    assert leader not in (st["pid"], st["zygote_pid"]) and proc_stat(leader)[1] == leader
    os.kill(leader, signal.SIGKILL)
    rc = wait_client(c, time.monotonic())
    assert rc not in (0, 1), c
    assert "leader" in c.out + c.err, c
    wait_for(lambda: not alive(victim), CLEAR_WITHIN, "the workers to die with their leader")
    only_resident_left(project)
    next_run_works(project, sync, warm=None)
    assert status(project)["pid"] == st["pid"]


def test_kill9_daemon_mid_run(project):
    sync = fault_project(project)
    st = status(project)
    c, victim = start_victim_run(project, sync)
    os.kill(st["pid"], signal.SIGKILL)
    rc = wait_client(c, time.monotonic())
    assert rc != 0, c
    assert "daemon" in c.err and project.address[:-5] + ".log" in c.err, c
    # zygote, leader and workers die with the daemon: nothing of the old tree is left
    project.assert_no_orphans(timeout=CLEAR_WITHIN)
    # an exiting process has already lost its environment (so it is no longer
    # "marked") but is not yet a zombie: wait for the exit to complete
    wait_for(lambda: not alive(victim) and not alive(st["zygote_pid"]), CLEAR_WITHIN, "the old tree to exit")
    next_run_works(project, sync, warm=False)        # the stale socket is replaced
    assert status(project)["pid"] != st["pid"]


def test_kill9_client_mid_run(project):
    sync = fault_project(project)
    st = status(project)
    c, victim = start_victim_run(project, sync)
    os.kill(c.p.pid, signal.SIGKILL)
    c.p.wait()
    t0 = time.monotonic()
    wait_for(lambda: not alive(victim), CLEAR_WITHIN, "the daemon to kill the abandoned run's worker")
    wait_for(lambda: not status(project)["running"], CLEAR_WITHIN, "the daemon to end the abandoned run")
    assert time.monotonic() - t0 < CLEAR_WITHIN
    st2 = only_resident_left(project)
    assert st2["pid"] == st["pid"]
    next_run_works(project, sync, warm=True)


def test_sigterm_daemon_mid_run(project):
    sync = fault_project(project)
    st = status(project)
    c, _victim = start_victim_run(project, sync)
    os.kill(st["pid"], signal.SIGTERM)
    rc = wait_client(c, time.monotonic())
    assert rc != 0, c
    assert "shutting down" in c.err, c
    wait_for(lambda: not alive(st["pid"]), CLEAR_WITHIN, "the daemon to exit on SIGTERM")
    assert not os.path.exists(project.address)
    assert not os.path.exists(project.address[:-5] + ".pid")
    assert "bye" in project.log()
    project.assert_no_orphans(timeout=CLEAR_WITHIN)
    next_run_works(project, sync, warm=False)


def test_ctrl_c_twice(project):
    sync = fault_project(project)
    st = status(project)
    c, victim = start_victim_run(project, sync)
    os.killpg(c.p.pid, signal.SIGINT)             # what a terminal does on Ctrl-C
    t0 = time.monotonic()
    wait_for(lambda: "interrupted" in c.err or c.p.poll() is not None, CLEAR_WITHIN,
             "the client to acknowledge the first Ctrl-C")
    try:
        os.killpg(c.p.pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    rc = wait_client(c, t0)
    assert rc == 2, c
    assert "interrupted" in c.err, c
    wait_for(lambda: not alive(victim), CLEAR_WITHIN, "the cancelled run's worker to die")
    st2 = only_resident_left(project)
    assert not st2["running"] and st2["pid"] == st["pid"]
    next_run_works(project, sync, warm=True)


# ========================================================== hostile tests

def test_forked_child_keeps_report_socket(project):
    """A test forks; the child keeps every inherited fd (the worker's report
    socket, the client's stdio) and sleeps 30 s without exec."""
    sync = Sync(project)
    project.write("tests/test_forker.py", """
        import os
        import time
        import pytest
        from relsync import SYNC, mark

        def test_fork_and_return():
            pid = os.fork()
            if pid == 0:
                mark("child-%d" % os.getpid())
                time.sleep(30)
                os._exit(0)
            deadline = time.monotonic() + 30
            while not (SYNC / ("child-%d" % pid)).exists() and time.monotonic() < deadline:
                time.sleep(0.01)

        def test_after_fork():
            pass

        @pytest.mark.parametrize("i", range(5))
        def test_more(i):
            assert i != 3
    """)

    def kill_children():
        pids = [int(p.name.split("-")[1]) for p in sync.dir.glob("child-*")]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            sync.clear(f"child-{pid}")
        return pids

    oracle, took = pytest_files(project)
    assert len(kill_children()) == 1 and oracle.dump, oracle
    for _ in range(2):          # cold, then warm
        r, took = fast_files(project, "--workers", "2")
        children = kill_children()
        assert len(children) == 1, (r, children)
        assert took < 15, f"the run waited for the forked child ({took:.1f}s)"
        assert (r.rc, r.dump) == (oracle.rc, oracle.dump), (r, oracle)


def test_never_ending_non_daemon_thread(project):
    # Plain pytest would wait for the thread forever at interpreter exit, so
    # there is no oracle: the verdicts are obvious, the run must end.
    project.write("tests/test_thread.py", """
        import threading

        def test_thread():
            threading.Thread(target=threading.Event().wait, name="forever").start()

        def test_after():
            pass
    """)
    want = {"tests/test_thread.py::test_thread": "passed", "tests/test_thread.py::test_after": "passed"}
    for workers in ("1", "2"):
        r, took = fast_files(project, "--workers", workers)
        assert (r.rc, r.dump) == (0, want), r
        assert took < 15, took
        only_resident_left(project)


def test_closes_stdio_fds(project):
    project.write("tests/test_closer.py", """
        import os

        def test_a_before():
            print("before")

        def test_b_close_stdio():
            os.close(0)
            os.close(1)
            os.close(2)

        def test_c_after(capfd):
            print("after")
            assert capfd.readouterr().out == "after\\n"

        def test_d_fails():
            assert 0, "still reported"
    """)
    oracle = project.pytest()
    assert oracle.dump and len(oracle.dump) == 4, oracle
    # With -s the worker's fds 1 and 2 are the client's own.  Plain pytest -s
    # cannot finish (it runs the test in its own process and loses its
    # terminal: INTERNALERROR on the next write), so the verdicts are those
    # of the capturing run: closing a test's fds changes no test's verdict.
    for mode in ((), ("-s",)):
        for _ in range(2):
            r, took = fast_files(project, "--workers", "1", *mode)
            assert (r.rc, r.dump) == (oracle.rc, oracle.dump), (mode, r, oracle)
            assert "still reported" in r.out, r
            assert took < 15


def test_chdir_in_a_test(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    project.write("tests/test_cwd.py", f"""
        import os

        ROOT = {str(project.path)!r}

        def test_a_cwd_is_the_invocation_dir():
            assert os.getcwd() == ROOT

        def test_b_chdir():
            os.chdir({str(elsewhere)!r})

        def test_c_after():
            assert os.getcwd() == {str(elsewhere)!r}

        def test_d_fails():
            assert 0
    """)
    oracle = project.pytest()
    assert oracle.dump and oracle.dump["tests/test_cwd.py::test_a_cwd_is_the_invocation_dir"] == "passed"
    for _ in range(3):                    # a worker's chdir never leaks into the next run
        r = project.fast("--workers", "1")
        assert (r.rc, r.dump) == (oracle.rc, oracle.dump), (r, oracle)


def test_sys_exit_in_teardown(project):
    project.write("tests/test_exiter.py", """
        import sys
        import pytest

        @pytest.fixture
        def leaves_badly():
            yield 1
            sys.exit(3)

        def test_a_uses_it(leaves_badly):
            assert leaves_badly == 1

        def test_b_after():
            pass

        def test_c_exit_in_body():
            sys.exit(5)

        def test_d_last():
            pass
    """)
    oracle = project.pytest()
    assert oracle.dump and len(oracle.dump) == 4, oracle
    for workers in ("1", "2", "1"):
        r = project.fast("--workers", workers)
        assert (r.rc, r.dump) == (oracle.rc, oracle.dump), (r, oracle)


# ================================================ unwritable and full disks

def _no_daemon_left(project, address):
    assert not os.path.exists(address) or request(address, {"op": "status", "proto": 1}, 1) is None
    project.assert_no_orphans(timeout=CLEAR_WITHIN)


@pytest.fixture
def mounts():
    """Mount points made by a test; lazily unmounted afterwards."""
    made = []
    yield made
    for m in reversed(made):
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def try_mount(mounts, where, options):
    if not IS_ROOT or not shutil.which("mount"):
        pytest.skip("needs root and mount")
    where.mkdir(parents=True, exist_ok=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    mounts.append(where)
    return where


@pytest.mark.parametrize("case", ["nobody-0500", "root-readonly-mount", "root-parent-is-a-file"])
def test_socket_dir_not_writable(project, tmp_path, mounts, case):
    """The socket's directory cannot take the socket, lock or log.  Root
    ignores permission bits, so each case must hold for its user: nobody
    against a 0500 directory; root against a read-only tmpfs (EROFS binds
    root too) or a parent that is a regular file (ENOTDIR binds root too)."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    base = world_dir()
    try:
        user, cwd = None, None
        if case == "nobody-0500":
            if not IS_ROOT or not shutil.which("setpriv"):
                pytest.skip("needs root and setpriv")
            d = base / "ro"
            d.mkdir()
            os.chown(d, nobody_uid(), -1)
            os.chmod(d, 0o500)
            user, cwd, why = NOBODY, base, "Permission denied"
        elif case == "root-readonly-mount":
            d = try_mount(mounts, base / "ro", "ro,size=64k")
            why = "Read-only file system"
        else:
            d = base / "file"
            d.write_text("a regular file\n")
            why = "Not a directory"
        project.address = str(d / "d.sock")
        r, took = client(project, user=user, cwd=cwd, timeout=60)
        assert r.rc != 0, r
        assert took < 5, f"{took:.1f}s to fail"
        assert str(d) in r.err and why in r.err and r.err.startswith("pytest-fast: "), r
        _no_daemon_left(project, project.address)
        if d.is_dir():
            assert os.listdir(d) == []
    finally:
        for m in mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("case", ["root-log-is-a-directory", "root-log-is-a-dangling-symlink",
                                  "root-log-is-a-symlink-to-a-file", "root-log-is-immutable",
                                  "nobody-log-owned-by-root"])
def test_log_not_writable(project, case):
    """The socket directory is fine but the daemon log cannot be opened for
    appending.  Cases chosen to bind root: a directory (EISDIR), a symlink
    (O_NOFOLLOW: ELOOP, and its target must stay untouched), chattr +i
    (EPERM); and nobody against a root-owned 0600 log in its own directory."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    base = world_dir()
    target = base / "target"
    user, cwd = None, None
    d = base / "sock"
    d.mkdir(mode=0o700)
    log = d / "d.log"
    try:
        if case == "root-log-is-a-directory":
            log.mkdir()
        elif case == "root-log-is-a-dangling-symlink":
            log.symlink_to(target)
        elif case == "root-log-is-a-symlink-to-a-file":
            target.write_text("precious\n")
            log.symlink_to(target)
        elif case == "root-log-is-immutable":
            log.write_text("")
            if subprocess.run(["chattr", "+i", str(log)], capture_output=True).returncode:
                pytest.skip("chattr +i does not work here")
        else:
            if not IS_ROOT or not shutil.which("setpriv"):
                pytest.skip("needs root and setpriv")
            os.chown(d, nobody_uid(), -1)
            log.write_text("")
            os.chmod(log, 0o600)
            user, cwd = NOBODY, base
        project.address = str(d / "d.sock")
        r, took = client(project, user=user, cwd=cwd)
        assert r.rc != 0, r
        assert took < 5, f"{took:.1f}s to fail"
        assert "log" in r.err and str(log) in r.err, r
        _no_daemon_left(project, project.address)
        if case == "root-log-is-a-dangling-symlink":
            assert not target.exists()
        if case == "root-log-is-a-symlink-to-a-file":
            assert target.read_text() == "precious\n"
    finally:
        subprocess.run(["chattr", "-i", str(log)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _full_disk_verdict(project, runs):
    """Either every run works on one daemon, or every run fails fast with a
    message naming the log; never a daemon that dies and is born again."""
    ok = [r for r, _ in runs if r.rc == 0]
    if len(ok) == len(runs):
        for r, _ in runs:
            assert r.dump == {"tests/test_a.py::test_a": "passed"}, r
        st = status(project)
        assert st["boots"] == 1 and st["runs"] == len(runs), st
        return "works"
    assert not ok, f"some runs worked, some did not: {runs}"
    for r, took in runs:
        assert took < 10, took
        # "(log: PATH)" is no reason when that very log is what cannot be written
        assert re.search(r"no space left|file too large|disk.*full|cannot write", r.err, re.I), \
            f"no clear reason given: {r}"
    _no_daemon_left(project, project.address)
    return "refuses"


def test_log_disk_full_tmpfs(project, tmp_path, mounts):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    d = try_mount(mounts, tmp_path / "tiny", "size=64k,mode=0700")
    fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:                                          # fill it to the last byte
        for size in (65536, 4096, 512, 64, 8, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    project.address = str(d / "d.sock")
    try:
        runs = []
        for _ in range(3):
            dump = tmp_path / "full.dump.json"
            dump.unlink(missing_ok=True)
            r, took = client(project, "--dump", str(dump))
            r.dump = json.loads(dump.read_text()) if dump.exists() else None
            runs.append((r, took))
        print("disk-full verdict:", _full_disk_verdict(project, runs))
    finally:
        project.stop()


def test_log_disk_full_rlimit_fsize(project, tmp_path):
    """RLIMIT_FSIZE on the client that starts the daemon (inherited by it):
    the log is already at the limit, so every append fails (EFBIG/SIGXFSZ)."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    limit = 1 << 20
    log = Path(project.address[:-5] + ".log")
    log.write_bytes(b"x" * limit)

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    runs = []
    for _ in range(3):
        dump = tmp_path / "fsize.dump.json"
        dump.unlink(missing_ok=True)
        r, took = client(project, "--dump", str(dump), preexec_fn=cap)
        r.dump = json.loads(dump.read_text()) if dump.exists() else None
        runs.append((r, took))
    print("RLIMIT_FSIZE verdict:", _full_disk_verdict(project, runs))


# ================================================================= security

def _default_env(kind, base):
    if kind == "xdg":
        return {"XDG_RUNTIME_DIR": str(base)}, (), base / "pytest-fast"
    return {"TMPDIR": str(base)}, ("XDG_RUNTIME_DIR",), base / f"pytest-fast-{os.geteuid()}"


@pytest.fixture
def short_tmp():
    """A short private base dir: the default socket path must fit sun_path."""
    d = Path(tempfile.mkdtemp(prefix="pfx"))
    yield d
    subprocess.run(["chattr", "-R", "-i", str(d)], capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("kind", ["xdg", "tmpdir"])
def test_default_socket_dir_is_private(project, tmp_path, short_tmp, kind):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    base = short_tmp
    env, unset, d = _default_env(kind, base)
    dump = tmp_path / "default.dump.json"
    try:
        # umask 0: the modes must not depend on the caller's umask
        r, _ = client(project, "--dump", str(dump), env=env, unset=unset, address=False,
                      preexec_fn=lambda: os.umask(0))
        assert r.rc == 0 and json.loads(dump.read_text()) == {"tests/test_a.py::test_a": "passed"}, r
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid(), st
        assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
        socks = [p for p in d.iterdir() if p.suffix == ".sock"]
        assert len(socks) == 1, list(d.iterdir())
        sst = os.lstat(socks[0])
        assert stat.S_ISSOCK(sst.st_mode) and stat.S_IMODE(sst.st_mode) == 0o600, oct(sst.st_mode)
        for p in d.iterdir():
            assert stat.S_IMODE(os.lstat(p).st_mode) & 0o077 == 0, (p, oct(os.lstat(p).st_mode))
        # the daemon's --address socket is 0600 too, whatever the umask
        project.address = str(tmp_path / "explicit.sock")
        r, _ = client(project, preexec_fn=lambda: os.umask(0))
        assert r.rc == 0, r
        assert stat.S_IMODE(os.lstat(project.address).st_mode) == 0o600
    finally:
        client(project, "--stop", env=env, unset=unset, address=False)


REFUSALS = [("xdg", "owned-by-nobody"), ("xdg", "mode-0777"), ("xdg", "mode-0770"), ("xdg", "mode-0707"),
            ("xdg", "mode-0750"), ("xdg", "symlink"), ("tmpdir", "owned-by-nobody"), ("tmpdir", "mode-1777"),
            ("tmpdir", "symlink")]


@pytest.mark.parametrize("kind,case", REFUSALS, ids=["-".join(c) for c in REFUSALS])
def test_default_socket_dir_refused(project, short_tmp, kind, case):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    base = short_tmp
    env, unset, d = _default_env(kind, base)
    real = d
    if case == "owned-by-nobody":
        if not IS_ROOT:
            pytest.skip("needs root to chown")
        d.mkdir(mode=0o700)
        os.chown(d, nobody_uid(), -1)
    elif case.startswith("mode-"):
        d.mkdir()
        os.chmod(d, int(case[5:], 8))
    else:
        real = base / "elsewhere"
        real.mkdir(mode=0o700)                 # a perfectly private target...
        d.symlink_to(real)                     # ...behind a symlink
    before = os.lstat(d)
    try:
        r, took = client(project, env=env, unset=unset, address=False)
        assert r.rc != 0, r
        assert took < 5
        assert str(d) in r.err and "refusing" in r.err, r
        after = os.lstat(d)
        assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid), "the client changed the dir"
        assert os.listdir(real) == [], os.listdir(real)
        project.assert_no_orphans(timeout=CLEAR_WITHIN)
        r, _ = client(project, "--status", env=env, unset=unset, address=False)
        assert r.rc != 0 and "refusing" in r.err + r.out, r
    finally:
        client(project, "--stop", env=env, unset=unset, address=False)


def _nobody_python():
    """A python3 that nobody can run (root's pyenv may be out of its reach)."""
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if exe and subprocess.run(SETPRIV + [exe, "-c", "import pickle, socket"],
                                  capture_output=True).returncode == 0:
            return exe
    pytest.skip("no python3 that nobody can run")


PEER = r"""
import json, pickle, socket, struct, sys
out = []
for req in ({"op": "status", "proto": 1}, {"op": "stop", "proto": 1},
            {"op": "run", "proto": 1, "args": [], "env": [], "cwd": "/", "workers": 1}):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    try:
        s.connect(sys.argv[1])
    except OSError as e:
        out.append("connect failed: %s" % e)
        continue
    try:
        p = pickle.dumps(req, protocol=4)
        s.sendall(struct.pack(">I", len(p)) + p)
        data = s.recv(65536)
        out.append("reply" if data else "closed")
    except socket.timeout:
        out.append("no reply, left open")
    except OSError as e:
        out.append("closed: %s" % type(e).__name__)
    s.close()
print(json.dumps(out))
"""


@needs_root
def test_peer_with_another_uid_is_refused(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    assert project.fast().rc == 0
    before = status(project)
    py = _nobody_python()
    # open the filesystem path wide, so that only the daemon's check stands
    os.chmod(project.sockdir, 0o755)
    os.chmod(project.address, 0o666)
    p = subprocess.run(SETPRIV + [py, "-c", PEER, project.address], capture_output=True, text=True,
                       timeout=60, env=project.env())
    verdicts = json.loads(p.stdout)
    assert len(verdicts) == 3 and all(v.startswith("closed") for v in verdicts), (verdicts, p.stderr)
    wait_for(lambda: f"refused a connection from uid {nobody_uid()}" in project.log(), CLEAR_WITHIN,
             "the refusal in the daemon log")
    after = status(project)              # the stranger's "stop" and "run" did nothing
    assert (after["pid"], after["runs"]) == (before["pid"], before["runs"]), (before, after)
    r = project.fast()
    assert r.rc == 0 and "(warm)" in r.out, r


@needs_root
def test_client_refuses_a_daemon_of_another_uid(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    base = world_dir()
    d = base / "nobody"
    d.mkdir(mode=0o700)
    os.chown(d, nobody_uid(), -1)
    address = str(d / "d.sock")
    # nobody may not reach the checkout (a clone under a 0700 directory): its
    # daemon runs a copy of the binary that lies in the world-readable base
    nobody_bin = base / "pytest-fast"
    shutil.copy2(BIN, nobody_bin)
    as_nobody = SETPRIV + [str(nobody_bin), "--address", address]
    try:
        p = subprocess.run(as_nobody + ["--ensure-daemon"], cwd=base, env=project.env(), capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p
        os.chmod(d, 0o755)                               # let root's client reach the socket...
        pid = int(Path(address[:-5] + ".pid").read_text())
        os.chmod(address, 0o666)
        assert alive(pid) and os.stat(f"/proc/{pid}").st_uid == nobody_uid()
        project.address = address
        r, took = client(project)                        # ...and see it refuse the daemon
        assert r.rc != 0 and took < CLEAR_WITHIN, r
        assert f"runs as uid {nobody_uid()}" in r.err and "refusing" in r.err, r
        r, _ = client(project, "--status")
        assert r.rc != 0 and "refusing" in r.out + r.err, r
        r, _ = client(project, "--stop")
        assert alive(pid), "root's client stopped or replaced nobody's daemon"
        q = subprocess.run(as_nobody + ["--status"], cwd=base, env=project.env(), capture_output=True, text=True)
        assert q.returncode == 0 and f"pid {pid}" in q.stdout, q
    finally:
        subprocess.run(as_nobody + ["--stop"], cwd=base, env=project.env(), capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


# =================================================================== fuzzing

FUZZ_SEED = int(os.environ.get("REL_FUZZ_SEED", "20240601"))
FUZZ_FRAMES = int(os.environ.get("REL_FUZZ_FRAMES", "12000"))
FUZZ_SECONDS = float(os.environ.get("REL_FUZZ_SECONDS", "0"))


class _Evil:
    """Pickles to GLOBAL/STACK_GLOBAL + REDUCE that would touch a file."""

    def __init__(self, path, how):
        self.path, self.how = path, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, ("touch " + self.path,))
        if self.how == "exec":
            return (exec, (f"open({self.path!r}, 'w').close()",))
        return (open, (self.path, "w"))


def _junk(rng, depth=0):
    """A random value of the protocol's data types (and some it refuses)."""
    k = rng.randrange(14 if depth < 3 else 9)
    if k == 0:
        return None
    if k == 1:
        return rng.random() < 0.5
    if k == 2:
        return rng.choice([0, 1, -1, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 2**200, 10**300,
                           rng.randrange(-10**6, 10**6)])
    if k == 3:
        return rng.choice([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e308, 5e-324])
    if k == 4:
        return rng.choice(["", "status", "run", "x" * rng.randrange(1, 300), "\udcff", "é\x00ü", "/" * 5000])
    if k == 5:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
    if k == 6:
        return bytearray(b"ba")
    if k == 7:
        return rng.choice([set(), {1, 2, 3}, frozenset({"a"})])
    if k == 8:
        return "y" * rng.choice([1, 70000, 1 << 20]) if rng.random() < 0.05 else "short"
    if k == 9:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if k == 10:
        return tuple(_junk(rng, depth + 1) for _ in range(rng.randrange(0, 4)))
    if k == 11:
        return {str(_junk(rng, depth + 1))[:20]: _junk(rng, depth + 1) for _ in range(rng.randrange(0, 5))}
    if k == 12:
        return {_junk(rng, 9) if rng.random() < 0.5 else 7: 1}
    return [[[[[[]]]]]]


RUN_FIELDS = {"args": list, "env": list, "cwd": str, "workers": int}


def _acts(obj):
    """Would a correct daemon legitimately act on this (run, stop, restart)?
    Such frames are not hostile, only real requests: they are filtered out."""
    if not isinstance(obj, dict):
        return False
    op = obj.get("op")
    if op in ("stop", b"stop") or isinstance(obj.get("build"), (str, bytes)):
        return True
    if op not in ("run", "options", b"run", b"options"):
        return False
    args, env, cwd, workers = (obj.get(k) for k in ("args", "env", "cwd", "workers"))
    return (isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args)
            and isinstance(env, (list, tuple)) and all(isinstance(e, str) for e in env)
            and isinstance(cwd, str) and cwd.startswith("/") and type(workers) is int)


def _decodes_to_action(payload):
    """_acts() on what the payload decodes to, with its frames or without
    them.  Only payloads that spell a request's words are decoded, and never
    ones with absurd memo indices (Python's unpickler would try to allocate
    for them; the daemon refuses)."""
    if not any(word in payload for word in (b"stop", b"build", b"run", b"options")):
        return False
    try:
        frames = []
        for op, arg, pos in pickletools.genops(payload):
            if ("PUT" in op.name or "GET" in op.name) and isinstance(arg, int) and arg > 100000:
                return False
            if op.name == "FRAME":
                frames.append(pos)
    except Exception:
        return False
    # FRAME lengths are advisory to pickle.loads() and to the daemon's
    # decoder, not to an Unpickler reading a file: a mutated length makes
    # the latter refuse what the other two decode
    unframed = b"".join(payload[a + 9 if a else 0:b] for a, b in zip([0, *frames], [*frames, len(payload)]))
    for candidate in (payload, unframed):
        try:
            if _acts(safe_loads(candidate)):
                return True
        except Exception:
            pass
    return False


def _valid_request(rng, project):
    if rng.random() < 0.5:
        return {"op": "status", "proto": 1}
    req = {"op": rng.choice(["run", "options"]), "proto": 1, "args": ["-q"], "env": ["A=1"],
           "cwd": str(project.path), "workers": 1, "timeout": 0.0, "full": False, "color": False}
    # wrong type, wrong arity or absurd value for one required field: never a real run
    field = rng.choice(list(RUN_FIELDS))
    req[field] = rng.choice([None, 12, -1, 2**70, "str", b"bytes", ["a", 1], ("t",), {"d": 1}, 1.5,
                             "relative/dir", 0, 5000, [None] * 3, [["nested"]]])
    if field == "workers" and type(req["workers"]) is int and 1 <= req["workers"] <= 4096:
        req["workers"] = 0
    if field == "cwd" and isinstance(req["cwd"], str) and req["cwd"].startswith("/"):
        req["cwd"] = "relative"
    if rng.random() < 0.3:
        req[rng.choice(["timeout", "full", "dump", "fp", "python", "start_method", "color", "stream"])] = \
            _junk(rng)
    return req


def _mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 9)):
        if not data:
            data = bytearray(rng.randbytes(rng.randrange(1, 16)))
        i = rng.randrange(len(data))
        m = rng.randrange(6)
        if m == 0:
            data[i] ^= 1 << rng.randrange(8)
        elif m == 1:
            data[i] = rng.randrange(256)
        elif m == 2:
            data[i:i] = rng.randbytes(rng.randrange(1, 8))
        elif m == 3:
            del data[i:i + rng.randrange(1, 8)]
        elif m == 4:
            j = rng.randrange(i, len(data) + 1)
            data[j:j] = data[i:j][:64]
        else:
            data[i] = rng.choice(b"()]}.acdeghjlmnpqrstuxJKMNX\x80\x81\x82\x83\x84\x85\x8c\x93\x94\x95")
    return bytes(data)


def _header(payload):
    return struct.pack(">I", len(payload))


def fuzz_cases(rng, project, n, pwned):
    """n deterministic cases: (label, chunks, nfds, expect_status_reply)."""
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.pkl"))]
    assert len(corpus) >= 50, f"corpus missing? {CORPUS}"
    evil = []
    for how in ("system", "exec", "open"):
        for proto in range(0, 6):
            evil.append(pickle.dumps(_Evil(pwned, how), protocol=proto))
            evil.append(pickle.dumps({"op": "status", "proto": 1, "x": _Evil(pwned, how)}, protocol=proto))
            evil.append(pickle.dumps({"op": "run", "proto": 1, "args": _Evil(pwned, how), "env": [],
                                      "cwd": "/", "workers": 1}, protocol=proto))
    import collections
    import datetime
    evil += [pickle.dumps(v, protocol=p) for v in (collections.OrderedDict(a=1), datetime.date(2020, 1, 1),
                                                   complex(1, 2), range(3), slice(1, 2))
             for p in (2, 4, 5)]
    cases = []
    while len(cases) < n:
        try:
            case = _one_case(rng, project, corpus, evil)
        except (TypeError, ValueError, RecursionError, pickle.PicklingError):
            continue              # an unhashable key or the like: draw again
        if case is None or any(_decodes_to_action(p) for p in _payloads(case[1])):
            continue
        cases.append(case)
    return cases


def _payloads(chunks):
    """The complete frames' payloads in what a case sends."""
    data = b"".join(chunks)
    out = []
    while len(data) >= 4:
        size = struct.unpack(">I", data[:4])[0]
        if len(data) < 4 + size:
            break
        out.append(data[4:4 + size])
        data = data[4 + size:]
    return out


def _one_case(rng, project, corpus, evil):
    kind = rng.choices(["status", "typed", "arity", "deep", "corpus", "evil", "mutated", "truncated",
                        "oversize", "zero", "split", "pipelined", "fds", "random", "raw-corpus"],
                       weights=[6, 14, 5, 3, 8, 4, 28, 6, 4, 1, 2, 3, 3, 6, 3])[0]
    expect = False
    nfds = 0
    if kind == "status":
        payload = pickle.dumps({"op": "status", "proto": 1}, protocol=rng.choice([2, 3, 4, 5]))
        chunks, expect = [_header(payload) + payload], True
    elif kind == "typed":
        req = _valid_request(rng, project)
        if req["op"] == "status":
            req = {"op": rng.choice(["status", "bogus", "", "STATUS", b"status", 1, None, ["status"]]),
                   "proto": rng.choice([1, 0, 2, -1, 2**64, "1", 1.0, None, [1]])}
            if rng.random() < 0.3:
                req[_junk(rng, 9) if rng.random() < 0.3 else "extra"] = _junk(rng)
        payload = pickle.dumps(req, protocol=rng.choice([2, 3, 4, 5]))
        chunks = [_header(payload) + payload]
    elif kind == "arity":
        v = rng.choice([[], (), [{"op": "status", "proto": 1}], ({"op": "status", "proto": 1},), 1, "status",
                        None, {}, {"op": "status"}, {"proto": 1}, {k: k for k in range(10000)},
                        {"op": "status", "proto": 1, **{f"k{k}": k for k in range(2000)}}, b"x", 1.5])
        payload = pickle.dumps(v, protocol=rng.choice([2, 4, 5]))
        chunks = [_header(payload) + payload]
    elif kind == "deep":
        depth = rng.choice([150, 199, 200, 201, 1000, 100000, 300000])
        op = rng.choice([b"]", b"(", b"}", b")"])
        if op == b"]":
            payload = b"\x80\x04" + b"]" * depth + b"a" * (depth - 1) + b"."
        elif op == b"(":
            payload = b"\x80\x04" + b"(" * depth + b"t" * depth + b"."
        elif op == b"}":
            payload = b"\x80\x04" + b"}" * depth + b"."
        else:
            payload = b"\x80\x04" + b")" + b"\x85" * depth + b"."
        chunks = [_header(payload) + payload]
    elif kind == "corpus":
        payload = rng.choice(corpus)
        chunks = [_header(payload) + payload]
    elif kind == "raw-corpus":
        chunks = [rng.choice(corpus)]
    elif kind == "evil":
        payload = rng.choice(evil)
        chunks = [_header(payload) + payload]
    elif kind == "mutated":
        base = rng.choice([pickle.dumps(_valid_request(rng, project), protocol=rng.choice([2, 4, 5])),
                           rng.choice(corpus), rng.choice(evil)])
        payload = _mutate(rng, base)
        head = _header(payload) if rng.random() < 0.8 else _mutate(rng, _header(payload))[:4].ljust(4, b"\0")
        chunks = [head + payload]
    elif kind == "truncated":
        full = frame(_valid_request(rng, project))
        chunks = [full[:rng.randrange(1, len(full))]]
    elif kind == "oversize":
        size = rng.choice([0xFFFFFFFF, 0x80000000, (256 << 20) + 1, 0x7FFFFFFF, 200 << 20,
                           rng.randrange(1 << 20, 1 << 32)])
        chunks = [struct.pack(">I", size) + rng.randbytes(rng.randrange(0, 64))]
    elif kind == "zero":
        chunks = [b"\0\0\0\0" + rng.randbytes(rng.randrange(0, 8))]
    elif kind == "split":
        payload = pickle.dumps({"op": "status", "proto": 1}, protocol=4)
        data = _header(payload) + payload
        cut = sorted(rng.sample(range(1, len(data)), 3))
        chunks = [data[a:b] for a, b in zip([0] + cut, cut + [len(data)])]
        expect = True
    elif kind == "pipelined":
        a = frame(_valid_request(rng, project))
        b = frame({"op": "status", "proto": 1})
        chunks = [a + b + rng.randbytes(rng.randrange(0, 16))]
    elif kind == "fds":
        payload = rng.choice([pickle.dumps({"op": "status", "proto": 1}, protocol=4),
                              _mutate(rng, pickle.dumps(_valid_request(rng, project), protocol=4))])
        chunks, nfds = [_header(payload) + payload], rng.choice([1, 3, 8, 64])
    else:
        chunks = [rng.randbytes(rng.randrange(1, 600))]
    return kind, chunks, nfds, expect


def fuzz_send(address, case, devnull):
    """One connection: send, half-close, wait for the daemon to hang up.
    Returns (frames sent, status replies, error or None)."""
    kind, chunks, nfds, expect = case
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(address)
    except OSError as e:
        s.close()
        return 0, 0, f"{kind}: connect: {e}"
    try:
        for j, chunk in enumerate(chunks):
            if nfds and j == 0:
                s.sendmsg([chunk], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [devnull] * nfds))])
            else:
                s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as e:
        if "Too many references" not in str(e):
            s.close()
            return 0, 0, f"{kind}: send: {e}"
    data = b""
    try:
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        s.close()
        return 1, 0, f"{kind}: the daemon neither answered nor hung up within 10s"
    except ConnectionResetError:
        pass
    s.close()
    replies = 0
    if expect:
        if len(data) < 4:
            return 1, 0, f"{kind}: no status reply"
        reply = safe_loads(data[4:4 + struct.unpack(">I", data[:4])[0]])
        if not (isinstance(reply, dict) and reply.get("op") == "status"):
            return 1, 0, f"{kind}: bad status reply {reply!r}"
        replies = 1
    return (2 if kind == "pipelined" else 1), replies, None


def fuzz_blast(address, cases, threads=4):
    devnull = os.open(os.devnull, os.O_RDONLY)
    lock = threading.Lock()
    it = iter(cases)
    totals = {"frames": 0, "replies": 0, "errors": []}

    def worker():
        while True:
            with lock:
                case = next(it, None)
            if case is None:
                return
            f, r, e = fuzz_send(address, case, devnull)
            with lock:
                totals["frames"] += f
                totals["replies"] += r
                if e:
                    totals["errors"].append(e)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    os.close(devnull)
    return totals


class StatusProbe(threading.Thread):
    """Asks for status every 100 ms; records the slowest answer and failures."""

    def __init__(self, address):
        super().__init__(daemon=True)
        self.address, self.stop, self.worst, self.failures, self.count = address, threading.Event(), 0.0, [], 0

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            st = request(self.address, {"op": "status", "proto": 1}, timeout=5)
            took = time.monotonic() - t0
            self.count += 1
            self.worst = max(self.worst, took)
            if not (isinstance(st, dict) and st.get("op") == "status"):
                self.failures.append(st)
            self.stop.wait(0.1)


def slowloris(address, rng, n=100):
    """Connections that send part of a request and stall."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address)
        body = pickle.dumps({"op": "status", "proto": 1}, protocol=4)
        whole = _header(body) + body
        s.sendall(whole[:rng.choice([1, 2, 3, 4, 5, len(whole) - 1])])
        socks.append(s)
    return socks


def drip(address, stop, n=5):
    """Connections that send one byte every 300 ms and never finish."""
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
    for s in socks:
        s.connect(address)
    body = struct.pack(">I", 4000) + b"\x80\x04" + b"(" * 3994
    pos = 0
    live = list(socks)
    while live and not stop.is_set() and pos < len(body):
        for s in list(live):
            try:
                s.send(body[pos:pos + 1])
            except OSError:
                live.remove(s)
        pos += 1
        stop.wait(0.3)
    return socks


def wait_all_closed(socks, deadline):
    for s in socks:
        left = deadline - time.monotonic()
        assert left > 0, "the daemon kept a stalled connection open"
        s.settimeout(left)
        try:
            while s.recv(4096):
                pass
        except socket.timeout:
            raise AssertionError("the daemon kept a stalled connection open") from None
        except OSError:
            pass
        s.close()


def test_a_rebuilt_binary_replaces_the_daemon_of_the_old_one(project, tmp_path):
    """A daemon serves only clients of its own build: another one makes it exit
    and starts its own (and back)."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    old, new = copies_of_the_binary(tmp_path, "old", "new")
    for binary in (old, new, old):
        r = subprocess.run([binary, "--address", project.address, "-q"], cwd=project.path,
                           env=project.env(), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "1 passed" in r.stdout, r
        assert project.daemon_exe() == binary


def test_protocol_fuzzing_live_daemon(project, tmp_path):
    sync = Sync(project)
    project.write("tests/test_f.py", """
        from relsync import block

        def test_ok():
            pass

        def test_bad():
            assert 0

        def test_gate():
            block("gate")
    """)
    want = {"tests/test_f.py::test_ok": "passed", "tests/test_f.py::test_bad": "failed",
            "tests/test_f.py::test_gate": "passed"}
    sync.release()
    r = project.fast("--workers", "2")
    assert r.dump == want, r
    (sync.dir / "release").unlink()
    sync.clear("gate")
    st0 = status(project)
    dpid = st0["pid"]
    fd0, rss0 = fd_count(dpid), rss_kib(dpid)
    log0 = len(project.log())
    pwned = str(tmp_path / "PWNED")
    rng = random.Random(FUZZ_SEED)
    n_idle = FUZZ_FRAMES - FUZZ_FRAMES // 8
    cases = fuzz_cases(rng, project, FUZZ_FRAMES, pwned)
    t0 = time.monotonic()

    probe = StatusProbe(project.address)
    probe.start()
    stalled = slowloris(project.address, rng)
    stop_drip = threading.Event()
    dripper = []
    dt = threading.Thread(target=lambda: dripper.extend(drip(project.address, stop_drip)), daemon=True)
    dt.start()
    try:
        # phase 1: idle daemon (for a soak run, batch after batch)
        idle = fuzz_blast(project.address, cases[:n_idle])
        batch = soak_connections = soak_replies = 0
        while time.monotonic() - t0 < FUZZ_SECONDS:
            batch += 1
            more = fuzz_cases(random.Random(FUZZ_SEED + batch), project, FUZZ_FRAMES, pwned)
            got = fuzz_blast(project.address, more)
            st = status(project)
            assert st["pid"] == dpid and not got["errors"], \
                (f"batch seed {FUZZ_SEED + batch}: the daemon changed or a case failed", st0, st, got["errors"][:20])
            for k in ("frames", "replies"):
                idle[k] += got[k]
            soak_connections += len(more)
            soak_replies += sum(1 for case in more if case[3])
        # phase 2: the same, while a run is in progress
        c = Client(project, "--workers", "2")
        sync.wait("gate")
        busy = fuzz_blast(project.address, cases[n_idle:])
        assert status(project)["running"] and c.p.poll() is None, c
        sync.release()
        assert c.wait(60) == 1 and c.dump == want, c
    finally:
        stop_drip.set()
        probe.stop.set()
        probe.join()
    dt.join()
    took = time.monotonic() - t0
    frames = idle["frames"] + busy["frames"]
    replies = idle["replies"] + busy["replies"]
    expected_replies = sum(1 for case in cases if case[3]) + soak_replies
    print(f"fuzz: seed {FUZZ_SEED}, {frames} frames on {len(cases) + soak_connections} connections in {took:.1f}s, "
          f"{replies} status replies, {probe.count} probes (worst {probe.worst:.3f}s), "
          f"{len(stalled)} slowloris + {len(dripper)} drip connections")
    errors = idle["errors"] + busy["errors"]
    assert not errors, errors[:20]
    assert frames >= 10000 or FUZZ_FRAMES < 10000, frames
    assert replies == expected_replies
    assert not probe.failures and probe.worst < CLEAR_WITHIN, (probe.failures[:5], probe.worst)
    for sock in stalled + dripper:      # (their being dropped is test_stalled_connections_are_dropped)
        sock.close()
    st = status(project)
    assert st["pid"] == dpid, (st0, st)
    assert st["runs"] == st0["runs"] + 1, ("a fuzz frame started a run", st0, st)
    assert "re-collecting" not in project.log()[log0:], "a fuzz frame made the daemon re-collect"
    assert not os.path.exists(pwned), "a REDUCE/GLOBAL payload executed"
    assert "malformed request" in project.log()
    wait_for(lambda: fd_count(dpid) <= fd0, 10, f"the daemon's fds to return to {fd0} (have {fd_count(dpid)})")
    rss1 = rss_kib(dpid)
    print(f"daemon fds {fd0} -> {fd_count(dpid)}, RSS {rss0} -> {rss1} KiB")
    print("daemon log, less the malformed-request lines:",
          *[l for l in project.log().splitlines() if "] " in l and "malformed" not in l], sep="\n  ")
    # RSS after a fuzz run swings between ~8 and ~32 MiB with the interleaving
    # (glibc's adaptive mmap threshold), leak or not: only a loose bound here;
    # open fds are exact, and flat RSS under real runs is the 200-run test's
    assert SANITIZED or rss1 - rss0 < 96 * 1024, (rss0, rss1)
    r = project.fast("--workers", "2")
    assert r.dump == want and r.rc == 1 and "(warm)" in r.out, r


def test_stalled_connections_are_dropped(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    assert project.fast().rc == 0
    dpid = status(project)["pid"]
    fd0 = fd_count(dpid)
    rng = random.Random(FUZZ_SEED)
    t0 = time.monotonic()
    stalled = slowloris(project.address, rng, n=20)
    stop = threading.Event()
    dripper = []
    t = threading.Thread(target=lambda: dripper.extend(drip(project.address, stop, n=2)), daemon=True)
    t.start()
    try:
        assert status(project)["pid"] == dpid          # others are served meanwhile
        # the daemon gives a request 5 s (DMN_REQUEST_TIMEOUT) to arrive; allow 12
        wait_all_closed(stalled, t0 + 12)
        wait_for(lambda: dripper, 12, "the drip feeders to be cut off")
        wait_all_closed(dripper, t0 + 12)
    finally:
        stop.set()
        for sock in stalled + dripper:
            sock.close()
    wait_for(lambda: fd_count(dpid) <= fd0, 5, "the daemon's fds to return to the baseline")
    r = project.fast()
    assert r.rc == 0 and "(warm)" in r.out, r


def test_connection_flood_does_not_lock_out_clients(project):
    """More stalled connections than DMN_MAX_CONNS: once the stale ones are
    dropped, a real client gets through again."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    assert project.fast().rc == 0
    flood = []
    try:
        for _ in range(600):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(project.address)
            s.send(b"\0")
            flood.append(s)
        wait_for(lambda: request(project.address, {"op": "status", "proto": 1}, 2), 12,
                 "a status answer through the flood")
        r = project.fast()
        assert r.rc == 0, r
    finally:
        for s in flood:
            s.close()


# ==================================================================== load

def test_100_concurrent_status_during_a_run(project):
    sync = Sync(project)
    project.write("tests/test_l.py", """
        from relsync import block

        def test_gate():
            block("gate")

        def test_other():
            pass
    """)
    c = Client(project, "--workers", "1")
    sync.wait("gate")
    procs = [subprocess.Popen([str(BIN), "--address", project.address, "--status"], env=project.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(100)]
    answers = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    bad = [a for a in answers if a[2] != 0 or "one running" not in a[0]]
    assert not bad, bad[:3]
    assert c.p.poll() is None, "the run ended before the status storm was over"
    sync.release()
    assert c.wait(60) == 0, c
    assert c.dump == {"tests/test_l.py::test_gate": "passed", "tests/test_l.py::test_other": "passed"}, c


def test_10_concurrent_runs_each_get_their_own_results(project, tmp_path):
    n = 10
    for i in range(n):
        project.write(f"tests/test_c{i}.py", f"""
            import os

            def test_c{i}_env():
                assert os.environ["REL_CLIENT"] == "{i}"

            def test_c{i}_verdict():
                assert {i} % 3 != 0
        """)

    def expected(i):
        return {f"tests/test_c{i}.py::test_c{i}_env": "passed",
                f"tests/test_c{i}.py::test_c{i}_verdict": "failed" if i % 3 == 0 else "passed"}

    for round_ in ("cold", "warm"):       # cold: all ten race to start the daemon
        clients = [Client(project, "--workers", str(1 + i % 2), "-k", f"test_c{i}_", env={"REL_CLIENT": str(i)},
                          tag=f"{round_}{i}") for i in range(n)]
        for i, c in enumerate(clients):
            rc = c.wait(120)
            assert rc == (1 if i % 3 == 0 else 0), c
            assert c.dump == expected(i), (i, c)
    st = status(project)
    assert st["runs"] == 2 * n, st
    assert "re-collecting" not in project.log(), project.log()
    only_resident_left(project)


def test_200_warm_runs_keep_fds_and_rss_flat(project, capsys):
    project.write("tests/test_one.py", "def test_one():\n    pass\n")
    cmd = [str(BIN), "--address", project.address]
    env = project.env()

    def run():
        p = subprocess.run(cmd, cwd=project.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           stdin=subprocess.DEVNULL, timeout=60)
        assert p.returncode == 0, p.stderr

    for _ in range(10):                  # warm-up: first allocations, caches
        run()
    only_resident_left(project)
    st, resident, _ = resident_split(project)
    role = {p: "daemon" if p == st["pid"] else "zygote" if p == st["zygote_pid"] else "zygote level"
            for p in resident}

    def measure():
        return {p: (fd_count(p), rss_kib(p)) for p in sorted(resident)}

    first = measure()
    t0 = time.monotonic()
    for _ in range(200):
        run()
    took = time.monotonic() - t0
    st2 = only_resident_left(project)
    last = measure()
    _, resident2, _ = resident_split(project)
    with capsys.disabled():
        print(f"\n200 warm runs in {took:.1f}s; open fds and RSS, first -> last:")
        for p in sorted(resident):
            print(f"  {role[p]:<13} {p:>7}: fds {first[p][0]} -> {last[p][0]}, "
                  f"RSS {first[p][1]} -> {last[p][1]} KiB")
    assert resident2 == resident, ("the resident processes changed (a re-collect?)", resident, resident2)
    assert (st2["pid"], st2["zygote_pid"], st2["runs"]) == (st["pid"], st["zygote_pid"], 210), st2
    for p in resident:
        (fd_a, rss_a), (fd_b, rss_b) = first[p], last[p]
        assert fd_b - fd_a <= 1, (role[p], p, first[p], last[p])
        assert SANITIZED or rss_b - rss_a <= max(2048, rss_a // 20), (role[p], p, first[p], last[p])


def test_20000_tests_match_pytest(project):
    project.write("tests/test_many.py", """
        import pytest

        @pytest.mark.parametrize("i", range(20000))
        def test_many(i):
            if i % 997 == 0:
                assert False, i
            if i % 1013 == 0:
                pytest.skip("skip")
            if i % 1531 == 0:
                pytest.xfail("xfail")
    """)
    oracle = project.pytest(timeout=600)
    assert oracle.dump and len(oracle.dump) == 20000, oracle.out[-2000:]
    r = project.fast("--workers", "2", timeout=600)
    assert r.rc == oracle.rc == 1, r.out[-3000:]
    assert r.dump == oracle.dump
    assert summary_counts(r.out) == summary_counts(oracle.out), (r.out[-1500:], oracle.out[-500:])


# ================================================================= timeouts

def test_timeout_reports_the_hang_replaces_the_worker_and_goes_on(project):
    sync = Sync(project)
    project.write("tests/test_to.py", """
        import ctypes
        import threading
        import time
        from relsync import mark

        def wait_forever():
            threading.Event().wait()

        def test_1_before():
            mark("before")

        def test_2_hangs_in_python():
            wait_forever()

        def test_3_middle():
            mark("middle")

        def test_4_hangs_in_c_holding_the_gil():
            ctypes.PyDLL(None).sleep(60)

        def test_5_after():
            mark("after")

        def test_6_slow_but_within_the_limit():
            time.sleep(1.2)

        def test_7_slow_but_within_the_limit():
            time.sleep(1.2)
    """)
    t0 = time.monotonic()
    r = project.fast("--workers", "1", "--timeout", "2")
    took = time.monotonic() - t0
    f = "tests/test_to.py::"
    assert r.dump == {f + "test_1_before": "passed", f + "test_2_hangs_in_python": "failed",
                      f + "test_3_middle": "passed", f + "test_4_hangs_in_c_holding_the_gil": "failed",
                      f + "test_5_after": "passed", f + "test_6_slow_but_within_the_limit": "passed",
                      f + "test_7_slow_but_within_the_limit": "passed"}, r
    assert r.rc == 1
    assert took < 30, took
    assert r.out.count("timed out after 2s") >= 2, r
    # the Python traceback of where each test hung
    for frame_ in ("in wait_forever", "in test_2_hangs_in_python", "in test_4_hangs_in_c_holding_the_gil"):
        assert frame_ in r.out, (frame_, r)
    assert summary_counts(r.out) == {"failed": 2, "passed": 5}, r.out
    pids = [sync.wait(name, 1)[0] for name in ("before", "middle", "after")]
    assert len(set(pids)) == 3, f"the hung worker was not replaced: {pids}"
    assert "forking a replacement" in project.log()
    only_resident_left(project)
    r = project.fast("--workers", "1", "--timeout", "2", "-k", "before or middle")
    assert r.rc == 0 and "(warm)" in r.out, r


def test_timeout_kills_a_worker_that_cannot_dump(project):
    """A stopped worker cannot run faulthandler's watchdog: the daemon must
    kill it after the grace period and still report the test."""
    project.write("tests/test_stop.py", """
        import os
        import signal

        def test_stops_itself():
            os.kill(os.getpid(), signal.SIGSTOP)

        def test_after():
            pass
    """)
    t0 = time.monotonic()
    r = project.fast("--workers", "1", "--timeout", "1")
    took = time.monotonic() - t0
    assert r.dump == {"tests/test_stop.py::test_stops_itself": "failed",
                      "tests/test_stop.py::test_after": "passed"}, r
    assert r.rc == 1 and "timed out after 1s" in r.out, r
    assert took < 20, took
    only_resident_left(project)
