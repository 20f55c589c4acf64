"""Fault injection against the real daemon: every fault ends with the backup delivered or a clear alarm
(log, status, chat when it is reachable), never silence, and the token appears nowhere."""

import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, Fault
from tests.conftest import database_url, psql, small_file_system
from tests.end_to_end.conftest import assert_no_secret, events, fake_pg_dump, status, wait_until
from tests.processes import child_environment
from tgbackupd.statefile import open_reader

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts)")


@pytest.mark.parametrize(
    "fault, expected",
    [
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/shop"}, "connection to server at"),
        (
            {"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/no_such_db"},
            'database "no_such_db" does not exist',
        ),
        ({"TGBACKUPD_DATABASE_PG_DUMP": "/opt/nowhere/pg_dump"}, "/opt/nowhere/pg_dump was not found"),
        (
            {
                "PG_DUMP_SCRIPT": "echo 'pg_dump: error: connection to server at 127.0.0.1, port 5432 "
                "failed: FATAL:  password authentication failed for user app' >&2; exit 1"
            },
            "password authentication failed",
        ),
        (
            {
                "PG_DUMP_SCRIPT": "echo 'pg_dump: error: aborting because of server version mismatch' >&2; "
                "echo 'pg_dump: detail: server version: 17.2; pg_dump version: 15.20' >&2; exit 1"
            },
            "install the client of the server's major version",
        ),
    ],
    ids=["postgres-down", "database-missing", "pg_dump-missing", "wrong-password", "pg_dump-too-old"],
)
def test_database_faults_are_logged_told_to_the_chat_and_leave_no_file(
    tmp_path, make_database, bot_api, daemon_for, fault, expected
):
    source = make_database(rows=5)
    overrides = dict(fault)
    if "PG_DUMP_SCRIPT" in overrides:
        overrides["TGBACKUPD_DATABASE_PG_DUMP"] = fake_pg_dump(tmp_path, overrides.pop("PG_DUMP_SCRIPT"))
    daemon = daemon_for(source, **overrides)

    triggered = daemon.ctl("trigger")

    assert triggered.returncode == 1 and expected in triggered.stderr
    (notice,) = bot_api.messages()
    assert "failed" in notice.fields["text"] and expected in notice.fields["text"]
    assert status(daemon)["last_backup"]["error"].find(expected) >= 0
    assert not [p for p in (tmp_path / "backups").iterdir() if ".sql.gz" in p.name]
    assert (
        '"level": "error", "logger": "tgbackupd.backup", "event": "Backup routine failed"'
        in daemon.log_text()
    )
    assert daemon.stop() == 0
    assert_no_secret(daemon.log_text(), triggered.stdout, triggered.stderr, notice.fields["text"])


@pytest.mark.parametrize(
    "script",
    [
        "sleep 600; echo 'SELECT 1;'",
        "exec yes 'SELECT 1;'",
        # A child that left pg_dump's session keeps its output open after pg_dump was ended.
        "setsid sleep 31 & exec sleep 600",
    ],
    ids=["silent", "streaming-forever", "a-child-holds-its-output"],
)
def test_a_dump_past_backup_timeout_is_ended_and_fails_the_backup_with_that_reason_told_to_the_chat(
    tmp_path, make_database, bot_api, daemon_for, script
):
    source = make_database(empty=True)
    pg_dump = fake_pg_dump(tmp_path, script)
    daemon = daemon_for(source, TGBACKUPD_DATABASE_PG_DUMP=pg_dump, TGBACKUPD_BACKUP_TIMEOUT="2")

    began = time.monotonic()
    triggered = daemon.ctl("trigger")

    assert time.monotonic() - began < 15
    assert triggered.returncode == 1
    assert "the backup took longer than backup.timeout = 2 s (2s); pg_dump was ended" in triggered.stderr
    (notice,) = bot_api.messages()
    assert "took longer than backup.timeout" in notice.fields["text"]
    assert "took longer than backup.timeout" in status(daemon)["last_backup"]["error"]
    assert list((tmp_path / "backups").glob("*.gz*")) == []
    assert subprocess.run(["pgrep", "-f", pg_dump], check=False).returncode == 1  # its children too
    assert daemon.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small file system")
