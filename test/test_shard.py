"""--shard K/N (issue 16): one CI job per shard.  The shards of a selection are
disjoint and together give plain pytest's outcomes, under the CLI and the
plugin; the split is a function of the collection and the durations; groups
stay together; and --dist loadgroup/loadscope/loadfile keep a group on one
worker inside a run."""
import json
import os

import pytest
from conftest import BIN
from test_engine import PARITY, write_all
from test_plugin import fast as plugin_fast

# Modules of very different weight, two xdist groups spread over modules, and
# a class (loadscope's unit).
UNEVEN = {
    "tests/test_heavy.py": """
        import pytest

        @pytest.mark.parametrize("i", range(6))
        def test_heavy(i):
            pass
    """,
    "tests/test_light.py": """
        import pytest

        @pytest.mark.xdist_group(name="db")
        def test_db_first():
            pass

        @pytest.mark.parametrize("i", range(4))
        def test_light(i):
            pass

        class TestScope:
            @pytest.mark.parametrize("i", range(3))
            def test_m(self, i):
                pass
    """,
    "tests/test_other.py": """
        import pytest

        @pytest.mark.xdist_group("db")
        def test_db_second():
            pass

        @pytest.mark.xdist_group(name="net")
        def test_net_a():
            pass

        @pytest.mark.parametrize("i", range(5))
        def test_other(i):
            pass
    """,
    "tests/test_zlast.py": """
        import pytest

        @pytest.mark.xdist_group(name="net")
        def test_net_b():
            pass

        @pytest.mark.xdist_group(name="db")
        def test_db_third():
            pass

        def test_last():
            pass
    """,
}

GROUPS = {"db": ["tests/test_light.py::test_db_first", "tests/test_other.py::test_db_second",
                 "tests/test_zlast.py::test_db_third"],
          "net": ["tests/test_other.py::test_net_a", "tests/test_zlast.py::test_net_b"]}


def _uneven_durations(oracle):
    """Seconds per test: test_heavy's six are 10 s each, the rest 0.5-3 s."""
    out = {}
    for i, nodeid in enumerate(sorted(oracle)):
        out[nodeid] = 10.0 if "test_heavy" in nodeid else 0.5 + (i * 7 % 6) / 2
    return out


def _expected_rc(dump):
    """pytest's exit code for a shard's outcomes: a shard that got none of a
    non-empty selection is not "no tests ran" (5) but a success."""
    return 1 if any(v in ("failed", "error") for v in dump.values()) else 0


def _check_partition(shards, oracle):
    seen = {}
    for k, dump in enumerate(shards, 1):
        for nodeid in dump:
            assert nodeid not in seen, f"{nodeid} in shards {seen[nodeid]} and {k}"
            seen[nodeid] = k
    union = {nodeid: outcome for dump in shards for nodeid, outcome in dump.items()}
    assert union == oracle


def _cli_shards(project, n, *args, env=None):
    out = []
    for k in range(1, n + 1):
        r = project.fast("--workers", "2", "--shard", f"{k}/{n}", *args, env=env)
        assert r.dump is not None, r
        assert r.rc == _expected_rc(r.dump), r
        out.append(r.dump)
    return out


def _membership(shards):
    return {nodeid: k for k, dump in enumerate(shards, 1) for nodeid in dump}


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_cli_shards_partition_plain_pytest(project, n):
    write_all(project, {**PARITY, **UNEVEN})
    oracle = project.pytest()
    assert oracle.rc == 1 and len(oracle.dump) > 40, oracle
    _check_partition(_cli_shards(project, n), oracle.dump)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_plugin_shards_partition_plain_pytest(project, n):
    write_all(project, {**PARITY, **UNEVEN})
    oracle = project.pytest()
    shards = []
    for k in range(1, n + 1):
        r = plugin_fast(project, f"--fast-shard={k}/{n}", "--fast-workers", "2")
        assert r.dump is not None, r
        assert r.rc == _expected_rc(r.dump), r
        if len(r.dump) < len(oracle.dump):
            assert f"{len(oracle.dump) - len(r.dump)} deselected" in r.out, r
        shards.append(r.dump)
    _check_partition(shards, oracle.dump)


