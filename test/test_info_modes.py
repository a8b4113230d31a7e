"""Options that print instead of running tests (--collect-only's tree,
--fixtures, --fixtures-per-test, --cache-show, --markers), those that trace
pytest's own start-up (--debug, --trace-config) and --keep-duplicates,
through both front ends, against plain pytest's lines."""
import re

from test_plugin import fast, norm, run

# Sibling directories, each with a conftest and module and class fixtures:
# plain pytest loads only the conftests along a path argument and imports
# only the modules under it.
SIBLINGS = {
    "conftest.py": '''
        import pytest

        def pytest_configure(config):
            config.addinivalue_line("markers", "slowish: a marker a conftest adds")

        @pytest.fixture
        def root_fx():
            """The rootdir's.

            More at -v."""

        @pytest.fixture(scope="session")
        def _root_hidden():
            pass
        ''',
    "a/__init__.py": "",
    "a/conftest.py": '''
        import pytest

        @pytest.fixture
        def a_fx():
            """a's"""
        ''',
    "a/sub/__init__.py": "",
    "a/sub/conftest.py": '''
        import pytest

        @pytest.fixture(scope="module")
        def sub_fx():
            """a/sub's"""
        ''',
    "a/sub/test_sub.py": '''
        import pytest

        @pytest.fixture
        def sub_module_fx():
            pass

        def test_one(sub_module_fx, a_fx, sub_fx):
            """A docstring, shown at -v."""

        class TestC:
            """A class."""

            @pytest.fixture
            def c_fx(self):
                """TestC's"""

            def test_c(self, c_fx, root_fx):
                pass

        class TestD:
            @pytest.fixture
            def d_fx(self):
                """TestD's"""

            def test_d(self, d_fx):
                pass
        ''',
    "a/other/__init__.py": "",
    "a/other/conftest.py": '''
        import pytest

        @pytest.fixture
        def other_fx():
            """a/other's"""
        ''',
    "a/other/test_other.py": '''
        def test_other(other_fx, tmp_path):
            pass
        ''',
    "b/conftest.py": '''
        import pytest

        @pytest.fixture
        def b_fx():
            """b's"""
        ''',
    "b/test_b.py": '''
        import pytest

        @pytest.fixture
        def b_module_fx():
            """b/test_b.py's"""

        @pytest.mark.parametrize("i", [1, 2])
        def test_b(b_fx, b_module_fx, i):
            pass
        ''',
}


def _siblings(project):
    for rel, text in SIBLINGS.items():
        project.write(rel, text)


def _cli_body(out):
    """The CLI's lines without its closing line (and the blank before it)."""
    lines = norm(out)
    assert re.match(r"^(no tests ran|\d+ tests? collected)\b", lines[-1]), out
    lines = lines[:-2] if len(lines) > 1 and not lines[-2] else lines[:-1]
    return lines[1:] if lines and not lines[0] else lines


def _plain_body(out, after=r"^(collecting \.\.\. )?collected "):
    """Plain pytest's lines between its header (up to the line `after`
    matches) and its closing line."""
    lines = norm(out)
    start = next(i + 1 for i, line in enumerate(lines) if re.match(after, line))
    end = len(lines) - 1
    if end > start and not lines[end - 1]:
        end -= 1
    if start < end and not lines[start]:
        start += 1   # --collect-only's blank line before the tree
    return lines[start:end]


def _three_ways(project, args):
    """Plain pytest, `pytest --fast` (its lines must be plain pytest's) and
    the CLI, each exiting 0: (the oracle's run, the CLI's)."""
    oracle = project.pytest(*args)
    ours = fast(project, *args)
    assert ours.rc == oracle.rc == 0, (args, ours, oracle)
    assert norm(ours.out) == norm(oracle.out), (args, ours, oracle)
    cli = project.fast(*args)
    assert cli.rc == 0, (args, cli)
    return oracle, cli


def test_collect_only_prints_pytests_tree(project):
    _siblings(project)
    cases = [("--co",), ("--co", "-v"), ("--collect-only", "-q"), ("--co", "-qq"),
             ("--co", "-v", "a"), ("--co", "a/sub/test_sub.py::TestD", "b"), ("--co", "-k", "c or b")]
    for args in cases:
        oracle, cli = _three_ways(project, args)
        if "-q" in args or "-qq" in args:
            continue   # pytest's own quiet listing: no header to strip
        tree = _plain_body(oracle.out)
        assert any(line.strip().startswith("<Module ") for line in tree), oracle
        assert _cli_body(cli.out) == tree, (args, cli, oracle)
    # -v shows the docstrings
    assert "A docstring, shown at -v." in [line.strip() for line in norm(fast(project, "--co", "-v").out)]


