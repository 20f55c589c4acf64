"""The state store on its own: rows in and out, one transaction per change, shared by two processes, a
location it cannot use refused with what to do, damage moved aside, 0.1's JSON imported. No PostgreSQL."""

import fcntl
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import structlog

from tests.conftest import small_file_system
from tgbackupd import statefile
from tgbackupd.clock import Clock
from tgbackupd.config import load_config
from tgbackupd.delivery import Sending
from tgbackupd.manifest import Manifest, ManifestRef, Part, plan_parts
from tgbackupd.outbox import Outbox
from tgbackupd.recovery import read_back
from tgbackupd.state import (
    CHAIN_HISTORY,
    CHAIN_KEY,
    MIGRATIONS,
    SCHEMA_VERSION,
    SQLITE_HEADER,
    Entry,
    StateError,
    StateLocationError,
)
from tgbackupd.statefile import REBUILD_KEY, open_reader, open_store
from tgbackupd.states import DeliveryState
from tgbackupd.storage import BackupDirectory
from tgbackupd.telegram import ChatPacer, TelegramError

NOBODY = 65534


def manifest(stamp: str, parts: int = 3, prefix: str = "shop") -> Manifest:
    name = f"{prefix}_backup_{stamp}.sql.gz"
    planned = plan_parts(name, [(10, f"{index:064x}") for index in range(1, parts + 1)])
    return Manifest(
        name=name,
        database=prefix,
        host=f"{prefix} on db:5432",
        server="host",
        created_at="2025-12-03T03:00:00+00:00",
        size_bytes=10 * parts,
        sha256="ab" * 32,
        parts=planned,
    )


def pending(stamp: str, parts: int = 3) -> Entry:
    return Entry(manifest(stamp, parts), DeliveryState.PENDING, sql_bytes=1000)


