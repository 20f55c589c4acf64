"""The real tgbackupd process: systemd notifications, the control socket, tgbackupctl, signals, logs."""

import contextlib
import io
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN
from tests.conftest import (
    POSTGRES_12,
    add_noise,
    base_environment,
    psql,
    psql_refusing,
    run_tgbackupd,
    telegram_environment,
)
from tests.end_to_end.conftest import events, fake_pg_dump, wait_until
from tgbackupd import control, ctl
from tgbackupd.statefile import open_reader

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")

GUIDE_EVENTS = [
    "Starting manual database backup...",
    "Creating database backup: ",
    "Compressing backup: ",
    "Backup created successfully: (",
    f"Sending backup to Telegram chat: {CHAT_ID}",
    "Backup sent to Telegram successfully",
    "Backup routine completed successfully",
]


def slow_pg_dump(directory: Path, seconds: float) -> Path:
    """A pg_dump stand-in that takes a while, then prints a tiny dump (or streams forever if seconds < 0)."""
    script = directory / "slow_pg_dump"
    body = "exec yes 'SELECT 1;'" if seconds < 0 else f"sleep {seconds}\necho 'SELECT 1;'"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_daemon_reports_ready_watchdog_and_stopping_to_systemd(
    tmp_path, make_database, bot_api, start_daemon
):
    source = make_database(rows=10)
    daemon = start_daemon(base_environment(tmp_path, source, **telegram_environment(bot_api)))

    ready = daemon.notify.wait_for("READY=1")
    assert "STATUS=Idle; next backup " in ready and "last: none yet" in ready
    daemon.notify.wait_for("WATCHDOG=1")
    assert daemon.socket_path.exists() and daemon.socket_path.stat().st_mode & 0o777 == 0o660

    daemon.process.send_signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")
    assert daemon.wait() == 0
    assert not daemon.socket_path.exists()
    assert "tgbackupd stopped" in daemon.log_text()


