"""State: what the catalogue costs as it grows, the SQLite state store beside release 0.1.0's JSON state
file, in one run.

    python3 bench/state.py                        # 100 and 1000 backups of 1000 parts each
    python3 bench/state.py --sizes 300x200 --samples 50
    python3 bench/state.py --quick                # 20 backups of 20 parts, a few samples (smoke test)

For each size (backups x parts) the same catalogue is built twice: a state store (open_store, then
add_many in batches) and a 0.1.0 state file in 0.1.0's own format, byte for byte what its StateFile writes
(`json.dumps(state, indent=2)`; checked when it is small). Every backup is delivered, each part with its
message id and file id, except the newest, which waits in the outbox (a failed attempt, the next one due
tomorrow, so that neither daemon tries to send it while it is measured) with none of its parts sent.
0.1.0 itself capped its catalogue at 500 entries (CATALOGUE_LIMIT, applied when it added one); the file
is written here directly, so above 500 it holds more than 0.1.0 would have kept.

Measured, as medians:
- record a part as sent: what each version's outbox did for every part that reached the chat; for the
  store `record_part_sent` (one committed, fsynced transaction), for 0.1.0 `StateFile.update_entry(name,
  manifest=<the whole manifest>)` in a process running 0.1.0's package (tests/release_0_1.py), which
  reads, rewrites and fsyncs the whole file. The builds are flushed to disk first (sync), and the stores'
  samples are taken one part of each size in turn: a commit waits for an fsync, whose time varies.
- `status` and `list` replies: the round trip over the control socket (tgbackupd.control.request) to the
  real daemon of each version, started on that state with backups off and no Telegram, after one untimed
  request of each.

The JSON file takes fewer samples at large sizes (each of its writes rewrites all of it). Needs the local
PostgreSQL server the daemons are configured for (no dump is made); nothing else is contacted.
"""

import argparse
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import release_0_1
from tests.processes import child_environment
from tgbackupd.control import request
from tgbackupd.errors import TgbackupdError
from tgbackupd.manifest import FORMAT, VERSION, Manifest, ManifestRef, Part, part_name
from tgbackupd.state import Entry
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState

MB = 1024 * 1024
PART_BYTES = 19 * MB  # telegram.part_size_mb's default
BATCH = 50  # backups per add_many transaction
LARGE = 50_000  # parts in the catalogue from which the JSON file takes fewer samples
CHECK_FORMAT_BELOW = 64 * MB  # compare the JSON file with json.dumps(indent=2) when it is smaller than this
START_TIMEOUT_S = 600.0
REQUEST_TIMEOUT_S = 600.0
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGETS = {"part": 5.0, "status": 50.0, "list": 250.0}  # ms, at 1000 backups of 1000 parts
TARGET_SIZE = (1000, 1000)
FLAT_WITHIN = 1.5  # "flat": the part's median at the largest catalogue is within this factor of the smallest

# Run with 0.1.0's package: its outbox's part_sent, timed for the first parts of the pending backup.
RECORD_WITH_0_1 = r"""
import json, sys, time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, sys.argv[1])  # before the current directory, which may be a checkout of today's
import tgbackupd
from tgbackupd.manifest import Manifest
from tgbackupd.state import StateFile

tree, path, name, sent = sys.argv[1], Path(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
if tgbackupd.__version__ != "0.1.0" or not tgbackupd.__file__.startswith(tree):
    raise SystemExit(f"not release 0.1.0's package: {tgbackupd.__version__} from {tgbackupd.__file__}")
state = StateFile(path)  # one, as 0.1.0's outbox held
entry = state.entry(name)
if entry is None:
    raise SystemExit(f"{name} is not in {path}")
manifest = Manifest.from_json(json.dumps(entry["manifest"]).encode())
parts = list(manifest.parts)
timings = []
for position, (message_id, file_id) in enumerate(sent):
    parts[position] = replace(parts[position], message_id=message_id, file_id=file_id)
    progress = replace(manifest, parts=tuple(parts))  # what 0.1.0's Delivery handed to part_sent
    before = path.stat().st_ino
    began = time.perf_counter()
    state.update_entry(name, manifest=json.loads(progress.to_json()))  # 0.1.0's outbox.part_sent
    timings.append(time.perf_counter() - began)
    if path.stat().st_ino == before:  # 0.1.0 logs a failed write and goes on: make it count here
        raise SystemExit(f"0.1.0 did not rewrite {path}; see the log above")
print(json.dumps(timings))
"""


