"""--affected (CLI) / --fast-affected (plugin): only what an edit could change.

The selection logic (src/affected.py) is plain Python and is tested here
directly; the end-to-end tests drive both front ends against plain pytest,
and a quick mutation run on make_app checks that random edits are never
missed (test/mutate.py runs the full one)."""
import ast
import importlib.util
import json
import os
import random
import sys
import textwrap
import time

import mutate
import pytest
from conftest import ROOT
from test_plugin import fast as plugin_fast
from test_plugin import run as plugin_run


def _load_affected():
    spec = importlib.util.spec_from_file_location("pf_affected", ROOT / "src" / "affected.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


affected = _load_affected()


# ------------------------------------------------------------- the logic

def test_skeleton_ignores_function_bodies_only():
    def skeleton(source):
        return affected._hollow_hash(ast.parse(source))

    base = b"X = 1\n\n@deco(2)\ndef f(a=1):\n    return a + 1\n"
    assert skeleton(base) == skeleton(base.replace(b"a + 1", b"a + 2"))
    assert skeleton(base) != skeleton(base.replace(b"X = 1", b"X = 2"))
    assert skeleton(base) != skeleton(base.replace(b"deco(2)", b"deco(3)"))
    assert skeleton(base) != skeleton(base.replace(b"a=1", b"a=2"))


def test_a_body_edit_names_the_functions_whose_bodies_changed(tmp_path):
    source = ("def f():\n    return 1\n\n\nclass C:\n    def m(self):\n        def inner():\n"
              "            return 2\n        return inner()\n\n\nasync def g():\n    pass\n")
    (tmp_path / "m.py").write_text(source)
    files = {"m.py": affected.fingerprint(str(tmp_path), "m.py", {}, {})}
    assert sorted(files["m.py"]["bodies"]) == ["C.m", "f", "g"]
    for old, new, how, names in (("return 1", "return 3", "body", {"f"}),
                                 ("return 2", "return 4", "body", {"C.m"}),
                                 ("return 1", "\n\n    return 1", "body", set()),   # lines only
                                 ("pass", "return 5", "body", {"g"}),
                                 ("def f():", "def f(x=1):", "module", None),
                                 ("return 1", "return (", "module", None)):
        (tmp_path / "m.py").write_text(source.replace(old, new))
        changed, bodies = affected._changes(str(tmp_path), files)
        assert changed == {"m.py": how}, (old, new)
        assert bodies.get("m.py") == names, (old, new)


@pytest.mark.parametrize("text", ["", "{", "[]", '{"format": "other"}',
                                  '{"format": "pytest-fast-affected 2", "world": "w", "files": {}, '
                                  '"tests": {"t": {"deps": 3}}}'])
def test_a_corrupt_or_foreign_record_is_no_record(tmp_path, text):
    path = tmp_path / "affected.json"
    path.write_text(text)
    assert affected.load(str(path)) is None
    chosen, why = affected.affected(None, "w", str(tmp_path), {"t": "t.py"})
    assert chosen == {"t"} and "every test" in why


def _project(tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "__init__.py").write_text("")
    (tmp_path / "app" / "base.py").write_text("LIMIT = 3\n\ndef limit():\n    return LIMIT\n")
    (tmp_path / "app" / "svc.py").write_text("from app.base import LIMIT\n\ndef twice(x):\n    return 2 * x\n")
    (tmp_path / "test_a.py").write_text("from app import svc\n\ndef test_a():\n    assert svc.twice(1) == 2\n")
    (tmp_path / "test_b.py").write_text("def test_b():\n    pass\n")
    modules = {"app": "app/__init__.py", "app.base": "app/base.py", "app.svc": "app/svc.py",
               "test_a": "test_a.py", "test_b": "test_b.py"}
    ran = {"test_a.py::test_a": {"module": "test_a.py", "deps": ["app/svc.py", "test_a.py"], "failed": False},
           "test_b.py::test_b": {"module": "test_b.py", "deps": ["test_b.py"], "failed": False}}
    tests = {n: r["module"] for n, r in ran.items()}
    record = affected.update(None, "w", str(tmp_path), ran, modules.values(), modules, time.time_ns())
    return record, tests, ran, modules


def _touch(path, text):
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))   # a later mtime, whatever the clock


