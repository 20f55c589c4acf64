"""Reloading's plain logic: what changed (names only, never a secret), what waits for a restart, the
hand-over between the asker and the main loop, and the control socket's rights following a new group."""

import os
import threading
from pathlib import Path

from tests.unit.test_commands import ROOT, STRANGER, StandInBackup, commands
from tgbackupd.config import Config, load_config
from tgbackupd.control import ControlServer
from tgbackupd.reloading import (
    ReloadOutcome,
    ReloadRequests,
    changed_keys,
    keeping_restart_keys,
    needing_restart,
)

TOKEN = "123456789:fake-token-for-tests-only"
BASE = {
    "TELEGRAM_BOT_TOKEN": TOKEN,
    "TELEGRAM_CHAT_ID": "-100123",
    "DATABASE_URL": "postgresql://app:secret@localhost:5432/shop",
}


def config(tmp_path: Path, text: str = "", **environ: str) -> Config:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load_config(str(path), {**BASE, "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path / "b"), **environ})


def test_changed_keys_are_named_by_their_keys_and_a_changed_secret_by_its_name_only(tmp_path):
    running = config(tmp_path)
    new = config(
        tmp_path,
        '[backup]\nhour = 5\nformat = "custom"\n[daemon]\nlog_level = "debug"\n',
        TELEGRAM_BOT_TOKEN="987654321:another-token",
        DATABASE_URL="postgresql://app:other@localhost:5432/shop",
    )

    changed = changed_keys(running, new)

    assert changed == [
        "telegram.bot_token",
        "database.password",
        "backup.hour",
        "backup.format",
        "daemon.log_level",
    ]
    assert "another-token" not in repr(changed) and "other" not in "".join(changed)
    assert changed_keys(running, config(tmp_path)) == []


def test_entries_are_named_by_their_place_and_added_ones_as_databases(tmp_path):
    one = '[[databases]]\nname = "shop"\n'
    running = config(tmp_path, one)
    assert changed_keys(running, config(tmp_path, '[[databases]]\nname = "shop"\nhour = 6\n')) == [
        "databases[1]"
    ]
    assert changed_keys(running, config(tmp_path, one + '[[databases]]\nname = "crm"\n')) == ["databases"]


def test_the_keys_a_restart_applies_keep_their_running_values_and_are_named(tmp_path):
    running = config(tmp_path, '[[databases]]\nname = "shop"\n')
    read = config(
        tmp_path,
        f'[daemon]\nstate_file = "{tmp_path / "other.db"}"\nsocket = "{tmp_path / "other.sock"}"\n'
        '[[databases]]\nname = "shop"\n[[databases]]\nname = "crm"\n',
        TGBACKUPD_BACKUP_DIRECTORY=str(tmp_path / "elsewhere"),
    )

    applied = keeping_restart_keys(read, running)

    assert needing_restart(changed_keys(running, read)) == [
        "backup.directory",
        "daemon.socket",
        "daemon.state_file",
    ]
    assert changed_keys(running, applied) == ["databases"]
    assert applied.daemon.state_file == running.daemon.state_file
    assert {target.backup.directory for target in applied.databases} == {running.backup.directory}
    outcome = ReloadOutcome(
        "2026-12-03T08:00:00", ok=True, changed=("databases",), restart_required=("daemon.socket",)
    )
    assert outcome.message().endswith("restart tgbackupd to apply it (systemctl restart tgbackupd)")
    assert "daemon.socket cannot change while tgbackupd runs" in outcome.message()


def test_an_asker_gets_the_outcome_of_a_reload_begun_after_it_asked_and_none_when_none_comes():
    requests = ReloadRequests()
    older = ReloadOutcome("2026-12-03T08:00:00", ok=True)
    requests.finish(requests.begin(), older)  # a SIGHUP's reload, before anyone asked
    answers: list[ReloadOutcome | None] = []
    asker = threading.Thread(target=lambda: answers.append(requests.ask(10)))
    asker.start()
    while not requests.pending():
        threading.Event().wait(0.01)

    rejected = ReloadOutcome("2026-12-03T08:00:01", ok=False, error="backup.hour: expected an hour")
    requests.finish(requests.begin(), rejected)
    asker.join(10)

    assert answers == [rejected] and not requests.pending()
    assert requests.ask(0.05) is None  # nobody made it
    assert requests.last is rejected


def test_a_new_control_group_owns_the_listening_socket_at_once(tmp_path):
    server = ControlServer(tmp_path / "control.sock", lambda request, peer: {"data": {}}, None)
    server.start()
    try:
        assert (tmp_path / "control.sock").stat().st_gid == os.getegid()
        other = os.getegid() + 4242 if os.geteuid() == 0 else os.getegid()
        server.change_group(other)
        assert (tmp_path / "control.sock").stat().st_gid == other
        assert (tmp_path / "control.sock").stat().st_mode & 0o777 == 0o660
        server.change_group(None)
        assert (tmp_path / "control.sock").stat().st_gid == os.getegid()
    finally:
        server.close()


def test_reload_over_the_socket_is_for_those_who_may_trigger_and_answers_with_the_outcome(tmp_path):
    requests = ReloadRequests()
    served = commands(tmp_path, StandInBackup(), reloads=requests)
    rejected = ReloadOutcome("2026-12-03T08:00:00", ok=False, error="backup.hour = 25: expected an hour")

    def main_loop() -> None:
        while not requests.pending():
            threading.Event().wait(0.01)
        requests.finish(requests.begin(), rejected)

    loop = threading.Thread(target=main_loop)
    loop.start()
    refused = served.handle({"command": "reload"}, STRANGER)
    answered = served.handle({"command": "reload"}, ROOT)
    loop.join(10)

    assert (
        refused["error"]["code"] == "permission_denied"
        and "reload the configuration" in refused["error"]["message"]
    )
    assert answered["error"]["code"] == "reload_failed"
    assert answered["error"]["message"].startswith(
        "Configuration reload failed; the running configuration stays"
    )
    assert answered["error"]["reload"]["error"] == rejected.error
    assert served.status()["reload"] == rejected.describe()
    assert commands(tmp_path, StandInBackup()).handle({"command": "reload"}, ROOT)["error"]["code"] == (
        "unknown_command"
    )


def test_every_section_of_the_file_is_compared_the_newer_ones_too(tmp_path):
    running = config(tmp_path)
    new = config(tmp_path, '[verify]\nschedule = "weekly sun 04:30"\n')
    assert changed_keys(running, new) == ["verify.schedule"]
