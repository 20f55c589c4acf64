"""An upgrade as administrators make it, under a real systemd (PID 1 in systemd-nspawn): the package of
release 0.1.0, built with that release's own script, installed, configured, enabled, its backups delivered
to a Bot API stand-in; then this package installed over it, removed, installed again and purged.

The steps run in order on one container, each a test of its own, so that a failure names its step."""

import json
import time
import uuid

import pytest

from tests import release_0_1
from tests.botapi import CHAT_ID, FAKE_TOKEN, BotApiStandIn
from tests.conftest import database_url, psql
from tests.system.container import NEEDS_CONTAINER, REPO, Container, build_package

BACKUPS = "/var/lib/tgbackupd/backups"
pytestmark = NEEDS_CONTAINER


@pytest.fixture(scope="module")
def upgrade(tmp_path_factory):
    """A booted container, the packages of 0.1.0 and of this tree beside it, a database to back up."""
    workdir = tmp_path_factory.mktemp("upgrade")
    packages = workdir / "packages"
    old = build_package(release_0_1.extract(workdir / "release"), packages)
    new = build_package(REPO, packages)
    dbname = f"tgb_upgrade_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {dbname}")
    psql(dbname, "CREATE TABLE t AS SELECT i, md5(i::text) AS m FROM generate_series(1, 1000) AS i")
    with BotApiStandIn() as api:
        container = Container(workdir, {packages: "/mnt/packages"})
        try:
            yield container, api, dbname, f"/mnt/packages/{old.name}", f"/mnt/packages/{new.name}"
        finally:
            container.shutdown()
            for name in (dbname, f"{dbname}_restored", f"{dbname}_from_chat"):
                psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def dpkg(container: Container, *arguments: str) -> str:
    """dpkg as an unattended upgrade runs it: no questions; a changed conffile is kept."""
    completed = container.run(
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "dpkg",
        "--force-confdef",
        "--force-confold",
        *arguments,
        timeout=300,
    )
    return completed.stdout + completed.stderr


def unit(container: Container, *properties: str) -> dict[str, str]:
    output = container.run("systemctl", "show", "tgbackupd", *[f"--property={p}" for p in properties]).stdout
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


def starts(container: Container) -> int:
    """How often systemd has started the service in this boot."""
    lines = container.run("journalctl", "-u", "tgbackupd", "-o", "cat", "--no-pager").stdout.splitlines()
    return sum(line.startswith("Started tgbackupd.service") for line in lines)


def catalogue(container: Container) -> dict[str, dict]:
    listed = container.run("tgbackupctl", "list", "--json")
    return {row["name"]: row for row in json.loads(listed.stdout)}


def backup_files(container: Container) -> list[str]:
    return container.run("find", BACKUPS, "-name", "*_backup_*.sql.gz", "-printf", "%f\n").stdout.split()


def delivered(api: BotApiStandIn, dbname: str) -> list[str]:
    return [
        document.file_name
        for document in api.documents()
        if document.file_name
        and document.file_name.startswith(f"{dbname}_backup_")
        and document.file_name.endswith(".sql.gz")
    ]


def test_1_release_0_1_is_installed_configured_and_delivers_backups(upgrade):
    container, api, dbname, old, _ = upgrade
    dpkg(container, "-i", old)
    container.write("/etc/tgbackupd/telegram-bot-token", FAKE_TOKEN, 0o600)
    environment = {
        "TELEGRAM_CHAT_ID": CHAT_ID,
        "DATABASE_URL": database_url(dbname),
        "TGBACKUPD_TELEGRAM_API_URL": api.url,
    }
    container.write(
        "/etc/tgbackupd/tgbackupd.env", "\n".join(f"{k}={v}" for k, v in environment.items()), 0o600
    )
    # The administrator's own change to the conffile, which the upgrade must keep.
    container.run("sed", "-i", "s/^# keep = 7$/keep = 5/", "/etc/tgbackupd/config.toml")
    container.run("systemctl", "enable", "--now", "tgbackupd")
    for _ in range(2):
        triggered = container.run("tgbackupctl", "trigger")
        assert triggered.stdout.startswith("Manual backup completed successfully")
        time.sleep(1.1)  # backups are named by the second

    assert container.run("tgbackupd", "--version").stdout.strip() == "tgbackupd 0.1.0"
    assert len(delivered(api, dbname)) == 2 and sorted(delivered(api, dbname)) == sorted(
        backup_files(container)
    )
    state = json.loads(container.run("cat", f"{BACKUPS}/.tgbackupd-state.json").stdout)
    assert len(state["catalogue"]) == 2


