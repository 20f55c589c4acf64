"""Commands in the chat against the real daemon: admins write in the stand-in's chat, the daemon long-polls
getUpdates, answers, and backs up the real PostgreSQL database; everyone else is ignored and logged."""

import contextlib
import gzip
import itertools
import shutil
import threading
import time

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, Fault
from tests.end_to_end.conftest import events, fake_pg_dump, status, wait_until
from tgbackupd.telegram import BotApi, TelegramConflict

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")

ADMIN = 111111111
STRANGER = 222222222
OTHER_GROUP = "-100555555555"
COMMANDS_ON = {"TGBACKUPD_TELEGRAM_COMMANDS": "true", "TGBACKUPD_TELEGRAM_ADMIN_USER_IDS": str(ADMIN)}


def polling(daemon) -> bool:
    return (status(daemon)["chat_commands"] or {}).get("state") == "polling"


def answers(bot_api, chat_id, count: int, timeout: float = 30.0) -> list[str]:
    """The first `count` texts sent to a chat, once there are that many."""
    wait_until(lambda: len(bot_api.messages_to(chat_id)) >= count, timeout)
    return bot_api.messages_to(chat_id)[:count]


def test_an_admin_gets_status_a_real_backup_the_list_and_the_last_error(make_database, bot_api, daemon_for):
    source = make_database(rows=50)
    daemon = daemon_for(source, **COMMANDS_ON)
    wait_until(lambda: polling(daemon))

    bot_api.write("/status", ADMIN)
    (answer,) = answers(bot_api, CHAT_ID, 1)
    assert answer.startswith("tgbackupd ") and ": idle" in answer.splitlines()[0]
    assert f"Database:          {source} on " in answer
    assert "Chat commands:     answered to 1 admin(s)" in answer

    bot_api.write("/backup@backup_test_bot", ADMIN)
    started, result = answers(bot_api, CHAT_ID, 3, timeout=60)[1:]
    assert started == "Backup of every database started; the result follows when it ends."
    assert result.startswith("Manual backup completed successfully\nFile:")
    part, _manifest = bot_api.documents()
    assert part.file_name in result
    dump = gzip.decompress(part.content).decode()
    assert "CREATE TABLE" in dump and "PostgreSQL database dump complete" in dump

    bot_api.write("/list", ADMIN)
    bot_api.write("/last_error", ADMIN)
    bot_api.write("/frobnicate now", ADMIN)
    listed, last_error, unknown = answers(bot_api, CHAT_ID, 6)[3:]
    assert part.file_name in listed and "sent (#" in listed
    assert last_error.startswith("No errors. Last backup: ") and part.file_name in last_error
    assert unknown.startswith("Unknown command. Commands: /status, /backup")

    bot_api.write("/status", ADMIN, chat_id=ADMIN, chat_type="private")
    (private,) = answers(bot_api, ADMIN, 1)
    assert private.startswith("tgbackupd ") and part.file_name in private
    received = [e for e in events(daemon.log_text()) if e["event"] == "Chat command received"]
    assert [(e["user_id"], e["command"]) for e in received][-2:] == [(ADMIN, "frobnicate"), (ADMIN, "status")]
    assert "now" not in [value for e in received for value in e.values()]
    assert daemon.stop() == 0