def test_a_backup_goes_in_pending_its_parts_are_recorded_one_by_one_and_it_leaves_the_outbox_sent(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000"))
    assert [waiting.name for waiting in store.waiting()] == ["shop_backup_20251203_030000.sql.gz"]

    store.record_part_sent("shop_backup_20251203_030000.sql.gz", 2, 42, "file-42")
    entry = store.entry("shop_backup_20251203_030000.sql.gz")
    assert [part.message_id for part in entry.manifest.parts] == [None, 42, None]
    assert entry.manifest.parts[1].file_id == "file-42"

    sent = entry.manifest
    sent = Manifest(
        **{**sent.__dict__, "parts": tuple(Part(**{**p.__dict__, "message_id": p.index}) for p in sent.parts)}
    )
    store.record_delivered(sent, ManifestRef(sent.name, 7, "manifest-7"), pin_error=None)
    assert store.waiting() == []
    delivered = store.entry(sent.name)
    assert delivered.delivery == DeliveryState.SENT and delivered.manifest_ref.message_id == 7
    assert [part.message_id for part in delivered.manifest.parts] == [1, 2, 3]
    assert store.latest_manifest_ref() == ManifestRef(sent.name, 7, "manifest-7")


def test_a_delivery_turns_the_last_result_of_that_backup_into_sent_keeping_what_else_failed(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000", parts=1))
    name = "shop_backup_20251203_030000.sql.gz"
    verification, delivery = "verification failed: psql failed", "the backup was made but not sent: 403"
    store.record_result(
        {
            "database": "shop",
            "file": name,
            "delivery": "pending",
            "message_id": None,
            "verified": False,
            "error": f"{verification}; {delivery}",
            "delivery_error": delivery,
        }
    )

    store.record_delivered(store.entry(name).manifest, ManifestRef(name, 9, "m-9"), pin_error="no right")

    assert store.last_result() == {
        "database": "shop",
        "file": name,
        "delivery": "sent",
        "message_id": 9,
        "verified": False,
        "error": verification,
        "delivery_error": None,
        "pin_error": "no right",
    }


def test_the_outbox_is_oldest_first_and_a_postponed_backup_keeps_its_attempts_and_reason(tmp_path):
    store = open_store(tmp_path / "state.db").store
    for stamp in ("20251205_030000", "20251203_030000", "20251204_030000"):
        store.add(pending(stamp))
    store.record_postponed("shop_backup_20251203_030000.sql.gz", 3, "2025-12-05T04:00:00+00:00", "429")
    waiting = store.waiting()
    assert [item.name[12:27] for item in waiting] == ["20251203_030000", "20251204_030000", "20251205_030000"]
    assert (waiting[0].attempts, waiting[0].last_error) == (3, "429")
    assert waiting[0].next_attempt_at.isoformat() == "2025-12-05T04:00:00+00:00"
    store.record_lost("shop_backup_20251203_030000.sql.gz", "its file was removed")
    assert len(store.waiting()) == 2
    assert store.entry("shop_backup_20251203_030000.sql.gz").lost_reason == "its file was removed"


def test_the_previous_manifest_is_the_newest_delivered_one_older_than_the_backup(tmp_path):
    store = open_store(tmp_path / "state.db").store
    for stamp, message_id in (("20251201_030000", 1), ("20251203_030000", 3)):
        store.add(
            Entry(
                manifest(stamp),
                DeliveryState.SENT,
                manifest_ref=ManifestRef(f"shop_backup_{stamp}.sql.gz", message_id, f"m{message_id}"),
            )
        )
    store.add(pending("20251202_030000"))
    assert store.latest_manifest_ref().message_id == 3
    assert store.latest_manifest_ref(before="shop_backup_20251202_030000.sql.gz").message_id == 1
    assert store.newer_delivered("shop_backup_20251202_030000.sql.gz")  # so it is not pinned
    assert not store.newer_delivered("shop_backup_20251204_030000.sql.gz")


def test_find_takes_a_name_its_stem_or_latest_and_a_name_is_taken_in_any_format(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000"))
    store.add(pending("20251204_030000"))
    assert store.find("latest").manifest.name == "shop_backup_20251204_030000.sql.gz"
    assert store.find("shop_backup_20251203_030000").manifest.name == "shop_backup_20251203_030000.sql.gz"
    assert store.find("shop_backup_20251209_030000.sql.gz") is None
    assert store.stem_taken("shop_backup_20251203_030000.sql.zst")


def test_latest_of_a_database_is_of_its_own_series_not_of_one_whose_prefix_begins_alike(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000"))
    store.add(Entry(manifest("20251205_030000", prefix="shop_backup_old"), DeliveryState.PENDING))
    assert store.find("latest", "shop").manifest.name == "shop_backup_20251203_030000.sql.gz"
    newest = "shop_backup_old_backup_20251205_030000.sql.gz"
    assert store.find("latest", "shop_backup_old").manifest.name == newest


def test_two_series_of_one_database_name_keep_a_result_each_and_a_schema_2_store_is_migrated(tmp_path):
    path = tmp_path / "state.db"
    connection = sqlite3.connect(path)
    connection.executescript(f"{MIGRATIONS[0]}; {MIGRATIONS[1]}; PRAGMA user_version = 2;")
    connection.execute("INSERT INTO results VALUES ('shop', ?)", (json.dumps({"database": "shop"}),))
    connection.commit()
    connection.close()
    store = open_store(path).store
    store.record_result({"database": "shop", "file": None, "error": "a down"}, "a_shop")
    store.record_result({"database": "shop", "file": None, "error": "b down"}, "b_shop")
    store.add(pending("20251203_030000"))
    store.record_result(
        {"database": "shop", "file": "shop_backup_20251203_030000.sql.gz", "delivery": "pending"}
    )

    errors = [result.get("error") for result in store.results()]
    assert errors == ["a down", "b down", None]  # the row of schema 2 was replaced by its series' newer one
    sent = manifest("20251203_030000")
    store.record_delivered(
        Manifest(
            **{
                **sent.__dict__,
                "parts": tuple(Part(**{**p.__dict__, "message_id": p.index}) for p in sent.parts),
            }
        ),
        ManifestRef("shop_backup_20251203_030000.sql.gz", 9, "file-9"),
        None,
    )
    assert store.results()[-1]["delivery"] == "sent"


def test_results_and_listing_come_back_as_recorded(tmp_path):
    store = open_store(tmp_path / "state.db").store
    assert store.last_result() is None and store.listing() == []
    store.record_result({"database": "shop", "started_at": "2025-12-03T03:00:00+00:00", "error": None})
    store.record_result({"database": "shop", "started_at": "2025-12-04T03:00:00+00:00", "error": "x"})
    assert store.last_result()["started_at"] == "2025-12-04T03:00:00+00:00"
    store.add(pending("20251203_030000"))
    store.record_postponed("shop_backup_20251203_030000.sql.gz", 1, "2025-12-03T04:00:00+00:00", "503")
    (row,) = store.listing()
    assert (row["delivery"], row["parts"], row["last_error"]) == ("pending", 3, "503")


def test_two_processes_share_the_store_and_see_each_other_s_changes(tmp_path):
    first = open_store(tmp_path / "state.db").store
    second = open_store(tmp_path / "state.db").store  # as tgbackupd --once beside the daemon
    first.add(pending("20251203_030000"))
    second.record_part_sent("shop_backup_20251203_030000.sql.gz", 1, 5, "f5")
    assert first.entry("shop_backup_20251203_030000.sql.gz").manifest.parts[0].message_id == 5
    assert second.stem_taken("shop_backup_20251203_030000.sql.gz")


def test_only_one_process_delivers_at_a_time_and_the_other_is_told_who(tmp_path):
    first = open_store(tmp_path / "state.db").store
    second = open_store(tmp_path / "state.db").store
    cancel = threading.Event()
    with first.delivery_lock(0, cancel) as held:
        assert held is None
        began = time.monotonic()
        with second.delivery_lock(0.5, cancel) as other:
            assert other == f"another tgbackupd process (pid {os.getpid()}) is delivering backups"
        assert 0.4 < time.monotonic() - began < 3
    with second.delivery_lock(0, cancel) as held:
        assert held is None


def test_a_change_that_cannot_be_written_is_an_error_naming_the_state_file(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000"))
    with pytest.raises(StateError, match=r"cannot record the backup .*\(daemon\.state_file\): UNIQUE"):
        store.add(pending("20251203_030000"))
    assert len(store.waiting()) == 1  # the failed change left nothing half-done


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path.mkdir(), "is a directory"),
        (lambda path: path.parent.with_name("blocker").write_text(""), "cannot be created"),
    ],
    ids=["a-directory", "parent-cannot-be-created"],
)
def test_a_location_that_cannot_hold_the_state_is_refused_with_what_to_do(tmp_path, make, message):
    path = (
        tmp_path / "blocker" / "state.db" if "parent" in message or "created" in message else tmp_path / "s"
    )
    make(path)
    with pytest.raises(StateLocationError, match=message) as refused:
        open_store(path)
    assert "daemon.state_file" in str(refused.value) and refused.value.exit_code == 73


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user")
def test_a_state_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "state.db"
    open_store(path).store.close()
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(
        StateLocationError, match=r"belongs to nobody, not to root who runs this: run tgbackupd as nobody"
    ):
        open_store(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a file system")
def test_a_read_only_file_system_is_refused(tmp_path):
    with (
        small_file_system(tmp_path / "ro", "1m", read_only=True) as mount,
        pytest.raises(StateLocationError, match="is on a read-only file system"),
    ):
        open_store(mount / "state.db")


@pytest.mark.skipif(os.geteuid() != 0, reason="gives a file to another user")
def test_a_reader_running_as_root_leaves_the_journal_files_to_the_owner():
    tmp_path = Path(tempfile.mkdtemp(dir="/tmp"))  # reachable by its owner, as /var/lib/tgbackupd is
    path = tmp_path / "state.db"
    store = open_store(path).store
    store.add(pending("20251203_030000"))
    store.close()
    for file in tmp_path.iterdir():
        os.chown(file, NOBODY, NOBODY)
    os.chown(tmp_path, NOBODY, NOBODY)

    reader = open_reader(path)
    assert [row["name"] for row in reader.listing()] == ["shop_backup_20251203_030000.sql.gz"]
    journal = [file for file in tmp_path.iterdir() if file.name.startswith("state.db-")]
    assert journal and all(file.stat().st_uid == NOBODY for file in journal)
    reader.close()
    shutil.rmtree(tmp_path)


def _damaged_sqlite(path: Path) -> None:
    """A real store with a page in the middle overwritten: SQLite's integrity check fails on it."""
    store = open_store(path).store
    for day in range(1, 29):
        store.add(pending(f"202512{day:02d}_030000", parts=40))
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[5 * page : 6 * page] = os.urandom(page)
    path.write_bytes(bytes(data))


def _newer_schema(path: Path) -> None:
    open_store(path).store.close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path: path.write_bytes(os.urandom(20000)), "neither an SQLite state file nor"),
        (lambda path: path.write_bytes(b""), "the file is empty"),
        (lambda path: (open_store(path).store.close(), path.write_bytes(path.read_bytes()[:5000])), "SQLite"),
        (_damaged_sqlite, "SQLite"),
        (_newer_schema, "written by a newer tgbackupd"),
        (lambda path: path.write_text('{"catalogue": [{"name": '), "not valid JSON"),
    ],
    ids=["random-bytes", "empty", "truncated", "integrity-check", "unknown-schema", "broken-json"],
)
def test_a_damaged_file_is_moved_aside_and_a_new_store_is_flagged_for_rebuilding(tmp_path, damage, reason):
    path = tmp_path / "state.db"
    damage(path)
    before = path.read_bytes()

    opened = open_store(path)

    assert reason in opened.damaged
    assert opened.moved_to.name.startswith("state.db.corrupt-") and opened.moved_to.read_bytes() == before
    assert opened.store.meta(REBUILD_KEY) == opened.damaged
    assert opened.store.listing() == [] and opened.store.waiting() == []
    opened.store.add(pending("20251203_030000"))  # and it works
    again = open_store(path)  # the next start finds a good store
    assert again.damaged is None and len(again.store.waiting()) == 1


