"""Side-by-side speed of a backup: the classic baselines, the peer an administrator would pick instead,
and tgbackupd's own modes through its real code path, alternating in one run so that machine noise
hits all of them alike.

    python3 bench/speed.py                       # builds a ~1 GB database, 2 rounds
    python3 bench/speed.py --size-mb 100 --rounds 1
    python3 bench/speed.py --uplink-mbps 20      # the Bot API stand-in reads uploads at 20 MB/s
    python3 bench/speed.py --only "gzip -6,gzip-6"  # the modes whose names contain one of these
    python3 bench/speed.py --size-mb 100 --only "tgbackupd gzip-6,tgbackupd zstd-1"  # with and without age
    python3 bench/speed.py --size-mb 200 --rounds 3 --only restore   # restores only

Baselines: `pg_dump > /dev/null`, `pg_dump | gzip -6 > file`, `pg_dump > x.sql; gzip -6 x.sql`, and
borgmatic with borg (zstd,3, local repository) when both are installed. tgbackupd runs as the real
daemon, started once per mode (its start-up is not timed: it happens once, not every night), and each
round times one `trigger --wait` over its control socket: the dump, compression, hashing, the upload of
every part to a Bot API stand-in on 127.0.0.1 and the manifest, up to the reply. CPU time is the
daemon's and pg_dump's; peak RSS is the daemon's high-water mark. For tgbackupd the table also gives the
most disk the backup directory held at once (sampled), which with `keep 0` is the spool of parts not
sent yet.

Restores: one backup made by the daemon (defaults: gzip-6, parts of 19 MB, a copy kept) is restored
with `gunzip -c FILE | psql` (the baseline: the README's manual steps), `tgbackupctl restore FILE` and
`tgbackupctl restore --from-telegram` (from the stand-in), each into a database of its own created
empty just before (not timed) and dropped after. Loopback only; creates databases named
tgbackupd_speed_* and drops them afterwards (the source only unless --keep-database).
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.processes import child_environment
from tgbackupd.control import request
from tgbackupd.errors import TgbackupdError

PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
MB = 1024 * 1024
# A public key whose identity nobody keeps: the benchmark encrypts, and never decrypts.
AGE_RECIPIENT = "age1ymkygj5xv2f78jsg5e875xz77z9f2x3cam033cn5fqs3tfts4e5sluxdnr"


def psql(dbname: str, sql: str) -> str:
    return subprocess.run([*PSQL, "-d", dbname, "-c", sql], check=True, capture_output=True, text=True).stdout


def make_database(size_mb: int) -> str:
    """A realistic mix: orders (numbers, dates, short text), notes (prose-like text), events (jsonb),
    and attachments (random bytes, a fifth of the whole, which no compressor shrinks)."""
    name = f"tgbackupd_speed_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    rows = max(1000, size_mb * 2500)
    psql(
        name,
        f"""
        CREATE TABLE orders AS SELECT i AS id, (i % 5000) AS customer_id,
            (random() * 1000)::numeric(10, 2) AS amount,
            timestamp '2024-01-01' + i * interval '37 seconds' AS placed, 'status-' || (i % 7) AS status
            FROM generate_series(1, {rows}) AS i;
        CREATE TABLE notes AS SELECT i AS id, 'Customer ' || (i % 977) || ' asked about order '
            || (i * 7 % 100003) || '; shipped via ' || (ARRAY['post', 'courier', 'pickup'])[1 + i % 3]
            || '. ' || md5(i::text) AS body
            FROM generate_series(1, {rows}) AS i;
        CREATE TABLE events AS SELECT i AS id, jsonb_build_object('kind', 'click', 'page', '/p/' || (i % 300),
            'user', i % 10000, 'at', i) AS data FROM generate_series(1, {rows}) AS i;
        CREATE TABLE attachments AS SELECT i AS id,
            decode(string_agg(md5(i::text || random()::text), ''), 'hex') AS b
            FROM generate_series(1, {max(1, size_mb * 6 // 10)}) AS i, generate_series(1, 8192) GROUP BY i;
    """,
    )
    return name


def _tree(pid: int) -> list[int]:
    """The process and all its descendants, as /proc lists them now."""
    found = [pid]
    for member in found:
        try:
            for task in Path(f"/proc/{member}/task").iterdir():
                found.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def _high_water_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _disk_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*") if directory.is_dir() else ():
        try:
            total += path.stat().st_size
        except FileNotFoundError:  # sent and removed meanwhile
            continue
    return total


def measure(command: list[str], environment: dict[str, str]) -> dict[str, float]:
    """Run a baseline to its end: wall time, CPU time of it and all it waited for (wait4), and the peak
    RSS of its largest process (VmHWM, sampled; it restarts at exec, unlike ru_maxrss, which a forked
    child inherits from this big benchmark process)."""
    began = time.monotonic()
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kib = 0
    # Peek at whether it ended without reaping it (WNOWAIT), so that wait4 below still gets its usage.
    while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        peak_kib = max([peak_kib, *(_high_water_kib(pid) for pid in _tree(process.pid))])
        time.sleep(0.05)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    errors = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors[-3000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": peak_kib / 1024}


def _cpu_s(pid: int) -> float:
    """CPU time of a process and of the children it has waited for (pg_dump, for the daemon)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


class DaemonUnderTest:
    """The real tgbackupd daemon, started with one mode's settings and left running between rounds."""

    def __init__(self, environment: dict[str, str], workdir: Path) -> None:
        self.socket = Path(environment["TGBACKUPD_DAEMON_SOCKET"])
        self._log = (workdir / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgbackupd"], env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                request(self.socket, {"command": "status"}, timeout=5)
                break
            except TgbackupdError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit(f"the daemon did not come up; see {workdir / 'daemon.log'}") from None
                time.sleep(0.1)

    def backup(self, disk: Path) -> dict[str, float]:
        """One backup, triggered and waited for, with what it cost."""
        cpu_before = _cpu_s(self.process.pid)
        done = threading.Event()
        peak_disk = 0
        peak_kib = 0

        def watch() -> None:
            nonlocal peak_disk, peak_kib
            while not done.wait(0.05):
                peak_disk = max(peak_disk, _disk_bytes(disk))
                peak_kib = max(peak_kib, _high_water_kib(self.process.pid))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        began = time.monotonic()
        reply = request(self.socket, {"command": "trigger", "wait": True}, timeout=None)
        wall = time.monotonic() - began
        done.set()
        watcher.join()
        if "error" in reply:
            raise SystemExit(f"the backup failed: {reply['error']}")
        return {
            "wall": wall,
            "cpu": _cpu_s(self.process.pid) - cpu_before,
            "rss_mb": max(peak_kib, _high_water_kib(self.process.pid)) / 1024,
            "disk": peak_disk,
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        self._log.close()


def baselines(dbname: str, workdir: Path) -> dict[str, tuple[list[str], Path | None]]:
    dump = f"pg_dump -h 127.0.0.1 -U postgres {dbname}"
    modes: dict[str, tuple[list[str], Path | None]] = {
        "pg_dump > /dev/null": (["bash", "-c", f"{dump} > /dev/null"], None),
        "pg_dump | gzip -6": (
            ["bash", "-c", f"set -o pipefail; {dump} | gzip -6 > {workdir}/pipe.sql.gz"],
            workdir / "pipe.sql.gz",
        ),
        "pg_dump > x.sql; gzip -6": (
            ["bash", "-c", f"rm -f {workdir}/x.sql.gz; {dump} > {workdir}/x.sql && gzip -6 {workdir}/x.sql"],
            workdir / "x.sql.gz",
        ),
    }
    if shutil.which("borgmatic") and shutil.which("borg"):
        config = workdir / "borgmatic.yaml"
        config.write_text(
            f"source_directories: []\nrepositories:\n  - path: {workdir}/borg\n    label: local\n"
            "encryption_passphrase: ''\ncompression: zstd,3\n"
            f"postgresql_databases:\n  - name: {dbname}\n    hostname: 127.0.0.1\n    username: postgres\n"
        )
        modes["borgmatic (borg zstd,3)"] = (
            [
                "bash",
                "-c",
                f"rm -rf {workdir}/borg && borg init --encryption=none {workdir}/borg >/dev/null && "
                f"borgmatic --config {config} create",
            ],
            workdir / "borg",
        )
    return modes


def tgbackupd_modes() -> dict[str, dict[str, str]]:
    return {
        "tgbackupd gzip-6": {"TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "6"},
        "tgbackupd gzip-1": {"TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1"},
        "tgbackupd gzip-1, 2 threads": {
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1",
            "TGBACKUPD_BACKUP_COMPRESSION_THREADS": "2",
        },
        "tgbackupd gzip-6, 2 threads": {
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "6",
            "TGBACKUPD_BACKUP_COMPRESSION_THREADS": "2",
        },
        "tgbackupd gzip-6, upload after": {
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "6",
            "TGBACKUPD_TELEGRAM_UPLOAD_WHILE_DUMPING": "false",
        },
        "tgbackupd gzip-6, keep 0": {"TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "6", "TGBACKUPD_BACKUP_KEEP": "0"},
        "tgbackupd zstd-1": {
            "TGBACKUPD_BACKUP_COMPRESSION": "zstd",
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1",
        },
        "tgbackupd zstd-3": {
            "TGBACKUPD_BACKUP_COMPRESSION": "zstd",
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "3",
        },
        "tgbackupd zstd-1, 2 threads": {
            "TGBACKUPD_BACKUP_COMPRESSION": "zstd",
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1",
            "TGBACKUPD_BACKUP_COMPRESSION_THREADS": "2",
        },
        # The same modes encrypted with age (encryption.recipients): the cost of encryption is the
        # difference from the mode above without it.
        "tgbackupd gzip-6 + age": {
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "6",
            "TGBACKUPD_ENCRYPTION_RECIPIENTS": AGE_RECIPIENT,
        },
        "tgbackupd zstd-1 + age": {
            "TGBACKUPD_BACKUP_COMPRESSION": "zstd",
            "TGBACKUPD_BACKUP_COMPRESSION_LEVEL": "1",
            "TGBACKUPD_ENCRYPTION_RECIPIENTS": AGE_RECIPIENT,
        },
    }


RESTORE_BASELINE = "gunzip -c FILE | psql"


def restore_modes(backup: Path, environment: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    """How each restore mode is run, given the database URL to restore into as its last argument."""
    ctl = [sys.executable, "-m", "tgbackupd.ctl", "restore"]
    return {
        RESTORE_BASELINE: (
            ["bash", "-c", f'set -o pipefail; gunzip -c {backup} | psql -X -q -d "$0"'],
            child_environment(),
        ),
        "tgbackupctl restore FILE": ([*ctl, str(backup), "--dbname"], environment),
        "tgbackupctl restore --from-telegram": ([*ctl, "--from-telegram", "--dbname"], environment),
    }


def make_backup_to_restore(dbname: str, workdir: Path, api: BotApiStandIn) -> tuple[Path, dict[str, str]]:
    """One backup by the daemon with its defaults, kept here and sent to the stand-in; and the
    environment tgbackupctl finds both with."""
    backups = workdir / "restore-backups"
    environment = child_environment(
        TGBACKUPD_CONFIG=str(workdir / "config.toml"),
        DATABASE_URL=f"postgresql://postgres@127.0.0.1/{dbname}",
        TGBACKUPD_BACKUP_DIRECTORY=str(backups),
        TGBACKUPD_BACKUP_ENABLED="false",
        TGBACKUPD_DAEMON_SOCKET=str(workdir / "control.sock"),
        TGBACKUPD_DAEMON_STATE_FILE=str(workdir / "restore-state.db"),
        TELEGRAM_BOT_TOKEN=FAKE_TOKEN,
        TELEGRAM_CHAT_ID=CHAT_ID,
        TGBACKUPD_TELEGRAM_API_URL=api.url,
        TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE="60000",
    )
    daemon = DaemonUnderTest(environment, workdir)
    try:
        daemon.backup(backups)
    finally:
        daemon.stop()
    (backup,) = backups.glob("*.sql.gz")
    return backup, environment


def restore_round(
    backup: Path, environment: dict[str, str], only: str | None, results: dict[str, list[dict[str, float]]]
) -> None:
    """Each restore mode once, each into a new empty database, dropped afterwards."""
    modes = restore_modes(backup, environment)
    for name in [RESTORE_BASELINE, *selected([n for n in modes if n != RESTORE_BASELINE], only)]:
        command, mode_environment = modes[name]
        target = f"tgbackupd_speed_restore_{uuid.uuid4().hex[:8]}"
        psql("postgres", f"CREATE DATABASE {target}")
        try:
            figures = measure([*command, f"postgresql://postgres@127.0.0.1/{target}"], mode_environment)
        finally:
            psql("postgres", f"DROP DATABASE IF EXISTS {target} WITH (FORCE)")
        figures["size"] = backup.stat().st_size
        results.setdefault(name, []).append(figures)


def print_restores(best: dict[str, dict[str, float]], sql_bytes: int) -> None:
    baseline = best[RESTORE_BASELINE]["wall"]
    print(
        f"{'restore':<36} {'wall s':>7} {'CPU s':>7} {'SQL MB/s':>9} {'peak RSS MB':>12} {'× baseline':>11}"
    )
    for name, run in best.items():
        print(
            f"{name:<36} {run['wall']:>7.1f} {run['cpu']:>7.1f} {sql_bytes / MB / run['wall']:>9.0f} "
            f"{run['rss_mb']:>12.1f} {baseline / run['wall']:>11.2f}"
        )
    print(
        "× baseline: the baseline's time over the mode's (at least 0.95 for a file, 0.9 from Telegram is "
        "the target). CPU s: the command and all it waited for (psql included), not the server's."
    )


def selected(names: list[str], only: str | None) -> list[str]:
    """The modes to run: all, or those whose names contain one of the comma-separated `only`."""
    if not only:
        return names
    wanted = [part.strip() for part in only.split(",") if part.strip()]
    return [name for name in names if any(part in name for part in wanted)]


def size_of(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="approximate size of the database")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--uplink-mbps", type=float, default=None, help="throttle the stand-in's uploads")
    parser.add_argument("--database", help="use this existing database instead of building one")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument(
        "--only",
        help="comma-separated parts of mode names to run (the two baselines the "
        "ratios are against always run)",
    )
    args = parser.parse_args()
    dbname = args.database or make_database(args.size_mb)
    results: dict[str, list[dict[str, float]]] = {}
    restores: dict[str, list[dict[str, float]]] = {}
    modes = tgbackupd_modes()
    backup_modes = selected(list(modes), args.only)
    restoring = not args.only or bool(selected(["tgbackupctl restore"], args.only))
    try:
        database_mb = int(psql(dbname, "SELECT pg_database_size(current_database())")) / MB
        sql_bytes = int(
            subprocess.run(
                ["bash", "-c", f"pg_dump -h 127.0.0.1 -U postgres {dbname} | wc -c"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        with (
            tempfile.TemporaryDirectory() as directory,
            BotApiStandIn(upload_limit=2000 * MB) as api,
            BotApiStandIn() as restore_api,
        ):
            workdir = Path(directory)
            if args.uplink_mbps:
                api.state.uplink_bytes_per_s = args.uplink_mbps * MB
            (workdir / "config.toml").write_text("")
            if restoring:
                backup, restore_environment = make_backup_to_restore(dbname, workdir, restore_api)
            reference = ["pg_dump > /dev/null", "pg_dump | gzip -6"]
            for _ in range(args.rounds):
                for name, (command, output) in baselines(dbname, workdir).items():
                    if not (name in reference and backup_modes) and name not in selected([name], args.only):
                        continue
                    figures = measure(command, child_environment())
                    figures["size"] = size_of(output)
                    results.setdefault(name, []).append(figures)
                for name in backup_modes:
                    backups = workdir / "backups"
                    shutil.rmtree(backups, ignore_errors=True)
                    environment = child_environment(
                        TGBACKUPD_CONFIG=str(workdir / "config.toml"),
                        DATABASE_URL=f"postgresql://postgres@127.0.0.1/{dbname}",
                        TGBACKUPD_BACKUP_DIRECTORY=str(backups),
                        TGBACKUPD_BACKUP_ENABLED="false",
                        TGBACKUPD_DAEMON_SOCKET=str(workdir / "control.sock"),
                        TELEGRAM_BOT_TOKEN=FAKE_TOKEN,
                        TELEGRAM_CHAT_ID=CHAT_ID,
                        TGBACKUPD_TELEGRAM_API_URL=api.url,
                        TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE="60000",  # a stand-in: timed unpaced
                        **modes[name],
                    )
                    daemon = DaemonUnderTest(environment, workdir)
                    try:
                        figures = daemon.backup(backups)
                    finally:
                        daemon.stop()
                    # What reached the chat: the same whether or not a copy is kept here.
                    figures["size"] = sum(
                        len(document.content or b"")
                        for document in api.documents()
                        if not (document.file_name or "").endswith(".json")
                    )
                    results.setdefault(name, []).append(figures)
                    api.state.files.clear()
                    api.state.received.clear()
                if restoring:
                    restore_round(backup, restore_environment, args.only, restores)
    finally:
        if not args.keep_database and not args.database:
            psql("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    print(
        f"database {database_mb:.0f} MB on disk, {sql_bytes / MB:.0f} MB of SQL; best of {args.rounds} "
        f"round(s); uplink {'unthrottled' if not args.uplink_mbps else f'{args.uplink_mbps} MB/s'}"
    )
    if results:
        print_backups(
            {name: min(runs, key=lambda run: run["wall"]) for name, runs in results.items()}, sql_bytes
        )
    if restores:
        print_restores(
            {name: min(runs, key=lambda run: run["wall"]) for name, runs in restores.items()}, sql_bytes
        )


def print_backups(best: dict[str, dict[str, float]], sql_bytes: int) -> None:
    gzip6 = best["pg_dump | gzip -6"]["wall"]
    raw = best["pg_dump > /dev/null"]["wall"]
    print(
        f"{'mode':<30} {'wall s':>7} {'CPU s':>7} {'output MB':>10} {'SQL MB/s':>9} {'peak RSS MB':>12} "
        f"{'× gzip -6':>10} {'× raw dump':>11} {'disk MB':>8}"
    )
    for name, run in best.items():
        disk = f"{run['disk'] / MB:>8.1f}" if name.startswith("tgbackupd") else f"{'':>8}"
        print(
            f"{name:<30} {run['wall']:>7.1f} {run['cpu']:>7.1f} {run['size'] / MB:>10.1f} "
            f"{sql_bytes / MB / run['wall']:>9.0f} {run['rss_mb']:>12.1f} {gzip6 / run['wall']:>10.2f} "
            f"{raw / run['wall']:>11.2f} {disk}"
        )
    print(
        "× columns: how many times faster than that baseline (above 1.0 is faster). Peak RSS (VmHWM): "
        "the daemon; for the others, the largest process of the pipeline. disk MB: the most "
        "the backup directory held at once (sampled every 50 ms)."
    )


if __name__ == "__main__":
    main()
