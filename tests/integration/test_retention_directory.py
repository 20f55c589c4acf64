"""Retention against the real backup directory and state store: files named as tgbackupd names them, by a
clock that moves a night at a time, pruned after each night as the daemon prunes after each backup."""

import os
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import structlog
from structlog.testing import capture_logs

from tests.conftest import backup_for, base_environment
from tgbackupd.clock import Clock
from tgbackupd.config import KeepRules, load_config
from tgbackupd.manifest import Manifest, manifest_name, plan_parts
from tgbackupd.retention import Pruner, decide, made_at
from tgbackupd.retention import candidates as retention_candidates
from tgbackupd.state import Entry
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState
from tgbackupd.storage import BackupDirectory

RULES = KeepRules(last=7, daily=14, weekly=8, monthly=12, yearly=3)
LOG = structlog.get_logger()


class Nightly(Clock):
    """Local time that moves on by a night each time it is told to."""

    def __init__(self, first: datetime) -> None:
        self.current = first

    def now(self) -> datetime:
        return self.current

    def next_night(self) -> None:
        self.current += timedelta(days=1)


def make_backup(directory: BackupDirectory, store, clock: Clock, delivery: DeliveryState, **facts) -> str:
    """A backup file with its manifest, as a backup leaves them, recorded in the catalogue."""
    name = directory.unused_name(clock.now(), store.second_taken)
    (directory.path / name).write_bytes(b"dump")
    (directory.path / manifest_name(name)).write_bytes(b"{}")
    manifest = Manifest(name, "shop", "shop on db", "h", clock.now().isoformat(), 4, "ab" * 32, ())
    store.add(Entry(replace(manifest, parts=plan_parts(name, [(4, "ab" * 32)])), delivery, **facts))
    return name


def files(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir() if not path.name.startswith(".")}


def test_a_year_of_nights_pruned_each_night_leaves_what_the_rules_keep_and_their_manifests(tmp_path):
    directory = BackupDirectory(tmp_path, "shop")
    store = open_store(tmp_path / ".state.db").store
    pruner = Pruner(directory, store, RULES)
    clock = Nightly(datetime(2026, 1, 1, 3, 0))
    made = []
    for _ in range(365):
        made.append(make_backup(directory, store, clock, DeliveryState.LOCAL_ONLY))
        pruner.prune(LOG)
        clock.next_night()

    expected = {
        verdict.name
        for verdict in decide(retention_candidates(made, {}, "shop", set()), RULES)
        if verdict.kept
    }
    assert len(expected) == 14 + 5 + 11  # the nights, more Sundays, the other month ends (see the unit test)
    assert files(tmp_path) == expected | {manifest_name(name) for name in expected}
    assert [made_at(name).date().isoformat() for name in sorted(expected)][:3] == [
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
    ]


def test_an_undelivered_backup_and_the_newest_good_one_outlive_the_rules(tmp_path):
    directory = BackupDirectory(tmp_path, "shop")
    store = open_store(tmp_path / ".state.db").store
    clock = Nightly(datetime(2026, 12, 1, 3, 0))
    waiting = make_backup(directory, store, clock, DeliveryState.PENDING)
    clock.next_night()
    good = make_backup(directory, store, clock, DeliveryState.SENT)
    clock.next_night()
    flagged = []
    for _ in range(2):
        flagged.append(
            make_backup(directory, store, clock, DeliveryState.SENT, warning="this backup is empty")
        )
        clock.next_night()

    with capture_logs() as logs:
        removed = Pruner(directory, store, KeepRules(last=1)).prune(LOG)

    assert removed == [flagged[0]]
    assert files(tmp_path) == {
        name for kept in (waiting, good, flagged[1]) for name in (kept, manifest_name(kept))
    }
    (warning,) = [log for log in logs if log["log_level"] == "warning"]
    assert warning["event"] == (
        "Keeping 3 backups, more than backup.keep (1): those not yet delivered to Telegram are never removed"
    )
    assert warning["undelivered"] == [waiting] and warning["beyond_rules"] == [good, waiting]


def delivered_nights(tmp_path, nights: int):
    """The directory and store of `nights` nightly backups of shop, all delivered."""
    directory = BackupDirectory(tmp_path, "shop")
    store = open_store(tmp_path / ".state.db").store
    clock = Nightly(datetime(2026, 12, 1, 3, 0))
    for _ in range(nights):
        make_backup(directory, store, clock, DeliveryState.SENT)
        clock.next_night()
    return directory, store


