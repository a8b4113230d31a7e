"""The warm engine end to end: the real binary against real projects,
with plain pytest (or pytest-xdist for crashes) as the oracle."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import BIN

PARITY = {
    "conftest.py": """
        import os
        import pytest

        @pytest.fixture(scope="session")
        def session_res():
            return {"worker": os.environ.get("PYTEST_XDIST_WORKER")}

        @pytest.fixture
        def broken_setup():
            raise RuntimeError("setup boom")

        @pytest.fixture
        def broken_teardown():
            yield 1
            raise RuntimeError("teardown boom")
    """,
    "tests/test_basic.py": """
        import os
        import sys
        import warnings
        import pytest

        def test_pass():
            assert 1 + 1 == 2

        def test_fail():
            assert [1, 2] == [1, 3]

        def test_raises():
            raise ValueError("plain error")

        def test_setup_error(broken_setup):
            pass

        def test_teardown_error(broken_teardown):
            assert broken_teardown == 1

        def test_skip():
            pytest.skip("not today")

        @pytest.mark.skipif(sys.platform != "nowhere", reason="never here")
        def test_skipif():
            pass

        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert False

        @pytest.mark.xfail(reason="fixed")
        def test_xpass():
            pass

        @pytest.mark.xfail(strict=True, reason="strict")
        def test_xpass_strict():
            pass

        @pytest.mark.parametrize("n", [1, 2, 3], ids=["one", "two", "three"])
        def test_param(n):
            assert n != 2

        def test_capsys(capsys):
            print("hello out")
            assert capsys.readouterr().out == "hello out\\n"

        def test_tmp_path(tmp_path):
            (tmp_path / "f").write_text("x")
            assert (tmp_path / "f").read_text() == "x"

        def test_monkeypatch_env(monkeypatch):
            monkeypatch.setenv("PF_PARITY", "1")
            assert os.environ["PF_PARITY"] == "1"

        def test_env_restored():
            assert "PF_PARITY" not in os.environ

        def test_warns():
            warnings.warn("a user warning", UserWarning)

        def test_session(session_res):
            assert "worker" in session_res
    """,
    "tests/test_classes.py": """
        import pytest

        calls = []

        @pytest.fixture(scope="module")
        def mod_res():
            calls.append("mod")
            return calls

        @pytest.fixture(scope="class")
        def cls_res():
            return object()

        class TestA:
            def test_b(self, mod_res, cls_res):
                assert mod_res.count("mod") == 1

            @pytest.mark.parametrize("x", [1, 2])
            def test_c(self, x, cls_res):
                assert x in (1, 2)

        class TestB:
            def test_fails(self):
                assert 0, "class failure"
    """,
}

CRASHY = {
    "tests/test_crash.py": """
        import ctypes
        import os
        import time

        def test_before():
            pass

        def test_exit():
            os._exit(3)

        def test_segfault():
            ctypes.string_at(0)

        def test_hang():
            time.sleep(60)

        def test_after():
            pass
    """,
}


def write_all(project, files):
    for rel, text in files.items():
        project.write(rel, text)


def test_parity_cold_then_warm(project):
    write_all(project, PARITY)
    oracle = project.pytest()
    assert oracle.dump and len(oracle.dump) >= 20, oracle
    cold = project.fast("--workers", "2")
    assert cold.dump == oracle.dump, (cold, oracle)
    assert cold.rc == oracle.rc == 1
    assert "(cold)" in cold.out
    warm = project.fast("--workers", "2")
    assert warm.dump == oracle.dump, warm
    assert warm.rc == 1
    assert "(warm)" in warm.out
    assert "re-collecting" not in warm.err


def test_summary_shows_failures_and_counts(project):
    write_all(project, PARITY)
    r = project.fast("--workers", "2")
    assert "FAILURES" in r.out
    assert "assert [1, 2] == [1, 3]" in r.out
    assert "tests/test_basic.py::test_fail" in r.out
    oracle = project.pytest()
    # pytest's closing line counts (failed, passed, skipped, xfailed, xpassed, errors)
    last = [l for l in oracle.out.splitlines() if " in " in l and "=" in l][-1]
    for word in ("failed", "passed", "skipped", "xfailed", "xpassed", "errors"):
        import re
        m = re.search(r"(\d+) " + word, last)
        if m:
            assert f"{m.group(1)} {word}" in r.out, (word, last, r.out)


def test_crashes_and_timeout_match_xdist(project):
    write_all(project, CRASHY)
    r = project.fast("--workers", "2", "--timeout", "3")
    assert r.dump == {
        "tests/test_crash.py::test_before": "passed",
        "tests/test_crash.py::test_exit": "failed",
        "tests/test_crash.py::test_segfault": "failed",
        "tests/test_crash.py::test_hang": "failed",
        "tests/test_crash.py::test_after": "passed",
    }, r
    assert r.rc == 1
    assert "exited with code 3" in r.out
    assert "signal 11" in r.out
    assert "Segmentation fault" in r.out
    assert "timed out after 3s" in r.out
    assert ("test_hang" in r.out and "time.sleep(60)" in r.out) or "in test_hang" in r.out
    # pytest-xdist's verdict for the two crashes (no timeout there)
    os.remove(project.path / "tests/test_crash.py")
    project.write("tests/test_crash.py", CRASHY["tests/test_crash.py"].replace("def test_hang", "def _no_hang"))
    x = project.pytest("-n", "1")
    assert x.dump["tests/test_crash.py::test_exit"] == "failed"
    assert x.dump["tests/test_crash.py::test_segfault"] == "failed"


EXIT_MODULE = """
    import pytest

    def test_a():
        pass

    def test_b():
        pytest.exit("enough", returncode=7)

    def test_c():
        pass