def test_a_body_edit_selects_the_tests_that_ran_it(tmp_path):
    record, tests, _, _ = _project(tmp_path)
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == set()
    _touch(tmp_path / "app" / "svc.py", "from app.base import LIMIT\n\ndef twice(x):\n    return x + x\n")
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == {"test_a.py::test_a"}


def test_a_module_level_edit_selects_every_importer(tmp_path):
    record, tests, _, _ = _project(tmp_path)
    # nothing of base.py ran in the tests, but svc.py imports it and test_a imports svc
    _touch(tmp_path / "app" / "base.py", "LIMIT = 4\n\ndef limit():\n    return LIMIT\n")
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == {"test_a.py::test_a"}
    assert affected.affected(record, "other world", str(tmp_path), tests)[0] == set(tests)


def test_same_content_is_no_change_and_new_or_failed_tests_run(tmp_path):
    record, tests, _, _ = _project(tmp_path)
    _touch(tmp_path / "test_b.py", (tmp_path / "test_b.py").read_text())
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == set()
    record["tests"]["test_b.py::test_b"]["failed"] = True
    chosen, _ = affected.affected(record, "w", str(tmp_path), {**tests, "test_b.py::test_new": "test_b.py"})
    assert chosen == {"test_b.py::test_b", "test_b.py::test_new"}


def test_a_run_of_some_tests_leaves_the_others_stale(tmp_path):
    record, tests, ran, modules = _project(tmp_path)
    _touch(tmp_path / "app" / "svc.py", "from app.base import LIMIT\n\ndef twice(x):\n    return x + x\n")
    # test_b alone runs (say -k test_b): svc.py's new fingerprint is recorded,
    # but test_a ran against the old one and must still be selected
    only_b = {"test_b.py::test_b": ran["test_b.py::test_b"]}
    record = affected.update(record, "w", str(tmp_path), only_b, modules.values(), modules, time.time_ns())
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == {"test_a.py::test_a"}


def test_a_file_edited_during_the_run_is_not_trusted(tmp_path):
    record, tests, ran, modules = _project(tmp_path)
    started = time.time_ns()
    _touch(tmp_path / "test_b.py", "def test_b():\n    assert 0\n")
    # base.py too, after the tests ran LIMIT = 3: the record cannot say what
    # changed (a save while the record is written), so every importer runs
    _touch(tmp_path / "app" / "base.py", "LIMIT = 4\n\ndef limit():\n    return LIMIT\n")
    record = affected.update(record, "w", str(tmp_path), ran, modules.values(), modules, started)
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == {"test_a.py::test_a", "test_b.py::test_b"}


@pytest.mark.parametrize("edit, chosen", [
    ("LIMIT = 4\n\ndef limit():\n    return LIMIT\n", {"test_a.py::test_a"}),   # module level: importers
    ("LIMIT = 3\n\ndef limit():\n    return LIMIT + 0\n", set()),              # a body no test ran
])
def test_a_save_while_the_record_is_written_counts_from_what_the_run_found(tmp_path, edit, chosen):
    """A save as soon as the result arrives, while the leader still writes
    the record: the record holds base.py as the run found it, so the next
    run compares the save with that content, exactly."""
    record, tests, ran, modules = _project(tmp_path)
    seen = {}
    assert affected.affected(record, "w", str(tmp_path), tests, seen=seen)[0] == set()
    started = time.time_ns()
    _touch(tmp_path / "app" / "base.py", edit)
    record = affected.update(record, "w", str(tmp_path), ran, modules.values(), modules, started, seen)
    assert affected.affected(record, "w", str(tmp_path), tests)[0] == chosen


# ------------------------------------------------------------ end to end