def _legacy_file(path: Path) -> None:
    """What tgbackupd 0.1 wrote: the real format, with each kind of entry it could hold."""
    entries = [
        {
            "name": "shop_backup_20251204_030000.sql.gz",
            "database": "shop",
            "manifest": json.loads(manifest("20251204_030000").to_json()),
            "manifest_ref": None,
            "facts": {
                "file": "shop_backup_20251204_030000.sql.gz",
                "database": "shop on db:5432",
                "server": "h",
                "size_bytes": 30,
                "sha256": "ab" * 32,
                "duration_s": 1.5,
            },
            "sql_bytes": 900,
            "warning": None,
            "delivery": "pending",
            "attempts": 2,
            "next_attempt_at": "2025-12-04T04:00:00+00:00",
            "last_error": "Telegram chat -100 was not found",
            "captions_to_complete": [1],
            "spooled": True,
        },
        {"name": "broken", "manifest": {"format": "something else"}, "delivery": "sent"},
        {
            "name": "shop_backup_20251203_030000.sql.gz",
            "database": "shop",
            "manifest": json.loads(manifest("20251203_030000").to_json()),
            "manifest_ref": {"name": "shop_backup_20251203_030000.sql.gz", "message_id": 9, "file_id": "m9"},
            "facts": {},
            "sql_bytes": 1000,
            "warning": None,
            "delivery": "sent",
            "attempts": 1,
            "next_attempt_at": None,
            "last_error": None,
            "captions_to_complete": [],
            "spooled": False,
            "pin_error": None,
        },
    ]
    path.write_text(
        json.dumps(
            {
                "last_backup": {"database": "shop", "started_at": "2025-12-04T03:00:00+00:00"},
                "catalogue": entries,
            },
            indent=2,
        )
    )