"""


def test_pytest_exit_stops_the_run(project):
    project.write("tests/test_exit.py", EXIT_MODULE)
    oracle = project.pytest()
    r = project.fast("--workers", "1")
    assert r.rc == oracle.rc == 7
    assert r.dump == oracle.dump
    assert "enough" in r.out


# -x with two workers, gw1 held before its first ask for an item until gw0
# has failed and exited: gw1 is then told the run stops (-1), and must run
# nothing.  It took -1 for an index once: it ran items[-1] (the last test),
# reported it, got no reply and the run never ended (1 run in 6 of
# test_coverage's -x test, where coverage slows each worker's start).
LATE_WORKER = {
    "tests/conftest.py": """
        import fcntl
        import os

        ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        def pytest_plugin_registered(plugin, manager):
            # a worker registers its own plugin just before its first ask
            if (os.environ.get("PYTEST_XDIST_WORKER") == "gw1"
                    and manager.get_name(plugin) == "pytest-fast-worker"):
                with open(os.path.join(ROOT, "gate"), "rb"):   # gw0 holds the lock
                    pass
                fd = os.open(os.path.join(ROOT, "gate.lock"), os.O_RDWR)
                fcntl.flock(fd, fcntl.LOCK_EX)   # free once gw0 has exited
    """,
    "tests/test_a.py": """
        import fcntl
        import os

        ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        held = []

        def test_fails():
            if os.environ.get("PYTEST_XDIST_WORKER") == "gw0":
                fd = os.open(os.path.join(ROOT, "gate.lock"), os.O_RDWR | os.O_CREAT)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held.append(fd)   # until this worker exits
                os.close(os.open(os.path.join(ROOT, "gate"), os.O_WRONLY))
            assert 0
    """,
    "tests/test_b.py": """
        import os

        ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

        def test_second():
            open(os.path.join(ROOT, "second-ran"), "w").close()
    """,
}


def test_worker_starting_after_x_stopped_the_run_runs_nothing(project):
    write_all(project, LATE_WORKER)
    os.mkfifo(project.path / "gate")
    oracle = project.pytest("-x")
    assert oracle.rc == 1 and not (project.path / "second-ran").exists(), oracle
    r = project.fast("--workers", "2", "-x")
    assert r.rc == oracle.rc, r
    assert r.dump == oracle.dump, (r.dump, oracle.dump)
    assert not (project.path / "second-ran").exists(), "the late worker ran a test"
    assert "does not hold" not in project.log()


def test_collection_error_interrupts(project):
    write_all(project, PARITY)
    project.write("tests/test_broken.py", "import nonexistent_module_xyz\n")
    oracle = project.pytest()
    r = project.fast("--workers", "2")
    assert oracle.rc == 2
    assert r.rc == 2, r
    assert r.dump == oracle.dump, (r.dump, oracle.dump)
    assert "nonexistent_module_xyz" in r.out
    cont = project.fast("--workers", "2", "--continue-on-collection-errors")
    ocont = project.pytest("--continue-on-collection-errors")
    assert cont.rc == ocont.rc == 1
    assert cont.dump == ocont.dump


SELECTIONS = [
    ["-k", "param and not two"],
    ["-k", "TestA"],
    ["-m", "xfail"],
    ["tests/test_classes.py"],
    ["tests/test_classes.py::TestA"],
    ["tests/test_classes.py::TestA::test_c[1]"],
    ["tests/test_basic.py::test_param"],
    ["tests/test_basic.py::test_param[two]", "tests/test_classes.py::TestB::test_fails"],
    ["tests"],
    ["--deselect", "tests/test_basic.py::test_fail"],
    ["-x"],
    ["--maxfail", "2"],
]


@pytest.mark.parametrize("args", SELECTIONS, ids=[" ".join(a) for a in SELECTIONS])
def test_selection_parity(project, args):
    write_all(project, PARITY)
    project.fast("--workers", "1")     # warm the daemon first
    oracle_ids = project.pytest("--collect-only", "-q", *args)
    r = project.fast("--workers", "1", *args)
    oracle = project.pytest(*args)
    assert r.rc == oracle.rc, (r, oracle)
    if args[0] in ("-x", "--maxfail"):
        assert set(r.dump) == set(oracle.dump), (r.dump, oracle.dump)
    else:
        assert r.dump == oracle.dump, (r.dump, oracle.dump)
    co = project.fast("--workers", "1", "--collect-only", "-q", *args, dump=False)
    expect = [l for l in oracle_ids.out.splitlines() if "::" in l]
    got = [l for l in co.out.splitlines() if "::" in l]
    assert sorted(got) == sorted(expect), (co, oracle_ids)


def test_lastfailed_cache_matches_pytest(project):
    write_all(project, PARITY)
    project.fast("--workers", "2")
    ours = json.loads((project.path / ".pytest_cache/v/cache/lastfailed").read_text())
    import shutil
    shutil.rmtree(project.path / ".pytest_cache")
    project.pytest()
    theirs = json.loads((project.path / ".pytest_cache/v/cache/lastfailed").read_text())
    assert ours == theirs
    lf = project.fast("--workers", "2", "--lf")
    olf = project.pytest("--lf")
    assert lf.dump == olf.dump and lf.rc == olf.rc


def test_edits_are_picked_up(project):
    project.write("app/__init__.py", "")
    project.write("app/calc.py", "def add(a, b):\n    return a + b\n")
    project.write("tests/test_calc.py", """
        from app.calc import add

        def test_add():
            assert add(2, 2) == 4
    """)
    assert project.fast().dump == {"tests/test_calc.py::test_add": "passed"}
    time.sleep(0.01)
    project.write("app/calc.py", "def add(a, b):\n    return a - b\n")
    r = project.fast()
    assert r.dump == {"tests/test_calc.py::test_add": "failed"}, r
    assert "re-collecting" in r.err and "app/calc.py changed" in r.err
    project.write("tests/test_new.py", "def test_new():\n    pass\n")
    r = project.fast()
    assert "tests/test_new.py::test_new" in r.dump, r
    os.remove(project.path / "tests/test_new.py")
    r = project.fast()
    assert "tests/test_new.py::test_new" not in r.dump, r
    project.write("tests/test_calc.py", "def test_edited():\n    pass\n")
    r = project.fast()
    assert r.dump == project.pytest().dump


def test_names_that_do_not_decide_collection_keep_it_warm(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    assert project.fast().dump == {"tests/test_a.py::test_a": "passed"}
    # pytest creates .pytest_cache by renaming a pytest-cache-files-* directory
    # (a concurrent run's leader may be in the middle of it); editors leave
    # dotfiles; __pycache__ is bytecode
    time.sleep(0.01)
    (project.path / "pytest-cache-files-x1y2").mkdir()
    (project.path / "tests/.test_a.py.swp").write_text("swap")
    (project.path / "tests/__pycache__").mkdir(exist_ok=True)
    r = project.fast()
    assert r.dump == {"tests/test_a.py::test_a": "passed"} and "re-collecting" not in r.err, r
    (project.path / "pkg").mkdir()
    r = project.fast()
    assert "re-collecting" in r.err and "files added or removed" in r.err, r


def test_env_changes_are_picked_up(project):
    project.write("conftest.py", """
        import os
        FLAG = os.environ.get("MYAPP_FLAG", "off")
    """)
    project.write("tests/test_env.py", """
        import conftest

        def test_flag():
            assert conftest.FLAG == "off"
    """)
    env = {"PYTEST_FAST_ENV_PREFIXES": "MYAPP_"}
    r = project.fast(env=env, address=False)
    assert r.dump == {"tests/test_env.py::test_flag": "passed"}, r
    r = project.fast(env={**env, "MYAPP_FLAG": "on"}, address=False)
    assert r.dump == {"tests/test_env.py::test_flag": "failed"}, r
    r = project.fast(env={**env, "PYTEST_ADDOPTS": "-k nothing_matches"}, address=False)
    assert r.rc == 5, r
    for e in (env, {**env, "MYAPP_FLAG": "on"}, {**env, "PYTEST_ADDOPTS": "-k nothing_matches"}):
        subprocess.run([str(BIN), "--stop"], cwd=project.path, env=project.env(e), capture_output=True)


ENV_CONFTEST = {
    "tests/conftest.py": """
        import os
        os.environ["APP_ENV"] = "test"
        os.environ.setdefault("APP_DEFAULT", "conftest")
        os.environ.pop("APP_DROP", None)
    """,
    "tests/test_env.py": """
        import os

        def test_collection_changes_are_seen():
            assert os.environ["APP_ENV"] == "test"
            assert os.environ["APP_DEFAULT"] == "conftest"
            assert "APP_DROP" not in os.environ

        def test_the_client_environment_is_seen():
            assert os.environ["CLIENT_ONLY"] == "yes"

        def test_pytest_version_variable():
            assert os.environ.get("PYTEST_VERSION") == (os.environ["EXPECT_PYTEST_VERSION"] or None)
    """,
}


def env_conftest_env():
    """The client's side of ENV_CONFTEST; pytest >= 8.2 sets PYTEST_VERSION for the session."""
    expect = pytest.__version__ if pytest.version_tuple[:2] >= (8, 2) else ""
    return {"CLIENT_ONLY": "yes", "APP_DROP": "client", "EXPECT_PYTEST_VERSION": expect,
            "PYTEST_VERSION": None}   # not inherited from the pytest running this suite


