"""The edit loop: the layered zygote restarts only the level holding a
changed file, and the watcher pre-warms a fresh zygote before the next run.
Results after every edit must equal plain pytest's."""
import re
import subprocess
import sys
import time

import pytest
from conftest import BIN, ROOT
from test_engine import PARITY, write_all

APP = {
    "app/__init__.py": "",
    "app/core.py": """
        import json
        import decimal

        RATE = decimal.Decimal("1.5")

        def convert(x):
            return json.loads(json.dumps(float(RATE * x)))
    """,
    "tests/conftest.py": """
        import pytest
        from app import core

        @pytest.fixture
        def rate():
            return core.RATE
    """,
    "tests/test_core.py": """
        from app.core import convert

        def test_convert(rate):
            assert convert(2) == 3.0

        def test_rate(rate):
            assert rate > 1
    """,
}


def boots(project):
    """(site, project, collected) boot counters from --status."""
    out = project.status().stdout
    m = re.search(r"boots: site (\d+), project (\d+), collected (\d+)", out)
    assert m, out
    return tuple(int(x) for x in m.groups())


def touch_edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_each_level_restarts_alone(project, tmp_path):
    write_all(project, APP)
    r = project.fast()
    assert r.dump == project.pytest().dump, r
    # Once idle, the daemon re-builds its levels with the plan the first
    # collection produced.
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    start = boots(project)

    touch_edit(project.path / "tests/test_core.py", "rate > 1", "rate > 0")
    r = project.fast()
    assert "re-collecting (collected)" in r.err, r
    assert r.dump == project.pytest().dump
    assert boots(project) == (start[0], start[1], start[2] + 1)

    touch_edit(project.path / "app/core.py", '"1.5"', '"2.5"')
    r = project.fast()
    assert "re-collecting (project)" in r.err, r
    assert r.dump == project.pytest().dump
    assert r.dump["tests/test_core.py::test_convert"] == "failed"
    assert boots(project) == (start[0], start[1] + 1, start[2] + 2)

    # an installed package changes: the site level restarts (here: a module
    # the project imports appears on PYTHONPATH's site-packages-like dir)
    site = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(site)], check=True)
    import site as site_module
    sp = next((site / "lib").glob("python*/site-packages"))
    (sp / "suite.pth").write_text("\n".join(site_module.getsitepackages()) + "\n")
    env = {"VIRTUAL_ENV": str(site)}
    r = project.fast(env=env)
    assert r.rc == 1, r
    venv_boots = boots_env(project, env)
    sp = next((site / "lib").glob("python*/site-packages"))
    (sp / "newly_installed.py").write_text("X = 1\n")
    r = project.fast(env=env)
    assert "re-collecting (site)" in r.err, r
    after = boots_env(project, env)
    assert after == (venv_boots[0] + 1, venv_boots[1] + 1, venv_boots[2] + 1)


def boots_env(project, env):
    p = subprocess.run([str(BIN), "--address", project.address, "--status"], env=project.env(env),
                       capture_output=True, text=True)
    m = re.search(r"boots: site (\d+), project (\d+), collected (\d+)", p.stdout)
    assert m, p.stdout
    return tuple(int(x) for x in m.groups())


@pytest.mark.parametrize("layers", ["1", "0"])
def test_parity_with_layers_on_and_off(project, layers):
    write_all(project, PARITY)
    env = {"PYTEST_FAST_LAYERS": layers}
    oracle = project.pytest()
    for _ in range(3):   # cold, then warm with a plan, then warm
        r = project.fast("--workers", "2", env=env)
        assert r.dump == oracle.dump and r.rc == oracle.rc, r
    status = subprocess.run([str(BIN), "--address", project.address, "--status"],
                            env=project.env(env), capture_output=True, text=True).stdout
    assert ("layers   : on" if layers == "1" else "layers   : off") in status, status


def test_make_app_with_layers_off_matches(project):
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_app.py"), str(project.path)],
                   check=True, capture_output=True)
    oracle = project.pytest()
    on = project.fast("--workers", "2")
    off = project.fast("--workers", "2", env={"PYTEST_FAST_LAYERS": "0"})
    assert on.dump == off.dump == oracle.dump
    assert on.rc == off.rc == oracle.rc


