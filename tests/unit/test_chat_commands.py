"""Chat commands without the daemon: the configuration's checks, what an update must look like to count as
a command, what /last_error says, and the Bot API client's getUpdates and getWebhookInfo against the
stand-in (a real HTTP server)."""

import threading
import time
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tgbackupd.chat_commands import ALLOWED_UPDATES, ChatCommands, last_errors, parse_update
from tgbackupd.config import load_config
from tgbackupd.errors import ConfigError
from tgbackupd.statefile import open_store
from tgbackupd.telegram import BotApi, TelegramConflict

BASE = {
    "DATABASE_URL": "postgresql://localhost/db",
    "TELEGRAM_BOT_TOKEN": FAKE_TOKEN,
    "TELEGRAM_CHAT_ID": CHAT_ID,
}


def config_problems(tmp_path: Path, text: str, **environ: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {**BASE, **environ})
    return raised.value.problems


def test_admin_user_ids_come_from_a_toml_list_or_comma_separated_from_the_environment(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[telegram]\ncommands = true\nadmin_user_ids = [111, 222, 111]\n")
    assert load_config(str(path), BASE).telegram.admin_user_ids == (111, 222)
    environ = {**BASE, "TGBACKUPD_TELEGRAM_ADMIN_USER_IDS": "333, 444"}
    config = load_config(str(path), environ)
    assert config.telegram.commands and config.telegram.admin_user_ids == (333, 444)
    path.write_text("")
    assert load_config(str(path), BASE).telegram.commands is False


def test_commands_without_any_admin_is_a_configuration_error_that_says_what_to_do(tmp_path):
    (problem,) = config_problems(tmp_path, "[telegram]\ncommands = true\n")
    assert problem.startswith("telegram.commands = true, but telegram.admin_user_ids is empty")
    assert "@userinfobot" in problem


@pytest.mark.parametrize(
    ("text", "environ", "wanted"),
    [
        ('[telegram]\nadmin_user_ids = ["me"]\n', {}, "telegram.admin_user_ids[0] = 'me'"),
        ("[telegram]\nadmin_user_ids = [-5]\n", {}, "telegram.admin_user_ids[0] = '-5'"),
        ("[telegram]\nadmin_user_ids = [true]\n", {}, "telegram.admin_user_ids[0] = 'True'"),
        ("[telegram]\nadmin_user_ids = 5\n", {}, "telegram.admin_user_ids = 5 (from "),
        ("", {"TGBACKUPD_TELEGRAM_ADMIN_USER_IDS": "12,@me"}, "telegram.admin_user_ids[1] = '@me'"),
    ],
)
def test_an_admin_user_id_that_is_no_positive_integer_is_named(tmp_path, text, environ, wanted):
    (problem,) = config_problems(tmp_path, text, **environ)
    assert problem.startswith(wanted)


def test_commands_need_telegram_configured(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text("[telegram]\ncommands = true\nadmin_user_ids = [1]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(str(path), {"DATABASE_URL": "postgresql://localhost/db"})
    assert raised.value.problems == [
        "telegram.commands = true, but Telegram is not configured: chat commands need the bot token and "
        "telegram.chat_id too"
    ]


def update(text, **message_fields):
    message = {
        "message_id": 5,
        "date": 1_700_000_000,
        "chat": {"id": -100123, "type": "supergroup"},
        "from": {"id": 42, "is_bot": False, "first_name": "A"},
        "text": text,
        **message_fields,
    }
    return {"update_id": 900, "message": message}


def test_a_command_is_read_with_its_bot_name_and_argument():
    command = parse_update(update("/Backup@Backup_Bot  shop \n"))
    assert command is not None
    assert (command.word, command.bot_name, command.argument) == ("backup", "Backup_Bot", "shop")
    assert (command.update_id, command.chat_id, command.user_id, command.sent_at) == (
        900,
        -100123,
        42,
        1_700_000_000,
    )
    assert not command.user_is_bot


@pytest.mark.parametrize(
    "malformed",
    [
        None,
        [],
        {"update_id": "900", "message": update("/status")["message"]},
        {"update_id": True, "message": update("/status")["message"]},
        update("/status", chat="-100123"),
        update("/status", chat={"id": -100123, "type": "weird"}),
        update("/status", chat={"id": 1.5, "type": "group"}),
        update("/status", date="today"),
        update("/status", **{"from": {"id": "42"}}),
        update("/status", **{"from": 42}),
        {"update_id": 900, "message": {**update("/status")["message"], "text": ["/status"]}},
        update("/status " + "x" * 5000),
        update("hello, not a command"),
        {"update_id": 900, "edited_message": update("/status")["message"]},
    ],
)
def test_an_update_not_shaped_as_the_bot_api_documents_is_no_command(malformed):
    assert parse_update(malformed) is None


def test_a_channel_post_has_no_sender_and_a_bare_slash_no_word():
    post = update("/status")["message"]
    del post["from"]
    command = parse_update({"update_id": 1, "channel_post": post})
    assert command is not None and command.user_id is None
    nonsense = parse_update(update("/ÿ"))
    assert nonsense is not None and nonsense.word == ""


def test_last_error_names_each_failed_database_and_what_waits_for_telegram():
    status = {
        "last_backup": {"started_at": "2026-12-01T03:00:00+00:00", "file": "b.sql.gz", "size_bytes": 10},
        "databases": {
            "shop": {"last_backup": {"started_at": "2026-12-01T03:00:00+00:00", "error": "pg_dump: no"}},
            "blog": {"last_backup": {"started_at": "2026-12-01T03:01:00+00:00", "file": "b.sql.gz"}},
        },
        "pending": [{"name": "a.sql.gz", "attempts": 3, "last_error": "503 Service Unavailable"}],
    }
    assert last_errors(status) == (
        "shop: the backup started 2026-12-01T03:00:00+00:00 FAILED: pg_dump: no\n"
        "a.sql.gz waits for Telegram (attempt 3): 503 Service Unavailable"
    )
    assert last_errors({"last_backup": None}) == "No errors. Last backup: none yet"


@pytest.fixture
def stand_in():
    with BotApiStandIn() as server:
        yield server


def client(stand_in: BotApiStandIn) -> BotApi:
    return BotApi(stand_in.url, FAKE_TOKEN, timeout_s=10, retries=0)


def test_get_updates_waits_for_an_update_and_an_offset_confirms_those_before_it(stand_in):
    bot = client(stand_in)
    began = time.monotonic()
    assert bot.get_updates(None, 1, ALLOWED_UPDATES) == []
    assert 0.9 < time.monotonic() - began < 5  # the server held the request for the poll's timeout
    first = stand_in.write("/status", 42)
    second = stand_in.write("/list", 42, chat_id=42, chat_type="private")
    assert [u["update_id"] for u in bot.get_updates(None, 5, ALLOWED_UPDATES)] == [first, second]
    assert [u["update_id"] for u in bot.get_updates(second, 5, ALLOWED_UPDATES)] == [second]
    assert stand_in.pending_updates() == [second]
    assert bot.get_updates(second + 1, 0, ["channel_post"]) == [] and stand_in.pending_updates() == []


def test_a_webhook_is_told_by_get_webhook_info_and_makes_get_updates_a_conflict(stand_in):
    bot = client(stand_in)
    assert bot.get_webhook_info()["url"] == ""
    stand_in.set_webhook("https://example.invalid/hook")
    assert bot.get_webhook_info()["url"] == "https://example.invalid/hook"
    with pytest.raises(TelegramConflict) as raised:
        bot.get_updates(None, 1, ALLOWED_UPDATES)
    message = str(raised.value)
    assert "409 Conflict: can't use getUpdates method while webhook is active" in message
    assert "another program polls getUpdates" in message and FAKE_TOKEN not in message


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_stopped_poller_closes_its_connections_once_its_long_poll_ends(tmp_path, stand_in):
    environ = {
        **BASE,
        "TGBACKUPD_TELEGRAM_API_URL": stand_in.url,
        "TGBACKUPD_TELEGRAM_COMMANDS": "true",
        "TGBACKUPD_TELEGRAM_ADMIN_USER_IDS": "42",
    }
    config = load_config(None, environ)
    opened = open_store(tmp_path / "state.db")
    # An unknown command is answered without the daemon's Commands: none are needed here.
    chat = ChatCommands(config, None, opened.store, threading.Event())  # type: ignore[arg-type]
    chat.start()
    stand_in.write("/frobnicate", 42)
    wait_until(lambda: len(stand_in.messages()) == 1 and stand_in.state.polls >= 2)
    assert stand_in.open_connections() == 2  # the long poll's, and the answers'

    chat.stop()  # as a reload that changes telegram.* does; the long poll still waits
    stand_in.write("/status", 42)  # ends it: the stopped poller neither answers nor confirms it
    wait_until(lambda: stand_in.open_connections() == 0)
    assert len(stand_in.messages()) == 1 and len(stand_in.pending_updates()) == 1
    opened.store.close()
