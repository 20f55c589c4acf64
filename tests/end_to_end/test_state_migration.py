"""From release 0.1.0 to the state store: 0.1.0's own code makes backups (some delivered, one waiting for
Telegram) and writes its JSON state file; the new daemon imports it on first start, keeps it as
`*.migrated`, and goes on where 0.1.0 stopped: the waiting backup is delivered once, the chain in the chat
is unbroken, and an old backup restores."""

import json

import pytest

from tests import release_0_1
from tests.botapi import CHAT_ID
from tests.conftest import base_environment, fingerprint, psql, run_tgbackupd, telegram_environment
from tests.end_to_end.conftest import FAST_RETRIES, status, wait_until
from tests.end_to_end.test_state_faults import chain_from_pin, intact, manifests_in_chat


@pytest.mark.parametrize(
    ("keep", "state_file"),
    [("7", None), ("0", None), ("7", "state.json")],
    ids=["default-place", "keep-0", "configured-place"],
)
def test_the_state_of_0_1_is_imported_on_first_start_and_its_backups_go_on(
    tmp_path, make_database, bot_api, start_daemon, keep, state_file
):
    source = make_database(rows=50)
    tree = release_0_1.extract(tmp_path / "release")
    environment = base_environment(
        tmp_path, source, **{**telegram_environment(bot_api), **FAST_RETRIES, "TGBACKUPD_BACKUP_KEEP": keep}
    )
    if state_file is None:  # the default place: .tgbackupd-state.json in the backup directory, for 0.1
        del environment["TGBACKUPD_DAEMON_STATE_FILE"]
        legacy = tmp_path / "backups" / ".tgbackupd-state.json"
        store = tmp_path / "backups" / ".tgbackupd-state.db"
    else:  # a configured place keeps its name: the store takes the file's place
        environment["TGBACKUPD_DAEMON_STATE_FILE"] = str(tmp_path / state_file)
        legacy = store = tmp_path / state_file

    # 0.1.0 knew no telegram.messages_per_minute (it did not pace), and refuses keys it does not know.
    unpaced = {name: value for name, value in environment.items() if "MESSAGES_PER_MINUTE" not in name}
    for _ in range(2):
        made = release_0_1.run(tree, unpaced, "--once")
        assert made.returncode == 0, made.stderr
    bot_api.state.kicked_from.add(CHAT_ID)
    assert release_0_1.run(tree, unpaced, "--once").returncode == 1  # made, waiting for Telegram
    written = legacy.read_bytes()
    old = json.loads(written)
    names = [entry["name"] for entry in old["catalogue"]]
    assert [entry["delivery"] for entry in old["catalogue"]] == ["pending", "sent", "sent"]

    daemon = start_daemon(environment)
    daemon.notify.wait_for("READY=1")

    assert legacy.with_name(legacy.name + ".migrated").read_bytes() == written
    assert store.read_bytes().startswith(b"SQLite format 3")
    assert "Imported the state file of tgbackupd 0.1 into the state store" in daemon.log_text()
    listed = json.loads(daemon.ctl("list", "--json").stdout)
    assert [(row["name"], row["delivery"]) for row in listed] == [
        (names[0], "pending"),
        (names[1], "sent"),
        (names[2], "sent"),
    ]
    seen = status(daemon)
    assert [waiting["name"] for waiting in seen["pending"]] == names[:1]
    assert seen["pending"][0]["attempts"] >= 1 and "bot may not post" in seen["pending"][0]["last_error"]
    assert seen["last_backup"]["file"] == old["last_backup"]["file"]

    bot_api.state.kicked_from.clear()
    wait_until(lambda: status(daemon)["pending_deliveries"] == 0)

    in_chat = manifests_in_chat(bot_api)
    assert sorted(manifest["name"] for manifest in in_chat) == sorted(names)  # each once
    assert chain_from_pin(bot_api) == names  # 0.1's chain goes on through the migrated catalogue
    assert all(intact(bot_api, manifest) for manifest in in_chat)
    target = make_database(empty=True)
    restored = run_tgbackupd(environment, "restore", names[-1], "--dbname", target, module="tgbackupd.ctl")
    assert restored.returncode == 0, restored.stderr
    assert fingerprint(target) == fingerprint(source)
    assert daemon.stop() == 0
    assert psql(source, "SELECT count(*) FROM customers") == "50"
