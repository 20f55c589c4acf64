"""Restore drills against the real server and the Bot API stand-in: real backups delivered to the chat,
then drilled from the chat alone (the local files are gone), counted and compared with what the
verification counted when each backup was made; a part damaged in the chat, a disk error or a bug fails
the drill (and that one only), and the chat, the log and status say why; the chat is searched once per
drill run, and no longer than backup.timeout."""

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.conftest import add_noise, base_environment, telegram_environment
from tests.end_to_end.test_encryption import age_key
from tgbackupd import drilling
from tgbackupd.config import Config, load_config
from tgbackupd.events import Drilled, Events, Listener
from tgbackupd.fleet import Fleet
from tgbackupd.runner import EVERY_DATABASE, Selection
from tgbackupd.state import StateStore
from tgbackupd.statefile import open_store
from tgbackupd.states import Trigger
from tgbackupd.storage import BackupDirectory

ROWS = 40  # the sample's customers; it has twice as many orders


class Heard(Listener):
    name = "heard"

    def __init__(self) -> None:
        self.heard: list[Drilled] = []

    def drilled(self, event: Drilled) -> None:
        self.heard.append(event)


def configured(
    tmp_path: Path, dbname: str, bot_api, verify_after: bool = True, globals: bool = False
) -> Config:
    (tmp_path / "config.toml").write_text(
        f"[backup]\nverify_after = {'true' if verify_after else 'false'}\n\n"
        f'[[databases]]\nname = "{dbname}"\nprefix = "shop"\n' + ("globals = true\n" if globals else "")
    )
    return load_config(None, base_environment(tmp_path, dbname, **telegram_environment(bot_api)))


def two_databases(tmp_path: Path, make_database, bot_api) -> tuple[Config, StateStore]:
    """Two series, `shop` and `depot`, in one chat; and the state store."""
    shop, depot = make_database(rows=ROWS), make_database(rows=ROWS)
    (tmp_path / "config.toml").write_text(
        "[backup]\nverify_after = true\n\n"
        f'[[databases]]\nname = "{shop}"\nprefix = "shop"\n\n'
        f'[[databases]]\nname = "{depot}"\nprefix = "depot"\n'
    )
    config = load_config(None, base_environment(tmp_path, shop, **telegram_environment(bot_api)))
    return config, open_store(config.daemon.state_file).store


def hurried(config: Config, timeout: int) -> Config:
    """`config` with backup.timeout = `timeout` for every entry."""
    entries = [
        dataclasses.replace(target, backup=dataclasses.replace(target.backup, timeout=timeout))
        for target in config.databases
    ]
    return dataclasses.replace(config, databases=tuple(entries))


def manifest_downloads(bot_api) -> int:
    """How many times a manifest was downloaded from the stand-in."""
    manifests = {
        bot_api.state.messages[d.message_id]["document"]["file_id"]
        for d in bot_api.documents()
        if (d.file_name or "").endswith(".json")
    }
    return sum(1 for path in bot_api.state.requests if path.rsplit("/", 1)[-1] in manifests)


def fleet_for(config: Config, store: StateStore, heard: Heard | None = None) -> Fleet:
    directory = BackupDirectory(config.backup.directory, config.backup.prefix, config.backup_suffix)
    return Fleet(config, store, directory, events=Events([heard] if heard else []))


def backed_up(config: Config, store: StateStore, selection: Selection = EVERY_DATABASE) -> str:
    """Back up, deliver to the stand-in, and remove every local backup file: the drill has only the chat."""
    results = fleet_for(config, store).run(Trigger.MANUAL, selection)
    assert all(result.succeeded for result in results), [result.error for result in results]
    for path in config.backup.directory.iterdir():
        if path.is_file() and "_backup_" in path.name:
            path.unlink()
    assert not [path for path in config.backup.directory.iterdir() if "_backup_" in path.name]
    name = results[0].file
    assert name is not None
    return name