APP = {
    "app/__init__.py": "",
    "app/prices.py": """
        RATE = 2

        def price(n):
            return n * RATE
        """,
    "app/names.py": """
        def name(n):
            return "item %d" % n
        """,
    "tests/conftest.py": """
        import pytest

        from app import names


        @pytest.fixture(scope="module")
        def label():
            return names.name(1)
        """,
    "tests/test_prices.py": """
        from app import prices

        def test_price():
            assert prices.price(2) == 4

        def test_zero():
            assert prices.price(0) == 0
        """,
    "tests/test_names.py": """
        def test_first(label):
            assert label == "item 1"

        def test_second(label):
            assert label.startswith("item")
        """,
    "tests/test_data.py": """
        from pathlib import Path

        def test_data():
            assert Path(__file__).with_name("data.txt").read_text() == "ok\\n"

        def test_plain():
            pass
        """,
    "tests/data.txt": "ok\n",
}


def _src(rel):
    return textwrap.dedent(APP[rel]).lstrip()


def _write_app(project):
    for rel, text in APP.items():
        project.write(rel, text)


def _affected_run(project, *args):
    """A run; its reply comes before its leader writes the record, so the
    edit that follows may race the record (as a save on seeing the result
    does): the selection must be exact all the same."""
    r = project.fast("--affected", *args)
    assert r.rc in (0, 1), r
    return r, set(r.dump)


def test_cli_selects_what_each_kind_of_edit_can_change(project):
    _write_app(project)
    full = project.fast()
    assert full.rc == 0 and len(full.dump) == 6, full
    record = project.path / ".pytest_cache" / "d" / "pytest-fast" / "affected.json"
    assert not record.exists()      # a plain run pays nothing for --affected
    r, chosen = _affected_run(project)
    assert len(chosen) == 6 and "every test: no usable record" in r.err, r
    r, chosen = _affected_run(project)
    assert chosen == set() and r.rc == 0, r      # nothing to re-run is a success, not exit 5
    assert "--affected: 0 of 6 tests" in r.err, r
    # a function body
    project.write("app/prices.py", APP["app/prices.py"].replace("n * RATE", "RATE * n"))
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_prices.py::test_price", "tests/test_prices.py::test_zero"}, r
    assert _affected_run(project)[1] == set()
    # a module-level constant: what imports the module, even if no code of it ran
    project.write("app/prices.py", APP["app/prices.py"].replace("RATE = 2", "RATE = 3"))
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_prices.py::test_price", "tests/test_prices.py::test_zero"}, r
    assert r.dump["tests/test_prices.py::test_price"] == "failed"
    # a failed test runs again until it passes
    assert _affected_run(project)[1] == {"tests/test_prices.py::test_price"}
    project.write("app/prices.py", APP["app/prices.py"])
    assert _affected_run(project)[1] == {"tests/test_prices.py::test_price", "tests/test_prices.py::test_zero"}
    # a data file a test reads
    project.write("tests/data.txt", "changed\n")
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_data.py::test_data"} and r.rc == 1, r
    project.write("tests/data.txt", "ok\n")
    assert _affected_run(project)[1] == {"tests/test_data.py::test_data"}
    # what a module-scoped fixture's setup ran counts for every test that uses it
    project.write("app/names.py", APP["app/names.py"].replace('"item %d"', '"thing %d"'))
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_names.py::test_first", "tests/test_names.py::test_second"}, r
    oracle = project.pytest()
    assert {n: oracle.dump[n] for n in chosen} == r.dump
    # a new test, and -k narrowing
    project.write("tests/test_data.py", _src("tests/test_data.py") + "\ndef test_new():\n    pass\n")
    r, chosen = _affected_run(project, "-k", "new or first")
    assert chosen == {"tests/test_data.py::test_new", "tests/test_names.py::test_first"}, r


