"""Soak: many backups with random faults switched on and off, then a count of what became of each.

Runs the real daemon against the local PostgreSQL server and a Bot API stand-in on 127.0.0.1 (nothing
else is contacted), triggers backups while Telegram fails in random ways (5xx, 429, connection
resets, stalls, the bot removed from the channel) and while the daemon is restarted or killed, then
switches the faults off, lets the outbox drain, and checks that every backup made was delivered
exactly once or is still pending with a reason. Bounded in time and in count.

    python3 bench/soak.py                         # 40 backups or 10 minutes, whichever comes first
    python3 bench/soak.py --backups 8 --seed 1    # a short run
    python3 bench/soak.py --keep 0                # no backup kept here: the spool must end empty
"""

import argparse
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn, Fault
from tests.processes import child_environment
from tgbackupd.statefile import open_reader

PSQL = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres"]
SPOOLED_PART = re.compile(r"\.sql\.(gz|zst)\.[0-9]{3}$")
FAULTS = ("none", "none", "5xx", "429", "reset", "stall", "kicked", "restart", "kill")


def psql(dbname: str, sql: str) -> None:
    subprocess.run([*PSQL, "-d", dbname, "-c", sql], check=True, capture_output=True)


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Daemon:
    def __init__(self, environment: dict[str, str], workdir: Path) -> None:
        self.environment = environment
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0
        self.starts = 0

    def start(self) -> None:
        log = (self.workdir / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tgbackupd"], env=self.environment, stdout=log, stderr=subprocess.STDOUT
        )
        self.starts += 1
        deadline = time.monotonic() + 20
        while self.ctl("status").returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the daemon did not come up; see daemon.log")
            time.sleep(0.1)

    def sample(self) -> None:
        if self.process and self.process.poll() is None:
            self.peak_rss_kib = max(self.peak_rss_kib, proc_status(self.process.pid, "VmHWM"))

    def stop(self, how: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.sample()
        self.process.send_signal(how)
        self.process.wait(60)

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "tgbackupd.ctl",
                "--socket",
                self.environment["TGBACKUPD_DAEMON_SOCKET"],
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )


def inject(fault: str, api: BotApiStandIn, daemon: Daemon, rng: random.Random) -> None:
    api.state.kicked_from.clear()
    if fault == "5xx":
        api.fail_next(*[Fault(rng.choice([500, 502, 503]), "Bad Gateway")] * rng.randint(1, 4))
    elif fault == "429":
        api.fail_next(*[Fault(429, "Too Many Requests: retry after 1", retry_after=1)] * rng.randint(1, 4))
    elif fault == "reset":
        api.fail_next(*[Fault(action="pass")] * rng.randint(0, 2), Fault(action="reset"))
    elif fault == "stall":
        api.fail_next(Fault(action="stall", stall_s=6))
    elif fault == "kicked":
        api.state.kicked_from.add(CHAT_ID)
    elif fault == "restart":
        daemon.stop(signal.SIGTERM)
        daemon.start()
    elif fault == "kill":
        daemon.stop(signal.SIGKILL)
        daemon.start()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backups", type=int, default=40, help="stop after this many triggered backups")
    parser.add_argument("--minutes", type=float, default=10, help="stop after this long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--keep", type=int, default=3, help="backup.keep; 0 keeps no backup here, only a spool of parts"
    )
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    dbname = f"tgbackupd_soak_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {dbname}")
    psql(dbname, "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 20000) AS i")
    # About 3 MB of random bytes: 3 to 4 parts of 1 MB, so faults also hit parts sent during the dump.
    psql(
        dbname,
        "CREATE TABLE noise AS SELECT i, decode(string_agg(md5(i::text || random()::text), ''), 'hex') "
        "AS b FROM generate_series(1, 24) AS i, generate_series(1, 8192) GROUP BY i",
    )
    began = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as directory, BotApiStandIn() as api:
            workdir = Path(directory)
            (workdir / "config.toml").write_text("")
            environment = child_environment() | {
                "TGBACKUPD_CONFIG": str(workdir / "config.toml"),
                "DATABASE_URL": f"postgresql://postgres@127.0.0.1/{dbname}",
                "TGBACKUPD_BACKUP_DIRECTORY": str(workdir / "backups"),
                "TGBACKUPD_DAEMON_SOCKET": str(workdir / "control.sock"),
                "TGBACKUPD_BACKUP_KEEP": str(args.keep),
                "TGBACKUPD_BACKUP_CATCH_UP": "false",
                "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
                "TELEGRAM_CHAT_ID": CHAT_ID,
                "TGBACKUPD_TELEGRAM_API_URL": api.url,
                "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE": "60000",  # a stand-in, not Telegram: unpaced
                "TGBACKUPD_TELEGRAM_RETRIES": "1",
                "TGBACKUPD_TELEGRAM_TIMEOUT": "5",
                "TGBACKUPD_TELEGRAM_REDELIVER_MIN_S": "1",
                "TGBACKUPD_TELEGRAM_REDELIVER_MAX_S": "4",
                "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1",
            }
            daemon = Daemon(environment, workdir)
            daemon.start()
            assert daemon.process is not None
            first_fds = open_fds(daemon.process.pid)
            faults: Counter[str] = Counter()
            triggered = 0
            while triggered < args.backups and time.monotonic() - began < args.minutes * 60:
                fault = rng.choice(FAULTS)
                faults[fault] += 1
                inject(fault, api, daemon, rng)
                daemon.ctl("trigger", "--wait")
                triggered += 1
                daemon.sample()
            api.state.kicked_from.clear()
            api.state.faults.clear()
            # A fresh daemon instance, to compare descriptors at its start and after it drained the outbox.
            daemon.stop()
            daemon.start()
            fds_at_start = open_fds(daemon.process.pid)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                state = json.loads(daemon.ctl("status", "--json").stdout)["data"]
                if state["pending_deliveries"] == 0 and state["state"] == "idle":
                    break
                time.sleep(0.5)
            daemon.sample()
            fds_at_end = open_fds(daemon.process.pid)
            threads_at_end = proc_status(daemon.process.pid, "Threads")
            daemon.stop()
            catalogue = open_reader(workdir / "backups" / ".tgbackupd-state.db").listing()
            documents = [
                json.loads(d.content) for d in api.documents() if d.file_name.endswith(".manifest.json")
            ]
            manifests = Counter(document["name"] for document in documents)
            # Every manifest in the chat names parts that are there and make up the backup it describes.
            intact = sum(
                hashlib.sha256(
                    b"".join(api.state.files.get(part["file_id"], b"") for part in document["parts"])
                ).hexdigest()
                == document["sha256"]
                for document in documents
            )
            spooled = [p.name for p in (workdir / "backups").iterdir() if SPOOLED_PART.search(p.name)]
            log_text = (workdir / "daemon.log").read_text()
    finally:
        psql("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")

    made = {entry["name"]: entry for entry in catalogue}
    delivered_once = [
        name for name, entry in made.items() if entry["delivery"] == "sent" and manifests[name] == 1
    ]
    duplicated = [name for name in made if manifests[name] > 1]
    pending = [
        name for name, entry in made.items() if entry["delivery"] == "pending" and entry.get("last_error")
    ]
    lost = [
        name for name in made if name not in delivered_once and name not in pending and name not in duplicated
    ]
    print(
        f"seed {seed}; {time.monotonic() - began:.0f} s; {triggered} backups triggered; daemon started "
        f"{daemon.starts} times"
    )
    print("faults injected: " + ", ".join(f"{name} {count}" for name, count in sorted(faults.items())))
    print(
        f"backups made {len(made)}, delivered exactly once {len(delivered_once)}, delivered twice "
        f"{len(duplicated)}, pending with a reason {len(pending)}, lost {len(lost)}"
    )
    print(
        f"peak RSS of the daemon {daemon.peak_rss_kib / 1024:.1f} MB; open descriptors {fds_at_start} after "
        f"start, {fds_at_end} after draining (first instance: {first_fds}); threads at the end "
        f"{threads_at_end}"
    )
    print(
        f"manifests in the chat whose parts rebuild the backup byte for byte: {intact} of {len(documents)}; "
        f"parts left in the spool after draining: {len(spooled)} (backup.keep = {args.keep})"
    )
    print(f"token in the daemon's log: {'YES' if FAKE_TOKEN in log_text else 'no'}")
    if lost or FAKE_TOKEN in log_text or fds_at_end > fds_at_start or intact < len(documents) or spooled:
        raise SystemExit(
            f"FAILED: lost {lost}, damaged {len(documents) - intact}, left in the spool {spooled}"
        )


if __name__ == "__main__":
    main()
