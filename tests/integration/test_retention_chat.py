"""Retention in the chat (telegram.delete_old): real backups delivered to the Bot API stand-in, the parts
of those the rules drop deleted, the chain of manifests still walked from the chat alone, and Telegram's
refusals (no right to delete, older than 48 hours) said plainly, in the chat once."""

import json
import time
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.conftest import backup_for, base_environment, database_url, psql, telegram_environment
from tests.integration.test_parts_and_restore import ctl, new_machine
from tests.integration.test_retention_directory import Nightly
from tgbackupd.config import load_config
from tgbackupd.errors import ConfigError
from tgbackupd.telegram import BotApi, MessageNotDeletable

# Sunday 29 November 2026 (ISO week 48), then Monday to Wednesday of week 49.
FIRST_NIGHT = datetime(2026, 11, 29, 3, 0)
RULES = {
    "TGBACKUPD_BACKUP_KEEP": "1",
    "TGBACKUPD_BACKUP_KEEP_WEEKLY": "2",
    "TGBACKUPD_TELEGRAM_DELETE_OLD": "true",
}


def nightly_backups(tmp_path, source, bot_api, nights: int, every_days: int = 1, **settings: str):
    """A backup every `every_days` nights, each delivered and followed by retention, the stand-in's time
    being the backups' own; (the backup, the results, the logs)."""
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api), **{**RULES, **settings})
    clock = Nightly(FIRST_NIGHT.astimezone())
    bot_api.state.wall_clock = lambda: clock.now().timestamp()
    backup = backup_for(load_config(None, environment), clock=clock)
    results = []
    with capture_logs() as logs:
        for _ in range(nights):
            results.append(backup.run("scheduled"))
            assert results[-1].succeeded, results[-1].error
            for _ in range(every_days):
                clock.next_night()
    return backup, results, logs


def message_ids(backup, name: str) -> list[int]:
    entry = backup.store.entry(name)
    return [part.message_id for part in entry.manifest.parts]


def test_the_parts_of_dropped_backups_leave_the_chat_and_the_chain_still_reaches_the_older_kept_one(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=50)
    backup, results, logs = nightly_backups(tmp_path, source, bot_api, nights=4)
    sunday, monday, tuesday, wednesday = (result.file for result in results)

    # Kept: Wednesday (keep = 1; weekly W49) and Sunday (weekly W48). Monday and Tuesday go.
    dropped_parts = message_ids(backup, monday) + message_ids(backup, tuesday)
    assert sorted(bot_api.state.deleted) == sorted(dropped_parts)
    assert not set(bot_api.state.deleted) & {result.message_id for result in results}  # manifests stay
    listing = {row["name"]: row for row in backup.store.listing()}
    assert [name for name in listing if listing[name]["parts_deleted_at"]] == [tuesday, monday]
    deletions = [log for log in logs if log["event"].startswith("Deleted old backups' parts from the chat")]
    assert [log["deleted"] for log in deletions] == [[monday], [tuesday]]

    machine = new_machine(tmp_path, bot_api)
    remote = ctl(machine, "list", "--remote", "--json")
    restored = make_database(empty=True)
    restore = ctl(machine, "restore", "--from-telegram", sunday, "--dbname", database_url(restored))

    assert remote.returncode == 0, remote.stderr
    assert [row["name"] for row in json.loads(remote.stdout)] == [wednesday, tuesday, monday, sunday]
    assert restore.returncode == 0, restore.stderr
    assert psql(restored, "SELECT count(*) FROM orders") == psql(source, "SELECT count(*) FROM orders")
    gone = ctl(machine, "restore", "--from-telegram", monday, "--dbname", database_url(restored))
    assert gone.returncode == 65 and "is missing from Telegram (was its message deleted?)" in gone.stderr


def test_where_telegram_refuses_nothing_is_marked_deleted_the_log_says_why_and_the_chat_hears_it_once(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=10)
    bot_api.state.can_delete_messages = False  # the bot may post, and delete what is under 48 hours old

    # keep = 1 alone, a backup every third night: each backup dropped is three days old.
    backup, _, logs = nightly_backups(
        tmp_path, source, bot_api, 4, every_days=3, TGBACKUPD_BACKUP_KEEP_WEEKLY="0"
    )

    assert bot_api.state.deleted == []
    assert not any(row["parts_deleted_at"] for row in backup.store.listing())
    refusals = [log for log in logs if log["event"].startswith("Telegram refused to delete old backups")]
    assert [refusal["not_deleted"] for refusal in refusals] == [1, 2, 3]
    assert "48 hours" in refusals[-1]["error"] and '"Delete messages"' in refusals[-1]["error"]
    notices = [message for message in bot_api.messages() if "refused to delete" in message.fields["text"]]
    assert len(notices) == 1

    bot_api.state.can_delete_messages = True  # the administrator gives the bot the right
    with capture_logs() as later:
        assert backup.run("scheduled").succeeded

    assert len(bot_api.state.deleted) == 4  # the parts of the four older backups, one each
    assert any(log["event"].startswith("Deleted old backups' parts") for log in later)
    assert backup.store.meta("chat_deletion_refused_told_at") is None  # a new refusal is told again


def test_delete_old_without_any_rule_is_refused_rather_than_emptying_the_chat(tmp_path):
    environment = base_environment(
        tmp_path,
        "shop",
        TELEGRAM_BOT_TOKEN="1:x",
        TELEGRAM_CHAT_ID="-1001",
        TGBACKUPD_BACKUP_KEEP="0",
        TGBACKUPD_TELEGRAM_DELETE_OLD="true",
    )

    with pytest.raises(ConfigError, match="would delete every backup but the newest from the chat"):
        load_config(None, environment)
    assert load_config(None, {**environment, "TGBACKUPD_BACKUP_KEEP_DAILY": "7"}).telegram.delete_old


def test_delete_message_answers_as_telegram_does_deleted_gone_already_or_refused(bot_api):
    bot = BotApi(bot_api.url, FAKE_TOKEN, timeout_s=5, retries=0)
    first = bot.send_message(CHAT_ID, "one").message_id
    second = bot.send_message(CHAT_ID, "two").message_id

    assert bot.delete_message(CHAT_ID, first) is True
    assert bot.delete_message(CHAT_ID, first) is False  # "message to delete not found": gone already
    bot_api.state.can_delete_messages = False
    assert bot.delete_message(CHAT_ID, second) is True  # its own, under 48 hours old: no right needed

    third = bot.send_message(CHAT_ID, "three").message_id
    bot_api.state.wall_clock = lambda: time.time() + 48 * 3600
    with pytest.raises(MessageNotDeletable, match=r"400 Bad Request: message can't be deleted.*48 hours"):
        bot.delete_message(CHAT_ID, third)
    assert bot_api.state.deleted == [first, second]