def test_selection_is_applied_before_the_split(project):
    write_all(project, UNEVEN)
    oracle = project.pytest("-k", "not heavy", "tests/test_light.py", "tests/test_other.py")
    shards = [project.fast("--shard", f"{k}/3", "-k", "not heavy", "tests/test_light.py",
                           "tests/test_other.py").dump for k in (1, 2, 3)]
    _check_partition(shards, oracle.dump)


def test_same_inputs_give_the_same_shards_in_a_fresh_daemon(project):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    project.write(".test_durations", json.dumps(_uneven_durations(oracle.dump)))
    first = _cli_shards(project, 3)
    project.stop()
    again = _cli_shards(project, 3)
    assert again == first
    _check_partition(first, oracle.dump)
    # Without any durations (no cache to record them in): the hash split.
    os.unlink(project.path / ".test_durations")
    hashed = _cli_shards(project, 3, "-p", "no:cacheprovider")
    project.stop()
    assert _cli_shards(project, 3, "-p", "no:cacheprovider") == hashed
    _check_partition(hashed, project.pytest("-p", "no:cacheprovider").dump)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_groups_and_modules_stay_in_one_shard(project, n):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    durations = {nodeid: 1.0 for nodeid in oracle.dump}
    project.write(".test_durations", json.dumps(durations))
    where = _membership(_cli_shards(project, n))
    for members in GROUPS.values():
        assert len({where[m] for m in members}) == 1, (members, where)
    grouped = {m for members in GROUPS.values() for m in members}
    share = len(durations) / n
    for module in {nodeid.split("::")[0] for nodeid in oracle.dump}:
        members = [nodeid for nodeid in where if nodeid.startswith(module + "::") and nodeid not in grouped]
        shards = {where[nodeid] for nodeid in members}
        # A module is cut only when it alone is more than a shard's share.
        assert len(shards) == 1 or len(members) > share, (module, shards)


def test_balanced_by_durations_and_a_heavy_module_is_split(project):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    durations = _uneven_durations(oracle.dump)
    project.write(".test_durations", json.dumps(durations))
    shards = _cli_shards(project, 3)
    _check_partition(shards, oracle.dump)
    sums = [sum(durations[nodeid] for nodeid in dump) for dump in shards]
    share = sum(durations.values()) / 3
    assert max(sums) <= share * 1.10, (sums, share)
    heavy = {k for k, dump in enumerate(shards) for nodeid in dump if "test_heavy" in nodeid}
    assert len(heavy) > 1, "test_heavy.py alone is more than a share: it must be split"


def test_tests_without_a_duration_get_the_mean(project):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    # Only the heavy tests have a (huge) duration: the rest weigh their mean
    # (also huge), so the shards' test counts are about equal.
    project.write(".test_durations", json.dumps(
        {nodeid: 100.0 for nodeid in oracle.dump if "test_heavy" in nodeid}))
    sizes = sorted(len(dump) for dump in _cli_shards(project, 3))
    assert sizes[-1] - sizes[0] <= 5, sizes


def test_durations_are_recorded_and_merged(project):
    write_all(project, UNEVEN)
    cache = project.path / ".pytest_cache" / "v" / "pytest-fast"
    full = project.fast()
    # The reply comes once the leader has updated the cache: read it at once.
    record = json.loads((cache / "durations").read_text())
    assert set(record) == set(full.dump)
    assert all(isinstance(v, float) and 0 <= v < 60 for v in record.values())
    record = {nodeid: 1000.0 for nodeid in record}   # recognisable figures
    (cache / "durations").write_text(json.dumps(record))
    first = project.fast("--shard", "1/2")
    # A shard run keeps what the others measured and splits the next shards
    # of its round by the same durations: its own figures wait.
    assert set(json.loads((cache / "durations-pending").read_text())) == set(first.dump)
    assert json.loads((cache / "durations").read_text()) == record
    second = project.fast("--shard", "2/2")
    assert set(first.dump) | set(second.dump) == set(full.dump)
    assert json.loads((cache / "durations-pending").read_text()) == {}
    renewed = json.loads((cache / "durations").read_text())
    assert set(renewed) == set(full.dump)
    assert all(v < 60 for v in renewed.values()), "the round's figures replace the old ones"


def test_plugin_records_durations(project):
    write_all(project, UNEVEN)
    r = plugin_fast(project, "-q")
    record = json.loads((project.path / ".pytest_cache/v/pytest-fast/durations").read_text())
    assert set(record) == set(r.dump), r