@pytest.mark.parametrize(("keep", "advice"), [("7", "lower backup.keep"), ("0", "lower backup.spool_parts")])
def test_a_full_disk_is_reported_and_leaves_no_partial_file(
    tmp_path, make_database, bot_api, daemon_for, keep, advice
):
    source = make_database(rows=5000)
    with small_file_system(tmp_path / "small", "256k") as small:
        daemon = daemon_for(
            source,
            TGBACKUPD_BACKUP_DIRECTORY=str(small / "backups"),
            TGBACKUPD_BACKUP_COMPRESSION_LEVEL="1",
            TGBACKUPD_BACKUP_KEEP=keep,
        )
        triggered = daemon.ctl("trigger")
        assert triggered.returncode == 1
        assert "is full (No space left on device); the unfinished file was removed" in triggered.stderr
        assert advice in triggered.stderr
        assert [p.name for p in (small / "backups").iterdir() if "sql.gz" in p.name] == []
        assert "is full" in bot_api.messages()[0].fields["text"]
        assert daemon.stop() == 0


@pytest.mark.parametrize(
    "fault, expected",
    [
        ([Fault(action="reset")], "ConnectionError"),
        ([Fault(action="stall", stall_s=7)], "timed out"),
        ([Fault(502, "Bad Gateway")], "502 Bad Gateway"),
        ([Fault(429, "Too Many Requests: retry after 1", retry_after=1)], "429"),
    ],
    ids=["reset-mid-upload", "timeout", "5xx", "429"],
)
def test_telegram_failures_keep_the_backup_pending_and_it_is_delivered_when_telegram_recovers(
    tmp_path, make_database, bot_api, daemon_for, fault, expected
):
    source = make_database(rows=50)
    bot_api.fail_next(*fault)
    daemon = daemon_for(source, TGBACKUPD_TELEGRAM_TIMEOUT="5")

    triggered = daemon.ctl("trigger")

    assert (
        triggered.returncode == 1
        and expected in triggered.stderr
        and "not sent to Telegram yet" in triggered.stderr
    )
    assert "Delivery: pending" in triggered.stderr
    wait_until(lambda: len(bot_api.documents()) == 2)  # the backup, then its manifest
    name = bot_api.documents()[0].file_name
    wait_until(lambda: status(daemon)["pending_deliveries"] == 0)
    assert daemon.ctl("list").stdout.count("sent (#") == 1 and name in daemon.ctl("list").stdout
    assert "A backup that was waiting has been delivered" in daemon.log_text()
    assert daemon.stop() == 0
    assert_no_secret(daemon.log_text(), triggered.stderr)


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"TELEGRAM_BOT_TOKEN": "987654321:another-fake-token-for-tests"}, "rejected the bot token (401"),
        ({"TELEGRAM_CHAT_ID": "-100999"}, "chat -100999 was not found"),
        ("kicked", "add the bot to the channel as an administrator"),
    ],
    ids=["401-revoked-token", "400-chat-not-found", "403-bot-removed"],
)
def test_refusals_say_what_to_fix_and_status_shows_the_backup_waiting(
    tmp_path, make_database, bot_api, daemon_for, change, expected
):
    source = make_database(rows=10)
    if change == "kicked":
        bot_api.state.kicked_from.add("-100123456789")
        change = {}
    daemon = daemon_for(source, **change)

    triggered = daemon.ctl("trigger")
    pending = status(daemon)["pending"]
    human = daemon.ctl("status").stdout

    assert triggered.returncode == 1 and expected in triggered.stderr
    assert len(pending) == 1 and expected in pending[0]["last_error"]
    assert "1 backup(s) waiting for Telegram" in daemon.notify.wait_for("waiting for Telegram")
    assert "Last backup:" in human
    assert Path(status(daemon)["last_backup"]["path"]).exists()
    if not change:  # the bot is added back: the waiting backup goes out on its own
        bot_api.state.kicked_from.clear()
        wait_until(lambda: status(daemon)["pending_deliveries"] == 0)
        assert len(bot_api.documents()) == 2
    assert daemon.stop() == 0
    assert_no_secret(daemon.log_text(), triggered.stderr, human, "987654321:another-fake-token-for-tests")
    assert "another-fake-token" not in daemon.log_text() + triggered.stderr


