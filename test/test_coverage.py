"""Coverage (issue 14): `pytest-fast --cov` and `pytest --fast --cov` write the
data plain `pytest --cov` writes — per file, the executed lines (and arcs with
--cov-branch, and each line's contexts with --cov-context=test) — cold, warm,
with layers on and off, after edits; --cov-fail-under gives pytest-cov's exit
code; the combined file is the one `coverage report` reads."""
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from test_edit_loop import touch_edit, wait_for
from test_engine import write_all
from test_plugin import fast as plugin_fast

coverage = pytest.importorskip("coverage")
pytest.importorskip("pytest_cov")

APP = {
    "app/__init__.py": "VERSION = (1, 0)\n",
    "app/core.py": """
        import os

        RATE = 2 if os.environ.get("APP_FAST") else 3


        class Account:
            def __init__(self, balance):
                self.balance = balance

            def withdraw(self, amount):
                if amount > self.balance:
                    raise ValueError("insufficient")
                self.balance -= amount
                return self.balance

            def never(self):
                return "never called"


        def scale(x):
            if x < 0:
                return -x * RATE
            for _ in range(2):
                x += 1
            return x * RATE


        def closing():
            return "closed"
    """,
    "app/lazy.py": """
        def helper(flag):
            if flag:
                return 1
            return 0
    """,
    "tests/conftest.py": """
        import pytest
        from app import core

        @pytest.fixture(scope="session")
        def account():
            acc = core.Account(10)
            yield acc
            core.closing()
    """,
    "tests/test_core.py": """
        import pytest
        from app.core import scale

        def test_scale():
            assert scale(1) == 9

        def test_withdraw(account):
            assert account.withdraw(1) == 9

        def test_overdraw(account):
            with pytest.raises(ValueError):
                account.withdraw(100)
    """,
    "tests/test_lazy.py": """
        def test_lazy():
            from app.lazy import helper
            assert helper(True) == 1
    """,
}


def covdata(project, name=".coverage"):
    """{file relative to the project: (lines, arcs, {line: contexts})}."""
    path = project.path / name
    assert path.exists(), f"no {name} in {project.path}"
    data = coverage.CoverageData(basename=str(path))
    data.read()
    out = {}
    for f in data.measured_files():
        rel = os.path.relpath(f, project.path) if os.path.isabs(f) else f   # relative_files
        if rel.startswith(".."):
            continue   # the test harness's own plugins (outcome_dump) run in the controller
        contexts = {line: sorted(c) for line, c in data.contexts_by_lineno(f).items()}
        out[rel] = (sorted(data.lines(f) or ()), sorted(data.arcs(f) or ()), contexts)
    return out


def leftovers(project):
    return sorted(p.name for p in project.path.iterdir() if p.name.startswith(".coverage."))


def fresh(project):
    for p in project.path.iterdir():
        if p.name == ".coverage" or p.name.startswith(".coverage."):
            p.unlink()


def plain(project, *args, env=None):
    fresh(project)
    r = project.pytest(*args, env=env)
    return r, covdata(project)


def cli(project, *args, env=None, workers=2):
    fresh(project)
    r = project.fast("--workers", str(workers), *args, env=env)
    assert not leftovers(project), r
    return r, covdata(project)


def plugin(project, *args, env=None, workers=2):
    fresh(project)
    r = plugin_fast(project, "--fast-workers", str(workers), *args, env=env)
    assert not leftovers(project), r
    return r, covdata(project)


def line_of(project, rel, text):
    lines = (project.path / rel).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def total_line(text):
    m = re.search(r"^TOTAL .*$", text, re.M)
    assert m, text
    return m.group(0)


def layered(project):
    wait_for(lambda: "on (preloading)" in project.status().stdout and
             "zygote   : ready" in project.status().stdout, what="the preloading layers")


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_cold_warm_layered_and_edited_match_plain(project, front):
    write_all(project, APP)
    args = ("--cov=app", "--cov-branch", "--cov-report=term-missing")
    want_r, want = plain(project, *args)
    assert want_r.rc == 0 and "app/core.py" in want, want_r
    r, got = front(project, *args)
    assert (r.rc, got) == (0, want), r
    assert total_line(r.out) == total_line(want_r.out)
    layered(project)   # now the site level measures and the project level preloads app
    r, got = front(project, *args)
    assert (r.rc, got) == (0, want), r
    touch_edit(project.path / "app/core.py", "x += 1", "x += 2")
    want_r, want = plain(project, *args)
    r, got = front(project, *args)
    assert "re-collecting (project)" in r.err, r
    assert (r.rc, got) == (want_r.rc, want), r


def test_layers_off_and_lines_only(project):
    write_all(project, APP)
    env = {"PYTEST_FAST_LAYERS": "0"}
    _, want = plain(project, "--cov=app")
    assert all(not arcs for _, arcs, _ in want.values())
    assert cli(project, "--cov=app", env=env)[1] == want
    assert plugin(project, "--cov=app", env=env)[1] == want


