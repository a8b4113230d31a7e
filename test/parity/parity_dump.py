"""`-p parity_dump`: test/outcome_dump.py's {nodeid: outcome} map, written to
$PARITY_DUMP by the process that reports the session: plain pytest, xdist's
controller, or `pytest --fast`'s controller -- never by the pytest-fast
daemon's zygote or workers, which load the same `-p` plugins and inherit the
environment of the run that booted them."""
import os
import sys

import outcome_dump
from outcome_dump import pytest_collectreport, pytest_configure, pytest_runtest_logreport  # noqa: F401


def pytest_unconfigure(config):
    if "_pytest_fast" in sys.modules or hasattr(config, "workerinput"):
        return
    os.environ["OUTCOME_DUMP"] = os.environ.get("PARITY_DUMP", "")
    outcome_dump.pytest_unconfigure(config)
