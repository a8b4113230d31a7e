"""Conftest hooks that plain pytest runs in the process that reports
(pytest_report_header, pytest_report_teststatus, pytest_terminal_summary):
under `pytest --fast` that process imports no conftest, yet prints what
plain pytest prints."""
import pytest
from test_plugin import PERCENT, fast, norm, section

CONFTEST = """
def pytest_report_header(config):
    return ["project: hooks demo"]


def pytest_report_teststatus(report, config):
    if report.when == "call" and report.failed:
        return "failed", "X", ("BOOM", {"red": True})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    tr.write_sep("-", "custom summary")
    tr.write_line("passed=%d failed=%d exit=%d" % (
        len(tr.stats.get("passed", [])), len(tr.stats.get("failed", [])), exitstatus))
"""

TESTS = """
def test_ok():
    pass


def test_bad():
    assert 0


def test_also_ok():
    pass
"""


def _lines(out):
    return [PERCENT.sub("", line) for line in norm(out)
            if not line.startswith(("platform ", "plugins: ", "rootdir: "))]


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
def test_conftest_reporting_hooks_print_as_in_plain_pytest(project, verbose):
    project.write("conftest.py", CONFTEST)
    project.write("tests/test_h.py", TESTS)
    oracle = project.pytest("-p", "no:cacheprovider", "--tb=short", *verbose)
    assert oracle.rc == 1 and "custom summary" in oracle.out and "BOOM" in oracle.out, oracle
    ours = fast(project, "-p", "no:cacheprovider", "--tb=short", "--fast-workers", "1", *verbose)
    assert ours.rc == oracle.rc, ours
    assert _lines(ours.out) == _lines(oracle.out), ours.out
    # Several workers: the summary's counts come from the whole run.
    ours = fast(project, "-p", "no:cacheprovider", "--tb=short", "--fast-workers", "2", *verbose)
    assert ours.rc == oracle.rc, ours
    assert section(ours.out, "short test summary info") == section(oracle.out, "short test summary info")
    assert "passed=2 failed=1 exit=1" in ours.out, ours.out
