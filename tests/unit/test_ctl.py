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
