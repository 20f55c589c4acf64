"""Dispatch and authorization of control commands, with no socket: a runner over a stand-in backup."""

import os
import threading
from pathlib import Path

import pytest
import structlog

from tests.conftest import SteppingClock
from tgbackupd.backup import BackupResult
from tgbackupd.clock import Clock
from tgbackupd.commands import Commands, peer_may_trigger, status_line
from tgbackupd.config import load_config
from tgbackupd.control import Peer
from tgbackupd.delivery import Sending
from tgbackupd.outbox import Outbox
from tgbackupd.reloading import ReloadRequests
from tgbackupd.runner import BackupRunner
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState
from tgbackupd.storage import BackupDirectory
from tgbackupd.telegram import ChatPacer

ROOT = Peer(pid=1, uid=0, gid=0)
NOBODY = Peer(pid=2, uid=65534, gid=65534)
STRANGER = Peer(pid=3, uid=4242, gid=4242)
MB = 1024 * 1024


def result(trigger: str, error: str | None = None) -> BackupResult:
    return BackupResult(
        trigger=trigger,
        database="shop",
        started_at="2025-12-03T03:00:00+00:00",
        duration_s=1.5,
        file="shop_backup_20251203_030000.sql.gz",
        path="/b/shop_backup_20251203_030000.sql.gz",
        size_bytes=2048,
        sha256="ab" * 32,
        delivery=DeliveryState.NOT_ATTEMPTED if error else DeliveryState.SENT,
        message_id=5,
        error=error,
    )


class StandInBackup:
    """Blocks until released, so tests can see a backup that is running."""

    def __init__(self, error: str | None = None) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.error = error

    def run(self, trigger: str) -> BackupResult:
        self.started.set()
        self.release.wait(10)
        return result(trigger, self.error)


def commands(
    tmp_path: Path,
    backup: StandInBackup,
    sending: Sending | None = None,
    reloads: ReloadRequests | None = None,
    **environ: str,
) -> Commands:
    config = load_config(
        _config_file(tmp_path),
        {
            "DATABASE_URL": "postgresql://h/shop",
            "TELEGRAM_CHAT_ID": "-100123",
            "TGBACKUPD_BACKUP_DIRECTORY": str(tmp_path),
            **environ,
        },
    )
    store = open_store(tmp_path / "state.db").store
    directory = BackupDirectory(config.backup.directory, config.backup.prefix)
    runner = BackupRunner(
        lambda trigger, selection: [backup.run(trigger)], store.last_result(), threading.Event()
    )
    sending = sending or Sending(ChatPacer(20, Clock()))
    outbox = Outbox(config, store, directory, Clock(), structlog.get_logger(), sending)
    return Commands(
        config, runner, lambda: None, "2025-12-02T10:00:00+00:00", outbox, store, directory, reloads=reloads
    )


def _config_file(tmp_path: Path) -> str:
    path = tmp_path / "config.toml"
    path.write_text("")
    return str(path)


def test_root_the_daemon_user_and_the_control_group_may_trigger_others_may_not():
    assert peer_may_trigger(ROOT, None)
    assert peer_may_trigger(Peer(9, os.getuid(), 9), None)
    assert peer_may_trigger(Peer(9, 1234, 1234), None, daemon_uid=1234)
    assert not peer_may_trigger(NOBODY, None)
    assert peer_may_trigger(NOBODY, 65534)  # nobody's own group (nogroup) is the control group
    assert not peer_may_trigger(STRANGER, 65534)


def test_status_is_shaped_like_the_web_api_users_know(tmp_path):
    data = commands(tmp_path, StandInBackup()).handle({"command": "status"}, STRANGER)["data"]
    assert {
        key: data[key] for key in ("backup_enabled", "backup_hour", "telegram_configured", "telegram_chat_id")
    } == {
        "backup_enabled": True,
        "backup_hour": 3,
        "telegram_configured": False,
        "telegram_chat_id": "-100123",
    }
    assert data["state"] == "idle" and data["last_backup"] is None and data["backups_stored"] == 0


def test_trigger_replies_like_the_manual_backup_endpoint(tmp_path):
    backup = StandInBackup()
    backup.release.set()
    reply = commands(tmp_path, backup).handle({"command": "trigger"}, ROOT)
    assert reply["data"]["message"] == "Manual backup completed successfully"
    assert reply["data"]["telegram_configured"] is False
    assert reply["data"]["backup"]["file"] == "shop_backup_20251203_030000.sql.gz"