def test_after_a_redelivery_status_shows_the_last_backup_as_sent_not_as_the_failure_it_was(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    bot_api.state.kicked_from.add(CHAT_ID)
    daemon = daemon_for(source)
    assert daemon.ctl("trigger").returncode == 1
    failed = status(daemon)["last_backup"]
    assert failed["delivery"] == "pending" and "add the bot" in failed["error"]

    bot_api.state.kicked_from.clear()
    wait_until(lambda: status(daemon)["pending_deliveries"] == 0)

    sent = (failed["file"], "sent", None, bot_api.documents()[-1].message_id)  # the manifest's message
    last = status(daemon)["last_backup"]
    assert (last["file"], last["delivery"], last["error"], last["message_id"]) == sent
    assert daemon.stop() == 0
    again = daemon_for(source)  # and as recorded in the state store
    last = status(again)["last_backup"]
    assert (last["file"], last["delivery"], last["error"], last["message_id"]) == sent
    assert "sent to Telegram" in again.ctl("status").stdout
    assert again.stop() == 0


def redelivery_attempts(daemon) -> list[dict]:
    """The outbox's attempts at a waiting backup that failed, as logged: when, and when the next one is."""
    return [
        event
        for event in events(daemon.log_text())
        if event["event"] == "Failed to send backup to Telegram; it is kept and will be sent again"
    ]


def tries(daemon) -> list[dict]:
    """Every attempt at sending a backup that waits, however it ends."""
    return [
        e for e in events(daemon.log_text()) if e["event"] == "Sending a backup that is waiting for delivery"
    ]


def delays_s(attempts: list[dict]) -> list[float]:
    """How long each failed attempt waits before the next."""
    return [
        (
            datetime.fromisoformat(event["next_attempt_at"])
            - datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
        ).total_seconds()
        for event in attempts
    ]


@ROOT_ONLY
def test_a_full_disk_while_writing_the_manifest_backs_off_instead_of_retrying_every_second(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    with small_file_system(tmp_path / "small", "1m") as small:
        bot_api.state.kicked_from.add(CHAT_ID)
        daemon = daemon_for(
            source,
            TGBACKUPD_BACKUP_DIRECTORY=str(small / "backups"),
            TGBACKUPD_TELEGRAM_REDELIVER_MAX_S="60",
        )
        assert daemon.ctl("trigger").returncode == 1  # waiting for Telegram
        subprocess.run(["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=4k"], capture_output=True)
        tried_before, failed_before = len(tries(daemon)), len(redelivery_attempts(daemon))
        bot_api.state.kicked_from.clear()  # the part goes out; the manifest cannot be written

        time.sleep(8)

        assert 1 <= len(tries(daemon)) - tried_before <= 4  # 1, 2, 4 s apart at least: not every second
        attempts = redelivery_attempts(daemon)[failed_before:]
        assert attempts and all("No space left on device" in event["error"] for event in attempts)
        waits = delays_s(attempts)
        assert all(later > earlier for earlier, later in itertools.pairwise(waits)), waits
        (waiting,) = status(daemon)["pending"]
        assert waiting["attempts"] == attempts[-1]["attempts"]
        assert len(bot_api.documents()) == 1  # the part, once; no manifest yet
        (small / "filler").unlink()
        wait_until(lambda: status(daemon)["pending_deliveries"] == 0, timeout=90)
        assert [d.file_name.endswith(".manifest.json") for d in bot_api.documents()] == [False, True]
        assert daemon.stop() == 0


def test_a_waiting_backup_whose_file_became_shorter_is_not_sent_and_waits_with_the_reason(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=200)
    bot_api.state.kicked_from.add(CHAT_ID)
    daemon = daemon_for(source, TGBACKUPD_TELEGRAM_REDELIVER_MAX_S="60")
    assert daemon.ctl("trigger").returncode == 1
    (made,) = (tmp_path / "backups").glob("*.sql.gz")
    recorded = made.stat().st_size
    with made.open("r+b") as file:
        file.truncate(recorded // 2)
    sent_before = len(bot_api.state.requests)
    bot_api.state.kicked_from.clear()

    wait_until(lambda: "cut short" in (status(daemon)["pending"][0]["last_error"] or ""))
    time.sleep(4)

    (waiting,) = status(daemon)["pending"]
    assert (
        f"{made} is {recorded // 2} bytes, but was {recorded} when the backup was made"
        in (waiting["last_error"])
    )
    assert not any(r.endswith("/sendDocument") for r in bot_api.state.requests[sent_before:])
    assert waiting["attempts"] <= 5  # backing off, not retrying every second
    made.unlink()  # given up, as the reason says: it is lost, and the outbox is free again
    wait_until(lambda: status(daemon)["pending_deliveries"] == 0)
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [(row["name"], row["delivery"]) for row in listed] == [(made.name, "lost")]
    assert daemon.stop() == 0


@ROOT_ONLY
def test_a_waiting_backup_whose_file_system_is_not_mounted_waits_with_the_reason_and_goes_once_it_is_back(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    disk, mount_point = tmp_path / "disk", tmp_path / "backups-mount"
    disk.mkdir()
    mount_point.mkdir()
    subprocess.run(["mount", "--bind", str(disk), str(mount_point)], check=True)
    bot_api.state.kicked_from.add(CHAT_ID)
    daemon = daemon_for(source, TGBACKUPD_BACKUP_DIRECTORY=str(mount_point))
    assert daemon.ctl("trigger").returncode == 1
    subprocess.run(["umount", str(mount_point)], check=True)  # as if at boot, before the disk is there
    bot_api.state.kicked_from.clear()

    wait_until(lambda: "mounted?" in (status(daemon)["pending"][0]["last_error"] or ""))

    (waiting,) = status(daemon)["pending"]
    assert f"is the file system of {mount_point} mounted?" in waiting["last_error"]
    assert bot_api.documents() == []
    subprocess.run(["mount", "--bind", str(disk), str(mount_point)], check=True)
    try:
        wait_until(lambda: status(daemon)["pending_deliveries"] == 0)
        assert len(bot_api.documents()) == 2
        assert json.loads(daemon.ctl("list", "--json").stdout)[0]["delivery"] == "sent"
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_backups_reach_the_chat_in_the_order_they_were_made_after_an_outage(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    bot_api.state.kicked_from.add("-100123456789")
    daemon = daemon_for(
        source,
        TGBACKUPD_BACKUP_KEEP="1",
        TGBACKUPD_TELEGRAM_REDELIVER_MIN_S="3600",
        TGBACKUPD_TELEGRAM_REDELIVER_MAX_S="3600",
    )
    names = []
    for _ in range(3):
        assert daemon.ctl("trigger").returncode == 1
        names.append(status(daemon)["last_backup"]["file"])
        time.sleep(1)

    assert len(list((tmp_path / "backups").glob("*.sql.gz"))) == 3  # keep=1, but none is delivered yet
    assert "more than backup.keep (1)" in daemon.log_text()
    bot_api.state.kicked_from.clear()
    assert daemon.ctl("trigger").returncode == 0  # a new backup drains the outbox first
    names.append(status(daemon)["last_backup"]["file"])

    manifests = [json.loads(d.content) for d in bot_api.documents() if d.file_name.endswith(".manifest.json")]
    assert [m["name"] for m in manifests] == names
    assert [m["previous"] and m["previous"]["name"] for m in manifests] == [None, *names[:-1]]
    assert bot_api.state.pinned["-100123456789"]["document"]["file_name"].startswith(
        names[-1].removesuffix(".sql.gz")
    )
    assert len(list((tmp_path / "backups").glob("*.sql.gz"))) == 1  # delivered now: retention applies again
    assert daemon.stop() == 0


@pytest.mark.parametrize("keep", ["7", "0"], ids=["kept-locally", "spooled"])
def test_sigkill_mid_dump_leaves_nothing_that_looks_like_a_backup(tmp_path, make_database, daemon_for, keep):
    source = make_database(empty=True)
    daemon = daemon_for(
        source,
        TGBACKUPD_DATABASE_PG_DUMP=fake_pg_dump(tmp_path, "exec yes 'SELECT 1;'"),
        TGBACKUPD_BACKUP_KEEP=keep,
    )
    daemon.trigger_in_background()
    wait_until(lambda: any(p.stat().st_size > 0 for p in (tmp_path / "backups").glob(".*.partial")))

    daemon.process.send_signal(signal.SIGKILL)
    daemon.wait()
    subprocess.run(["pkill", "-f", str(tmp_path / "fake_pg_dump")], check=False)
    assert list((tmp_path / "backups").glob("*.sql.gz")) == []  # only the hidden partial is left

    again = daemon_for(source, TGBACKUPD_BACKUP_KEEP=keep)
    assert list((tmp_path / "backups").glob("*.partial")) == []
    assert list((tmp_path / "backups").glob("*.sql.gz*")) == []
    assert "Removed an unfinished backup file left by an interrupted run" in again.log_text()
    assert again.stop() == 0


@pytest.mark.parametrize("keep", ["7", "0"], ids=["kept-locally", "spooled"])
def test_sigkill_mid_upload_resumes_the_delivery_after_a_restart(
    tmp_path, make_database, bot_api, daemon_for, keep
):
    source = make_database(rows=10)
    bot_api.fail_next(Fault(action="stall", stall_s=30))
    daemon = daemon_for(source, TGBACKUPD_TELEGRAM_TIMEOUT="60", TGBACKUPD_BACKUP_KEEP=keep)
    daemon.trigger_in_background()
    wait_until(lambda: any(r.endswith("/sendDocument") for r in bot_api.state.requests))

    daemon.process.send_signal(signal.SIGKILL)
    daemon.wait()
    backups = tmp_path / "backups"
    if keep == "0":  # the one part waits in the spool, under the name it has in the chat plus .001
        assert [p.name for p in backups.glob("*.sql.gz.*")] == [
            f"{open_reader(tmp_path / 'state.db').listing()[0]['name']}.001"
        ]

    again = daemon_for(source, TGBACKUPD_BACKUP_KEEP=keep)
    wait_until(lambda: len(bot_api.documents()) == 2)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)
    assert len(list(backups.glob("*.sql.gz"))) == (1 if keep == "7" else 0)
    if keep == "0":  # delivered: nothing of it is left here, and status says where backups are
        assert list(backups.glob("*.sql.gz*")) == [] and list(backups.glob("*.json")) == []
        assert "backups are kept in Telegram only" in again.ctl("status").stdout
    assert again.stop() == 0


def test_a_missed_scheduled_backup_is_caught_up_after_start(tmp_path, make_database, bot_api, daemon_for):
    source = make_database(rows=10)
    two_days_ago = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() - 2 * 86400))
    # As tgbackupd 0.1 wrote it (its JSON state file at daemon.state_file), imported at start.
    (tmp_path / "state.db").write_text(json.dumps({"last_backup": {"started_at": two_days_ago}}))

    daemon = daemon_for(source, TGBACKUPD_BACKUP_CATCH_UP_DELAY_S="0")

    wait_until(lambda: len(bot_api.documents()) == 2)
    log_text = daemon.log_text()
    assert "did not run (tgbackupd or the host was down); catching up in 0 s" in log_text
    assert '"trigger": "catch-up"' in log_text
    assert daemon.stop() == 0
    quiet = daemon_for(source, TGBACKUPD_BACKUP_CATCH_UP_DELAY_S="0")  # the last attempt is recent now
    time.sleep(2)
    assert len(bot_api.documents()) == 2 and "catching up" not in quiet.log_text()
    assert quiet.stop() == 0


def test_an_empty_dump_and_a_dump_far_smaller_than_the_last_are_flagged_loudly(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=3000)
    daemon = daemon_for(source)
    assert daemon.ctl("trigger").returncode == 0
    psql(source, "TRUNCATE orders, customers")

    shrunk = daemon.ctl("trigger")

    assert shrunk.returncode == 0
    warning = status(daemon)["last_backup"]["warning"]
    assert "smaller than the previous one" in warning
    caption = bot_api.documents()[2].fields["caption"]
    assert caption.splitlines()[1].startswith("⚠️ WARNING: this dump is")
    assert "Backup looks wrong; it is kept and sent, but check it" in daemon.log_text()
    assert daemon.stop() == 0

    empty = daemon_for(source, TGBACKUPD_DATABASE_PG_DUMP=fake_pg_dump(tmp_path, "exit 0"))
    assert empty.ctl("trigger").returncode == 0
    assert "pg_dump produced no SQL at all" in status(empty)["last_backup"]["warning"]
    assert "pg_dump produced no SQL at all" in bot_api.documents()[-2].fields["caption"]
    assert empty.stop() == 0


@pytest.mark.parametrize("where", ["user info", "query"])
def test_pg_dump_gets_the_password_in_its_environment_and_nothing_else_of_the_daemons(
    tmp_path, make_database, daemon_for, where
):
    source = make_database(rows=5)
    spy = fake_pg_dump(
        tmp_path, f'printf "%s\\n" "$@" >> {tmp_path}/argv; env >> {tmp_path}/environ; exec pg_dump "$@"'
    )
    url = {
        "user info": database_url(source).replace("postgres@", "postgres:pa55-word@"),
        "query": f"{database_url(source)}?password=pa55-word&connect_timeout=9",
    }[where]
    daemon = daemon_for(
        source,
        DATABASE_URL=url,
        TGBACKUPD_DATABASE_PG_DUMP=spy,
        PGAPPNAME="nightly",
        UNRELATED_SETTING="of the service",
    )

    triggered = daemon.ctl("trigger")
    checked = daemon.ctl("check")  # runs `pg_dump --version` too

    assert triggered.returncode == 0, triggered.stderr
    assert checked.returncode == 0, checked.stdout
    assert (
        "--version" in (tmp_path / "argv").read_text() and "pa55-word" not in (tmp_path / "argv").read_text()
    )
    seen = dict(line.split("=", 1) for line in (tmp_path / "environ").read_text().splitlines() if "=" in line)
    assert seen["PGPASSWORD"] == "pa55-word" and seen["PGAPPNAME"] == "nightly"
    assert seen["PATH"] == daemon.environment["PATH"]
    for withheld in (
        "TELEGRAM_BOT_TOKEN",
        "DATABASE_URL",
        "TGBACKUPD_CONFIG",
        "NOTIFY_SOCKET",
        "UNRELATED_SETTING",
    ):
        assert withheld not in seen
    assert daemon.stop() == 0
    assert "pa55-word" not in daemon.log_text()


def spy_on_psql(directory: Path) -> Path:
    """A psql first on PATH that notes its arguments and environment, then runs the real one: the restore
    still reaches the real server, and the test sees what psql was given."""
    spy = directory / "bin" / "psql"
    spy.parent.mkdir()
    spy.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {directory}/argv\nenv >> {directory}/environ\n'
        f'exec {shutil.which("psql")} "$@"\n'
    )
    spy.chmod(0o755)
    return spy.parent


@pytest.mark.parametrize("where", ["user info", "query", "PGPASSWORD"])
def test_a_restore_targets_password_reaches_psql_only_in_its_environment_and_is_never_shown(
    tmp_path, make_database, where
):
    target = make_database(empty=True)
    backup = tmp_path / "shop_backup_20250101_030000.sql.gz"
    backup.write_bytes(gzip.compress(b"CREATE TABLE restored_here (id int);\n"))
    url = {
        "user info": database_url(target).replace("postgres@", "postgres:pa55-word@"),
        "query": f"{database_url(target)}?password=pa55-word",
        "PGPASSWORD": database_url(target),
    }[where]
    environment = child_environment(
        TGBACKUPD_CONFIG="/dev/null", PATH=f"{spy_on_psql(tmp_path)}:{os.environ['PATH']}"
    )
    if where == "PGPASSWORD":
        environment["PGPASSWORD"] = "pa55-word"

    def restore(into: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tgbackupd.ctl", "restore", str(backup), "--dbname", into],
            capture_output=True,
            text=True,
            env=environment,
            check=False,
        )

    restored = restore(url)
    refused = restore(url)  # not empty any more: refused once psql has connected and looked
    unreachable = restore(url.replace(target, "no_such_db_here"))  # psql's own connection error

    assert restored.returncode == 0, restored.stderr
    assert psql(target, "SELECT count(*) FROM restored_here") == "0"
    assert refused.returncode == 65 and f"the database {target} is not empty" in refused.stderr
    assert unreachable.returncode == 65
    assert 'database "no_such_db_here" does not exist' in unreachable.stderr
    for completed in (restored, refused, unreachable):
        assert "pa55-word" not in completed.stdout + completed.stderr
        warned = "give it in PGPASSWORD or a passfile (~/.pgpass, PGPASSFILE)" in completed.stderr
        assert warned == (where != "PGPASSWORD")
    assert "pa55-word" not in (tmp_path / "argv").read_text()
    given = [
        line for line in (tmp_path / "environ").read_text().splitlines() if line.startswith("PGPASSWORD=")
    ]
    assert len(given) >= 4 and set(given) == {"PGPASSWORD=pa55-word"}