def damage_first_part(bot_api, name: str) -> None:
    """Change one byte in the middle of the backup's first part in the chat: served so on every download."""
    part = next(
        d for d in bot_api.documents() if d.file_name.startswith(name) and not d.file_name.endswith(".json")
    )
    file_id = bot_api.state.messages[part.message_id]["document"]["file_id"]
    damaged = bytearray(bot_api.state.files[file_id])
    damaged[len(damaged) // 2] ^= 0xFF
    bot_api.state.files[file_id] = bytes(damaged)


def drill_messages(bot_api) -> list[str]:
    return [m.fields["text"] for m in bot_api.messages() if "Restore drill" in m.fields["text"]]


def test_a_drill_restores_the_latest_backup_from_the_chat_alone_and_counts_what_verification_counted(
    tmp_path, make_database, bot_api
):
    config = configured(tmp_path, make_database(rows=ROWS), bot_api, globals=True)
    store = open_store(config.daemon.state_file).store
    name = backed_up(config, store)
    heard = Heard()

    with capture_logs() as logs:
        results = fleet_for(config, store, heard).drill()

    assert len(results) == 1, "the server's globals are not drilled"
    (result,) = results
    assert result.ok, result.error
    assert (result.prefix, result.file, result.tables, result.rows) == ("shop", name, 2, ROWS * 3)
    assert (
        result.comparison
        == f"the same as its verification counted when it was made (2 tables, {ROWS * 3} rows)"
    )
    assert [(e.prefix, e.file, e.tables, e.rows, e.error) for e in heard.heard] == [
        ("shop", name, 2, ROWS * 3, None)
    ]
    passed = [entry for entry in logs if entry["event"] == "Restore drill passed"]
    assert passed and passed[0]["file"] == name and passed[0]["rows"] == ROWS * 3
    assert any("globals" in entry["event"] and entry["prefix"] == "shop_globals" for entry in logs)
    (message,) = drill_messages(bot_api)
    assert message.startswith(f"✅ Restore drill passed: {name}")
    assert f"2 tables, {ROWS * 3} rows" in message
    store.close()

    # Status survives a restart: the result is in the state store.
    reopened = open_store(config.daemon.state_file).store
    last = fleet_for(config, reopened).status(lambda slot: None)["shop"]["last_drill"]
    assert (last["ok"], last["file"], last["tables"], last["rows"], last["error"]) == (
        True,
        name,
        2,
        ROWS * 3,
        None,
    )
    reopened.close()


def test_a_part_damaged_in_the_chat_fails_the_drill_with_the_reason_in_chat_and_status(
    tmp_path, make_database, bot_api
):
    config = configured(tmp_path, make_database(rows=ROWS), bot_api)
    store = open_store(config.daemon.state_file).store
    name = backed_up(config, store)
    damage_first_part(bot_api, name)

    with capture_logs() as logs:
        (result,) = fleet_for(config, store).drill(Selection(database="shop"))

    assert not result.ok
    assert result.file == name and result.tables is None
    assert "could not be downloaded intact" in result.error and "SHA-256" in result.error
    failed = [entry for entry in logs if entry["event"] == "Restore drill failed"]
    assert failed and failed[0]["error"] == result.error
    (message,) = drill_messages(bot_api)
    assert message.startswith(f"❌ Restore drill FAILED: {name}")
    assert "could not be downloaded intact" in message and "tgbackupctl trigger shop" in message
    last = fleet_for(config, store).status(lambda slot: None)["shop"]["last_drill"]
    assert last["ok"] is False and last["error"] == result.error
    store.close()


def test_counts_that_differ_from_the_verifications_fail_the_drill_naming_both(
    tmp_path, make_database, bot_api
):
    config = configured(tmp_path, make_database(rows=ROWS), bot_api)
    store = open_store(config.daemon.state_file).store
    name = backed_up(config, store)
    entry = store.entry(name)
    assert entry is not None and entry.facts is not None
    store.record_verified(
        name,
        True,
        {**entry.facts, "verification": "verified: restored into a scratch database, 2 tables, 7 rows"},
    )

    (result,) = fleet_for(config, store).drill()

    assert not result.ok
    assert result.rows == ROWS * 3
    assert result.error == (
        f"restored from the chat it has 2 tables and {ROWS * 3} rows, but its verification counted 2 tables, "
        "7 rows when it was made: the backup in the chat is not the one that was verified"
    )
    (message,) = drill_messages(bot_api)
    assert "7 rows" in message and "FAILED" in message
    store.close()


def test_a_backup_made_without_verification_passes_with_no_earlier_count_to_compare_with(
    tmp_path, make_database, bot_api
):
    config = configured(tmp_path, make_database(rows=ROWS), bot_api, verify_after=False)
    store = open_store(config.daemon.state_file).store
    backed_up(config, store)

    (result,) = fleet_for(config, store).drill()

    assert result.ok, result.error
    assert result.comparison == "no earlier count to compare with"
    assert "no earlier count to compare with" in drill_messages(bot_api)[0]
    store.close()


def test_without_telegram_a_drill_fails_saying_it_needs_the_chat(tmp_path, make_database):
    dbname = make_database(rows=ROWS)
    (tmp_path / "config.toml").write_text(f'[[databases]]\nname = "{dbname}"\nprefix = "shop"\n')
    config = load_config(None, base_environment(tmp_path, dbname))
    store = open_store(config.daemon.state_file).store

    (result,) = fleet_for(config, store).drill()

    assert not result.ok and "Telegram is not configured" in (result.error or "")
    stored = json.loads(store.meta("last_drills") or "{}")
    assert stored["shop"]["ok"] is False
    store.close()


def test_a_drill_past_backup_timeout_is_stopped_and_says_so(tmp_path, make_database, bot_api):
    config = configured(tmp_path, make_database(rows=ROWS), bot_api)
    store = open_store(config.daemon.state_file).store
    backed_up(config, store)
    config = hurried(config, 1)
    bot_api.state.on_download = lambda file_id: time.sleep(2)  # a chat that answers slowly

    (result,) = fleet_for(config, store).drill()

    assert not result.ok
    assert (result.error or "").startswith("the drill took longer than backup.timeout = 1 s"), result.error
    store.close()


@pytest.mark.skipif(shutil.which("age") is None, reason="needs age")
def test_an_encrypted_custom_format_backup_in_several_parts_is_drilled_with_the_identity(
    tmp_path, make_database, bot_api
):
    dbname = make_database(rows=ROWS)
    add_noise(dbname, 3)  # 24 rows of random bytes: several parts of 1 MB
    identity, recipient = age_key(tmp_path)
    (tmp_path / "config.toml").write_text(
        f'[backup]\nverify_after = true\nformat = "custom"\n\n[telegram]\npart_size_mb = 1\n\n'
        f'[encryption]\nrecipients = ["{recipient}"]\nidentity_file = "{identity}"\n\n'
        f'[[databases]]\nname = "{dbname}"\nprefix = "shop"\n'
    )
    config = load_config(None, base_environment(tmp_path, dbname, **telegram_environment(bot_api)))
    store = open_store(config.daemon.state_file).store
    name = backed_up(config, store)
    assert name.endswith(".dump.gz.age")
    assert len([d for d in bot_api.documents() if d.file_name.startswith(name + ".")]) > 2

    (result,) = fleet_for(config, store).drill()

    assert result.ok, result.error
    assert (result.file, result.tables, result.rows) == (name, 3, ROWS * 3 + 24)
    assert result.comparison is not None and result.comparison.startswith("the same as its verification")
    store.close()


def test_a_disk_error_fails_the_drill_saying_where_and_what_to_do_and_the_next_database_is_drilled(
    tmp_path, make_database, bot_api, monkeypatch
):
    config, store = two_databases(tmp_path, make_database, bot_api)
    backed_up(config, store)
    gone = tmp_path / "no-such-directory"
    monkeypatch.setattr(tempfile, "tempdir", str(gone))  # where the drill downloads to, as TMPDIR sets it
    heard = Heard()

    results = fleet_for(config, store, heard).drill()

    assert [(result.prefix, result.ok) for result in results] == [("shop", False), ("depot", False)]
    for result in results:
        assert result.error is not None and result.error.startswith(
            "a disk error stopped the drill: [Errno 2] No such file or directory: "
        )
        assert f"It downloads the backup to a temporary directory under {gone}: make room" in result.error
        assert f"run `tgbackupctl drill {result.prefix}` again" in result.error
    assert [(event.prefix, event.error) for event in heard.heard] == [(r.prefix, r.error) for r in results]
    assert [message.split(":")[0] for message in drill_messages(bot_api)] == ["❌ Restore drill FAILED"] * 2
    stored = json.loads(store.meta("last_drills") or "{}")
    assert {prefix: stored[prefix]["error"] for prefix in stored} == {r.prefix: r.error for r in results}
    store.close()


def test_a_drill_that_crashes_fails_as_itself_and_the_next_database_is_still_drilled(
    tmp_path, make_database, bot_api, monkeypatch
):
    config, store = two_databases(tmp_path, make_database, bot_api)
    backed_up(config, store)
    real_drill = drilling._drill

    def buggy(backup, *rest):
        if backup.prefix == "shop":
            raise ZeroDivisionError("a bug")  # no failure a real server can be made to cause
        return real_drill(backup, *rest)

    monkeypatch.setattr(drilling, "_drill", buggy)
    heard = Heard()

    with capture_logs() as logs:
        shop, depot = fleet_for(config, store, heard).drill()

    assert shop.prefix == "shop" and not shop.ok
    assert shop.error == "internal error: ZeroDivisionError; the log has the details (please report it)"
    assert depot.prefix == "depot" and depot.ok, depot.error
    crashed = [entry for entry in logs if entry["event"].startswith("Restore drill crashed unexpectedly")]
    assert len(crashed) == 1 and crashed[0]["prefix"] == "shop" and crashed[0]["exc_info"] is True
    assert [(event.prefix, event.error) for event in heard.heard] == [("shop", shop.error), ("depot", None)]
    failed, passed = drill_messages(bot_api)
    assert failed.startswith("❌ Restore drill FAILED") and "internal error" in failed
    assert passed.startswith("✅ Restore drill passed")
    last = fleet_for(config, store).status(lambda slot: None)
    assert (last["shop"]["last_drill"]["error"], last["depot"]["last_drill"]["ok"]) == (shop.error, True)
    store.close()


def test_the_chat_is_read_once_per_drill_run_and_a_series_not_in_it_says_so(tmp_path, make_database, bot_api):
    config, store = two_databases(tmp_path, make_database, bot_api)
    for _ in range(3):  # three backups of shop in the chat, none of depot
        backed_up(config, store, Selection(database="shop"))
    bot_api.state.requests.clear()

    shop, depot = fleet_for(config, store).drill()

    assert shop.ok, shop.error
    assert depot.error == (
        f"no backup of depot is in chat {config.telegram.chat_id}: none among the 3 manifest(s) reached from "
        "the pinned one (was it never delivered, or was the pinned message changed?)"
    )
    assert [path for path in bot_api.state.requests if path.endswith("/getChat")] == [
        f"/bot{config.telegram.bot_token}/getChat"
    ]
    assert manifest_downloads(bot_api) == 3, "each manifest is downloaded once"
    store.close()


def test_a_search_of_the_chat_past_backup_timeout_is_stopped_and_says_so(tmp_path, make_database, bot_api):
    config, store = two_databases(tmp_path, make_database, bot_api)
    for _ in range(4):  # four manifests of shop to walk through, looking for depot's
        backed_up(config, store, Selection(database="shop"))
    bot_api.state.requests.clear()
    bot_api.state.on_download = lambda file_id: time.sleep(0.7)  # a chat that answers slowly

    (depot,) = fleet_for(hurried(config, 1), store).drill(Selection(database="depot"))

    assert (depot.error or "").startswith("the drill took longer than backup.timeout = 1 s"), depot.error
    assert manifest_downloads(bot_api) < 4, "the walk stopped at the time limit"
    store.close()