def test_a_failed_backup_is_an_error_reply_carrying_the_reason(tmp_path):
    backup = StandInBackup(error="pg_dump exited with status 1: connection refused")
    backup.release.set()
    reply = commands(tmp_path, backup).handle({"command": "trigger"}, ROOT)
    assert reply["error"]["code"] == "backup_failed"
    assert (
        reply["error"]["message"] == "Manual backup failed: pg_dump exited with status 1: connection refused"
    )


@pytest.mark.parametrize("command, action", [("trigger", "trigger backups"), ("check", "run the checks")])
def test_a_stranger_is_refused_with_what_to_do(tmp_path, command, action):
    reply = commands(tmp_path, StandInBackup(), TGBACKUPD_DAEMON_CONTROL_GROUP="nogroup").handle(
        {"command": command}, STRANGER
    )
    assert reply["error"]["code"] == "permission_denied"
    assert f"uid 4242 may not {action}" in reply["error"]["message"]
    assert "members of the group 'nogroup'" in reply["error"]["message"]


def test_a_trigger_during_a_backup_is_told_so_and_status_shows_it_running(tmp_path):
    backup = StandInBackup()
    dispatch = commands(tmp_path, backup)
    first = threading.Thread(target=dispatch.handle, args=({"command": "trigger"}, ROOT))
    first.start()
    assert backup.started.wait(5)

    busy = dispatch.handle({"command": "trigger"}, ROOT)
    status = dispatch.handle({"command": "status"}, ROOT)["data"]

    assert busy["error"]["code"] == "busy" and "already running" in busy["error"]["message"]
    assert status["state"] == "running" and status["running"]["trigger"] == "manual"
    assert status_line(status).startswith("Backing up shop on h (manual, started ")
    backup.release.set()
    first.join(5)
    assert dispatch.handle({"command": "status"}, ROOT)["data"]["last_backup"]["message_id"] == 5


@pytest.mark.parametrize("request_", [{}, {"command": "rm -rf"}, {"command": 3}])
def test_unknown_commands_are_named(tmp_path, request_):
    reply = commands(tmp_path, StandInBackup()).handle(request_, ROOT)
    assert (
        reply["error"]["code"] == "unknown_command"
        and "status, trigger, list, check" in reply["error"]["message"]
    )


def test_status_line_tells_schedule_and_last_result():
    status = {
        "running": None,
        "next_run": "2025-12-04T03:00:00",
        "last_backup": result("scheduled").to_dict(),
        "database": "shop on h",
    }
    assert status_line(status) == (
        "Idle; next backup 2025-12-04 03:00; last: shop_backup_20251203_030000.sql.gz "
        "(2.00 KB) sent to Telegram"
    )
    failed = {**status, "next_run": None, "last_backup": result("scheduled", error="disk full").to_dict()}
    assert status_line(failed) == (
        "Idle; scheduled backups off (BACKUP_ENABLED=false); last: FAILED at 2025-12-03 03:00: disk full"
    )


def test_while_a_backup_is_sent_status_tells_the_parts_sent_of_how_many_and_about_how_long_is_left(
    tmp_path,
):
    from tgbackupd.ctl import render_status

    sending = Sending(ChatPacer(20, SteppingClock()))
    dispatch = commands(tmp_path, StandInBackup(), sending)
    name = "shop_backup_20251203_030000.sql.gz"
    sending.begin(name, "-100123", parts_total=100, bytes_total=100 * 19 * MB)
    for _ in range(40):
        sending.part_sent(19 * MB, upload_bytes_per_s=19 * MB)  # a second each: the pace is slower

    status = dispatch.handle({"command": "status"}, STRANGER)["data"]

    # 60 parts, the manifest and its pin at 20 a minute, a second apart: the last at 3 min 1 s.
    assert status["sending"] == {"name": name, "parts_sent": 40, "parts_total": 100, "eta_s": 181}
    assert status_line(status).endswith("; 40 of 100 parts sent, about 4 min left")
    rendered = render_status({**status, "next_run": "2025-12-04T03:00:00+00:00"})
    assert f"Sending:           {name}: 40 of 100 parts sent, about 4 min left" in rendered
    sending.part_sent(19 * MB, upload_bytes_per_s=1 * MB)  # a slow line: uploading takes longer
    assert dispatch.handle({"command": "status"}, STRANGER)["data"]["sending"]["eta_s"] == 59 * 19
    sending.end()
    assert dispatch.handle({"command": "status"}, STRANGER)["data"]["sending"] is None
