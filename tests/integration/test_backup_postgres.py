"""One backup against the real PostgreSQL server, restored the way the original guide says."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.botapi import CHAT_ID, Fault
from tests.conftest import (
    PG_HOST,
    PG_PORT,
    backup_for,
    base_environment,
    database_url,
    fingerprint,
    psql,
    psql_command,
    telegram_environment,
)
from tests.processes import child_state
from tgbackupd import psql as psql_client
from tgbackupd.config import database_from_url, load_config
from tgbackupd.errors import RestoreError

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="needs pg_dump")


def restore_as_the_guide_says(backup: Path, workdir: Path, target: str) -> None:
    """`gunzip x.sql.gz && psql -d target < x.sql`, exactly."""
    copy = workdir / backup.name
    shutil.copy(backup, copy)
    subprocess.run(["gunzip", str(copy)], check=True)
    sql = copy.with_suffix("")
    with sql.open("rb") as stream:
        subprocess.run(psql_command(target), stdin=stream, check=True, capture_output=True)


def test_backup_restores_into_a_fresh_database_with_identical_contents(tmp_path, make_database):
    source = make_database(rows=5000)
    config = load_config(None, base_environment(tmp_path, source))

    result = backup_for(config).run("manual")

    assert result.succeeded, result.error
    assert result.delivery == "local_only"
    path = Path(result.path)
    assert path.parent == tmp_path / "backups"
    assert path.name.startswith(f"{source}_backup_") and path.name.endswith(".sql.gz")
    assert result.size_bytes == path.stat().st_size
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert os.stat(path).st_mode & 0o777 == 0o600
    manifest = path.with_name(path.name.removesuffix(".sql.gz") + ".manifest.json")
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(
        [".tgbackupd.lock", path.name, manifest.name]
    )
    assert json.loads(manifest.read_text())["sha256"] == result.sha256
    target = make_database(empty=True)
    restore_as_the_guide_says(path, tmp_path, target)
    assert fingerprint(target) == fingerprint(source)


def test_backup_is_sent_to_the_chat_with_a_caption_a_person_can_use(tmp_path, make_database, bot_api):
    source = make_database(rows=500)
    config = load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))

    result = backup_for(config).run("scheduled")

    assert result.succeeded and result.delivery == "sent", result.error
    document, manifest = bot_api.documents()
    assert document.fields["chat_id"] == CHAT_ID
    assert document.file_name == Path(result.path).name
    assert document.content == Path(result.path).read_bytes()
    caption = document.fields["caption"]
    assert source in caption and result.sha256 in caption and "Size:" in caption and "Took:" in caption
    assert gzip.decompress(document.content).startswith(b"--\n-- PostgreSQL database dump")
    assert manifest.file_name == document.file_name.removesuffix(".sql.gz") + ".manifest.json"
    assert json.loads(manifest.content)["parts"][0]["file_id"] == "doc1"
    assert result.message_id == 2 and result.pin_error is None
    assert bot_api.state.pinned[CHAT_ID]["message_id"] == 2


def test_failed_dump_leaves_no_file_and_reports_pg_dumps_own_error_to_the_chat(tmp_path, bot_api):
    environment = base_environment(tmp_path, "no_such_database_here", **telegram_environment(bot_api))
    config = load_config(None, environment)

    result = backup_for(config).run("scheduled")

    assert not result.succeeded
    assert 'database "no_such_database_here" does not exist' in result.error
    assert "pg_dump exited with status 1" in result.error
    assert [p.name for p in (tmp_path / "backups").iterdir()] == [".tgbackupd.lock"]
    (notice,) = bot_api.messages()
    assert "failed" in notice.fields["text"] and "does not exist" in notice.fields["text"]
    assert bot_api.documents() == []


def test_missing_pg_dump_is_a_clear_error(tmp_path, make_database):
    source = make_database(empty=True)
    config = load_config(
        None, base_environment(tmp_path, source, TGBACKUPD_DATABASE_PG_DUMP="/nonexistent/pg_dump")
    )

    result = backup_for(config).run("manual")

    assert "/nonexistent/pg_dump was not found: install the PostgreSQL client tools" in result.error


def test_a_413_from_the_server_keeps_the_backup_and_tells_the_chat_to_lower_the_part_size(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=100)
    config = load_config(None, base_environment(tmp_path, source, **telegram_environment(bot_api)))
    bot_api.state.upload_limit = 100  # a server stricter than telegram.part_size_mb

    result = backup_for(config).run("manual")

    assert result.delivery == "pending" and Path(result.path).exists()
    assert "413" in result.error and "telegram.part_size_mb" in result.error
    (notice,) = bot_api.messages()
    assert "telegram.part_size_mb" in notice.fields["text"]


def test_upload_retries_a_server_error_and_waits_out_a_429(tmp_path, make_database, bot_api):
    source = make_database(rows=100)
    config = load_config(
        None,
        base_environment(
            tmp_path, source, **{**telegram_environment(bot_api), "TGBACKUPD_TELEGRAM_RETRIES": "3"}
        ),
    )
    bot_api.fail_next(
        Fault(502, "Bad Gateway"), Fault(429, "Too Many Requests: retry after 1", retry_after=1)
    )

    began = time.monotonic()
    result = backup_for(config).run("manual")

    assert result.delivery == "sent", result.error
    assert time.monotonic() - began >= 1.0 + 1.0  # backoff of 1 s after the 502, then retry_after 1 s
    assert [d.file_name.endswith(".sql.gz") for d in bot_api.documents()] == [True, False]


def test_rejected_upload_is_not_retried_and_says_what_to_fix(tmp_path, make_database, bot_api):
    source = make_database(rows=10)
    environment = base_environment(
        tmp_path, source, **{**telegram_environment(bot_api), "TELEGRAM_CHAT_ID": "-100999"}
    )
    config = load_config(None, environment)

    result = backup_for(config).run("manual")

    assert result.delivery == "pending"
    assert "chat -100999 was not found" in result.error and "TELEGRAM_CHAT_ID" in result.error
    assert Path(result.path).exists()
    assert len([r for r in bot_api.state.requests if r.endswith("/sendDocument")]) == 1


def test_retention_keeps_the_newest_and_never_touches_other_files(tmp_path, make_database):
    source = make_database(empty=True)
    directory = tmp_path / "backups"
    directory.mkdir()
    old = [directory / f"{source}_backup_2025120{day}_030000.sql.gz" for day in range(1, 6)]
    for path in old:
        path.write_bytes(b"old")
    strangers = [
        directory / "notes.txt",
        directory / f"{source}_backup_latest.sql.gz",
        directory / "other_backup_20250101_030000.sql.gz",
    ]
    for path in strangers:
        path.write_bytes(b"keep me")
    config = load_config(None, base_environment(tmp_path, source, TGBACKUPD_BACKUP_KEEP="3"))

    result = backup_for(config).run("manual")

    remaining = sorted(
        p.name for p in directory.iterdir() if p.name.startswith(f"{source}_backup_2") and p.suffix == ".gz"
    )
    assert remaining == sorted([Path(result.path).name, old[4].name, old[3].name])
    assert all(path.read_bytes() == b"keep me" for path in strangers)


def test_cancelling_mid_dump_stops_pg_dump_and_removes_the_partial_file(tmp_path, make_database):
    source = make_database(empty=True)
    # A pg_dump stand-in that streams forever, like a dump of a huge database.
    slow_dump = tmp_path / "slow_pg_dump"
    slow_dump.write_text("#!/bin/sh\necho $$ > \"$0.pid\"\nexec yes 'INSERT INTO t VALUES (1);'\n")
    slow_dump.chmod(0o755)
    config = load_config(None, base_environment(tmp_path, source, TGBACKUPD_DATABASE_PG_DUMP=str(slow_dump)))
    backup = backup_for(config)
    outcome = []
    worker = threading.Thread(target=lambda: outcome.append(backup.run("manual")))
    worker.start()
    partials = []
    deadline = time.monotonic() + 10
    while not partials and time.monotonic() < deadline:
        partials = [p for p in (tmp_path / "backups").glob(".*.partial") if p.stat().st_size > 0]
        time.sleep(0.05)
    assert partials, "the dump never started writing"

    backup.cancel.set()
    worker.join(10)

    assert not worker.is_alive()
    (result,) = outcome
    assert "stopping" in result.error
    assert list((tmp_path / "backups").glob("*.gz*")) == []
    pid = int((tmp_path / "slow_pg_dump.pid").read_text())
    assert child_state(pid) is None  # ended and reaped: not running on, nor left a zombie


def test_a_table_locked_by_another_session_fails_the_dump_after_the_lock_wait_timeout_saying_why(
    tmp_path, make_database
):
    source = make_database(rows=5)
    holder = subprocess.Popen(
        [
            *psql_command(source),
            "-c",
            "BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60)",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        locked = "SELECT count(*) FROM pg_locks WHERE relation = 'orders'::regclass AND granted"
        deadline = time.monotonic() + 10
        while psql(source, locked) == "0":
            assert time.monotonic() < deadline, "the other session never took its lock"
            time.sleep(0.1)
        environment = base_environment(tmp_path, source, TGBACKUPD_DATABASE_LOCK_WAIT_TIMEOUT="1")

        began = time.monotonic()
        result = backup_for(load_config(None, environment)).run("manual")

        assert time.monotonic() - began < 30
        assert "canceling statement due to statement timeout" in result.error
        assert "could not lock a table within database.lock_wait_timeout" in result.error
        assert list((tmp_path / "backups").glob("*.gz*")) == []
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("where", ["user info", "query"])
def test_password_travels_in_the_environment_not_on_the_command_line(tmp_path, make_database, where):
    source = make_database(empty=True)
    spy = tmp_path / "spy_pg_dump"
    spy.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/argv\necho "$PGPASSWORD" > {tmp_path}/password\n'
        "echo '-- empty'\n"
    )
    spy.chmod(0o755)
    url = {
        "user info": f"postgresql://u:s3cret-pw@{PG_HOST}:{PG_PORT}/{source}",
        "query": f"postgresql://u@{PG_HOST}:{PG_PORT}/{source}?password=s3cret-pw&sslmode=disable",
    }[where]
    environment = base_environment(tmp_path, source, TGBACKUPD_DATABASE_PG_DUMP=str(spy), DATABASE_URL=url)

    result = backup_for(load_config(None, environment)).run("manual")

    assert result.succeeded, result.error
    assert "s3cret-pw" not in (tmp_path / "argv").read_text()
    assert (tmp_path / "password").read_text().strip() == "s3cret-pw"


def test_a_delivery_that_keeps_failing_is_reported_to_the_chat_once_it_answers(
    tmp_path, make_database, bot_api
):
    source = make_database(rows=10)
    environment = base_environment(
        tmp_path, source, **{**telegram_environment(bot_api), "TGBACKUPD_TELEGRAM_RETRIES": "1"}
    )
    bot_api.fail_next(Fault(500, "Internal Server Error"), Fault(503, "Service Unavailable"))

    result = backup_for(load_config(None, environment)).run("scheduled")

    assert result.delivery == "pending" and Path(result.path).exists()
    assert "failed 2 time(s), last with: 503 Service Unavailable" in result.error
    (notice,) = bot_api.messages()
    assert "not sent to Telegram" in notice.fields["text"]
    assert bot_api.documents() == []


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_a_zstd_backup_restores_with_zstd_and_psql_as_its_caption_says(tmp_path, make_database, bot_api):
    source = make_database(rows=5000)
    environment = base_environment(
        tmp_path, source, TGBACKUPD_BACKUP_COMPRESSION="zstd", **telegram_environment(bot_api)
    )

    result = backup_for(load_config(None, environment)).run("manual")

    assert result.succeeded and result.delivery == "sent", result.error
    path = Path(result.path)
    plain = path.name.removesuffix(".sql.zst") + ".sql"
    assert path.name.endswith(".sql.zst") and path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    document, manifest = bot_api.documents()
    assert f"Restore: zstd -d {path.name} && psql -d DATABASE < {plain}" in document.fields["caption"]
    assert manifest.file_name == path.name.removesuffix(".sql.zst") + ".manifest.json"
    assert json.loads(manifest.content)["compression"] == "zstd"
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    subprocess.run(["zstd", "-q", "-d", str(copy)], check=True, cwd=tmp_path)
    target = make_database(empty=True)
    with (tmp_path / plain).open("rb") as stream:
        subprocess.run(psql_command(target), stdin=stream, check=True, capture_output=True)
    assert fingerprint(target) == fingerprint(source)


def test_changing_the_format_keeps_one_series_for_retention(tmp_path, make_database):
    source = make_database(rows=10)
    made = []
    for compression in ("gzip", "gzip", "zstd", "zstd"):
        environment = base_environment(
            tmp_path, source, TGBACKUPD_BACKUP_COMPRESSION=compression, TGBACKUPD_BACKUP_KEEP="3"
        )
        result = backup_for(load_config(None, environment)).run("manual")
        assert result.succeeded, result.error
        made.append(result.file)
        time.sleep(1.1)  # one backup per second: the name carries the time

    left = sorted(p.name for p in (tmp_path / "backups").iterdir() if not p.name.startswith("."))
    stems = [name.rsplit(".sql.", 1)[0] for name in made[1:]]
    assert left == sorted(made[1:] + [stem + ".manifest.json" for stem in stems])


def test_a_query_that_gets_no_answer_in_its_time_is_ended_with_that_reason(make_database):
    source = make_database(empty=True)
    began = time.monotonic()
    with pytest.raises(RestoreError, match=r"had no answer from .* within 1 s and was ended"):
        psql_client.query(database_from_url(database_url(source)), "SELECT pg_sleep(30)", timeout_s=1)
    assert time.monotonic() - began < 10