def test_environment_changes_of_the_collection_reach_the_tests(project):
    """A conftest that sets, defaults and removes variables at import: as in
    plain pytest, the tests see the client's environment with those changes,
    cold and warm."""
    write_all(project, ENV_CONFTEST)
    env = env_conftest_env()
    oracle = project.pytest(env=env)
    assert oracle.rc == 0 and len(oracle.dump) == 3, oracle
    for _ in range(2):
        r = project.fast(env=env)
        assert (r.rc, r.dump) == (oracle.rc, oracle.dump), r


def test_time_zone_argv_and_gc_are_as_in_a_plain_run(project):
    """TZ (not part of the fingerprint) and sys.argv as a plain run of the
    same command has them, though every zygote that may serve the second run
    started with TZ=UTC0."""
    project.write("tests/test_proc.py", """
        import os, sys, time

        def test_time_zone():
            assert time.tzname == tuple(os.environ["EXPECT_TZNAME"].split(","))

        def test_argv():
            assert sys.argv[1:][-2:] == ["-rs", "tests"]

        def test_garbage_collector_is_on():   # the zygote's levels turn it off while preloading
            import gc
            assert gc.isenabled()
    """)
    r = project.fast("-rs", "tests", env={"TZ": "UTC0", "EXPECT_TZNAME": "UTC,UTC"})
    assert r.rc == 0, r
    env = {"TZ": "JST-9", "EXPECT_TZNAME": "JST,JST"}
    oracle, ours = project.pytest("-rs", "tests", env=env), project.fast("-rs", "tests", env=env)
    assert oracle.rc == 0, oracle
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), ours


