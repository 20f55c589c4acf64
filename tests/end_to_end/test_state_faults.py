"""Faults of the state file against the real daemon: a place it cannot use stops it at start with what to
do; a write that fails makes the backup fail with that reason; a damaged file is moved aside and rebuilt
from the backup directory and the chat, so that nothing is lost nor sent twice; and the daemon and a
`tgbackupd --once` never deliver the same backup twice."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, Fault
from tests.conftest import (
    add_noise,
    base_environment,
    fingerprint,
    run_tgbackupd,
    small_file_system,
    telegram_environment,
)
from tests.end_to_end.conftest import status, wait_until
from tests.processes import child_environment
from tgbackupd.statefile import open_reader, open_store

NOBODY = 65534
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, file owners)")


def manifests_in_chat(bot_api) -> list[dict]:
    return [json.loads(d.content) for d in bot_api.documents() if d.file_name.endswith(".manifest.json")]


def chain_from_pin(bot_api) -> list[str]:
    """The backups' names found by walking from the pinned manifest, as a new machine would."""
    by_message = {
        d.message_id: json.loads(d.content) for d in bot_api.documents() if d.file_name.endswith(".json")
    }
    pinned = bot_api.state.pinned[CHAT_ID]["message_id"]
    names = []
    while pinned is not None:
        manifest = by_message[pinned]
        names.append(manifest["name"])
        pinned = (manifest.get("previous") or {}).get("message_id")
    return names


def intact(bot_api, manifest: dict) -> bool:
    content = b"".join(bot_api.state.files[part["file_id"]] for part in manifest["parts"])
    return hashlib.sha256(content).hexdigest() == manifest["sha256"]


def _a_directory(path: Path) -> str:
    path.mkdir()
    return "is a directory"


def _under_a_file(path: Path) -> str:
    path.parent.write_text("a file where a directory should be")
    return "does not exist and cannot be created"


def _of_another_user(path: Path) -> str:
    open_store(path).store.close()
    os.chown(path, NOBODY, NOBODY)
    return "belongs to nobody, not to root who runs this"


def _on_a_read_only_file_system(path: Path) -> str:
    path.parent.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(path.parent)], check=True)
    return "is on a read-only file system"


@pytest.mark.parametrize(
    "make",
    [
        _a_directory,
        _under_a_file,
        pytest.param(_of_another_user, marks=ROOT_ONLY),
        pytest.param(_on_a_read_only_file_system, marks=ROOT_ONLY),
    ],
    ids=["a-directory", "parent-not-creatable", "another-user", "read-only"],
)
def test_an_unusable_state_file_stops_tgbackupd_at_start_and_every_check_says_why(
    tmp_path, make_database, start_daemon, make
):
    source = make_database(empty=True)
    path = tmp_path / "place" / "state.db"
    if make is _a_directory or make is _of_another_user:
        path = tmp_path / "state.db"
    expected = make(path)
    try:
        environment = base_environment(tmp_path, source, TGBACKUPD_DAEMON_STATE_FILE=str(path))
        daemon = start_daemon(environment)
        notified = daemon.notify.messages
        assert daemon.wait() == 73
        assert not any("READY=1" in message for message in notified)
        log_text = daemon.log_text()
        assert '"event": "tgbackupd cannot start"' in log_text and expected in log_text
        assert f"daemon.state_file = {path}" in log_text

        checked = run_tgbackupd(environment, "--check-config")
        assert expected in checked.stderr and "daemon.state_file" in checked.stderr
        if make is _of_another_user:  # root looking at a service's configuration: a note, not a failure
            assert checked.returncode == 0 and "tgbackupd: note: " in checked.stderr
        else:
            assert checked.returncode == 73
        live = run_tgbackupd(environment, "--check")
        assert live.returncode == 1 and f"✗ state file: daemon.state_file = {path}" in live.stdout
        once = run_tgbackupd(environment, "--once")
        assert once.returncode == 73 and expected in once.stderr
        assert not (tmp_path / "backups").exists() or not list((tmp_path / "backups").glob("*.sql.gz"))
    finally:
        if make is _on_a_read_only_file_system:
            subprocess.run(["umount", str(path.parent)], check=True)