def test_a_plain_run_is_never_traced(project):
    write_all(project, APP)
    _, want = cli(project, "--cov=app")
    fresh(project)
    r = project.fast("--workers", "2")
    assert r.rc == 0 and "coverage" not in r.out, r
    assert not (project.path / ".coverage").exists() and not leftovers(project)
    assert cli(project, "--cov=app")[1] == want


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_fail_under_exit_codes(project, front):
    write_all(project, APP)
    for under, rc in (("100", 1), ("50", 0)):
        want_r, want = plain(project, "--cov=app", "--cov-fail-under=" + under)
        assert want_r.rc == rc, want_r
        r, got = front(project, "--cov=app", "--cov-fail-under=" + under)
        assert (r.rc, got) == (rc, want), r
        assert ("FAIL Required test coverage" in r.out) == (rc == 1), r


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_config_file_source_omit_and_its_edits(project, front):
    write_all(project, APP)
    project.write(".coveragerc", """
        [run]
        source = app
        omit = app/lazy.py
        branch = True
        relative_files = True
    """)
    _, want = plain(project, "--cov")
    assert "app/lazy.py" not in want and "app/core.py" in want, want
    r, got = front(project, "--cov")
    assert (r.rc, got) == (0, want), r
    layered(project)
    assert front(project, "--cov")[1] == want
    touch_edit(project.path / ".coveragerc", "omit = app/lazy.py", "omit = app/__init__.py")
    _, want = plain(project, "--cov")
    assert "app/lazy.py" in want and "app/__init__.py" not in want, want
    r, got = front(project, "--cov")
    assert got == want, r


def test_pyproject_configuration_and_xml_report(project):
    write_all(project, APP)
    project.write("pyproject.toml", """
        [tool.pytest.ini_options]
        addopts = "--cov=app --cov-report=xml"

        [tool.coverage.run]
        branch = true
    """)
    _, want = plain(project)
    assert any(arcs for _, arcs, _ in want.values()), want
    want_xml = (project.path / "coverage.xml").read_text()
    r, got = cli(project)
    assert got == want, r
    assert "Coverage XML written to file coverage.xml" in r.out, r
    xml = (project.path / "coverage.xml").read_text()
    # the same per-line hits; only the timestamp differs
    assert re.sub(r'timestamp="\d+"', "", xml) == re.sub(r'timestamp="\d+"', "", want_xml)


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_test_contexts(project, front):
    write_all(project, APP)
    args = ("--cov=app", "--cov-context=test")
    _, want = plain(project, *args)
    assert any("tests/test_core.py::test_scale|run" in c
               for _, _, ctx in want.values() for c in ctx.values()), want
    # One worker: the session fixture's teardown runs in the last test's
    # teardown context, as in the plain run (with more workers, in each
    # worker's last test, as under pytest-xdist).
    assert front(project, *args, workers=1)[1] == want


def test_combined_file_serves_coverage_report(project):
    write_all(project, APP)
    r, _ = cli(project, "--cov=app", "--cov-report=term-missing")
    rep = subprocess.run([sys.executable, "-m", "coverage", "report", "-m"], cwd=project.path,
                         capture_output=True, text=True, env=project.env())
    assert rep.returncode == 0, rep
    assert total_line(rep.stdout) == total_line(r.out)


def test_stale_worker_files_never_leak(project):
    write_all(project, APP)
    _, want = plain(project, "--cov=app")
    fresh(project)
    stale = coverage.CoverageData(basename=str(project.path / ".coverage"),
                                  suffix="pytest-fast.gw0.1")
    stale.add_lines({str(project.path / "app/lazy.py"): [4]})   # `return 0`: never runs
    stale.write()
    assert leftovers(project) == [".coverage.pytest-fast.gw0.1"]
    r = project.fast("--workers", "2", "--cov=app")
    assert r.rc == 0, r
    assert covdata(project) == want
    assert not leftovers(project)


@pytest.mark.parametrize("end,extra", [("os._exit(3)", ()), ("time.sleep(60)", ("--timeout", "1"))],
                         ids=["crash", "timeout"])
def test_crashed_or_hung_worker_loses_only_its_test(project, end, extra):
    write_all(project, {k: v for k, v in APP.items() if k != "tests/test_lazy.py"})
    project.write("tests/test_crash.py", f"""
        import os
        import time
        from app.lazy import helper

        def test_1_before():
            assert helper(True) == 1

        def test_2_crash():
            helper(False)
            {end}

        def test_3_after():
            from app.core import Account
            assert Account(1).never()
    """)
    r, got = cli(project, "--cov=app", *extra, workers=1)
    assert r.rc == 1, r
    assert "the lines this test executed are not in the data" in r.out, r
    lazy_lines = got["app/lazy.py"][0]
    assert 3 in lazy_lines and 4 not in lazy_lines, got   # test_2's `return 0` is lost
    never = line_of(project, "app/core.py", 'return "never called"')
    assert never in got["app/core.py"][0], got   # test_3 ran in the fresh worker


def test_cli_refusals_never_send_to_a_front_end_that_refuses(project):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = project.fast("--junitxml=out.xml")
    assert r.rc == 4 and "pytest --fast --junitxml" in r.err, r


