"""Acceptance on the benchmark workload: a FastAPI + SQLAlchemy + Pydantic
service (bench/make_app.py, default size), cold and warm, against plain
pytest."""
import subprocess
import sys

from conftest import ROOT


def test_make_app_cold_and_warm_match_pytest(project):
    subprocess.run([sys.executable, str(ROOT / "bench" / "make_app.py"), str(project.path)],
                   check=True, capture_output=True)
    oracle = project.pytest()
    assert oracle.dump and len(oracle.dump) > 300, oracle
    cold = project.fast("--workers", "2")
    assert "(cold)" in cold.out, cold
    assert cold.rc == oracle.rc, (cold, oracle)
    assert cold.dump == oracle.dump
    warm = project.fast("--workers", "2")
    assert "(warm)" in warm.out, warm
    assert warm.rc == oracle.rc
    assert warm.dump == oracle.dump
