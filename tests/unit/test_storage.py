from datetime import datetime

import pytest
import structlog

from tgbackupd.errors import StorageError
from tgbackupd.formats import stem
from tgbackupd.storage import BackupDirectory

WHEN = datetime(2025, 12, 3, 3, 0, 0)


def test_names_follow_the_original_pattern_and_skip_a_taken_second(tmp_path):
    directory = BackupDirectory(tmp_path, "bunyodkor")
    assert directory.unused_name(WHEN) == "bunyodkor_backup_20251203_030000.sql.gz"
    (tmp_path / "bunyodkor_backup_20251203_030000.sql.gz").write_bytes(b"x")
    assert directory.unused_name(WHEN) == "bunyodkor_backup_20251203_030001.sql.gz"
    # A backup that left no file here (sent and removed, with backup.keep = 0) still owns its name.
    catalogued = {"bunyodkor_backup_20251203_030001"}
    assert directory.unused_name(WHEN, lambda name: stem(name) in catalogued) == (
        "bunyodkor_backup_20251203_030002.sql.gz"
    )


def test_a_file_appears_under_its_name_only_when_complete(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    with directory.new_file("db_backup_20251203_030000.sql.gz") as writer:
        writer.write(b"data")
        assert directory.backups() == []
        assert [p.name for p in tmp_path.iterdir()] == [".db_backup_20251203_030000.sql.gz.partial"]
    assert [b.name for b in directory.backups()] == ["db_backup_20251203_030000.sql.gz"]


def test_an_error_while_writing_leaves_nothing_behind(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    with pytest.raises(RuntimeError), directory.new_file("db_backup_20251203_030000.sql.gz") as writer:
        writer.write(b"half")
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_removing_backups_removes_only_those_named_and_their_manifests(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    ours = [f"db_backup_2025120{day}_030000.sql.gz" for day in range(1, 10)]
    others = [
        "db_backup_manual.sql.gz",
        "dbx_backup_20250101_030000.sql.gz",
        "db_backup_20250101_030000.sql",
        "readme.txt",
        ".db_backup_20251201_030000.sql.gz.partial",
    ]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"x")

    removed = directory.remove([backup.name for backup in directory.backups()[7:]])

    assert removed == ["db_backup_20251202_030000.sql.gz", "db_backup_20251201_030000.sql.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ours[2:] + others)


def test_leftovers_of_an_interrupted_run_are_removed_and_only_those(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    leftovers = [
        ".db_backup_20251201_030000.sql.gz.partial",
        ".db_backup_20251202_030000.sql.gz.003.partial",  # a spooled part being written
        "db_backup_20251202_030000.sql.gz.001",  # spooled parts of a dump that never finished
        "db_backup_20251202_030000.sql.gz.002",
        ".db_backup_20251202_030000.sent",  # and where its first parts went, sent during the dump
    ]
    kept = [
        ".other_backup_20251201_030000.sql.gz.partial",
        "other_backup_20251202_030000.sql.gz.001",
        "db_backup_20251203_030000.sql.gz.001",  # waiting for Telegram
        ".db_backup_20251203_030000.sent",
        "db_backup_20251203_030000.sql.gz",
        # A finished dump the catalogue does not know (its recording failed): it may be the only copy.
        "db_backup_20251204_030000.sql.gz.002",
        ".db_backup_20251204_030000.sent",
        "db_backup_20251204_030000.manifest.json",
        "notes.txt.001",
    ]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"x")
    assert directory.remove_leftovers({"db_backup_20251203_030000.sql.gz"}) == sorted(leftovers)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept)


def test_a_spooled_backup_appears_part_by_part_each_only_when_complete(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    name = "db_backup_20251203_030000.sql.gz"
    with directory.new_spool(name, 2) as writer:
        writer.write(b"first")
        assert [p.name for p in tmp_path.iterdir()] == [f".{name}.001.partial"]
        writer.end_part()
        writer.write(b"second")
        assert sorted(p.name for p in tmp_path.iterdir()) == [f".{name}.002.partial", f"{name}.001"]
        assert writer.part(1, 0, 5).path.read_bytes() == b"first"
        writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.001", f"{name}.002"]
    assert directory.backups() == []  # not a backup kept here: retention never sees it
    assert sorted(part.name for part in directory.spooled()) == [f"{name}.001", f"{name}.002"]
    assert directory.unused_name(WHEN) == "db_backup_20251203_030001.sql.gz"
    directory.spooled_part_sent(name, 1, 2, 41, "file-41")
    receipts = ".db_backup_20251203_030000.sent"
    assert sorted(p.name for p in tmp_path.iterdir()) == [receipts, f"{name}.002"]
    assert directory.receipts(name, structlog.get_logger()) == {1: (41, "file-41")}
    with (tmp_path / receipts).open("a") as cut:  # a receipt cut short by a crash is not believed
        cut.write('{"index": 2, "message_id": 4')
    assert directory.receipts(name, structlog.get_logger()) == {1: (41, "file-41")}
    directory.remove_spooled(name)
    assert list(tmp_path.iterdir()) == []


def test_spooled_parts_named_before_the_count_was_known_take_the_names_of_the_count(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    name = "db_backup_20251203_030000.sql.gz"
    with directory.new_spool(name, 1500) as writer:  # expected from a backup of 1500 parts
        for part in (b"one", b"two"):
            writer.write(part)
            writer.end_part()
        writer.write(b"three")
        writer.close()
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.{i:04d}" for i in (1, 2, 3)]
        directory.spooled_part_sent(name, 1, 1500, 7, "file-7")  # sent while the dump ran
        writer.counted(3)
    assert sorted(p.name for p in tmp_path.glob("*.sql.gz.*")) == [f"{name}.002", f"{name}.003"]
    assert directory.spool_path(name, 3, 3).read_bytes() == b"three"
    assert directory.unused_name(WHEN) == "db_backup_20251203_030001.sql.gz"
    directory.remove_spooled(name)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_a_failed_spooled_backup_leaves_none_of_its_parts(tmp_path):
    directory = BackupDirectory(tmp_path, "db")
    (tmp_path / "db_backup_20251202_030000.sql.gz.001").write_bytes(b"an older backup, still waiting")
    with pytest.raises(RuntimeError), directory.new_spool("db_backup_20251203_030000.sql.gz", 2) as writer:
        writer.write(b"one")
        writer.end_part()
        writer.write(b"tw")
        raise RuntimeError("pg_dump failed")
    assert [p.name for p in tmp_path.iterdir()] == ["db_backup_20251202_030000.sql.gz.001"]


def test_two_processes_never_back_up_into_one_directory_at_once(tmp_path):
    first, second = BackupDirectory(tmp_path, "db"), BackupDirectory(tmp_path, "db")
    busy = pytest.raises(StorageError, match="another tgbackupd process is making a backup")
    with first.lock(), busy, second.lock():
        pass
    with second.lock():
        pass


def test_an_unwritable_directory_is_reported_with_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=r"set backup\.directory"):
        BackupDirectory(blocker / "backups", "db").ensure()


def test_plain_and_custom_backups_of_a_prefix_are_one_series_whatever_their_compression(tmp_path):
    directory = BackupDirectory(tmp_path, "db", ".dump.zst")
    assert directory.unused_name(WHEN) == "db_backup_20251203_030000.dump.zst"
    endings = [".sql.gz", ".sql.zst", ".dump.gz", ".dump.zst"]
    ours = [f"db_backup_2025120{day}_030000{endings[day % 4]}" for day in range(1, 10)]
    for name in [*ours, "db_backup_20250101_030000.dump"]:
        (tmp_path / name).write_bytes(b"x")
    assert directory.keeps_whole("db_backup_20251203_030000")

    removed = directory.remove([backup.name for backup in directory.backups()[7:]])

    assert removed == ours[1::-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*ours[2:], "db_backup_20250101_030000.dump"])


def test_series_sharing_the_directory_never_prune_nor_clean_up_each_others_files(tmp_path):
    # Prefixes that begin with another: a database's globals, and an `all = true` entry's `db2_` + names
    # (a database may be named `shop_backup_archive`).
    prefixes = ["shop", "shop_globals", "db2_shop", "db2_shop_backup_archive"]
    for prefix in prefixes:
        for day in range(1, 4):
            (tmp_path / f"{prefix}_backup_2025120{day}_030000.sql.gz").write_bytes(b"x")
            (tmp_path / f"{prefix}_backup_2025120{day}_030000.manifest.json").write_bytes(b"{}")
        (tmp_path / f".{prefix}_backup_20251205_030000.sql.gz.partial").write_bytes(b"x")
        (tmp_path / f".{prefix}_backup_20251205_030000.sql.gz.002.partial").write_bytes(b"x")
        (tmp_path / f"{prefix}_backup_20251206_030000.sql.gz.001").write_bytes(b"x")
        (tmp_path / f".{prefix}_backup_20251206_030000.sent").write_bytes(b"x")

    for prefix in prefixes:
        before = {path.name for path in tmp_path.iterdir()}
        directory = BackupDirectory(tmp_path, prefix)

        assert [backup.name for backup in directory.backups()] == [
            f"{prefix}_backup_2025120{day}_030000.sql.gz" for day in (3, 2, 1)
        ]
        directory.remove([backup.name for backup in directory.backups()[1:]])
        directory.remove_leftovers(frozenset())

        assert {path.name for path in tmp_path.iterdir()} == before - {
            f"{prefix}_backup_2025120{day}_030000.{ending}"
            for day in (1, 2)
            for ending in ("sql.gz", "manifest.json")
        } - {
            f".{prefix}_backup_20251205_030000.sql.gz.partial",
            f".{prefix}_backup_20251205_030000.sql.gz.002.partial",
            f"{prefix}_backup_20251206_030000.sql.gz.001",
            f".{prefix}_backup_20251206_030000.sent",
        }


def test_the_spool_is_every_databases_parts_waiting_and_only_those(tmp_path):
    waiting = [
        "shop_backup_20251201_030000.sql.gz.001",
        "shop_globals_backup_20251201_030001.sql.gz.002",
        "srv_crm_backup_20251201_030002.dump.zst.age.0001",
    ]
    for name in [*waiting, ".shop_backup_20251201_030003.sql.gz.001.partial", "notes.txt.001"]:
        (tmp_path / name).write_bytes(b"x")

    assert sorted(part.name for part in BackupDirectory(tmp_path, "shop").spooled()) == waiting