def test_example_project_matches_plain(project):
    import shutil
    shutil.copytree(ROOT / "test" / "example", project.path, dirs_exist_ok=True)
    args = ("--cov", "--cov-branch")
    want_r, want = plain(project, *args)
    assert want, want_r
    r, got = cli(project, *args)
    assert (r.rc, got) == (want_r.rc, want), r
    r, got = plugin(project, *args)
    assert (r.rc, got) == (want_r.rc, want), r


def test_make_app_matches_plain(project):
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_app.py"), str(project.path)],
                   check=True, capture_output=True)
    args = ("--cov=app", "--cov-branch")
    want_r, want = plain(project, *args)
    assert len(want) > 10, want_r
    r, got = cli(project, *args)
    assert (r.rc, got) == (want_r.rc, want), r
    layered(project)
    r, got = cli(project, *args)
    assert "(warm)" in r.out and (r.rc, got) == (want_r.rc, want), r
    r, got = plugin(project, *args)
    assert (r.rc, got) == (want_r.rc, want), r


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_no_report_after_x_and_no_worker_files_left(project, front):
    write_all(project, APP)
    project.write("tests/test_core.py", "def test_fails():\n    assert 0\n")
    fresh(project)
    want = project.pytest("--cov=app", "-x")
    assert want.rc == 1 and "tests coverage" not in want.out, want
    assert not (project.path / ".coverage").exists()
    fresh(project)
    run = project.fast if front is cli else lambda *a: plugin_fast(project, *a)
    r = run("--cov=app", "-x")
    assert r.rc == 1 and "tests coverage" not in r.out, r
    assert not (project.path / ".coverage").exists()
    assert not leftovers(project), "a later plain pytest --cov would combine them"


@pytest.mark.parametrize("front", [cli, plugin], ids=["cli", "plugin"])
def test_parallel_and_data_file_settings(project, front):
    write_all(project, APP)
    project.write("setup.cfg", """
        [coverage:run]
        parallel = True
        data_file = out/.coverage
    """)
    (project.path / "out").mkdir()

    def data():
        got = covdata(project, "out/.coverage")
        (project.path / "out/.coverage").unlink()
        left = [p.name for p in (project.path / "out").iterdir()]
        assert not left, left
        return got

    want_r = project.pytest("--cov=app")
    assert want_r.rc == 0, want_r
    want = data()
    if front is cli:
        r = project.fast("--workers", "2", "--cov=app")
    else:
        r = plugin_fast(project, "--fast-workers", "2", "--cov=app")
    assert r.rc == 0, r
    assert data() == want


def test_cli_writes_the_reports_asked_for(project):
    import json
    write_all(project, APP)
    args = ("--cov=app", "--cov-branch", "--cov-report=json:plain.json", "--cov-report=html:plainhtml",
            "--cov-report=lcov:plain.lcov")
    want_r, _ = plain(project, *args)
    assert want_r.rc == 0, want_r
    r, _ = cli(project, *[a.replace("plain", "ours") for a in args])
    assert r.rc == 0, r
    for text in ("Coverage JSON written to file ours.json", "Coverage HTML written to dir ourshtml",
                 "Coverage LCOV written to file ours.lcov"):
        assert text in r.out, r
    assert "TOTAL" not in r.out, "a term report only when asked for (or by default)"
    want, got = (json.loads((project.path / n).read_text()) for n in ("plain.json", "ours.json"))
    assert got["files"] == want["files"] and got["totals"] == want["totals"]
    assert (project.path / "ourshtml" / "index.html").exists()
    assert (project.path / "ours.lcov").read_text() == (project.path / "plain.lcov").read_text()


def test_no_cov_measures_nothing(project):
    write_all(project, APP)
    fresh(project)
    r = project.fast("--cov=app", "--no-cov")
    assert r.rc == 0 and "tests coverage" not in r.out, r
    assert not (project.path / ".coverage").exists() and not leftovers(project)


def test_a_coverage_file_per_shard_combines_to_plain_pytests_data(project):
    """The CI recipe: each shard writes COVERAGE_FILE=.coverage.shard-K, then
    `coverage combine` makes what one plain `pytest --cov` writes.  A shard
    started with another COVERAGE_FILE gets its own chain, not the last one's
    data file."""
    write_all(project, APP)
    _, want = plain(project, "--cov=app")
    fresh(project)
    for k in (1, 2, 3):
        r = project.fast("--workers", "2", "--shard", f"{k}/3", "--cov=app", "--cov-report=",
                         env={"COVERAGE_FILE": f".coverage.shard-{k}"})
        assert r.rc in (0, 5), r
        assert (project.path / f".coverage.shard-{k}").exists(), (k, r, leftovers(project))
    assert leftovers(project) == [".coverage.shard-1", ".coverage.shard-2", ".coverage.shard-3"]
    c = subprocess.run([sys.executable, "-m", "coverage", "combine", *leftovers(project)], cwd=project.path,
                       env=project.env(), capture_output=True, text=True, timeout=60)
    assert c.returncode == 0, c
    assert covdata(project) == want
