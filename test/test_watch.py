"""pytest-fast --watch: affected tests first on every save, then the rest;
a save cancels the run in flight; single keys on a terminal.

Every wait here is for output the watcher prints (or for a file a test
writes), with a deadline: no sleeps."""

import errno
import os
import pty
import re
import signal
import subprocess
import termios
import threading
import time

from conftest import BIN
from test_edit_loop import wait_for

APP = """
def add(a, b):
    return a + b


def mul(a, b):
    return a * b
"""

TEST_ADD = """
from app import add


def test_add():
    assert add(1, 2) == 3
"""

TEST_MUL = """
from app import mul


def test_mul():
    assert mul(2, 3) == 6


def test_other():
    assert True
"""


# Says it started (atomically: its pid), then runs until "release" exists.
SLOW_TEST = """
import os
import pathlib
import time


def test_slow():
    here = pathlib.Path(__file__).parent.parent
    (here / "started.tmp").write_text(str(os.getpid()))
    os.replace(here / "started.tmp", here / "started")
    while not (here / "release").exists():
        time.sleep(0.01)
"""


def _project(project):
    project.write("pytest.ini", "[pytest]\n")
    project.write("app.py", APP)
    project.write("tests/test_add.py", TEST_ADD)
    project.write("tests/test_mul.py", TEST_MUL)


