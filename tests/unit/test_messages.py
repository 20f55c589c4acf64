from dataclasses import replace

import pytest

from tgbackupd import messages
from tgbackupd.ctl import render_backup, render_status


def test_sizes_read_like_the_original_log_lines():
    assert messages.human_size(16180000) == "15.43 MB"
    assert messages.human_size(2048) == "2.00 KB"
    assert messages.human_size(12) == "12 bytes"


def test_caption_says_what_a_person_needs_and_fits_telegrams_limit():
    facts = messages.BackupFacts(
        file="a" * 900 + ".sql.gz",
        database="shop on db:5432",
        server="web1",
        size_bytes=16180000,
        sha256="f" * 64,
        duration_s=20.04,
    )
    assert len(messages.backup_caption(facts)) <= messages.CAPTION_LIMIT
    short = messages.backup_caption(replace(facts, file="shop_backup_20251203_030000.sql.gz"))
    for expected in ("shop on db:5432", "web1", "15.43 MB", "f" * 64, "20.0 s", "gunzip"):
        assert expected in short


@pytest.mark.parametrize(
    ("file", "hint"),
    [
        (
            "shop_backup_20251203_030000.sql.gz",
            "gunzip FILE && psql -d DATABASE < shop_backup_20251203_030000.sql",
        ),
        (
            "shop_backup_20251203_030000.sql.zst",
            "zstd -d FILE && psql -d DATABASE < shop_backup_20251203_030000.sql",
        ),
        ("shop_backup_20251203_030000.dump.gz", "gunzip -c FILE | pg_restore --no-owner -d DATABASE"),
        ("shop_backup_20251203_030000.dump.zst", "zstd -dc FILE | pg_restore --no-owner -d DATABASE"),
    ],
)
def test_the_caption_gives_the_restore_steps_of_the_backups_formats(file, hint):
    facts = messages.BackupFacts(
        file=file, database="shop", server="web1", size_bytes=1, sha256="f" * 64, duration_s=1.0
    )
    assert f"Restore: {hint.replace('FILE', file)}" in messages.backup_caption(facts)


def test_part_captions_say_which_part_and_the_whole_backups_hash():
    facts = messages.BackupFacts(
        file="shop_backup_20251203_030000.sql.gz",
        database="shop",
        server="web1",
        size_bytes=3 * 1048576,
        sha256="a" * 64,
        duration_s=3.0,
        verification="verified: restored into a scratch database, 2 tables, 10 rows",
    )
    caption = messages.part_caption(facts, index=2, count=3, part_size=1048576, part_sha256="b" * 64)
    assert "part 2 of 3" in caption and "a" * 64 in caption and "b" * 64 in caption
    assert "✅ Verified: restored into a scratch database" in caption
    assert "cat shop_backup_20251203_030000.sql.gz.* > shop_backup_20251203_030000.sql.gz" in caption


def test_failure_notice_is_clipped_to_a_message():
    notice = messages.failure_notice(database="shop", server="web1", reason="x" * 10000)
    assert len(notice) <= messages.MESSAGE_LIMIT and notice.startswith("❌ Backup of shop on web1 failed.")


def test_status_rendering_says_when_scheduled_backups_are_off_and_telegram_missing():
    text = render_status(
        {
            "version": "0.1.0",
            "pid": 10,
            "started_at": "2025-12-02T10:00:00+00:00",
            "running": None,
            "backup_enabled": False,
            "backup_hour": 3,
            "backup_minute": 0,
            "next_run": None,
            "telegram_configured": False,
            "telegram_chat_id": None,
            "database": "shop on h",
            "backups_stored": 0,
            "backup_directory": "/b",
            "keep": 7,
            "last_backup": None,
        }
    )
    assert "Scheduled backups: off (BACKUP_ENABLED=false)" in text
    assert "not configured: backups are kept locally only" in text
    assert "Last backup:       none yet" in text


def test_with_keep_0_status_and_a_backup_say_where_the_backup_is():
    text = render_status(
        {
            "version": "0.1.0",
            "pid": 10,
            "started_at": "2025-12-02T10:00:00+00:00",
            "running": None,
            "backup_enabled": True,
            "backup_hour": 3,
            "backup_minute": 0,
            "next_run": "2025-12-03T03:00:00+00:00",
            "telegram_configured": True,
            "telegram_chat_id": "-100123",
            "database": "shop on h",
            "backups_stored": 0,
            "backup_directory": "/b",
            "keep": 0,
            "spool": {"parts": 3, "size_bytes": 3 * 1024 * 1024},
            "last_backup": None,
        }
    )
    assert (
        "Local backups:     0 in /b (backup.keep = 0: backups are kept in Telegram only; 3 part(s), "
        "3.00 MB, wait in the spool for Telegram)"
    ) in text
    backup = {
        "file": "shop_backup_20251203_030000.sql.zst",
        "path": None,
        "size_bytes": 10,
        "sha256": "ab",
        "duration_s": 1.0,
        "parts": 1,
        "message_id": None,
    }
    waiting = render_backup({**backup, "delivery": "pending"})
    sent = render_backup({**backup, "delivery": "sent", "message_id": 7})
    assert (
        "shop_backup_20251203_030000.sql.zst (its parts wait in the spool until Telegram has them" in waiting
    )
    assert "shop_backup_20251203_030000.sql.zst (not kept on this machine: backup.keep = 0)" in sent
