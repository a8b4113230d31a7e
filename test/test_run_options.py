"""Per-run options against plain pytest, through both front ends: the CLI
(`pytest-fast`) and the plugin (`pytest --fast`), comparing the lines pytest
prints, the outcomes and the caches a later plain run reads."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import BUILD, HERE
from test_plugin import PYTHONPATH, final_line, norm, status_lines
from test_plugin import fast as plugin_run

STEPWISE_PROJECT = {
    "tests/test_a.py": """
        def test_1():
            pass

        def test_2():
            pass

        def test_3():
            assert 0

        def test_4():
            pass

        def test_5():
            assert 0

        def test_6():
            pass
        """,
}

AGE = re.compile(r"\(cache from \d+:\d\d:\d\d ago")


def _write(project, files):
    for rel, text in files.items():
        project.write(rel, text)


def _stepwise_lines(out):
    return [AGE.sub("(cache from T ago", line) for line in norm(out) if line.startswith("stepwise: ")]


def _interrupted(out):
    return [line.strip("! ") for line in norm(out) if "Interrupted:" in line]


def _counts(out):
    """The closing line's counts, e.g. "1 failed, 4 deselected in T"."""
    return final_line(out).strip("= ")


def _cache(project):
    path = project.path / ".pytest_cache" / "v" / "cache" / "stepwise"
    data = json.loads(path.read_text()) if path.exists() else None
    if isinstance(data, dict):
        data.pop("last_cache_date_str", None)   # when it was written
    return data


def _run(project, how, args):
    if how == "cli":
        return project.fast("--workers", "2", *args)
    if how == "plugin":
        return plugin_run(project, *args, env={"PYTEST_FAST_WORKERS": "2"})
    return project.pytest(*args)


def _same_step(project, how, args):
    """Run `args` the plain way and `how`, both from the same cache; compare;
    leave `how`'s cache for the next step (so each reads what the other
    front end left)."""
    cache = project.path / ".pytest_cache"
    saved = project.path.parent / "saved-cache"
    shutil.rmtree(saved, ignore_errors=True)
    if cache.exists():
        shutil.copytree(cache, saved)
    oracle = project.pytest(*args)
    oracle_cache = _cache(project)
    shutil.rmtree(cache, ignore_errors=True)
    if saved.exists():
        shutil.copytree(saved, cache)
    ours = _run(project, how, args)
    where = (how, args, ours, oracle)
    assert ours.rc == oracle.rc, where
    assert ours.dump == oracle.dump, where
    assert _cache(project) == oracle_cache, where
    assert _stepwise_lines(ours.out) == _stepwise_lines(oracle.out), where
    assert _counts(ours.out) == _counts(oracle.out), where
    # the CLI's lean box has the same "!!! Interrupted: ... !!!" line
    assert _interrupted(ours.out) == _interrupted(oracle.out), where
    if how == "plugin":   # --sw runs in order; otherwise two workers interleave
        order = (lambda lines: lines) if _stepwise_lines(oracle.out) else sorted
        assert order(status_lines(ours.out)) == order(status_lines(oracle.out)), where
    return ours, oracle


def _edit(project, old, new):
    path = project.path / "tests/test_a.py"
    path.write_text(path.read_text().replace(old, new))


STEPWISE_STEPS = [
    ("cli", ("--sw",)),                 # no cache: runs to test_3, stops
    ("plain", ("--sw", "-v")),          # plain continues from the CLI's test_3
    ("plugin", ("--sw", "-v")),
    ("cli", ("--sw-skip",)),            # lets test_3 through, stops at test_5
    ("plugin", ("--stepwise-skip", "-v")),
    ("plain", ("--sw",)),
    ("fix", ("def test_5():\n    assert 0", "def test_5():\n    pass")),
    ("plugin", ("--sw", "-v")),         # test_5 passes now: to the end
    ("cli", ("--sw",)),
    ("add", ("def test_6", "def test_7():\n    pass\n\n\ndef test_6")),
    ("cli", ("--sw", "-k", "not test_1")),   # the count changed: not skipping
    ("plugin", ("--sw", "-v")),
    ("plugin", ("-v",)),                # without --sw (pytest 7 clears the entry)
    ("cli", ("--sw",)),
    ("cli", ()),
    ("plugin", ("--sw",)),
]


