"""`tgbackupctl list` and `tgbackupctl prune` against the real daemon process: what retention keeps, why,
and what goes."""

import json
from dataclasses import replace
from datetime import date, timedelta

from tests.botapi import CHAT_ID
from tests.conftest import base_environment, telegram_environment
from tests.end_to_end.conftest import events
from tgbackupd.manifest import Manifest, ManifestRef, manifest_name, plan_parts
from tgbackupd.state import Entry
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState

FIRST = date(2026, 10, 1)
NIGHTS = 62  # 1 October to 1 December


def name_of(day: date) -> str:
    return f"shop_backup_{day:%Y%m%d}_030000.sql.gz"


def history(tmp_path, newest: DeliveryState = DeliveryState.PENDING, chat_id: str | None = None) -> list[str]:
    """Two months of nights in the backup directory and the catalogue, all sent (to `chat_id`, recorded
    as delivered there) but the newest, which waits for Telegram unless told otherwise (the chat is not
    configured: it stays in the outbox)."""
    backups = tmp_path / "backups"
    backups.mkdir()
    store = open_store(tmp_path / "state.db").store
    names = []
    for night in range(NIGHTS):
        day = FIRST + timedelta(days=night)
        name = name_of(day)
        (backups / name).write_bytes(b"dump")
        (backups / manifest_name(name)).write_bytes(b"{}")
        manifest = Manifest(name, "shop", "shop on db", "h", f"{day}T03:00:00+00:00", 4, "ab" * 32, ())
        delivery = DeliveryState.SENT if night < NIGHTS - 1 else newest
        parts = tuple(replace(part, message_id=1000 + night) for part in plan_parts(name, [(4, "ab" * 32)]))
        store.add(Entry(replace(manifest, parts=parts), delivery))
        if chat_id is not None and delivery == DeliveryState.SENT:
            reference = ManifestRef(name, 2000 + night, f"manifest-{night}")
            store.record_delivered(replace(manifest, parts=parts), reference, None, chat_id=chat_id)
        names.append(name)
    store.close()
    return names