def test_fixtures_follow_the_path_arguments(project):
    _siblings(project)
    cases = [("--fixtures",), ("--fixtures", "a"), ("--fixtures", "a/sub"), ("--funcargs", "b"),
             ("--fixtures", "-v", "a/sub/test_sub.py::TestC"), ("--fixtures", "b", "a/other"),
             ("--fixtures", "a/sub/test_sub.py"), ("--fixtures-per-test",),
             ("--fixtures-per-test", "a/sub"), ("--fixtures-per-test", "-v", "-k", "c or b"),
             ("--fixtures-per-test", "a/sub/test_sub.py::TestD::test_d", "a/other")]
    shown = []
    for args in cases:
        oracle, cli = _three_ways(project, args)
        assert _cli_body(cli.out) == _plain_body(oracle.out), (args, cli, oracle)
        shown.append(set(re.findall(r"^(\w+_fx)\b", oracle.out, re.M)))
    # the cases do differ: a path hides its siblings' conftests and modules
    assert shown[1] == {"root_fx", "a_fx", "sub_fx", "sub_module_fx", "c_fx", "d_fx", "other_fx"}
    assert shown[2] == {"root_fx", "a_fx", "sub_fx", "sub_module_fx", "c_fx", "d_fx"}
    assert shown[4] == {"root_fx", "a_fx", "sub_fx", "sub_module_fx", "c_fx"}
    assert shown[5] == {"root_fx", "b_fx", "b_module_fx", "a_fx", "other_fx"}


def test_fixtures_with_a_collection_error(project):
    project.write("tests/test_ok.py", "import pytest\n\n@pytest.fixture\ndef fx():\n    pass\n\n"
                                      "def test_ok(fx):\n    pass\n")
    project.write("tests/test_broken.py", "import no_such_module\n")
    for args in (("--fixtures-per-test",), ("--fixtures", "tests")):
        _, cli = _three_ways(project, args)   # exit 0: pytest lists them all the same
        assert norm(cli.out)[-1] == "1 error in T", cli
        assert "ERROR tests/test_broken.py" in norm(cli.out), cli


def test_cache_show_is_read_when_asked(project):
    project.write("tests/test_a.py", "def test_ok():\n    pass\n\ndef test_no():\n    assert FLAG\n\nFLAG = 0\n")
    # a run first: pytest 7's --cache-show writes cache/stepwise itself
    project.pytest("-q")
    for step in range(2):
        if step:   # test_no passes now: it leaves cache/lastfailed
            project.write("tests/test_a.py", (project.path / "tests/test_a.py").read_text().replace("0", "1"))
            project.pytest("-q")
        oracle, cli = _three_ways(project, ("--cache-show",))
        assert _cli_body(cli.out) == ["cachedir: %s" % (project.path / ".pytest_cache"),
                                      *_plain_body(oracle.out, after="cachedir: /")], (cli, oracle)
        assert ("'tests/test_a.py::test_no': True" in oracle.out) == (step == 0), oracle
        glob = fast(project, "--cache-show", "cache/last*")
        assert norm(glob.out) == norm(project.pytest("--cache-show", "cache/last*").out), glob


def test_markers_as_plain_pytest(project):
    _siblings(project)
    for args in (("--markers",), ("--markers", "-v")):
        oracle = project.pytest(*args)
        ours = fast(project, *args)
        assert ours.rc == oracle.rc == 0, (ours, oracle)
        assert "@pytest.mark.slowish: a marker a conftest adds" in oracle.out, oracle
        assert ours.out == oracle.out, (ours, oracle)


ADDRESS = re.compile(r"0x[0-9a-f]+|^(\s+)\d+(\s+:)", re.M)


def _traced(text):
    return norm(ADDRESS.sub(lambda m: "0x?" if m.group(0).startswith("0x") else m.group(1) + "N" + m.group(2),
                            text))


def test_start_up_traces_run_plain_pytest_in_the_plugin(project):
    _siblings(project)
    for flag in ("--trace-config", "--debug"):
        # the plugin is loaded in both: pytest's trace lists it
        oracle = run(project, "-p", "plugin", "a", flag)
        ours = run(project, "-p", "plugin", "--fast", "a", flag)
        assert ours.rc == oracle.rc == 0, (ours, oracle)
        assert _traced(ours.out) == _traced(oracle.out), (ours, oracle)
        note = ("pytest-fast: %s traces pytest's own start-up and collection: plain pytest ran this, "
                "in this process, without the daemon" % flag)
        assert ours.err.splitlines() == [*oracle.err.splitlines(), note], (ours, oracle)
        if flag == "--trace-config":
            assert "a/conftest.py" in ours.out, ours   # the conftests' start-up, traced
        cli = project.fast(flag)
        assert cli.rc == 4, cli
        assert "use `pytest --fast %s`" % flag in cli.err, cli
    assert (project.path / "pytestdebug.log").read_text().startswith("versions pytest-")


def test_keep_duplicates(project):
    _siblings(project)
    oracle = project.pytest("--keep-duplicates", "b", "-v")
    for ours in (fast(project, "--keep-duplicates", "b", "-v"), project.fast("--keep-duplicates", "b")):
        assert ours.rc == oracle.rc == 0 and ours.dump == oracle.dump, (ours, oracle)
    # pytest runs the tests a path names twice as often: refused, saying what does
    assert len(project.pytest("--keep-duplicates", "b", "b/test_b.py", "--co", "-q").out.splitlines()) == 6
    for ours in (fast(project, "--keep-duplicates", "b", "b/test_b.py"),
                 project.fast("--keep-duplicates", "b", "b/test_b.py")):
        assert ours.rc == 4, ours
        assert "run plain `python -m pytest --keep-duplicates`" in ours.err, ours
        assert not ours.dump, ours
