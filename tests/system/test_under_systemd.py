"""The .deb under a real systemd (PID 1 in systemd-nspawn): installed with dpkg, started with systemctl,
the token through LoadCredential=, a backup of the host's PostgreSQL delivered to a Bot API stand-in,
the control group, the journal, the watchdog, and the hardening in force while it works."""

import json
import re
import time
import uuid

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.conftest import database_url, psql
from tests.system.container import NEEDS_CONTAINER, REPO, Container, build_package

pytestmark = NEEDS_CONTAINER


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    """A booted container with the package installed, alice in tgbackupctl, bob in no group."""
    workdir = tmp_path_factory.mktemp("system")
    packages = workdir / "packages"
    package = build_package(REPO, packages)
    dbname = f"tgb_system_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {dbname}")
    psql(dbname, "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 1000) AS i")
    with BotApiStandIn() as api:
        container = Container(workdir, {packages: "/mnt/packages"})
        try:
            container.run("dpkg", "-i", f"/mnt/packages/{package.name}")
            container.run("useradd", "--create-home", "--groups", "tgbackupctl", "alice")
            container.run("useradd", "--create-home", "bob")
            yield container, api, dbname
        finally:
            container.shutdown()
            psql("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def show(container: Container, *properties: str) -> dict[str, str]:
    output = container.run("systemctl", "show", "tgbackupd", *[f"--property={p}" for p in properties]).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def journal(container: Container, *options: str) -> list[str]:
    return container.run(
        "journalctl", "-u", "tgbackupd", "-o", "cat", "--no-pager", *options
    ).stdout.splitlines()


def configure(container: Container, api: BotApiStandIn, dbname: str) -> None:
    container.write("/etc/tgbackupd/telegram-bot-token", FAKE_TOKEN, 0o600)
    # The original application's .env, as users have it (inline comment included).
    container.write(
        "/etc/tgbackupd/tgbackupd.env",
        "\n".join(
            [
                f"TELEGRAM_CHAT_ID={CHAT_ID}",
                "BACKUP_ENABLED=true",
                "BACKUP_HOUR=3  # Hour of day to run backup (0-23, default is 3 AM)",
                f"DATABASE_URL={database_url(dbname)}",
                f"TGBACKUPD_TELEGRAM_API_URL={api.url}",
                "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE=60000",  # a stand-in, not Telegram: unpaced
            ]
        ),
        0o600,
    )
    # For the test only: a short watchdog and restart delay, so that the stall test takes seconds.
    container.run("mkdir", "-p", "/etc/systemd/system/tgbackupd.service.d")
    container.write(
        "/etc/systemd/system/tgbackupd.service.d/test.conf", "[Service]\nWatchdogSec=5\nRestartSec=1"
    )
    container.run("systemctl", "daemon-reload")


def test_the_package_creates_the_user_the_group_and_a_private_configuration(system):
    container, _, _ = system
    assert container.run("id", "tgbackupd").stdout.startswith("uid=")
    assert "alice" in container.run("getent", "group", "tgbackupctl").stdout
    assert (
        container.run("stat", "-c", "%U:%G %a", "/etc/tgbackupd/config.toml").stdout.strip()
        == "root:tgbackupd 640"
    )
    assert container.run("/usr/bin/tgbackupd", "--version").stdout.strip().startswith("tgbackupd ")
    assert container.run("systemctl", "is-enabled", "tgbackupd", check=False).stdout.strip() == "disabled"
    token = container.run("stat", "-c", "%U:%G %a %s", "/etc/tgbackupd/telegram-bot-token").stdout.strip()
    assert token == "root:root 600 0"  # the credential is there, empty until the token is written


def test_a_configuration_error_fails_once_with_78_and_no_restart_loop(system):
    container, _, _ = system
    assert container.run("systemctl", "start", "tgbackupd", check=False).returncode != 0
    time.sleep(3)  # RestartSec would have passed by now
    state = show(container, "ActiveState", "ExecMainStatus", "NRestarts")
    assert state == {"ActiveState": "failed", "ExecMainStatus": "78", "NRestarts": "0"}
    errors = journal(container, "-p", "err")
    assert any("no database to back up: set DATABASE_URL" in line for line in errors)
    container.run("systemctl", "reset-failed", "tgbackupd")


def test_the_service_starts_ready_and_a_member_of_the_group_gets_a_backup_to_telegram(system):
    container, api, dbname = system
    configure(container, api, dbname)

    container.run("systemctl", "start", "tgbackupd")
    state = show(container, "ActiveState", "SubState", "StatusText", "MainPID")
    triggered = container.run("tgbackupctl", "trigger", user="alice", check=False)
    refused = container.run("tgbackupctl", "status", user="bob", check=False)
    checked = container.run("tgbackupctl", "check", user="alice", check=False)

    assert state["ActiveState"] == "active" and state["SubState"] == "running"
    assert state["StatusText"].startswith("Idle; next backup ") and "03:00" in state["StatusText"]
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    assert triggered.stdout.startswith("Manual backup completed successfully")
    document = api.documents()[0]
    assert document.file_name.startswith(f"{dbname}_backup_") and document.fields["chat_id"] == CHAT_ID
    assert refused.returncode == 77 and "permission denied" in refused.stderr
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "✓ bot token: valid" in checked.stdout  # the token came through LoadCredential= alone
    environment = container.run("cat", f"/proc/{state['MainPID']}/environ").stdout
    assert FAKE_TOKEN not in environment
    status = container.run("systemctl", "status", "tgbackupd", "--no-pager", check=False).stdout
    assert 'Status: "Idle; next backup' in status and document.file_name in status


def test_the_journal_holds_json_events_and_err_only_the_errors(system):
    container, _, _ = system
    events = [json.loads(line) for line in journal(container) if line.startswith("{")]
    assert {
        "Starting manual database backup...",
        "Backup sent to Telegram successfully",
        "Backup routine completed successfully",
    } <= {event["event"] for event in events}
    errors = [line for line in journal(container, "-p", "err") if line.startswith("{")]
    assert all(json.loads(line)["level"] in ("error", "critical") for line in errors)
    assert not any("Backup routine completed successfully" in line for line in errors)
    assert FAKE_TOKEN not in "\n".join(journal(container))


def test_the_hardening_is_in_force_while_the_daemon_works(system):
    container, _, _ = system
    pid = show(container, "MainPID")["MainPID"]
    status = dict(
        re.split(r":\s+", line, maxsplit=1)
        for line in container.run("cat", f"/proc/{pid}/status").stdout.splitlines()
        if ":" in line
    )
    assert status["NoNewPrivs"] == "1" and status["Seccomp"] == "2"
    assert status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000"
    assert container.run("nsenter", "-t", pid, "-m", "touch", "/etc/tgbackupd/x", check=False).returncode != 0
    assert container.run("nsenter", "-t", pid, "-m", "ls", "-A", "/home").stdout.strip() == ""
    exposure = container.run("systemd-analyze", "security", "tgbackupd", "--no-pager", check=False).stdout
    assert float(re.search(r"Overall exposure level for tgbackupd.service: ([0-9.]+)", exposure)[1]) <= 1.5


def test_a_stalled_main_loop_is_restarted_by_the_watchdog(system):
    container, _, _ = system
    before = show(container, "MainPID", "NRestarts")

    container.run("systemctl", "kill", "--kill-who=main", "--signal=SIGSTOP", "tgbackupd")
    container.wait_for(
        lambda: (
            show(container, "MainPID", "ActiveState")["MainPID"] not in ("0", before["MainPID"])
            and show(container, "ActiveState")["ActiveState"] == "active"
        ),
        timeout=60,
        what="the watchdog to restart the service",
    )

    after = show(container, "NRestarts")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    assert any(
        "Watchdog timeout" in line
        for line in container.run("journalctl", "-u", "tgbackupd", "--no-pager").stdout.splitlines()
    )
    container.run("systemctl", "stop", "tgbackupd")
    assert show(container, "ActiveState")["ActiveState"] == "inactive"


def test_the_installed_commands_work_and_the_package_purges_cleanly(system):
    container, _, dbname = system
    checked = container.run(
        "env", f"DATABASE_URL={database_url(dbname)}", "/usr/bin/tgbackupd", "--check-config"
    )
    assert checked.stdout.startswith("# tgbackupd: the configuration is valid")
    assert 'control_group = "tgbackupctl"' in checked.stdout
    assert "exit status:" in container.run("/usr/bin/tgbackupctl", "--help").stdout

    container.run("dpkg", "--purge", "tgbackupd")

    leftovers = container.run(
        "sh",
        "-c",
        "ls -d /etc/tgbackupd /usr/lib/python3/dist-packages/tgbackupd /usr/bin/tgbackupd "
        "/lib/systemd/system/tgbackupd.service 2>/dev/null; true",
    ).stdout
    assert leftovers.strip() == ""
    assert container.run("dpkg", "-l", "tgbackupd", check=False).returncode != 0