def test_nothing_is_removed_when_the_catalogue_cannot_be_read(tmp_path):
    directory, store = delivered_nights(tmp_path, 5)
    before = files(tmp_path)
    os.rename(tmp_path / ".state.db", tmp_path / "moved.db")  # the store this process has open is gone

    with capture_logs() as logs:
        removed = Pruner(directory, store, KeepRules(last=1)).prune(LOG)

    assert removed == [] and files(tmp_path) - {"moved.db"} == before
    (error,) = [log for log in logs if log["log_level"] == "error"]
    assert error["event"] == "Could not remove old backups" and "daemon.state_file" in error["error"]


def test_while_another_backup_is_made_in_the_directory_pruning_waits_for_the_next_time(tmp_path):
    directory, store = delivered_nights(tmp_path, 3)
    before = files(tmp_path)

    with BackupDirectory(tmp_path, "shop").lock(), capture_logs() as logs:
        removed = Pruner(directory, store, KeepRules(last=1)).prune(LOG)

    assert removed == [] and files(tmp_path) == before
    assert [log["event"] for log in logs] == [
        "Not removing old backups now; they are removed after the next backup"
    ]
    assert len(Pruner(directory, store, KeepRules(last=1)).prune(LOG)) == 2  # and the next time it does


def test_a_real_backup_prunes_by_the_daily_rule_and_keeps_a_month_end(tmp_path, make_database):
    source = make_database(empty=True)
    backups = tmp_path / "backups"
    backups.mkdir()
    today = datetime(2026, 6, 15, 3, 30).astimezone()
    old = [f"{source}_backup_{today - timedelta(days=days):%Y%m%d}_030000.sql.gz" for days in range(1, 70)]
    for name in old:
        (backups / name).write_bytes(b"old")
    environment = base_environment(
        tmp_path,
        source,
        TGBACKUPD_BACKUP_KEEP="2",
        TGBACKUPD_BACKUP_KEEP_DAILY="5",
        TGBACKUPD_BACKUP_KEEP_MONTHLY="2",
    )

    with capture_logs() as logs:
        result = backup_for(load_config(None, environment), clock=Nightly(today)).run("manual")

    assert result.succeeded, result.error
    remaining = {path.name for path in backups.iterdir() if path.name.endswith(".sql.gz")}
    # Today's backup and the four nights before it (daily; keep = 2 among them), and May's newest night
    # (monthly: June's is today's).
    nights = {f"{source}_backup_202606{day}_030000.sql.gz" for day in (14, 13, 12, 11)}
    assert remaining == {result.file, *nights, f"{source}_backup_20260531_030000.sql.gz"}
    (removal,) = [log for log in logs if log["event"] == "Removed old backups"]
    assert removal["keep"] == 2 and sorted(removal["removed"]) == sorted(set(old) - remaining)
    assert removal["rules"] == "keep = 2, keep_daily = 5, keep_monthly = 2"


def test_with_more_rules_than_keep_the_warning_names_the_rules_and_what_outlives_them(tmp_path):
    directory = BackupDirectory(tmp_path, "shop")
    store = open_store(tmp_path / ".state.db").store
    clock = Nightly(datetime(2026, 12, 1, 3, 0))
    waiting = make_backup(directory, store, clock, DeliveryState.PENDING)
    for _ in range(3):
        clock.next_night()
        make_backup(directory, store, clock, DeliveryState.SENT)

    with capture_logs() as logs:
        removed = Pruner(directory, store, KeepRules(last=1, daily=2)).prune(LOG)

    assert len(removed) == 1 and waiting in files(tmp_path)
    (warning,) = [log for log in logs if log["log_level"] == "warning"]
    assert warning["event"] == (
        "Keeping 1 backups the retention rules (keep = 1, keep_daily = 2) would remove: those not yet "
        "delivered to Telegram, and the newest good one, are never removed"
    )
    assert warning["beyond_rules"] == [waiting]


def test_a_backup_starting_while_a_prune_holds_the_directory_waits_for_it_instead_of_failing(
    tmp_path, make_database
):
    source = make_database(empty=True)
    (tmp_path / "backups").mkdir()
    backup = backup_for(load_config(None, base_environment(tmp_path, source)))
    held = threading.Event()

    def prune_elsewhere() -> None:  # `tgbackupctl prune` in the daemon, or a `tgbackupd --once` pruning
        with BackupDirectory(tmp_path / "backups", source).lock():
            held.set()
            time.sleep(1.5)

    pruning = threading.Thread(target=prune_elsewhere)
    pruning.start()
    held.wait(5)
    began = time.monotonic()
    result = backup.run("manual")
    pruning.join()

    assert result.succeeded, result.error
    assert time.monotonic() - began >= 1.0  # it waited for the lock