def test_stepwise_shares_pytests_cache(project):
    _write(project, STEPWISE_PROJECT)
    for how, args in STEPWISE_STEPS:
        if how in ("fix", "add"):
            _edit(project, *args)
        elif how == "plain":
            plain = project.pytest(*args)
            assert _stepwise_lines(plain.out), plain
        else:
            _, oracle = _same_step(project, how, args)
            assert bool(_stepwise_lines(oracle.out)) == any(a.startswith("--s") for a in args), oracle


def test_stepwise_reset(project):
    if tuple(int(x) for x in pytest.__version__.split(".")[:2]) < (8, 4):
        pytest.skip("--sw-reset is new in pytest 8.4")
    _write(project, STEPWISE_PROJECT)
    _same_step(project, "cli", ("--sw",))
    for how in ("cli", "plugin"):
        _same_step(project, how, ("--sw-reset",))


SETUP_PROJECT = {
    "tests/test_b.py": """
        import pytest

        @pytest.fixture(scope="module")
        def mod():
            yield 1

        @pytest.fixture
        def fx(mod, tmp_path):
            return 2

        @pytest.fixture(params=["a", "b"], ids=["first", "second"])
        def which(request):
            return request.param

        def test_1(fx):
            pass

        def test_2():
            assert 0

        @pytest.mark.parametrize("i", [1, 2])
        def test_3(fx, i, which):
            pass

        class TestC:
            @pytest.fixture(scope="class")
            def cls_fx(self):
                yield

            def test_4(self, cls_fx, capsys):
                print("out")
        """,
    "tests/test_c.py": """
        import pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("setup")

        def test_5(broken):
            pass

        @pytest.mark.skip(reason="no")
        def test_6(tmp_path):
            pass
        """,
}
SHOWN = re.compile(r"^\s*(SETUP|TEARDOWN)\s|^\s+\S+::\S+")
STATUS_WORD = re.compile(r" ?(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b.*$")


def _from_collected(out):
    lines = norm(out)
    start = next((i for i, line in enumerate(lines) if "collected" in line), 0)   # -q: none
    return [re.sub(r" at 0x[0-9a-f]+>", " at 0x?>", line) for line in lines[start:]]


@pytest.mark.parametrize("args", [("--setup-show",), ("--setup-show", "-v"), ("--setup-only",),
                                  ("--setup-plan",), ("--setup-plan", "-q", "-k", "test_3 or test_5")],
                         ids=" ".join)
def test_setup_show_lines_as_plain_pytest(project, args):
    """Through the plugin with one worker, pytest's whole output is the same
    (SETUP/TEARDOWN lines, status letters, summaries); the CLI prints the
    same SETUP/TEARDOWN and test lines, without the status letters."""
    _write(project, SETUP_PROJECT)
    oracle = project.pytest(*args)
    assert [line for line in norm(oracle.out) if SHOWN.match(line)], oracle
    ours = plugin_run(project, *args, env={"PYTEST_FAST_WORKERS": "1"})
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    assert _from_collected(ours.out) == _from_collected(oracle.out), (ours, oracle)
    if "-v" in args or "-q" in args:
        return
    cli = project.fast("--workers", "1", *args)
    assert (cli.rc, cli.dump) == (oracle.rc, oracle.dump), (cli, oracle)
    # -v appends status words (not letters) to these lines: the CLI prints them without
    verbose = project.pytest("-v", *args)
    plain = [STATUS_WORD.sub("", line) for line in norm(verbose.out) if SHOWN.match(line)]
    assert [line for line in norm(cli.out) if SHOWN.match(line)] == plain, (cli, verbose)


