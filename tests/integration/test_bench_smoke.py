"""The benchmark stays runnable: a tiny run, timing nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench" / "memory.py"


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")
def test_memory_benchmark_runs_a_tiny_database():
    completed = subprocess.run(
        [sys.executable, str(BENCH), "--sizes", "2", "--part-size-mb", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "peak RSS" in completed.stdout and completed.stdout.strip().splitlines()[-1].endswith("MB")


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")
def test_soak_runs_a_few_backups_with_faults_and_loses_none():
    soak = Path(__file__).parents[2] / "bench" / "soak.py"
    completed = subprocess.run(
        [sys.executable, str(soak), "--backups", "6", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert ", lost 0" in completed.stdout and "token in the daemon's log: no" in completed.stdout