def start(tmp_path, start_daemon, **settings: str):
    environment = base_environment(
        tmp_path,
        "shop",
        **settings,
        TGBACKUPD_BACKUP_KEEP="2",
        TGBACKUPD_BACKUP_KEEP_WEEKLY="2",
        TGBACKUPD_BACKUP_KEEP_MONTHLY="6",
        TGBACKUPD_BACKUP_CATCH_UP="false",
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")
    return daemon


def test_list_marks_what_retention_keeps_and_prune_dry_run_shows_what_would_go(tmp_path, start_daemon):
    names = history(tmp_path)
    daemon = start(tmp_path, start_daemon)

    listed = daemon.ctl("list", "--json")
    assert listed.returncode == 0, listed.stderr
    reasons = {row["name"]: row["kept_because"] for row in json.loads(listed.stdout) if row["kept"]}
    assert reasons == {
        name_of(date(2026, 12, 1)): ["last 2", "weekly 2026-W49", "monthly 2026-12", "undelivered"],
        name_of(date(2026, 11, 30)): ["last 2", "monthly 2026-11", "newest good"],
        name_of(date(2026, 11, 29)): ["weekly 2026-W48"],
        name_of(date(2026, 10, 31)): ["monthly 2026-10"],
    }
    text = daemon.ctl("list").stdout
    assert text.splitlines()[0].endswith("VERIFIED  KEPT")
    assert f"{name_of(date(2026, 11, 29))}" in text and text.count("  drop") == NIGHTS - 4

    dry = daemon.ctl("prune", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == f"shop (keep = 2, keep_weekly = 2, keep_monthly = 6): would remove {NIGHTS - 4}"
    assert f"  keep    {name_of(date(2026, 11, 29)):<48} weekly 2026-W48" in lines
    assert f"  remove  {name_of(date(2026, 11, 28))}" in lines
    assert all((tmp_path / "backups" / name).exists() for name in names)  # a dry run removes nothing


def test_prune_removes_now_what_the_rules_drop_and_logs_it_as_the_daemon_does(tmp_path, start_daemon):
    names = history(tmp_path)
    daemon = start(tmp_path, start_daemon)

    pruned = daemon.ctl("prune", "--json")

    assert pruned.returncode == 0, pruned.stderr
    (series,) = json.loads(pruned.stdout)["data"]["series"]
    left = {path.name for path in (tmp_path / "backups").iterdir() if path.name.endswith(".sql.gz")}
    assert left == {name_of(date(2026, month, day)) for month, day in ((12, 1), (11, 30), (11, 29), (10, 31))}
    assert sorted(series["removed"]) == sorted(set(names) - left)
    assert not any((tmp_path / "backups" / manifest_name(name)).exists() for name in series["removed"])
    (removal,) = [event for event in events(daemon.log_text()) if event["event"] == "Removed old backups"]
    assert removal["keep"] == 2 and len(removal["removed"]) == NIGHTS - 4
    again = daemon.ctl("prune", "--dry-run")
    assert again.stdout.splitlines()[0].endswith("would remove 0")


def test_prune_without_the_daemon_says_that_it_needs_it(tmp_path, start_daemon):
    environment = base_environment(tmp_path, "shop")
    daemon = start_daemon(environment)  # never waited for: asked before it listens, or after it stopped
    daemon.stop()

    refused = daemon.ctl("prune", "--dry-run")

    assert refused.returncode == 69
    assert "prune asks the daemon, which knows each database's rules" in refused.stderr


def test_with_delete_old_prune_shows_and_then_deletes_the_parts_of_what_goes_from_the_chat(
    tmp_path, start_daemon, bot_api
):
    history(tmp_path, newest=DeliveryState.SENT, chat_id=CHAT_ID)
    daemon = start(
        tmp_path, start_daemon, **telegram_environment(bot_api), TGBACKUPD_TELEGRAM_DELETE_OLD="true"
    )

    dry = daemon.ctl("prune", "--dry-run")

    assert dry.returncode == 0, dry.stderr
    doomed = [line.split()[1] for line in dry.stdout.splitlines() if line.startswith("  chat ")]
    assert len(doomed) == NIGHTS - 4 and name_of(date(2026, 11, 28)) in doomed
    assert not any("/deleteMessage" in request for request in bot_api.state.requests)  # a dry run

    pruned = daemon.ctl("prune", "--json")

    assert pruned.returncode == 0, pruned.stderr
    (series,) = json.loads(pruned.stdout)["data"]["series"]
    assert series["chat_delete"] == doomed[:50]  # at most 50 messages a run (one part each here)
    (batch,) = [
        event for event in events(daemon.log_text()) if event["event"].startswith("Deleting at most 50")
    ]
    assert (batch["deleting"], batch["remaining"]) == (50, NIGHTS - 4 - 50)
    # The stand-in never had these messages: "message to delete not found" is taken for gone.
    assert sum("/deleteMessage" in request for request in bot_api.state.requests) == 50
    again = daemon.ctl("prune", "--json")
    (series,) = json.loads(again.stdout)["data"]["series"]
    assert series["chat_delete"] == doomed[50:]  # the rest, at the next run
    assert sum("/deleteMessage" in request for request in bot_api.state.requests) == NIGHTS - 4
    listed = daemon.ctl("list").stdout
    assert listed.count("manifest only") == NIGHTS - 4


def test_prune_and_list_leave_alone_a_series_no_entry_names(tmp_path, start_daemon):
    history(tmp_path)
    backups = tmp_path / "backups"
    old = [
        f"oldshop_backup_{date(2025, 1, 1) + timedelta(days=night):%Y%m%d}_030000.sql.gz"
        for night in range(30)
    ]
    for name in old:  # an old prefix's archive, from before a rename
        (backups / name).write_bytes(b"dump")
    daemon = start(tmp_path, start_daemon)

    listed = json.loads(daemon.ctl("list", "--json").stdout)
    dry = daemon.ctl("prune", "--dry-run")
    pruned = daemon.ctl("prune", "--json")

    assert [row["kept"] for row in listed if row["name"].startswith("oldshop_")] == [None] * 30
    assert "oldshop: not configured here: left alone" in dry.stdout.splitlines()
    assert pruned.returncode == 0, pruned.stderr
    by_series = {series["series"]: series for series in json.loads(pruned.stdout)["data"]["series"]}
    assert by_series["oldshop"]["configured"] is False and by_series["oldshop"]["removed"] == []
    assert len(by_series["shop"]["removed"]) == NIGHTS - 4
    assert all((backups / name).exists() for name in old)
