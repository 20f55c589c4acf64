"""`systemctl reload tgbackupd` under a real systemd 252 (PID 1 in systemd-nspawn), the package installed:
a good new configuration takes over (the schedule in systemd's status line, the chat of the next backup);
a bad one fails the reload with its reason, in the journal as an error, while the service stays up
under the configuration before it; a plain SIGHUP reloads too."""

import json
import uuid

import pytest

from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.conftest import database_url, psql
from tests.system.container import NEEDS_CONTAINER, REPO, Container, build_package

OTHER_CHAT = "-100987654321"
CONFIG = "/etc/tgbackupd/config.toml"
pytestmark = NEEDS_CONTAINER


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The package installed and started, backing up a database of the host to a Bot API stand-in that
    knows two chats; alice may use tgbackupctl."""
    workdir = tmp_path_factory.mktemp("reload")
    package = build_package(REPO, workdir / "packages")
    dbname = f"tgb_reload_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {dbname}")
    psql(dbname, "CREATE TABLE t AS SELECT i FROM generate_series(1, 100) AS i")
    with BotApiStandIn(chats={CHAT_ID, OTHER_CHAT}) as api:
        container = Container(workdir, {package.parent: "/mnt/packages"})
        try:
            container.run("dpkg", "-i", f"/mnt/packages/{package.name}")
            container.run("useradd", "--create-home", "--groups", "tgbackupctl", "alice")
            container.write("/etc/tgbackupd/telegram-bot-token", FAKE_TOKEN, 0o600)
            container.write(
                "/etc/tgbackupd/tgbackupd.env",
                "\n".join(
                    [
                        f"DATABASE_URL={database_url(dbname)}",
                        f"TGBACKUPD_TELEGRAM_API_URL={api.url}",
                        "TGBACKUPD_TELEGRAM_MESSAGES_PER_MINUTE=60000",  # a stand-in, not Telegram
                    ]
                ),
                0o600,
            )
            configure(container, CHAT_ID, 3)
            container.run("systemctl", "start", "tgbackupd")
            yield container, api
        finally:
            container.shutdown()
            psql("postgres", f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")


def configure(container: Container, chat_id: str, hour: int | str) -> None:
    """The daemon's configuration file, as the package keeps it (root:tgbackupd, 0640)."""
    container.write(
        CONFIG,
        f'[telegram]\nchat_id = "{chat_id}"\n[backup]\nhour = {hour}\n'
        '[daemon]\ncontrol_group = "tgbackupctl"',
        0o640,
    )
    container.run("chown", "root:tgbackupd", CONFIG)


def show(container: Container, *properties: str) -> dict[str, str]:
    output = container.run("systemctl", "show", "tgbackupd", *[f"--property={p}" for p in properties]).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def daemon_status(container: Container) -> dict:
    completed = container.run("tgbackupctl", "status", "--json", user="alice")
    return json.loads(completed.stdout)["data"]


def journal_events(container: Container, *options: str) -> list[dict]:
    lines = container.run("journalctl", "-u", "tgbackupd", "-o", "cat", "--no-pager", *options).stdout
    return [json.loads(line) for line in lines.splitlines() if line.startswith("{")]


def test_systemctl_reload_applies_a_good_configuration(running):
    container, api = running
    before = show(container, "MainPID", "StatusText")
    assert "next backup" in before["StatusText"] and " 03:00" in before["StatusText"]

    configure(container, OTHER_CHAT, 5)
    reloaded = container.run("systemctl", "reload", "tgbackupd", check=False)

    assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
    after = show(container, "MainPID", "ActiveState", "SubState", "StatusText")
    assert after["MainPID"] == before["MainPID"]  # reloaded, not restarted
    assert (after["ActiveState"], after["SubState"]) == ("active", "running")
    assert " 05:00" in after["StatusText"]
    status = daemon_status(container)
    assert status["telegram_chat_id"] == OTHER_CHAT and status["reload"]["ok"] is True
    assert status["reload"]["changed"] == ["telegram.chat_id", "backup.hour"]
    triggered = container.run("tgbackupctl", "trigger", user="alice", check=False)
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    assert {document.fields["chat_id"] for document in api.documents()} == {OTHER_CHAT}
    assert any(event["event"] == "Configuration reloaded" for event in journal_events(container))


def test_systemctl_reload_fails_on_a_bad_configuration_and_the_running_one_stays(running):
    container, api = running
    before = show(container, "MainPID")

    configure(container, CHAT_ID, 25)
    reloaded = container.run("systemctl", "reload", "tgbackupd", check=False)

    assert reloaded.returncode != 0
    after = show(container, "MainPID", "ActiveState", "SubState")
    assert after == {"MainPID": before["MainPID"], "ActiveState": "active", "SubState": "running"}
    errors = journal_events(container, "-p", "err")
    failed = [
        e for e in errors if e["event"] == "Configuration reload failed; the running configuration stays"
    ]
    assert failed and "backup.hour" in failed[-1]["error"]
    status = daemon_status(container)
    assert status["reload"]["ok"] is False and "backup.hour" in status["reload"]["error"]
    assert status["telegram_chat_id"] == OTHER_CHAT  # the configuration before the bad one
    sent = len(api.documents())
    assert container.run("tgbackupctl", "trigger", user="alice", check=False).returncode == 0
    assert {document.fields["chat_id"] for document in api.documents()[sent:]} == {OTHER_CHAT}


def test_a_plain_sighup_reloads_too(running):
    container, _ = running
    configure(container, CHAT_ID, 4)

    container.run("systemctl", "kill", "--kill-who=main", "--signal=SIGHUP", "tgbackupd")
    container.wait_for(
        lambda: daemon_status(container)["telegram_chat_id"] == CHAT_ID, timeout=30, what="the reload"
    )

    container.wait_for(
        lambda: show(container, "SubState")["SubState"] == "running", timeout=30, what="READY=1 after it"
    )
    assert " 04:00" in show(container, "StatusText")["StatusText"]
    assert daemon_status(container)["reload"]["ok"] is True
