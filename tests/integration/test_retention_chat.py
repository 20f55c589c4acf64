"""Retention in the chat (telegram.delete_old): real backups delivered to the Bot API stand-in, the parts
of those the rules drop deleted, the chain of manifests still walked from the chat alone, and Telegram's
refusals (no right to delete, older than 48 hours) said plainly, in the chat once."""

import json
import time
from dataclasses import replace
from datetime import datetime

import pytest
from structlog.testing import capture_logs

from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.conftest import backup_for, base_environment, database_url, psql, telegram_environment
from tests.integration.test_parts_and_restore import ctl, new_machine
from tests.integration.test_retention_directory import LOG, Nightly
from tgbackupd.config import KeepRules, load_config
from tgbackupd.errors import ConfigError
from tgbackupd.manifest import Manifest, ManifestRef, plan_parts
from tgbackupd.retention import Pruner
from tgbackupd.state import Entry
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState
from tgbackupd.storage import BackupDirectory
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


OTHER_CHAT = "-100777"


class Chat:
    """A store, a backup directory and the stand-in's chats, with backups delivered as the outbox records
    them: each part a real message in the chat it went to, and that chat recorded (or not: before it was)."""

    def __init__(self, tmp_path, bot_api, rules: KeepRules) -> None:
        bot_api.state.chats.add(OTHER_CHAT)
        (tmp_path / "backups").mkdir()
        self.bot_api = bot_api
        self.bot = BotApi(bot_api.url, FAKE_TOKEN, timeout_s=5, retries=0)
        self.store = open_store(tmp_path / "state.db").store
        self.pruner = Pruner(
            BackupDirectory(tmp_path / "backups", "shop"), self.store, rules, chat_id=CHAT_ID
        )
        self.parts: dict[str, list[int]] = {}

    def delivered(self, day: int, to: str | None = CHAT_ID, parts: int = 1, known: bool = True) -> str:
        """A backup of the night of `day` November delivered to `to` (None: before the chat was recorded;
        `known` False: its parts' messages unknown, as 0.1 left some)."""
        name = f"shop_backup_202611{day:02d}_030000.sql.gz"
        manifest = self._manifest(name, parts)
        self.store.add(Entry(manifest, DeliveryState.PENDING))
        ids = [
            self.bot.send_message(to or CHAT_ID, f"{name} part {index}").message_id for index in range(parts)
        ]
        self.parts[name] = ids
        sent = tuple(
            replace(part, message_id=ids[part.index - 1] if known or part.index > 1 else None, file_id="f")
            for part in manifest.parts
        )
        reference = ManifestRef(name, self.bot.send_message(to or CHAT_ID, "manifest").message_id, "m")
        self.store.record_delivered(replace(manifest, parts=sent), reference, None, chat_id=to)
        return name

    def pending(self, day: int) -> str:
        name = f"shop_backup_202611{day:02d}_030000.sql.gz"
        self.store.add(Entry(self._manifest(name, 1), DeliveryState.PENDING))
        return name

    @staticmethod
    def _manifest(name: str, parts: int) -> Manifest:
        planned = plan_parts(name, [(4, "ab" * 32)] * parts)
        return Manifest(
            name, "shop", "shop on db", "h", "2026-11-01T03:00:00+00:00", 4 * parts, "ab" * 32, planned
        )

    def deleted_from_chat(self) -> set[str]:
        return {row["name"] for row in self.store.listing() if row["parts_deleted_at"]}


def test_only_backups_recorded_as_delivered_to_the_current_chat_are_deleted_and_the_others_said_once(
    tmp_path, bot_api
):
    chat = Chat(tmp_path, bot_api, KeepRules(1))
    elsewhere = [chat.delivered(day, to=OTHER_CHAT) for day in (1, 2, 3)]  # telegram.chat_id named it then
    unrecorded = [chat.delivered(day, to=None) for day in (4, 5)]  # delivered before the chat was recorded
    here = [chat.delivered(day) for day in (6, 7, 8)]

    with capture_logs() as logs:
        deleted = chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)
    with capture_logs() as again:
        chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)

    assert deleted == [here[1], here[0]]
    assert sorted(bot_api.state.deleted) == sorted(chat.parts[here[0]] + chat.parts[here[1]])
    assert chat.deleted_from_chat() == set(here[:2])
    assert not any(chat.parts[name][0] in bot_api.state.deleted for name in elsewhere + unrecorded)
    (told,) = [log for log in logs if "does not say which chat" in log["event"]]
    assert told["backups"] == [unrecorded[1], unrecorded[0]]
    assert not any("does not say which chat" in log["event"] for log in again)  # once, not every night


def test_backups_waiting_for_telegram_take_no_place_of_those_in_the_chat(tmp_path, bot_api):
    chat = Chat(tmp_path, bot_api, KeepRules(3))
    sent = [chat.delivered(day) for day in range(1, 11)]
    for day in (11, 12, 13):  # the uploads of three nights failed: they wait in the outbox
        chat.pending(day)

    chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)

    assert chat.deleted_from_chat() == set(sent[:7])  # the chat keeps its 3 newest


def test_a_backup_whose_parts_messages_are_unknown_is_left_in_the_chat_not_recorded_deleted(
    tmp_path, bot_api
):
    chat = Chat(tmp_path, bot_api, KeepRules(1))
    half_known = chat.delivered(1, parts=2, known=False)
    whole = chat.delivered(2)
    chat.delivered(3)

    with capture_logs() as logs:
        deleted = chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)

    assert deleted == [whole] and chat.deleted_from_chat() == {whole}
    assert not set(chat.parts[half_known]) & set(bot_api.state.deleted)
    (told,) = [log for log in logs if "does not know the messages of their parts" in log["event"]]
    assert told["backups"] == [half_known]


def test_at_most_50_messages_are_deleted_a_run_and_the_rest_at_the_next(tmp_path, bot_api):
    chat = Chat(tmp_path, bot_api, KeepRules(1))
    doomed = [chat.delivered(day, parts=4) for day in range(1, 16)]  # 14 dropped, 56 messages
    newest = doomed.pop()

    with capture_logs() as logs:
        first = chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)
    deleted_first = len(bot_api.state.deleted)
    second = chat.pruner.prune_chat(chat.bot, CHAT_ID, LOG)

    assert first == doomed[::-1][:12] and deleted_first == 48
    (batch,) = [log for log in logs if log["event"].startswith("Deleting at most 50 messages")]
    assert (batch["deleting"], batch["remaining"]) == (12, 2)
    assert second == doomed[1::-1] and len(bot_api.state.deleted) == 56
    assert newest not in chat.deleted_from_chat()