def test_commands_from_anyone_else_or_anywhere_else_are_ignored_and_logged(
    make_database, bot_api, daemon_for
):
    daemon = daemon_for(make_database(rows=5), **COMMANDS_ON)
    wait_until(lambda: polling(daemon))

    bot_api.write("/backup private-words-here", STRANGER)
    bot_api.write("/status", STRANGER, chat_id=STRANGER, chat_type="private")
    bot_api.write("/backup", ADMIN, chat_id=OTHER_GROUP)
    bot_api.write("/backup", None, chat_id=CHAT_ID, chat_type="channel")
    bot_api.write("/backup@some_other_bot", ADMIN)
    bot_api.write("/status", ADMIN)  # handled after all of the above: they come in order

    (answer,) = answers(bot_api, CHAT_ID, 1)
    assert answer.startswith("tgbackupd ")
    time.sleep(1)  # anything more would have been sent by now
    assert len(bot_api.messages()) == 1 and bot_api.documents() == []
    assert bot_api.messages_to(STRANGER) == [] and bot_api.messages_to(OTHER_GROUP) == []
    log_text = daemon.log_text()
    ignored = [
        (e["user_id"], e["chat_id"], e["command"])
        for e in events(log_text)
        if e["event"].startswith("Chat command ignored")
    ]
    assert ignored == [
        (STRANGER, int(CHAT_ID), "backup"),
        (STRANGER, STRANGER, "status"),
        (ADMIN, int(OTHER_GROUP), "backup"),
        (None, int(CHAT_ID), "backup"),
    ]
    assert "private-words-here" not in log_text
    assert "a channel post names no sender" in log_text
    assert daemon.stop() == 0


def test_a_restart_never_runs_a_backup_again_nor_one_sent_while_it_was_down(
    make_database, bot_api, daemon_for
):
    source = make_database(rows=5)
    daemon = daemon_for(source, **COMMANDS_ON)
    wait_until(lambda: polling(daemon))
    backup_update = bot_api.write("/backup", ADMIN)
    answers(bot_api, CHAT_ID, 2, timeout=60)
    assert len(bot_api.documents()) == 2  # the part and the manifest
    assert daemon.stop() == 0

    # Telegram hands the /backup out again (its confirmation was lost), and a /backup waited an hour.
    bot_api.hand_out_again(backup_update)
    bot_api.write("/backup", ADMIN, sent_at=int(time.time()) - 3600)
    bot_api.write("/status", ADMIN)
    again = daemon_for(source, **COMMANDS_ON)

    texts = answers(bot_api, CHAT_ID, 4, timeout=60)[2:]
    assert "came before tgbackupd started: send it again if wanted" in texts[0]
    assert texts[0].startswith("/backup of ")
    assert texts[1].startswith("tgbackupd ")
    time.sleep(1)
    assert len(bot_api.documents()) == 2 and len(bot_api.messages()) == 4
    assert bot_api.pending_updates() == []
    assert again.stop() == 0


def test_a_webhook_is_reported_and_not_polled(make_database, bot_api, daemon_for):
    bot_api.set_webhook("https://example.invalid/hook")
    daemon = daemon_for(make_database(rows=5), **COMMANDS_ON)

    wait_until(lambda: (status(daemon)["chat_commands"] or {}).get("state") == "webhook_set")
    text = daemon.ctl("status").stdout
    assert "Chat commands:     WEBHOOK_SET: this bot token has a webhook set" in text
    assert "deleteWebhook" in text
    logged = [
        e for e in events(daemon.log_text()) if e["event"] == "Chat commands are off: the bot has a webhook"
    ]
    assert len(logged) == 1 and logged[0]["level"] == "error"
    assert not any(path.endswith("/getUpdates") for path in bot_api.state.requests)
    assert daemon.stop() == 0


def test_a_conflict_is_reported_and_retried_with_growing_delays_until_it_ends(
    make_database, bot_api, daemon_for
):
    daemon = daemon_for(make_database(rows=5), **COMMANDS_ON)
    wait_until(lambda: polling(daemon))

    bot_api.set_webhook("https://example.invalid/hook")  # the poll in flight ends with 409 at once
    wait_until(lambda: (status(daemon)["chat_commands"] or {}).get("state") == "failing")
    began = len(bot_api.state.requests)
    time.sleep(6)
    polls = [path for path in bot_api.state.requests[began:] if path.endswith("/getUpdates")]
    assert 1 <= len(polls) <= 3  # after 1, 2, 4 s: no busy loop
    assert "409 Conflict" in status(daemon)["chat_commands"]["problem"]
    conflicts = [e for e in events(daemon.log_text()) if "409 Conflict" in e["event"]]
    assert conflicts and "another program polls getUpdates" in conflicts[0]["error"]

    bot_api.set_webhook("")
    bot_api.write("/status", ADMIN)
    assert answers(bot_api, CHAT_ID, 1, timeout=40)[0].startswith("tgbackupd ")
    assert polling(daemon)
    stopping = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - stopping < 10  # a long poll in flight does not hold the shutdown up