def test_test_durations_file_is_read_and_written_only_when_asked(project):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    stale = {"tests/test_gone.py::test_removed": 4.0}
    path = project.path / ".test_durations"
    path.write_text(json.dumps(stale))
    project.fast("--shard", "1/2")
    assert json.loads(path.read_text()) == stale, "rewritten without --store-durations"
    project.fast("--store-durations")
    stored = json.loads(path.read_text())
    assert set(stored) == set(oracle.dump) | set(stale)
    assert stored["tests/test_gone.py::test_removed"] == 4.0
    path.write_text(json.dumps(stale))
    plugin_fast(project, "--fast-store-durations", "-k", "heavy")
    heavy = {nodeid for nodeid in oracle.dump if "heavy" in nodeid}
    assert set(json.loads(path.read_text())) == heavy | set(stale)


@pytest.mark.parametrize("spec", ["0/3", "4/3", "x", "3", "1/0", "-1/3", "1/3/3", ""])
def test_bad_shard_is_a_clear_usage_error(project, spec):
    project.write("tests/test_a.py", "def test_a():\n    pass\n")
    r = project.fast("--shard", spec)
    assert r.rc == 2, r
    assert f"invalid --shard '{spec}'" in r.err and "1 <= K <= N" in r.err, r
    p = plugin_fast(project, f"--fast-shard={spec}")
    assert p.rc == 4, p
    assert f"invalid --fast-shard '{spec}'" in p.err and "1 <= K <= N" in p.err, p
    if spec:   # an empty variable is an unset one
        e = project.fast(env={"PYTEST_FAST_SHARD": spec})
        assert e.rc == 2 and "invalid PYTEST_FAST_SHARD" in e.err, e
    if spec in ("0/3", "4/3", "x"):   # GitLab's pair: CI_NODE_INDEX 0, 4 or x of 3
        ci = {"CI_NODE_INDEX": spec.split("/")[0], "CI_NODE_TOTAL": "3"}
        g = project.fast(env=ci)
        assert g.rc == 2 and "invalid CI_NODE_INDEX/CI_NODE_TOTAL" in g.err, g
        p = plugin_fast(project, env=ci)
        assert p.rc == 4 and "invalid CI_NODE_INDEX/CI_NODE_TOTAL" in p.err, p
    assert not os.path.exists(project.address), "a bad shard started a daemon"


def test_shard_from_the_environment(project):
    write_all(project, UNEVEN)
    oracle = project.pytest()
    project.write(".test_durations", json.dumps(_uneven_durations(oracle.dump)))
    ci = [project.fast(env={"CI_NODE_INDEX": str(k), "CI_NODE_TOTAL": "3"}).dump for k in (1, 2, 3)]
    _check_partition(ci, oracle.dump)
    assert len(ci[0]) < len(oracle.dump)
    # PYTEST_FAST_SHARD wins over GitLab's, --shard over both; none of them
    # is part of the daemon's identity.
    env = {"CI_NODE_INDEX": "1", "CI_NODE_TOTAL": "3", "PYTEST_FAST_SHARD": "2/3"}
    r = project.fast(env=env)
    assert r.dump == ci[1] and "re-collecting" not in r.err, r
    assert project.fast("--shard", "3/3", env=env).dump == ci[2]
    assert plugin_fast(project, env={"CI_NODE_INDEX": "3", "CI_NODE_TOTAL": "3"}).dump == ci[2]


WORKER_LOG = {"conftest.py": """
    import os

    def pytest_runtest_call(item):
        with open(os.environ["WORKER_LOG"], "a") as f:   # one short O_APPEND write per test
            f.write("%s %s\\n" % (item.nodeid, os.environ.get("PYTEST_XDIST_WORKER", "-")))
"""}


def _workers(log):
    lines = log.read_text().splitlines() if log.exists() else []
    return dict(line.rsplit(" ", 1) for line in lines)