@dataclass
class Figures:
    """One size's measurements, in seconds (timings) and bytes (files)."""

    backups: int
    parts: int
    directory: Path
    json_samples: int
    pending: str = ""  # the backup in the outbox, whose parts are recorded as sent
    store_bytes: int = 0
    json_bytes: int = 0
    store_build_s: float = 0.0
    json_build_s: float = 0.0
    timings: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric → store → samples
    started_s: dict[str, float] = field(default_factory=dict)  # store → time to the first status reply

    @property
    def label(self) -> str:
        return f"{self.backups}x{self.parts}"

    @property
    def store_path(self) -> Path:
        return self.directory / "store" / "state.db"

    @property
    def json_path(self) -> Path:
        return self.directory / "json" / "state.json"

    def median_ms(self, metric: str, which: str) -> float:
        return statistics.median(self.timings[metric][which]) * 1000


def parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for item in text.split(","):
        backups, _, parts = item.strip().lower().replace("×", "x").partition("x")
        try:
            size = (int(backups), int(parts))
        except ValueError:
            raise SystemExit(f"--sizes: {item!r} is not BACKUPSxPARTS, e.g. 100x1000") from None
        if min(size) < 1:
            raise SystemExit(f"--sizes: {item!r} needs at least one backup of one part")
        sizes.append(size)
    return sizes


# The catalogue


@dataclass(frozen=True)
class Backup:
    """One backup of the catalogue, as both versions record it."""

    entry: Entry  # for the store
    document: dict[str, Any]  # 0.1.0's catalogue entry


def _file_id(rng: random.Random) -> str:
    """Like a Bot API document's file_id: 70 characters of URL-safe base64."""
    return "BQACAgIAAxkDAA" + base64.urlsafe_b64encode(rng.randbytes(42)).decode()


def _reference(reference: ManifestRef | None) -> dict[str, Any] | None:
    return None if reference is None else reference.__dict__.copy()


def catalogue(count: int, part_count: int, now: datetime, seed: int) -> Iterator[Backup]:
    """`count` backups of `part_count` parts, one a day, newest first: the newest pending, none of its parts
    sent, the others delivered, each manifest naming the one before it."""
    rng = random.Random(seed)
    first_message = 1000
    newest = now.replace(hour=3, minute=0, second=0, microsecond=0)
    # Each delivered backup took part_count + 1 messages (its parts, then its manifest), oldest first.
    message_ids = {age: first_message + (count - 1 - age) * (part_count + 1) for age in range(count)}
    manifest_refs: dict[int, ManifestRef] = {}

    def manifest_ref(age: int) -> ManifestRef:
        if age not in manifest_refs:
            made = newest - timedelta(days=age)
            manifest_refs[age] = ManifestRef(
                f"bench_backup_{made:%Y%m%d_%H%M%S}.sql.gz", message_ids[age] + part_count, _file_id(rng)
            )
        return manifest_refs[age]

    for age in range(count):
        made = newest - timedelta(days=age)
        name = f"bench_backup_{made:%Y%m%d_%H%M%S}.sql.gz"
        pending = age == 0
        size = part_count * PART_BYTES - rng.randrange(PART_BYTES)
        sha256 = f"{rng.getrandbits(256):064x}"
        parts = tuple(
            Part(
                index=index,
                file_name=part_name(name, index, part_count),
                offset=(index - 1) * PART_BYTES,
                size_bytes=min(PART_BYTES, size - (index - 1) * PART_BYTES),
                sha256=f"{rng.getrandbits(256):064x}",
                message_id=None if pending else message_ids[age] + index - 1,
                file_id=None if pending else _file_id(rng),
            )
            for index in range(1, part_count + 1)
        )
        previous = None if pending or age == count - 1 else manifest_ref(age + 1)
        reference = None if pending else manifest_ref(age)
        manifest = Manifest(
            name=name,
            database="bench",
            host="127.0.0.1",
            server="PostgreSQL 15.20",
            created_at=made.isoformat(timespec="seconds"),
            size_bytes=size,
            sha256=sha256,
            parts=parts,
            previous=previous,
            dump_format="plain",
            compression="gzip",
            verified=True,
        )
        sql_bytes = size * 6
        facts = {
            "file": name,
            "database": "bench",
            "server": "PostgreSQL 15.20",
            "size_bytes": size,
            "sha256": sha256,
            "duration_s": round(rng.uniform(600, 3600), 1),
            "verification": "verified: the archive decompresses and ends as pg_dump ends a dump",
            "warning": None,
        }
        next_attempt_at = (now + timedelta(days=1)).isoformat(timespec="seconds") if pending else None
        last_error = "Telegram did not answer within 60 s (ReadTimeout)" if pending else None
        entry = Entry(
            manifest=manifest,
            delivery=DeliveryState.PENDING if pending else DeliveryState.SENT,
            facts=facts,
            sql_bytes=sql_bytes,
            manifest_ref=reference,
            attempts=1 if pending else 0,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
        )
        # 0.1.0's outbox.add wrote these keys in this order; delivery added pin_error after them.
        document: dict[str, Any] = {
            "name": name,
            "database": manifest.database,
            "manifest": manifest_document(manifest),
            "manifest_ref": _reference(reference),
            "facts": facts,
            "sql_bytes": sql_bytes,
            "warning": None,
            "delivery": "pending" if pending else "sent",
            "attempts": 1,
            "next_attempt_at": next_attempt_at,
            "last_error": last_error,
            "captions_to_complete": [],
            "spooled": False,
        }
        if not pending:
            document["pin_error"] = None
        if age < 2:  # built by hand for speed: check it is what 0.1.0 stored (json.loads(to_json()))
            made_now = json.loads(manifest.to_json())
            for added_since in ("encrypted", "recipients"):  # fields 0.1.0's manifests do not have
                made_now.pop(added_since)
            assert document["manifest"] == made_now, "manifest document differs"
        yield Backup(entry, document)


