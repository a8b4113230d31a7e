"""The README's `### pytest options` table covers every option of the installed
pytest: each option its `--help` lists has a row, so the table cannot fall
behind a new pytest.  Plugins' options (pytest-xdist, pytest-cov) are left out
of the check (plugin autoload off): their rows point to their own sections."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT

OPTION = re.compile(r"-{1,2}[A-Za-z0-9][-A-Za-z0-9_]*")


def table_rows(readme: str) -> list[list[str]]:
    """The cells of each row of the table under `### pytest options`."""
    section = readme.split("\n### pytest options\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| option |") and rows[1].startswith("|---"), "the table's header moved"
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def table_options(rows: list[list[str]]) -> set[str]:
    """Options named in the first column: each `...` span that starts with one."""
    names = set()
    for row in rows:
        for span in re.findall(r"`([^`]+)`", row[0]):
            m = OPTION.match(span)
            if m:
                names.add(m.group(0))
    return names


def help_options(text: str) -> set[str]:
    """Option names pytest's --help lists, up to its ini-options section."""
    names = set()
    for line in text.splitlines():
        if line.startswith("[pytest]"):
            break
        m = re.match(r"  (-\S.*?)(?:  |$)", line)
        if m:
            for part in m.group(1).split(", "):
                name = OPTION.match(part)
                if name:
                    names.add(name.group(0))
    return names


def pytest_help(cwd) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"   # pytest's own options only
    p = subprocess.run([sys.executable, "-m", "pytest", "--help"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_option_of_pytests_help_has_a_row(tmp_path):
    rows = table_rows((ROOT / "README.md").read_text())
    documented = table_options(rows)
    listed = help_options(pytest_help(tmp_path))
    # the parser sees pytest's options, short and long, or this test proves nothing
    assert {"-k", "-x", "--exitfirst", "--import-mode", "--log-cli-level", "-h"} <= listed
    missing = sorted(listed - documented)
    assert not missing, f"options of pytest's --help with no row in README's pytest options table: {missing}"


def test_each_row_says_what_each_front_end_does():
    rows = table_rows((ROOT / "README.md").read_text())
    assert len(rows) > 20
    for row in rows:
        assert len(row) == 3 and all(row), f"a row needs an option, a CLI and a plugin cell: {row}"
        for cell in row[1:]:
            if cell.startswith("refused"):
                # a refusal says what to run instead
                assert "run `" in cell, f"refusal without what to run instead: {row}"
