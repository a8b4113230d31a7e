"""Hot swap: an edit inside the function bodies of an app module is swapped
into a fork of the collection (function.__code__) instead of importing the
project again.  After every edit the outcomes and the collection must equal
plain pytest's; whatever the swap cannot make equal (a function that ran
while the zygote imported or collected, an edit outside function bodies, a
closure that changed) re-collects in full, and --status says which path
each re-collect took."""
import re

from test_engine import write_all
from test_incremental import check, edit, warm

FILES = {
    "pytest.ini": "[pytest]\n",
    "app/__init__.py": "",
    "app/svc.py": """
        import functools

        RATE = 2


        def price(x):
            return x * RATE


        def helper():
            return 10


        CONST = helper()


        class Svc:
            def __init__(self):
                self.n = 1

            def run(self):
                return self.n + 1

            @property
            def prop(self):
                return 5

            @staticmethod
            def static():
                return 3


        def deco(f):
            @functools.wraps(f)
            def wrapper(*a):
                return f(*a)
            return wrapper


        @deco
        def wrapped():
            return 7


        def boom():
            raise ValueError("boom")


        def cases():
            return [1, 2]


        def numbers():
            yield 1


        PENDING = numbers()
    """,
    "app/fixtures.py": """
        import pytest


        @pytest.fixture
        def limit():
            assert 1 + 1 == 2
            return 3
    """,
    "tests/conftest.py": """
        import pytest

        pytest_plugins = ["app.fixtures"]


        @pytest.fixture
        def svc():
            from app.svc import Svc
            return Svc()
    """,
    "tests/test_svc.py": """
        import pytest
        from app import svc as m


        def test_price():
            assert m.price(3) == 6


        def test_const():
            assert m.CONST == 10


        def test_svc(svc):
            assert (svc.run(), svc.prop, m.Svc.static()) == (2, 5, 3)


        def test_wrapped():
            assert m.wrapped() == 7


        def test_pending():
            assert next(m.PENDING) == 1


        def test_limit(limit):
            assert limit == 3


        def test_boom():
            m.boom()


        @pytest.mark.parametrize("x", m.cases())
        def test_cases(x):
            assert x < 2
    """,
}

SWAPPED = "incremental (%s function bod%s swapped in app/svc.py)"


def explained(out):
    """The lines of pytest's explanation of a failed assert."""
    return [line.strip() for line in out.splitlines() if line.strip().startswith("E ")]


def where(out):
    """The app lines a traceback names."""
    return re.findall(r"app/svc\.py:\d+", out)


def test_body_edits_are_swapped_in_and_match_plain_pytest(project):
    write_all(project, FILES)
    warm(project, None)
    edit(project, "app/svc.py", "return x * RATE", "return x * RATE + 1")
    assert check(project, None, "incremental") == SWAPPED % (1, "y")
    # a method, a property, a static method, a function behind functools.wraps
    for old, new in (("self.n + 1", "self.n + 2"), ("return 5", "return 6"), ("return 3", "return 4"),
                     ("return 7", "return 8")):
        edit(project, "app/svc.py", old, new)
    # from the full collection: the first edit is swapped in again
    assert check(project, None, "incremental") == SWAPPED % (5, "ies")
    # a line added above boom: its traceback points at its new line
    edit(project, "app/svc.py", "    return x * RATE + 1", "    y = RATE\n    return x * y + 1")
    check(project, None, "incremental")
    fast, plain = project.fast("-k", "boom"), project.pytest("-k", "boom")
    assert where(fast.out) == where(plain.out) and where(plain.out), (fast, plain)
    # a test module edited as well: re-collected on top of the swap
    edit(project, "tests/test_svc.py", "== 10", "== 11")
    assert check(project, None, "incremental") == "incremental (1 module; 5 function bodies swapped in app/svc.py)"
    # a conftest edit re-collects in full, from a project level imported
    # again: the one below the swap still runs the old bodies
    edit(project, "tests/conftest.py", "return Svc()", "return Svc()  # edited")
    assert check(project, None, "full").startswith("full (tests/conftest.py changed")
    edit(project, "app/svc.py", "return 8", "return 7")
    assert check(project, None, "incremental") == SWAPPED % (1, "y")
    # reverted: as the full collection imported it, nothing to swap
    edit(project, "app/svc.py", "return 7", "return 8")
    assert check(project, None, "incremental") == "incremental (app/svc.py as the collection imported)"
    edit(project, "app/svc.py", "return 8", "return 7")
    assert check(project, None, "incremental") == SWAPPED % (1, "y")
    # a fixture in a plugin module, which pytest rewrites: the failing
    # assert's explanation is pytest's
    edit(project, "app/fixtures.py", "1 + 1 == 2", "1 + 1 == 3")
    how = check(project, None, "incremental (2 function bodies swapped in app/")
    assert "app/fixtures.py" in how and "app/svc.py" in how, how
    fast, plain = project.fast("-k", "limit"), project.pytest("-k", "limit")
    assert "assert (1 + 1) == 3" in plain.out and explained(fast.out) == explained(plain.out), (fast, plain)


def test_what_the_swap_cannot_make_equal_recollects_in_full(project):
    write_all(project, FILES)
    warm(project, None)
    # ran at import (a module constant), ran at collection (parametrize)
    edit(project, "app/svc.py", "return 10", "return 11")
    assert check(project, None, "full") == (
        "full (app/svc.py: helper ran while the zygote imported and collected)")
    edit(project, "app/svc.py", "return [1, 2]", "return [0, 1, 2]")
    assert check(project, None, "full") == (
        "full (app/svc.py: cases ran while the zygote imported and collected)")
    # a generator made at import, not started yet
    edit(project, "app/svc.py", "yield 1", "yield 2")
    assert check(project, None, "full") == "full (app/svc.py: a module holds a generator of numbers)"
    # outside function bodies
    edit(project, "app/svc.py", "RATE = 2", "RATE = 3")
    assert check(project, None, "full") == "full (app/svc.py changed outside function bodies)"
    # a closure that changed (super() closes over __class__), a docstring
    edit(project, "app/svc.py", "return self.n + 1", "return super().__init__() or self.n + 1")
    assert check(project, None, "full").startswith("full (app/svc.py: Svc.run now closes over other names")
    edit(project, "app/svc.py", "    return x * RATE", '    """Price."""\n    return x * RATE')
    assert check(project, None, "full") == "full (app/svc.py: the docstring of price changed)"
    # a syntax error: a full re-collect reports it as pytest does
    edit(project, "app/svc.py", "def boom():", "def boom()")
    check(project, None, "full")
    edit(project, "app/svc.py", "def boom()", "def boom():")
    check(project, None, "full")
    # and when the swap is fine again, it is taken
    edit(project, "app/svc.py", "return 3", "return 4")
    assert check(project, None, "incremental") == SWAPPED % (1, "y")


def test_incremental_off_never_swaps(project):
    write_all(project, FILES)
    env = {"PYTEST_FAST_INCREMENTAL": "0"}
    warm(project, env)
    edit(project, "app/svc.py", "return x * RATE", "return x * RATE + 1")
    assert check(project, env, "full") == "full (app/svc.py changed; incremental re-collect off)"
