"""Smoke test of benchmarks/bench_average_k.py at a tiny shape: it runs, and its three thresholds agree."""
import os
import subprocess
import sys

import pytest

from tests import shared_runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_bench_average_k_runs_and_its_thresholds_agree():
  proc = subprocess.run([sys.executable, "benchmarks/bench_average_k.py", "--no-write", "--rounds", "1",
                         "--shapes", "300,50"], cwd=ROOT, capture_output=True, text=True, timeout=shared_runs.SUBPROCESS_TIMEOUT_S, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [line for line in proc.stdout.splitlines() if line.startswith("| 300 | 50 |")]
  # One row per k printed while running and again in the report; the script raises if the thresholds differ.
  assert sorted({row.split("|")[3].strip() for row in rows}) == ["1", "3", "5"]