@pytest.mark.parametrize("where", ["beside", "in-place"])
def test_the_json_file_of_0_1_is_imported_and_kept_as_migrated(tmp_path, where):
    if where == "beside":
        legacy, path = tmp_path / ".tgbackupd-state.json", tmp_path / ".tgbackupd-state.db"
    else:
        legacy = path = tmp_path / "state.json"
    _legacy_file(legacy)
    original = legacy.read_bytes()

    opened = open_store(path)

    store = opened.store
    assert opened.migrated_from == legacy and opened.skipped and "entry 2" in opened.skipped[0]
    assert legacy.with_name(legacy.name + ".migrated").read_bytes() == original
    assert path.read_bytes().startswith(b"SQLite format 3")
    (waiting,) = store.waiting()
    assert (waiting.attempts, waiting.last_error) == (2, "Telegram chat -100 was not found")
    assert waiting.next_attempt_at.isoformat() == "2025-12-04T04:00:00+00:00"
    entry = store.entry(waiting.name)
    assert entry.spooled and entry.captions_to_complete == frozenset({1}) and entry.facts["duration_s"] == 1.5
    assert store.latest_manifest_ref() == ManifestRef("shop_backup_20251203_030000.sql.gz", 9, "m9")
    assert store.last_result()["started_at"] == "2025-12-04T03:00:00+00:00"
    assert open_store(path).migrated_from is None  # imported once