def test_2_the_upgrade_keeps_the_configuration_migrates_the_state_and_restarts_once(upgrade):
    container, _, _, _, new = upgrade
    started, pid = starts(container), unit(container, "MainPID")["MainPID"]

    output = dpkg(container, "-i", new)

    assert "==> Keeping old config file as default." in output
    assert "keep = 5" in container.run("grep", "^keep", "/etc/tgbackupd/config.toml").stdout
    assert container.run("test", "-f", "/etc/tgbackupd/config.toml.dpkg-dist").returncode == 0
    mode = container.run("stat", "-c", "%U:%G %a", "/etc/tgbackupd", "/etc/tgbackupd/config.toml").stdout
    assert mode.split("\n")[:2] == ["root:tgbackupd 750", "root:tgbackupd 640"]
    assert container.run("tgbackupd", "--version").stdout.strip() == "tgbackupd 0.2.0"
    container.wait_for(
        lambda: unit(container, "ActiveState")["ActiveState"] == "active", what="the service to be active"
    )
    assert starts(container) == started + 1 and unit(container, "MainPID")["MainPID"] != pid
    assert unit(container, "NRestarts")["NRestarts"] == "0"
    container.wait_for(
        lambda: container.run("test", "-f", f"{BACKUPS}/.tgbackupd-state.db", check=False).returncode == 0,
        what="the state store",
    )
    files = container.run("ls", "-A", BACKUPS).stdout.split()
    assert ".tgbackupd-state.json.migrated" in files and ".tgbackupd-state.json" not in files


def test_3_tgbackupctl_lists_the_old_backups_as_delivered_and_restores_one_from_disk_and_chat(upgrade):
    container, api, dbname, _, _ = upgrade
    listed = catalogue(container)
    for name in delivered(api, dbname):
        assert listed[name]["delivery"] == "sent" and listed[name]["manifest_message_id"] is not None
    oldest = sorted(delivered(api, dbname))[0]
    psql("postgres", f"CREATE DATABASE {dbname}_restored")

    container.run(
        "tgbackupctl", "restore", oldest, "--dbname", database_url(f"{dbname}_restored"), timeout=300
    )

    assert psql(f"{dbname}_restored", "SELECT count(*), sum(i) FROM t") == "1000|500500"

    # The copy in the chat, found from 0.1's pinned manifest (0.1 did not sign them: --trust-unsigned).
    psql("postgres", f"CREATE DATABASE {dbname}_from_chat")
    container.run(
        "env",
        f"TELEGRAM_BOT_TOKEN={FAKE_TOKEN}",
        f"TELEGRAM_CHAT_ID={CHAT_ID}",
        f"TGBACKUPD_TELEGRAM_API_URL={api.url}",
        "tgbackupctl",
        "restore",
        "--from-telegram",
        oldest,
        "--trust-unsigned",
        "--dbname",
        database_url(f"{dbname}_from_chat"),
        timeout=300,
    )
    assert psql(f"{dbname}_from_chat", "SELECT count(*), sum(i) FROM t") == "1000|500500"
    for section, page in (("1", "tgbackupctl"), ("8", "tgbackupd"), ("5", "tgbackupd.toml")):
        manual = container.run("man", "-P", "cat", section, page).stdout
        assert manual.startswith(f"{page.upper()}({section})") and "SEE ALSO" in manual


def test_4_removal_stops_the_service_and_keeps_the_backups_and_the_configuration(upgrade):
    container, api, dbname, _, _ = upgrade

    dpkg(container, "--remove", "tgbackupd")

    assert unit(container, "ActiveState", "LoadState") == {
        "ActiveState": "inactive",
        "LoadState": "not-found",
    }
    assert sorted(backup_files(container)) == sorted(delivered(api, dbname))
    assert "keep = 5" in container.run("cat", "/etc/tgbackupd/config.toml").stdout
    assert container.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", "tgbackupd").stdout.strip() == "rc"


def test_5_a_reinstall_finds_the_configuration_and_the_catalogue_and_runs_again(upgrade):
    container, api, dbname, _, new = upgrade

    dpkg(container, "-i", new)

    assert "keep = 5" in container.run("cat", "/etc/tgbackupd/config.toml").stdout
    container.wait_for(
        lambda: unit(container, "ActiveState")["ActiveState"] == "active", what="the service to be active"
    )
    assert set(delivered(api, dbname)) <= set(catalogue(container))


def test_6_purge_removes_the_configuration_and_keeps_the_backups(upgrade):
    container, api, dbname, _, _ = upgrade

    output = dpkg(container, "--purge", "tgbackupd")

    assert "the backups in /var/lib/tgbackupd are kept" in output
    assert container.run("test", "-e", "/etc/tgbackupd", check=False).returncode != 0
    assert "tgbackupd" not in container.run("dpkg-statoverride", "--list").stdout
    wants = "/etc/systemd/system/multi-user.target.wants/tgbackupd.service"
    assert container.run("test", "-L", wants, check=False).returncode != 0
    assert sorted(backup_files(container)) == sorted(delivered(api, dbname))
    assert container.run("test", "-f", f"{BACKUPS}/.tgbackupd-state.db").returncode == 0
    assert container.run("id", "tgbackupd").stdout.startswith("uid=")  # it owns what was kept
    assert container.run("dpkg-query", "-W", "tgbackupd", check=False).returncode != 0
