"""The demo: why pytest-fast exists, in five lines, on a realistic service.

Generates make_app (a FastAPI + SQLAlchemy + Pydantic service and its suite,
bench/make_app.py) under build/demo/, then runs the whole suite once each:
plain pytest, pytest-xdist, pytest-fast cold (its daemon starts, imports and
collects), warm (a fork of the warm zygote) and edit -> result (a test file
is edited, then pytest-fast runs at once; the edited test proves the edit
was picked up).  Every run's outcome counts must equal plain pytest's.

One round each, after compileall has written the project's .pyc caches
(PYTHONDONTWRITEBYTECODE is unset: users have them); ./build.sh bench is the
rigorous, repeated measurement.  Run by ./build.sh demo with the suite's venv.

    python bench/demo.py --bin ./pytest-fast
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUTCOMES = ("failed", "passed", "skipped", "xfailed", "xpassed", "error", "errors")
EDIT = """\
from pathlib import Path

VALUE = {n}


def test_edited():
    Path(__file__).with_name(".edited").write_text(str(VALUE))
"""


def counts(text: str) -> dict[str, int]:
    """Outcome counts of pytest's closing line (warnings left out)."""
    for line in reversed(text.splitlines()):
        m = re.search(r"(\d+ \w+(?:, \d+ \w+)*) in [\d.]+s", line)
        if m:
            return {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", m.group(1)) if k in OUTCOMES}
    return {}


class Demo:
    def __init__(self, binary: Path, work: Path, workers: int) -> None:
        self.binary = binary
        self.app = work / "app"
        self.workers = workers
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("PYTHONDONTWRITEBYTECODE", "PYTEST_ADDOPTS", "VIRTUAL_ENV")
                    and not k.startswith("PYTEST_FAST_")}
        self.env["PYTEST_FAST_ADDRESS"] = str(work / "demo.sock")
        self.rows: list[tuple[str, float, dict[str, int]]] = []

    def run(self, argv: list[str]) -> tuple[float, str]:
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=self.app, env=self.env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        took = time.perf_counter() - t0
        if p.returncode not in (0, 1):
            sys.exit(f"demo: {' '.join(argv)} exited {p.returncode}:\n{p.stdout}")
        return took, p.stdout

    def measure(self, label: str, argv: list[str]) -> None:
        took, out = self.run(argv)
        self.rows.append((label, took, counts(out)))

    def edit(self, n: int) -> None:
        (self.app / "tests" / "test_demo_edit.py").write_text(EDIT.format(n=n))

    def main(self) -> int:
        py = sys.executable
        fast = [str(self.binary), "--workers", str(self.workers)]
        subprocess.run(fast + ["--stop"], env=self.env, capture_output=True)
        self.edit(0)
        self.run([py, "-m", "compileall", "-q", "."])    # the .pyc caches users have
        self.measure("plain pytest", [py, "-m", "pytest", "-q"])
        self.measure(f"pytest-xdist -n {self.workers}", [py, "-m", "pytest", "-q", "-n", str(self.workers)])
        self.measure("pytest-fast, cold", fast)
        layered = self.layers_built(fast)
        self.measure("pytest-fast, warm", fast)
        self.edit(1)
        self.measure("edit a test -> result", fast)
        edited = (self.app / "tests" / ".edited").read_text()
        subprocess.run(fast + ["--stop"], env=self.env, capture_output=True)
        return self.report(edited == "1", layered)

    def layers_built(self, fast: list[str]) -> float:
        """Wait until the daemon has built its zygote levels in the background.

        After the first collection of a project the idle daemon splits its
        zygote into levels (site, project, collected), so that an edit
        re-imports only what it touched; a user reading the cold result
        gives it that time, and so does the demo.  Returns the wait."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 60:
            st = subprocess.run(fast + ["--status"], env=self.env, capture_output=True, text=True).stdout
            if "(preloading)" in st and "zygote   : ready" in st:
                break
            time.sleep(0.1)
        return time.perf_counter() - t0

    def report(self, edit_seen: bool, layered: float) -> int:
        plain = self.rows[0][1]
        ntests = sum(self.rows[0][2].values())
        print(f"\nmake_app: {ntests} tests of a FastAPI + SQLAlchemy + Pydantic service, "
              f"{self.workers} workers, Python {sys.version.split()[0]}\n")
        print(f"  {'':24} {'wall':>8}  {'÷ plain pytest':>8}")
        ok = edit_seen
        for label, took, got in self.rows:
            same = got == self.rows[0][2]
            ok &= same
            note = "" if same else f"   outcomes differ: {got}"
            speed = f"{plain / took:.1f}x faster" if took < plain else f"{took / plain:.1f}x slower"
            speed = "" if label == self.rows[0][0] else speed
            print(f"  {label:24} {took:7.2f}s  {took / plain:7.2f}x  {speed:>13}{note}")
        print(f"\n  after the cold run the idle daemon built its zygote levels in {layered:.1f}s, "
              "in the background;\n  the warm and edit runs fork from them "
              "(./build.sh bench measures all of this repeatedly)")
        if not edit_seen:
            print("\ndemo: the edited test did not run with the edit")
        return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "pytest-fast"), help="the pytest-fast binary")
    ap.add_argument("--work", default=str(ROOT / "build" / "demo"), help="where the app is generated")
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 2)
    args = ap.parse_args()
    work = Path(args.work)
    binary = Path(args.bin).resolve()
    # the last demo's daemon, if it still runs, goes before its socket does
    subprocess.run([str(binary), "--address", str(work / "demo.sock"), "--stop"], capture_output=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([sys.executable, str(HERE / "make_app.py"), str(work / "app")], check=True)
    return Demo(binary, work, args.workers).main()


if __name__ == "__main__":
    sys.exit(main())
