"""The reporting options of pytest's terminal through the CLI's lean summary
(`pytest-fast`): each either shapes the summary the way its pytest meaning
says, side by side with plain pytest, or is refused with the `pytest --fast`
command that gives pytest's own output, and that command works."""
import re

import pytest
from test_plugin import fast as plugin_run
from test_plugin import final_line, norm, section, status_lines

PYTEST_MAJOR = int(pytest.__version__.split(".")[0])

PROJECT = {
    "tests/test_a.py": """
        import logging
        import sys
        import warnings

        import pytest

        def test_pass():
            pass

        def test_fail():
            print("to stdout")
            print("to stderr", file=sys.stderr)
            logging.getLogger("t").warning("to the log")
            assert 0

        @pytest.mark.skip(reason="not now")
        def test_skip():
            pass

        @pytest.mark.xfail(reason="known bug")
        def test_xfail():
            assert 0

        @pytest.mark.xfail(reason="fixed?")
        def test_xpass():
            pass

        def test_warns():
            warnings.warn(UserWarning("careful"))

        @pytest.fixture
        def broken():
            raise RuntimeError("setup")

        def test_error(broken):
            pass
        """,
    "tests/test_m.py": """
        import pytest

        pytest.skip("the whole module", allow_module_level=True)
        """,
}


def _write(project, files=PROJECT):
    for rel, text in files.items():
        project.write(rel, text)


def _counts(out):
    return final_line(out).strip("= ")


def _box(out):
    return "FORKSERVER DAEMON" in out


@pytest.mark.parametrize("args, box", [((), True), (("-q",), False), (("--quiet",), False),
                                       (("--no-header",), False), (("--verbosity=-1",), False),
                                       (("-q", "-v"), True)],
                         ids=lambda a: (" ".join(a) or "default") if isinstance(a, tuple) else None)