def test_setup_show_with_workers_keeps_each_tests_lines_together(project):
    _write(project, SETUP_PROJECT)
    oracle = project.pytest("--setup-show")
    ours = plugin_run(project, "--setup-show", env={"PYTEST_FAST_WORKERS": "2"})
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)

    def per_test(out):
        # each test's function-scoped SETUP lines before its own line and
        # TEARDOWN lines after it (test_5's setup fails: it has no line of
        # its own, and its SETUP is left out).  test_6 is skipped by a mark
        # and prints only its letter, at the end of whatever line precedes
        # it: with workers, another test's.  So trailing status letters go.
        groups, pending, current = {}, [], None
        for line in norm(out):
            if re.match(r"^        (SETUP|TEARDOWN) +F ", line):
                line = re.sub(r"[.sxXFE]+$", "", line)
            if re.match(r"^        SETUP +F (?!broken)", line):
                pending.append(line)
            elif re.match(r"^        TEARDOWN +F (?!broken)", line):
                groups[current].append(line)
            elif re.match(r"^        \S+::\S+", line):
                current = line.split()[0]
                groups[current], pending = pending, []
        return groups

    assert per_test(ours.out) == per_test(oracle.out), (ours, oracle)


SUBTESTS_PROJECT = {
    "tests/test_s.py": """
        import pytest

        def test_sub(subtests):
            for i in range(3):
                with subtests.test(msg="check", i=i):
                    assert i % 2 == 0

        def test_kwargs(subtests):
            with subtests.test(x="a", y=1.5, z=None, t=(1, "b")):
                pass
            with subtests.test():
                assert 0

        def test_skips(subtests):
            with subtests.test(msg="skipped", n=1):
                pytest.skip("not now")
            with subtests.test(msg="passes"):
                pass

        def test_plain():
            pass
        """,
}


@pytest.mark.parametrize("args", [(), ("-v",), ("-rA",)], ids=lambda a: " ".join(a) or "default")
def test_subtests_as_plain_pytest(project, args):
    if int(pytest.__version__.split(".")[0]) < 9:
        pytest.skip("the subtests fixture is pytest's own from pytest 9")
    _write(project, SUBTESTS_PROJECT)
    oracle = project.pytest(*args)
    assert "SUBFAILED[check] (i=1) tests/test_s.py::test_sub" in oracle.out, oracle
    ours = plugin_run(project, *args, env={"PYTEST_FAST_WORKERS": "1"})
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    assert _from_collected(ours.out) == _from_collected(oracle.out), (ours, oracle)
    cli = project.fast("--workers", "2", *args)
    assert (cli.rc, cli.dump) == (oracle.rc, oracle.dump), (cli, oracle)
    assert _counts(cli.out) == _counts(oracle.out), (cli, oracle)


@pytest.fixture(scope="session")
def randomly_path():
    """A directory with pytest-randomly (test/requirements-randomly.txt),
    made once per interpreter; only these tests put it on PYTHONPATH."""
    target = BUILD / f"randomly-py{sys.version_info[0]}{sys.version_info[1]}"
    if not (target / "pytest_randomly").is_dir():
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        p = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--target", str(tmp), "-r", str(HERE / "requirements-randomly.txt")],
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip("pytest-randomly could not be installed (is PyPI reachable?): "
                        + (p.stderr.strip().splitlines() or ["?"])[-1])
        try:
            os.rename(tmp, target)
        except OSError:   # another process made it meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