class Watch:
    """A `pytest-fast --watch` process and everything it printed so far."""

    def __init__(self, project, *args, tty=False, env=None):
        cmd = [str(BIN), "--address", project.address, "--watch", *args]
        self.text = ""
        self.seen = 0
        self.cond = threading.Condition()
        environment = project.env(env)
        if tty:
            self.master, slave = pty.openpty()
            attrs = termios.tcgetattr(slave)
            attrs[1] &= ~termios.ONLCR   # keep "\n" as the program wrote it
            termios.tcsetattr(slave, termios.TCSANOW, attrs)
            self.proc = subprocess.Popen(cmd, cwd=project.path, env=environment, stdin=slave, stdout=slave,
                                         stderr=slave, start_new_session=True,
                                         preexec_fn=lambda: __import__("fcntl").ioctl(0, termios.TIOCSCTTY, 0))
            os.close(slave)
            source = self.master
        else:
            self.master = None
            self.proc = subprocess.Popen(cmd, cwd=project.path, env=environment, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            source = self.proc.stdout.fileno()
        self.reader = threading.Thread(target=self._read, args=(source,), daemon=True)
        self.reader.start()

    def _read(self, fd):
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:
                data = b""
            with self.cond:
                if not data:
                    self.closed = True
                    self.cond.notify_all()
                    return
                self.text += data.decode(errors="replace")
                self.cond.notify_all()

    closed = False

    def expect(self, pattern, timeout=60):
        """Wait for pattern in what was printed since the last match; the
        text in between is returned."""
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                m = rx.search(self.text, self.seen)
                if m:
                    between = self.text[self.seen:m.end()]
                    self.seen = m.end()
                    return between
                left = deadline - time.monotonic()
                assert left > 0 and not self.closed, f"no {pattern!r} in:\n{self.text[self.seen:]}"
                self.cond.wait(left)

    def send(self, data):
        os.write(self.master, data.encode())

    def finish(self, timeout=30):
        rc = self.proc.wait(timeout)
        self.reader.join(timeout)
        if self.master is not None:
            os.close(self.master)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


WAITING = r"waiting for changes in [^\n]*\n"


def test_a_save_runs_the_affected_tests_first_then_the_rest(project):
    _project(project)
    w = Watch(project, "-q")
    try:
        first = w.expect(WAITING)
        assert "3 passed" in first
        project.write("tests/test_add.py", TEST_ADD.replace("== 3", "== 4"))
        affected = w.expect(r"the rest of the selection\n")
        assert "tests/test_add.py changed: the tests it affects first" in affected
        assert "--affected: 1 of 3 tests" in affected
        assert "1 failed, 2 deselected" in affected and "tests/test_add.py::test_add" in affected
        rest = w.expect(WAITING)
        assert "2 passed, 1 deselected" in rest and "failed" not in rest
        # an app edit: the tests that ran app.py's code (test_other did not)
        project.write("app.py", APP.replace("a * b", "a * b + 1"))
        affected = w.expect(r"the rest of the selection\n")
        assert "app.py changed" in affected
        assert "--affected: 2 of 3 tests" in affected
        assert "2 failed, 1 deselected" in affected and "tests/test_mul.py::test_mul" in affected
        rest = w.expect(WAITING)
        assert "1 passed, 2 deselected" in rest
    finally:
        w.kill()


def test_what_a_cycle_runs_matches_plain_pytest(project):
    _project(project)
    w = Watch(project, "-q")
    try:
        w.expect(WAITING)
        project.write("app.py", APP.replace("return a + b", "return a - b"))
        cycle = w.expect(r"the rest of the selection\n.*?" + WAITING)
    finally:
        w.kill()
    oracle = project.pytest("-q")
    assert oracle.rc == 1
    failed = {nodeid for nodeid, outcome in oracle.dump.items() if outcome == "failed"}
    assert failed == {"tests/test_add.py::test_add"}
    for nodeid in failed:
        assert nodeid in cycle
    assert "--affected: 2 of 3 tests" in cycle   # the two that ran app.py's code
    totals = {}
    lines = re.findall(r"^= (.*) in [\d.]+s =$", cycle, re.M)
    assert len(lines) == 2, cycle   # the affected run's, then the rest's
    for line in lines:
        for count, what in re.findall(r"(\d+) (\w+)", line):
            totals[what] = totals.get(what, 0) + int(count)
    outcomes = list(oracle.dump.values())
    assert totals.get("failed", 0) == outcomes.count("failed") == 1
    assert totals.get("passed", 0) == outcomes.count("passed") == 2


def test_a_data_file_a_test_read_is_watched(project):
    _project(project)
    project.write("tests/data/expected.txt", "6\n")
    project.write("tests/test_data.py", """
        import pathlib


        def test_expected():
            text = (pathlib.Path(__file__).parent / "data" / "expected.txt").read_text()
            assert int(text) == 6
        """)
    w = Watch(project, "-q")
    try:
        assert "4 passed" in w.expect(WAITING)
        project.write("tests/data/expected.txt", "7\n")
        affected = w.expect(r"the rest of the selection\n")
        assert "tests/data/expected.txt changed" in affected
        assert "--affected: 1 of 4 tests" in affected and "tests/test_data.py::test_expected" in affected
    finally:
        w.kill()


def test_a_save_cancels_the_run_in_flight(project):
    _project(project)
    project.write("tests/test_slow.py", SLOW_TEST)
    started = project.path / "started"
    w = Watch(project, "-q")
    try:
        _await_file(started, w)
        first_pid = int(started.read_text())
        started.unlink()
        project.write("tests/test_add.py", TEST_ADD + "\n\ndef test_new():\n    pass\n")
        cancelled = w.expect(r"changed: the tests it affects first\n")
        assert "passed" not in cancelled, "the cancelled run printed a result"
        _await_file(started, w)   # never recorded, so affected: it runs again
        _assert_gone(first_pid)
        (project.path / "release").write_text("")
        after = w.expect(WAITING)
        assert "test_new" not in after or "failed" not in after
        assert re.search(r"\d+ passed", after)
    finally:
        w.kill()


def test_a_save_while_a_run_records_is_prewarmed_when_the_run_ends(project):
    """A save the watch sees while a run's leader still writes the --affected
    record (its client has its result, and its output pipe is closed)
    cannot start its re-collect then: it starts when that run ends, not a
    debounce later.  A FIFO in place of the record holds the leader, as a
    slow disk would."""
    _project(project)
    w = Watch(project, "-q", env={"PYTEST_FAST_WATCH_DEBOUNCE": "30"})
    try:
        w.expect(WAITING)
        wait_for(lambda: re.search(r"runs +: \d+ done, idle", project.status().stdout), what="an idle daemon")
        record = project.path / ".pytest_cache" / "d" / "pytest-fast" / "affected.json"
        record.unlink()
        os.mkfifo(record)

        def unblock(timeout=60.0):
            """Write to the FIFO once the leader has opened it to read."""
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fd = os.open(record, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as exc:   # ENXIO: no reader yet
                    assert exc.errno == errno.ENXIO and time.monotonic() < deadline, exc
                    time.sleep(0.01)
            os.write(fd, b"not a record")
            os.close(fd)

        selection = threading.Thread(target=unblock)
        selection.start()
        r = project.fast("-q", env={"PYTEST_FAST_RECORD": "1"}, dump=False)
        selection.join(60)
        assert r.rc == 0 and "3 passed" in r.out, r
        # the run goes on: its leader waits to read the record again
        project.write("tests/test_add.py", TEST_ADD + "\n\ndef test_new():\n    pass\n")
        wait_for(lambda: "a change settling" in project.status().stdout, what="the watch to see the save")
        assert "pre-warming" not in project.log(), project.log()
        unblock()
        wait_for(lambda: "pre-warming for --watch (collected): tests/test_add.py changed" in project.log(),
                 timeout=20, what="the re-collect at the run's end, not 30 s later")
    finally:
        w.kill()


def _await_file(path, w, timeout=60.0):
    """Until a test of the project writes path (the event awaited)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline and w.proc.poll() is None, w.text
        time.sleep(0.01)


def _assert_gone(pid, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return
        except OSError:
            return
        assert time.monotonic() < deadline, f"the cancelled run's worker {pid} is still running"
        time.sleep(0.01)


def test_keys_on_a_terminal_filter_rerun_and_quit(project):
    _project(project)
    w = Watch(project, "-q", tty=True)
    try:
        w.expect(r"h for help, q to quit\n")
        w.send("h")
        assert "filter by a -k expression" in w.expect(r"this help\n")
        w.send("t")
        w.expect(r"-k expression \(empty: none\): ")
        w.send("test_add\n")
        filtered = w.expect(r"\[filter: -k 'test_add'\][^\n]*\n")
        assert "1 passed, 2 deselected" in filtered
        w.send("p")
        w.expect(r"paths or node ids")
        w.send("tests/test_mul.py\n")
        both = w.expect(r"\[filter: -k 'test_add'; tests/test_mul.py\][^\n]*\n")
        assert "2 deselected" in both and "passed" not in both
        w.send("c")
        cleared = w.expect(r"waiting for changes in [^\n\[]*; h for help")
        assert "3 passed" in cleared
        project.write("tests/test_add.py", TEST_ADD.replace("== 3", "== 0"))
        w.expect(r"the rest of the selection\n.*?" + WAITING)
        w.send("f")
        failed_only = w.expect(r"\[filter: failed only\][^\n]*\n")
        assert "1 failed" in failed_only and "passed" not in failed_only.split("failed only")[0][-400:]
        w.send("a")
        w.expect(r"\[filter: failed only\][^\n]*\n")
        w.send("q")
        w.expect(r"bye\n")
        assert w.finish() == 0
    finally:
        w.kill()
    project.stop()
    project.assert_no_orphans()


def test_ctrl_c_quits_and_leaves_no_process_behind(project):
    _project(project)
    project.write("tests/test_slow.py", SLOW_TEST)
    started = project.path / "started"
    w = Watch(project, "-q", tty=True)
    try:
        _await_file(started, w)
        pid = int(started.read_text())
        w.send("\x03")   # the terminal's interrupt character: SIGINT to the watcher
        w.expect(r"bye\n")
        assert w.finish() == 2
        _assert_gone(pid)
    finally:
        w.kill()
    project.stop()
    project.assert_no_orphans()


def test_without_a_terminal_keys_are_not_read_and_sigterm_quits(project):
    _project(project)
    w = Watch(project, "-q")
    try:
        text = w.expect(WAITING)
        assert "h for help" not in text
        w.proc.send_signal(signal.SIGTERM)
        w.expect(r"bye\n")
        assert w.finish() == 2
    finally:
        w.kill()


def test_watch_refuses_options_it_cannot_repeat(project):
    _project(project)
    r = project.fast("--watch", "--shard", "1/2", dump=False)
    assert r.rc == 2 and "--watch runs on every save" in r.err
