"""Incremental re-collect: when only test modules changed, the collected
zygote is a fork of the last full collection that imports just those
modules again.  After every edit the collection (ids and order) and the
outcomes must equal plain pytest's, with the incremental path on and off;
--status says which path each re-collect took."""
import os
import re
import signal

import pytest
from test_edit_loop import wait_for
from test_engine import write_all

FILES = {
    "pytest.ini": """
        [pytest]
        markers =
            slow: a slow test
    """,
    "app.py": "ONE = 1\n",
    "tests/conftest.py": """
        import pytest
        from app import ONE

        @pytest.fixture
        def base():
            return ONE
    """,
    "tests/test_a.py": """
        import pytest

        @pytest.fixture
        def local():
            return 2

        def test_one(base, local):
            assert base + local == 3

        @pytest.mark.parametrize("x", [1, 2])
        def test_param(x):
            assert x > 0

        class TestK:
            def test_k(self, base):
                assert base == 1
    """,
    "tests/test_b.py": """
        def test_b(base):
            assert base == 1

        def test_fail():
            assert 0
    """,
    "tests/sub/test_c.py": """
        def test_c():
            pass
    """,
}


def ids(out):
    return [line for line in out.splitlines() if "::" in line]


def recollect_path(project):
    out = project.status().stdout
    m = re.search(r"^collected: (.*)$", out, re.M)
    assert m, out
    return m.group(1)


def pids(project):
    """(the collected zygote's pid, its spare fork's or 0), from --status."""
    out = project.status().stdout
    zygote = re.search(r"^zygote   : \w+ \(pid (\d+)\)", out, re.M)
    spare = re.search(r"^spare    : pid (\d+)", out, re.M)
    return int(zygote.group(1)) if zygote else 0, int(spare.group(1)) if spare else 0


def edit(project, rel, old, new):
    path = project.path / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new))


def check(project, env, expect, *args):
    """Outcomes and collection equal plain pytest's; the last re-collect
    took the path `expect` starts with."""
    r = project.fast(*args, env=env)
    oracle = project.pytest(*args)
    assert r.dump == oracle.dump and r.rc == oracle.rc, (r, oracle, project.log()[-4000:])
    co = project.fast("--collect-only", "-q", *args, env=env, dump=False)
    oco = project.pytest("--collect-only", "-q", *args)
    assert ids(co.out) == ids(oco.out), (co, oco)
    how = recollect_path(project)
    assert how.startswith(expect), how
    return how


def warm(project, env):
    """First run, then wait until the daemon has rebuilt its levels with
    the plan (so that no background rebuild races the edits): each project
    has a non-test module for the project level to preload."""
    r = project.fast(env=env)
    assert r.dump == project.pytest().dump, r
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")


@pytest.mark.parametrize("incremental", ["1", "0"])
def test_incremental_edits_match_plain_pytest(project, incremental):
    write_all(project, FILES)
    env = {"PYTEST_FAST_INCREMENTAL": incremental}
    inc = "incremental" if incremental == "1" else "full"
    warm(project, env)
    # a body edit
    edit(project, "tests/test_a.py", "base + local == 3", "base + local == 4")
    assert check(project, env, inc) == ("incremental (1 module)" if inc == "incremental" else
                                        "full (tests/test_a.py changed; incremental re-collect off)")
    # add a test; remove one and rename one (two modules at once)
    edit(project, "tests/test_b.py", "def test_fail():", "def test_new():\n    pass\n\ndef test_fail():")
    check(project, env, inc)
    edit(project, "tests/test_b.py", "def test_fail():\n    assert 0\n", "")
    edit(project, "tests/test_a.py", "def test_one(", "def test_uno(")
    assert check(project, env, inc).startswith("incremental (2 modules)" if inc == "incremental" else "full")
    # a parametrize case, markers
    edit(project, "tests/test_a.py", "[1, 2]", "[1, 2, -3]")
    check(project, env, inc)
    edit(project, "tests/test_a.py", "class TestK:",
         "@pytest.mark.slow\nclass TestK:\n    @pytest.mark.xfail(strict=True)\n"
         "    def test_x(self):\n        assert 0\n")
    edit(project, "tests/sub/test_c.py", "def test_c", "import pytest\n\n@pytest.mark.skip(reason='no')\ndef test_c")
    check(project, env, inc)
    check(project, env, "", "-m", "slow")
    check(project, env, "", "-m", "not slow", "-k", "param or uno")
    # a module-level skip comes and goes
    skip = "\npytest.skip('later', allow_module_level=True)\n"
    edit(project, "tests/sub/test_c.py", "import pytest\n", "import pytest\n" + skip)
    check(project, env, inc)
    edit(project, "tests/sub/test_c.py", skip, "")
    check(project, env, inc)
    # fixtures: the module's fixture goes (its test now errors, as in pytest),
    # a module-scoped one and an autouse one come
    edit(project, "tests/test_a.py", "@pytest.fixture\ndef local():\n    return 2\n",
         "@pytest.fixture(scope='module')\ndef shared():\n    return []\n\n"
         "@pytest.fixture(autouse=True)\ndef auto(shared):\n    shared.append(1)\n")
    edit(project, "tests/test_a.py", "def test_param(x):", "def test_param(x, shared):\n    assert shared")
    check(project, env, inc)
    assert project.fast(env=env).dump["tests/test_a.py::test_uno"] == "error"
    # the fixture comes back
    edit(project, "tests/test_a.py", "def test_uno(base, local):", "@pytest.fixture\ndef local():\n"
         "    return 3\n\ndef test_uno(base, local):")
    check(project, env, inc)
    assert project.fast(env=env).dump["tests/test_a.py::test_uno"] == "passed"
    # a syntax error: the level is rebuilt, errors reported as before; the fix
    # is incremental again (from the collection that had the error)
    edit(project, "tests/test_b.py", "def test_b(base):", "def test_b(base)")
    how = check(project, env, "full")
    assert inc == "full" or "collecting tests/test_b.py failed" in how, how
    edit(project, "tests/test_b.py", "def test_b(base)", "def test_b(base):")
    check(project, env, inc)
    # a conftest edit, a file added, renamed, removed: always in full
    edit(project, "tests/conftest.py", "return ONE", "return ONE + 1")
    assert check(project, env, "full").startswith("full (tests/conftest.py changed")
    project.write("tests/test_d.py", "def test_d():\n    pass\n")
    assert "files added or removed" in check(project, env, "full")
    (project.path / "tests/test_d.py").rename(project.path / "tests/test_e.py")
    check(project, env, "full")
    (project.path / "tests/test_e.py").unlink()
    check(project, env, "full")
    edit(project, "tests/test_b.py", "def test_new():\n    pass\n", "def test_new():\n    assert 1\n")
    check(project, env, inc)
    if inc == "incremental":
        assert "re-collecting incrementally" in project.log()


