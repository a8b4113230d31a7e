"""Live logging (--log-cli-level, the log_cli ini option) in both front ends,
plain pytest as the oracle: under `pytest --fast` the printed lines are plain
pytest's; the CLI prints the records and their sections."""
import re

import pytest
from test_plugin import PERCENT, fast, norm

LOGGING = """
import logging

import pytest

log = logging.getLogger("app")


@pytest.fixture
def resource():
    log.info("setting up")
    yield
    log.warning("tearing down")


def test_one(resource):
    log.info("one: info")
    log.debug("one: debug")


def test_two():
    log.error("two: error")
    assert 0


def test_three():
    print("no records")
"""


def _lines(out):
    return [line for line in norm(out) if not line.startswith(("platform ", "plugins: ", "rootdir: "))]


@pytest.mark.parametrize("how", ["option", "ini"])
def test_plugin_prints_what_plain_pytest_prints(project, how):
    project.write("tests/test_log.py", LOGGING)
    args = ["--log-cli-level=INFO"] if how == "option" else []
    if how == "ini":
        project.write("pytest.ini", "[pytest]\nlog_cli = true\nlog_cli_level = INFO\n")
    oracle = project.pytest(*args, "-p", "no:cacheprovider")
    assert oracle.rc == 1 and "live log setup" in oracle.out, oracle
    ours = fast(project, *args, "-p", "no:cacheprovider", "--fast-workers", "1")
    assert ours.rc == oracle.rc, ours
    assert _lines(ours.out) == _lines(oracle.out), ours.out
    # Several workers: each test's block is the same, whatever their order.
    ours = fast(project, *args, "-p", "no:cacheprovider", "--fast-workers", "3")
    assert ours.rc == oracle.rc, ours
    def blocks(out):
        return sorted(PERCENT.sub("", line) for line in _lines(out))
    assert blocks(ours.out) == blocks(oracle.out), ours.out


def test_cli_prints_the_records(project):
    project.write("tests/test_log.py", LOGGING)
    oracle = project.pytest("--log-cli-level=INFO", "-p", "no:cacheprovider")
    r = project.fast("--log-cli-level=INFO", "--workers", "1")
    assert r.rc == oracle.rc == 1, r
    assert r.dump == oracle.dump
    records = re.compile(r"^(INFO|WARNING|ERROR|DEBUG) ")
    live = oracle.out.split("= FAILURES =")[0]   # not the failure's captured log
    want = [line for line in norm(live) if records.match(line) or "live log" in line]
    got = [line for line in norm(r.out) if records.match(line) or "live log" in line]
    assert got == want, r.out
    assert "one: debug" not in r.out