RANDOMLY_PROJECT = {
    "tests/rec.py": """
        import os
        import random

        def rec():
            with open(os.environ["ORDER_FILE"], "a") as f:
                f.write("%s %r\\n" % (os.environ["PYTEST_CURRENT_TEST"].split(" ")[0], random.random()))
        """,
}
for _m in ("one", "two", "three"):
    RANDOMLY_PROJECT[f"tests/test_{_m}.py"] = f"""
        from rec import rec

        def test_{_m}_a():
            rec()

        class TestK:
            def test_{_m}_b(self):
                rec()

            def test_{_m}_c(self):
                rec()

        def test_{_m}_d():
            rec()

        class TestL:
            def test_{_m}_e(self):
                rec()
        """

SEED = re.compile(r"Using --randomly-seed=(\d+)")


def _order(project, run, args):
    order = project.path.parent / "order.txt"   # outside the project: no edit to watch
    if order.exists():
        order.unlink()
    r = run(*args)
    assert r.rc == 0, r
    return r, order.read_text().splitlines()


def test_randomly_seed_order_and_values_per_run(project, randomly_path):
    """Three runs without a seed through each front end: each prints a new
    seed, runs in plain pytest's order for it and gets its random values."""
    _write(project, RANDOMLY_PROJECT)
    env = {"PYTHONPATH": os.pathsep.join([randomly_path, str(HERE)]),
           "ORDER_FILE": str(project.path.parent / "order.txt")}
    fronts = {
        "cli": lambda *a: project.fast("--workers", "1", *a, env=env),
        "plugin": lambda *a: plugin_run(project, *a, env={
            **env, "PYTHONPATH": os.pathsep.join([randomly_path, PYTHONPATH]), "PYTEST_FAST_WORKERS": "1"}),
    }
    for how, run in fronts.items():
        seeds = []
        for i in range(3):
            r, order = _order(project, run, ())
            seeds.append(int(SEED.search(r.out).group(1)))
            _, plain = _order(project, lambda *a: project.pytest(*a, env=env),
                              ("-p", "no:cacheprovider", f"--randomly-seed={seeds[-1]}"))
            assert order == plain, (how, seeds, r)
            assert i == 0 or "re-collecting" not in r.err, r   # a new seed is no new collection
        assert len(set(seeds)) == 3, seeds
        # an explicit seed, and `last` (the cache pytest-randomly shares with plain runs)
        r, order = _order(project, run, ("--randomly-seed=last",))
        assert SEED.search(r.out).group(1) == str(seeds[-1]), r
        assert order == plain, (how, r)
        # off: the collection's order
        r, order = _order(project, run, ("-p", "no:randomly"))
        _, plain = _order(project, lambda *a: project.pytest(*a, env=env), ("-p", "no:randomly"))
        names = [line.split()[0] for line in order]   # random itself is not seeded then
        assert names == [line.split()[0] for line in plain] and "randomly-seed" not in r.out, (how, r)


# ------------------------------------------------------------ --max-warnings


@pytest.mark.skipif(pytest.version_tuple < (9,), reason="--max-warnings is pytest 9's")
def test_max_warnings_exits_as_plain_pytest(project):
    project.write("tests/test_w.py", """
        import warnings


        def test_w():
            warnings.warn(UserWarning("one"))
        """)
    for limit, want in (("0", 6), ("1", 0)):
        oracle = project.pytest(f"--max-warnings={limit}")
        cli = project.fast(f"--max-warnings={limit}")
        plugin = plugin_run(project, f"--max-warnings={limit}")
        assert oracle.rc == cli.rc == plugin.rc == want, (oracle, cli, plugin)
        if want:
            assert "maximum allowed warnings exceeded: 1 > 0" in cli.out, cli


def test_looponfail_is_refused_for_watch(project):
    pytest.importorskip("xdist")
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    cli = project.fast("-f")
    assert cli.rc == 4 and "pytest-fast --watch" in cli.err, cli
    plugin = plugin_run(project, "--looponfail")
    assert plugin.rc == 4 and "pytest-fast --watch" in plugin.err, plugin
    assert project.status().returncode == 0   # the daemon still answers