def test_tgbackupctl_reads_a_json_file_of_0_1_that_was_not_migrated_yet(tmp_path):
    _legacy_file(tmp_path / ".tgbackupd-state.json")
    reader = open_reader(tmp_path / ".tgbackupd-state.db")
    assert [row["delivery"] for row in reader.listing()] == ["pending", "sent"]
    assert not (tmp_path / ".tgbackupd-state.db").exists()  # reading changes nothing


def test_a_reader_is_told_plainly_when_the_store_is_damaged(tmp_path):
    (tmp_path / "state.db").write_bytes(os.urandom(5000))
    with pytest.raises(StateError, match=r"cannot be used: .* tgbackupd moves it aside and rebuilds it"):
        open_reader(tmp_path / "state.db")


_RECORDER = """
import sys
from pathlib import Path
from tgbackupd.statefile import open_store
store = open_store(Path(sys.argv[1])).store
name = "shop_backup_20251203_030000.sql.gz"
index = 0
print("ready", flush=True)
while True:
    index = index % 3000 + 1
    store.record_part_sent(name, index, index, "f" * 70)
"""


def test_sigkill_while_parts_are_recorded_never_leaves_a_damaged_or_half_written_store(tmp_path):
    path = tmp_path / "state.db"
    store = open_store(path).store
    store.add(pending("20251203_030000", parts=3000))
    store.close()
    for round_ in range(15):
        recorder = subprocess.Popen(
            [sys.executable, "-c", _RECORDER, str(path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
        )
        assert recorder.stdout.readline().strip() == "ready"
        time.sleep(0.05 + (round_ % 5) * 0.03)
        recorder.send_signal(signal.SIGKILL)
        recorder.wait()
        opened = open_store(path)
        assert opened.damaged is None
        parts = opened.store.entry("shop_backup_20251203_030000.sql.gz").manifest.parts
        recorded = [part for part in parts if part.message_id is not None]
        assert recorded and all(
            part.message_id == part.index and part.file_id == "f" * 70 for part in recorded
        )
        opened.store.close()


# What a cold review found, each reproduced first.


def test_a_file_system_unmounted_or_a_file_moved_under_a_running_store_stops_every_change(tmp_path):
    path = tmp_path / "state.db"
    store = open_store(path).store
    store.add(pending("20251203_030000"))
    os.rename(path, tmp_path / "elsewhere.db")  # as an unmount or a move would leave it
    with pytest.raises(StateError, match="was moved, replaced or unmounted while tgbackupd had it open"):
        store.add(pending("20251204_030000"))
    with pytest.raises(StateError, match="moved, replaced or unmounted"):
        store.waiting()


def test_a_store_another_process_has_open_is_never_moved_aside_under_it(tmp_path, monkeypatch):
    monkeypatch.setattr(statefile, "_OPEN_WAIT_S", 0.5)
    path = tmp_path / "state.db"
    daemon = open_store(path).store
    daemon.set_meta("who", "daemon")
    connection = sqlite3.connect(path)  # what a newer tgbackupd would have written, seen by a new process
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    connection.close()
    with pytest.raises(
        StateLocationError, match=r"must be moved aside .* another tgbackupd process has had it"
    ):
        open_store(path)
    assert path.exists() and not list(tmp_path.glob("state.db.corrupt-*"))
    daemon.close()
    assert open_store(path).moved_to is not None  # alone, it is moved aside


def test_journal_files_left_without_their_store_are_moved_aside_not_read_into_a_new_one(tmp_path):
    path = tmp_path / "state.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    assert writer.stdout.readline().strip() == "ready"
    writer.send_signal(signal.SIGKILL)  # its last commits are in the -wal only
    writer.wait()
    assert (tmp_path / "state.db-wal").stat().st_size > 0
    os.rename(path, tmp_path / "state.db.gone")  # a move-aside cut between its renames

    opened = open_store(path)

    assert opened.created and opened.store.meta("old3") is None
    assert [p.name for p in tmp_path.glob("state.db.corrupt-*-wal")]


_WRITER = """
import sys
from pathlib import Path
from tgbackupd.statefile import open_store
store = open_store(Path(sys.argv[1])).store
for index in range(20):
    store.set_meta(f"old{index}", "x" * 2000)
print("ready", flush=True)
import time
time.sleep(60)
"""


def test_lock_and_note_files_are_never_opened_through_a_planted_symbolic_link(tmp_path):
    path = tmp_path / "state.db"
    store = open_store(path).store
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / ".state.db.delivery-lock").symlink_to(victim)
    with pytest.raises(StateError, match="delivery lock"), store.delivery_lock(0, threading.Event()):
        pass
    assert victim.read_text() == "precious"


def test_a_pipe_at_the_state_file_is_refused_at_once_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "state.db")
    began = time.monotonic()
    with pytest.raises(StateLocationError, match="is not a regular file"):
        open_store(tmp_path / "state.db")
    with pytest.raises(StateError, match="not a regular file"):
        open_reader(tmp_path / "state.db")
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(
    ("name", "content"),
    [("settings.json", b'{"listen": "0.0.0.0:8080"}'), ("app.db", None)],
    ids=["another-program-s-json", "another-program-s-database"],
)
def test_a_file_of_another_program_is_left_alone_and_refused(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE users (id integer)")
        connection.commit()
        connection.close()
    else:
        path.write_bytes(content)
    before = path.read_bytes()
    with pytest.raises(StateLocationError, match="is not a state file of tgbackupd") as refused:
        open_store(path)
    assert refused.value.exit_code == 73
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [name, f".{name}.lock"]
    )


