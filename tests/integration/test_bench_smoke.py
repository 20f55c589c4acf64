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
@pytest.mark.parametrize("keep", ["3", "0"])
def test_soak_runs_a_few_backups_with_faults_and_loses_none(keep):
    soak = Path(__file__).parents[2] / "bench" / "soak.py"
    completed = subprocess.run(
        [sys.executable, str(soak), "--backups", "6", "--seed", "7", "--keep", keep],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert ", lost 0" in completed.stdout and "token in the daemon's log: no" in completed.stdout
    assert "parts left in the spool after draining: 0" in completed.stdout


@pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")
def test_speed_benchmark_runs_every_mode_on_a_tiny_database():
    speed = Path(__file__).parents[2] / "bench" / "speed.py"
    completed = subprocess.run(
        [sys.executable, str(speed), "--size-mb", "2", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    rows = {line.split("  ")[0] for line in completed.stdout.splitlines()}
    assert {"pg_dump | gzip -6", "tgbackupd gzip-6", "tgbackupd zstd-3", "tgbackupd gzip-6, keep 0"} <= rows
