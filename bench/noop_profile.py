"""A pytest plugin for the benchmark: a profile function that does nothing,
set around each test as pytest-fast's recording sets its own.  The builtin
``slice`` accepts any three arguments and returns at once, so what this
costs plain pytest is what any profile function costs CPython before 3.12
(every call and return takes the interpreter's slow path): the floor under
the recording overhead, measured in the same rounds."""
import sys
import threading

import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    sys.setprofile(slice)
    threading.setprofile(slice)
    try:
        yield
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