def test_a_conftest_chdir_at_import_is_where_the_tests_run(project):
    """A conftest that changes the working directory at import: the arguments
    are resolved from the client's directory, the tests run in the new one."""
    project.write("tests/conftest.py", """
        import os
        os.chdir(os.path.dirname(os.path.abspath(__file__)))
    """)
    project.write("tests/data.txt", "x")
    project.write("tests/test_cwd.py", """
        import os

        def test_relative_file():
            assert open("data.txt").read() == "x"
            assert os.path.basename(os.getcwd()) == "tests"
    """)
    oracle = project.pytest("tests/test_cwd.py")
    assert oracle.rc == 0, oracle
    for _ in range(2):
        r = project.fast("tests/test_cwd.py")
        assert (r.rc, r.dump) == (oracle.rc, oracle.dump), r


def test_venv_interpreter(project, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "onlyinvenv.py").write_text("MARK = 'venv'\n")
    # pytest comes from the suite's own environment, whatever its base is
    import site as site_module
    (site / "suite.pth").write_text("\n".join(site_module.getsitepackages()) + "\n")
    project.write("tests/test_v.py", """
        import sys
        import onlyinvenv

        def test_exe():
            assert onlyinvenv.MARK == "venv"
            assert sys.executable.startswith(%r)
    """ % str(venv))
    r = project.fast(env={"VIRTUAL_ENV": str(venv)})
    assert r.dump == {"tests/test_v.py::test_exe": "passed"}, r


