"""The debugger on the user's terminal: --pdb, --trace and breakpoint() in a
test, through a real pseudo-terminal, in both front ends, plain pytest as the
oracle (the same script, the same exit code)."""
import os
import pty
import re
import select
import signal
import sys
import time

import pytest
from conftest import BIN, HERE, ROOT

PYTHONPATH = os.pathsep.join([str(ROOT), str(HERE)])
FRONTS = ["plain", "cli", "plugin"]
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal:
    """A command on a pseudo-terminal that is its controlling terminal."""

    def __init__(self, cmd, cwd, env):
        pid, fd = pty.fork()
        if pid == 0:   # the child: pty.fork made the terminal its controlling one
            try:
                os.chdir(cwd)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.execve(cmd[0], cmd, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.data = b""
        self.pos = 0
        self.rc = None

    @property
    def text(self):
        return ANSI.sub(b"", self.data).decode(errors="replace").replace("\r\n", "\n")

    def _read(self, timeout):
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:   # EIO: the other side closed
            chunk = b""
        self.data += chunk
        return bool(chunk)

    def expect(self, pattern, timeout=90):
        """Read until pattern shows (after what earlier expects consumed)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = regex.search(self.text, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {pattern!r} in the output:\n{self.text}")

    def send(self, text):
        os.write(self.fd, text.encode())

    def interrupt_prompt(self):
        """Ctrl-C at the pdb prompt, which pdb answers with a new prompt.
        Python's readline loses a SIGINT that lands between drawing the
        prompt and waiting for input (plain pytest too): until pdb answers,
        each quiet while is another Ctrl-C."""
        for _ in range(20):
            self.send("\x03")
            try:
                self.expect(r"--KeyboardInterrupt--\n\(Pdb\) ", timeout=3)
                return
            except AssertionError:
                continue
        raise AssertionError(f"Ctrl-C did not reach pdb:\n{self.text}")

    def finish(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(deadline - time.monotonic()):
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.rc = os.waitstatus_to_exitcode(status)
        return self.rc

    def kill(self):
        """A test that failed midway: its session (and its pytest) goes."""
        if self.rc is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self.fd)
            except OSError:
                pass


@pytest.fixture
def terminals():
    started = []
    yield started
    for t in started:
        t.kill()


def start(terminals, project, front, *args):
    extra = {"NO_COLOR": "1", "COLUMNS": "100", "LINES": "40", "TERM": "xterm"}
    if front == "cli":
        cmd = [str(BIN), "--address", project.address, *args]
    else:
        cmd = [sys.executable, "-m", "pytest", *(["-p", "plugin", "--fast"] if front == "plugin" else []),
               "-p", "no:cacheprovider", *args]
        extra.update(PYTHONPATH=PYTHONPATH, PYTEST_FAST_BIN=str(BIN),
                     PYTEST_FAST_ADDRESS=project.address)
    terminals.append(Terminal(cmd, project.path, project.env(extra)))
    return terminals[-1]


FAILING = """
def test_ok():
    pass

def test_fails():
    x = 6
    assert x * 7 == 43

def test_after():
    pass
"""


@pytest.mark.parametrize("front", FRONTS)
def test_pdb_post_mortem_then_continue(project, terminals, front):
    project.write("test_a.py", FAILING)
    t = start(terminals, project, front, "--pdb", "test_a.py")
    t.expect(r"entering PDB")
    t.expect(r"\(Pdb\) ")
    t.send("p x * 7\n")
    t.expect(r"\n42\n")
    t.send("c\n")
    # --pdb does not stop the session: the test after the failure runs.
    assert t.finish() == 1, t.text
    if front != "cli":   # the lean summary has its own wording
        t.expect(r"1 failed, 2 passed")
    else:
        t.expect(r"2 passed.*1 failed|1 failed.*2 passed")


@pytest.mark.parametrize("front", FRONTS)
def test_pdb_quit_ends_the_session(project, terminals, front):
    project.write("test_a.py", FAILING)
    t = start(terminals, project, front, "--pdb", "test_a.py")
    t.expect(r"\(Pdb\) ")
    t.send("q\n")
    assert t.finish() == 2, t.text
    t.expect(r"Quitting debugger")
    assert "2 passed" not in t.text


BREAKPOINT = """
import time

def test_one():
    value = 6
    breakpoint()
    assert value == 6

def test_two():
    print("two")

def test_three():
    pass

def test_four():
    pass
"""


@pytest.mark.parametrize("front", FRONTS)
def test_breakpoint_with_several_workers(project, terminals, front):
    project.write("test_b.py", BREAKPOINT)
    args = {"cli": ["--workers", "2"], "plugin": ["--fast-workers", "2"], "plain": []}[front]
    t = start(terminals, project, front, *args, "test_b.py")
    t.expect(r"PDB set_trace \(IO-capturing turned off\)")
    t.expect(r"\(Pdb\) ")
    t.send("p value * 7\n")
    t.expect(r"\n42\n\(Pdb\) ")
    # Ctrl-C at the prompt is pdb's: the session goes on.
    t.interrupt_prompt()
    t.send("c\n")
    t.expect(r"PDB continue")
    assert t.finish() == 0, t.text
    t.expect(r"4 passed")
    # While the debugger had the terminal, no other test's progress showed.
    text = t.text
    opened = text.index("PDB set_trace")
    shown = text[opened:text.index("PDB continue", opened)]
    assert not re.search(r"^\s*[.F]+\s*$|running \d", shown, re.M), shown


@pytest.mark.parametrize("front", FRONTS)
def test_trace_stops_at_each_test(project, terminals, front):
    project.write("test_c.py", """
        def test_first():
            a = 21
            assert a * 2 == 42

        def test_second():
            pass
    """)
    t = start(terminals, project, front, "--trace", "test_c.py")
    t.expect(r"PDB runcall")
    t.expect(r"-> a = 21\n\(Pdb\) ")
    t.send("p 6 * 7\n")
    t.expect(r"\n42\n")
    t.send("c\n")
    t.expect(r"\(Pdb\) ")   # the second test's
    t.send("c\n")
    assert t.finish() == 0, t.text
    t.expect(r"2 passed")


TWO_BREAKPOINTS = """
def test_one():
    first = 6
    breakpoint()

def test_two():
    pass

def test_three():
    second = 7
    breakpoint()

def test_four():
    pass
"""


@pytest.mark.parametrize("front", FRONTS)
def test_two_debuggers_take_turns(project, terminals, front):
    project.write("test_t.py", TWO_BREAKPOINTS)
    args = {"cli": ["--workers", "2"], "plugin": ["--fast-workers", "2"], "plain": []}[front]
    t = start(terminals, project, front, *args, "test_t.py")
    for turn in (1, 2):
        # Both workers reach a breakpoint; the second waits for the first to
        # close before it prints anything.
        t.expect(r"PDB set_trace")
        t.expect(r"\(Pdb\) ")
        t.send("p 6 * 7\n")
        t.expect(r"\n42\n\(Pdb\) ")
        t.send("c\n")
        t.expect(r"PDB continue")
        shown = t.text[:t.pos]   # up to this debugger's close: no other one opened
        assert shown.count("PDB set_trace") == shown.count("PDB continue") == turn, t.text
    assert t.finish() == 0, t.text
    t.expect(r"4 passed")