def test_a_body_edit_of_a_function_that_ran_at_import_selects_every_importer(project):
    """X = compute() makes compute()'s body module state: a test that only
    reads X runs none of its code, yet its outcome follows the edit."""
    project.write("app/__init__.py", "")
    project.write("app/svc.py", """
        def compute():
            return 10


        LIMIT = compute()


        def used():
            return 1
        """)
    project.write("tests/test_limit.py", "from app import svc\n\ndef test_limit():\n    assert svc.LIMIT == 10\n")
    project.write("tests/test_used.py", "from app import svc\n\ndef test_used():\n    assert svc.used() == 1\n")
    project.write("tests/test_other.py", "def test_other():\n    pass\n")
    assert len(_affected_run(project)[1]) == 3
    # a body that did not run at import: the tests that ran it
    project.write("app/svc.py", (project.path / "app" / "svc.py").read_text().replace("return 1\n", "return 2\n"))
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_used.py::test_used"} and r.rc == 1, r
    project.write("app/svc.py", (project.path / "app" / "svc.py").read_text().replace("return 2\n", "return 1\n"))
    assert _affected_run(project)[1] == {"tests/test_used.py::test_used"}
    # compute() ran at import: every importer, as for a module-level edit
    project.write("app/svc.py", (project.path / "app" / "svc.py").read_text().replace("return 10", "return 11"))
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_limit.py::test_limit", "tests/test_used.py::test_used"}, r
    oracle = project.pytest()
    assert r.dump == {n: oracle.dump[n] for n in chosen} and r.dump["tests/test_limit.py::test_limit"] == "failed"


def test_conftest_edit_or_a_corrupt_record_runs_everything(project):
    _write_app(project)
    project.fast("--affected")
    assert _affected_run(project)[1] == set()
    project.write("tests/conftest.py", _src("tests/conftest.py") + "\n# edited\n")
    assert len(_affected_run(project)[1]) == 6
    assert _affected_run(project)[1] == set()
    # The reply comes before the run's leader writes the record: the next
    # run starts once it has, so after this one the record is the tests' own.
    project.fast("--collect-only", "-q")
    record = project.path / ".pytest_cache" / "d" / "pytest-fast" / "affected.json"
    record.write_text("{ not json")
    r, chosen = _affected_run(project)
    assert len(chosen) == 6 and "no usable record" in r.err, r
    # The next run starts once that run's leader has written the record
    # (the reply comes first): the record is then the tests' own again,
    # rewritten whole (each write replaces the file).
    assert _affected_run(project)[1] == set()
    json.loads(record.read_text())


def test_the_record_survives_a_daemon_restart(project):
    _write_app(project)
    project.fast(env={"PYTEST_FAST_RECORD": "1"})    # a plain run records when asked
    project.stop()
    project.write("app/names.py", _src("app/names.py") + "\n# comment only\n")
    r, chosen = _affected_run(project)
    assert "(cold)" in r.out and chosen == {"tests/test_names.py::test_first",
                                            "tests/test_names.py::test_second"}, r


def test_a_recording_run_records_only_the_tests_whose_record_is_out_of_date(project, tmp_path):
    """A test whose record is current is not recorded again (its record
    stands: that is what makes a recording run as cheap as a plain one),
    a session fixture a current test sets up still counts for the recorded
    tests that use it, and code a current test ran is seen again when a
    later test is recorded (3.12+: the events are restarted)."""
    count = tmp_path / "count"      # outside the project: no dependency
    project.write("tests/conftest.py", """
        from pathlib import Path
        import pytest

        @pytest.fixture(scope="session")
        def shared():
            return (Path(__file__).parent / "shared.txt").read_text()
        """)
    project.write("tests/shared.txt", "s\n")
    project.write("tests/one.txt", "1\n")
    project.write("tests/two.txt", "2\n")
    project.write("tests/helper.py", "def compute():\n    return 1\n")
    project.write("tests/test_0.py", "def test_0():\n    pass\n")
    calls = "import helper\n\ndef test_%s():\n    assert helper.compute() == 1\n"
    project.write("tests/test_c.py", calls % "c")
    project.write("tests/test_d.py", calls % "d")
    project.write("tests/test_a.py", f"""
        from pathlib import Path
        import helper
        COUNT = Path({str(count)!r})

        def test_a(shared):
            assert helper.compute() == 1
            n = int(COUNT.read_text()) + 1 if COUNT.exists() else 1
            COUNT.write_text(str(n))
            # what it reads depends on the run, not on any file
            Path(__file__).with_name("one.txt" if n == 1 else "two.txt").read_text()
        """)
    test_b = 'import helper\n\ndef test_b(shared):\n    assert shared == "s\\n" and helper.compute() == 1\n'
    project.write("tests/test_b.py", test_b)
    rec = {"PYTEST_FAST_RECORD": "1"}
    r = project.fast("--workers", "1", env=rec)
    assert r.rc == 0 and len(r.dump) == 5, r
    # out of date: test_0, test_b, test_d; current: test_a (sets up the
    # session fixture), test_c (runs helper while nothing is recorded)
    project.write("tests/test_0.py", "def test_0():\n    pass\n    # edited\n")
    project.write("tests/test_b.py", test_b + "    # edited\n")
    project.write("tests/test_d.py", calls % "d" + "    # edited\n")
    r = project.fast("--workers", "1", env=rec)
    assert r.rc == 0 and count.read_text() == "2", r    # test_a ran, read two.txt, was not recorded
    assert _affected_run(project)[1] == set()
    project.write("tests/one.txt", "one\n")
    assert _affected_run(project)[1] == {"tests/test_a.py::test_a"}
    project.write("tests/helper.py", "def compute():\n    return 2 - 1\n")
    assert _affected_run(project)[1] == {"tests/test_a.py::test_a", "tests/test_b.py::test_b",
                                         "tests/test_c.py::test_c", "tests/test_d.py::test_d"}
    project.write("tests/shared.txt", "S\n")
    r, chosen = _affected_run(project)
    assert chosen == {"tests/test_a.py::test_a", "tests/test_b.py::test_b"}, r
    assert r.dump["tests/test_b.py::test_b"] == "failed", r


