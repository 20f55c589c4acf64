"""Restoring a server's globals (pg_dumpall --globals-only) into the real server: run past errors as
pg_dumpall means it, `already exists` only a note, any other error a failure naming it."""

import gzip
import io
import uuid

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tgbackupd.config import database_from_url
from tgbackupd.errors import RestoreError, UsageError
from tgbackupd.progress import Progress
from tgbackupd.psql import ScriptErrors
from tgbackupd.restore import CheckedBackup, Piece, restore_globals, verify


def globals_backup(tmp_path, sql: str):
    path = tmp_path / "srv_globals_backup_20251203_030000.sql.gz"
    path.write_bytes(gzip.compress(sql.encode()))
    pieces = [Piece(path, 0, path.stat().st_size, path.name, None)]
    return CheckedBackup(path.name, tuple(pieces), None, declared_format="globals")


@pytest.fixture
def server():
    return database_from_url(f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres")


def test_roles_that_exist_already_are_notes_and_the_new_ones_are_made(tmp_path, server):
    role = f"tgb_role_{uuid.uuid4().hex[:8]}"
    backup = globals_backup(tmp_path, f"CREATE ROLE {PG_USER};\nCREATE ROLE {role} NOLOGIN;\n")
    try:
        notes = restore_globals(server, backup, Progress(io.StringIO()))
        assert len(notes) == 1 and f'role "{PG_USER}" already exists' in notes[0]
        assert psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'") == "1"
    finally:
        psql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_any_other_error_fails_the_restore_naming_it(tmp_path, server):
    backup = globals_backup(
        tmp_path, f"CREATE ROLE {PG_USER};\nALTER ROLE tgb_nobody_{uuid.uuid4().hex[:6]} LOGIN;\n"
    )
    with pytest.raises(RestoreError) as raised:
        restore_globals(server, backup, Progress(io.StringIO()))
    assert raised.value.exit_code == 65
    assert "1 error(s) other than roles that exist already" in str(raised.value)
    assert "does not exist" in str(raised.value) and "already exists" not in str(raised.value)


def test_errors_are_told_by_their_sqlstate_and_counted_past_any_number_that_exist_already(tmp_path, server):
    existing = f"CREATE ROLE {PG_USER};\n" * 1001
    raised_words = "DO $$BEGIN RAISE EXCEPTION 'tgb_thing already exists'; END$$;\n"  # P0001, not 42710
    backup = globals_backup(tmp_path, existing + raised_words)

    with pytest.raises(RestoreError) as raised:
        restore_globals(server, backup, Progress(io.StringIO()))

    assert raised.value.exit_code == 65
    assert "psql reported 1 error(s) other than roles that exist already" in str(raised.value)
    assert "P0001: tgb_thing already exists" in str(raised.value)


def test_psql_s_own_errors_fail_the_restore_and_many_existing_roles_are_one_note_each_up_to_a_few(
    tmp_path, server
):
    backup = globals_backup(tmp_path, f"CREATE ROLE {PG_USER};\n" * 30 + "\\tgb_no_such_command\n")

    with pytest.raises(RestoreError) as raised:
        restore_globals(server, backup, Progress(io.StringIO()))

    assert "1 error(s)" in str(raised.value) and "invalid command \\tgb_no_such_command" in str(raised.value)

    notes = restore_globals(
        server, globals_backup(tmp_path, f"CREATE ROLE {PG_USER};\n" * 30), Progress(io.StringIO())
    )

    assert len(notes) == 21 and notes[-1] == "(and 10 more)"
    assert all(f'42710: role "{PG_USER}" already exists' in note for note in notes[:-1])


def test_a_server_speaking_german_is_understood_by_its_sqlstates():
    # No German locale here for the server to speak it: the lines are as psql prints them from one that has.
    errors = ScriptErrors()
    for line in (
        "psql:<stdin>:1: FEHLER:  42710: Rolle „postgres“ existiert bereits",
        "psql:<stdin>:2: HINWEIS:  00000: etwas",
        "psql:<stdin>:3: WARNUNG:  01000: etwas anderes",
        "psql:<stdin>:4: FEHLER:  42704: Rolle „tgb_nobody“ existiert nicht",
        "DETAIL:  psql:<stdin>:5: FEHLER:  42601: nicht am Zeilenanfang",
    ):
        errors.note(line)

    assert (errors.existing_count, errors.failed_count) == (1, 1)
    assert "42704" in errors.failed[0]


def test_globals_are_not_verified_in_a_scratch_database_nor_restored_with_clean_or_jobs(tmp_path, server):
    role = f"tgb_role_{uuid.uuid4().hex[:8]}"
    backup = globals_backup(tmp_path, f"CREATE ROLE {role} NOLOGIN;\n")
    scratch_databases = "SELECT count(*) FROM pg_database WHERE datname LIKE 'tgbackupd_verify_%'"
    before = psql("postgres", scratch_databases)

    with pytest.raises(UsageError) as verifying:
        verify(server, backup, Progress(io.StringIO()))
    with pytest.raises(UsageError) as cleaning:
        restore_globals(server, backup, Progress(io.StringIO()), clean=True)
    with pytest.raises(UsageError) as parallel:
        restore_globals(server, backup, Progress(io.StringIO()), jobs=2)

    assert verifying.value.exit_code == 64 and "not verified in a scratch database" in str(verifying.value)
    assert "Leave --clean out" in str(cleaning.value) and "Leave --jobs out" in str(parallel.value)
    assert psql("postgres", scratch_databases) == before
    assert psql("postgres", f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}'") == "0"