@ROOT_ONLY
def test_a_full_disk_under_the_state_file_fails_the_backup_with_that_reason_and_it_is_sent_once_space_is_back(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    with small_file_system(tmp_path / "state-disk", "512k") as small:
        daemon = daemon_for(source, TGBACKUPD_DAEMON_STATE_FILE=str(small / "state.db"))
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={small / 'filler'}", "bs=4k"], capture_output=True, check=False
        )

        triggered = daemon.ctl("trigger")

        assert triggered.returncode == 1
        assert "could not be recorded" in triggered.stderr and "database or disk is full" in triggered.stderr
        assert bot_api.documents() == []  # not recorded, so not sent: nobody could resume or chain it
        (notice,) = bot_api.messages()
        assert "could not be recorded" in notice.fields["text"] and "disk is full" in notice.fields["text"]
        assert "database or disk is full" in status(daemon)["last_backup"]["error"]
        checked = daemon.ctl("check")
        assert checked.returncode == 1 and "✗ state file" in checked.stdout and "full" in checked.stdout
        kept = list((tmp_path / "backups").glob("*.sql.gz"))
        assert len(kept) == 1  # the backup itself is there

        (small / "filler").unlink()  # space is back: the next delivery reads the backup back and sends it
        assert daemon.ctl("trigger").returncode == 0
        made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
        assert made[0] == kept[0].name and len(made) == 2
        assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
        assert chain_from_pin(bot_api) == made[::-1]
        assert "Found finished backups in the backup directory" in daemon.log_text()
        assert status(daemon)["pending_deliveries"] == 0
        assert daemon.stop() == 0


