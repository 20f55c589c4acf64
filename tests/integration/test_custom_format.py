"""pg_dump's custom format and options: a custom-format backup is compressed, parted and delivered as
any other and comes back through pg_restore, in one transaction or on several connections; the
database.* options really choose what is dumped."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import (
    backup_for,
    base_environment,
    contents,
    database_url,
    psql,
    run_tgbackupd,
)
from tests.end_to_end.test_encryption import age_key
from tests.integration.test_parts_and_restore import backup_in_parts, new_machine
from tgbackupd.config import load_config

pytestmark = pytest.mark.skipif(shutil.which("pg_restore") is None, reason="needs pg_dump and pg_restore")
CUSTOM = {"TGBACKUPD_BACKUP_FORMAT": "custom"}
# An event trigger, which is no relation (the target counts as empty), that fails the restore once the
# data is in: at the first CREATE INDEX, which pg_restore runs after the tables' data.
REFUSE_INDEXES = """
CREATE FUNCTION refuse_index() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no index may be created here'; END $$;
CREATE EVENT TRIGGER refuse_index ON ddl_command_start WHEN TAG IN ('CREATE INDEX')
EXECUTE FUNCTION refuse_index();
"""


def ctl(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_tgbackupd(environment, *args, module="tgbackupd.ctl")


def tables(dbname: str) -> list[str]:
    return psql(
        dbname,
        "SELECT schemaname || '.' || tablename FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
    ).splitlines()


@pytest.fixture
def custom_backup(tmp_path, awkward_database):
    """An awkward database and its custom-format backup, kept here: (source, environment, result)."""
    source = awkward_database()
    environment = base_environment(tmp_path, source, **CUSTOM)
    result = backup_for(load_config(None, environment)).run("manual")
    assert result.succeeded, result.error
    return source, environment, result


def test_a_custom_backup_restores_into_a_new_database_in_one_go_and_on_two_connections(
    tmp_path, custom_backup, make_database
):
    source, environment, result = custom_backup
    assert result.file.endswith(".dump.gz")
    manifest = json.loads(
        Path(result.path).with_name(result.file.replace(".dump.gz", ".manifest.json")).read_text()
    )
    assert manifest["dump_format"] == "custom" and manifest["compression"] == "gzip"
    work = tmp_path / "work"
    work.mkdir()

    serial, parallel = make_database(empty=True), make_database(empty=True)
    restored = ctl(environment, "restore", result.path, "--dbname", serial)
    restored_on_two = ctl(
        environment, "restore", result.path, "--dbname", parallel, "--jobs", "2", "--work-dir", str(work)
    )

    assert restored.returncode == 0, restored.stderr
    assert restored_on_two.returncode == 0, restored_on_two.stderr
    expected = contents(source)
    assert len(expected) == 13
    assert contents(serial) == expected
    assert contents(parallel) == expected
    assert list(work.iterdir()) == []  # the archive written for pg_restore --jobs is gone


def test_a_custom_backup_is_verified_with_the_same_counts_one_way_or_the_other(custom_backup):
    _, environment, result = custom_backup

    serial = ctl(environment, "verify", result.path)
    parallel = ctl(environment, "verify", result.path, "--jobs", "2")

    rows = 100000 + 3 + 50 + 2000 + 4000 + 10
    for verified in (serial, parallel):
        assert verified.returncode == 0, verified.stderr
        assert f"verified: restored into a scratch database, 6 tables, {rows} rows" in verified.stdout
        assert "app.events" in verified.stdout and "100000" in verified.stdout
    assert psql("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'tgbackupd_verify_%'") == "0"


def test_output_writes_the_archive_that_pg_restore_reads(tmp_path, custom_backup, make_database):
    source, environment, result = custom_backup
    archive = tmp_path / "out.dump"

    written = ctl(environment, "restore", result.path, "--output", str(archive))

    assert written.returncode == 0, written.stderr
    assert archive.read_bytes().startswith(b"PGDMP")
    target = make_database(empty=True)
    subprocess.run(
        ["pg_restore", "--no-owner", "-d", database_url(target), str(archive)], check=True, timeout=300
    )
    assert contents(target) == contents(source)


def test_a_custom_restore_that_fails_midway_leaves_the_target_as_it_was(custom_backup, make_database):
    _, environment, result = custom_backup
    target = make_database(empty=True)
    psql(target, REFUSE_INDEXES)

    failed = ctl(environment, "restore", result.path, "--dbname", target)

    assert failed.returncode == 65, failed.stderr
    assert "failed and was rolled back" in failed.stderr and "no index may be created here" in failed.stderr
    assert tables(target) == []
    assert psql(target, "SELECT count(*) FROM pg_namespace WHERE nspname = 'app'") == "0"


def test_a_parallel_restore_that_fails_says_that_part_of_the_data_stays(
    tmp_path, custom_backup, make_database
):
    _, environment, result = custom_backup
    target = make_database(empty=True)
    psql(target, REFUSE_INDEXES)

    failed = ctl(environment, "restore", result.path, "--dbname", target, "--jobs", "2")

    assert failed.returncode == 65, failed.stderr
    assert "what was restored before the failure is still there" in failed.stderr
    assert "no index may be created here" in failed.stderr
    assert "app.events" in tables(target)  # as it says: the data went in before the indexes failed


def test_clean_with_a_custom_backup_drops_the_schemas_first_one_way_or_the_other(custom_backup):
    source, environment, result = custom_backup
    before = contents(source)
    psql(source, "DELETE FROM app.events WHERE id > 10; CREATE TABLE public.extra (x int)")

    refused = ctl(environment, "restore", result.path)
    cleaned = ctl(environment, "restore", result.path, "--clean")

    assert refused.returncode == 65 and "--clean" in refused.stderr
    assert cleaned.returncode == 0, cleaned.stderr
    assert contents(source) == before

    psql(source, "DROP SCHEMA scratch CASCADE; CREATE SCHEMA other; CREATE TABLE other.t (x int)")
    cleaned_on_two = ctl(environment, "restore", result.path, "--clean", "--jobs", "2")

    assert cleaned_on_two.returncode == 0, cleaned_on_two.stderr
    assert contents(source) == before


def test_jobs_with_a_plain_backup_is_a_usage_error(tmp_path, make_database):
    source = make_database(rows=10)
    environment = base_environment(tmp_path, source)
    result = backup_for(load_config(None, environment)).run("manual")

    refused = ctl(environment, "restore", result.path, "--dbname", make_database(empty=True), "--jobs", "2")

    assert refused.returncode == 64
    assert "--jobs applies to custom-format backups" in refused.stderr


def test_the_schema_and_table_options_restrict_what_is_dumped(tmp_path, awkward_database, make_database):
    source = awkward_database()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    only_app = base_environment(tmp_path / "a", source, TGBACKUPD_DATABASE_SCHEMAS="app")
    without = base_environment(
        tmp_path / "b",
        source,
        TGBACKUPD_DATABASE_EXCLUDE_SCHEMAS="scratch",
        TGBACKUPD_DATABASE_EXCLUDE_TABLES='public.audit_log,public."Odd"*',  # a quoted part keeps its case
        TGBACKUPD_DATABASE_PG_DUMP_ARGS="--exclude-table-data=app.events",
        **CUSTOM,
    )
    targets = {}
    for label, environment in (("only_app", only_app), ("without", without)):
        result = backup_for(load_config(None, environment)).run("manual")
        assert result.succeeded, result.error
        targets[label] = make_database(empty=True)
        restored = ctl(environment, "restore", result.path, "--dbname", targets[label])
        assert restored.returncode == 0, restored.stderr

    assert tables(targets["only_app"]) == ["app.events"]
    assert tables(targets["without"]) == ["app.events", "public.customers", "public.orders"]
    assert psql(targets["without"], "SELECT count(*) FROM app.events") == "0"


@pytest.mark.parametrize("dump_format", ["plain", "custom"])
@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "age"])
def test_an_awkward_database_goes_to_telegram_and_comes_back_from_it_alone(
    tmp_path, awkward_database, make_database, bot_api, dump_format, compression, encrypted
):
    source = awkward_database()
    encryption: dict[str, str] = {}
    identity_options: list[str] = []
    if encrypted:
        identity, recipient = age_key(tmp_path)
        encryption = {
            "TGBACKUPD_ENCRYPTION_RECIPIENTS": recipient,
            "TGBACKUPD_ENCRYPTION_IDENTITY_FILE": str(identity),  # for verify_after
        }
        identity_options = ["--identity", str(identity)]
    result = backup_in_parts(
        tmp_path,
        source,
        bot_api,
        TGBACKUPD_BACKUP_FORMAT=dump_format,
        TGBACKUPD_BACKUP_COMPRESSION=compression,
        TGBACKUPD_BACKUP_VERIFY_AFTER="true",
        **encryption,
    )
    assert result.succeeded and result.delivery == "sent" and result.verified is True, result.error
    extension = {"plain": ".sql", "custom": ".dump"}[dump_format] + {"gzip": ".gz", "zstd": ".zst"}[
        compression
    ]
    assert result.file.endswith(extension + (".age" if encrypted else ""))
    manifest = json.loads(bot_api.documents()[-1].content)
    assert (manifest["dump_format"], manifest["compression"], manifest["encrypted"]) == (
        dump_format,
        compression,
        encrypted,
    )
    assert "6 tables" in bot_api.documents()[0].fields["caption"]
    if encrypted:  # what reached the chat is age's, not the dump's
        assert (bot_api.documents()[0].content or b"").startswith(b"age-encryption.org/v1")

    target = make_database(empty=True)
    restored = ctl(
        new_machine(tmp_path, bot_api),
        "restore",
        "--from-telegram",
        "--dbname",
        database_url(target),
        *identity_options,
    )

    assert restored.returncode == 0, restored.stderr
    assert contents(target) == contents(source)


def test_a_work_dir_that_starts_with_a_dash_is_no_option_of_pg_restore(
    tmp_path, custom_backup, make_database
):
    source, environment, result = custom_backup
    (tmp_path / "-x").mkdir()
    target = make_database(empty=True)

    command = ["restore", result.path, "--dbname", target, "--jobs", "2", "--work-dir=-x"]

    restored = subprocess.run(
        [sys.executable, "-m", "tgbackupd.ctl", *command],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert restored.returncode == 0, restored.stderr
    assert contents(target) == contents(source)
    assert list((tmp_path / "-x").iterdir()) == []
