"""`pytest --fast` (plugin.py) end to end: the real plugin in a real pytest
controller, the real binary and daemon, plain pytest as the oracle."""
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from conftest import BIN, HERE, ROOT, Result, copies_of_the_binary
from test_engine import ENV_CONFTEST, EXIT_MODULE, PARITY, env_conftest_env, write_all

PYTHONPATH = os.pathsep.join([str(ROOT), str(HERE)])


def fast_env(project, **extra):
    return {"PYTHONPATH": PYTHONPATH, "PYTEST_FAST_BIN": str(BIN),
            "PYTEST_FAST_ADDRESS": project.address, **extra}


def fast(project, *args, env=None, timeout=120):
    """`pytest -p outcome_dump -p plugin --fast ARGS`: its dump is the controller's view."""
    return project.pytest("-p", "plugin", "--fast", *args, env={**fast_env(project), **(env or {})},
                          timeout=timeout)


def run(project, *args, env=None, timeout=120):
    """`python -m pytest ARGS` with nothing added."""
    p = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=project.path,
                       env=project.env({**fast_env(project), **(env or {})}), capture_output=True,
                       text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(p.returncode, p.stdout, p.stderr, None)


def popen(project, *args, env=None):
    return subprocess.Popen([sys.executable, "-m", "pytest", "-p", "plugin", "--fast", *args],
                            cwd=project.path, env=project.env({**fast_env(project), **(env or {})}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, preexec_fn=_default_sigint)


def _default_sigint():
    # Python leaves SIGINT ignored when it starts ignored (a background job);
    # the Ctrl-C tests need pytest's KeyboardInterrupt.
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


TIMING = re.compile(r" in \d+\.\d+s( \(\d+:\d\d:\d\d\))?")
PERCENT = re.compile(r"\s+\[\s*\d+%\]$")
STATUS = re.compile(r"^\S+::\S.* (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def norm(text):
    return [TIMING.sub(" in T", line.rstrip()) for line in text.splitlines()]


def status_lines(out):
    """The per-test lines of -v, in order, without progress percentages."""
    return [PERCENT.sub("", line) for line in norm(out) if STATUS.match(line)]


def section(out, title):
    """The lines of a `=== title ===` section, up to the next section."""
    lines = norm(out)
    start = next((i for i, l in enumerate(lines) if re.match(r"^=+ %s =+$" % re.escape(title), l)), None)
    if start is None:
        return None
    body = []
    for line in lines[start + 1:]:
        if re.match(r"^=+ .* =+$", line):
            break
        body.append(line)
    return body


def final_line(out):
    return norm(out)[-1]


def collected_line(out):
    return next((l for l in norm(out) if "collected" in l and "item" in l), None)


def junit_cases(path):
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = sorted(child.tag for child in case if child.tag in ("failure", "error", "skipped"))
        cases.append((case.get("classname"), case.get("name"), tuple(kinds) or ("passed",)))
    return Counter(cases)


def assert_same_run(ours, oracle, ordered=False):
    """Same outcomes, exit code, test lines and summary (modulo timing/order)."""
    assert ours.rc == oracle.rc, (ours, oracle)
    assert ours.dump == oracle.dump, (ours, oracle)
    if ordered:
        assert status_lines(ours.out) == status_lines(oracle.out), (ours, oracle)
    else:
        assert sorted(status_lines(ours.out)) == sorted(status_lines(oracle.out)), (ours, oracle)
    assert collected_line(ours.out) == collected_line(oracle.out), (ours, oracle)
    summary = "short test summary info"
    assert sorted(section(ours.out, summary) or []) == sorted(section(oracle.out, summary) or [])
    assert final_line(ours.out) == final_line(oracle.out), (ours, oracle)


def load_plugin_module():
    spec = importlib.util.spec_from_file_location("pytest_fast_plugin_under_test", ROOT / "plugin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------- parity


def test_parity_rA_v_junitxml_cold_and_warm(project):
    write_all(project, PARITY)
    oracle = project.pytest("-rA", "-v", "--junitxml=plain.xml")
    assert oracle.dump and len(oracle.dump) >= 20, oracle
    for round_ in ("cold", "warm"):
        ours = fast(project, "-rA", "-v", "--junitxml=fast.xml", env={"PYTEST_FAST_WORKERS": "2"})
        assert_same_run(ours, oracle)
        assert section(ours.out, "warnings summary") == section(oracle.out, "warnings summary")
        assert junit_cases(project.path / "fast.xml") == junit_cases(project.path / "plain.xml")
        assert "re-collecting" not in ours.err, (round_, ours)
        assert "PASSED tests/test_basic.py::test_pass" in ours.out


APP = {
    "pytest.ini": """
        [pytest]
        markers =
            slow: slow tests
    """,
    "app/__init__.py": "",
    "app/heavy.py": """
        # Costly on purpose: >= 1 s of real work on import, no sleep.  It
        # records who imported it in $APP_MARKER.
        import hashlib
        import json
        import os
        import sys
        import time

        with open(os.environ["APP_MARKER"], "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "zygote": "_pytest_fast" in sys.modules}) + "\\n")
        _t0 = time.perf_counter()
        _digest = b""
        while time.perf_counter() - _t0 < 1.0:
            _digest = hashlib.sha256(_digest).digest()
        TABLE = {i: i * i for i in range(100)}
    """,
    "app/calc.py": """
        def add(a, b):
            return a + b

        def div(a, b):
            return a / b
    """,
    "tests/conftest.py": """
        import pytest

        import app.heavy

        def pytest_addoption(parser):
            parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")
            parser.addoption("--level", type=int, default=1, choices=[1, 2, 3])
            parser.addoption("--name", action="append", default=[])

        def pytest_collection_modifyitems(config, items):
            if not config.getoption("--runslow"):
                for item in items:
                    if "slow" in item.keywords:
                        item.add_marker(pytest.mark.skip(reason="need --runslow"))

        @pytest.fixture
        def table():
            return app.heavy.TABLE
    """,
    "tests/test_app.py": """
        import pytest

        from app.calc import add, div

        def test_add():
            assert add(2, 3) == 5

        def test_table(table):
            assert table[9] == 81

        def test_div_by_zero():
            assert div(1, 0) == 0

        @pytest.mark.slow
        def test_slow():
            assert add(1, 1) == 2

        def test_options(request):
            assert request.config.getoption("level") in (1, 2, 3)
            assert request.config.getoption("name") in ([], ["a", "b"])

        @pytest.mark.parametrize("a,b", [(1, 2), (3, 4)])
        def test_param(a, b):
            assert add(a, b) == a + b
    """,
}


@pytest.fixture
def app_project(project):
    write_all(project, APP)
    project.marker_file = project.path / "imports.jsonl"
    return project


def app_env(project):
    return {"APP_MARKER": str(project.marker_file)}


def marker_lines(project):
    if not project.marker_file.exists():
        return []
    return [json.loads(l) for l in project.marker_file.read_text().splitlines()]


def test_app_parity(app_project):
    env = app_env(app_project)
    oracle = app_project.pytest("-rA", "-v", "--junitxml=plain.xml", env=env)
    assert oracle.rc == 1 and oracle.dump["tests/test_app.py::test_div_by_zero"] == "failed", oracle
    for _ in range(2):
        assert_same_run(fast(app_project, "-rA", "-v", "--junitxml=fast.xml", env=env), oracle)
        assert junit_cases(app_project.path / "fast.xml") == junit_cases(app_project.path / "plain.xml")


def test_controller_never_imports_the_conftest_or_the_app(app_project):
    env = app_env(app_project)
    cold = fast(app_project, "-q", env=env)
    assert cold.rc == 1, cold
    warm = fast(app_project, "-q", env=env)
    assert warm.dump == cold.dump and warm.rc == 1, warm
    lines = marker_lines(app_project)
    # Imported by the daemon's zygote (its layers may import it again in the
    # background), never by either controller.
    assert lines and all(line["zygote"] is True for line in lines), lines


def test_conftest_options_parse_under_fast(app_project):
    env = app_env(app_project)
    for args in ([], ["--runslow"], ["--level=2", "--name=a", "--name=b"]):
        oracle = app_project.pytest("-v", *args, env=env)
        ours = fast(app_project, "-v", *args, env=env)
        assert_same_run(ours, oracle)
    assert fast(app_project, "-v", "--runslow", env=env).dump["tests/test_app.py::test_slow"] == "passed"
    bad = fast(app_project, "--level=7", env=env)
    assert bad.rc == app_project.pytest("--level=7", env=env).rc == 4, bad
    assert "invalid choice" in bad.err, bad


def test_help_lists_conftest_options_without_importing_them(app_project):
    env = app_env(app_project)
    ours = fast(app_project, "--help", env=env)
    plain = run(app_project, "-p", "plugin", "--help", env=env)
    assert ours.rc == plain.rc == 0
    assert ours.out == plain.out
    assert "--runslow" in ours.out and "--fast-workers" in ours.out
    assert sum(1 for line in marker_lines(app_project) if not line["zygote"]) == 1  # plain's


def test_edits_are_noticed_and_noted(app_project):
    env = app_env(app_project)
    assert fast(app_project, "-q", env=env).dump["tests/test_app.py::test_add"] == "passed"
    app_project.write("app/calc.py", "def add(a, b):\n    return a - b\n\ndef div(a, b):\n    return a / b\n")
    r = fast(app_project, "-q", env=env)
    assert r.dump["tests/test_app.py::test_add"] == "failed", r
    # (a file edit may be picked up by the daemon before the run asks: no note
    # then); an environment change is only seen by the request, and said so
    r = fast(app_project, "-q", env={**env, "PYTEST_FAST_ENV_PREFIXES": "MYAPP_", "MYAPP_X": "1"})
    assert "pytest-fast: re-collecting" in r.err and "environment changed" in r.err, r


def test_collection_warnings(project):
    project.write("tests/test_w.py", """
        import warnings

        warnings.warn("at import", UserWarning)

        class TestX:
            def __init__(self):
                pass

            def test_no(self):
                pass

        def test_ok():
            pass
    """)
    oracle = project.pytest("-rA")
    ours = fast(project, "-rA")
    assert section(ours.out, "warnings summary") == section(oracle.out, "warnings summary")
    expected = "======================== 1 passed, 2 warnings in T ========================="
    assert final_line(ours.out) == final_line(oracle.out) == expected


def test_module_level_skip(project):
    project.write("tests/test_skipmod.py", """
        import pytest

        pytest.skip("whole module", allow_module_level=True)

        def test_never():
            pass
    """)
    project.write("tests/test_ok.py", "def test_ok():\n    pass\n")
    oracle = project.pytest("-rA")
    ours = fast(project, "-rA")
    assert collected_line(ours.out) == collected_line(oracle.out) == "collected 1 item / 1 skipped"
    assert section(ours.out, "short test summary info") == section(oracle.out, "short test summary info")
    assert final_line(ours.out) == final_line(oracle.out)


def test_conftest_option_with_separate_value(app_project):
    env = app_env(app_project)
    args = ("-v", "--level", "2", "--name", "a", "--name", "b")
    oracle = app_project.pytest(*args, env=env)
    assert oracle.rc == 1 and oracle.dump["tests/test_app.py::test_options"] == "passed", oracle
    assert_same_run(fast(app_project, *args, env=env), oracle)


# --------------------------------------------------- behaviour per option


def test_durations(project):
    project.write("tests/test_d.py", """
        import time

        def test_busy():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.3:
                pass

        def test_quick_1():
            pass

        def test_quick_2():
            pass
    """)
    args = ("--durations=5", "--durations-min=0")
    oracle = project.pytest(*args)
    ours = fast(project, *args)
    assert ours.rc == oracle.rc == 0
    for out in (ours.out, oracle.out):
        lines = section(out, "slowest 5 durations")
        assert lines and len(lines) == 5, out
        assert re.match(r"^0\.[3-9]\d*s call +tests/test_d.py::test_busy$", lines[0]), lines
        for line in lines:
            assert re.match(r"^\d+\.\d\ds (setup|call|teardown) +tests/test_d.py::test_\w+$", line), line


def test_exitfirst(project):
    write_all(project, PARITY)
    oracle = project.pytest("-x", "-v")
    ours = fast(project, "-x", "-v", env={"PYTEST_FAST_WORKERS": "1"})
    assert_same_run(ours, oracle, ordered=True)
    assert "stopping after 1 failures" in ours.out


def test_last_failed(project):
    write_all(project, PARITY)
    fast(project, "-q")
    cache = project.path / ".pytest_cache/v/cache/lastfailed"
    ours = json.loads(cache.read_text())
    shutil.rmtree(project.path / ".pytest_cache")
    project.pytest("-q")
    assert ours == json.loads(cache.read_text())
    oracle = project.pytest("--lf", "-v")
    lf = fast(project, "--lf", "-v")
    assert lf.rc == oracle.rc == 1
    assert lf.dump == oracle.dump
    assert sorted(status_lines(lf.out)) == sorted(status_lines(oracle.out))
    assert "run-last-failure: rerun previous 7 failures" in oracle.out
    assert "run-last-failure: rerun previous 7 failures" in lf.out, lf


def test_collect_only(project):
    write_all(project, PARITY)
    for args in (["--co", "-q"], ["--collect-only", "-q", "-k", "param"], ["--co", "-q", "tests/test_classes.py"]):
        oracle = project.pytest(*args)
        ours = fast(project, *args)
        assert ours.rc == oracle.rc == 0
        assert norm(ours.out) == norm(oracle.out), (ours, oracle)
        assert ours.dump == {} == oracle.dump
    # Not quiet: the native header and counts, pytest's tree (test_info_modes.py has more).
    oracle = project.pytest("--co", "-k", "not param")
    ours = fast(project, "--co", "-k", "not param")
    assert collected_line(ours.out) == collected_line(oracle.out) == "collected 23 items / 5 deselected / 18 selected"
    assert norm(ours.out) == norm(oracle.out), (ours, oracle)


def test_dash_s_output_is_live(project):
    fifo = project.path / "go.fifo"
    os.mkfifo(fifo)
    project.write("tests/test_live.py", f"""
        def test_live():
            print("LIVE-OUTPUT-MARK", flush=True)
            with open({str(fifo)!r}) as f:  # blocks until the harness saw the line
                assert f.read() == "go"
    """)
    fast(project, "--co")  # warm the daemon first
    p = popen(project, "-s", "-q")
    killer = threading.Timer(15, p.kill)  # a bound, not a synchronisation
    killer.start()
    try:
        for line in p.stdout:
            if "LIVE-OUTPUT-MARK" in line:
                break
        else:
            pytest.fail("the test's output never reached the terminal while it ran")
        with open(fifo, "w") as f:
            f.write("go")
        out, err = p.communicate(timeout=60)
    finally:
        killer.cancel()
        p.kill()
        p.wait()
    assert p.returncode == 0, (out, err)
    assert "1 passed" in out


@pytest.mark.parametrize("args", [
    ["-k", "param and not two"],
    ["-m", "xfail"],
    ["tests/test_classes.py::TestA::test_c[1]"],
    ["tests/test_basic.py::test_param", "tests/test_classes.py::TestB"],
    ["--deselect", "tests/test_basic.py::test_fail", "tests/test_basic.py"],
], ids=lambda a: " ".join(a))
def test_selection(project, args):
    write_all(project, PARITY)
    oracle = project.pytest("-v", "-rA", *args)
    ours = fast(project, "-v", "-rA", *args)
    assert_same_run(ours, oracle)


def test_pytest_exit_in_a_test(project):
    project.write("tests/test_exit.py", EXIT_MODULE)
    oracle = project.pytest("-v")
    ours = fast(project, "-v", env={"PYTEST_FAST_WORKERS": "1"})
    assert ours.rc == oracle.rc == 7
    assert ours.dump == oracle.dump
    assert norm(ours.out) == norm(oracle.out), (ours, oracle)
    assert "!!! _pytest.outcomes.Exit: enough !!!" in ours.out


def test_collection_errors(project):
    write_all(project, PARITY)
    project.write("tests/test_broken.py", "import nonexistent_module_xyz\n")
    for extra in ([], ["--continue-on-collection-errors"], ["--co", "-q"]):
        oracle = project.pytest("-rA", *extra)
        ours = fast(project, "-rA", *extra)
        assert ours.rc == oracle.rc == (1 if extra and extra[0].startswith("--cont") else 2), ours
        assert ours.dump == oracle.dump
        assert sorted(section(ours.out, "ERRORS")) == sorted(section(oracle.out, "ERRORS"))
        assert sorted(section(ours.out, "short test summary info")) == \
            sorted(section(oracle.out, "short test summary info"))
        assert final_line(ours.out) == final_line(oracle.out)
    assert "Interrupted: 1 error during collection" in ours.out


def test_usage_errors_and_broken_conftest_match_pytest(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    for args, says in ((["tests/nope.py"], "ERROR: file or directory not found: tests/nope.py"),
                       (["tests/test_a.py::test_nope"], "ERROR: not found: "),
                       (["--no-such-option"], "error: unrecognized arguments: --no-such-option")):
        oracle = project.pytest(*args)
        ours = fast(project, *args)
        assert ours.rc == oracle.rc == 4, (args, ours, oracle)
        assert says in ours.err and says in oracle.err, (ours, oracle)
    ours, oracle = fast(project, "tests/nope.py"), project.pytest("tests/nope.py")
    assert norm(ours.out) == norm(oracle.out) and ours.err == oracle.err
    project.write("tests/conftest.py", "raise RuntimeError('conftest is broken')\n")
    oracle = project.pytest()
    ours = fast(project)
    assert ours.rc == oracle.rc == 4, ours
    assert "conftest is broken" in ours.err
    project.write("tests/conftest.py", "")
    assert fast(project).rc == 0


def test_worker_crash_is_a_failure_of_that_test(project):
    project.write("tests/test_crash.py", """
        import os

        def test_before():
            pass

        def test_exit():
            os._exit(3)

        def test_after():
            pass
    """)
    ours = fast(project, "-v", "-rf")
    assert ours.rc == 1, ours
    assert ours.dump == {"tests/test_crash.py::test_before": "passed",
                         "tests/test_crash.py::test_exit": "failed",
                         "tests/test_crash.py::test_after": "passed"}, ours
    assert "exited with code 3" in ours.out
    assert final_line(ours.out).startswith("=") and "1 failed, 2 passed" in final_line(ours.out)


def test_ctrl_c_cancels_the_run_and_the_daemon_stays_warm(project):
    fifo = project.path / "never.fifo"
    os.mkfifo(fifo)
    project.write("tests/test_block.py", f"""
        import sys

        def test_block():
            sys.stderr.write("BLOCKING-NOW\\n")
            sys.stderr.flush()
            open({str(fifo)!r}).read()  # nobody ever writes: only a cancel ends it
    """)
    project.write("tests/test_quick.py", "def test_quick():\n    pass\n")
    assert fast(project, "-k", "quick").rc == 0
    p = popen(project, "-k", "block")
    killer = threading.Timer(60, p.kill)
    killer.start()
    try:
        # The engine sends worker stderr to the daemon log (see the -s test), so
        # wait for the daemon's own account of the running test instead.
        for line in iter(lambda: project.status().stdout, None):
            if "running" in line.replace("idle", "") or p.poll() is not None:
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        killer.cancel()
        p.kill()
        p.wait()
    assert p.returncode == 2, (out, err)
    assert "KeyboardInterrupt" in out, out
    after = fast(project, "-k", "quick", timeout=60)
    assert after.rc == 0 and after.dump == {"tests/test_quick.py::test_quick": "passed"}, after


def test_daemon_dying_mid_run_is_an_internal_error(project):
    project.write("tests/test_k.py", """
        import os
        import signal

        def test_kills_the_daemon():
            with open(os.environ["DAEMON_PIDFILE"]) as f:
                os.kill(int(f.read()), signal.SIGKILL)
    """)
    r = fast(project, "-q", env={"DAEMON_PIDFILE": project.address[:-len(".sock")] + ".pid"})
    assert r.rc == 3, r
    assert "hung up mid-request" in r.out, r


# ------------------------------------------------------------ inertness


def test_without_fast_the_plugin_changes_nothing(project):
    write_all(project, PARITY)
    project.write("conftest.py", textwrap.dedent(PARITY["conftest.py"]) + textwrap.dedent("""
        def pytest_unconfigure(config):
            import json
            with open(os.environ["ENV_DUMP"], "w") as f:
                json.dump(dict(os.environ), f, sort_keys=True)
    """))
    env = fast_env(project)
    without = run(project, "-rA", "-v", "-p", "outcome_dump", env={**env, "ENV_DUMP": "a.json"})
    with_ = run(project, "-rA", "-v", "-p", "outcome_dump", "-p", "plugin",
                env={**env, "ENV_DUMP": "b.json"})
    assert without.rc == with_.rc == 1
    strip = re.compile(r"0x[0-9a-f]+")
    assert [strip.sub("0x", l) for l in norm(with_.out)] == [strip.sub("0x", l) for l in norm(without.out)]
    assert with_.err == without.err
    a = json.loads((project.path / "a.json").read_text())
    b = json.loads((project.path / "b.json").read_text())
    assert a.pop("ENV_DUMP") == "a.json" and b.pop("ENV_DUMP") == "b.json"
    assert a == b
    assert not os.path.exists(project.address), "a daemon was started without --fast"
    # importing the module alone touches nothing either
    before = dict(os.environ)
    load_plugin_module()
    assert dict(os.environ) == before


def test_inert_in_the_zygote_even_with_fast(project):
    """PYTEST_ADDOPTS reaches the zygote too: there it must do nothing."""
    write_all(project, PARITY)
    oracle = project.pytest()
    ours = project.pytest(env={**fast_env(project), "PYTEST_ADDOPTS": "-p plugin --fast"}, timeout=60)
    assert ours.rc == oracle.rc == 1, ours
    assert ours.dump == oracle.dump
    assert project.status().returncode == 0  # it did run through the daemon


# ------------------------------------------------------ options and refusals


@pytest.mark.parametrize("args,needle", [
    (["-n", "2"], "--fast-workers"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_refused_options(project, args, needle):
    if args[0] == "-n":
        pytest.importorskip("xdist")
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = fast(project, *args)
    assert r.rc == 4, r
    assert needle in r.err, r
    assert not os.path.exists(project.address), "refused, yet a daemon was started"


def test_missing_binary_says_how_to_get_it(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = run(project, "-p", "plugin", "--fast", env={"PYTEST_FAST_BIN": "", "PATH": "/nonexistent"})
    assert r.rc == 4, r
    assert "./build.sh" in r.err and "PYTEST_FAST_BIN" in r.err, r


def test_option_and_environment_precedence(project):
    project.write("tests/test_w.py", """
        import os

        def test_workers():
            assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == os.environ["EXPECT_WORKERS"]
    """)
    other = project.address[:-5] + "-other.sock"
    r = fast(project, env={"PYTEST_FAST_WORKERS": "3", "EXPECT_WORKERS": "3"})
    assert r.rc == 0, r
    r = fast(project, "--fast-workers", "2", "--fast-address=" + other,
             env={"PYTEST_FAST_WORKERS": "3", "EXPECT_WORKERS": "2"})
    assert r.rc == 0, r
    assert os.path.exists(other)
    subprocess.run([str(BIN), "--address", other, "--stop"], capture_output=True, timeout=30)
    r = fast(project, env={"PYTEST_FAST_WORKERS": "zero", "EXPECT_WORKERS": "1"})
    assert r.rc == 4 and "'zero'" in r.err, r
    r = fast(project, "--fast-workers=1", env={"PYTEST_FAST_WORKERS": "zero", "EXPECT_WORKERS": "1"})
    assert r.rc == 0, r
    r = fast(project, env={"PYTEST_FAST_TTL": "abc", "EXPECT_WORKERS": "1"})
    assert r.rc == 4 and "'abc'" in r.err, r
    r = fast(project, "--fast-ttl", "30", env={"PYTEST_FAST_TTL": "abc", "EXPECT_WORKERS": "1",
                                               "PYTEST_FAST_WORKERS": "1"})
    assert r.rc == 0, r
    r = fast(project, env={"PYTEST_FAST_TIMEOUT": "soon"})
    assert r.rc == 4 and "'soon'" in r.err, r


def test_timeout_option_and_variable(project):
    fifo = project.path / "never.fifo"
    os.mkfifo(fifo)
    project.write("tests/test_t.py", f"""
        def test_hangs():
            open({str(fifo)!r}).read()

        def test_fine():
            pass
    """)
    for args, env in ((["--fast-timeout", "1"], {"PYTEST_FAST_TIMEOUT": "0"}),
                      ([], {"PYTEST_FAST_TIMEOUT": "1"})):
        r = fast(project, *args, env=env, timeout=60)
        assert r.rc == 1, r
        assert r.dump == {"tests/test_t.py::test_hangs": "failed", "tests/test_t.py::test_fine": "passed"}
        assert "timed out after 1s" in r.out, r


def test_shares_the_daemon_with_the_cli(app_project):
    """No address given: `pytest-fast` and `pytest --fast` find the same daemon."""
    env = app_project.env({**fast_env(app_project), **app_env(app_project),
                           "XDG_RUNTIME_DIR": app_project.sockdir, "PYTEST_FAST_PYTHON": sys.executable})
    del env["PYTEST_FAST_ADDRESS"]
    try:
        cli = subprocess.run([str(BIN)], cwd=app_project.path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert cli.returncode == 1, cli
        ours = subprocess.run([sys.executable, "-m", "pytest", "-p", "plugin", "--fast", "-q"],
                              cwd=app_project.path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert ours.returncode == 1 and "1 failed, 5 passed, 1 skipped" in ours.stdout, ours
        assert "re-collecting" not in ours.stderr, ours
        assert all(line["zygote"] for line in marker_lines(app_project))
        sockets = list((Path(app_project.sockdir) / "pytest-fast").glob("*.sock"))
        assert len(sockets) == 1, sockets
    finally:
        subprocess.run([str(BIN), "--stop"], cwd=app_project.path, env=env, capture_output=True,
                       timeout=30)


def test_header_lines_of_the_initial_conftests(project):
    """pytest_report_header of the conftests loaded before the session starts
    (not of one found while collecting): the same header as a plain run."""
    project.write("conftest.py", """
        def pytest_report_header(config):
            return "root: demo"
    """)
    project.write("tests/conftest.py", """
        def pytest_report_header(config, start_path):
            return ["tests 1", "tests 2"]
    """)
    project.write("tests/sub/conftest.py", """
        def pytest_report_header():
            return "nested: not initial"
    """)
    project.write("tests/sub/test_a.py", "def test_a():\n    pass\n")

    def header(out):
        return out.split("rootdir:")[0].splitlines()[2:]

    plain = run(project)
    assert header(plain.out) == ["root: demo", "tests 1", "tests 2"], plain
    for _ in range(2):
        ours = fast(project)
        assert header(ours.out) == header(plain.out), ours


def test_environment_changes_of_the_collection_reach_the_tests(project):
    """What the conftest did to os.environ at import reaches the daemon's
    tests, though the controller never imports it."""
    write_all(project, ENV_CONFTEST)
    env = env_conftest_env()
    oracle = project.pytest(env=env)
    assert oracle.rc == 0 and len(oracle.dump) == 3, oracle
    ours = fast(project, env=env)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), ours


def test_a_rebuilt_binary_replaces_the_daemon_of_the_old_one(project, tmp_path):
    """--ensure-daemon carries the build: the plugin never talks to the daemon
    of a binary that was rebuilt since."""
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    old, new = copies_of_the_binary(tmp_path, "old", "new")
    for binary in (old, new, old):
        r = fast(project, "-q", env={"PYTEST_FAST_BIN": binary})
        assert r.rc == 0, r
        assert project.daemon_exe() == binary


# ----------------------------------------------------------------- units


def test_restricted_unpickler_refuses_every_global():
    mod = load_plugin_module()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    for payload in (pickle.dumps(Evil()), pickle.dumps(os.getcwd), pickle.dumps(Counter()),
                    pickle.dumps({"x": ValueError("boom")}, protocol=2)):
        with pytest.raises(pickle.UnpicklingError):
            mod._DataOnly(io.BytesIO(payload)).load()
    data = {"op": "report", "reports": [{"a": (1, 2.5, None, True, b"x")}], "n": [1, "s"]}
    assert mod._DataOnly(io.BytesIO(pickle.dumps(data, protocol=5))).load() == data


def test_forwarded_args_drop_only_the_plugins_own():
    mod = load_plugin_module()
    names = sorted(mod.PLUGIN_NAMES)
    args = ["-p", "plugin", "--fast", "-v", "--fast-workers", "2", "--fast-address=/x", "-k", "a",
            "--fast-ttl", "9", "--fast-timeout=3", "--fast-watch", "-pplugin", "-p", "no:cacheprovider",
            "tests/x.py::TestA::test_b[1]", "--", "--fast"]
    mod.PLUGIN_NAMES = {"plugin"}
    try:
        assert mod.forwarded_args(args) == ["-v", "-k", "a", "-p", "no:cacheprovider",
                                            "tests/x.py::TestA::test_b[1]", "--", "--fast"]
    finally:
        mod.PLUGIN_NAMES = set(names)


def test_fast_watch_turns_the_watcher_on(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = fast(project, "--fast-watch", "-q")
    assert r.rc == 0, r
    assert "watcher  : on" in project.status().stdout


ESCAPES = re.compile(r"(?:\x1b\[[0-9;]*m)+")


def _escapes_in_order(text):
    """pytest's markup for two styles (ERROR's red and bold) comes from a
    set: its order differs between processes (hash randomization)."""
    return [ESCAPES.sub(lambda m: "".join(sorted(re.findall(r"\x1b\[[0-9;]*m", m.group(0)))), line)
            for line in norm(text)]


def test_color_yes_colours_captured_log_level_names(project):
    project.write("tests/test_log.py", """
        import logging

        def test_log():
            logging.getLogger("app").warning("careful")
            logging.getLogger("app").error("bad")
            assert 0
        """)
    env = {"PYTEST_FAST_WORKERS": "1"}
    for args in (("--color=yes", "-rA"), ("--color=no",), ("--color=yes", "--log-level=INFO")):
        oracle = project.pytest(*args)
        ours = fast(project, *args, env=env)
        assert ours.rc == oracle.rc == 1, (args, ours, oracle)
        assert _escapes_in_order(ours.out) == _escapes_in_order(oracle.out), (args, ours, oracle)
        assert ("\x1b[33mWARNING \x1b[0m app:test_log.py:4 careful" in ours.out) == (args[0] == "--color=yes")


def test_fixture_lookup_error_short_summary_line(project):
    project.write("tests/conftest.py", """
        import pytest

        @pytest.fixture
        def from_conftest():
            return 1
        """)
    project.write("tests/test_a.py", """
        def test_uses(from_conftest):
            pass

        def test_unknown(no_such_fixture):
            pass

        def test_plain():
            pass
        """)
    env = {"PYTEST_FAST_WORKERS": "1"}
    for args in (("--noconftest", "-rA"), ("-rE",)):
        oracle = project.pytest(*args)
        ours = fast(project, *args, env=env)
        assert ours.rc == oracle.rc == 1, (args, ours, oracle)
        assert "ERROR tests/test_a.py::test_unknown" in norm(oracle.out), oracle
        assert norm(ours.out) == norm(oracle.out), (args, ours, oracle)