HOOKED = {
    "conftest.py": """
        def pytest_collection_modifyitems(items):
            items.sort(key=lambda item: item.name, reverse=True)
    """,
    "test_x.py": """
        from helpers import VALUE

        def test_a():
            assert VALUE == 1

        def test_z():
            pass
    """,
    "helpers.py": "VALUE = 1\n",
}


def test_unsafe_hooks_and_helper_modules_fall_back(project):
    write_all(project, HOOKED)
    warm(project, None)
    edit(project, "test_x.py", "def test_z():", "def test_m():\n    pass\n\ndef test_z():")
    how = check(project, None, "full")
    assert how == "full (conftest.py implements pytest_collection_modifyitems)", how
    assert "incremental re-collect refused" in project.log()
    # without the hook, a test module is incremental, but a helper it
    # imports that changed outside function bodies is imported again in full
    (project.path / "conftest.py").write_text("")
    check(project, None, "full")
    edit(project, "test_x.py", "def test_m():", "def test_n():")
    check(project, None, "incremental")
    edit(project, "helpers.py", "1", "2")
    assert check(project, None, "full") == "full (helpers.py changed outside function bodies)"


def test_a_test_module_imported_by_another_falls_back(project):
    write_all(project, {
        "test_base.py": "def make():\n    return 1\n\ndef test_base():\n    assert make() == 1\n",
        "test_user.py": "from test_base import make\n\ndef test_user():\n    assert make() == 1\n",
        "conftest.py": "import app\n",
        "app.py": "",
    })
    warm(project, None)
    edit(project, "test_base.py", "return 1", "return 2")
    how = check(project, None, "full")
    assert how == "full (test_user.py imports from a changed test module)", how
    edit(project, "test_user.py", "== 1", "== 2")
    check(project, None, "incremental")


def test_an_edit_takes_the_spare_fork_and_a_dead_one_is_not_waited_for(project):
    """Once idle after a run, the full collection forks a spare that waits
    for the next edit: that edit's re-collect is the spare itself, so it
    waits for no fork().  A spare that dies is reported, and the next edit
    forks as before."""
    write_all(project, FILES)
    warm(project, None)
    spare = wait_for(lambda: pids(project)[1], what="the spare fork")
    edit(project, "tests/test_a.py", "base + local == 3", "base + local == 4")
    check(project, None, "incremental (1 module)")
    zygote, _ = pids(project)
    assert zygote == spare, (zygote, spare, project.log()[-3000:])

    # the runs in check() left a new spare, forked after the edit
    spare = wait_for(lambda: pids(project)[1], what="the next spare fork")
    assert spare != zygote
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: pids(project)[1] != spare, what="the daemon to see the spare die")
    assert "the spare fork of the collected zygote exited" in project.log()
    edit(project, "tests/test_a.py", "base + local == 4", "base + local == 3")
    check(project, None, "incremental (1 module)")
    assert pids(project)[0] not in (zygote, spare)
    wait_for(lambda: pids(project)[1], what="a spare fork again")


def test_the_watcher_prewarms_incrementally(project):
    write_all(project, FILES)
    env = {"PYTEST_FAST_WATCH_POLL": "0.05", "PYTEST_FAST_WATCH_DEBOUNCE": "0.1"}
    r = project.fast("--with-watcher", env=env)
    assert r.dump == project.pytest().dump, r
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")
    edit(project, "tests/test_b.py", "def test_fail():", "def test_more():\n    pass\n\ndef test_fail():")
    wait_for(lambda: "collected: incremental (1 module)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the incremental pre-warm")
    log = project.log()
    assert "pre-warming" in log and "re-collecting incrementally" in log, log
    r = project.fast(env=env)
    assert "re-collecting" not in r.err, r
    assert r.dump == project.pytest().dump and "tests/test_b.py::test_more" in r.dump, r