@pytest.mark.parametrize("front", ["cli", "plugin"])
@pytest.mark.parametrize("dist", ["loadgroup", "loadscope", "loadfile"])
def test_dist_keeps_a_group_on_one_worker(project, tmp_path, front, dist):
    pytest.importorskip("xdist")
    write_all(project, {**UNEVEN, **WORKER_LOG})
    log = tmp_path / "workers.log"
    env = {"WORKER_LOG": str(log)}
    oracle = project.pytest("--dist", dist, env=env)
    log.unlink()
    if front == "cli":
        r = project.fast("--workers", "2", "--dist", dist, env=env)
    else:
        r = plugin_fast(project, "--fast-workers", "2", "--dist", dist, env=env)
    assert r.rc == oracle.rc == 0 and r.dump == oracle.dump, r
    worker = _workers(log)
    assert set(worker) == set(oracle.dump)
    if dist == "loadgroup":
        units = GROUPS.values()
    else:
        key = (lambda n: n.rsplit("::", 1)[0]) if dist == "loadscope" else (lambda n: n.split("::")[0])
        units = [[n for n in oracle.dump if key(n) == k] for k in {key(n) for n in oracle.dump}]
    for members in units:
        assert len({worker[m] for m in members}) == 1, (dist, members, worker)


def test_help_mentions_the_shard_options():
    import subprocess
    out = subprocess.run([str(BIN), "--help"], capture_output=True, text=True).stdout
    assert "--shard K/N" in out and "--store-durations" in out


def test_test_durations_is_in_the_invocation_directory(project):
    """A conftest's os.chdir at import moves where the tests run, not where
    .test_durations is read and written."""
    write_all(project, UNEVEN)
    project.write("sub/placeholder.txt", "")
    project.write("conftest.py", "import os\nos.chdir(os.path.join(os.path.dirname(__file__), 'sub'))\n")
    r = project.fast("--store-durations")
    assert r.rc == 0, r
    assert set(json.loads((project.path / ".test_durations").read_text())) == set(r.dump)
    assert not (project.path / "sub" / ".test_durations").exists()


def test_old_and_hand_edited_test_durations(project):
    """pytest-split's old list format reads like its dict; entries that are
    not a number >= 0 are ignored, never a crash."""
    write_all(project, UNEVEN)
    oracle = project.pytest()
    durations = _uneven_durations(oracle.dump)
    path = project.path / ".test_durations"
    path.write_text(json.dumps(durations))
    as_dict = _cli_shards(project, 3)
    path.write_text(json.dumps(sorted(durations.items())))
    assert _cli_shards(project, 3) == as_dict
    bad = dict(zip(sorted(durations), ["slow", -1, None, float("nan"), [2], {"s": 1}]))
    path.write_text(json.dumps({**durations, **bad}))
    _check_partition(_cli_shards(project, 3), oracle.dump)
    path.write_text("{not json")
    _check_partition(_cli_shards(project, 3), oracle.dump)


def test_a_leader_stuck_updating_the_cache_costs_ten_seconds_not_the_daemon(project):
    write_all(project, UNEVEN)
    project.write("conftest.py", """
        import os
        import time

        def pytest_configure(config):
            cache = getattr(config, "cache", None)
            if cache is None:
                return
            real = cache.set

            def stuck(key, value):
                if key.startswith("pytest-fast/") and os.environ.get("PF_STUCK"):
                    time.sleep(3600)   # stands in for a hung file system
                real(key, value)

            cache.set = stuck
    """)
    oracle = project.pytest()
    stuck = project.fast(env={"PF_STUCK": "1"})
    assert stuck.rc == 0 and stuck.dump == oracle.dump, stuck
    assert "did not update the cache" in project.log()
    again = project.fast()
    assert again.rc == 0 and again.dump == oracle.dump, again
    # The stuck leader was killed (the fixture checks that no process is left).


def test_an_empty_shard_succeeds_but_an_empty_selection_does_not(project):
    """A CI job whose shard got no test must not turn the pipeline red; a
    selection that is empty before the split is still pytest's exit 5."""
    project.write("tests/test_two.py", """
        def test_a():
            pass

        def test_b():
            pass
    """)
    dumps = [project.fast("--shard", f"{k}/3") for k in (1, 2, 3)]
    assert sorted(len(r.dump) for r in dumps) == [0, 1, 1], dumps
    assert all(r.rc == 0 for r in dumps), dumps
    empty = next(k for k, r in enumerate(dumps, 1) if not r.dump)
    r = plugin_fast(project, f"--fast-shard={empty}/3")
    assert r.rc == 0 and r.dump == {} and "2 deselected" in r.out, r
    r = project.fast("--shard", f"{empty}/3", "-k", "nothing_matches")
    assert r.rc == 5, r
    r = plugin_fast(project, f"--fast-shard={empty}/3", "-k", "nothing_matches")
    assert r.rc == 5, r
