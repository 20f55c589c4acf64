"""The benchmarks stay runnable: tiny runs, timing nothing. They still take minutes, so they are marked
`bench`: a plain `pytest` leaves them out, and CI runs them on their own (`pytest -m bench`)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
pytestmark = [pytest.mark.bench, pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")]


def run_bench(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_memory_benchmark_runs_a_tiny_database():
    output = run_bench("memory.py", "--sizes", "2", "--part-size-mb", "1")
    assert "peak RSS" in output and output.strip().splitlines()[-1].endswith("MB")


@pytest.mark.parametrize("keep", ["3", "0"])
def test_soak_runs_a_few_backups_with_faults_and_loses_none(keep):
    output = run_bench("soak.py", "--backups", "6", "--seed", "7", "--keep", keep)
    assert ", lost 0" in output and "token in the daemon's log: no" in output
    assert "parts left in the spool after draining: 0" in output


def test_speed_benchmark_runs_every_mode_on_a_tiny_database():
    output = run_bench("speed.py", "--size-mb", "2", "--rounds", "1")
    rows = {line.split("  ")[0] for line in output.splitlines()}
    assert {"pg_dump | gzip -6", "tgbackupd gzip-6", "tgbackupd zstd-3", "tgbackupd gzip-6, keep 0"} <= rows


def test_state_benchmark_compares_the_store_with_release_0_1_on_a_tiny_catalogue():
    output = run_bench("state.py", "--quick")
    lines = output.splitlines()
    assert any(line.startswith("backups×parts") and "record a part ms" in line for line in lines)
    rows = {line[14:31].strip() for line in lines if line.startswith("20x20 ")}
    assert {"SQLite store", "0.1.0 JSON file", "× faster"} <= rows
    assert any(line.startswith("target status ≤ 50 ms at 20×20: ") for line in lines)