def test_trigger_delivers_a_backup_and_status_shows_it_across_a_restart(
    tmp_path, make_database, bot_api, start_daemon
):
    source = make_database(rows=300)
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api), BACKUP_HOUR="4")
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")

    triggered = daemon.ctl("trigger")

    assert triggered.returncode == 0, triggered.stderr
    assert triggered.stdout.startswith("Manual backup completed successfully")
    assert "sent to Telegram in 1 part(s), manifest message 2" in triggered.stdout
    document, _manifest = bot_api.documents()
    assert document.fields["chat_id"] == CHAT_ID
    status = json.loads(daemon.ctl("status", "--json").stdout)["data"]
    assert status["backup_enabled"] is True and status["backup_hour"] == 4
    assert status["telegram_configured"] is True and status["telegram_chat_id"] == CHAT_ID
    assert status["state"] == "idle" and status["next_run"].split("T")[1].startswith("04:00")
    assert status["last_backup"]["file"] == document.file_name
    assert status["last_backup"]["delivery"] == "sent" and status["backups_stored"] == 1
    assert daemon.notify.wait_for(document.file_name).startswith("STATUS=Idle; next backup ")

    log_text = daemon.log_text()
    messages = [event["event"] for event in events(log_text)]
    positions = [next(i for i, m in enumerate(messages) if m.startswith(wanted)) for wanted in GUIDE_EVENTS]
    assert positions == sorted(positions), messages
    summary = next(e for e in events(log_text) if e["event"] == "Backup routine completed successfully")
    assert summary["logger"] == "tgbackupd.backup" and summary["level"] == "info"
    assert summary["file"] == document.file_name and summary["size_bytes"] == len(document.content)
    assert {"timestamp", "duration_s", "sha256"} <= summary.keys()
    listed = daemon.ctl("list")
    assert listed.returncode == 0 and document.file_name in listed.stdout and "sent (#2)" in listed.stdout
    assert daemon.stop() == 0
    offline = subprocess.run(
        [sys.executable, "-m", "tgbackupd.ctl", "--socket", str(daemon.socket_path), "list"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert offline.returncode == 0 and offline.stdout == listed.stdout  # read from the catalogue directly

    again = start_daemon(environment)
    again.notify.wait_for("READY=1")
    human = again.ctl("status")
    assert human.returncode == 0
    assert f"Last backup:       {document.file_name}" in human.stdout and "sent to Telegram" in human.stdout
    assert f"chat {CHAT_ID}" in human.stdout
    assert again.stop() == 0
    assert FAKE_TOKEN not in log_text + again.log_text() + human.stdout + triggered.stdout


def test_second_trigger_is_told_a_backup_is_running_and_wait_runs_after_it(
    tmp_path, make_database, start_daemon
):
    source = make_database(empty=True)
    environment = base_environment(
        tmp_path, source, TGBACKUPD_DATABASE_PG_DUMP=str(slow_pg_dump(tmp_path, 3))
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")
    first = daemon.trigger_in_background()
    daemon.notify.wait_for("STATUS=Backing up")

    pings_before = sum("WATCHDOG=1" in m for m in daemon.notify.messages)
    busy = daemon.ctl("trigger")
    time.sleep(1.5)  # the dump takes 3 s: the main loop keeps pinging the watchdog meanwhile
    assert sum("WATCHDOG=1" in m for m in daemon.notify.messages) >= pings_before + 2
    waited = daemon.ctl("trigger", "--wait")

    assert busy.returncode == 75
    assert "already running" in busy.stderr and "--wait" in busy.stderr
    assert first.wait(30) == 0
    assert waited.returncode == 0, waited.stderr
    assert len(list((tmp_path / "backups").glob("*.sql.gz"))) == 2
    assert daemon.stop() == 0


def clock_near_a_minute(seconds_before: int) -> tuple[dict[str, str], int, int]:
    """A time zone (TZ, offset by whole seconds from UTC) in which the next full minute comes in about
    `seconds_before` seconds, and that minute's hour and minute: a daily schedule that is due soon."""
    now = time.time()
    offset = int(60 - (now + seconds_before) % 60) % 60
    due = time.gmtime(now + offset + seconds_before + 1)
    return {"TZ": f"SOON-00:00:{offset:02d}"}, due.tm_hour, due.tm_min


def test_a_scheduled_backup_that_comes_due_while_one_is_running_waits_for_it_and_then_runs(
    tmp_path, make_database, bot_api, start_daemon
):
    source = make_database(empty=True)
    zone, hour, minute = clock_near_a_minute(seconds_before=8)
    environment = base_environment(
        tmp_path,
        source,
        **telegram_environment(bot_api),
        **zone,
        BACKUP_HOUR=str(hour),
        TGBACKUPD_BACKUP_MINUTE=str(minute),
        TGBACKUPD_DATABASE_PG_DUMP=str(slow_pg_dump(tmp_path, 14)),
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")
    manual = daemon.trigger_in_background()  # still dumping when the scheduled time comes
    assert manual.wait(30) == 0

    deadline = time.monotonic() + 40
    while len(list((tmp_path / "backups").glob("*.sql.gz"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)

    assert len(list((tmp_path / "backups").glob("*.sql.gz"))) == 2
    logged = events(daemon.log_text())
    waited = [e for e in logged if e["event"].startswith("Scheduled backup waits")]
    assert [(e["trigger"], e["running"]) for e in waited] == [("scheduled", "manual")]
    assert not [e for e in logged if e["event"].startswith("Scheduled backup skipped")]
    assert not bot_api.messages()  # no notice: nothing was missed
    assert daemon.stop() == 0


def test_sigterm_during_a_dump_ends_pg_dump_and_removes_the_partial_file(
    tmp_path, make_database, start_daemon
):
    source = make_database(empty=True)
    environment = base_environment(
        tmp_path, source, TGBACKUPD_DATABASE_PG_DUMP=str(slow_pg_dump(tmp_path, -1))
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")
    trigger = daemon.trigger_in_background()
    deadline = time.monotonic() + 10
    while not list((tmp_path / "backups").glob(".*.partial")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list((tmp_path / "backups").glob(".*.partial"))

    began = time.monotonic()
    daemon.process.send_signal(signal.SIGTERM)
    daemon.notify.wait_for("STOPPING=1")

    assert daemon.wait() == 0
    assert time.monotonic() - began < 10
    assert list((tmp_path / "backups").glob("*.gz*")) == []
    assert subprocess.run(["pgrep", "-f", str(tmp_path / "slow_pg_dump")], check=False).returncode == 1
    _, stderr = trigger.communicate(timeout=10)
    assert trigger.returncode != 0 and "stopping" in stderr


def test_sigterm_during_verification_ends_it_drops_the_scratch_database_and_the_queued_backup_goes_out_later(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(empty=True)
    settings = {
        "TGBACKUPD_BACKUP_VERIFY_AFTER": "true",
        # A dump whose restore keeps its server session busy, on a server without DROP … WITH (FORCE).
        "TGBACKUPD_DATABASE_PG_DUMP": fake_pg_dump(tmp_path, "echo 'SELECT pg_sleep(120);'"),
        "PATH": psql_refusing(tmp_path / "postgresql-12", POSTGRES_12),
    }
    daemon = daemon_for(source, **settings)
    trigger = daemon.trigger_in_background()
    restoring = (
        "SELECT datname FROM pg_stat_activity WHERE datname LIKE 'tgbackupd_verify_%' "
        "AND query = 'SELECT pg_sleep(120);'"
    )
    deadline = time.monotonic() + 20
    while not (scratch := psql("postgres", restoring)):
        assert time.monotonic() < deadline, "the verification never started restoring"
        time.sleep(0.1)

    began = time.monotonic()
    assert daemon.stop() == 0

    assert time.monotonic() - began < 10
    assert psql("postgres", f"SELECT count(*) FROM pg_database WHERE datname = '{scratch}'") == "0"
    (made,) = [p.name for p in (tmp_path / "backups").glob("*.sql.gz")]
    assert open_reader(tmp_path / "state.db").undelivered() == {made}  # queued before it was verified
    assert "Backup verification stopped because tgbackupd is stopping" in daemon.log_text()
    _, stderr = trigger.communicate(timeout=10)
    assert "stopping" in stderr
    again = daemon_for(source)
    wait_until(lambda: len(bot_api.documents()) == 2)
    assert bot_api.documents()[0].file_name == made
    assert again.stop() == 0


def test_control_socket_survives_garbage_oversized_silent_and_crowds_of_clients(
    tmp_path, make_database, start_daemon
):
    source = make_database(empty=True)
    daemon = start_daemon(base_environment(tmp_path, source))
    daemon.notify.wait_for("READY=1")
    path = str(daemon.socket_path)

    def raw(payload: bytes) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            client.connect(path)
            with contextlib.suppress(BrokenPipeError):
                client.sendall(payload)
            return json.loads(client.makefile("rb").readline())

    assert raw(b"\x00\xff garbage\n")["error"]["code"] == "bad_request"
    assert raw(b'["status"]\n')["error"]["code"] == "bad_request"
    assert raw(b'{"command": "format-disk"}\n')["error"]["code"] == "unknown_command"
    assert raw(b"x" * (10 * 1024 * 1024) + b"\n")["error"]["code"] == "request_too_large"

    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(path)
    began = time.monotonic()
    assert daemon.ctl("status").returncode == 0  # served while the silent client waits
    assert time.monotonic() - began < 3
    silent.settimeout(10)
    assert json.loads(silent.makefile("rb").readline())["error"]["code"] == "timeout"
    silent.close()

    descriptors_before = len(os.listdir(f"/proc/{daemon.process.pid}/fd"))
    replies: list[dict] = []
    lock = threading.Lock()

    def ask() -> None:
        reply = raw(b'{"command": "status"}\n')
        with lock:
            replies.append(reply)

    crowd = [threading.Thread(target=ask) for _ in range(200)]
    for thread in crowd:
        thread.start()
    for thread in crowd:
        thread.join(30)
    assert len(replies) == 200
    assert all("data" in r or r["error"]["code"] == "too_many_clients" for r in replies)
    assert sum("data" in r for r in replies) >= 64
    threads = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines()
            if line.startswith("Threads:")
        )
    )
    assert threads < 10
    assert daemon.ctl("status").returncode == 0
    assert len(os.listdir(f"/proc/{daemon.process.pid}/fd")) <= descriptors_before
    assert daemon.stop() == 0


def test_a_crowd_over_the_client_limit_is_answered_once_tgbackupctls_retries_get_their_turn(
    tmp_path, make_database, start_daemon
):
    source = make_database(empty=True)
    daemon = start_daemon(base_environment(tmp_path, source))
    daemon.notify.wait_for("READY=1")
    path = str(daemon.socket_path)
    holders = []
    for _ in range(control.MAX_CLIENTS):  # every place taken by a client that has not spoken yet
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.connect(path)
        holders.append(holder)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as latecomer:
        latecomer.settimeout(10)
        latecomer.connect(path)
        assert json.loads(latecomer.makefile("rb").readline())["error"]["code"] == "too_many_clients"
    replies: list[dict] = []
    lock = threading.Lock()

    def ask() -> None:
        reply = control.request(daemon.socket_path, {"command": "status"}, timeout=30)
        with lock:
            replies.append(reply)

    crowd = [threading.Thread(target=ask) for _ in range(200)]
    for thread in crowd:
        thread.start()
    time.sleep(0.5)  # the crowd has been told to come back; now the places free up
    for holder in holders:
        holder.close()
    for thread in crowd:
        thread.join(30)

    assert len(replies) == 200
    assert [reply for reply in replies if "data" not in reply] == []
    assert daemon.stop() == 0


@pytest.mark.parametrize("command", ["status", "list"])
def test_tgbackupctl_retries_a_busy_daemon_briefly_then_says_to_try_again(tmp_path, command):
    path = tmp_path / "busy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    listener.settimeout(0.1)
    asked = []
    done = threading.Event()

    def always_busy() -> None:  # a daemon that stays at its client limit, which a real one cannot be kept at
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                asked.append(1)
                connection.sendall(
                    b'{"error": {"code": "too_many_clients", "message": "serving 64 already"}}\n'
                )

    # Stopped and joined before the socket is closed: a thread still in accept() on a closed descriptor
    # takes whatever socket gets that number next (a later test's Bot API stand-in, seen here).
    server = threading.Thread(target=always_busy, daemon=True)
    server.start()
    try:
        began = time.monotonic()
        answered = subprocess.run(
            [sys.executable, "-m", "tgbackupd.ctl", "--socket", str(path), command],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        took = time.monotonic() - began
    finally:
        done.set()
        server.join(5)
        listener.close()

    assert answered.returncode == 75 and answered.stderr == "tgbackupctl: serving 64 already\n"
    assert len(asked) > 3
    assert control.BUSY_RETRY_S / 2 < took < control.BUSY_RETRY_S + 5


def _as_user(uid: int, gid: int, path: str, message: dict, answers: multiprocessing.Queue) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        answers.put(control.request(Path(path), message, timeout=30))
    except control.ControlClientError as error:
        answers.put({"client_error": str(error)})


def ask_as(uid: int, gid: int, path: Path, message: dict) -> dict:
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_as_user, args=(uid, gid, str(path), message, answers))
    child.start()
    answer = answers.get(timeout=60)
    child.join(10)
    return answer


def _ctl_as_user(uid: int, gid: int, args: list[str], answers: multiprocessing.Queue) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    output, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(errors):
        exit_code = ctl.main(args)
    answers.put((exit_code, output.getvalue(), errors.getvalue()))


def ctl_as(uid: int, gid: int, *args: str) -> tuple[int, str, str]:
    """tgbackupctl ARGS run as another user: (exit status, standard output, standard error)."""
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    child = context.Process(target=_ctl_as_user, args=(uid, gid, list(args), answers))
    child.start()
    answer = answers.get(timeout=120)
    child.join(10)
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
@pytest.mark.parametrize("control_group, may_trigger", [(None, False), ("nogroup", True)])
def test_only_root_the_daemon_user_and_the_control_group_may_trigger_and_check(
    tmp_path, make_database, start_daemon, control_group, may_trigger
):
    source = make_database(empty=True)
    socket_directory = Path(tempfile.mkdtemp(prefix="tgbackupd-test-"))
    socket_directory.chmod(0o755)
    try:
        environment = base_environment(
            tmp_path,
            source,
            TGBACKUPD_DAEMON_SOCKET=str(socket_directory / "c.sock"),
            TGBACKUPD_DAEMON_CONTROL_GROUP=control_group,
        )
        daemon = start_daemon(environment)
        daemon.notify.wait_for("READY=1")
        daemon.socket_path.chmod(0o666)  # let a stranger connect, so the daemon's own check is what decides
        nobody = 65534

        status = ask_as(nobody, nobody, daemon.socket_path, {"command": "status"})
        trigger = ask_as(nobody, nobody, daemon.socket_path, {"command": "trigger"})
        check_status, checked, check_errors = ctl_as(
            nobody, nobody, "--socket", str(daemon.socket_path), "check"
        )

        assert "data" in status
        if may_trigger:
            assert trigger["data"]["message"] == "Manual backup completed successfully"
            assert "✓ database:" in checked and check_errors == ""
        else:
            assert trigger["error"]["code"] == "permission_denied"
            assert "may not trigger backups" in trigger["error"]["message"]
            assert list((tmp_path / "backups").glob("*.sql.gz")) == []
            assert check_status == 77 and checked == ""
            assert "nobody may not run the checks (they connect to the database and Telegram)" in check_errors
        daemon.socket_path.chmod(0o660)
        refused = ask_as(nobody, 12345, daemon.socket_path, {"command": "status"})
        assert "permission denied" in refused["client_error"]
        assert daemon.stop() == 0
    finally:
        shutil.rmtree(socket_directory)


def test_tgbackupctl_says_when_the_daemon_is_not_running(tmp_path):
    missing = subprocess.run(
        [sys.executable, "-m", "tgbackupd.ctl", "--socket", str(tmp_path / "none.sock"), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 69
    assert "tgbackupd is not running" in missing.stderr and "systemctl start tgbackupd" in missing.stderr
    stale = tmp_path / "stale.sock"
    socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(str(stale))
    refused = subprocess.run(
        [sys.executable, "-m", "tgbackupd.ctl", "--socket", str(stale), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 69 and "nothing listens" in refused.stderr


def test_once_makes_a_backup_and_exits_zero_or_one(tmp_path, make_database, bot_api):
    source = make_database(rows=10)
    environment = base_environment(tmp_path, source, **telegram_environment(bot_api))
    good = run_tgbackupd(environment, "--once")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith(f"Backup created: {tmp_path / 'backups'}/{source}_backup_")
    assert f"sent to Telegram chat {CHAT_ID}" in good.stdout
    environment["DATABASE_URL"] = environment["DATABASE_URL"].rsplit("/", 1)[0] + "/missing_db"
    bad = run_tgbackupd(environment, "--once")
    assert bad.returncode == 1
    assert 'database "missing_db" does not exist' in bad.stderr
    assert FAKE_TOKEN not in good.stdout + good.stderr + bad.stdout + bad.stderr


def test_invalid_configuration_exits_78_naming_every_problem(tmp_path):
    environment = base_environment(
        tmp_path, "db", BACKUP_HOUR="24", TELEGRAM_CHAT_ID="not-a-chat", TELEGRAM_BOT_TOKEN="nonsense"
    )
    for args in ((), ("--check-config",), ("--once",)):
        completed = run_tgbackupd(environment, *args)
        assert completed.returncode == 78
        assert (
            "backup.hour = '24' (from environment variable BACKUP_HOUR): expected an hour from 0 to 23"
            in completed.stderr
        )
        assert "TELEGRAM_CHAT_ID" in completed.stderr and "TELEGRAM_BOT_TOKEN" in completed.stderr
        assert "nonsense" not in completed.stderr  # a wrong token may still be a real one: never echo it


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pa55word@db.internal:6432/shop",
        "postgresql://app@db.internal:6432/shop?password=pa55word&sslmode=require",
    ],
)
def test_check_config_prints_the_effective_configuration_with_secrets_redacted(tmp_path, url):
    environment = base_environment(
        tmp_path, "shop", TELEGRAM_BOT_TOKEN=FAKE_TOKEN, TELEGRAM_CHAT_ID=CHAT_ID, DATABASE_URL=url
    )
    completed = run_tgbackupd(environment, "--check-config")
    assert completed.returncode == 0, completed.stderr
    assert 'bot_token = "<redacted>"' in completed.stdout and 'password = "<redacted>"' in completed.stdout
    assert FAKE_TOKEN not in completed.stdout and "pa55word" not in completed.stdout + completed.stderr
    assert 'host = "db.internal"' in completed.stdout and "port = 6432" in completed.stdout


def test_logs_carry_syslog_priorities_under_journald(tmp_path, make_database):
    environment = base_environment(tmp_path, "missing_db", JOURNAL_STREAM="8:12345")
    completed = run_tgbackupd(environment, "--once")
    lines = completed.stderr.splitlines()
    assert any(
        line.startswith('<6>{"timestamp"') and "Starting manual database backup" in line for line in lines
    )
    failed = [line for line in lines if "Backup routine failed" in line]
    assert failed and failed[0].startswith("<3>")
    assert json.loads(failed[0][3:])["error"].startswith("pg_dump exited with status 1")


def test_an_unusable_backup_directory_is_reported_at_once_and_the_daemon_stays_up(
    tmp_path, bot_api, start_daemon
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    environment = base_environment(
        tmp_path, "db", **telegram_environment(bot_api), TGBACKUPD_BACKUP_DIRECTORY=str(blocker / "backups")
    )
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")

    (notice,) = bot_api.messages()
    assert "the backup directory is not usable" in notice.fields["text"]
    assert "cannot create the backup directory" in daemon.log_text()
    assert daemon.ctl("status").returncode == 0
    assert daemon.stop() == 0


def test_parts_are_paced_by_telegram_messages_per_minute_and_status_tells_how_many_are_left_and_how_long(
    tmp_path, make_database, bot_api, start_daemon
):
    from tgbackupd.telegram import PACED_METHODS

    source = make_database(rows=2000)
    add_noise(source, 4)  # about 5 parts of 1 MB
    overrides = {"TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1", "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE": "120"}
    environment = base_environment(tmp_path, source, **{**telegram_environment(bot_api), **overrides})
    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")

    trigger = daemon.trigger_in_background()
    seen, rendered = [], []
    deadline = time.monotonic() + 60
    while trigger.poll() is None and time.monotonic() < deadline:
        sending = json.loads(daemon.ctl("status", "--json").stdout)["data"]["sending"]
        if sending and sending["parts_total"] is not None:
            seen.append(sending)
            rendered.append(daemon.ctl("status").stdout)
    assert trigger.wait(60) == 0, trigger.stderr.read()

    parts = len(bot_api.documents()) - 1
    assert parts >= 4 and seen, seen
    assert all(s["parts_total"] == parts and 0 <= s["parts_sent"] <= parts for s in seen)
    assert all(s["eta_s"] is not None for s in seen) and max(s["eta_s"] for s in seen) >= 1
    assert any("Sending:           " in text and f" of {parts} parts sent" in text for text in rendered)
    assert any(f" of {parts} parts sent, about " in message for message in daemon.notify.messages)
    paced = [at for at, method in bot_api.state.posts if method in PACED_METHODS]
    # 120 a minute: half a second apart (as they arrive: give the loopback a little slack).
    assert all(later - earlier >= 0.4 for earlier, later in itertools.pairwise(paced))
    assert paced[-1] - paced[0] >= 0.5 * (len(paced) - 1) - 0.2
    assert json.loads(daemon.ctl("status", "--json").stdout)["data"]["sending"] is None
    assert daemon.stop() == 0
