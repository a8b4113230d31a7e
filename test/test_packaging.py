"""The pip/uv route: the package built by meson-python (pyproject.toml,
meson.build), installed into a fresh venv, used with no other step.

The wheel is built once per session from this checkout (`pip wheel .`, with
build isolation, as `pip install .` does) and installed into a fresh venv of
the base interpreter ($PF_PACKAGING_PYTHON, else the one running this suite).
Deselect with `-m "not packaging"`: the build takes a while and needs the
package index for meson-python and pytest.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.packaging

BASE = os.environ.get("PF_PACKAGING_PYTHON") or sys.executable


def header_version():
    text = (ROOT / "pytest_fast.h").read_text()
    return re.search(r'#define PF_VERSION "([^"]+)"', text).group(1)


def clean_env(**extra):
    """No venv, no pytest-fast or pytest settings, no PATH entry for the venv
    or the checkout: what a user's fresh shell has."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "PF_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                  if p and not p.startswith(str(ROOT)))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(cmd, timeout=600, check=True, **kw):
    kw.setdefault("env", clean_env())
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, **kw)
    if check and p.returncode != 0:
        pytest.fail(f"{cmd} exited {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}")
    return p


class Venv:
    def __init__(self, path):
        self.path = Path(path)
        self.bin = self.path / "bin"
        self.python = self.bin / "python"

    @classmethod
    def create(cls, path, *flags):
        run([BASE, "-m", "venv", *flags, path], timeout=300)
        return cls(path)

    def pip(self, *args, timeout=900):
        return run([self.python, "-m", "pip", *args], timeout=timeout)

    def site_packages(self):
        out = run([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"])
        return Path(out.stdout.strip())


@pytest.fixture(scope="session")
def packaging_dir():
    d = Path(tempfile.mkdtemp(prefix="pf-packaging-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def wheel(packaging_dir):
    """The wheel, built once: by a throwaway venv's pip, as `pip install .` would."""
    builder = Venv.create(packaging_dir / "builder")
    dist = packaging_dir / "dist"
    builder.pip("wheel", "--no-deps", "-w", dist, ROOT)
    wheels = list(dist.glob("pytest_fast-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="session")
def installed(packaging_dir, wheel):
    """A fresh venv with the wheel (and so pytest) installed, nothing else."""
    venv = Venv.create(packaging_dir / "venv")
    venv.pip("install", wheel)
    return venv


@pytest.fixture
def sockdir():
    d = tempfile.mkdtemp(prefix="pfpk")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def write_project(path):
    (path / "tests").mkdir(parents=True)
    (path / "tests" / "test_tiny.py").write_text(
        "import sys\n\n"
        "def test_one():\n    assert 1 + 1 == 2\n\n"
        "def test_runs_in_the_venv():\n    assert sys.prefix != sys.base_prefix, sys.prefix\n\n"
        "def test_fails():\n    assert 0, 'expected failure'\n")


def test_wheel_holds_the_binary_and_the_plugin(wheel):
    abi = run([BASE, "-c", "import sys; print('cp%d%d' % sys.version_info[:2])"]).stdout.strip()
    # A binary tied to one CPython minor version: tagged so that pip never
    # reuses it for another.
    assert f"-{abi}-{abi}-" in wheel.name, wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        version = header_version()
        assert f"pytest_fast-{version}.data/scripts/pytest-fast" in names, names
        assert "pytest_fast_plugin.py" in names, names
        assert "plugin.py" not in names
        entry_points = z.read(f"pytest_fast-{version}.dist-info/entry_points.txt").decode()
        assert "[pytest11]" in entry_points and "pytest_fast = pytest_fast_plugin" in entry_points
        metadata = z.read(f"pytest_fast-{version}.dist-info/METADATA").decode()
        assert re.search(r"^Requires-Dist: pytest>=7\.4", metadata, re.M), metadata
        mode = z.getinfo(f"pytest_fast-{version}.data/scripts/pytest-fast").external_attr >> 16
        assert mode & 0o111, oct(mode)


def test_version_names_the_venv_interpreter_and_its_pytest(installed):
    out = run([installed.bin / "pytest-fast", "--version"], cwd="/").stdout
    pytest_version = run([installed.python, "-c", "import pytest; print(pytest.__version__)"]).stdout.strip()
    py_version = run([installed.python, "-c", "import platform; print(platform.python_version())"]).stdout.strip()
    assert out.splitlines()[0].startswith(f"pytest-fast {header_version()} "), out
    assert re.search(rf"^linked libpython {re.escape(py_version)}\b", out, re.M), out
    # Not the throwaway build environment's python, not symlinks resolved:
    # the python beside the installed binary.
    assert re.search(rf"^interpreter {re.escape(str(installed.python))}$", out, re.M), out
    assert re.search(rf"^pytest {re.escape(pytest_version)}$", out, re.M), out


def test_cli_and_pytest_fast_work_with_no_other_step(installed, tmp_path, sockdir):
    project = tmp_path / "proj"
    write_project(project)
    # A private daemon address; otherwise the user's defaults.
    env = clean_env(PYTEST_FAST_ADDRESS=str(sockdir / "d.sock"))
    exe = installed.bin / "pytest-fast"
    try:
        dump = tmp_path / "dump.json"
        cli = run([exe, "--workers", "2", "--dump", dump], cwd=project, env=env, check=False,
                  timeout=300)
        assert cli.returncode == 1, (cli.stdout, cli.stderr)
        assert json.loads(dump.read_text()) == {
            "tests/test_tiny.py::test_one": "passed",
            "tests/test_tiny.py::test_runs_in_the_venv": "passed",
            "tests/test_tiny.py::test_fails": "failed",
        }
        # The plugin comes from the pytest11 entry point and finds the binary
        # beside sys.executable (the venv's bin is not on PATH here); it
        # shares the CLI's warm daemon.
        plug = run([installed.bin / "pytest", "--fast", "-rA"], cwd=project, env=env, check=False,
                   timeout=300)
        assert plug.returncode == 1, (plug.stdout, plug.stderr)
        assert re.search(r"^=+ 1 failed, 2 passed in [\d.]+s =+$", plug.stdout, re.M), plug.stdout
        assert "PASSED tests/test_tiny.py::test_runs_in_the_venv" in plug.stdout, plug.stdout
    finally:
        run([exe, "--stop"], env=env, check=False, timeout=60)


def test_plugin_is_registered_and_inert_without_fast(installed, tmp_path):
    project = tmp_path / "proj"
    write_project(project)
    helps = run([installed.bin / "pytest", "--help"], cwd=project).stdout
    assert "--fast" in helps and "pytest-fast" in helps
    plain = run([installed.bin / "pytest", "-q", "-p", "no:cacheprovider"], cwd=project, check=False)
    assert plain.returncode == 1 and "1 failed, 2 passed" in plain.stdout, plain.stdout


def test_other_minor_version_is_refused_with_a_message(installed, tmp_path):
    """A binary linked with libpython X.Y and an interpreter of another minor."""
    here = run([installed.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout.strip()
    other = None
    for cand in sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob("versions/3.*/bin/python3")):
        if not cand.parent.parent.name.startswith(here + "."):
            other = cand
            break
    for minor in range(9, 15):
        found = shutil.which(f"python3.{minor}", path="/usr/bin:/usr/local/bin")
        if other is None and found and f"3.{minor}" != here:
            other = Path(found)
    if other is None:
        pytest.skip("no interpreter of another minor version on this machine")
    p = run([installed.bin / "pytest-fast", "--python", other], cwd=tmp_path, check=False)
    assert p.returncode == 4, (p.stdout, p.stderr)
    assert f"but this pytest-fast was built against libpython {here}" in p.stderr, p.stderr


def test_missing_pytest_is_said_plainly(installed, tmp_path, sockdir):
    bare = Venv.create(tmp_path / "bare", "--without-pip")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_a():\n    pass\n")
    exe = installed.bin / "pytest-fast"
    address = str(sockdir / "d.sock")
    try:
        p = run([exe, "--address", address, "--python", bare.python], cwd=tmp_path, check=False, timeout=120)
        assert p.returncode == 4, (p.stdout, p.stderr)
        assert f"pytest is not importable by {bare.python}" in p.stderr, p.stderr
        v = run([exe, "--python", bare.python, "--version"], cwd=tmp_path).stdout
        assert re.search(r"^pytest not importable", v, re.M), v
    finally:
        run([exe, "--address", address, "--stop"], check=False, timeout=60)


def test_uninstall_removes_the_binary_and_the_plugin(packaging_dir, wheel):
    venv = Venv.create(packaging_dir / "uninstall")
    venv.pip("install", wheel)
    site = venv.site_packages()
    assert (venv.bin / "pytest-fast").exists() and (site / "pytest_fast_plugin.py").exists()
    venv.pip("uninstall", "-y", "pytest-fast")
    assert not (venv.bin / "pytest-fast").exists()
    assert not list(site.glob("pytest_fast*"))
    assert run([venv.python, "-c", "import pytest_fast_plugin"], check=False).returncode != 0
    helps = run([venv.bin / "pytest", "--help"], cwd=packaging_dir).stdout   # not under test/conftest.py
    assert "--fast-workers" not in helps


def test_sdist_builds_and_holds_the_sources(packaging_dir):
    """`python -m build --sdist`: meson dist, i.e. the files git tracks."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: meson dist archives what git tracks")
    venv = Venv.create(packaging_dir / "sdist")
    venv.pip("install", "build")
    out = packaging_dir / "sdist-out"
    run([venv.python, "-m", "build", "--sdist", "--outdir", out, ROOT], timeout=900)
    (sdist,) = out.glob("pytest_fast-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    for required in ("pyproject.toml", "meson.build", "meson.options", "pytest_fast.c",
                     "pytest_fast.h", "plugin.py", "README.md", "LICENSE", "build.sh", "PKG-INFO"):
        assert required in names, sorted(names)