def manifest_document(manifest: Manifest) -> dict[str, Any]:
    """`json.loads(manifest.to_json())` without asdict's deep copies, which take long on a million parts."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "name": manifest.name,
        "database": manifest.database,
        "host": manifest.host,
        "server": manifest.server,
        "created_at": manifest.created_at,
        "size_bytes": manifest.size_bytes,
        "sha256": manifest.sha256,
        "parts": [
            {
                "index": part.index,
                "file_name": part.file_name,
                "offset": part.offset,
                "size_bytes": part.size_bytes,
                "sha256": part.sha256,
                "message_id": part.message_id,
                "file_id": part.file_id,
            }
            for part in manifest.parts
        ],
        "previous": _reference(manifest.previous),
        "dump_format": manifest.dump_format,
        "compression": manifest.compression,
        "verified": manifest.verified,
    }


def last_result(backup: Backup) -> dict[str, Any]:
    """The last backup's result, as both versions keep it (0.1.0's BackupResult.to_dict())."""
    manifest = backup.entry.manifest
    return {
        "trigger": "scheduled",
        "database": manifest.database,
        "started_at": manifest.created_at,
        "duration_s": backup.document["facts"]["duration_s"],
        "file": manifest.name,
        "path": f"/var/lib/tgbackupd/backups/{manifest.name}",
        "size_bytes": manifest.size_bytes,
        "sql_bytes": backup.entry.sql_bytes,
        "sha256": manifest.sha256,
        "parts": len(manifest.parts),
        "verified": True,
        "delivery": "pending",
        "message_id": None,
        "pin_error": None,
        "warning": None,
        "error": None,
    }


class JsonStateWriter:
    """0.1.0's state file written one entry at a time: the same bytes as `json.dumps(state, indent=2)`
    (what its StateFile wrote), without holding a million parts in memory."""

    def __init__(self, path: Path) -> None:
        self._stream = path.open("w", encoding="utf-8")
        self._first = True

    def add(self, backup: Backup) -> None:
        if self._first:
            self._stream.write('{\n  "last_backup": ')
            self._stream.write(json.dumps(last_result(backup), indent=2).replace("\n", "\n  "))
            self._stream.write(',\n  "catalogue": [')
        self._stream.write(("" if self._first else ",") + "\n    ")
        self._stream.write(json.dumps(backup.document, indent=2).replace("\n", "\n    "))
        self._first = False

    def close(self) -> None:
        self._stream.write("\n  ]\n}")
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()


def build(figures: Figures, store_path: Path, json_path: Path) -> str:
    """Write both catalogues; return the name of the pending backup."""
    opened = open_store(store_path)
    store = opened.store
    writer = JsonStateWriter(json_path)
    batch: list[Entry] = []
    pending_name = ""
    try:
        for backup in catalogue(
            figures.backups, figures.parts, datetime.now().astimezone(), seed=figures.backups
        ):
            began = time.perf_counter()
            if not pending_name:
                pending_name = backup.entry.manifest.name
                store.record_result(last_result(backup))
            batch.append(backup.entry)
            if len(batch) == BATCH:
                store.add_many(batch)
                batch = []
            middle = time.perf_counter()
            writer.add(backup)
            figures.store_build_s += middle - began
            figures.json_build_s += time.perf_counter() - middle
        began = time.perf_counter()
        store.add_many(batch)
        figures.store_build_s += time.perf_counter() - began
    finally:
        store.close()
        began = time.perf_counter()
        writer.close()
        figures.json_build_s += time.perf_counter() - began
    figures.store_bytes = sum(
        path.stat().st_size
        for path in (store_path, store_path.with_name(store_path.name + "-wal"))
        if path.exists()
    )
    figures.json_bytes = json_path.stat().st_size
    if figures.json_bytes < CHECK_FORMAT_BELOW:
        text = json_path.read_text(encoding="utf-8")
        if text != json.dumps(json.loads(text), indent=2):
            raise SystemExit(f"{json_path} is not laid out as 0.1.0's StateFile writes it")
    return pending_name


# Recording a part as sent


def sent_ids(count: int) -> list[tuple[int, str]]:
    rng = random.Random(count)
    return [(900_000 + index, _file_id(rng)) for index in range(count)]


def record_parts_in_stores(results: list[Figures], samples: int) -> None:
    """Time record_part_sent in every size's store, one part of each in turn, so that the disk's moods
    (each commit waits for an fsync) fall on all sizes alike."""
    stores = [open_store(figures.store_path).store for figures in results]
    sent = [sent_ids(min(samples, figures.parts)) for figures in results]
    timings: list[list[float]] = [[] for _ in results]
    try:
        for position in range(max(map(len, sent))):
            for store, figures, ids, taken in zip(stores, results, sent, timings, strict=True):
                if position < len(ids):
                    message_id, file_id = ids[position]
                    began = time.perf_counter()
                    store.record_part_sent(figures.pending, position + 1, message_id, file_id)
                    taken.append(time.perf_counter() - began)
        for store, figures, ids, taken in zip(stores, results, sent, timings, strict=True):
            entry = store.entry(figures.pending)
            assert entry is not None
            if [(part.message_id, part.file_id) for part in entry.manifest.parts[: len(ids)]] != ids:
                raise SystemExit(f"the store did not record the parts of {figures.pending} as sent")
            figures.timings.setdefault("part", {})["store"] = taken
    finally:
        for store in stores:
            store.close()


def record_parts_with_0_1(tree: Path, json_path: Path, name: str, sent: list[tuple[int, str]]) -> list[float]:
    completed = subprocess.run(
        [sys.executable, "-c", RECORD_WITH_0_1, str(tree), str(json_path), name, json.dumps(sent)],
        env=release_0_1.environment(tree, child_environment()),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"timing 0.1.0's update_entry failed:\n{completed.stdout}{completed.stderr}"[-3000:])
    return json.loads(completed.stdout.strip().splitlines()[-1])


# The daemons


class Daemon:
    """A real daemon of one version, started on a state, serving its control socket."""

    def __init__(self, command: list[str], environment: dict[str, str], log_path: Path) -> None:
        self.socket = Path(environment["TGBACKUPD_DAEMON_SOCKET"])
        self.log_path = log_path
        self._log = log_path.open("ab")
        began = time.monotonic()
        self.process = subprocess.Popen(command, env=environment, stdout=self._log, stderr=subprocess.STDOUT)
        while True:
            try:
                self.ask({"command": "status"})
                break
            except TgbackupdError:
                if time.monotonic() - began > START_TIMEOUT_S or self.process.poll() is not None:
                    self.stop()
                    raise SystemExit(f"the daemon did not come up:\n{self.log_tail()}") from None
                time.sleep(0.1)
        self.started_s = time.monotonic() - began

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = request(self.socket, message, timeout=REQUEST_TIMEOUT_S)
        if "data" not in reply:
            raise SystemExit(f"{message['command']} got no data: {reply}\n{self.log_tail()}")
        return reply["data"]

    def timed(self, message: dict[str, Any], samples: int) -> tuple[list[float], dict[str, Any]]:
        timings = []
        data: dict[str, Any] = {}
        for _ in range(samples):
            began = time.perf_counter()
            data = self.ask(message)
            timings.append(time.perf_counter() - began)
        return timings, data

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def daemon_environment(directory: Path, state_file: Path) -> dict[str, str]:
    config = directory / "config.toml"
    config.write_text("")
    return child_environment(
        TGBACKUPD_CONFIG=str(config),
        DATABASE_URL=DATABASE_URL,
        BACKUP_ENABLED="false",
        TGBACKUPD_BACKUP_DIRECTORY=str(directory / "backups"),
        TGBACKUPD_DAEMON_STATE_FILE=str(state_file),
        TGBACKUPD_DAEMON_SOCKET=str(directory / "control.sock"),
    )


def time_replies(figures: Figures, which: str, daemon: Daemon, samples: int) -> None:
    try:
        figures.started_s[which] = daemon.started_s
        daemon.ask({"command": "list"})  # untimed, like the status that told it was up
        status, data = daemon.timed({"command": "status"}, samples)
        if len(data.get("pending") or []) != 1:
            raise SystemExit(f"{which}: status does not show the one pending backup: {data.get('pending')}")
        listed, data = daemon.timed({"command": "list"}, samples)
        if len(data["backups"]) != figures.backups:
            raise SystemExit(f"{which}: list shows {len(data['backups'])} backups, not {figures.backups}")
    finally:
        daemon.stop()
    figures.timings.setdefault("status", {})[which] = status
    figures.timings.setdefault("list", {})[which] = listed


# The run


def prepare(backups: int, parts: int, samples: int, workdir: Path) -> Figures:
    """Both catalogues of one size, built."""
    figures = Figures(
        backups,
        parts,
        workdir / f"{backups}x{parts}",
        samples if backups * parts < LARGE else max(3, samples // 5),
    )
    shutil.rmtree(figures.directory, ignore_errors=True)
    (figures.directory / "store").mkdir(parents=True)
    (figures.directory / "json").mkdir()
    progress(f"{figures.label}: building the catalogues")
    figures.pending = build(figures, figures.store_path, figures.json_path)
    return figures


def measure(results: list[Figures], samples: int, tree: Path) -> None:
    os.sync()  # what the builds wrote, on disk before anything is timed: no fsync waits behind it
    progress("recording parts as sent in the stores")
    record_parts_in_stores(results, samples)
    for figures in results:
        progress(f"{figures.label}: recording parts as sent with 0.1.0")
        os.sync()
        sent = sent_ids(min(figures.json_samples, figures.parts))
        figures.timings["part"]["json"] = record_parts_with_0_1(
            tree, figures.json_path, figures.pending, sent
        )
    for figures in results:
        progress(f"{figures.label}: status and list of the current daemon")
        current = Daemon(
            [sys.executable, "-m", "tgbackupd"],
            daemon_environment(figures.directory / "store", figures.store_path),
            figures.directory / "store" / "daemon.log",
        )
        time_replies(figures, "store", current, samples)
        progress(f"{figures.label}: status and list of 0.1.0's daemon")
        old = Daemon(
            release_0_1.command(tree, "tgbackupd"),
            release_0_1.environment(tree, daemon_environment(figures.directory / "json", figures.json_path)),
            figures.directory / "json" / "daemon.log",
        )
        time_replies(figures, "json", old, figures.json_samples)


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# The report

METRICS = (("part", "record a part ms"), ("status", "status ms"), ("list", "list ms"))
ROWS = (("store", "SQLite store"), ("json", "0.1.0 JSON file"))


def _ratio(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def report(results: list[Figures], samples: int, seconds: float) -> None:
    json_counts = "/".join(str(len(f.timings["status"]["json"])) for f in results)
    print(
        f"state file: the SQLite state store beside release 0.1.0's JSON file; medians of {samples} "
        f"samples for the store and {json_counts} for the JSON file ({', '.join(f.label for f in results)})"
    )
    header = f"{'backups×parts':<14} {'state':<16}" + "".join(f" {title:>17}" for _, title in METRICS)
    print(header + f" {'file MB':>10}")
    for figures in results:
        for which, title in ROWS:
            size = figures.store_bytes if which == "store" else figures.json_bytes
            print(
                f"{figures.label:<14} {title:<16}"
                + "".join(f" {figures.median_ms(metric, which):>17.2f}" for metric, _ in METRICS)
                + f" {size / MB:>10.1f}"
            )
        print(
            f"{figures.label:<14} {'× faster':<16}"
            + "".join(
                f" {_ratio(figures.median_ms(metric, 'json') / figures.median_ms(metric, 'store')):>17}"
                for metric, _ in METRICS
            )
        )
    print(
        "× faster: the JSON file's median over the store's. record a part: one part recorded as sent, as "
        "each version's outbox does per part (0.1.0 rewrites and fsyncs its whole file). status, list: "
        "round trip over the control socket to the real daemon of each version. file MB: the state as "
        "built (SQLite: the database and its WAL)."
    )
    print(
        "0.1.0 itself capped its catalogue at 500 entries (dropping the oldest when it added one); above "
        "500 its file is measured holding more than 0.1.0 would have kept."
    )
    for figures in results:
        print(
            f"{figures.label}: built in {figures.store_build_s:.1f} s (store) and "
            f"{figures.json_build_s:.1f} s (JSON); daemon up and answering in "
            f"{figures.started_s['store']:.1f} s (current) and {figures.started_s['json']:.1f} s (0.1.0)"
        )
    print(f"took {seconds:.0f} s")

    largest = max(results, key=lambda f: (f.backups * f.parts, f.backups))
    at = f"{largest.backups}×{largest.parts}"
    if (largest.backups, largest.parts) != TARGET_SIZE:
        print(f"(targets are set for {TARGET_SIZE[0]}×{TARGET_SIZE[1]}; checked here at {at})")
    for metric, name in (("part", "record a part"), ("status", "status"), ("list", "list")):
        value = largest.median_ms(metric, "store")
        verdict = "met" if value <= TARGETS[metric] else "NOT met"
        print(f"target {name} ≤ {TARGETS[metric]:g} ms at {at}: {verdict} ({value:.2f} ms)")
    by_backups = sorted(results, key=lambda f: f.backups)
    smallest, biggest = by_backups[0], by_backups[-1]
    if smallest.backups == biggest.backups:
        print("target record a part flat as the catalogue grows: not measured (one catalogue size)")
    else:
        low, high = smallest.median_ms("part", "store"), biggest.median_ms("part", "store")
        verdict = "met" if high <= low * FLAT_WITHIN else "NOT met"
        print(
            f"target record a part flat from {smallest.backups} to {biggest.backups} backups (within "
            f"{FLAT_WITHIN:g}×): {verdict} ({low:.2f} ms → {high:.2f} ms, ×{high / low:.2f})"
        )


@contextlib.contextmanager
def working_directory(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    with tempfile.TemporaryDirectory(prefix="tgbackupd-state-bench-") as directory:
        yield Path(directory)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="100x1000,1000x1000", help="comma-separated BACKUPSxPARTS (default: %(default)s)"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=20,
        help="samples per measure for the store (default: %(default)s); the JSON file takes max(3, N/5) "
        f"once a catalogue holds {LARGE} parts or more",
    )
    parser.add_argument(
        "--workdir", type=Path, help="build the state files here and keep them (default: a temporary one)"
    )
    parser.add_argument("--quick", action="store_true", help="20 backups of 20 parts, 5 samples")
    args = parser.parse_args()
    sizes = parse_sizes("20x20" if args.quick else args.sizes)
    samples = 5 if args.quick else args.samples
    if samples < 1:
        raise SystemExit("--samples must be at least 1")
    began = time.monotonic()
    with working_directory(args.workdir) as workdir:
        shutil.rmtree(workdir / "release-0.1.0", ignore_errors=True)
        tree = release_0_1.extract(workdir / "release-0.1.0")
        results = [prepare(backups, parts, samples, workdir) for backups, parts in sizes]
        measure(results, samples, tree)
    report(results, samples, time.monotonic() - began)


if __name__ == "__main__":
    main()