def wait_for(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_watcher_prewarms_and_survives_broken_edits(project):
    write_all(project, APP)
    env = {"PYTEST_FAST_WATCH_POLL": "0.05", "PYTEST_FAST_WATCH_DEBOUNCE": "0.1"}
    r = project.fast("--with-watcher", env=env)
    assert r.rc == 0, r
    assert "watcher  : on" in project.status().stdout
    before = boots(project)

    touch_edit(project.path / "tests/test_core.py", "rate > 1", "rate > 0")
    wait_for(lambda: boots(project)[2] > before[2] and "zygote   : ready" in project.status().stdout,
             what="the watcher's pre-warm")
    r = project.fast(env=env)
    assert "re-collecting" not in r.err, r
    assert "(warm)" in r.out
    assert r.dump == project.pytest().dump

    # a broken edit: the old zygote keeps serving --status; the run reports
    # the collection error exactly as pytest does (exit 2)
    good = boots(project)
    (project.path / "tests/test_core.py").write_text("def test_broken(:\n")
    wait_for(lambda: boots(project)[2] > good[2] and "zygote   : booting" not in project.status().stdout,
             what="the watcher's attempt")
    assert project.status().returncode == 0
    r = project.fast(env=env)
    o = project.pytest()
    assert r.rc == o.rc == 2, r
    assert r.dump == o.dump
    assert "SyntaxError" in r.out or "invalid syntax" in r.out

    # a conftest that raises: pytest's own exit code and message
    (project.path / "tests/test_core.py").write_text(APP["tests/test_core.py"].replace("        ", ""))
    (project.path / "tests/conftest.py").write_text("raise RuntimeError('conftest is broken')\n")
    wait_for(lambda: "zygote   : booting" not in project.status().stdout and boots(project)[2] > good[2] + 1,
             what="the watcher's attempt on the broken conftest")
    r = project.fast(env=env)
    o = project.pytest()
    assert r.rc == o.rc, (r, o)
    assert "conftest is broken" in r.err + r.out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's; elsewhere the poll alone")
@pytest.mark.parametrize("edit", ["tests/test_core.py", "app/core.py", "tests/test_new.py"])
def test_watcher_wakes_on_inotify_not_the_poll(project, edit):
    """With a poll far longer than the wait below, only inotify can tell the
    daemon that a test, an app module or a new file changed."""
    write_all(project, APP)
    env = {"PYTEST_FAST_WATCH_POLL": "3600", "PYTEST_FAST_WATCH_DEBOUNCE": "0.1"}
    assert project.fast("--with-watcher", env=env).rc == 0
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    before = boots(project)
    level = 2   # an app module's edit too: swapped in by an incremental re-collect
    path = project.path / edit
    if path.exists():
        touch_edit(path, "def ", "def  ")
    else:
        path.write_text("def test_new():\n    pass\n")
    wait_for(lambda: boots(project)[level] > before[level] and "zygote   : ready" in project.status().stdout,
             timeout=30, what="the watcher's pre-warm")
    r = project.fast(env=env)
    assert "re-collecting" not in r.err and "(warm)" in r.out, r
    assert r.dump == project.pytest().dump


def test_preloads_are_rewritten_as_pytest_would(project):
    """A module pytest rewrites (here registered by a conftest) may be
    preloaded below the collection only through pytest's own import hook:
    otherwise its asserts would lose pytest's explanations, and pytest would
    warn "Module already imported so cannot be rewritten" (an error under
    filterwarnings=error)."""
    project.write("pytest.ini", "[pytest]\nfilterwarnings = error\n")
    project.write("conftest.py", "import pytest\npytest.register_assert_rewrite('checks')\n")
    project.write("checks.py", """
        import os

        with open(os.path.join(os.path.dirname(__file__), "imports.log"), "a") as f:
            f.write("imported\\n")

        def check(x):
            assert x == 1
    """)
    project.write("mylib.py", "import checks\nX = 1\n")
    project.write("tests/test_a.py", """
        import mylib
        from _pytest.assertion.rewrite import AssertionRewritingHook

        def test_ok():
            mylib.checks.check(mylib.X)

        def test_loader():
            assert isinstance(mylib.checks.__loader__, AssertionRewritingHook)

        def test_explained():
            mylib.checks.check(2)
    """)
    expected = {"tests/test_a.py::test_ok": "passed", "tests/test_a.py::test_loader": "passed",
                "tests/test_a.py::test_explained": "failed"}
    assert project.fast().dump == expected
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    imports = (project.path / "imports.log").read_text()
    touch_edit(project.path / "tests/test_a.py", "test_ok", "test_ok")
    r = project.fast()
    # the edit re-collected, but checks stayed imported below the collection
    assert "re-collecting" in r.err and (project.path / "imports.log").read_text() == imports, r
    o = project.pytest()
    assert r.dump == o.dump == expected, (r, o)
    assert "assert 2 == 1" in r.out and "assert 2 == 1" in o.out, (r, o)


MODELS = """
    from sqlalchemy import Column, ForeignKey, Integer
    from sqlalchemy.orm import declarative_base, relationship

    Base = declarative_base()

    class Parent(Base):
        __tablename__ = "parent"
        id = Column(Integer, primary_key=True)

    class Child(Base):
        __tablename__ = "child"
        id = Column(Integer, primary_key=True)
        parent_id = Column(Integer, ForeignKey("parent.id"))
        parent = relationship({target!r})
        {extra}
"""

MODEL_TESTS = """
    from sqlalchemy import inspect
    from app.models import Child

    def test_first():
        assert inspect(Child).attrs.parent.mapper.class_.__name__ == "Parent"

    def test_second():
        assert Child().parent is None
"""


# A second relationship that writes the same column: SQLAlchemy warns when it configures.
OVERLAP = 'parent_again = relationship("Parent")'
RETRIED = "building it again without the warm-up"


@pytest.mark.parametrize("target, extra", [("Parent", ""), ("Nowhere", ""), ("Parent", OVERLAP)],
                         ids=["clean", "error", "warning"])
def test_project_level_configures_sqlalchemy_mappers_only_when_clean(project, target, extra):
    """Workers start with the mappers configured when configuring them works;
    a mapping error or warning still reaches the tests exactly as in plain
    pytest (the daemon builds the project level again without the warm-up,
    and does not warm up again)."""
    pytest.importorskip("sqlalchemy")
    clean = target == "Parent" and not extra
    project.write("app/__init__.py", "")
    project.write("app/models.py", MODELS.format(target=target, extra=extra))
    project.write("tests/test_models.py", MODEL_TESTS)
    project.write("tests/test_probe.py", """
        from sqlalchemy import inspect
        from app.models import Child

        def test_probe():
            print("configured before any use:", inspect(Child, raiseerr=True).configured)
    """)
    assert project.fast().dump == project.pytest().dump
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    for args in (["tests/test_models.py"], ["-s", "tests/test_probe.py"]):
        r, o = project.fast(*args), project.pytest(*args)
        assert (r.rc, r.dump) == (o.rc, o.dump), (r, o)
    assert f"configured before any use: {clean}" in r.out, r
    assert project.log().count(RETRIED) == (0 if clean else 1), project.log()
    # one worker: with two, each would be the first to meet the error (as under xdist)
    r, o = project.fast("--workers", "1", "tests/test_models.py"), project.pytest("tests/test_models.py")
    assert (r.rc, r.dump) == (o.rc, o.dump), (r, o)
    if target == "Nowhere":
        assert r.dump == {"tests/test_models.py::test_first": "failed", "tests/test_models.py::test_second": "failed"}
        assert "failed to locate a name ('Nowhere')" in o.out
        # the first test meets the original error, the second SQLAlchemy's
        # "One or more mappers failed to initialize" (no warm-up left it behind). Counted
        # in the tracebacks: the short summary repeats it in full only where pytest does
        # not truncate it to the terminal width (under CI=..., for one).
        later = re.compile(r"^\s*E\s+sqlalchemy\.exc\.InvalidRequestError: One or more mappers failed", re.M)
        for out in (r.out, o.out):
            assert len(later.findall(out)) == 1, out
    if extra:
        for out in (r.out, o.out):
            assert "2 passed, 1 warning" in out, out
        # an edit of the app rebuilds the project level: no second try
        project.write("app/models.py", MODELS.format(target=target, extra=extra).replace(
            "Base = declarative_base()", "Base = declarative_base()  # edited"))
        r = project.fast("--workers", "1", "tests/test_models.py")
        assert "2 passed, 1 warning" in r.out, r
        assert project.log().count(RETRIED) == 1, project.log()


def test_threads_started_at_import_are_named_once_per_collection(project):
    """fork() keeps only the forking thread: the first run of each collection
    (single-level, then layered with the thread started in the project level,
    then after an edit) says which threads its tests will not have."""
    project.write("app/__init__.py", "")
    project.write("app/bg.py", """
        import threading
        stop = threading.Event()
        def consume():
            stop.wait()
        threading.Thread(target=consume, name="bg-consumer", daemon=True).start()
    """)
    project.write("tests/test_bg.py", """
        import threading
        from app import bg

        def test_alone():
            assert threading.active_count() == 1
    """)
    note = "1 thread running that no test will have"
    named = "bg-consumer (app.bg.consume)"
    r = project.fast()
    assert r.dump == {"tests/test_bg.py::test_alone": "passed"}, r
    assert note in r.err and named in r.err, r
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    first, second = project.fast(), project.fast()
    assert first.dump == second.dump == r.dump, (first, second)
    assert note in first.err and named in first.err, first
    assert note not in second.err, second
    project.write("tests/test_other.py", "def test_other():\n    pass\n")
    third = project.fast()
    assert note in third.err, third
