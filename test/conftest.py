"""Shared fixtures: build artefacts, throwaway projects, the oracle.

Every test that starts a daemon gets its own private socket directory and a
marker in the environment of every process it starts; at teardown the daemon
is stopped and no process carrying the marker may survive (no orphans).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

# The suite passes from any shell: what the caller's shell says about its
# venv, pytest or Python must reach neither the binary under test nor the
# oracle runs (build.sh scrubs the same names before the suite starts).
SCRUBBED = ("VIRTUAL_ENV", "CI", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def _scrubbed(name):
    return name in SCRUBBED or name.startswith(("PYTEST_FAST_", "PYTHON"))


for _name in [n for n in os.environ if _scrubbed(n)]:
    del os.environ[_name]

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("PF_BUILD_DIR", ROOT / "build"))
BIN = Path(os.environ.get("PF_BIN", ROOT / "pytest-fast"))
HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: faults, load and hostile input")
    config.addinivalue_line("markers", "packaging: builds and installs the wheel (slow)")
    if not BIN.exists():
        raise pytest.UsageError(f"{BIN} does not exist: run ./build.sh first")


def _marked_pids(marker):
    """Processes whose environment carries the marker (ours, same uid)."""
    pids = []
    needle = ("PF_TEST_MARKER=" + marker).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if state != b"Z" and needle in env.split(b"\0"):
            pids.append(int(entry))
    return pids


def copies_of_the_binary(tmp_path, *names):
    """Copies of BIN: each is a build of its own (another file)."""
    paths = []
    for name in names:
        (tmp_path / name).mkdir()
        paths.append(str(tmp_path / name / "pytest-fast"))
        shutil.copy2(BIN, paths[-1])
    return paths


class Result:
    def __init__(self, rc, out, err, dump):
        self.rc, self.out, self.err, self.dump = rc, out, err, dump

    def __repr__(self):
        return f"<rc={self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}>"


class Project:
    """A throwaway pytest project plus the means to run it both ways."""

    def __init__(self, path, sockdir, marker):
        self.path = path
        self.sockdir = sockdir
        self.marker = marker
        self.address = os.path.join(sockdir, "d.sock")

    def write(self, rel, text):
        p = self.path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text).lstrip())
        return p

    def env(self, extra=None):
        # Nor what pytest-xdist tells the worker running this test: a
        # project's conftest would take the oracle for one of its workers.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST_")}
        env.pop("PYTEST_ADDOPTS", None)
        env.pop("PYTEST_FAST_ADDRESS", None)
        env["PF_TEST_MARKER"] = self.marker
        env["PYTHONPATH"] = str(HERE)
        # derived addresses (no --address) land in the test's own socket
        # directory, which the fixture removes, not in the user's
        env["XDG_RUNTIME_DIR"] = self.sockdir
        for name, value in (extra or {}).items():
            if value is None:   # None removes the variable
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def fast(self, *args, env=None, timeout=120, address=True, dump=True, stdin=None):
        dump_path = self.path / ".fast-dump.json"
        if dump_path.exists():
            dump_path.unlink()
        cmd = [str(BIN)]
        if address:
            cmd += ["--address", self.address]
        if dump:
            cmd += ["--dump", str(dump_path)]
        cmd += list(args)
        p = subprocess.run(cmd, cwd=self.path, env=self.env(env), capture_output=True, text=True,
                           timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL)
        data = json.loads(dump_path.read_text()) if dump and dump_path.exists() else None
        return Result(p.returncode, p.stdout, p.stderr, data)

    def pytest(self, *args, env=None, timeout=120):
        dump_path = self.path / ".oracle-dump.json"
        if dump_path.exists():
            dump_path.unlink()
        e = self.env(env)
        e["OUTCOME_DUMP"] = str(dump_path)
        cmd = [sys.executable, "-m", "pytest", "-p", "outcome_dump", *args]
        p = subprocess.run(cmd, cwd=self.path, env=e, capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        data = json.loads(dump_path.read_text()) if dump_path.exists() else None
        return Result(p.returncode, p.stdout, p.stderr, data)

    def stop(self):
        subprocess.run([str(BIN), "--address", self.address, "--stop"], env=self.env(),
                       capture_output=True, timeout=30)

    def status(self):
        p = subprocess.run([str(BIN), "--address", self.address, "--status"], env=self.env(),
                           capture_output=True, text=True, timeout=30)
        return p

    def daemon_exe(self):
        """The binary file the daemon at self.address runs (Linux: /proc)."""
        pid = int(re.search(r"daemon\s+: pid (\d+)", self.status().stdout).group(1))
        return os.readlink(f"/proc/{pid}/exe")

    def log(self):
        path = Path(self.address[: -len(".sock")] + ".log")
        return path.read_text() if path.exists() else ""

    def assert_no_orphans(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            left = _marked_pids(self.marker)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        assert not left, f"processes left behind: {left}"


@pytest.fixture
def project(tmp_path):
    sockdir = tempfile.mkdtemp(prefix="pf")
    proj = Project(tmp_path / "proj", sockdir, uuid.uuid4().hex)
    proj.path.mkdir()
    yield proj
    proj.stop()
    try:
        proj.assert_no_orphans()
    finally:
        if not os.environ.get("PF_KEEP_SOCKDIR"):   # keep the daemon's log to debug
            shutil.rmtree(sockdir, ignore_errors=True)


# The example project and the fuzz corpus are data, not part of this suite.
collect_ignore = ["example", "corpus"]
