"""Peak memory of one backup with a multi-part upload, at two database sizes, side by side.

Runs the real `tgbackupd --once` (the daemon's own code path) as a child process against the local
PostgreSQL server and a Bot API stand-in on 127.0.0.1, and reports that process's peak RSS (VmHWM,
sampled; pg_dump's own memory is not counted). If the pipeline streams as it should, the peak does
not grow with the database or with the part size.

    python3 bench/memory.py                  # 20 MB and 200 MB databases, 5 MB parts
    python3 bench/memory.py --sizes 10 --part-size-mb 1   # a quick smoke run

Loopback only; creates and drops databases named tgbackupd_bench_*.
"""

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.processes import child_environment

PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]


def psql(dbname: str, sql: str) -> str:
    return subprocess.run([*PSQL, "-d", dbname, "-c", sql], check=True, capture_output=True, text=True).stdout


def make_database(size_mb: int) -> str:
    """About `size_mb` MB of SQL: half random bytes (hex in the dump), half repetitive text."""
    name = f"tgbackupd_bench_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    psql(
        name,
        "CREATE TABLE noise (id int PRIMARY KEY, b bytea); CREATE TABLE notes (id int PRIMARY KEY, t text)",
    )
    # each noise row: 8192 md5s = 128 KiB of bytes = 256 KiB of hex in the dump
    psql(
        name,
        f"INSERT INTO noise SELECT i, decode(string_agg(md5(i::text || random()::text), ''), 'hex') "
        f"FROM generate_series(1, {max(1, size_mb * 2)}) AS i, generate_series(1, 8192) GROUP BY i",
    )
    psql(
        name,
        f"INSERT INTO notes SELECT i, repeat('order ' || (i % 97) || ' shipped; ', 20) "
        f"FROM generate_series(1, {size_mb * 2500}) AS i",
    )
    return name


def run_once(dbname: str, workdir: Path, api: BotApiStandIn, part_size_mb: int) -> dict[str, float]:
    (workdir / "config.toml").write_text("")
    environment = child_environment() | {
        "TGBACKUPD_CONFIG": str(workdir / "config.toml"),
        "DATABASE_URL": f"postgresql://postgres@127.0.0.1/{dbname}",
        "TGBACKUPD_BACKUP_DIRECTORY": str(workdir / "backups"),
        "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "TGBACKUPD_TELEGRAM_API_URL": api.url,
        "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE": "60000",  # a stand-in, not Telegram: unpaced
        "TGBACKUPD_TELEGRAM_PART_SIZE_MB": str(part_size_mb),
    }
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "tgbackupd", "--once"],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_kib = 0
    while child.poll() is None:
        # VmHWM: this process's own high-water mark since its exec (pg_dump, its child, is not counted)
        try:
            status = Path(f"/proc/{child.pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            break
        marks = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
        peak_kib = max([peak_kib, *marks])
        time.sleep(0.02)
    errors = child.stderr.read() if child.stderr else ""
    child.wait()
    wall = time.monotonic() - began
    if child.returncode != 0:
        raise SystemExit(f"tgbackupd --once failed:\n{errors[-2000:]}")
    backup = next((workdir / "backups").glob("*.sql.gz"))
    return {
        "peak_rss_mb": peak_kib / 1024,
        "wall_s": wall,
        "backup_mb": backup.stat().st_size / 2**20,
        "parts": len(api.documents()) - 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[20, 200], help="database sizes in MB")
    parser.add_argument("--part-size-mb", type=int, default=5)
    args = parser.parse_args()
    baseline = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, tgbackupd.cli, tgbackupd.daemon; "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    print(f"baseline: python with tgbackupd imported, idle: {int(baseline.stdout) / 1024:.1f} MB peak RSS")
    print(f"{'database':>10} {'backup':>10} {'parts':>6} {'wall':>8} {'peak RSS':>10}")
    for size in sorted(args.sizes):
        dbname = make_database(size)
        database_mb = int(psql(dbname, "SELECT pg_database_size(current_database())")) / 2**20
        try:
            with tempfile.TemporaryDirectory() as directory, BotApiStandIn() as api:
                figures = run_once(dbname, Path(directory), api, args.part_size_mb)
        finally:
            psql("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
        print(
            f"{database_mb:>8.0f}MB {figures['backup_mb']:>8.1f}MB {figures['parts']:>6} "
            f"{figures['wall_s']:>7.1f}s {figures['peak_rss_mb']:>8.1f}MB"
        )


if __name__ == "__main__":
    main()
