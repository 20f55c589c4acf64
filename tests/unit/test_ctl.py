import json
from dataclasses import replace

from tgbackupd import ctl
from tgbackupd.errors import RestoreError
from tgbackupd.manifest import Manifest, plan_parts
from tgbackupd.state import Entry
from tgbackupd.statefile import open_store
from tgbackupd.states import DeliveryState


def test_an_error_is_printed_without_any_password_the_command_line_or_environment_carries(
    monkeypatch, capsys
):
    def leaky_restore(args):
        raise RestoreError("psql said: env-pw, tg-pw, p@ss and p%40ss")

    monkeypatch.setattr(ctl, "_restore", leaky_restore)
    monkeypatch.setenv("TGBACKUPD_CONFIG", "/dev/null")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db/shop?password=env-pw")
    monkeypatch.setenv("TGBACKUPD_DATABASE_PASSWORD", "tg-pw")

    exit_code = ctl.main(["restore", "backup.sql.gz", "--dbname", "postgresql://app:p%40ss@db/other"])

    assert exit_code == 65
    assert capsys.readouterr().err == (
        "tgbackupctl: psql said: <redacted>, <redacted>, <redacted> and <redacted>\n"
    )


def test_list_without_the_daemon_nor_the_database_name_still_says_which_backups_are_here(
    tmp_path, monkeypatch, capsys
):
    # On a server whose database URL is in a file only the daemon reads: the catalogue says the names.
    name = "shop_backup_20251203_030000.sql.gz"
    manifest = Manifest("x", "shop", "shop on db", "h", "2025-12-03T03:00:00+00:00", 1, "ab" * 32, ())
    store = open_store(tmp_path / ".tgbackupd-state.db").store
    parts = plan_parts(name, [(1, "ab" * 32)])
    store.add(Entry(replace(manifest, name=name, parts=parts), DeliveryState.LOCAL_ONLY))
    store.close()
    (tmp_path / name).write_bytes(b"x")
    for variable in ("DATABASE_URL", "PGDATABASE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("TGBACKUPD_CONFIG", "/dev/null")
    monkeypatch.setenv("TGBACKUPD_BACKUP_DIRECTORY", str(tmp_path))

    assert ctl.main(["--socket", str(tmp_path / "no-daemon.sock"), "list", "--json"]) == 0

    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["local"], row["delivery"]) == (name, True, "local_only")


def test_list_without_the_daemon_marks_by_the_sections_rules_and_not_by_guesses_for_entries(
    tmp_path, monkeypatch, capsys
):
    store = open_store(tmp_path / ".tgbackupd-state.db").store
    manifest = Manifest("x", "shop", "shop on db", "h", "2025-12-03T03:00:00+00:00", 1, "ab" * 32, ())
    names = [f"shop_backup_2025120{day}_030000.sql.gz" for day in (1, 2, 3)]
    for name in names:
        store.add(
            Entry(replace(manifest, name=name, parts=plan_parts(name, [(1, "ab" * 32)])), DeliveryState.SENT)
        )
        (tmp_path / name).write_bytes(b"x")
    store.close()
    monkeypatch.setenv("TGBACKUPD_BACKUP_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("TGBACKUPD_BACKUP_KEEP", "1")
    monkeypatch.setenv("TGBACKUPD_BACKUP_KEEP_DAILY", "2")
    config = tmp_path / "config.toml"
    monkeypatch.setenv("TGBACKUPD_CONFIG", str(config))
    config.write_text("")
    socket = str(tmp_path / "no-daemon.sock")

    assert ctl.main(["--socket", socket, "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(row["kept"], row["kept_because"]) for row in rows] == [
        (True, ["last 1", "daily 2025-12-03", "newest good"]),
        (True, ["daily 2025-12-02"]),
        (False, []),
    ]
    assert ctl.main(["--socket", socket, "list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("  drop")

    config.write_text('[[databases]]\nname = "shop"\nkeep_daily = 3\n')  # the daemon knows its rules

    assert ctl.main(["--socket", socket, "list", "--json"]) == 0
    assert {row["kept"] for row in json.loads(capsys.readouterr().out)} == {None}
