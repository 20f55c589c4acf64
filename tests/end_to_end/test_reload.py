"""Reloading the configuration of the real daemon process: SIGHUP and `tgbackupctl reload`, a good new
configuration (the schedule, the chat, the databases follow it), a bad one (rejected, the old one keeps
working), a reload while a backup runs, and the notify protocol's RELOADING=1 / READY=1."""

import json
import shutil
import signal
import time
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.conftest import base_environment, database_url, telegram_environment
from tests.end_to_end.conftest import FAST_RETRIES, assert_no_secret, events, status, wait_until

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")

OTHER_CHAT = "-100987654321"


@pytest.fixture
def two_chats():
    with BotApiStandIn(chats={CHAT_ID, OTHER_CHAT}) as server:
        yield server


def configure(path: Path, chat_id: str, hour: int, extra: str = "") -> None:
    path.write_text(f'[telegram]\nchat_id = "{chat_id}"\n[backup]\nhour = {hour}\n{extra}')


def start(tmp_path, dbname, bot_api, start_daemon, extra: str = "", **overrides: str | None):
    """The daemon with the chat and the hour in its configuration file (the environment would override a
    file's values: it holds only what the tests do not change)."""
    configure(tmp_path / "config.toml", CHAT_ID, 3, extra)
    environment = base_environment(
        tmp_path,
        dbname,
        **{**telegram_environment(bot_api), **FAST_RETRIES, "TELEGRAM_CHAT_ID": None, **overrides},
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")
    return daemon


def reload_messages(notify_messages: list[str]) -> list[str]:
    """The notify messages from the first RELOADING=1 on, as `RELOADING`/`READY`."""
    kinds = [
        "RELOADING" if "RELOADING=1" in message else "READY"
        for message in notify_messages
        if "RELOADING=1" in message or "READY=1" in message
    ]
    return kinds[kinds.index("RELOADING") :] if "RELOADING" in kinds else []


def test_sighup_with_a_good_configuration_moves_the_schedule_and_the_chat_and_tells_systemd(
    tmp_path, make_database, two_chats, start_daemon
):
    source = make_database(rows=20)
    daemon = start(tmp_path, source, two_chats, start_daemon)
    assert status(daemon)["next_run"].split("T")[1].startswith("03:00")

    configure(tmp_path / "config.toml", OTHER_CHAT, 5)
    daemon.process.send_signal(signal.SIGHUP)
    wait_until(lambda: reload_messages(daemon.notify.messages) == ["RELOADING", "READY"], timeout=20)

    reloading = next(m for m in daemon.notify.messages if "RELOADING=1" in m)
    assert (
        int(reloading.split("MONOTONIC_USEC=")[1].split("\n")[0])
        <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    )
    after = status(daemon)
    assert after["next_run"].split("T")[1].startswith("05:00") and after["backup_hour"] == 5
    assert after["telegram_chat_id"] == OTHER_CHAT
    assert after["reload"]["ok"] is True and after["reload"]["error"] is None
    assert after["reload"]["changed"] == ["telegram.chat_id", "backup.hour"]
    assert after["databases"][source]["next_run"].split("T")[1].startswith("05:00")

    triggered = daemon.ctl("trigger")
    assert triggered.returncode == 0, triggered.stderr
    assert [document.fields["chat_id"] for document in two_chats.documents()] == [OTHER_CHAT, OTHER_CHAT]
    reloaded = next(e for e in events(daemon.log_text()) if e["event"] == "Configuration reloaded")
    assert reloaded["level"] == "info" and reloaded["changed"] == ["telegram.chat_id", "backup.hour"]
    assert reloaded["next_run"].split("T")[1].startswith("05:00")
    text = daemon.ctl("status").stdout
    assert f"chat {OTHER_CHAT}" in text and "Last reload:" in text and "telegram.chat_id" in text
    assert daemon.stop() == 0
    assert_no_secret(daemon.log_text())


def test_a_bad_configuration_is_rejected_with_the_reason_and_the_old_one_keeps_working(
    tmp_path, make_database, two_chats, start_daemon
):
    source = make_database(rows=20)
    daemon = start(tmp_path, source, two_chats, start_daemon)

    configure(tmp_path / "config.toml", OTHER_CHAT, 25)  # no such hour; the new chat must not be taken
    reloaded = daemon.ctl("reload")

    assert reloaded.returncode == 78, reloaded.stdout + reloaded.stderr
    assert "Configuration reload failed; the running configuration stays" in reloaded.stderr
    assert "backup.hour" in reloaded.stderr
    assert reload_messages(daemon.notify.messages) == ["RELOADING", "READY"]
    after = status(daemon)
    assert after["reload"]["ok"] is False and "backup.hour" in after["reload"]["error"]
    assert after["telegram_chat_id"] == CHAT_ID and after["next_run"].split("T")[1].startswith("03:00")
    assert "REJECTED" in daemon.ctl("status").stdout
    failed = [e for e in events(daemon.log_text()) if e["event"].startswith("Configuration reload failed")]
    assert len(failed) == 1 and failed[0]["level"] == "error" and "backup.hour" in failed[0]["error"]

    triggered = daemon.ctl("trigger")  # the old configuration still works
    assert triggered.returncode == 0, triggered.stderr
    assert {document.fields["chat_id"] for document in two_chats.documents()} == {CHAT_ID}

    configure(tmp_path / "config.toml", OTHER_CHAT, 4)  # fixed: the next reload takes it
    again = daemon.ctl("reload", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["data"]["reload"]["changed"] == ["telegram.chat_id", "backup.hour"]
    assert status(daemon)["reload"]["ok"] is True
    assert daemon.stop() == 0


def test_a_reload_during_a_backup_lets_it_finish_under_the_old_configuration(
    tmp_path, make_database, two_chats, start_daemon
):
    source = make_database(rows=20)
    slow = tmp_path / "slow_pg_dump"
    slow.write_text(f'#!/bin/sh\nsleep 4\nexec {shutil.which("pg_dump")} "$@"\n')
    slow.chmod(0o755)
    daemon = start(tmp_path, source, two_chats, start_daemon, TGBACKUPD_DATABASE_PG_DUMP=str(slow))
    running = daemon.trigger_in_background()
    wait_until(lambda: status(daemon)["state"] == "running", timeout=10)

    configure(tmp_path / "config.toml", OTHER_CHAT, 3)
    reloaded = daemon.ctl("reload")
    during = status(daemon)

    assert reloaded.returncode == 0, reloaded.stderr
    assert reloaded.stdout.startswith("Configuration reloaded; changed: telegram.chat_id")
    assert during["state"] == "running" and during["running"]["database"].startswith(source)
    assert running.wait(60) == 0, running.stderr.read()
    first = two_chats.documents()
    assert first and {document.fields["chat_id"] for document in first} == {CHAT_ID}
    reloaded_event = next(e for e in events(daemon.log_text()) if e["event"] == "Configuration reloaded")
    assert reloaded_event["backup_running"] is True

    assert daemon.ctl("trigger").returncode == 0
    assert {document.fields["chat_id"] for document in two_chats.documents()[len(first) :]} == {OTHER_CHAT}
    assert daemon.stop() == 0


def test_a_reload_adds_a_database_and_names_the_key_that_waits_for_a_restart(
    tmp_path, make_database, two_chats, start_daemon
):
    first, second = make_database(rows=10), make_database(rows=10)
    entry = f'[[databases]]\nurl = "{database_url(first)}"\n'
    daemon = start(
        tmp_path, first, two_chats, start_daemon, entry, DATABASE_URL=None, TGBACKUPD_DAEMON_STATE_FILE=None
    )
    before = status(daemon)
    assert set(before["databases"]) == {first}

    configure(
        tmp_path / "config.toml",
        CHAT_ID,
        3,
        f'[daemon]\nstate_file = "{tmp_path / "elsewhere.db"}"\n{entry}'
        f'[[databases]]\nurl = "{database_url(second)}"\nhour = 6\n',
    )
    reloaded = daemon.ctl("reload")

    assert reloaded.returncode == 0, reloaded.stderr
    assert "daemon.state_file" in reloaded.stdout and "restart tgbackupd to apply it" in reloaded.stdout
    after = status(daemon)
    assert after["reload"]["restart_required"] == ["daemon.state_file"]
    assert "databases" in after["reload"]["changed"] and "daemon.state_file" not in after["reload"]["changed"]
    assert after["state_file"] == before["state_file"]  # the running one, until a restart
    assert after["databases"][second]["next_run"].split("T")[1].startswith("06:00")
    warned = [e for e in events(daemon.log_text()) if e.get("restart_required")]
    assert warned and warned[-1]["level"] == "warning"
    assert "restart tgbackupd to apply it" in warned[-1]["error"]

    assert daemon.ctl("trigger", second).returncode == 0
    assert not (tmp_path / "elsewhere.db").exists()
    assert daemon.stop() == 0
    assert FAKE_TOKEN not in daemon.log_text()


def test_a_reload_turns_the_chat_commands_on_and_then_follows_a_new_list_of_admins(
    tmp_path, make_database, bot_api, start_daemon
):
    first_admin, second_admin = 111111111, 333333333
    daemon = start(tmp_path, make_database(rows=5), bot_api, start_daemon)
    assert status(daemon)["chat_commands"] is None

    commands = "[telegram]\ncommands = true\nadmin_user_ids = [{admin}]\n"
    path = tmp_path / "config.toml"
    path.write_text(commands.format(admin=first_admin) + f'chat_id = "{CHAT_ID}"\n[backup]\nhour = 3\n')
    assert daemon.ctl("reload").returncode == 0
    wait_until(lambda: (status(daemon)["chat_commands"] or {}).get("state") == "polling", timeout=20)
    bot_api.write("/status", first_admin)
    wait_until(lambda: len(bot_api.messages_to(CHAT_ID)) == 1, timeout=20)

    path.write_text(commands.format(admin=second_admin) + f'chat_id = "{CHAT_ID}"\n[backup]\nhour = 3\n')
    assert daemon.ctl("reload").returncode == 0
    wait_until(lambda: (status(daemon)["chat_commands"] or {}).get("state") == "polling", timeout=20)
    bot_api.write("/status", first_admin)  # no longer an admin: ignored
    bot_api.write("/status", second_admin)
    wait_until(lambda: len(bot_api.messages_to(CHAT_ID)) == 2, timeout=20)
    ignored = [e for e in events(daemon.log_text()) if e["event"].startswith("Chat command ignored")]
    assert [e["user_id"] for e in ignored] == [first_admin]
    assert daemon.stop() == 0
