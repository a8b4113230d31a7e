"""Per-run options against plain pytest, through both front ends: the CLI
(`pytest-fast`) and the plugin (`pytest --fast`), comparing the lines pytest
prints, the outcomes and the caches a later plain run reads."""
import json
import re
import shutil

import pytest
from test_plugin import fast as plugin_run
from test_plugin import final_line, norm, status_lines

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

