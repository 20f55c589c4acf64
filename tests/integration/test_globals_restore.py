"""Restoring a server's globals (pg_dumpall --globals-only) into the real server: run past errors as
pg_dumpall means it, `already exists` only a note, any other error a failure naming it."""

import gzip
import io
import uuid

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tgbackupd.config import database_from_url
from tgbackupd.errors import RestoreError
from tgbackupd.progress import Progress
from tgbackupd.restore import CheckedBackup, Piece, restore_globals


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