def test_quiet_and_no_header_drop_the_timing_box(project, args, box):
    _write(project)
    oracle = project.pytest(*args)
    ours = project.fast(*args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    assert _box(ours.out) == box, ours
    assert "FAILURES (2):" in ours.out, ours   # the lists stay (test_fail, test_error)
    assert _counts(ours.out) == _counts(oracle.out), (ours, oracle)
    assert ("══" in ours.out) == box, ours   # its rules too


@pytest.mark.parametrize("args", [("-v",), ("--verbose",), ("-vv",), ("--verbosity=1",)], ids=" ".join)
def test_verbose_lists_each_test_with_its_word_as_pytest_v(project, args):
    _write(project)
    oracle = project.pytest(*args)
    ours = project.fast("--workers", "2", *args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    want = status_lines(oracle.out)
    assert len(want) == 7, oracle
    assert status_lines(ours.out) == want, (ours, oracle)
    assert not status_lines(project.fast("--workers", "2").out)


def test_no_summary_keeps_the_closing_line_only(project):
    _write(project)
    oracle = project.pytest("--no-summary", "--durations=0", "-ra")
    assert section(oracle.out, "FAILURES") is None and "short test summary" not in oracle.out, oracle
    ours = project.fast("--no-summary", "--durations=0", "-ra")
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    for listed in ("FAILURES", "XPASS", "DURATIONS", "SHORT SUMMARY", "COLLECT ERRORS"):
        assert listed not in ours.out, ours
    assert _counts(ours.out) == _counts(oracle.out), (ours, oracle)
    full = project.fast("--durations=0", "-ra")
    assert "FAILURES (2):" in full.out and "SHORT SUMMARY" in full.out, full


CAPTURED = re.compile(r"-+ (Captured \w+ \w+) -+")


@pytest.mark.parametrize("mode", ["no", "stdout", "stderr", "log", "all", None])
def test_show_capture_picks_the_sections_under_a_failure(project, mode):
    _write(project)
    args = ("-k", "test_fail") + ((f"--show-capture={mode}",) if mode else ())
    oracle = project.pytest(*args)
    ours = project.fast(*args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    want = CAPTURED.findall(oracle.out)
    assert len(want) == {"no": 0, "all": 3, None: 3}.get(mode, 1), oracle
    assert CAPTURED.findall(ours.out) == want, (ours, oracle)


@pytest.mark.parametrize("mode", ["yes", "no", "auto", None])
def test_color_colours_the_closing_line_as_pytest(project, mode):
    _write(project)
    args = (f"--color={mode}",) if mode else ()
    oracle = project.pytest(*args)
    ours = project.fast(*args)
    assert ours.rc == oracle.rc, (ours, oracle)
    coloured = "\x1b[" in final_line(oracle.out)
    assert coloured == (mode == "yes"), oracle   # not a terminal: auto is no colour
    assert ("\x1b[" in final_line(ours.out)) == coloured, (ours, oracle)
    assert "\x1b[31m" in final_line(ours.out) or not coloured, ours   # a failure: red


def _summary_words(lines):
    """(word, node id) of each short summary line; a skip's line names its
    location, not its node id, in pytest's folded form: its word only."""
    got = []
    for line in lines or []:
        m = re.match(r"^\s*(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (?:\[\d+\] )?(\S+?)(?:$|:? )", line)
        if m:
            got.append((m.group(1), None if m.group(1) == "SKIPPED" else m.group(2)))
    return got


def _short_summary(out):
    """The lines of the lean summary's -r list, None without one."""
    lines = norm(out)
    head = next((i for i, line in enumerate(lines) if line.startswith("  SHORT SUMMARY (-r ")), None)
    if head is None:
        return None
    body = []
    for line in lines[head + 1:]:
        if not line.startswith("    "):
            break
        body.append(line[4:])
    return body


@pytest.mark.parametrize("chars", ["a", "A", "s", "fE", "xX", "N", "p", "sN f", None])
def test_report_chars_list_the_chosen_categories(project, chars):
    _write(project)
    args = ("-r", chars) if chars else ()
    oracle = project.pytest(*args)
    ours = project.fast(*args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    want = _summary_words(section(oracle.out, "short test summary info"))
    body = _short_summary(ours.out)
    if chars is None or not want:
        # no -r: the FAILURES list names them already; -rN: nothing
        assert body is None, ours
        return
    assert body is not None, ours
    got = _summary_words(body)
    # grouped as the letters; the collection's errors and skips first, tests in run order
    assert got == want, (ours, oracle)
    if chars in ("a", "A"):   # with pytest's reasons
        assert "XFAIL tests/test_a.py::test_xfail - known bug" in body, ours
        assert "SKIPPED tests/test_a.py::test_skip - Skipped: not now" in body, ours
        assert "SKIPPED tests/test_m.py - Skipped: the whole module" in body, ours


@pytest.mark.parametrize("args", [("-rsxXp", "--no-fold-skipped"), ("--report-chars=sxXp",)], ids=" ".join)
def test_report_chars_lines_are_pytests_unfolded_lines(project, args):
    """For skips, xfails, xpasses and passes the lines are pytest's own as
    --no-fold-skipped prints them (pytest 8 on: 7.4 folds and words XPASS
    without " - "): the lean list never folds."""
    if PYTEST_MAJOR < (9 if args[0].startswith("--report-chars") else 8):
        pytest.skip(f"{args[-1]} is newer than this pytest")
    _write(project)
    oracle = project.pytest("-rsxXp", "--no-fold-skipped")
    ours = project.fast(*args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    want = section(oracle.out, "short test summary info")
    assert len(want) == 6, oracle
    assert _short_summary(ours.out) == want, (ours, oracle)


def test_disable_warnings_counts_warnings_as_pytest(project):
    _write(project)
    for args in (("--disable-warnings",), ("--disable-pytest-warnings",), ()):
        oracle = project.pytest("-k", "test_warns", *args)
        ours = project.fast("-k", "test_warns", *args)
        assert "1 warning" in _counts(oracle.out), oracle
        assert (ours.rc, _counts(ours.out)) == (oracle.rc, _counts(oracle.out)), (args, ours, oracle)


DURATION = re.compile(r"^\s*\d+\.\d+s\s+(setup|call|teardown)\s+(\S+)$")
SMALL = {"tests/test_d.py": """
    def test_1():
        pass

    def test_2():
        pass

    def test_3():
        pass
    """}


@pytest.mark.parametrize("args, listed", [(("--durations-min=0",), 9), (("--durations-min=1000",), 0),
                                          (("-vv",), 9), (("--durations-min=0.0",), 9)],
                         ids=lambda a: " ".join(a) if isinstance(a, tuple) else None)
def test_durations_min_is_the_threshold(project, args, listed):
    _write(project, SMALL)
    oracle = project.pytest("--durations=0", *args)
    ours = project.fast("--durations=0", *args)
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    want = sorted(m.groups() for m in map(DURATION.match, norm(oracle.out)) if m)
    assert len(want) == listed, oracle
    assert sorted(m.groups() for m in map(DURATION.match, norm(ours.out)) if m) == want, (ours, oracle)
    if listed:
        assert "DURATIONS (top 9, ≥0ms — per phase):" in ours.out, ours
    big = project.fast("--durations=0", "--durations-min=0.25")
    assert "≥250ms" in big.out or "DURATIONS" not in big.out, big


def _refusal_runs(project, cli_args, plugin_args, oracle_args):
    """The CLI refuses, naming the `pytest --fast` arguments; those, given
    values, run as plain pytest does."""
    ours = project.fast(*cli_args)
    assert ours.rc == 4 and ours.out == "", ours
    m = re.search(r"use `pytest --fast ([^`]*)`", ours.err)
    assert m, ours
    return m.group(1), plugin_run(project, *plugin_args), project.pytest(*oracle_args)


def test_junit_prefix_refused_and_the_named_command_works(project, tmp_path):
    _write(project, SMALL)
    named, ours, oracle = _refusal_runs(
        project, ("--junit-prefix=pre",),
        (f"--junitxml={tmp_path}/fast.xml", "--junit-prefix=pre"),
        (f"--junitxml={tmp_path}/plain.xml", "--junit-prefix=pre"))
    assert named == "--junitxml=PATH --junit-prefix=STR"
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    for name in ("fast", "plain"):
        assert 'classname="pre.tests.test_d"' in (tmp_path / f"{name}.xml").read_text(), name


def test_pastebin_refused_before_anything_runs(project):
    _write(project, SMALL)
    for args in (("--pastebin=failed",), ("--pastebin", "all")):
        ours = project.fast(*args)
        assert ours.rc == 4 and "KeyError" not in ours.err, ours
        assert "use `pytest --fast --pastebin=MODE`" in ours.err, ours
        assert ours.dump is None, ours   # nothing ran


@pytest.mark.parametrize("cli, named, since", [
    (("--force-short-summary",), "--force-short-summary", 8),
    (("--xfail-tb",), "--xfail-tb", 8),
    (("--code-highlight=no",), "--code-highlight=yes", 7),
], ids=lambda v: v if isinstance(v, str) else None)
def test_refused_reporting_options_name_a_pytest_fast_command_that_works(project, cli, named, since):
    if PYTEST_MAJOR < since:
        pytest.skip(f"{cli[0]} is pytest {since}'s")
    _write(project)
    got, ours, oracle = _refusal_runs(project, cli, named.split(), named.split())
    assert got == named, got
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    assert section(ours.out, "short test summary info") == section(oracle.out, "short test summary info"), \
        (ours, oracle)


def test_cache_clear_on_a_warm_run_clears_before_lf_reads(project):
    _write(project, {"tests/test_c.py": """
        def test_ok():
            pass

        def test_bad():
            assert 0
        """})
    first = project.fast()
    assert first.rc == 1, first
    lf = project.fast("--lf")
    assert lf.dump == {"tests/test_c.py::test_bad": "failed"}, lf
    other = project.path / ".pytest_cache" / "v" / "mine" / "key"
    other.parent.mkdir(parents=True)
    other.write_text("1")
    ours = project.fast("--cache-clear", "--lf")
    assert "run #3 (warm)" in ours.out, ours   # the run cleared it, not a re-collection
    assert not other.exists(), ours
    lastfailed = project.path / ".pytest_cache" / "v" / "cache" / "lastfailed"
    assert '"tests/test_c.py::test_bad": true' in lastfailed.read_text()   # written after the run
    again = project.fast("--lf")
    assert again.dump == lf.dump, again
    oracle = project.pytest("--cache-clear", "--lf")
    assert (ours.rc, ours.dump) == (oracle.rc, oracle.dump), (ours, oracle)
    assert len(ours.dump) == 2, ours
    other.parent.mkdir(parents=True)
    other.write_text("1")
    plugin = plugin_run(project, "--cache-clear", "--lf")   # the same through the plugin
    assert (plugin.rc, plugin.dump) == (oracle.rc, oracle.dump), (plugin, oracle)
    assert not other.exists(), plugin