def test_status_stop_and_ttl(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    assert project.status().returncode == 1
    project.fast()
    s = project.status()
    assert s.returncode == 0 and "ready" in s.stdout, s
    project.stop()
    assert not os.path.exists(project.address)
    assert not os.path.exists(project.address[:-5] + ".pid")
    project.fast("--ttl", "0.5")
    deadline = time.monotonic() + 10
    while os.path.exists(project.address) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(project.address)
    assert not os.path.exists(project.address[:-5] + ".pid")


def test_ctrl_c_cancels_and_daemon_stays_warm(project):
    project.write("tests/test_slow.py", """
        import time

        def test_slow():
            time.sleep(30)
    """)
    project.write("tests/test_quick.py", "def test_quick():\n    pass\n")
    project.fast("-k", "quick")
    p = subprocess.Popen([str(BIN), "--address", project.address], cwd=project.path,
                         env=project.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while "running" not in project.status().stdout.replace("idle", "") and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=10)
    assert p.returncode == 2, (out, err)
    assert time.monotonic() - t0 < 3
    r = project.fast("-k", "quick")
    assert r.dump == {"tests/test_quick.py::test_quick": "passed"}
    assert "(warm)" in r.out


def test_concurrent_clients_each_get_their_results(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    project.write("tests/test_b.py", "def test_b():\n    assert 0\n")
    project.fast()
    procs = []
    for i in range(4):
        k = "test_a" if i % 2 == 0 else "test_b"
        procs.append((k, subprocess.Popen([str(BIN), "--address", project.address, "-k", k],
                                          cwd=project.path, env=project.env(),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for k, p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == (0 if k == "test_a" else 1), (out, err)


def test_vanished_client_and_garbage(project):
    import socket
    project.write("tests/test_a.py", "def test_a():\n    import time; time.sleep(0.5)\n")
    project.fast()
    p = subprocess.Popen([str(BIN), "--address", project.address], cwd=project.path, env=project.env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.2)
    p.kill()
    p.wait()
    for payload in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x05abc", b"garbage!", b"\x00\x00\x00\x03\x80\x04N"):
        s = socket.socket(socket.AF_UNIX)
        s.connect(project.address)
        s.sendall(payload)
        s.close()
    assert project.status().returncode == 0
    assert project.fast().dump == {"tests/test_a.py::test_a": "passed"}


def test_stale_socket_file_is_replaced(project):
    import socket
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    s = socket.socket(socket.AF_UNIX)
    s.bind(project.address)
    s.close()   # a socket file nobody listens on, as after a crash
    r = project.fast()
    assert r.dump == {"tests/test_a.py::test_a": "passed"}, r


def test_usage_errors(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = project.fast("--workers", "0")
    assert r.rc == 2 and "'0'" in r.err
    r = project.fast("--workers", "abc")
    assert r.rc == 2 and "'abc'" in r.err
    r = subprocess.run([str(BIN), "--print-inferred-workers"], capture_output=True, text=True)
    assert r.returncode == 0 and int(r.stdout) >= 1
    r = subprocess.run([str(BIN), "--print-inferred-workers", "-v"], capture_output=True, text=True)
    assert "online" in r.stdout
    r = project.fast("--no-such-pytest-option")
    o = project.pytest("--no-such-pytest-option")
    assert r.rc == o.rc == 4, r
    r = project.fast("-n", "2")
    assert r.rc == 4 and "--workers" in r.err
    assert subprocess.run([str(BIN), "--help"], capture_output=True).returncode == 0


def test_broken_conftest_reports_like_pytest(project):
    project.write("conftest.py", "raise RuntimeError('conftest is broken')\n")
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    o = project.pytest()
    r = project.fast()
    assert r.rc == o.rc, (r, o)
    assert "conftest is broken" in r.err + r.out
    project.write("conftest.py", "")
    r = project.fast()
    assert r.rc == 0 and r.dump == {"tests/test_a.py::test_a": "passed"}, r