@ROOT_ONLY
def test_a_state_file_whose_file_system_goes_away_is_noticed_and_rebuilt_at_the_next_start(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    with small_file_system(tmp_path / "state-disk", "4m") as mount:
        state = {"TGBACKUPD_DAEMON_STATE_FILE": str(mount / "state.db")}
        daemon = daemon_for(source, **state)
        assert daemon.ctl("trigger").returncode == 0
        subprocess.run(["umount", "-l", str(mount)], check=True)  # gone under the running daemon

        lost = daemon.ctl("trigger")

        assert lost.returncode == 1 and "was moved, replaced or unmounted" in lost.stderr
        assert "moved, replaced or unmounted" in status(daemon)["state_problem"]
        assert daemon.stop() == 0
        again = daemon_for(source, **state)  # an empty mount point: the state is lost, not silently empty
        wait_until(lambda: status(again)["pending_deliveries"] == 0)
        made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
        assert len(made) == 1  # the second failed before its dump: nothing could have been recorded
        assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
        assert "could not be used (it was missing" in bot_api.messages()[-1].fields["text"]
        listed = json.loads(again.ctl("list", "--json").stdout)
        assert [(row["name"], row["delivery"]) for row in listed] == [(made[0], "sent")]
        assert again.stop() == 0


def test_without_the_right_to_pin_a_rebuild_still_sends_nothing_twice(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    bot_api.state.can_pin = False
    daemon = daemon_for(source)
    for _ in range(3):
        assert daemon.ctl("trigger").returncode == 0
    assert daemon.stop() == 0
    _random_bytes(tmp_path / "state.db")

    again = daemon_for(source)
    wait_until(lambda: "Read the chain of manifests in the chat back into the catalogue" in again.log_text())
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
    assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
    assert again.stop() == 0


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _truncated(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("damage", [_random_bytes, _truncated], ids=["random-bytes", "truncated"])
def test_a_damaged_state_file_is_rebuilt_from_the_directory_and_the_chat_sending_nothing_twice(
    tmp_path, make_database, bot_api, daemon_for, damage
):
    source = make_database(rows=10)
    daemon = daemon_for(source)
    assert daemon.ctl("trigger").returncode == 0
    assert daemon.ctl("trigger").returncode == 0
    bot_api.state.kicked_from.add(CHAT_ID)
    assert daemon.ctl("trigger").returncode == 1  # made, waiting for Telegram
    assert daemon.stop() == 0
    made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
    damage(tmp_path / "state.db")
    bot_api.state.kicked_from.clear()

    again = daemon_for(source)
    wait_until(lambda: len(manifests_in_chat(bot_api)) == 3)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
    assert chain_from_pin(bot_api) == made[::-1]  # the chain goes on through the rebuilt catalogue
    assert all(intact(bot_api, manifest) for manifest in manifests_in_chat(bot_api))
    log_text = again.log_text()
    assert '"level": "error", "logger": "tgbackupd.daemon", "event": "The state file was damaged' in log_text
    assert [p.name for p in tmp_path.glob("state.db.corrupt-*")]
    assert "could not be used" in bot_api.messages()[-1].fields["text"]
    listed = json.loads(again.ctl("list", "--json").stdout)
    assert [(row["name"], row["delivery"]) for row in listed] == [(name, "sent") for name in made[::-1]]
    assert again.stop() == 0


def test_a_chain_broken_in_the_chat_ends_the_search_there_instead_of_holding_deliveries_forever(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=10)
    daemon = daemon_for(source)
    for _ in range(2):
        assert daemon.ctl("trigger").returncode == 0
    bot_api.state.kicked_from.add(CHAT_ID)
    assert daemon.ctl("trigger").returncode == 1
    assert daemon.stop() == 0
    made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
    oldest = next(d for d in bot_api.documents() if d.file_name.endswith(".manifest.json"))
    bot_api.state.files.pop(f"doc{oldest.message_id}")  # its message was deleted from the chat
    _random_bytes(tmp_path / "state.db")
    bot_api.state.kicked_from.clear()

    again = daemon_for(source)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    # The oldest could not be found past the break: sent again rather than held; the others once.
    assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == {made[0]: 2, made[1]: 1, made[2]: 1}
    assert chain_from_pin(bot_api)[:2] == [made[2], made[1]]
    assert "The chain of manifests in the chat is broken" in again.log_text()
    assert again.stop() == 0


def test_a_damaged_state_file_with_a_backup_half_sent_under_keep_0_loses_nothing(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=2000)
    add_noise(source, 3)  # three parts or more of 1 MB
    spooled = {
        "TGBACKUPD_BACKUP_KEEP": "0",
        "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1",
        "TGBACKUPD_TELEGRAM_UPLOAD_WHILE_DUMPING": "false",
    }
    bot_api.fail_next(Fault(action="pass"), Fault(status=403, description="Forbidden: bot was kicked"))
    daemon = daemon_for(source, **spooled, TGBACKUPD_TELEGRAM_REDELIVER_MIN_S="3600")
    assert daemon.ctl("trigger").returncode == 1  # part 1 sent, then refused: it waits
    assert daemon.stop() == 0
    backups = tmp_path / "backups"
    waiting = sorted(p.name for p in backups.glob("*.sql.gz.*"))
    assert len(waiting) >= 2 and not waiting[0].endswith(".001")  # part 1 left the spool once sent
    _random_bytes(tmp_path / "state.db")

    again = daemon_for(source, **spooled)
    wait_until(lambda: len(manifests_in_chat(bot_api)) == 1, timeout=60)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    (manifest,) = manifests_in_chat(bot_api)
    assert intact(bot_api, manifest)
    first_part = manifest["parts"][0]
    assert first_part["message_id"] == bot_api.documents()[0].message_id  # not sent a second time
    assert list(backups.glob("*.sql.gz*")) == []  # delivered: the spool is empty
    restored = tmp_path / "restored.sql"
    new_machine = child_environment(
        TELEGRAM_BOT_TOKEN=telegram_environment(bot_api)["TELEGRAM_BOT_TOKEN"],
        TELEGRAM_CHAT_ID=CHAT_ID,
        TGBACKUPD_TELEGRAM_API_URL=bot_api.url,
        TGBACKUPD_CONFIG="/dev/null",
        HOME=str(tmp_path),
    )
    fetched = run_tgbackupd(
        new_machine, "restore", "--from-telegram", "--output", str(restored), module="tgbackupd.ctl"
    )
    assert fetched.returncode == 0, fetched.stderr
    assert restored.stat().st_size > 3 * 1024 * 1024
    assert again.stop() == 0


def test_sigkill_while_a_part_is_recorded_sends_each_backup_once_and_intact(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=2000)
    add_noise(source, 3)
    parts = {  # sent by the outbox after the dump, each recorded as it reaches the chat
        "TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1",
        "TGBACKUPD_TELEGRAM_TIMEOUT": "60",
        "TGBACKUPD_TELEGRAM_UPLOAD_WHILE_DUMPING": "false",
    }
    daemon = daemon_for(source, **parts)
    daemon.trigger_in_background()
    wait_until(lambda: len(bot_api.documents()) >= 2)  # killed the moment part 2 has an answer
    daemon.process.send_signal(signal.SIGKILL)
    daemon.wait()

    again = daemon_for(source, **parts)
    wait_until(lambda: len(manifests_in_chat(bot_api)) == 1, timeout=60)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    (manifest,) = manifests_in_chat(bot_api)
    assert intact(bot_api, manifest)
    assert open_store(tmp_path / "state.db").damaged is None
    assert again.stop() == 0


def test_the_daemon_and_a_once_from_cron_never_deliver_one_backup_twice(
    tmp_path, make_database, bot_api, daemon_for
):
    source = make_database(rows=2000)
    add_noise(source, 2)
    parts = {"TGBACKUPD_TELEGRAM_PART_SIZE_MB": "1"}
    daemon = daemon_for(source, **parts)
    bot_api.state.kicked_from.add(CHAT_ID)
    assert daemon.ctl("trigger").returncode == 1  # waits in the outbox; the daemon retries every second
    bot_api.state.uplink_bytes_per_s = 1024 * 1024  # each delivery takes seconds: they overlap
    bot_api.state.kicked_from.clear()

    once = subprocess.run(
        [sys.executable, "-m", "tgbackupd", "--once"],
        env={**daemon.environment, "TGBACKUPD_DAEMON_SOCKET": str(tmp_path / "unused.sock")},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert once.returncode == 0, once.stderr
    wait_until(lambda: status(daemon)["pending_deliveries"] == 0, timeout=60)
    made = sorted(p.name for p in (tmp_path / "backups").glob("*.sql.gz"))
    assert len(made) == 2
    assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
    assert chain_from_pin(bot_api) == made[::-1]
    assert all(intact(bot_api, manifest) for manifest in manifests_in_chat(bot_api))
    assert daemon.stop() == 0
    assert open_reader(tmp_path / "state.db").undelivered() == set()
    assert fingerprint(source)  # the source is untouched


@pytest.mark.parametrize("damage", [Path.unlink, _random_bytes], ids=["missing", "random-bytes"])
def test_a_lost_or_damaged_state_file_is_rebuilt_with_every_databases_backups(
    tmp_path, make_database, bot_api, daemon_for, damage
):
    # The first entry finds its databases at run time: no backup has the prefix of the configuration's
    # first database, so only a read-back of every prefix finds them (and sees that the file was lost).
    found, named = make_database(rows=10), make_database(rows=10)
    (tmp_path / "config.toml").write_text(
        f'[[databases]]\nall = true\nprefix = "srv_"\nexclude = ["{named}"]\n\n'
        f'[[databases]]\nname = "{named}"\nprefix = "shop"\nglobals = true\n'
    )
    daemon = daemon_for(named)
    # One at a time by name: a trigger of all would dump every database of the shared test server.
    assert daemon.ctl("trigger", found).returncode == 0
    assert daemon.ctl("trigger", "shop").returncode == 0
    bot_api.state.kicked_from.add(CHAT_ID)
    assert daemon.ctl("trigger", "shop_globals").returncode == 1  # made, waiting for Telegram
    assert daemon.ctl("trigger", found).returncode == 1
    assert daemon.stop() == 0
    backups = tmp_path / "backups"
    made = sorted(p.name for p in backups.glob("*.sql.gz"))
    assert sorted({name.split("_backup_")[0] for name in made}) == sorted(
        [f"srv_{found}", "shop", "shop_globals"]
    )
    damage(tmp_path / "state.db")
    bot_api.state.kicked_from.clear()

    again = daemon_for(named)
    wait_until(lambda: status(again)["pending_deliveries"] == 0)

    assert Counter(m["name"] for m in manifests_in_chat(bot_api)) == dict.fromkeys(made, 1)
    # One chain, through every database's backups in the order they were made (one a second).
    assert chain_from_pin(bot_api) == sorted(made, key=lambda name: name.split("_backup_")[1], reverse=True)
    assert all(intact(bot_api, manifest) for manifest in manifests_in_chat(bot_api))
    assert "the catalogue is rebuilt" in bot_api.messages()[-1].fields["text"]
    listed = json.loads(again.ctl("list", "--json").stdout)
    assert sorted((row["name"], row["delivery"]) for row in listed) == [(name, "sent") for name in made]
    assert again.stop() == 0