def test_plugin_selects_the_same_and_records_too(project):
    _write_app(project)
    r = plugin_fast(project, "--fast-affected")
    assert r.rc == 0 and len(r.dump) == 6, r
    r = plugin_fast(project, "--fast-affected")
    assert r.rc == 0 and r.dump == {}, r        # pytest says exit 5 here; nothing to re-run is fine
    assert "6 deselected" in r.out, r
    project.write("app/prices.py", APP["app/prices.py"].replace("n * RATE", "RATE * n"))
    r = plugin_fast(project, "--fast-affected")
    assert set(r.dump) == {"tests/test_prices.py::test_price", "tests/test_prices.py::test_zero"}, r
    # the plugin's run recorded the edit (for the same collection arguments:
    # another -p could change outcomes, so it would make every test affected)
    cli, chosen = _affected_run(project, "-p", "outcome_dump")
    assert chosen == set(), cli
    assert len(_affected_run(project)[1]) == 6


def test_plugin_option_without_fast_is_an_error_not_ignored(project):
    _write_app(project)
    r = plugin_fast(project, "--fast-affected")
    assert r.rc == 0, r
    r = plugin_run(project, "-p", "plugin", "--fast-affected")
    assert r.rc == 4 and "--fast-affected selects through the pytest-fast daemon: add --fast" in r.err, r


def test_random_edits_of_make_app_are_never_missed(tmp_path):
    """Quick mode of test/mutate.py: one edit of each kind."""
    pytest.importorskip("fastapi")   # in the suite's venv; the matrix venvs have only pytest
    py = sys.executable
    root = tmp_path / "app"
    data = mutate.make_app(root, py)
    env = mutate.clean_env()
    harness = mutate.Harness(root, py, os.environ.get("PF_BIN", str(ROOT / "pytest-fast")), [], env)
    try:
        report = harness.run(len(mutate.KINDS), random.randrange(1 << 30), data, log=lambda _: None)
    finally:
        harness.stop()
    assert report.edits == len(mutate.KINDS), report
    assert not report.failures, "\n".join(report.failures)


def test_the_mutation_harness_can_fail(tmp_path):
    """A selection that drops a test whose outcome changed is reported."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "test_x.py").write_text("def test_x():\n    pass\n")
    harness = mutate.Harness(root, sys.executable, sys.executable, [], mutate.clean_env())
    harness.fast = lambda *a: ({}, "", 0)      # selects nothing, ever
    report = mutate.Report()
    harness.check(report, "edit", {"test_x.py::test_x": "passed"}, ({"test_x.py::test_x": "failed"}, 1))
    assert report.failures and "missed ['test_x.py::test_x']" in report.failures[0]
    harness.stop()