def test_a_reader_told_the_store_is_damaged_is_not_told_to_fix_permissions(tmp_path):
    (tmp_path / "state.db").write_bytes(SQLITE_HEADER + os.urandom(4000))
    with pytest.raises(StateError) as refused:
        open_reader(tmp_path / "state.db")
    assert "moves it aside and rebuilds it" in str(refused.value) and "as root" not in str(refused.value)


def test_a_state_file_of_0_1_that_appears_again_after_the_migration_is_kept_not_overwritten(tmp_path):
    legacy, path = tmp_path / ".tgbackupd-state.json", tmp_path / ".tgbackupd-state.db"
    _legacy_file(legacy)
    open_store(path).store.close()
    first = (tmp_path / ".tgbackupd-state.json.migrated").read_bytes()
    legacy.write_text(
        json.dumps({"last_backup": {"database": "shop", "started_at": "later"}, "catalogue": []})
    )

    open_store(path).store.close()

    assert (tmp_path / ".tgbackupd-state.json.migrated").read_bytes() == first
    assert json.loads((tmp_path / ".tgbackupd-state.json.migrated-2").read_text())["last_backup"][
        "started_at"
    ] == ("later")


def test_entries_of_0_1_with_wrong_types_or_foreign_names_are_skipped_and_named(tmp_path):
    legacy = tmp_path / "state.json"
    good = json.loads(manifest("20251203_030000").to_json())
    outside = json.loads(manifest("20251204_030000").to_json())
    outside["name"] = "../other_backup_20251204_030000.sql.gz"
    outside["parts"] = [
        {**part, "file_name": "../other_backup_20251204_030000.sql.gz.001"} for part in outside["parts"]
    ]
    entries = [
        {"manifest": good, "delivery": "pending", "captions_to_complete": True},
        {"manifest": outside, "delivery": "pending", "spooled": True},
        {"manifest": good, "delivery": "sent", "sql_bytes": "12"},
    ]
    legacy.write_text(json.dumps({"catalogue": entries}))
    opened = open_store(legacy)
    assert [skip.split(":")[0] for skip in opened.skipped] == ["entry 1", "entry 2", "entry 3"]
    assert opened.store.listing() == []