def test_network_errors_are_retried_after_growing_delays_then_commands_are_answered(
    make_database, bot_api, daemon_for
):
    bot_api.fail_next(*[Fault(action="reset")] * 3)  # the first three requests: getMe, getMe, getMe
    daemon = daemon_for(make_database(rows=5), **COMMANDS_ON)

    wait_until(lambda: polling(daemon), timeout=30)
    asked = [when for when, method in bot_api.state.posts if method == "getMe"]
    assert len(asked) == 4
    gaps = [later - earlier for earlier, later in itertools.pairwise(asked)]
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9 and gaps[2] >= 3.9  # 1, 2, 4 s: never a busy loop
    failed = [e for e in events(daemon.log_text()) if e["event"].startswith("Chat commands not started")]
    assert [e["retry_in_s"] for e in failed] == [1.0, 2.0, 4.0]
    bot_api.write("/status", ADMIN)
    assert answers(bot_api, CHAT_ID, 1)[0].startswith("tgbackupd ")
    assert daemon.stop() == 0


def test_a_second_poller_on_the_same_token_is_a_conflict_reported_until_it_goes(
    make_database, bot_api, daemon_for
):
    daemon = daemon_for(make_database(rows=5), **COMMANDS_ON)
    wait_until(lambda: polling(daemon))
    other = BotApi(bot_api.url, FAKE_TOKEN, timeout_s=30, retries=0)
    other_got: list = []

    def poll_as_another_program() -> None:  # long polls of its own for a few seconds
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            with contextlib.suppress(TelegramConflict):
                other_got.extend(other.get_updates(None, 1, ["message"]))

    poller = threading.Thread(target=poll_as_another_program)
    poller.start()
    wait_until(lambda: (status(daemon)["chat_commands"] or {}).get("state") == "failing", timeout=10)
    problem = status(daemon)["chat_commands"]["problem"]
    assert "409 Conflict: terminated by other getUpdates request" in problem
    assert "another program polls getUpdates with this bot token" in problem
    poller.join(10)
    other.close()

    bot_api.write("/status", ADMIN)
    assert answers(bot_api, CHAT_ID, 1, timeout=40)[0].startswith("tgbackupd ")
    assert polling(daemon)
    assert daemon.stop() == 0


def test_a_backup_asked_for_in_the_chat_is_answered_after_a_reload_replaced_the_poller(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=5)
    slow = fake_pg_dump(tmp_path, f'sleep 4\nexec {shutil.which("pg_dump")} "$@"')
    config = tmp_path / "config.toml"
    config.write_text("[telegram]\ntimeout = 40\n")
    daemon = daemon_for(source, **COMMANDS_ON, TGBACKUPD_DATABASE_PG_DUMP=slow)
    wait_until(lambda: polling(daemon))
    bot_api.write("/backup", ADMIN)
    answers(bot_api, CHAT_ID, 1)
    assert status(daemon)["state"] == "running"

    config.write_text("[telegram]\ntimeout = 41\n")  # a telegram.* key: the poller is replaced
    reloaded = daemon.ctl("reload")
    assert reloaded.returncode == 0 and "telegram.timeout" in reloaded.stdout, reloaded.stderr

    result = answers(bot_api, CHAT_ID, 2, timeout=60)[1]
    assert result.startswith("Manual backup completed successfully\nFile:")
    bot_api.write("/status", ADMIN)  # the new poller answers
    assert answers(bot_api, CHAT_ID, 3)[2].startswith("tgbackupd ")
    assert daemon.stop() == 0
