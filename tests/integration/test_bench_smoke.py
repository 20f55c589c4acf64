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