def test_a_manifest_or_receipt_on_disk_that_does_not_hold_together_is_skipped_not_fatal(tmp_path):
    store = open_store(tmp_path / "state.db").store
    directory = BackupDirectory(tmp_path, "shop")
    bad = json.loads(manifest("20251203_030000").to_json())
    bad["parts"][0]["size_bytes"] = "5"
    (tmp_path / "shop_backup_20251203_030000.manifest.json").write_text(json.dumps(bad))
    good = manifest("20251204_030000", parts=1)
    (tmp_path / "shop_backup_20251204_030000.manifest.json").write_bytes(good.to_json())
    (tmp_path / "shop_backup_20251204_030000.sql.gz.001").write_bytes(b"x" * 10)
    (tmp_path / ".shop_backup_20251204_030000.sent").mkdir()  # a receipt that is not a file
    log = structlog.get_logger()

    assert read_back(store, directory, True, log) == ["shop_backup_20251204_030000.sql.gz"]
    (waiting,) = store.waiting()
    assert waiting.unconfirmed and waiting.name == "shop_backup_20251204_030000.sql.gz"


def _outbox(tmp_path: Path, store) -> Outbox:
    """An outbox delivering to a chat, over the backup directory `tmp_path`."""
    config = load_config(
        "/dev/null",
        {
            "DATABASE_URL": "postgresql://h/shop",
            "TELEGRAM_CHAT_ID": "-100123",
            "TELEGRAM_BOT_TOKEN": "123456789:fake-token-for-tests-only",
            "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path),
        },
    )
    directory = BackupDirectory(tmp_path, "shop")
    return Outbox(config, store, directory, Clock(), structlog.get_logger(), Sending(ChatPacer(20)))


def test_an_outbox_that_fails_unexpectedly_backs_off_instead_of_retrying_every_second(tmp_path):
    store = open_store(tmp_path / "state.db").store
    store.add(pending("20251203_030000", parts=1))
    (tmp_path / "shop_backup_20251203_030000.sql.gz").write_bytes(b"x" * 10)
    (tmp_path / ".tgbackupd.lock").write_text("")
    outbox = _outbox(tmp_path, store)
    assert outbox.is_due()

    class BrokenBot:
        def send_document(self, *args, **kwargs):
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        outbox.drain(BrokenBot(), threading.Event())
    assert not outbox.is_due() and "internal error" in outbox.last_error


