"""The oracle: `python -m pytest -p outcome_dump` writes {nodeid: outcome}.

The outcome of a test is its most severe phase report by pytest's own
pytest_report_teststatus category (error > failed > xpassed > xfailed >
skipped > passed); a failed collector is "error".  pytest-fast's --dump
uses the same rule, so the two maps compare directly.
"""
import json
import os

SEVERITY = ["passed", "skipped", "xfailed", "xpassed", "failed", "error"]
_outcomes = {}


def pytest_runtest_logreport(report):
    config = _config[0]
    category = config.hook.pytest_report_teststatus(report=report, config=config)[0]
    if category not in SEVERITY:
        if report.passed:
            _outcomes.setdefault(report.nodeid, "passed")
        return
    old = _outcomes.get(report.nodeid)
    if old is None or SEVERITY.index(category) > SEVERITY.index(old):
        _outcomes[report.nodeid] = category


def pytest_collectreport(report):
    if report.failed:
        _outcomes[report.nodeid] = "error"


_config = []


def pytest_configure(config):
    _config.append(config)


def pytest_unconfigure(config):
    path = os.environ.get("OUTCOME_DUMP")
    if path and not hasattr(config, "workerinput"):
        with open(path, "w") as f:
            json.dump(_outcomes, f, indent=1, sort_keys=True)