def test_over_999_parts_spooled_by_a_version_that_numbered_them_with_three_digits_take_four_at_start(
    tmp_path,
):
    import structlog

    from tgbackupd.recovery import read_back
    from tgbackupd.storage import BackupDirectory, spooled_parts

    directory = BackupDirectory(tmp_path, "shop")
    waiting = pending("20251203_030000", parts=1200).manifest
    store = open_store(tmp_path / "state.db").store
    store.add(Entry(waiting, DeliveryState.PENDING, spooled=True))  # recorded before the upgrade
    (tmp_path / waiting.file_name).write_bytes(waiting.to_json())
    for index in range(1, 1201):
        (tmp_path / f"{waiting.name}.{index:03d}").write_bytes(b"x" * 10)  # .001 … .999, .1000 … .1200

    assert read_back(store, directory, telegram=True, log=structlog.get_logger()) == []

    assert sorted(spooled_parts(tmp_path, waiting)) == list(range(1, 1201))
    assert sorted(p.name for p in tmp_path.glob("*.sql.gz.*")) == [
        f"{waiting.name}.{index:04d}" for index in range(1, 1201)
    ]


def test_a_chat_that_cannot_be_read_after_a_rebuild_backs_the_outbox_off_instead_of_asking_every_second(
    tmp_path,
):
    store = open_store(tmp_path / "state.db").store
    store.set_meta(CHAIN_KEY, CHAIN_HISTORY)  # rebuilt: the chat's history is to be read back, nothing waits
    outbox = _outbox(tmp_path, store)
    assert outbox.is_due()

    class Unreachable:
        def get_chat(self, chat_id):
            raise TelegramError("could not connect to api.telegram.org")

    assert outbox.drain(Unreachable(), threading.Event()).sent == 0
    assert not outbox.is_due() and "could not connect" in outbox.last_error


def _schema_3_store(path: Path) -> None:
    """A store as tgbackupd before schema 4 left it, with one delivered backup."""
    connection = sqlite3.connect(path)
    connection.executescript(f"{MIGRATIONS[0]}; {MIGRATIONS[1]}; {MIGRATIONS[2]}; PRAGMA user_version = 3;")
    name = "shop_backup_20251203_030000.sql.gz"
    made = (
        name,
        "shop_backup_20251203_030000",
        "20251203_030000",
        "shop",
        "h",
        "host",
        "2025-12-03T03:00:00Z",
    )
    content = (4, "ab" * 32, "plain", "gzip", None, 1, None, None, None, None, None, None, 0, "[]")
    delivered = ("sent", 7, "m-7", None, None, None)
    connection.execute(f"INSERT INTO backups VALUES ({', '.join('?' * 27)})", (*made, *content, *delivered))
    connection.commit()
    connection.close()


def test_tgbackupctl_lists_a_store_of_schema_3_that_the_daemon_has_not_migrated_yet(tmp_path):
    _schema_3_store(tmp_path / "state.db")

    (row,) = open_reader(tmp_path / "state.db").listing()

    assert (row["delivery"], row["parts_deleted_at"], row["chat_id"]) == ("sent", None, None)


def test_a_store_of_an_older_schema_is_migrated_only_once_no_older_tgbackupd_has_it_open(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(statefile, "_OPEN_WAIT_S", 0.5)
    path = tmp_path / "state.db"
    _schema_3_store(path)
    old_daemon = os.open(tmp_path / ".state.db.lock", os.O_RDWR | os.O_CREAT)  # held shared, as any does
    fcntl.flock(old_daemon, fcntl.LOCK_SH)

    with pytest.raises(
        StateLocationError, match=r"another tgbackupd \(an older version\?\) has had the state"
    ):
        open_store(path)
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 3  # the old one goes on writing it
    connection.close()
    os.close(old_daemon)  # it was restarted
    store = open_store(path).store
    assert store.listing()[0]["chat_id"] is None
    assert store._connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
